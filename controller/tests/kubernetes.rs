//! Kubernetes mode against a real API server (`conformance/local-cluster`).
//!
//! Run inside the cluster's network namespace, as `./test.sh` does:
//!
//! ```sh
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test -p agimo-controller --features kubernetes-tests --test kubernetes
//! ```
//!
//! Each test gets its own namespace, GatewayClass and controller name, its
//! own `agimo run` process(es), its own Gateway address pool (10.245.K.0/28)
//! and backends on 10.246.K.x, so tests run in parallel without meeting.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::echo::{self, Echo};
use agimo_testkit::tls::self_signed;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;

struct Cluster {
    client: Client,
    /// This test's namespace, also its GatewayClass name.
    ns: String,
    /// 10.245.K.0/28 (Gateway addresses) and 10.246.K.x (backends).
    k: u8,
    agimos: Vec<(Child, SocketAddr)>,
    backends: Vec<Echo>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.agimos {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Best effort; the namespace takes its objects with it.
        let _ = Command::new("kubectl").args(["delete", "namespace", &self.ns, "--wait=false"]).output();
        let _ = Command::new("kubectl").args(["delete", "gatewayclass", &self.ns, "--wait=false"]).output();
    }
}

impl Cluster {
    async fn new(name: &str) -> Cluster {
        static NEXT: AtomicU8 = AtomicU8::new(1);
        assert!(
            std::env::var_os("KUBECONFIG").is_some(),
            "run inside the local cluster: conformance/local-cluster exec -- cargo test ... --test kubernetes"
        );
        let client = Client::try_default().await.expect("kubeconfig");
        let k = (std::process::id() % 50) as u8 * 5 + NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("agimo-{name}-{k}");
        let cluster = Cluster { client, ns, k, agimos: Vec::new(), backends: Vec::new() };
        cluster
            .apply(&format!(
                "apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {ns}}}
spec: {{controllerName: agimo.dev/{ns}}}
",
                ns = cluster.ns
            ))
            .await;
        cluster
    }

    /// Starts an `agimo run` replica for this test's controller.
    fn start_agimo(&mut self) -> SocketAddr {
        let replica = self.agimos.len() as u8;
        let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 246, self.k, 240 + replica)), 9901);
        let metrics = SocketAddr::new(admin.ip(), 9090);
        let child = Command::new(env!("CARGO_BIN_EXE_agimo"))
            .args(["run", "--controller-name", &format!("agimo.dev/{}", self.ns)])
            .args(["--gateway-address-pool", &format!("10.245.{}.0/28", self.k)])
            .args(["--leader-election-namespace", &self.ns, "--leader-election-id", "agimo"])
            .args(["--admin-address", &admin.to_string(), "--metrics-address", &metrics.to_string()])
            .env("POD_NAME", format!("replica-{replica}"))
            .env("RUST_LOG", "info,agimo_controller::status=warn")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("agimo starts");
        self.agimos.push((child, admin));
        admin
    }

    /// Starts an echo backend at 10.246.K.`host`:3000.
    async fn backend(&mut self, name: &str, host: u8) -> IpAddr {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 246, self.k, host));
        self.backends.push(echo::spawn(SocketAddr::new(ip, 3000), name).await.expect("backend listens"));
        ip
    }

    /// Server-side applies multi-document YAML; `{ns}` is this test's namespace.
    async fn apply(&self, yaml: &str) {
        let yaml = yaml.replace("{ns}", &self.ns);
        for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if value.is_null() {
                continue;
            }
            let resource = api_resource(value["kind"].as_str().expect("kind"));
            let name = value["metadata"]["name"].as_str().expect("name").to_owned();
            let api: Api<DynamicObject> = match value["kind"].as_str() {
                Some("Namespace" | "GatewayClass") => Api::all_with(self.client.clone(), &resource),
                _ => Api::namespaced_with(self.client.clone(), &self.ns, &resource),
            };
            let object: DynamicObject = serde_json::from_value(value).expect("object");
            api.patch(&name, &PatchParams::apply("agimo-tests").force(), &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        }
    }

    async fn get(&self, kind: &str, name: &str) -> Value {
        let resource = api_resource(kind);
        let api: Api<DynamicObject> = match kind {
            "GatewayClass" => Api::all_with(self.client.clone(), &resource),
            _ => Api::namespaced_with(self.client.clone(), &self.ns, &resource),
        };
        serde_json::to_value(api.get(name).await.unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))).unwrap()
    }

    /// Waits up to 30 s for `check` to hold on the object; returns it.
    async fn wait_for(&self, kind: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let object = self.get(kind, name).await;
            if check(&object) {
                return object;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("{kind} {name}: {what}: not within 30 s; last seen:\n{:#}", object["status"]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn api_resource(kind: &str) -> ApiResource {
    let (group, version, plural) = match kind {
        "Namespace" => ("", "v1", "namespaces"),
        "Service" => ("", "v1", "services"),
        "Secret" => ("", "v1", "secrets"),
        "EndpointSlice" => ("discovery.k8s.io", "v1", "endpointslices"),
        "GatewayClass" => ("gateway.networking.k8s.io", "v1", "gatewayclasses"),
        "Gateway" => ("gateway.networking.k8s.io", "v1", "gateways"),
        "HTTPRoute" => ("gateway.networking.k8s.io", "v1", "httproutes"),
        "ReferenceGrant" => ("gateway.networking.k8s.io", "v1beta1", "referencegrants"),
        other => panic!("no ApiResource for {other}"),
    };
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

/// The condition of `type_` in a conditions list.
fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

/// `type_` is `status` with `reason`, at the object's current generation.
fn has(object: &Value, conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| {
        c["status"] == status && c["reason"] == reason && c["observedGeneration"] == object["metadata"]["generation"]
    })
}

/// Our parents entry of a route, for Gateway `gw`.
fn our_parent<'a>(route: &'a Value, ns: &str, gw: &str) -> Option<&'a Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == format!("agimo.dev/{ns}") && p["parentRef"]["name"] == gw)
}

fn gateway_address(gateway: &Value) -> Option<IpAddr> {
    gateway["status"]["addresses"].get(0)?["value"].as_str()?.parse().ok()
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<Reply> {
    client::send(addr, Mode::Http1, client::get(host, path)).await.ok()
}

/// Waits up to 30 s for a request to be answered by `backend` (or with the
/// status `want` if `backend` is empty); 3 good answers in a row, as the
/// conformance suite requires.
async fn eventually_served(addr: SocketAddr, host: &str, path: &str, want: u16, backend: &str) -> Duration {
    let started = Instant::now();
    let mut streak = 0;
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        match get(addr, host, path).await {
            Some(r) if r.status == want && (backend.is_empty() || r.echo().backend == backend) => {
                streak += 1;
                if streak == 3 {
                    return started.elapsed();
                }
                continue;
            }
            Some(r) => last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
            None => last = "connection failed".into(),
        }
        streak = 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{host}{path} via {addr}: wanted {want} from {backend:?}, last: {last}");
}

fn service(name: &str, ip: IpAddr) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: '{{ns}}'}}
spec: {{ports: [{{name: http, port: 80, targetPort: 3000}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: '{{ns}}', labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 3000}}]
endpoints: [{{addresses: ['{ip}'], conditions: {{ready: true}}}}]
"
    )
}

fn gateway(name: &str, listeners: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: '{{ns}}'}}
spec:
  gatewayClassName: '{{ns}}'
  listeners:
{listeners}"
    )
}

fn route(name: &str, gw: &str, path: &str, backend: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: '{{ns}}'}}
spec:
  parentRefs: [{{name: {gw}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {backend}, port: 80}}]
"
    )
}

#[tokio::test]
async fn statuses_traffic_and_changes() {
    let mut c = Cluster::new("basic").await;
    let v1 = c.backend("v1", 1).await;
    let v2 = c.backend("v2", 2).await;
    c.start_agimo();
    c.apply(
        &(gateway("gw", "  - {name: http, port: 80, protocol: HTTP}\n")
            + &service("svc", v1)
            + &route("r", "gw", "/app", "svc")),
    )
    .await;

    // GatewayClass: Accepted, with the features it supports.
    let class = c
        .wait_for("GatewayClass", &c.ns, "Accepted", |o| {
            has(o, &o["status"]["conditions"], "Accepted", "True", "Accepted")
        })
        .await;
    let features: Vec<&str> =
        class["status"]["supportedFeatures"].as_array().unwrap().iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(features, agimo_controller::compiler::SUPPORTED_FEATURES);

    // Gateway: Accepted and Programmed at its generation, an address from the
    // pool, one attached route.
    let gw = c
        .wait_for("Gateway", "gw", "Programmed with an address", |o| {
            has(o, &o["status"]["conditions"], "Accepted", "True", "Accepted")
                && has(o, &o["status"]["conditions"], "Programmed", "True", "Programmed")
                && gateway_address(o).is_some()
                && o["status"]["listeners"][0]["attachedRoutes"] == 1
        })
        .await;
    let address = gateway_address(&gw).unwrap();
    assert_eq!(gw["status"]["addresses"][0]["type"], "IPAddress");
    assert!(address.to_string().starts_with(&format!("10.245.{}.", c.k)), "{address}");
    let listener = &gw["status"]["listeners"][0];
    assert_eq!(listener["supportedKinds"][0]["kind"], "HTTPRoute");
    for t in ["Accepted", "Programmed", "ResolvedRefs"] {
        assert_eq!(condition(&listener["conditions"], t).unwrap()["status"], "True", "{t}");
    }

    // HTTPRoute: Accepted and ResolvedRefs for our Gateway.
    let ns = c.ns.clone();
    c.wait_for("HTTPRoute", "r", "Accepted", |o| {
        our_parent(o, &ns, "gw").is_some_and(|p| {
            has(o, &p["conditions"], "Accepted", "True", "Accepted")
                && has(o, &p["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
        })
    })
    .await;
    let at = SocketAddr::new(address, 80);
    eventually_served(at, "app.test", "/app/x", 200, "v1").await;

    // An HTTPRoute change takes effect, and the status follows the generation.
    c.apply(&route("r", "gw", "/moved", "svc")).await;
    eventually_served(at, "app.test", "/moved", 200, "v1").await;
    eventually_served(at, "app.test", "/app/x", 404, "").await;
    c.wait_for("HTTPRoute", "r", "observedGeneration 2", |o| {
        o["metadata"]["generation"] == 2
            && our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "Accepted", "True", "Accepted"))
    })
    .await;

    // An EndpointSlice change takes effect.
    c.apply(&service("svc", v2)).await;
    eventually_served(at, "app.test", "/moved", 200, "v2").await;

    // A missing backend: ResolvedRefs=False BackendNotFound, and 500.
    c.apply(&route("r", "gw", "/moved", "missing")).await;
    c.wait_for("HTTPRoute", "r", "BackendNotFound", |o| {
        our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "ResolvedRefs", "False", "BackendNotFound"))
    })
    .await;
    eventually_served(at, "app.test", "/moved", 500, "").await;

    // Another controller's parents entry survives our writes.
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &c.ns, &api_resource("HTTPRoute"));
    let mut r = serde_json::to_value(api.get("r").await.unwrap()).unwrap();
    let generation = r["metadata"]["generation"].clone();
    r["status"]["parents"].as_array_mut().unwrap().push(serde_json::json!({
        "controllerName": "example.com/other",
        "parentRef": {"name": "elsewhere"},
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}]
    }));
    let r: DynamicObject = serde_json::from_value(r).unwrap();
    api.replace_status("r", &Default::default(), &r).await.unwrap();
    c.apply(&route("r", "gw", "/moved", "svc")).await;
    let r = c
        .wait_for("HTTPRoute", "r", "resolved again", |o| {
            our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "ResolvedRefs", "True", "ResolvedRefs"))
        })
        .await;
    let controllers: Vec<&str> =
        r["status"]["parents"].as_array().unwrap().iter().filter_map(|p| p["controllerName"].as_str()).collect();
    assert!(controllers.contains(&"example.com/other"), "{controllers:?}");
}

#[tokio::test]
async fn two_gateways_each_get_an_address_and_serve_port_80() {
    let mut c = Cluster::new("multi").await;
    let v1 = c.backend("one", 1).await;
    let v2 = c.backend("two", 2).await;
    c.start_agimo();
    let http = "  - {name: http, port: 80, protocol: HTTP}\n";
    c.apply(
        &(gateway("gw-one", http)
            + &gateway("gw-two", http)
            + &service("svc-one", v1)
            + &service("svc-two", v2)
            + &route("to-one", "gw-one", "/", "svc-one")
            + &route("to-two", "gw-two", "/", "svc-two")),
    )
    .await;
    let mut addresses = Vec::new();
    for name in ["gw-one", "gw-two"] {
        let gw = c.wait_for("Gateway", name, "an address", |o| gateway_address(o).is_some()).await;
        addresses.push(gateway_address(&gw).unwrap());
    }
    assert_ne!(addresses[0], addresses[1]);
    eventually_served(SocketAddr::new(addresses[0], 80), "x", "/", 200, "one").await;
    eventually_served(SocketAddr::new(addresses[1], 80), "x", "/", 200, "two").await;
}

#[tokio::test]
async fn a_certificate_change_applies_to_new_handshakes() {
    let mut c = Cluster::new("tls").await;
    let v1 = c.backend("v1", 1).await;
    c.start_agimo();
    let secret = |cert: &agimo_testkit::tls::TestCert| {
        let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: '{{ns}}'}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
            indent(&cert.cert_pem),
            indent(&cert.key_pem)
        )
    };
    let first = self_signed(&["secure.test"]);
    let second = self_signed(&["secure.test"]);
    c.apply(
        &(gateway(
            "gw",
            "  - {name: https, port: 443, protocol: HTTPS, hostname: secure.test, tls: {certificateRefs: [{name: cert}]}}\n",
        ) + &secret(&first)
            + &service("svc", v1)
            + &route("r", "gw", "/", "svc")),
    )
    .await;
    let gw = c
        .wait_for("Gateway", "gw", "Programmed", |o| {
            gateway_address(o).is_some()
                && has(o, &o["status"]["listeners"][0]["conditions"], "Programmed", "True", "Programmed")
        })
        .await;
    let at = SocketAddr::new(gateway_address(&gw).unwrap(), 443);
    let handshake = |cert: &agimo_testkit::tls::TestCert| {
        let root = cert.der.clone();
        async move { client::tls_connect(at, "secure.test", &[root], &[]).await }
    };
    // The listener may serve the certificate a moment before the route is
    // attached (a 404 then): wait for the route's 200 over it.
    let served = |cert| async move {
        let (stream, _) = handshake(cert).await.ok()?;
        client::send_on(stream, Mode::Http1, client::get("secure.test", "/")).await.ok().map(|r| r.status.as_u16())
    };
    let started = Instant::now();
    let mut last = None;
    while last != Some(200) {
        last = served(&first).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the route is never served with the first certificate: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.apply(&secret(&second)).await;
    let started = Instant::now();
    while handshake(&second).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the new certificate is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handshake(&first).await.is_err(), "the old certificate is no longer served");
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let mut c = Cluster::new("leader").await;
    let v1 = c.backend("v1", 1).await;
    c.start_agimo();
    c.start_agimo();
    c.apply(
        &(gateway("gw", "  - {name: http, port: 80, protocol: HTTP}\n")
            + &service("svc", v1)
            + &route("r", "gw", "/", "svc")),
    )
    .await;
    let ns = c.ns.clone();
    c.wait_for("HTTPRoute", "r", "Accepted", |o| our_parent(o, &ns, "gw").is_some()).await;
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.ns);
    let holder = leases.get("agimo").await.unwrap().spec.unwrap().holder_identity.unwrap();
    let leader = holder.strip_prefix("replica-").unwrap().parse::<usize>().unwrap();
    // Both replicas compile and report whether they lead; only the holder does.
    for (i, (_, admin)) in c.agimos.iter().enumerate() {
        let want = format!("leader: {}", i == leader);
        let started = Instant::now();
        loop {
            let status = get(*admin, "admin", "/status").await.map(|r| String::from_utf8_lossy(&r.body).into_owned());
            if status.as_deref().is_some_and(|s| s.contains(&want)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "replica {i} never reported {want}: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The leader goes away; the follower takes the Lease and writes the
    // status of a route created afterwards.
    let (mut child, _) = c.agimos.remove(leader);
    child.kill().unwrap();
    child.wait().unwrap();
    c.apply(&route("after", "gw", "/after", "svc")).await;
    let started = Instant::now();
    c.wait_for("HTTPRoute", "after", "Accepted by the new leader", |o| our_parent(o, &ns, "gw").is_some()).await;
    eprintln!("the follower wrote the new route's status after {:?}", started.elapsed());
    let holder = leases.get("agimo").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_ne!(holder, format!("replica-{leader}"));
    // The follower's dataplane now holds the Gateway's address (the two
    // replicas share one network namespace here, so only one could bind).
    let gw = c.get("Gateway", "gw").await;
    eventually_served(SocketAddr::new(gateway_address(&gw).unwrap(), 80), "x", "/after", 200, "v1").await;
}
