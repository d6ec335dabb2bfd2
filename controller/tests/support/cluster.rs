//! A test's share of the local cluster (`conformance/local-cluster`): its
//! namespace, GatewayClass, `agimo run` processes and backends, and helpers
//! to apply and read objects. For the tests run inside the cluster's network
//! namespace (feature `kubernetes-tests`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::echo::{self, Echo};
use agimo_testkit::objects::HttpRoute;
use agimo_testkit::wait::{condition, eventually};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;

pub struct Cluster {
    pub client: Client,
    /// This test's namespace, also its GatewayClass name.
    pub ns: String,
    /// 10.245.K.0/28 (Gateway addresses) and 10.246.K.x (backends).
    pub k: u8,
    pub agimos: Vec<(Child, SocketAddr)>,
    pub backends: Vec<Echo>,
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
    pub async fn new(name: &str) -> Cluster {
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
    pub fn start_agimo(&mut self) -> SocketAddr {
        let replica = self.agimos.len() as u8;
        let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 246, self.k, 240 + replica)), 9901);
        let metrics = SocketAddr::new(admin.ip(), 9090);
        let child = Command::new(env!("CARGO_BIN_EXE_agimo"))
            .args(["run", "--controller-name", &format!("agimo.dev/{}", self.ns)])
            .args(["--gateway-address-pool", &format!("10.245.{}.0/28", self.k)])
            .args(["--leader-election-namespace", &self.ns, "--leader-election-id", "agimo"])
            .args(["--admin-address", &admin.to_string(), "--metrics-address", &metrics.to_string()])
            .args(["--keda-scaler-address", &SocketAddr::new(admin.ip(), 9091).to_string()])
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
    pub async fn backend(&mut self, name: &str, host: u8) -> IpAddr {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 246, self.k, host));
        self.backends.push(echo::spawn(SocketAddr::new(ip, 3000), name).await.expect("backend listens"));
        ip
    }

    /// Server-side applies multi-document YAML; `{ns}` is this test's namespace.
    pub async fn apply(&self, yaml: &str) {
        self.try_apply(yaml).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Cluster::apply`], with the API server's error returned.
    pub async fn try_apply(&self, yaml: &str) -> Result<(), String> {
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
                .map_err(|e| format!("apply {name}: {e}"))?;
        }
        Ok(())
    }

    pub async fn get(&self, kind: &str, name: &str) -> Value {
        self.get_opt(kind, name).await.unwrap_or_else(|| panic!("get {kind} {name}: not found"))
    }

    /// The object, or `None` if it does not exist (yet).
    pub async fn get_opt(&self, kind: &str, name: &str) -> Option<Value> {
        let resource = api_resource(kind);
        let api: Api<DynamicObject> = match kind {
            "GatewayClass" => Api::all_with(self.client.clone(), &resource),
            _ => Api::namespaced_with(self.client.clone(), &self.ns, &resource),
        };
        let object = api.get_opt(name).await.unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))?;
        Some(serde_json::to_value(object).unwrap())
    }

    /// Waits for the object to exist and `check` to hold on it (see
    /// [`eventually`]); returns it.
    pub async fn wait_for(&self, kind: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("{kind} {name}: {what}"), || async {
            let object = self.get_opt(kind, name).await.ok_or_else(|| "not created yet".to_owned())?;
            if check(&object) { Ok(object) } else { Err(format!("status:\n{:#}", object["status"])) }
        })
        .await
    }
}

pub fn api_resource(kind: &str) -> ApiResource {
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

/// `type_` is `status` with `reason`, at the object's current generation.
pub fn has(object: &Value, conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| {
        c["status"] == status && c["reason"] == reason && c["observedGeneration"] == object["metadata"]["generation"]
    })
}

/// Our parents entry of a route, for Gateway `gw`.
pub fn our_parent<'a>(route: &'a Value, ns: &str, gw: &str) -> Option<&'a Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == format!("agimo.dev/{ns}") && p["parentRef"]["name"] == gw)
}

pub fn gateway_address(gateway: &Value) -> Option<IpAddr> {
    gateway["status"]["addresses"].get(0)?["value"].as_str()?.parse().ok()
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<Reply> {
    client::send(addr, Mode::Http1, client::get(host, path)).await.ok()
}

/// Waits (see [`eventually`]) for a request to be answered by `backend` (or
/// with the status `want` if `backend` is empty) 3 times in a row, as the
/// conformance suite requires; returns how long it took.
pub async fn eventually_served(addr: SocketAddr, host: &str, path: &str, want: u16, backend: &str) -> Duration {
    let started = Instant::now();
    eventually(&format!("{host}{path} via {addr}: {want} from {backend:?}, 3 times in a row"), || async {
        for _ in 0..3 {
            match get(addr, host, path).await {
                Some(r) if r.status == want && (backend.is_empty() || r.echo().backend == backend) => {}
                Some(r) => return Err(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
                None => return Err("connection failed".to_owned()),
            }
        }
        Ok(())
    })
    .await;
    started.elapsed()
}

pub fn service(name: &str, ip: IpAddr) -> String {
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

pub fn gateway(name: &str, listeners: &str) -> String {
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

/// An HTTPRoute in this test's namespace on Gateway `gw`, sending `path`
/// and below to Service `backend`, port 80.
pub fn route(name: &str, gw: &str, path: &str, backend: &str) -> String {
    HttpRoute::new(name).namespace("{ns}").parent(gw).path_prefix(path).backend(backend).yaml()
}
