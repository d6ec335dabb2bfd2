//! Agimo installed by its Helm chart (helm/agimo) in the local cluster: two
//! replicas in pods run by the node agent, with the chart's ServiceAccount
//! and RBAC, a Service per Gateway given an address by the local load
//! balancer. `conformance/run --chart` installs the chart and runs this:
//!
//! ```sh
//! conformance/local-cluster exec -- env AGIMO_NAMESPACE=agimo-system \
//!   cargo test -p agimo-controller --features kubernetes-tests --test in_cluster
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::wait::{condition, eventually, eventually_within};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, discovery};
use serde_json::{Value, json};

const NS: &str = "agimo-in-cluster";

struct Env {
    client: Client,
    /// Where the chart is installed.
    agimo_ns: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl").args(["delete", "namespace", NS, "--wait=false"]).output();
    }
}

impl Env {
    async fn new() -> Env {
        let agimo_ns = std::env::var("AGIMO_NAMESPACE").expect(
            "AGIMO_NAMESPACE: the namespace of the chart's release (conformance/run --chart installs it and runs this test)",
        );
        let client = Client::try_default().await.expect("kubeconfig");
        // A namespace left by an earlier run must be gone first.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let _ = namespaces.delete(NS, &DeleteParams::default()).await;
        eventually_within(Duration::from_secs(90), &format!("namespace {NS} from an earlier run is gone"), || async {
            namespaces.get_opt(NS).await.expect("read namespace").is_none()
        })
        .await;
        Env { client, agimo_ns }
    }

    async fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (resource, _) = discovery::pinned_kind(&self.client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .unwrap_or_else(|e| panic!("discover {kind}: {e}"));
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Server-side applies an object of this test's namespace (or the namespace).
    async fn apply(&self, object: Value) {
        agimo_testkit::kube::apply(&self.client, NS, object, "agimo-tests").await;
    }

    /// Waits up to `secs` (see [`eventually_within`]) for `check` on the
    /// object; returns it.
    async fn wait_for(&self, kind: &str, name: &str, secs: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let api = self.api("gateway.networking.k8s.io/v1", kind, Some(NS)).await;
        eventually_within(Duration::from_secs(secs), &format!("{kind} {name}: {what}"), || async {
            let object = serde_json::to_value(api.get(name).await.expect("get")).unwrap();
            if check(&object) { Ok(object) } else { Err(format!("status:\n{:#}", object["status"])) }
        })
        .await
    }

    /// The holder of the release's Lease (the only one in its namespace).
    async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.agimo_ns);
        let mut list = leases.list(&ListParams::default()).await.expect("list Leases").items;
        assert!(list.len() <= 1, "one Lease in {}", self.agimo_ns);
        list.pop()?.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// The Gateway Services of this test's Gateways (beside them), by Gateway name.
    async fn gateway_services(&self) -> BTreeSet<String> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let managed =
            services.list(&ListParams::default().labels("app.kubernetes.io/managed-by=agimo")).await.expect("services");
        managed
            .items
            .iter()
            .filter_map(|s| s.metadata.annotations.as_ref()?.get("agimo.dev/gateway")?.strip_prefix(&format!("{NS}/")))
            .map(str::to_owned)
            .collect()
    }

    /// The Agimo pods that are running and not being deleted.
    async fn agimo_pods(&self) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.agimo_ns);
        let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=agimo")).await.expect("list pods");
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect()
    }
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(&object["status"]["conditions"], type_)
        .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == object["metadata"]["generation"])
}

fn route_accepted(route: &Value) -> bool {
    route["status"]["parents"].as_array().into_iter().flatten().any(|p| {
        p["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "Accepted"
                && c["status"] == "True"
                && c["observedGeneration"] == route["metadata"]["generation"]
        })
    })
}

/// What an Agimo pod's admin endpoint says in /status.
async fn leader_flag(pod: &Pod) -> Option<bool> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let addr = SocketAddr::new(ip.parse().ok()?, 9901);
    let reply = client::send(addr, Mode::Http1, client::get(&ip, "/status")).await.ok()?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&reply.body).ok()?;
    doc.get("leader")?.as_bool()
}

fn route(name: &str, host: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": NS},
           "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}})
}

/// The KEDA scaler of the chart: a request held by whichever replica the
/// Gateway's Service chose is counted by both replicas' scalers (pod IP,
/// port 9091), each having found the other through the headless Service by
/// the cluster DNS, and by the scaler Service KEDA would dial.
async fn keda_scaler_answers_for_every_replica(env: &Env, gateway: SocketAddr, pods: &[Pod]) {
    use agimo_scaler::proto::external_scaler_client::ExternalScalerClient;
    use agimo_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
    env.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "idle", "namespace": NS},
        "spec": {"selector": {"app": "idle"}, "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}))
        .await;
    env.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "held", "namespace": NS,
                     "annotations": {"agimo.dev/scale-to-zero": "true", "agimo.dev/wait-timeout": "60s"}},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["held.example"],
                 "rules": [{"backendRefs": [{"name": "idle", "port": 80}]}]}}))
        .await;
    env.wait_for("HTTPRoute", "held", 30, "Accepted", route_accepted).await;
    let so = ScaledObjectRef {
        name: "idle".into(),
        namespace: NS.into(),
        scaler_metadata: [("httpRoute".to_owned(), "held".to_owned())].into(),
    };
    let value = |addr: String| {
        let so = so.clone();
        async move {
            let mut keda = ExternalScalerClient::connect(format!("http://{addr}")).await.ok()?;
            let request = GetMetricsRequest { scaled_object_ref: Some(so), metric_name: String::new() };
            Some(keda.get_metrics(request).await.ok()?.into_inner().metric_values.first()?.metric_value)
        }
    };
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.agimo_ns);
    let scaler = services.get("agimo-keda-scaler").await.expect("the chart's KEDA scaler Service");
    let cluster_ip = scaler.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    let mut scalers: Vec<String> = pods
        .iter()
        .map(|p| format!("{}:9091", p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP")))
        .collect();
    scalers.push(format!("{cluster_ip}:9091"));
    let held = tokio::spawn(client::send(gateway, Mode::Http1, client::get("held.example", "/wake")));
    let started = Instant::now();
    eventually("every scaler counts the request held by one of the replicas", || async {
        for addr in &scalers {
            if value(addr.clone()).await != Some(1) {
                return Err(format!("the scaler at {addr} does not count it"));
            }
        }
        Ok(())
    })
    .await;
    held.abort();
    println!("every scaler ({scalers:?}) counted the held request after {:?}", started.elapsed());
}

#[tokio::test]
async fn the_chart_serves_through_gateway_services_and_survives_losing_its_leader() {
    let env = Env::new().await;
    env.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).await;
    env.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "echo"}},
          "template": {"metadata": {"labels": {"app": "echo"}}, "spec": {"containers": [{
            "name": "echo", "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}}}))
        .await;
    env.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": NS},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}))
        .await;
    // Two Gateways on the same port: each gets a Service and an address.
    for gw in ["gw", "gw2"] {
        env.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": gw, "namespace": NS},
            "spec": {"gatewayClassName": "agimo", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
            .await;
    }
    env.apply(route("first", "first.example")).await;

    // Two replicas, both serving, exactly one of them leading.
    let pods = env.agimo_pods().await;
    assert_eq!(pods.len(), 2, "the chart runs two replicas");
    let mut flags = Vec::new();
    for pod in &pods {
        flags.push(leader_flag(pod).await);
    }
    assert_eq!(flags.iter().filter(|f| **f == Some(true)).count(), 1, "one leader among {flags:?}");
    let leader = env.lease_holder().await.expect("a Lease holder");
    let names: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert!(names.contains(&leader), "the Lease is held by one of the pods {names:?}: {leader}");

    let mut addresses = Vec::new();
    for gw in ["gw", "gw2"] {
        let gateway = env
            .wait_for("Gateway", gw, 60, "Programmed with an address", |g| {
                is_true(g, "Programmed") && g["status"]["addresses"][0]["value"].is_string()
            })
            .await;
        addresses.push(gateway["status"]["addresses"][0]["value"].as_str().unwrap().to_owned());
    }
    assert_ne!(addresses[0], addresses[1], "each Gateway has an address of its own");
    assert_eq!(
        env.gateway_services().await,
        BTreeSet::from(["gw".to_owned(), "gw2".to_owned()]),
        "a Service per Gateway in {NS}"
    );
    // Each lists both replicas, ready, in its EndpointSlice.
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), NS);
    let pod_ips: BTreeSet<String> = pods.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect();
    let by_gateway = ListParams::default().labels("gateway.networking.k8s.io/gateway-name=gw");
    eventually("gw's EndpointSlice lists every Agimo pod, ready", || async {
        let listed = slices.list(&by_gateway).await.expect("list EndpointSlices");
        let ready: BTreeSet<String> = listed
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        if ready == pod_ips { Ok(()) } else { Err(format!("ready {ready:?}, pods {pod_ips:?}")) }
    })
    .await;
    env.wait_for("HTTPRoute", "first", 30, "Accepted", route_accepted).await;

    let gateway: SocketAddr = format!("{}:80", addresses[0]).parse().unwrap();
    let answered = |host: &'static str| async move {
        let reply = client::send(gateway, Mode::Http1, client::get(host, "/")).await.ok()?;
        // echo-basic answers with JSON naming its pod.
        (reply.status == 200 && String::from_utf8_lossy(&reply.body).contains("\"pod\"")).then_some(())
    };
    eventually(&format!("first.example served through {gateway}"), || answered("first.example")).await;
    // The other Gateway on port 80 has no route for it: its own listener
    // answers, not gw's.
    let other: SocketAddr = format!("{}:80", addresses[1]).parse().unwrap();
    let reply = client::send(other, Mode::Http1, client::get("first.example", "/")).await.expect("gw2 answers");
    assert_eq!(reply.status, 404, "gw2 must not serve gw's route");

    keda_scaler_answers_for_every_replica(&env, gateway, &pods).await;

    // Traffic flows while the leader pod is deleted.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match client::send(gateway, Mode::Http1, client::get("first.example", "/")).await {
                    Ok(r) if r.status == 200 => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{:?}", other.map(|r| r.status)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.agimo_ns);
    pods_api.delete(&leader, &DeleteParams::default()).await.expect("delete the leader pod");
    let deleted = Instant::now();
    let started = Instant::now();
    let new_leader = eventually_within(
        Duration::from_secs(60),
        &format!("another replica takes the Lease over from {leader}"),
        || async { env.lease_holder().await.filter(|h| *h != leader) },
    )
    .await;
    println!("leader {leader} deleted; {new_leader} took over in {:?}", started.elapsed());
    // The survivor, or the replacement the Deployment started (it may win
    // the Lease the old leader released on its way out): a live pod either way.
    let live: BTreeSet<String> = env.agimo_pods().await.into_iter().filter_map(|p| p.metadata.name).collect();
    assert!(live.contains(&new_leader), "{new_leader} leads but is not a live Agimo pod ({live:?})");
    // The new leader writes statuses: a route added now gets Accepted.
    env.apply(route("second", "second.example")).await;
    env.wait_for("HTTPRoute", "second", 30, "Accepted by the new leader", route_accepted).await;
    eventually("second.example served after the takeover", || answered("second.example")).await;
    // The load goes on until the old leader is gone: past its shutdown delay,
    // when its listeners close, and its drain.
    eventually_within(Duration::from_secs(60), &format!("{leader} is gone"), || async {
        pods_api.get_opt(&leader).await.expect("read the old leader pod").is_none()
    })
    .await;
    println!("{leader} gone {:?} after its deletion", deleted.elapsed());
    // It shut down by itself (5 s shutdown delay, then its connections
    // drained), not by the SIGKILL at the end of its 30 s grace period.
    assert!(
        deleted.elapsed() < Duration::from_secs(25),
        "{leader} took {:?} to go: it did not act on SIGTERM",
        deleted.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests during the takeover: {sent}, failed: {failed}");
    assert!(sent > 50, "the load kept sending ({sent})");
    assert_eq!(failed, 0, "requests failed while the leader went away: {failures:?}");

    // A deleted Gateway's Service goes with it.
    let gateways = env.api("gateway.networking.k8s.io/v1", "Gateway", Some(NS)).await;
    gateways.delete("gw2", &DeleteParams::default()).await.expect("delete gw2");
    eventually("gw2's Service is deleted", || async { !env.gateway_services().await.contains("gw2") }).await;
    assert_eq!(env.gateway_services().await, BTreeSet::from(["gw".to_owned()]));
}
