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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::kube::eventually;
use agimo_testkit::tls::self_signed;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

mod oci;

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
        let (client, name) = agimo_testkit::kube::test_namespace(prefix).await;
        let node = Api::<Node>::all(client.clone())
            .get(NODE)
            .await
            .expect("the Node agimo-node exists (is the agent running?)");
        assert_eq!(
            condition(&serde_json::to_value(&node).unwrap(), "Ready"),
            Some("True".to_owned()),
            "the Node is Ready"
        );
        TestNamespace { client, name }
    }

    /// Server-side applies one object (in this namespace unless it is one).
    async fn apply(&self, object: Value) {
        agimo_testkit::kube::apply(&self.client, &self.name, object, "agimo-node-agent-tests").await;
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    async fn pod(&self, name: &str) -> Value {
        serde_json::to_value(self.pods().get(name).await.unwrap_or_else(|e| panic!("get pod {name}: {e}"))).unwrap()
    }

    /// Deletes the namespace and waits until it is gone (its pods with it).
    async fn delete(self) {
        agimo_testkit::kube::delete_namespace(&self.client, &self.name).await;
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
    // An image the node has neither in a layout nor as a program: it cannot
    // be pulled, as from a registry that does not have it.
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unknown"},
        "spec": {"containers": [{"name": "echo", "image": "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"}]}
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
    // Ready once started, as with a kubelet: it may not listen yet.
    let tls_addr = SocketAddr::new(IpAddr::V4(pod_ip(&tls_pod)), 8443);
    let reply = eventually("an HTTPS GET with the certificate from the Secret", Duration::from_secs(30), || async {
        let (stream, _) =
            client::tls_connect(tls_addr, "abc.example.com", std::slice::from_ref(&cert.der), &[]).await.ok()?;
        client::send_on(stream, Mode::Http1, client::get("abc.example.com", "/tls")).await.ok()
    })
    .await;
    let echo: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((echo["pod"].as_str(), echo["tls"]["serverName"].as_str()), (Some("tls"), Some("abc.example.com")));

    let unknown = eventually("unknown waits with ImagePullBackOff", Duration::from_secs(30), || async {
        let pod = ns.pod("unknown").await;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "ImagePullBackOff").then_some(waiting)
    })
    .await;
    let message = unknown["message"].as_str().unwrap_or_default();
    assert!(message.contains("echo-advanced:v1.5.1\" not found"), "{message}");
    assert_eq!(condition(&ns.pod("unknown").await, "Ready").as_deref(), Some("False"));

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

/// A container of the test image: `sh -c SCRIPT` (the agent runs /bin/sh
/// for `agimo-node-agent/test-shell`, in place of `command[0]`).
fn shell_container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "agimo-node-agent/test-shell:v1", "command": ["sh", "-c", script]})
}

/// Where pods mount a [`HostDir`]. Mount points that do not exist are
/// created on the host (empty), so they stay under /tmp.
const STATE: &str = "/tmp/agimo-node-agent-state";

/// A directory of the host the test shares with its pods (a hostPath
/// volume); removed at the end.
struct HostDir(std::path::PathBuf);

impl HostDir {
    fn new(name: &str) -> HostDir {
        let dir = std::env::temp_dir().join(format!("agimo-node-agent-tests-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        HostDir(dir)
    }

    fn volume(&self, name: &str) -> Value {
        json!({"name": name, "hostPath": {"path": self.0.display().to_string(), "type": "Directory"}})
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reasons of the events about a pod.
fn event_reasons(ns: &str, pod: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={pod}");
    let events: Value =
        serde_json::from_str(&kubectl(&["get", "events", "-n", ns, "--field-selector", &selector, "-o", "json"]))
            .unwrap();
    events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect()
}

/// GET `path` from the API server with a bearer token, from the test (as
/// a client outside the pod); the HTTP status.
fn api_status_with_token(token: &str, path: &str) -> String {
    let kubeconfig = std::path::PathBuf::from(std::env::var_os("KUBECONFIG").unwrap());
    let ca = kubeconfig.parent().unwrap().join("pki/ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), &format!("https://10.244.0.1:6443{path}")])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_pod_calls_the_api_with_its_service_account_as_the_user_it_runs_as() {
    let ns = TestNamespace::new("agimo-node-sa").await;
    ns.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})).await;
    ns.apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
    }))
    .await;
    // What an in-cluster client does: the mounted token and CA, the
    // API server from the environment. `$(…)` that is not a variable stays
    // for the shell.
    let script = r#"
SA=/var/run/secrets/kubernetes.io/serviceaccount
NS=$(cat $SA/namespace)
api() { curl -sS -o /dev/null -w '%{http_code}' --cacert $SA/ca.crt -H "Authorization: Bearer $(cat $SA/token)" "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT$1"; }
echo "user=$(id -u):$(id -g)"
echo "namespace=$NS"
echo "pods=$(api /api/v1/namespaces/$NS/pods)"
echo "secrets=$(api /api/v1/namespaces/$NS/secrets)"
echo "token=$(cat $SA/token)"
echo "token-owner=$(stat -c %u:%a $SA/token)"
if touch /agimo-node-agent-test 2>/dev/null; then echo rootfs=writable; rm -f /agimo-node-agent-test; else echo rootfs=read-only; fi
if touch /tmp/agimo-node-agent-scratch/x; then echo scratch=writable; fi
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d '\t'
"#;
    let mut client = shell_container("client", script);
    client["securityContext"] = json!({
        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}
    });
    client["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/tmp/agimo-node-agent-scratch"}]);
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {
            "serviceAccountName": "reader", "restartPolicy": "Never",
            "securityContext": {"runAsUser": 4242, "runAsGroup": 4343, "runAsNonRoot": true},
            "containers": [client],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }
    }))
    .await;
    // runAsNonRoot without a user: the program would run as root.
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
        "spec": {"securityContext": {"runAsNonRoot": true}, "containers": [shell_container("sh", "id")]}
    }))
    .await;

    let done = eventually("client Succeeded", Duration::from_secs(60), || async {
        let pod = ns.pod("client").await;
        matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(pod)
    })
    .await;
    let logs = kubectl(&["logs", "-n", &ns.name, "client"]);
    assert_eq!(done["status"]["phase"], "Succeeded", "logs:\n{logs}");
    let line = |key: &str| -> String {
        logs.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).or_else(|| l.strip_prefix(&format!("{key}:"))))
            .unwrap_or_else(|| panic!("no {key} in the logs:\n{logs}"))
            .to_owned()
    };
    assert_eq!(line("user"), "4242:4343");
    assert_eq!(line("namespace"), ns.name);
    assert_eq!(line("pods"), "200", "its Role allows listing pods");
    assert_eq!(line("secrets"), "403", "its Role does not allow secrets");
    assert_eq!(line("token-owner"), "4242:600", "the token is the pod user's alone");
    assert_eq!(line("rootfs"), "read-only");
    assert_eq!(line("scratch"), "writable", "an emptyDir stays writable");
    assert_eq!(line("CapEff"), "0000000000000000");
    assert_eq!(line("NoNewPrivs"), "1");

    // The token is the pod's: it works while the pod exists, not after.
    let token = line("token");
    let pods = format!("/api/v1/namespaces/{}/pods", ns.name);
    assert_eq!(api_status_with_token(&token, &pods), "200");
    ns.pods().delete("client", &DeleteParams::default()).await.unwrap();
    eventually("client deleted", Duration::from_secs(30), || async {
        ns.pods().get_opt("client").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("the token is refused", Duration::from_secs(10), || async {
        (api_status_with_token(&token, &pods) == "401").then_some(())
    })
    .await;

    let root = eventually("root waits with CreateContainerConfigError", Duration::from_secs(30), || async {
        let pod = ns.pod("root").await;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    })
    .await;
    assert_eq!(
        root["message"],
        format!("container has runAsNonRoot and image will run as root (pod: \"{}/root\", container: sh)", ns.name)
    );
    ns.delete().await;
}

#[tokio::test]
async fn probes_decide_started_ready_and_restarts() {
    let ns = TestNamespace::new("agimo-node-probes").await;
    let state = HostDir::new("probes");
    // echo-basic, ready by an httpGet probe on its named port.
    let mut web = echo_container("web");
    web["ports"] = json!([{"name": "http", "containerPort": 3000}]);
    web["readinessProbe"] = json!({"httpGet": {"port": "http", "path": "/healthz"}, "periodSeconds": 1});
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "probes"}},
        "spec": {"containers": [web]}
    }))
    .await;
    // Started and ready only as files in a shared directory say (exec
    // probes, run in the container's namespaces).
    let mut toggle = shell_container("toggle", "while :; do sleep 0.2; done");
    toggle["volumeMounts"] = json!([{"name": "state", "mountPath": STATE}]);
    toggle["startupProbe"] = json!({"exec": {"command": ["test", "-e", format!("{STATE}/started")]},
                                    "periodSeconds": 1, "failureThreshold": 600});
    toggle["readinessProbe"] = json!({"exec": {"command": ["test", "-e", format!("{STATE}/ready")]},
                                      "periodSeconds": 1, "failureThreshold": 1});
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "toggle", "labels": {"app": "probes"}},
        "spec": {"containers": [toggle], "volumes": [state.volume("state")], "terminationGracePeriodSeconds": 1}
    }))
    .await;
    // Nothing listens on 8080: the liveness probe fails and the container
    // is stopped (SIGTERM) and restarted.
    let mut dying = shell_container("dying", "echo up; exec sleep 1000");
    dying["livenessProbe"] = json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 2});
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dying"},
        "spec": {"containers": [dying], "terminationGracePeriodSeconds": 5}
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "probes"},
        "spec": {"selector": {"app": "probes"}, "ports": [{"port": 80, "targetPort": 3000}]}
    }))
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(ns.client.clone(), &ns.name);
    let endpoint_ready = |ip: Ipv4Addr| {
        let slices = slices.clone();
        async move {
            let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=probes")).await.ok()?;
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .find(|e| e.addresses.iter().any(|a| a == &ip.to_string()))
                .and_then(|e| e.conditions.as_ref()?.ready)
        }
    };

    let web = eventually("web Ready", Duration::from_secs(60), || async {
        let pod = ns.pod("web").await;
        (condition(&pod, "Ready").as_deref() == Some("True")).then_some(pod)
    })
    .await;
    eventually("web's endpoint ready", Duration::from_secs(30), || async {
        (endpoint_ready(pod_ip(&web)).await == Some(true)).then_some(())
    })
    .await;

    // Running but not started: neither started nor ready, for as long as
    // the startup probe fails.
    let toggle = eventually("toggle Running", Duration::from_secs(60), || async {
        let pod = ns.pod("toggle").await;
        (pod["status"]["phase"] == "Running").then_some(pod)
    })
    .await;
    let ip = pod_ip(&toggle);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = ns.pod("toggle").await;
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!((&status["started"], &status["ready"]), (&json!(false), &json!(false)), "{status}");
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    assert_eq!(endpoint_ready(ip).await, Some(false), "listed, not ready");

    std::fs::write(state.0.join("started"), "").unwrap();
    eventually("toggle started, still not ready", Duration::from_secs(15), || async {
        let pod = ns.pod("toggle").await;
        let status = &pod["status"]["containerStatuses"][0];
        (status["started"] == true).then(|| assert_eq!(status["ready"], false, "{status}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(condition(&ns.pod("toggle").await, "Ready").as_deref(), Some("False"), "the readiness probe fails");

    std::fs::write(state.0.join("ready"), "").unwrap();
    eventually("toggle Ready, its endpoint ready", Duration::from_secs(15), || async {
        let ready = condition(&ns.pod("toggle").await, "Ready").as_deref() == Some("True");
        (ready && endpoint_ready(ip).await == Some(true)).then_some(())
    })
    .await;
    std::fs::remove_file(state.0.join("ready")).unwrap();
    eventually("toggle not Ready again, its endpoint not ready", Duration::from_secs(15), || async {
        let pod = ns.pod("toggle").await;
        let unready = condition(&pod, "Ready").as_deref() == Some("False")
            && condition(&pod, "ContainersReady").as_deref() == Some("False");
        (unready && endpoint_ready(ip).await == Some(false)).then_some(())
    })
    .await;
    let status = &ns.pod("toggle").await["status"]["containerStatuses"][0];
    assert_eq!((&status["restartCount"], &status["started"]), (&json!(0), &json!(true)), "readiness never restarts");

    // The liveness probe restarts `dying`: SIGTERM ends `sleep` (143).
    let dying = eventually("dying restarted", Duration::from_secs(60), || async {
        let pod = ns.pod("dying").await;
        (pod["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)).then_some(pod)
    })
    .await;
    let last = &dying["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 143, "{last}");
    let reasons = event_reasons(&ns.name, "dying");
    assert!(reasons.iter().any(|r| r == "Unhealthy") && reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
    ns.delete().await;
}

#[tokio::test]
async fn deletion_runs_pre_stop_sends_sigterm_and_kills_after_the_grace_period() {
    let ns = TestNamespace::new("agimo-node-stop").await;
    let state = HostDir::new("stop");
    // Exits on SIGTERM, after its preStop hook.
    let mut polite = shell_container(
        "polite",
        &format!("trap 'echo TERM >> {STATE}/polite; exit 0' TERM; while :; do sleep 0.2; done"),
    );
    polite["volumeMounts"] = json!([{"name": "state", "mountPath": STATE}]);
    polite["lifecycle"] =
        json!({"preStop": {"exec": {"command": ["sh", "-c", format!("echo preStop >> {STATE}/polite")]}}});
    // Ignores SIGTERM: killed when its 3 s are over.
    let mut stubborn =
        shell_container("stubborn", &format!("trap 'echo TERM >> {STATE}/stubborn' TERM; while :; do sleep 0.2; done"));
    stubborn["volumeMounts"] = json!([{"name": "state", "mountPath": STATE}]);
    for (name, container, grace) in [("polite", polite, 30), ("stubborn", stubborn, 3)] {
        ns.apply(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container], "volumes": [state.volume("state")],
                     "terminationGracePeriodSeconds": grace}
        }))
        .await;
    }
    for name in ["polite", "stubborn"] {
        eventually(&format!("{name} Ready"), Duration::from_secs(60), || async {
            (condition(&ns.pod(name).await, "Ready").as_deref() == Some("True")).then_some(())
        })
        .await;
    }
    // The traps are set once the shells run their loops.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let gone = |name: &'static str| {
        let pods = ns.pods();
        async move {
            let started = Instant::now();
            pods.delete(name, &DeleteParams::default()).await.unwrap();
            eventually(&format!("{name} deleted"), Duration::from_secs(60), || async {
                pods.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
            started.elapsed()
        }
    };
    let (polite, stubborn) = tokio::join!(gone("polite"), gone("stubborn"));
    assert!(polite < Duration::from_secs(10), "polite exited on SIGTERM, well within 30 s: {polite:?}");
    assert_eq!(state.read("polite"), "preStop\nTERM\n", "the preStop hook ran, then SIGTERM");
    assert!(
        stubborn >= Duration::from_secs(3) && stubborn < Duration::from_secs(15),
        "stubborn was killed once its 3 s grace period was over: {stubborn:?}"
    );
    assert_eq!(state.read("stubborn"), "TERM\n");
    ns.delete().await;
}

/// The OCI image layout `local-cluster` gives the agent (`--image-layout`);
/// the test writes its images there (the agent reads `index.json` whenever
/// a pod is created).
const IMAGE_LAYOUT: &str = "/tmp/agimo-cluster/test-images";

#[tokio::test]
async fn pods_run_from_oci_images() {
    let ns = TestNamespace::new("agimo-node-image").await;
    let layout = std::path::Path::new(IMAGE_LAYOUT);
    let busybox = "example.test/agimo-node-agent/busybox:1";
    let digest = oci::write_image(
        layout,
        busybox,
        &oci::busybox_layers(),
        json!({"User": "65532:65532", "Entrypoint": ["/bin/busybox"], "Cmd": ["sh", "-c", "echo default"],
               "Env": ["PATH=/bin"], "WorkingDir": "/work"}),
    );
    let named = "example.test/agimo-node-agent/busybox-named:1";
    oci::write_image(layout, named, &oci::busybox_layers(), json!({"User": "nonroot", "Entrypoint": ["/bin/busybox"]}));
    // An image whose layer is not what its manifest says.
    let broken = "example.test/agimo-node-agent/broken:1";
    let broken_layer = oci::layer(&[("a", 0o755, 0, Some(Ok(b"#!/bin/sh\n")))]);
    oci::write_image(layout, broken, std::slice::from_ref(&broken_layer), json!({"Cmd": ["/a"]}));
    let mut corrupt = broken_layer.clone();
    corrupt[4] = 0xff; // the gzip header's time
    std::fs::write(layout.join("blobs/sha256").join(&oci::sha256(&broken_layer)[7..]), &corrupt).unwrap();

    let script = "echo hello from $(cat /etc/os-release-from-image); id; pwd; cat /etc/hosts; exec sleep 3600";
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
            "name": "app", "image": busybox, "args": ["sh", "-c", script],
            "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true},
            "readinessProbe": {"exec": {"command": ["/bin/busybox", "cat", "/etc/os-release-from-image"]},
                               "periodSeconds": 1}
        }]}
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "named"},
        "spec": {"securityContext": {"runAsNonRoot": true},
                 "containers": [{"name": "named", "image": named, "args": ["sleep", "3600"]}]}
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "broken"},
        "spec": {"containers": [{"name": "broken", "image": broken}]}
    }))
    .await;

    let app = eventually("pod app Ready (its exec readiness probe passes)", Duration::from_secs(60), || async {
        let pod = ns.pod("app").await;
        (condition(&pod, "Ready").as_deref() == Some("True")).then_some(pod)
    })
    .await;
    let status = &app["status"]["containerStatuses"][0];
    assert_eq!(status["image"], busybox);
    assert_eq!(status["imageID"], format!("example.test/agimo-node-agent/busybox@{digest}"));
    let logs = kubectl(&["logs", "-n", &ns.name, "app"]);
    assert!(logs.contains("hello from agimo test image"), "the image's root: {logs}");
    assert!(logs.contains("uid=65532(nonroot) gid=65532(nonroot)"), "the image's user: {logs}");
    assert!(logs.contains("/work"), "the image's WorkingDir: {logs}");
    assert!(logs.contains(&pod_ip(&app).to_string()), "the pod's /etc/hosts: {logs}");
    assert!(event_reasons(&ns.name, "app").contains(&"Pulled".to_owned()));

    let waiting = |name: &'static str, reasons: &'static [&'static str]| {
        let ns = &ns;
        async move {
            eventually(&format!("pod {name} waits with {reasons:?}"), Duration::from_secs(30), || async {
                let pod = ns.pod(name).await;
                let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
                reasons.iter().any(|r| waiting["reason"] == *r).then_some(waiting)
            })
            .await
        }
    };
    let named = waiting("named", &["CreateContainerConfigError"]).await;
    assert!(
        named["message"]
            .as_str()
            .unwrap()
            .contains("image has non-numeric user (nonroot), cannot verify user is non-root"),
        "{named}"
    );
    let broken = waiting("broken", &["ErrImagePull", "ImagePullBackOff"]).await;
    assert!(broken["message"].as_str().unwrap().contains("digest mismatch"), "{broken}");
    ns.delete().await;
}

/// A kubelet marks a container without a readiness probe ready once it has
/// started, whether or not it listens yet; its endpoint is ready in the
/// Service's EndpointSlice from then on, and clients must cope.
#[tokio::test]
async fn a_pod_without_a_readiness_probe_is_ready_before_it_listens() {
    let ns = TestNamespace::new("agimo-node-ready").await;
    let state = HostDir::new("ready");
    // Listens on 8080 only once the test says so.
    let mut late = shell_container(
        "late",
        &format!("while [ ! -e {STATE}/listen ]; do sleep 0.1; done; exec /bin/busybox httpd -f -p 8080 -h {STATE}"),
    );
    late["ports"] = json!([{"containerPort": 8080}]);
    late["volumeMounts"] = json!([{"name": "state", "mountPath": STATE}]);
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late", "labels": {"app": "late"}},
        "spec": {"containers": [late], "volumes": [state.volume("state")], "terminationGracePeriodSeconds": 1}
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "late"},
        "spec": {"selector": {"app": "late"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .await;
    let pod = eventually("late Ready", Duration::from_secs(60), || async {
        let pod = ns.pod("late").await;
        (condition(&pod, "Ready").as_deref() == Some("True")).then_some(pod)
    })
    .await;
    let addr = SocketAddr::new(IpAddr::V4(pod_ip(&pod)), 8080);
    let slices: Api<EndpointSlice> = Api::namespaced(ns.client.clone(), &ns.name);
    eventually("late's endpoint ready in the EndpointSlice", Duration::from_secs(30), || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=late")).await.ok()?;
        let ready = list.items.iter().flat_map(|s| s.endpoints.iter().flatten()).any(|e| {
            e.addresses.contains(&addr.ip().to_string()) && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
        });
        ready.then_some(())
    })
    .await;
    let refused = tokio::net::TcpStream::connect(addr).await.expect_err("nothing listens yet");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");

    std::fs::write(state.0.join("listen"), "").unwrap();
    eventually("late listens", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(drop)
    })
    .await;
    ns.delete().await;
}

/// Service names resolve through the cluster DNS (CoreDNS behind
/// kube-dns) by the pod's resolv.conf, and kube-proxy serves the ClusterIP
/// from pods (back to the very pod that asks: hairpin) and from the
/// cluster's namespace, and the NodePort on the node's address.
#[tokio::test]
async fn pods_resolve_services_by_name_and_reach_their_cluster_ips_and_node_ports() {
    let ns = TestNamespace::new("agimo-node-dns").await;
    // echo-basic and a client in one pod, the Service's only endpoint: the
    // client's requests to the Service come back to its own pod.
    let client = shell_container(
        "client",
        "for name in echo echo.$NS echo.$NS.svc.cluster.local; do echo \"lookup $name: $(getent hosts $name)\"; done; \
         echo \"reply: $(curl -sS --max-time 5 --retry 60 --retry-connrefused --retry-delay 1 http://echo/from-pod)\"; \
         exec sleep 3600",
    );
    let mut client = client;
    client["env"] = json!([{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]);
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "both", "labels": {"app": "echo"}},
        "spec": {"containers": [echo_container("echo"), client], "terminationGracePeriodSeconds": 1}
    }))
    .await;
    ns.apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 3000}]}
    }))
    .await;
    let service: Value =
        serde_json::from_str(&kubectl(&["get", "service", "-n", &ns.name, "echo", "-o", "json"])).unwrap();
    let cluster_ip: Ipv4Addr = service["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let node_port = u16::try_from(service["spec"]["ports"][0]["nodePort"].as_u64().unwrap()).unwrap();

    let logs = eventually("the client's lookups and reply", Duration::from_secs(90), || async {
        let out = Command::new("kubectl").args(["logs", "-n", &ns.name, "both", "-c", "client"]).output().ok()?;
        let logs = String::from_utf8_lossy(&out.stdout).into_owned();
        logs.contains("reply:").then_some(logs)
    })
    .await;
    let fqdn = format!("echo.{}.svc.cluster.local", ns.name);
    for name in ["echo".to_owned(), format!("echo.{}", ns.name), fqdn.clone()] {
        let line = logs.lines().find(|l| l.starts_with(&format!("lookup {name}:"))).unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().skip(2).collect();
        assert_eq!(
            fields,
            [cluster_ip.to_string().as_str(), fqdn.as_str()],
            "{name} resolves to the ClusterIP: {logs}"
        );
    }
    // echo-basic's JSON spans lines: the rest of the log.
    let reply = logs.split_once("reply: ").map(|(_, rest)| rest).unwrap_or_default();
    let echo: Value =
        serde_json::from_str(reply).unwrap_or_else(|e| panic!("echo JSON from the Service ({e}): {logs}"));
    assert_eq!((echo["path"].as_str(), echo["pod"].as_str()), (Some("/from-pod"), Some("both")), "{logs}");

    // From the cluster's namespace: the ClusterIP and the NodePort.
    let by_cluster_ip = get_echo(cluster_ip, 80, "/from-node").await;
    assert_eq!(by_cluster_ip["pod"], "both");
    let by_node_port = get_echo("10.244.0.1".parse().unwrap(), node_port, "/node-port").await;
    assert_eq!((by_node_port["pod"].as_str(), by_node_port["path"].as_str()), (Some("both"), Some("/node-port")));
    ns.delete().await;
}
