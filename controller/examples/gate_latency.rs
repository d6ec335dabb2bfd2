//! Gate release latency: from the write that marks an endpoint ready (an
//! EndpointSlice through the API server, or the EndpointSlice file in
//! standalone mode) to the backend receiving the request Agimo was holding.
//! Prints p50, p99 and max over the trials.
//!
//! ```sh
//! cargo build --release --bin agimo --example gate_latency
//! conformance/local-cluster up
//! conformance/local-cluster exec -- target/release/examples/gate_latency cluster [trials]
//! target/release/examples/gate_latency standalone [trials]
//! ```
//!
//! It starts its own `agimo` (target/release/agimo, or $AGIMO_BIN) and a
//! backend that timestamps each request it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NS: &str = "agimo-gate-bench";

/// A backend that reports when each request arrives.
async fn backend(addr: SocketAddr) -> mpsc::UnboundedReceiver<Instant> {
    let (arrivals, received) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("backend address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let _ = arrivals.send(Instant::now());
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok")))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    received
}

async fn pending(admin: SocketAddr) -> Option<f64> {
    let reply = client::send(admin, Mode::Http1, client::get("admin", "/metrics")).await.ok()?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("pending_requests_total{host=\"gated.bench\"} "))
        .and_then(|v| v.trim().parse().ok())
}

fn slice(endpoint: Option<SocketAddr>) -> Value {
    let (port, endpoints) = match endpoint {
        Some(e) => (e.port(), json!([{"addresses": [e.ip().to_string()], "conditions": {"ready": true}}])),
        None => (3000, json!([])),
    };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "app", "namespace": NS, "labels": {"kubernetes.io/service-name": "app"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints})
}

fn resources(controller: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": NS},
               "spec": {"controllerName": controller}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": NS},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "gated", "namespace": NS, "annotations": {"agimo.dev/scale-to-zero": "true"}},
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["gated.bench"],
                        "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}}),
    ]
}

fn gateway(address: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
           "spec": {"gatewayClassName": NS, "addresses": [{"type": "IPAddress", "value": address}],
                    "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}})
}

/// Where endpoint changes are written: the API server or a file.
enum Target {
    Cluster(Client),
    Files(PathBuf),
}

impl Target {
    async fn write_slice(&self, endpoint: Option<SocketAddr>) {
        let object = slice(endpoint);
        match self {
            Target::Cluster(client) => {
                let resource = ApiResource {
                    group: "discovery.k8s.io".into(),
                    version: "v1".into(),
                    api_version: "discovery.k8s.io/v1".into(),
                    kind: "EndpointSlice".into(),
                    plural: "endpointslices".into(),
                };
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                api.patch("app", &PatchParams::apply("agimo-bench").force(), &Patch::Apply(&object)).await.unwrap();
            }
            Target::Files(dir) => write_yaml(dir, "slice.yaml", &[object]),
        }
    }
}

fn write_yaml(dir: &Path, name: &str, docs: &[Value]) {
    let text: String = docs.iter().map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap())).collect();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Stops the agimo process however the benchmark ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let trials: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100);
    let bin = std::env::var("AGIMO_BIN").unwrap_or_else(|_| "target/release/agimo".to_owned());
    let (gateway_ip, admin_ip, backend_addr): (&str, &str, SocketAddr) = match mode {
        "cluster" => ("10.245.241.1", "10.246.241.2", "10.246.241.1:3000".parse()?),
        "standalone" => ("127.0.241.1", "127.0.241.2", "127.0.241.3:3000".parse()?),
        _ => anyhow::bail!("usage: gate_latency cluster|standalone [trials]"),
    };
    let mut arrivals = backend(backend_addr).await;
    let admin: SocketAddr = format!("{admin_ip}:9090").parse()?;
    // Standalone mode serves the default controller name.
    let controller = if mode == "cluster" { "agimo.dev/gate-bench" } else { "agimo.dev/gateway-controller" };
    let mut docs = resources(controller);
    docs.push(gateway(gateway_ip));
    let (target, agimo): (Target, Child) = if mode == "cluster" {
        let client = Client::try_default().await?;
        let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=true"]).output();
        docs.insert(0, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
        for doc in &docs {
            let (group, version, plural) = match doc["kind"].as_str().unwrap() {
                "Namespace" => ("", "v1", "namespaces"),
                "Service" => ("", "v1", "services"),
                "GatewayClass" => ("gateway.networking.k8s.io", "v1", "gatewayclasses"),
                "Gateway" => ("gateway.networking.k8s.io", "v1", "gateways"),
                _ => ("gateway.networking.k8s.io", "v1", "httproutes"),
            };
            let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
            let r = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version,
                kind: doc["kind"].as_str().unwrap().into(),
                plural: plural.into(),
            };
            let api: Api<DynamicObject> = if matches!(doc["kind"].as_str(), Some("Namespace" | "GatewayClass")) {
                Api::all_with(client.clone(), &r)
            } else {
                Api::namespaced_with(client.clone(), NS, &r)
            };
            let object: DynamicObject = serde_json::from_value(doc.clone())?;
            let name = object.metadata.name.clone().unwrap();
            api.patch(&name, &PatchParams::apply("agimo-bench").force(), &Patch::Apply(&object)).await?;
        }
        let target = Target::Cluster(client);
        target.write_slice(None).await;
        let agimo = Command::new(&bin)
            .args(["run", "--controller-name", controller, "--leader-election-namespace", NS])
            .args(["--admin-address", &format!("{admin_ip}:9901"), "--metrics-address", &admin.to_string()])
            .args(["--keda-scaler-address", &format!("{admin_ip}:9091")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        (target, agimo)
    } else {
        let dir = std::env::temp_dir().join(format!("agimo-gate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        write_yaml(&dir, "config.yaml", &docs);
        let target = Target::Files(dir.clone());
        target.write_slice(None).await;
        let agimo = Command::new(&bin)
            .args(["standalone", "--config", &dir.display().to_string()])
            .args(["--admin-address", &format!("{admin_ip}:9901"), "--metrics-address", &admin.to_string()])
            .args(["--keda-scaler-address", &format!("{admin_ip}:9091")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        (target, agimo)
    };
    let _agimo = KillOnDrop(agimo);
    let at: SocketAddr = format!("{gateway_ip}:8080").parse()?;
    let started = Instant::now();
    while pending(admin).await != Some(0.0) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "agimo did not serve the route");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut latencies = Vec::with_capacity(trials);
    for _ in 0..trials {
        // Scaled to zero, and a request waiting.
        target.write_slice(None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let request = tokio::spawn(client::send(at, Mode::Http1, client::get("gated.bench", "/")));
        let waiting = Instant::now();
        while pending(admin).await != Some(1.0) {
            anyhow::ensure!(waiting.elapsed() < Duration::from_secs(10), "the request was not held");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The endpoint turns ready.
        let written = Instant::now();
        target.write_slice(Some(backend_addr)).await;
        let arrived = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("backend gone"))?;
        latencies.push(arrived.duration_since(written));
        anyhow::ensure!(request.await??.status == 200, "the released request failed");
    }
    latencies.sort();
    println!(
        "gate release latency ({mode}): n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    if let Target::Files(dir) = &target {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).output();
        let _ = Command::new("kubectl").args(["delete", "gatewayclass", NS, "--wait=false"]).output();
    }
    Ok(())
}
