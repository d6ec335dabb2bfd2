//! The node agent against a real API server: `conformance/local-cluster up`
//! starts it (as the Node `agimo-node`) next to the control plane. Run inside
//! the cluster's network namespace, as `./test.sh` does:
//!
//! ```sh
//! conformance/local-cluster up
//! conformance/local-cluster exec -- cargo test -p agimo-node-agent --features kubernetes-tests --test kubernetes
//! ```
//!
//! Each test works in a namespace of its own and deletes it at the end.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::tls::self_signed;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NODE: &str = "agimo-node";

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
        assert!(
            std::env::var_os("KUBECONFIG").is_some(),
            "run inside the local cluster: conformance/local-cluster exec -- cargo test ... --test kubernetes"
        );
        let client = Client::try_default().await.expect("kubeconfig");
        let node = Api::<Node>::all(client.clone())
            .get(NODE)
            .await
            .expect("the Node agimo-node exists (is the agent running?)");
        assert_eq!(
            condition(&serde_json::to_value(&node).unwrap(), "Ready"),
            Some("True".to_owned()),
            "the Node is Ready"
        );
        let ns = TestNamespace { client, name: format!("{prefix}-{}", std::process::id()) };
        ns.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns.name}})).await;
        ns
    }

    /// Server-side applies one object (in this namespace unless it is one).
    async fn apply(&self, mut object: Value) {
        let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), object["apiVersion"].as_str().unwrap().to_owned()),
        };
        let kind = object["kind"].as_str().unwrap().to_owned();
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
        let api: Api<DynamicObject> = if kind == "Namespace" {
            Api::all_with(self.client.clone(), &resource)
        } else {
            object["metadata"]["namespace"] = json!(self.name);
            Api::namespaced_with(self.client.clone(), &self.name, &resource)
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        api.patch(&name, &PatchParams::apply("agimo-node-agent-tests").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    async fn pod(&self, name: &str) -> Value {
        serde_json::to_value(self.pods().get(name).await.unwrap_or_else(|e| panic!("get pod {name}: {e}"))).unwrap()
    }

    /// Deletes the namespace and waits until it is gone (its pods with it).
    async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(&self.name, &DeleteParams::default()).await.expect("delete namespace");
        eventually(&format!("namespace {} deleted", self.name), Duration::from_secs(90), || async {
            match api.get_opt(&self.name).await {
                Ok(None) => Some(()),
                _ => None,
            }
        })
        .await;
    }
}

/// Polls `check` every 200 ms until it returns something; panics after `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition(object: &Value, type_: &str) -> Option<String> {
    let conditions = object["status"]["conditions"].as_array()?;
    conditions.iter().find(|c| c["type"] == type_).and_then(|c| c["status"].as_str()).map(str::to_owned)
}

fn pod_ip(pod: &Value) -> Ipv4Addr {
    pod["status"]["podIP"].as_str().expect("podIP").parse().expect("an IPv4 podIP")
}

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The network namespace the agent made for a pod (`agimo-pod-<uid>`).
fn netns_of(pod: &Value) -> String {
    let uid: String =
        pod["metadata"]["uid"].as_str().unwrap().chars().filter(char::is_ascii_hexdigit).take(12).collect();
    format!("agimo-pod-{uid}")
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip runs");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

/// GET http://`ip`:`port``path` from the cluster's network namespace,
/// retried for a few seconds; the echo backend's JSON.
async fn get_echo(ip: Ipv4Addr, port: u16, path: &str) -> Value {
    let addr = SocketAddr::new(IpAddr::V4(ip), port);
    eventually(&format!("GET {addr}{path}"), Duration::from_secs(10), || async {
        let reply = client::send(addr, Mode::Http1, client::get(&addr.to_string(), path)).await.ok()?;
        (reply.status == 200).then(|| serde_json::from_slice(&reply.body).expect("echo-basic JSON"))
    })
    .await
}

fn echo_container(name: &str) -> Value {
    json!({
        "name": name,
        "image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1",
        "ports": [{"containerPort": 3000}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        ]
    })
}

#[tokio::test]
async fn a_deployment_of_echo_basic_runs_serves_its_logs_restarts_and_goes_away() {
    let ns = TestNamespace::new("agimo-node-echo").await;
    ns.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {"metadata": {"labels": {"app": "echo"}}, "spec": {"containers": [echo_container("echo")]}}
        }
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080, "targetPort": 3000}]}
    }))
    .await;

    // Both replicas are bound to the node, run and are Ready.
    let pods: Vec<Value> = eventually("2 pods Running and Ready", Duration::from_secs(60), || async {
        let list = ns.pods().list(&ListParams::default().labels("app=echo")).await.ok()?;
        let pods: Vec<Value> = list.items.iter().map(|p| serde_json::to_value(p).unwrap()).collect();
        let ready = |p: &Value| p["status"]["phase"] == "Running" && condition(p, "Ready").as_deref() == Some("True");
        (pods.len() == 2 && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(pod_ip).collect();
    assert_eq!(ips.len(), 2, "distinct pod IPs: {ips:?}");
    for pod in &pods {
        let ip = pod_ip(pod);
        assert!(
            !ip.is_loopback() && ip.octets()[..2] == [10, 244] && ip != Ipv4Addr::new(10, 244, 0, 1),
            "pod IP {ip}"
        );
        assert_eq!(pod["spec"]["nodeName"], NODE);
        assert_eq!(pod["status"]["podIPs"], json!([{"ip": ip.to_string()}]));
        assert_eq!(pod["status"]["hostIP"], "10.244.0.1");
        assert!(pod["status"]["startTime"].is_string());
        for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(condition(pod, type_).as_deref(), Some("True"), "{type_}");
        }
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["name"], "echo");
        assert_eq!(
            (&status["ready"], &status["started"], &status["restartCount"]),
            (&json!(true), &json!(true), &json!(0))
        );
        assert!(status["state"]["running"]["startedAt"].is_string());
        assert_eq!(status["image"], "registry.k8s.io/gateway-api/echo-basic:v1.5.1");
    }

    // The EndpointSlice controller lists both, ready.
    let slices: Api<EndpointSlice> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("the EndpointSlice lists both pods ready", Duration::from_secs(30), || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=echo")).await.ok()?;
        let ready: BTreeSet<Ipv4Addr> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
            .collect();
        (ready == ips).then_some(())
    })
    .await;

    // Each pod answers on its own address, knowing its name and namespace.
    for pod in &pods {
        let echo = get_echo(pod_ip(pod), 3000, "/from-the-test").await;
        assert_eq!(echo["pod"], pod["metadata"]["name"]);
        assert_eq!(echo["namespace"], json!(ns.name));
        assert_eq!(echo["path"], "/from-the-test");
    }

    // kubectl logs, through the API server and the agent's log server.
    let first = pods[0]["metadata"]["name"].as_str().unwrap();
    let logs = kubectl(&["logs", "-n", &ns.name, first]);
    assert!(logs.contains("Starting server, listening on port 3000 (http)"), "logs:\n{logs}");
    assert!(logs.contains("Echoing back request made to /from-the-test"), "logs:\n{logs}");
    let tail = kubectl(&["logs", "-n", &ns.name, first, "--tail=1", "--timestamps"]);
    assert_eq!(tail.lines().count(), 1, "tail:\n{tail}");
    assert!(tail.starts_with("20") && tail.contains("Z Echoing back request made to /from-the-test"), "tail:\n{tail}");

    // A process that dies is restarted, and counted.
    let netns = netns_of(&pods[0]);
    assert!(netns_exists(&netns), "{netns} exists");
    let pids = Command::new("ip").args(["netns", "pids", &netns]).output().unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        Command::new("kill").args(["-KILL", pid]).status().unwrap();
    }
    let restarted = eventually("the container restarted and Ready again", Duration::from_secs(30), || async {
        let pod = ns.pod(first).await;
        let status = &pod["status"]["containerStatuses"][0];
        (status["restartCount"] == 1 && status["ready"] == true && condition(&pod, "Ready").as_deref() == Some("True"))
            .then_some(pod)
    })
    .await;
    let last = &restarted["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{last}");
    assert_eq!(pod_ip(&restarted), pod_ip(&pods[0]), "the pod keeps its address");
    assert_eq!(get_echo(pod_ip(&restarted), 3000, "/again").await["pod"], first);
    let previous = kubectl(&["logs", "-n", &ns.name, first, "--previous"]);
    assert!(previous.contains("Echoing back request made to /from-the-test"), "previous logs:\n{previous}");

    // Deleting the namespace deletes the pods, and the agent removes their
    // network namespaces.
    let namespaces: Vec<String> = pods.iter().map(netns_of).collect();
    ns.delete().await;
    for netns in namespaces {
        assert!(!netns_exists(&netns), "{netns} removed");
    }
}

#[tokio::test]
async fn secret_volumes_other_images_and_pods_that_cannot_start() {
    let ns = TestNamespace::new("agimo-node-pods").await;
    let cert = self_signed(&["abc.example.com"]);
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem}
    }))
    .await;
    // As the conformance suite's tls-backend: the Secret as a volume, the
    // program told where through env values under the mountPath.
    let mut tls = echo_container("tls");
    tls["ports"] = json!([{"containerPort": 3000}, {"containerPort": 8443}]);
    tls["volumeMounts"] = json!([{"name": "secret-volume", "mountPath": "/etc/secret-volume"}]);
    tls["env"].as_array_mut().unwrap().extend([
        json!({"name": "TLS_SERVER_CERT", "value": "/etc/secret-volume/crt"}),
        json!({"name": "TLS_SERVER_PRIVKEY", "value": "/etc/secret-volume/key"}),
    ]);
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tls"},
        "spec": {
            "containers": [tls],
            "volumes": [{"name": "secret-volume", "secret": {"secretName": "tls",
                "items": [{"key": "tls.crt", "path": "crt"}, {"key": "tls.key", "path": "key"}]}}]
        }
    }))
    .await;
    // An image without a program: nothing runs, but the pod is Ready.
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "coredns"},
        "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.12.2"}]}
    }))
    .await;
    // A reference to a ConfigMap that does not exist: cannot start.
    let mut bad = echo_container("bad");
    bad["env"] = json!([{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "level"}}}]);
    ns.apply(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad-env"}, "spec": {"containers": [bad]}}),
    )
    .await;

    let ready = |name: &'static str| {
        let ns = &ns;
        async move {
            eventually(&format!("pod {name} Ready"), Duration::from_secs(60), || async {
                let pod = ns.pod(name).await;
                (condition(&pod, "Ready").as_deref() == Some("True")).then_some(pod)
            })
            .await
        }
    };
    let tls_pod = ready("tls").await;
    let (stream, _) = client::tls_connect(
        SocketAddr::new(IpAddr::V4(pod_ip(&tls_pod)), 8443),
        "abc.example.com",
        std::slice::from_ref(&cert.der),
        &[],
    )
    .await
    .expect("TLS handshake with the certificate from the Secret");
    let reply = client::send_on(stream, Mode::Http1, client::get("abc.example.com", "/tls")).await.expect("HTTPS GET");
    let echo: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((echo["pod"].as_str(), echo["tls"]["serverName"].as_str()), (Some("tls"), Some("abc.example.com")));

    let coredns = ready("coredns").await;
    assert!(coredns["status"]["containerStatuses"][0]["state"]["running"].is_object());
    assert_eq!(kubectl(&["logs", "-n", &ns.name, "coredns"]), "");

    // The bad pod waits with a reason that names the problem, and an event.
    let bad = eventually("bad-env waits with CreateContainerConfigError", Duration::from_secs(30), || async {
        let pod = ns.pod("bad-env").await;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(pod)
    })
    .await;
    assert_eq!(bad["status"]["phase"], "Pending");
    let message = bad["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap().to_owned();
    assert_eq!(message, "ConfigMap \"missing\" not found");
    let events =
        kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.name=bad-env", "-o", "json"]);
    assert!(events.contains("Error: container bad: ConfigMap \\\"missing\\\" not found"), "events:\n{events}");

    // Once the ConfigMap exists, the retry starts it.
    ns.apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "missing"}, "data": {"level": "debug"}}),
    )
    .await;
    ready("bad-env").await;

    // The agent is fine: the Node is still Ready and the pods still answer.
    let node = serde_json::to_value(Api::<Node>::all(ns.client.clone()).get(NODE).await.unwrap()).unwrap();
    assert_eq!(condition(&node, "Ready").as_deref(), Some("True"));
    assert_eq!(get_echo(pod_ip(&tls_pod), 3000, "/still").await["pod"], "tls");

    let names: Vec<String> =
        ns.pods().list(&ListParams::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names.len(), 3);
    ns.delete().await;
}
