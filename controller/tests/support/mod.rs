//! An in-process Agimo for tests: YAML → loader → compiler → dataplane,
//! serving on a loopback address of its own, in front of echo backends.
#![allow(dead_code)]

#[cfg(feature = "kubernetes-tests")]
pub mod cluster;
pub mod process;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use agimo_controller::sources::files;
use agimo_controller::{Carryover, Compiled, Statuses, compile};
use agimo_dataplane::{Config, Dataplane, Metrics};
use agimo_shared::Snapshot;
use agimo_testkit::client::{self, Mode, Reply};
use agimo_testkit::echo::{self, Echo};
pub use agimo_testkit::objects::HttpRoute;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A loopback address no other test in this process uses, so every test can
/// listen on the same ports.
pub fn unique_loopback() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, (20 + pid % 200) as u8, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// A GatewayClass `agimo` and a Gateway `default/gw` at `{{ip}}` with these
/// listeners (YAML list items).
pub fn gateway_yaml(listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: agimo}}
spec: {{controllerName: agimo.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: agimo
  addresses: [{{type: IPAddress, value: '{{{{ip}}}}'}}]
  listeners:
{listeners}"
    )
}

/// A ConfigMap `default/<name>` holding `ca.crt`: the CA bundle of a
/// BackendTLSPolicy or of a Gateway's client certificate validation.
pub fn ca_config_map(name: &str, ca: &agimo_testkit::tls::TestCa) -> String {
    let indent: String = ca.cert_pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: default}}
data:
  ca.crt: |
{indent}"
    )
}

/// The HTTP listener on 8080 that admits routes from all namespaces.
pub const HTTP_LISTENER: &str =
    "  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n";

/// [`gateway_yaml`] with [`HTTP_LISTENER`], and for each backend name a
/// Service `<name>` (port 80) whose EndpointSlice points at the echo server
/// of that name.
pub fn base_yaml(backends: &[&str]) -> String {
    let mut yaml = gateway_yaml(HTTP_LISTENER);
    for name in backends {
        yaml.push_str(&service_yaml(name));
    }
    yaml
}

/// An HTTPRoute on `gw` sending everything to Service `backend`, port 80.
pub fn route_to(name: &str, backend: &str) -> String {
    HttpRoute::new(name).backend(backend).yaml()
}

/// An HTTPRoute on `gw` for `hostname`, sending everything to Service
/// `backend`, port 80.
pub fn route_for_host(name: &str, hostname: &str, backend: &str) -> String {
    HttpRoute::new(name).hostname(hostname).backend(backend).yaml()
}

/// A Service `<name>` with one ready endpoint: the echo server `<name>`.
pub fn service_yaml(name: &str) -> String {
    service_at(name, &format!("{{{{port:{name}}}}}"))
}

/// A Service `<name>` (port 80, `appProtocol` if given) whose EndpointSlice
/// lists no endpoint: a workload scaled to zero.
pub fn service_without_endpoints(name: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 1}}]
endpoints: []
"
    )
}

/// A Service `<name>` whose one ready endpoint is 127.0.0.1:`port`.
pub fn service_at(name: &str, port: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

pub struct Agimo {
    pub ip: IpAddr,
    /// What one compile hands the next (annotation values in force).
    in_force: std::sync::Mutex<Carryover>,
    pub dataplane: Dataplane,
    pub backends: BTreeMap<String, Echo>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stop: CancellationToken,
}

impl Drop for Agimo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Agimo {
    /// Starts echo backends with these names and an Agimo serving `yaml`.
    pub async fn start(yaml: &str, backends: &[&str]) -> Agimo {
        Self::start_with(yaml, backends, Config::default()).await
    }

    pub async fn start_with(yaml: &str, backends: &[&str], config: Config) -> Agimo {
        let ip = unique_loopback();
        let mut echoes = BTreeMap::new();
        for name in backends {
            let echo = echo::spawn(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), name).await.expect("echo");
            echoes.insert((*name).to_owned(), echo);
        }
        let dataplane = Dataplane::new(config, Metrics::new());
        let (snapshots, receiver) = watch::channel(Arc::new(Snapshot::default()));
        let stop = CancellationToken::new();
        let runner = dataplane.clone();
        let run_stop = stop.clone();
        tokio::spawn(async move { runner.run(receiver, run_stop).await });
        let agimo = Agimo { ip, in_force: Default::default(), dataplane, backends: echoes, snapshots, stop };
        agimo.apply(yaml).await;
        agimo
    }

    /// Replaces the placeholders `{{ip}}` and `{{port:<backend>}}`.
    pub fn render(&self, yaml: &str) -> String {
        let mut out = yaml.replace("{{ip}}", &self.ip.to_string());
        for (name, echo) in &self.backends {
            out = out.replace(&format!("{{{{port:{name}}}}}"), &echo.addr.port().to_string());
        }
        out
    }

    /// Compiles `yaml` and waits until the dataplane serves it.
    pub async fn apply(&self, yaml: &str) -> Statuses {
        let mut world = files::load_str("test.yaml", &self.render(yaml)).unwrap_or_else(|e| panic!("{e}"));
        world.default_address = Some(self.ip);
        let Compiled { snapshot, statuses, carryover } = compile(&world, &self.in_force.lock().unwrap());
        *self.in_force.lock().unwrap() = carryover;
        let snapshot = Arc::new(snapshot);
        self.snapshots.send_replace(snapshot.clone());
        self.dataplane.wait_for(&snapshot).await;
        statuses
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// GET over HTTP/1.1 on a new connection to the listener on `port`.
    pub async fn get(&self, port: u16, host: &str, path: &str) -> Reply {
        client::send(self.addr(port), Mode::Http1, client::get(host, path)).await.expect("request")
    }

    /// The same request `n` times; the backend name of each answer.
    pub async fn backends_hit(&self, port: u16, host: &str, path: &str, n: usize) -> BTreeMap<String, usize> {
        let mut hits = BTreeMap::new();
        for _ in 0..n {
            let reply = self.get(port, host, path).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            *hits.entry(reply.echo().backend).or_default() += 1;
        }
        hits
    }
}

/// The sum of every series of metric `name` (all label values) in the
/// Prometheus text format.
pub fn metric_total(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// The value of one series from the Prometheus text format, if present.
pub fn metric(text: &str, name: &str, host: &str) -> Option<f64> {
    let prefix = format!("{name}{{host=\"{host}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().expect("metric value"))
}

/// A `kubernetes.io/tls` Secret `default/<name>` holding `cert`.
pub fn tls_secret(name: &str, cert: &agimo_testkit::tls::TestCert) -> String {
    tls_secret_in("default", name, cert)
}

/// A `kubernetes.io/tls` Secret `<namespace>/<name>` holding `cert`.
pub fn tls_secret_in(namespace: &str, name: &str, cert: &agimo_testkit::tls::TestCert) -> String {
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: '{namespace}'}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        indent(&cert.cert_pem),
        indent(&cert.key_pem)
    )
}
