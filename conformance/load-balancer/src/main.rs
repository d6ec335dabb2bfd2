//! The `agimo-load-balancer` binary: flags, logging, signals; see the
//! library for what it does.
//!
//! ```text
//!   flags ──▶ Config ──▶ controller::run(client, config, SIGTERM/SIGINT)
//! ```

#![forbid(unsafe_code)]

use std::time::Duration;

use agimo_load_balancer::Config;
use anyhow::Context;
use clap::Parser;

/// The load balancer of conformance/local-cluster: gives Services of type
/// LoadBalancer an address from --pool (status.loadBalancer.ingress) and
/// forwards TCP connections to every load balancer address and external IP
/// to the Service's ready endpoints. Runs in the cluster's network
/// namespace, where the pool's addresses are local; kubeconfig from
/// KUBECONFIG or ~/.kube/config.
#[derive(Parser)]
#[command(name = "agimo-load-balancer", version)]
struct Args {
    /// The addresses handed to Services of type LoadBalancer.
    #[arg(long, default_value = "10.245.1.0/24")]
    pool: ipnet::IpNet,
    /// Also handle Services of type LoadBalancer with this
    /// spec.loadBalancerClass (repeatable); Services without a class are
    /// always handled.
    #[arg(long = "load-balancer-class", value_name = "CLASS")]
    classes: Vec<String>,
    /// How long connecting to an endpoint may take before the client's
    /// connection is closed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.pool.hosts().next().is_some(), "--pool {} has no addresses to hand out", args.pool);
    let config = Config { pool: args.pool, classes: args.classes, connect_timeout: args.connect_timeout };
    let client = kube::Client::try_default().await.context("kubeconfig")?;
    tracing::info!(pool = %config.pool, classes = ?config.classes, "starting");
    agimo_load_balancer::controller::run(client, config, shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received; stopping");
}
