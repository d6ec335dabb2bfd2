//! The control-plane benchmark: Agimo as the chart installs it (two
//! replicas) on the local cluster, measured in the scenarios of the public
//! Gateway API benchmark (howardjohn/gateway-api-bench): routes attached at
//! once, propagation one route at a time (idle and under background
//! traffic), a route changed under traffic, 5,000 routes with endpoint churn,
//! and a flapping backend. Prints each figure as it is measured, then a
//! Markdown table.
//!
//! Run it with `bench/control-plane`, which builds the image, brings the
//! cluster up and installs the chart first.

mod cluster;
mod scenarios;
mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kube::Client;
use serde_json::json;

use cluster::{Cluster, NS};

#[derive(Parser, Clone)]
#[command(about = "Agimo's control plane on the local cluster, as the public Gateway API benchmark measures it")]
pub struct Opts {
    /// The namespace of the chart's release.
    #[arg(long, default_value = "agimo-system")]
    agimo_namespace: String,
    /// Which scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "attached,propagation,changes,scale,flapping")]
    only: Vec<String>,
    /// Routes applied at once (attached).
    #[arg(long, default_value_t = 1000)]
    attached_routes: usize,
    /// Routes added one at a time, idle and again under traffic (propagation).
    #[arg(long, default_value_t = 3000)]
    propagation_routes: usize,
    /// Requests per second of background traffic (propagation, loaded).
    #[arg(long, default_value_t = 10_000)]
    background_rps: u32,
    /// Changes of one route under traffic (changes).
    #[arg(long, default_value_t = 500)]
    changes: usize,
    /// Routes (scale).
    #[arg(long, default_value_t = 5000)]
    scale_routes: usize,
    /// Namespaces the routes are spread over (scale).
    #[arg(long, default_value_t = 50)]
    scale_namespaces: usize,
    /// Seconds of endpoint churn (scale) and of flapping (flapping).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// One line of the final table.
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub target: String,
}

/// What every scenario needs: the cluster, the Gateway's address, the
/// backends' pod IPs.
pub struct Env {
    pub cluster: Cluster,
    pub opts: Opts,
    pub gateway: SocketAddr,
    pub echo_a: String,
    pub echo_b: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = Opts::parse();
    let client = Client::try_default().await.context("a kubeconfig (run inside conformance/local-cluster exec)")?;
    let cluster = Cluster { client, agimo_ns: opts.agimo_namespace.clone() };
    let env = setup(cluster, opts).await?;
    let mut rows = Vec::new();
    for scenario in env.opts.only.clone() {
        let started = std::time::Instant::now();
        println!("\n## {scenario}");
        let result = match scenario.as_str() {
            "attached" => scenarios::attached(&env).await,
            "propagation" => scenarios::propagation(&env).await,
            "changes" => scenarios::changes(&env).await,
            "scale" => scenarios::scale(&env).await,
            "flapping" => scenarios::flapping(&env).await,
            other => anyhow::bail!("unknown scenario {other}"),
        };
        rows.extend(result.with_context(|| format!("scenario {scenario}"))?);
        println!("({scenario}: {:.0} s)", started.elapsed().as_secs_f64());
    }
    println!("\n| Scenario | Agimo (2 replicas, local cluster) | Target |\n|---|---|---|");
    for row in rows {
        println!("| {} | {} | {} |", row.scenario, row.figure, row.target);
    }
    env.cluster.delete_namespace(NS).await;
    Ok(())
}

/// The benchmark's namespace (anew), two echo backends, and Gateway `gw`
/// with an HTTP listener on port 80 that admits routes from every namespace.
async fn setup(cluster: Cluster, opts: Opts) -> Result<Env> {
    cluster.delete_namespace(NS).await;
    cluster.namespace_gone(NS).await?;
    cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).await?;
    for name in ["echo-a", "echo-b"] {
        for object in cluster::echo(name) {
            cluster.apply(object).await?;
        }
    }
    cluster
        .apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": NS},
            "spec": {"gatewayClassName": "agimo", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                "allowedRoutes": {"namespaces": {"from": "All"}}}]}}))
        .await?;
    let gateways = cluster.api(NS, "gateway.networking.k8s.io/v1", "Gateway").await?;
    let started = std::time::Instant::now();
    let address = loop {
        let gw = gateways.get("gw").await?;
        if let Some(address) = gw.data["status"]["addresses"][0]["value"].as_str() {
            break address.to_owned();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "Gateway gw has no address after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let gateway: SocketAddr = format!("{address}:80").parse()?;
    let (echo_a, echo_b) = (cluster.pod_ip("echo-a").await?, cluster.pod_ip("echo-b").await?);
    let pods = cluster.agimo_pods().await?;
    println!("Gateway gw at {gateway}; Agimo pods {pods:?}; echo-a {echo_a}, echo-b {echo_b}");
    Ok(Env { cluster, opts, gateway, echo_a, echo_b })
}
