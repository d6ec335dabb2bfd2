//! Propagation benchmark: the time from writing an HTTPRoute to the API
//! server until Agimo answers it with a 200, idle and with 1,000 other routes
//! present. Prints p50, p99 and max.
//!
//! ```sh
//! cargo build --release --bin agimo --example propagation
//! conformance/local-cluster up
//! conformance/local-cluster exec -- target/release/examples/propagation [--probes 100] [--background 1000]
//! ```
//!
//! It starts its own `agimo run` (target/release/agimo, or $AGIMO_BIN) and an
//! echo backend at 10.246.250.1:3000, in namespace `agimo-propagation`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "agimo-propagation";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

fn routes(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"))
}

fn route(name: &str, host: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]
        }
    }))
    .expect("route")
}

async fn apply(client: &Client, r: ApiResource, namespaced: bool, object: Value) {
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> =
        if namespaced { Api::namespaced_with(client.clone(), NS, &r) } else { Api::all_with(client.clone(), &r) };
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.patch(&name, &PatchParams::apply("agimo-bench").force(), &Patch::Apply(&object)).await.expect("apply");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Creates `n` probe routes one by one; each time, measures until it serves.
async fn probe(client: &Client, at: SocketAddr, phase: &str, n: usize) -> Vec<Duration> {
    let api = routes(client);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let host = format!("probe-{phase}-{i}.bench");
        let started = Instant::now();
        api.create(&PostParams::default(), &route(&format!("probe-{phase}-{i}"), &host)).await.expect("create");
        loop {
            if let Ok(reply) = client::send(at, Mode::Http1, client::get(&host, "/")).await
                && reply.status == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{host} not served within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    times
}

fn report(label: &str, times: &[Duration]) {
    println!(
        "{label:<28} n={:<4} p50={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        times.len(),
        percentile(times, 0.5).as_secs_f64() * 1000.0,
        percentile(times, 0.99).as_secs_f64() * 1000.0,
        times.last().unwrap().as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut probes = 100;
    let mut background = 1000;
    let args: Vec<String> = std::env::args().collect();
    for pair in args[1..].chunks(2) {
        match (pair[0].as_str(), pair.get(1).and_then(|v| v.parse().ok())) {
            ("--probes", Some(v)) => probes = v,
            ("--background", Some(v)) => background = v,
            _ => anyhow::bail!("usage: propagation [--probes N] [--background N]"),
        }
    }
    let client = Client::try_default().await?;
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=true"]).output();
    apply(
        &client,
        resource("", "v1", "Namespace", "namespaces"),
        false,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    apply(
        &client,
        resource("gateway.networking.k8s.io", "v1", "GatewayClass", "gatewayclasses"),
        false,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": NS},
               "spec": {"controllerName": "agimo.dev/propagation"}}),
    )
    .await;
    apply(
        &client,
        resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
        true,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
               "spec": {"gatewayClassName": NS, "addresses": [{"type": "IPAddress", "value": "10.245.250.1"}],
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await;
    apply(
        &client,
        resource("", "v1", "Service", "services"),
        true,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": NS},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    apply(
        &client,
        resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        true,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "echo", "namespace": NS, "labels": {"kubernetes.io/service-name": "echo"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 3000}],
               "endpoints": [{"addresses": ["10.246.250.1"]}]}),
    )
    .await;
    let _echo = agimo_testkit::echo::spawn("10.246.250.1:3000".parse()?, "echo").await?;
    let bin = std::env::var("AGIMO_BIN").unwrap_or_else(|_| "target/release/agimo".to_owned());
    let mut agimo = Command::new(&bin)
        .args(["run", "--controller-name", "agimo.dev/propagation", "--leader-election-namespace", NS])
        .args(["--admin-address", "10.246.250.2:9901", "--metrics-address", "10.246.250.2:9090"])
        .args(["--keda-scaler-address", "10.246.250.2:9091"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {bin}: {e}"))?;
    let at: SocketAddr = "10.245.250.1:80".parse()?;

    // Warm up: the first route, served.
    probe(&client, at, "warmup", 1).await;
    let idle = probe(&client, at, "idle", probes).await;

    let api = routes(&client);
    let started = Instant::now();
    for i in 0..background {
        api.create(&PostParams::default(), &route(&format!("background-{i}"), &format!("bg-{i}.bench"))).await?;
    }
    let last = format!("bg-{}.bench", background - 1);
    while client::send(at, Mode::Http1, client::get(&last, "/")).await.map(|r| r.status.as_u16()).unwrap_or(0) != 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{background} background routes created and served in {:.1} s", started.elapsed().as_secs_f64());
    let loaded = probe(&client, at, "loaded", probes).await;

    report("idle", &idle);
    report(&format!("with {background} other routes"), &loaded);
    let _ = agimo.kill();
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).output();
    let _ = Command::new("kubectl").args(["delete", "gatewayclass", NS, "--wait=false"]).output();
    Ok(())
}
