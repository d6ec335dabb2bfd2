//! Scale-to-zero end to end on the local cluster: a Deployment and a
//! StatefulSet at 0 replicas behind annotated HTTPRoutes, real pods started by
//! the node agent when the test scales them, and a real Prometheus scraping
//! Agimo while a request is held.
//!
//! ```sh
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test -p agimo-controller --features kubernetes-tests --test scale_to_zero
//! ```

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use futures_util::{SinkExt, StreamExt};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "agimo-scale-to-zero";
/// Gateway address and Agimo's admin/metrics address in the cluster's namespace.
const GATEWAY: &str = "10.245.240.1";
const ADMIN: &str = "10.246.240.1";
const PROMETHEUS: &str = "10.246.240.2:9099";

/// A process the test started, killed when dropped (also when the test
/// fails before the environment is complete).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    client: Client,
    _agimo: Process,
    _prometheus: Process,
    prometheus_dir: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.prometheus_dir);
        let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).output();
        let _ = Command::new("kubectl").args(["delete", "gatewayclass", NS, "--wait=false"]).output();
    }
}

fn resource(kind: &str) -> ApiResource {
    let (group, version, plural) = match kind {
        "Namespace" => ("", "v1", "namespaces"),
        "Service" => ("", "v1", "services"),
        "Deployment" => ("apps", "v1", "deployments"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "GatewayClass" => ("gateway.networking.k8s.io", "v1", "gatewayclasses"),
        "Gateway" => ("gateway.networking.k8s.io", "v1", "gateways"),
        "HTTPRoute" => ("gateway.networking.k8s.io", "v1", "httproutes"),
        other => panic!("no ApiResource for {other}"),
    };
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

fn api(client: &Client, kind: &str) -> Api<DynamicObject> {
    match kind {
        "Namespace" | "GatewayClass" => Api::all_with(client.clone(), &resource(kind)),
        _ => Api::namespaced_with(client.clone(), NS, &resource(kind)),
    }
}

async fn apply(client: &Client, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api(client, &kind)
        .patch(&name, &PatchParams::apply("agimo-tests").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// A workload of echo-basic pods (run by the node agent) at 0 replicas, its
/// Service, and a gated HTTPRoute for `host`.
async fn workload(client: &Client, kind: &str, name: &str, host: &str) {
    let pod = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{
            "name": "echo",
            "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
            "ports": [{"containerPort": 3000}],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
            ]
        }]}
    });
    let mut spec = json!({"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": pod});
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    apply(
        client,
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": NS}, "spec": spec}),
    )
    .await;
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
               "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}),
    )
    .await;
    apply(
        client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": NS,
                            "annotations": {"agimo.dev/scale-to-zero": "true", "agimo.dev/wait-timeout": "60s"}},
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                        "rules": [{"backendRefs": [{"name": name, "port": 80}]}]}}),
    )
    .await;
}

async fn scale(client: &Client, kind: &str, name: &str, replicas: i32) {
    api(client, kind)
        .patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
        .await
        .unwrap_or_else(|e| panic!("scale {kind} {name}: {e}"));
}

/// Waits until the workload has no pod left (scaled to zero and gone).
async fn no_pods(client: &Client, name: &str) {
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource {
            group: "".into(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
        },
    );
    let started = Instant::now();
    loop {
        let list = pods.list(&kube::api::ListParams::default().labels(&format!("app={name}"))).await.unwrap();
        if list.items.is_empty() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{name}'s pods never went away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metric(name: &str, host: &str) -> Option<f64> {
    let addr: SocketAddr = format!("{ADMIN}:9090").parse().unwrap();
    let reply = client::send(addr, Mode::Http1, client::get("metrics", "/metrics")).await.ok()?;
    support::metric(&String::from_utf8_lossy(&reply.body), name, host)
}

async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(seconds), "{what}: not within {seconds} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a PromQL query, from the real Prometheus.
async fn promql(query: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", form_encode(query));
    let reply = client::send(PROMETHEUS.parse().unwrap(), Mode::Http1, client::get("prometheus", &path)).await.ok()?;
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn setup() -> Env {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "run inside conformance/local-cluster exec");
    let client = Client::try_default().await.unwrap();
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=true"]).output();
    apply(&client, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).await;
    apply(
        &client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": NS},
               "spec": {"controllerName": format!("agimo.dev/{NS}")}}),
    )
    .await;
    apply(
        &client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
               "spec": {"gatewayClassName": NS, "addresses": [{"type": "IPAddress", "value": GATEWAY}],
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}),
    )
    .await;
    let agimo = Process(
        Command::new(env!("CARGO_BIN_EXE_agimo"))
            .args(["run", "--controller-name", &format!("agimo.dev/{NS}"), "--leader-election-namespace", NS])
            .args(["--admin-address", &format!("{ADMIN}:9901"), "--metrics-address", &format!("{ADMIN}:9090")])
            .env("RUST_LOG", "info,agimo_controller::status=warn")
            .stdout(Stdio::inherit())
            .spawn()
            .expect("agimo starts"),
    );
    // A real Prometheus (Debian's package) scraping Agimo every second.
    let prometheus_dir = std::env::temp_dir().join(format!("agimo-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let config = prometheus_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: agimo\n  static_configs: [{{targets: ['{ADMIN}:9090']}}]\n"),
    )
    .unwrap();
    let prometheus = Process(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", prometheus_dir.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt install prometheus) starts"),
    );
    Env { client, _agimo: agimo, _prometheus: prometheus, prometheus_dir }
}

#[tokio::test]
async fn deployments_and_statefulsets_scale_from_and_to_zero() {
    let env = setup().await;
    let gateway: SocketAddr = format!("{GATEWAY}:80").parse().unwrap();
    workload(&env.client, "Deployment", "web", "web.example").await;
    workload(&env.client, "StatefulSet", "db", "db.example").await;
    eventually("the routes are served (series declared)", 60, || async {
        metric("pending_requests_total", "web.example").await == Some(0.0)
            && metric("pending_requests_total", "db.example").await == Some(0.0)
    })
    .await;

    // A request for the Deployment at zero is held...
    let held = tokio::spawn(client::send(gateway, Mode::Http1, client::get("web.example", "/first")));
    eventually("the request is pending on /metrics", 10, || async {
        metric("pending_requests_total", "web.example").await == Some(1.0)
    })
    .await;
    // ...which the KEDA example's query sees through Prometheus.
    let query = r#"sum(pending_requests_total{host="web.example"}) + sum(active_requests_total{host="web.example"})"#;
    eventually("Prometheus sees the held request", 30, || async { promql(query).await == Some(1.0) }).await;
    // KEDA would scale it now; the test does.
    scale(&env.client, "Deployment", "web", 1).await;
    let reply = held.await.unwrap().expect("the held request is answered");
    assert_eq!(reply.status, 200);
    let echo: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(echo["pod"].as_str().unwrap().starts_with("web-"), "{echo}");
    assert_eq!(echo["path"], "/first");
    assert_eq!(metric("pending_requests_total", "web.example").await, Some(0.0));

    // The same for a websocket session.
    scale(&env.client, "Deployment", "web", 0).await;
    no_pods(&env.client, "web").await;
    let ws = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
        let request = http::Request::get("ws://web.example/ws")
            .header("Host", "web.example")
            .header("Origin", "http://web.example")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", tokio_tungstenite::tungstenite::handshake::client::generate_key())
            .body(())
            .unwrap();
        tokio_tungstenite::client_async(request, stream).await
    });
    eventually("the websocket upgrade is pending", 10, || async {
        metric("pending_requests_total", "web.example").await == Some(1.0)
    })
    .await;
    scale(&env.client, "Deployment", "web", 1).await;
    let (mut socket, response) = ws.await.unwrap().expect("the websocket opens once a pod is ready");
    assert_eq!(response.status(), 101);
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(metric("active_requests_total", "web.example").await, Some(1.0), "an open websocket is active");
    socket.close(None).await.unwrap();
    drop(socket);

    // Back to zero while idle: a new request is held again.
    scale(&env.client, "Deployment", "web", 0).await;
    no_pods(&env.client, "web").await;
    let again = tokio::spawn(client::send(gateway, Mode::Http1, client::get("web.example", "/again")));
    eventually("held again", 10, || async { metric("pending_requests_total", "web.example").await == Some(1.0) }).await;
    scale(&env.client, "Deployment", "web", 1).await;
    assert_eq!(again.await.unwrap().unwrap().status, 200);

    // The StatefulSet, from zero.
    let held = tokio::spawn(client::send(gateway, Mode::Http1, client::get("db.example", "/rows")));
    eventually("the StatefulSet request is pending", 10, || async {
        metric("pending_requests_total", "db.example").await == Some(1.0)
    })
    .await;
    scale(&env.client, "StatefulSet", "db", 1).await;
    let reply = held.await.unwrap().expect("answered by the StatefulSet's pod");
    assert_eq!(reply.status, 200);
    let echo: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(echo["pod"], "db-0");
}
