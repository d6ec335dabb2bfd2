//! The load balancer against a real API server, with the node agent running
//! echo-basic pods: `conformance/local-cluster up` starts both next to the
//! control plane. Run inside the cluster's network namespace (where the pool
//! 10.245.1.0/24 and 10.245.255.20 are local addresses), as `./test.sh` does:
//!
//! ```sh
//! cargo test --locked -p agimo-load-balancer --features kubernetes-tests --test kubernetes --no-run
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test --locked --offline -p agimo-load-balancer --features kubernetes-tests --test kubernetes
//! ```
//!
//! Each test works in a namespace of its own and deletes it at the end.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::kube::eventually;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const LOG: &str = "/tmp/agimo-cluster/load-balancer.log";

/// A test namespace; deleted (without waiting) if the test fails.
struct TestNamespace {
    client: Client,
    name: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl").args(["delete", "namespace", &self.name, "--wait=false"]).output();
    }
}

impl TestNamespace {
    async fn new(prefix: &str) -> TestNamespace {
        let (client, name) = agimo_testkit::kube::test_namespace(prefix).await;
        TestNamespace { client, name }
    }

    /// Server-side applies one object (in this namespace unless it is one).
    async fn apply(&self, object: Value) {
        agimo_testkit::kube::apply(&self.client, &self.name, object, "agimo-load-balancer-tests").await;
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The Service's `status.loadBalancer.ingress`.
    async fn ingress(&self, name: &str) -> Value {
        let service = self.services().get(name).await.unwrap_or_else(|e| panic!("get service {name}: {e}"));
        serde_json::to_value(&service).unwrap()["status"]["loadBalancer"]["ingress"].clone()
    }

    /// Waits for the Service's address from the pool (the first ingress IP).
    async fn address(&self, name: &str) -> Ipv4Addr {
        let ingress = eventually(
            &format!("Service {name} has a load balancer address (is the load balancer running? see {LOG})"),
            Duration::from_secs(10),
            || async {
                let ingress = self.ingress(name).await;
                ingress[0]["ip"].is_string().then_some(ingress)
            },
        )
        .await;
        assert_eq!(ingress.as_array().unwrap().len(), 1, "{ingress}");
        assert_eq!(ingress[0]["ipMode"], "VIP", "{ingress}");
        let ip: Ipv4Addr = ingress[0]["ip"].as_str().unwrap().parse().unwrap();
        assert_eq!(ip.octets()[..3], [10, 245, 1], "{ip} is from the pool 10.245.1.0/24");
        ip
    }

    /// Names of the Running and Ready pods labelled `app=<app>`, once there are `count`.
    async fn ready_pods(&self, app: &str, count: usize) -> BTreeSet<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.name);
        eventually(&format!("{count} pods of {app} Ready"), Duration::from_secs(60), || async {
            let mut list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.ok()?;
            // Pods being deleted (after a scale down) are on their way out.
            list.items.retain(|p| p.metadata.deletion_timestamp.is_none());
            let ready = |p: &Pod| {
                let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
                conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
            };
            (list.items.len() == count && list.items.iter().all(ready))
                .then(|| list.items.iter().map(|p| p.name_any()).collect())
        })
        .await
    }

    /// Deletes the namespace and waits until it is gone (its pods with it).
    async fn delete(self) {
        agimo_testkit::kube::delete_namespace(&self.client, &self.name).await;
    }
}

/// One GET on a new connection; the name of the echo-basic pod that answered.
async fn pod_behind(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let reply = client::send(addr, Mode::Http1, client::get(&addr.to_string(), path)).await?;
    let echo: Value = serde_json::from_slice(&reply.body).map_err(std::io::Error::other)?;
    echo["pod"].as_str().map(str::to_owned).ok_or_else(|| std::io::Error::other(format!("not echo-basic: {echo}")))
}

/// Waits until every pod of `pods` has answered on `addr`, a new
/// connection per request. Ready pods reach kube-proxy through the
/// EndpointSlice controller, which backs off exponentially (1 s doubling)
/// when its informer cache is behind: after a scale to zero and back, that
/// has taken over 20 s here, as it can in a real cluster.
async fn reaches_all(addr: SocketAddr, pods: &BTreeSet<String>) {
    let (started, limit) = (Instant::now(), Duration::from_secs(60));
    let mut seen = BTreeSet::new();
    let mut last_error = None;
    while seen != *pods {
        match pod_behind(addr, "/through-the-load-balancer").await {
            Ok(pod) => {
                assert!(pods.contains(&pod), "{addr}: answered by {pod}, not one of {pods:?}");
                seen.insert(pod);
            }
            Err(e) => last_error = Some(e),
        }
        assert!(
            started.elapsed() < limit,
            "{addr} reaches {pods:?}: only {seen:?} within {limit:?}; last error: {last_error:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until connecting to `addr` is refused: nothing listens there.
async fn refused(addr: SocketAddr) {
    eventually(&format!("connecting to {addr} refused"), Duration::from_secs(10), || async {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;
}

fn echo_deployment(name: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "echo",
                    "image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1",
                    "ports": [{"name": "web", "containerPort": 3000}],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                    ]
                }]}
            }
        }
    })
}

fn events(namespace: &str, object: &str) -> String {
    let out = Command::new("kubectl")
        .args([
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            &format!("involvedObject.name={object}"),
            "-o",
            "json",
        ])
        .output()
        .expect("kubectl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_load_balancer_service_gets_an_address_that_reaches_its_ready_pods() {
    let ns = TestNamespace::new("agimo-lb").await;
    ns.apply(echo_deployment("echo", 2)).await;
    // One port by the name of the EndpointSlice port, one by number.
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "echo"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "alt", "port": 8080, "targetPort": 3000}
        ]}
    }))
    .await;
    let ip = ns.address("echo").await;
    let pods = ns.ready_pods("echo", 2).await;

    // New connections go round the ready pods, on every port.
    let http = SocketAddr::new(IpAddr::V4(ip), 80);
    reaches_all(http, &pods).await;
    reaches_all(SocketAddr::new(IpAddr::V4(ip), 8080), &pods).await;

    // Another Service asking for the same address does not get it.
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "wants-the-address"},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": ip.to_string(), "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 81, "targetPort": 3000}]}
    }))
    .await;
    eventually("a Warning event AllocationFailed on wants-the-address", Duration::from_secs(10), || async {
        let events = events(&ns.name, "wants-the-address");
        events.contains("AllocationFailed").then_some(())
    })
    .await;
    assert_eq!(ns.ingress("wants-the-address").await, Value::Null);

    // No pods: the listener stays, but closes connections at once.
    ns.apply(echo_deployment("echo", 0)).await;
    eventually("connections closed without answer", Duration::from_secs(60), || async {
        let result = tokio::time::timeout(Duration::from_secs(2), pod_behind(http, "/nobody")).await;
        matches!(result, Ok(Err(_))).then_some(())
    })
    .await;
    // From inside the cluster the address goes through kube-proxy, which
    // rejects it once it has no endpoint (as in a real cluster); before it
    // has synced, the load balancer's listener accepts and closes at once.
    // Either way a client gets no answer, at once.
    match TcpStream::connect(http).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "refused: {e}"),
        Ok(mut stream) => {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed at once: {read:?}");
        }
    }
    // And back.
    ns.apply(echo_deployment("echo", 2)).await;
    let pods = ns.ready_pods("echo", 2).await;
    reaches_all(http, &pods).await;

    // Deleting the Service closes its listeners and frees its address,
    // which goes to the Service that asked for it.
    ns.services().delete("echo", &DeleteParams::default()).await.expect("delete service");
    refused(http).await;
    refused(SocketAddr::new(IpAddr::V4(ip), 8080)).await;
    assert_eq!(ns.address("wants-the-address").await, ip);
    reaches_all(SocketAddr::new(IpAddr::V4(ip), 81), &pods).await;
    ns.delete().await;
}

#[tokio::test]
async fn external_ips_are_served_and_a_service_that_changes_type_loses_its_address() {
    let ns = TestNamespace::new("agimo-lb-static").await;
    ns.apply(echo_deployment("static", 1)).await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "static"},
        "spec": {"type": "ClusterIP", "externalIPs": ["10.245.255.20"], "selector": {"app": "static"},
            "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}
    }))
    .await;
    let lb = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "static"},
            "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}
    });
    ns.apply(lb.clone()).await;
    let pods = ns.ready_pods("static", 1).await;

    let external = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 245, 255, 20)), 80);
    reaches_all(external, &pods).await;
    assert_eq!(ns.ingress("static").await, Value::Null, "a ClusterIP Service gets no load balancer address");
    let ip = ns.address("lb").await;
    let on_ip = SocketAddr::new(IpAddr::V4(ip), 80);
    reaches_all(on_ip, &pods).await;

    // Type ClusterIP: the address goes, from the status and the listeners.
    let mut cluster_ip = lb;
    cluster_ip["spec"]["type"] = json!("ClusterIP");
    ns.apply(cluster_ip).await;
    eventually("the load balancer address removed from lb's status", Duration::from_secs(10), || async {
        ns.ingress("lb").await.as_array().is_none_or(Vec::is_empty).then_some(())
    })
    .await;
    refused(on_ip).await;

    // Deleting the Service closes the external IP's listener.
    ns.services().delete("static", &DeleteParams::default()).await.expect("delete service");
    refused(external).await;
    ns.delete().await;
}
