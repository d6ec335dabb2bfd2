//! Scale-to-zero end to end on the local cluster, with KEDA doing every
//! scaling: a Deployment and a StatefulSet of echo-basic pods at 0 replicas
//! behind gated HTTPRoutes, the ScaledObjects of `config/keda/` applied as
//! written (only names, the short cooldown and the per-replica target
//! changed), once with Agimo as KEDA's `external-push` scaler and once with
//! KEDA's prometheus scaler reading a real Prometheus that scrapes Agimo.
//! KEDA reaches both by Service names. No code here scales a workload.
//!
//! ```sh
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test -p agimo-controller --features kubernetes-tests --test scale_to_zero
//! ```

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agimo_testkit::client::{self, Mode};
use agimo_testkit::wait::{condition, eventually_within};
use futures_util::{SinkExt, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const NS: &str = "agimo-scale-to-zero";
/// Gateway address, and Agimo's and Prometheus' addresses in the cluster's
/// namespace (pods reach them through the node's bridge).
const GATEWAY: &str = "10.245.240.1";
const ADMIN: &str = "10.246.240.1";
const PROMETHEUS: &str = "10.246.240.2";
/// Seconds KEDA waits after the last activity before scaling to zero.
const COOLDOWN: u64 = 5;

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
    gateway: SocketAddr,
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

async fn apply(client: &Client, object: Value) {
    agimo_testkit::kube::apply(client, NS, object, "agimo-tests").await;
}

async fn get(client: &Client, api_version: &str, kind: &str, name: &str) -> Value {
    let api = agimo_testkit::kube::api(client, NS, api_version, kind).await;
    serde_json::to_value(api.get(name).await.unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))).unwrap()
}

/// The documents of a file of `config/keda/`.
fn example(file: &str) -> Vec<Value> {
    let path = format!("{}/../config/keda/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// How KEDA learns that a workload is wanted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trigger {
    /// Agimo's own scaler: a stream KEDA keeps open.
    Push,
    /// KEDA's prometheus scaler, polling a Prometheus that scrapes Agimo.
    Prometheus,
}

/// The example of `config/keda/` for `trigger` and `kind`, with this test's
/// names: the HTTPRoute and the ScaledObject for workload `name` at `host`.
/// Besides names, only what a test must shorten changes: the cooldown, the
/// per-replica target (so that a few open websockets ask for 2 replicas) and
/// the prometheus scaler's polling interval.
fn scaled(trigger: Trigger, kind: &str, name: &str, host: &str) -> Vec<Value> {
    let file = match (trigger, kind) {
        (Trigger::Push, "Deployment") => "push-deployment.yaml",
        (Trigger::Push, _) => "push-statefulset.yaml",
        (Trigger::Prometheus, "Deployment") => "prometheus-deployment.yaml",
        (Trigger::Prometheus, _) => "prometheus-statefulset.yaml",
    };
    let mut docs = example(file);
    for doc in &mut docs {
        let old_host = match doc["kind"].as_str() {
            Some("HTTPRoute") => doc["spec"]["hostnames"][0].as_str().unwrap().to_owned(),
            _ => String::new(),
        };
        doc["metadata"]["namespace"] = json!(NS);
        doc["metadata"]["name"] = json!(name);
        match doc["kind"].as_str().unwrap() {
            "HTTPRoute" => {
                assert_eq!(doc["metadata"]["annotations"]["agimo.dev/scale-to-zero"], "true", "{file}: a gated route");
                doc["spec"]["parentRefs"] = json!([{"name": "gw"}]);
                doc["spec"]["hostnames"] = json!([host]);
                doc["spec"]["rules"][0]["backendRefs"][0]["name"] = json!(name);
                assert!(!old_host.is_empty());
            }
            "ScaledObject" => {
                let spec = &mut doc["spec"];
                assert_eq!(spec["scaleTargetRef"]["kind"], kind, "{file}");
                assert_eq!(spec["minReplicaCount"], 0, "{file}: scales to zero");
                spec["scaleTargetRef"]["name"] = json!(name);
                spec["cooldownPeriod"] = json!(COOLDOWN);
                let kind_of_trigger = spec["triggers"][0]["type"].clone();
                if trigger == Trigger::Prometheus {
                    spec["pollingInterval"] = json!(1);
                }
                let meta = &mut spec["triggers"][0]["metadata"];
                match trigger {
                    Trigger::Push => {
                        assert_eq!(kind_of_trigger, "external-push", "{file}");
                        let address = meta["scalerAddress"].as_str().unwrap();
                        assert_eq!(address, "agimo-keda-scaler.agimo-system:9091", "{file}: the chart's Service");
                        meta["scalerAddress"] = json!(format!("agimo-keda-scaler.{NS}:9091"));
                        meta["httpRoute"] = json!(format!("{NS}/{name}"));
                        meta["targetValue"] = json!("2");
                    }
                    Trigger::Prometheus => {
                        assert_eq!(kind_of_trigger, "prometheus", "{file}");
                        let query = meta["query"].as_str().unwrap();
                        let example_host = query.split('"').nth(1).unwrap().to_owned();
                        let query = query.replace(&example_host, host);
                        let server =
                            meta["serverAddress"].as_str().unwrap().replace(".monitoring.", &format!(".{NS}."));
                        meta["query"] = json!(query);
                        meta["serverAddress"] = json!(server);
                        meta["threshold"] = json!("2");
                    }
                }
            }
            other => panic!("{file}: unexpected {other}"),
        }
    }
    docs
}

/// A workload of echo-basic pods (run by the node agent) at 0 replicas and
/// its Service. No readiness probe: a pod is Ready when its process starts,
/// before it listens, as on a real kubelet.
async fn workload(client: &Client, kind: &str, name: &str) {
    let pod = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "echo",
            "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
            "ports": [{"containerPort": 3000}],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
            ]
        }]}
    });
    backing(client, kind, name, pod).await;
}

/// `kind` (at 0 replicas) of `pod`, and a Service for its port 3000.
async fn backing(client: &Client, kind: &str, name: &str, pod: Value) {
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
}

/// Applies the route and, once Agimo serves it, the ScaledObject; waits for
/// KEDA to make it Ready (its HPA exists).
async fn scale_with(client: &Client, docs: Vec<Value>, host: &str) {
    let (routes, scaled): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(|d| d["kind"] == "HTTPRoute");
    for route in routes {
        apply(client, route).await;
    }
    eventually_within(Duration::from_secs(60), &format!("{host} is served (its series declared)"), || async {
        metric("pending_requests_total", host).await == Some(0.0)
    })
    .await;
    for object in scaled {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        apply(client, object).await;
        eventually_within(Duration::from_secs(60), &format!("ScaledObject {name} is Ready"), || async {
            let so = get(client, "keda.sh/v1alpha1", "ScaledObject", &name).await;
            condition(&so["status"]["conditions"], "Ready").is_some_and(|c| c["status"] == "True")
        })
        .await;
    }
}

async fn replicas(client: &Client, kind: &str, name: &str) -> i64 {
    get(client, "apps/v1", kind, name).await["spec"]["replicas"].as_i64().unwrap_or(0)
}

/// Waits until KEDA has scaled the workload to zero and its pods are gone.
async fn at_zero(client: &Client, kind: &str, name: &str, seconds: u64) {
    eventually_within(Duration::from_secs(seconds), &format!("KEDA scales {kind} {name} to 0"), || async {
        replicas(client, kind, name).await == 0
    })
    .await;
    let pods: Api<DynamicObject> = agimo_testkit::kube::api(client, NS, "v1", "Pod").await;
    eventually_within(Duration::from_secs(60), &format!("{name}'s pods are gone"), || async {
        pods.list(&ListParams::default().labels(&format!("app={name}"))).await.unwrap().items.is_empty()
    })
    .await;
}

async fn metric(name: &str, host: &str) -> Option<f64> {
    let addr: SocketAddr = format!("{ADMIN}:9090").parse().unwrap();
    let reply = client::send(addr, Mode::Http1, client::get("metrics", "/metrics")).await.ok()?;
    support::metric(&String::from_utf8_lossy(&reply.body), name, host)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a websocket to echo-basic through the Gateway.
async fn websocket(gateway: SocketAddr, host: &str) -> Socket {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let request = http::Request::get(format!("ws://{host}/ws"))
        .header("Host", host)
        .header("Origin", format!("http://{host}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", tokio_tungstenite::tungstenite::handshake::client::generate_key())
        .body(())
        .unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.expect("the websocket opens");
    assert_eq!(response.status(), 101);
    socket
}

async fn echo(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(text));
}

/// One workload through the whole loop, KEDA scaling it every time.
async fn cycle(env: &Env, trigger: Trigger, kind: &str, name: &str) {
    let host = format!("{name}.example");
    let client = &env.client;
    workload(client, kind, name).await;
    scale_with(client, scaled(trigger, kind, name, &host), &host).await;
    assert_eq!(replicas(client, kind, name).await, 0, "{name} starts at zero");

    // A held request makes KEDA scale to 1, and the new pod answers it.
    let reply = client::send(env.gateway, Mode::Http1, client::get(&host, "/first")).await.expect("answered");
    assert_eq!(reply.status, 200, "{trigger:?} {name}");
    let echoed: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(echoed["pod"].as_str().unwrap().starts_with(&format!("{name}-")), "{echoed}");
    assert_eq!(echoed["path"], "/first");

    // Idle: KEDA scales it back to zero after the cooldown.
    at_zero(client, kind, name, COOLDOWN + 60).await;

    // A websocket is held the same way, and keeps the workload up past the
    // cooldown while it is open.
    let mut first = websocket(env.gateway, &host).await;
    echo(&mut first, "hello").await;
    // Load: four more open sessions, five active requests for a target of 2
    // per replica; the HPA that KEDA made scales to 2 or more.
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(websocket(env.gateway, &host).await);
    }
    eventually_within(Duration::from_secs(90), &format!("{trigger:?}: the HPA scales {name} to 2 or more"), || async {
        replicas(client, kind, name).await >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2 * COOLDOWN)).await;
    assert!(replicas(client, kind, name).await >= 1, "open websockets keep {name} up past the cooldown");
    echo(&mut first, "still here").await;
    for mut socket in more.into_iter().chain([first]) {
        socket.close(None).await.unwrap();
    }

    // Idle again: back to zero, and the next request is held again.
    at_zero(client, kind, name, COOLDOWN + 60).await;
    let reply = client::send(env.gateway, Mode::Http1, client::get(&host, "/again")).await.expect("answered");
    assert_eq!(reply.status, 200);
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
            .args(["--keda-scaler-address", &format!("{ADMIN}:9091")])
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
            .arg(format!("--web.listen-address={PROMETHEUS}:9099"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt install prometheus) starts"),
    );
    // The names KEDA dials, as a Helm release of Agimo and a cluster's
    // Prometheus would have them: Services whose endpoints are the
    // processes above.
    for (service, ip, port, target) in
        [("agimo-keda-scaler", ADMIN, 9091, 9091), ("prometheus", PROMETHEUS, 9090, 9099)]
    {
        apply(
            &client,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": NS},
                   "spec": {"ports": [{"name": "main", "port": port, "targetPort": target}]}}),
        )
        .await;
        apply(
            &client,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": service, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
                   "addressType": "IPv4", "ports": [{"name": "main", "port": target}],
                   "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}),
        )
        .await;
    }
    let gateway = format!("{GATEWAY}:80").parse().unwrap();
    Env { client, gateway, _agimo: agimo, _prometheus: prometheus, prometheus_dir }
}

#[tokio::test]
async fn keda_scales_deployments_and_statefulsets_from_and_to_zero() {
    let env = setup().await;
    // Both triggers, both kinds of workload, and the late listener, side by
    // side.
    tokio::join!(
        cycle(&env, Trigger::Push, "Deployment", "web-push"),
        cycle(&env, Trigger::Push, "StatefulSet", "db-push"),
        cycle(&env, Trigger::Prometheus, "Deployment", "web-prom"),
        cycle(&env, Trigger::Prometheus, "StatefulSet", "db-prom"),
        late_listener(&env),
    );
}

/// A backend that listens 2 s after its pod is Ready (a shell that starts
/// busybox httpd late; Ready at once, as a kubelet has it without a
/// readiness probe): the requests held for it are all answered, none lost.
async fn late_listener(env: &Env) {
    let pod = json!({
        "metadata": {"labels": {"app": "late"}},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "late",
            "image": "agimo-node-agent/test-shell",
            "command": ["sh", "-c", "echo late > /www/index.html; sleep 2; exec /bin/busybox httpd -f -p 3000 -h /www"],
            "volumeMounts": [{"name": "www", "mountPath": "/www"}]
        }], "volumes": [{"name": "www", "emptyDir": {}}]}
    });
    backing(&env.client, "Deployment", "late", pod).await;
    scale_with(&env.client, scaled(Trigger::Push, "Deployment", "late", "late.example"), "late.example").await;
    let requests: Vec<_> = (0..5)
        .map(|i| tokio::spawn(client::send(env.gateway, Mode::Http1, client::get("late.example", &format!("/?{i}")))))
        .collect();
    // Released to the pod as soon as it is Ready, their connects are
    // refused for 2 s; the gate retries them until the backend listens.
    for request in requests {
        let reply = request.await.unwrap().expect("answered");
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(&reply.body[..], b"late\n");
    }
}

#[tokio::test]
async fn the_keda_examples_are_valid_objects() {
    assert!(std::env::var_os("KUBECONFIG").is_some(), "run inside conformance/local-cluster exec");
    let client = Client::try_default().await.unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{}/../config/keda", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        for doc in example(&file) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let api_version = doc["apiVersion"].as_str().unwrap().to_owned();
            let namespace = doc["metadata"]["namespace"].as_str().unwrap().to_owned();
            let object: DynamicObject = serde_json::from_value(doc).unwrap();
            agimo_testkit::kube::api(&client, &namespace, &api_version, &kind)
                .await
                .create(&PostParams { dry_run: true, ..Default::default() }, &object)
                .await
                .unwrap_or_else(|e| panic!("{file}: {kind} refused by the API server (server-side dry run): {e}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "four examples of two objects each");
}
