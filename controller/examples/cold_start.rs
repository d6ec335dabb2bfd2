//! Cold start with KEDA in the loop: from a request arriving for a
//! Deployment at 0 replicas to its response, for each trigger (Agimo as
//! KEDA's `external-push` scaler; KEDA's prometheus scaler reading a
//! Prometheus that scrapes Agimo every second, polled every second), broken
//! down into: hold → KEDA's scale request (the Deployment's replicas turn
//! 1; Agimo's push and KEDA's handling of it), scale request → pod Ready
//! (the controllers and the node), Ready → the EndpointSlice lists it (the
//! EndpointSlice controller), EndpointSlice → response (Agimo sees the
//! endpoint, connects, retrying until the new pod listens, and the answer
//! comes back). Times are when the benchmark's own watches see each change.
//!
//! ```sh
//! bench/cold-start [trials]      # builds, then runs this inside the local cluster
//! ```
//!
//! Needs `conformance/local-cluster up` (with KEDA) and Debian's prometheus.
//! Starts its own `agimo` (target/release/agimo, or $AGIMO_BIN) and
//! Prometheus; the backend is echo-basic pods without a readiness probe (a
//! pod is Ready when its process starts, as on a kubelet). Between trials it
//! waits until KEDA has scaled the Deployment to 0 and its pod is gone.
//! Prints, per trigger, the breakdown and then
//! `cold-start <trigger>: n=<n> p50=<ms> p99=<ms> lost=<count>`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NS: &str = "agimo-cold-start";
const GATEWAY: &str = "10.245.242.1";
const ADMIN: &str = "10.246.242.1";
const PROMETHEUS: &str = "10.246.242.2";

async fn api(client: &Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    agimo_testkit::kube::api(client, NS, api_version, kind).await
}

async fn apply(client: &Client, object: Value) -> anyhow::Result<()> {
    agimo_testkit::kube::apply(client, NS, object, "agimo-bench").await;
    Ok(())
}

/// Stops a process however the benchmark ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the watches saw, and when.
#[derive(Debug)]
enum Seen {
    /// The Deployment's spec.replicas went from 0 to more.
    ScaleRequest(Instant),
    /// A pod of the Deployment turned Ready.
    PodReady(Instant),
    /// The Service's EndpointSlice lists a ready endpoint (what Agimo
    /// watches).
    SliceReady(Instant),
}

/// Watches the Deployment and its pods for the moments of [`Seen`].
async fn watch(client: &Client, name: &str) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let deployments = api(client, "apps/v1", "Deployment").await;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let scale = tx.clone();
    tokio::spawn(async move {
        let mut last = 0;
        let mut events = watcher(deployments, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event {
                let replicas = d.data["spec"]["replicas"].as_i64().unwrap_or(0);
                if last == 0 && replicas > 0 {
                    let _ = scale.send(Seen::ScaleRequest(Instant::now()));
                }
                last = replicas;
            }
        }
    });
    let slices = api(client, "discovery.k8s.io/v1", "EndpointSlice").await;
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}"));
    let slice = tx.clone();
    tokio::spawn(async move {
        let mut was_ready = false;
        let mut events = watcher(slices, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event {
                let ready =
                    s.data["endpoints"].as_array().into_iter().flatten().any(|e| e["conditions"]["ready"] == true);
                if ready && !was_ready {
                    let _ = slice.send(Seen::SliceReady(Instant::now()));
                }
                was_ready = ready;
            }
        }
    });
    let pods = api(client, "v1", "Pod").await;
    let config = watcher::Config::default().labels(&format!("app={name}"));
    tokio::spawn(async move {
        let mut ready = std::collections::HashSet::new();
        let mut events = watcher(pods, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                let is_ready = p.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if is_ready && ready.insert(uid) {
                    let _ = tx.send(Seen::PodReady(Instant::now()));
                }
            }
        }
    });
    rx
}

async fn at_zero(client: &Client, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let d = api(client, "apps/v1", "Deployment").await.get(name).await?;
        let replicas = d.data["spec"]["replicas"].as_i64().unwrap_or(0);
        let pods = api(client, "v1", "Pod").await.list(&ListParams::default().labels(&format!("app={name}"))).await?;
        if replicas == 0 && pods.items.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(180), "KEDA did not scale {name} to 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(values: &[Duration]) -> String {
    format!("p50={:.0} p99={:.0}", ms(percentile(values, 0.5)), ms(percentile(values, 0.99)))
}

async fn setup(client: &Client, bin: &str) -> anyhow::Result<(KillOnDrop, KillOnDrop)> {
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=true"]).output();
    apply(client, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).await?;
    apply(
        client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": NS},
               "spec": {"controllerName": format!("agimo.dev/{NS}")}}),
    )
    .await?;
    apply(
        client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
               "spec": {"gatewayClassName": NS, "addresses": [{"type": "IPAddress", "value": GATEWAY}],
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    )
    .await?;
    let agimo = KillOnDrop(
        Command::new(bin)
            .args(["run", "--controller-name", &format!("agimo.dev/{NS}"), "--leader-election-namespace", NS])
            .args(["--admin-address", &format!("{ADMIN}:9901"), "--metrics-address", &format!("{ADMIN}:9090")])
            .args(["--keda-scaler-address", &format!("{ADMIN}:9091")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let dir = std::env::temp_dir().join(format!("agimo-cold-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: agimo\n  static_configs: [{{targets: ['{ADMIN}:9090']}}]\n"
        ),
    )?;
    let prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}:9099"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    for (service, ip, port, target) in
        [("agimo-keda-scaler", ADMIN, 9091, 9091), ("prometheus", PROMETHEUS, 9090, 9099)]
    {
        apply(
            client,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": NS},
                   "spec": {"ports": [{"name": "main", "port": port, "targetPort": target}]}}),
        )
        .await?;
        apply(
            client,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": service, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
                   "addressType": "IPv4", "ports": [{"name": "main", "port": target}],
                   "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}),
        )
        .await?;
    }
    Ok((agimo, prometheus))
}

/// The Deployment `name` at 0, its Service, its gated route for
/// `<name>.bench`, and a ScaledObject with `trigger`.
async fn workload(client: &Client, name: &str, trigger: Value) -> anyhow::Result<()> {
    let pod = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "echo", "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
            "ports": [{"containerPort": 3000}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
        }]}
    });
    apply(
        client,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
               "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": pod}}),
    )
    .await?;
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
               "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}),
    )
    .await?;
    apply(
        client,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": NS,
                            "annotations": {"agimo.dev/scale-to-zero": "true", "agimo.dev/wait-timeout": "120s"}},
               "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [format!("{name}.bench")],
                        "rules": [{"backendRefs": [{"name": name, "port": 80}]}]}}),
    )
    .await?;
    // Agimo serves the route (its series exist) before KEDA asks about it.
    let metrics: SocketAddr = format!("{ADMIN}:9090").parse()?;
    let series = format!("pending_requests_total{{host=\"{name}.bench\"}} 0");
    let started = Instant::now();
    loop {
        let reply = client::send(metrics, Mode::Http1, client::get("metrics", "/metrics")).await;
        if reply.is_ok_and(|r| String::from_utf8_lossy(&r.body).lines().any(|l| l == series)) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "agimo does not serve {name}.bench");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apply(
        client,
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name, "namespace": NS},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "minReplicaCount": 0, "maxReplicaCount": 1, "pollingInterval": 1, "cooldownPeriod": 1,
                        "triggers": [trigger]}}),
    )
    .await?;
    let started = Instant::now();
    loop {
        let so = api(client, "keda.sh/v1alpha1", "ScaledObject").await.get(name).await?;
        let ready = so.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "ScaledObject {name} not Ready: {}",
            so.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(client: &Client, label: &str, name: &str, trigger: Value, trials: usize) -> anyhow::Result<()> {
    let gateway: SocketAddr = format!("{GATEWAY}:80").parse()?;
    let host = format!("{name}.bench");
    workload(client, name, trigger).await?;
    let mut seen = watch(client, name).await;
    let (mut total, mut to_scale, mut to_ready, mut to_slice, mut to_response, mut own) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut lost = 0;
    for trial in 0..trials {
        at_zero(client, name).await?;
        while seen.try_recv().is_ok() {}
        let sent = Instant::now();
        let reply = client::send(gateway, Mode::Http1, client::get(&host, "/")).await;
        let answered = Instant::now();
        if !reply.as_ref().is_ok_and(|r| r.status == 200) {
            lost += 1;
            eprintln!("trial {trial}: lost: {:?}", reply.map(|r| r.status));
            continue;
        }
        let (mut scaled, mut ready, mut listed) = (None, None, None);
        while scaled.is_none() || ready.is_none() || listed.is_none() {
            match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
                Ok(Some(Seen::ScaleRequest(at))) => scaled = scaled.or(Some(at)),
                Ok(Some(Seen::PodReady(at))) => ready = ready.or(Some(at)),
                Ok(Some(Seen::SliceReady(at))) => listed = listed.or(Some(at)),
                _ => anyhow::bail!("trial {trial}: the watches missed the scale request, the pod or its endpoint"),
            }
        }
        let (scaled, ready, listed) = (scaled.unwrap(), ready.unwrap(), listed.unwrap());
        total.push(answered - sent);
        to_scale.push(scaled.saturating_duration_since(sent));
        to_ready.push(ready.saturating_duration_since(scaled));
        to_slice.push(listed.saturating_duration_since(ready));
        to_response.push(answered.saturating_duration_since(listed));
        own.push(scaled.saturating_duration_since(sent) + answered.saturating_duration_since(listed));
    }
    anyhow::ensure!(!total.is_empty(), "{label}: every request was lost");
    println!("{label}: hold -> scale request {}", summary(&to_scale));
    println!("{label}: scale request -> pod Ready {}", summary(&to_ready));
    println!("{label}: pod Ready -> EndpointSlice ready {}", summary(&to_slice));
    println!("{label}: EndpointSlice ready -> response {}", summary(&to_response));
    println!("{label}: agimo's share (hold -> scale request, EndpointSlice ready -> response) {}", summary(&own));
    println!(
        "cold-start {label}: n={} p50={:.0} p99={:.0} lost={lost}",
        total.len(),
        ms(percentile(&total, 0.5)),
        ms(percentile(&total, 0.99))
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(20);
    let bin = std::env::var("AGIMO_BIN").unwrap_or_else(|_| "target/release/agimo".to_owned());
    let client = Client::try_default().await?;
    let (_agimo, _prometheus) = setup(&client, &bin).await?;
    let push = json!({"type": "external-push",
                      "metadata": {"scalerAddress": format!("agimo-keda-scaler.{NS}:9091"), "httpRoute": format!("{NS}/push")}});
    run(&client, "external-push", "push", push, trials).await?;
    let query = r#"sum(pending_requests_total{host="prom.bench"}) + sum(active_requests_total{host="prom.bench"})"#;
    let prometheus = json!({"type": "prometheus",
                            "metadata": {"serverAddress": format!("http://prometheus.{NS}.svc:9090"), "query": query,
                                         "threshold": "10", "activationThreshold": "0"}});
    run(&client, "prometheus", "prom", prometheus, trials).await?;
    let _ = Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).output();
    let _ = Command::new("kubectl").args(["delete", "gatewayclass", NS, "--wait=false"]).output();
    Ok(())
}
