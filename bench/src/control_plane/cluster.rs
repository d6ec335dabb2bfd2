//! The cluster side of the control-plane benchmark: objects applied as
//! JSON, routes and their statuses, status writes counted from a watch, and
//! each Agimo replica's resident memory and CPU time from its `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Client, discovery};
use serde_json::{Value, json};

/// Where the benchmark's own objects live.
pub const NS: &str = "agimo-control-plane";
const MANAGER: &str = "agimo-control-plane-bench";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";

#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// Where the chart runs Agimo.
    pub agimo_ns: String,
}

impl Cluster {
    pub async fn api(&self, namespace: &str, api_version: &str, kind: &str) -> Result<Api<DynamicObject>> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) =
            discovery::pinned_kind(&self.client, &gvk).await.with_context(|| format!("discover {kind}"))?;
        Ok(match caps.scope {
            discovery::Scope::Cluster => Api::all_with(self.client.clone(), &resource),
            discovery::Scope::Namespaced => Api::namespaced_with(self.client.clone(), namespace, &resource),
        })
    }

    pub async fn routes(&self, namespace: &str) -> Result<Api<DynamicObject>> {
        self.api(namespace, GATEWAY_API, "HTTPRoute").await
    }

    /// Server-side applies `object` (its namespace from its metadata).
    pub async fn apply(&self, object: Value) -> Result<()> {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let api_version = object["apiVersion"].as_str().context("apiVersion")?.to_owned();
        let kind = object["kind"].as_str().context("kind")?.to_owned();
        let name = object["metadata"]["name"].as_str().context("name")?.to_owned();
        let api = self.api(&namespace, &api_version, &kind).await?;
        let object: DynamicObject = serde_json::from_value(object)?;
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("apply {kind} {namespace}/{name}"))?;
        Ok(())
    }

    /// Creates an HTTPRoute; returns how long the API server took to accept it.
    pub async fn create_route(&self, api: &Api<DynamicObject>, route: Value) -> Result<Duration> {
        let object: DynamicObject = serde_json::from_value(route)?;
        let started = Instant::now();
        api.create(&PostParams::default(), &object).await.context("create HTTPRoute")?;
        Ok(started.elapsed())
    }

    /// Deletes a namespace (without waiting) if it exists.
    pub async fn delete_namespace(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = api.delete(name, &DeleteParams::default()).await;
    }

    /// Waits until namespace `name` is gone (a run before this one left it).
    pub async fn namespace_gone(&self, name: &str) -> Result<()> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let started = Instant::now();
        while api.get_opt(name).await?.is_some() {
            if started.elapsed() > Duration::from_secs(180) {
                bail!("namespace {name} still exists after 180 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// The running Agimo pods of the release, by name, with their IP.
    pub async fn agimo_pods(&self) -> Result<Vec<(String, String)>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.agimo_ns);
        let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=agimo")).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
            .collect())
    }

    /// The IP of the running pod of Deployment `app` in [`NS`].
    pub async fn pod_ip(&self, app: &str) -> Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let started = Instant::now();
        loop {
            let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?;
            let ready = list.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if let Some(ip) = ready.and_then(|p| p.status?.pod_ip) {
                return Ok(ip);
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("no ready pod of {app} after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// An HTTPRoute `name` in `namespace` for `host`, to Service `service` port 80
/// through Gateway [`NS`]/gw, with `rules` (each a JSON rule) if given.
pub fn route(namespace: &str, name: &str, host: &str, service: &str, label: &str) -> Value {
    json!({
        "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "labels": {"bench": label}},
        "spec": {
            "parentRefs": [{"name": "gw", "namespace": NS}],
            "hostnames": [host],
            "rules": [{"backendRefs": [{"name": service, "namespace": namespace, "port": 80}]}]
        }
    })
}

/// A Deployment of the conformance suite's echo backend (it answers with
/// JSON naming its pod) and its Service, port 80 → 3000.
pub fn echo(name: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
              "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "echo", "image": "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
                "readinessProbe": {"httpGet": {"path": "/", "port": 3000}, "periodSeconds": 1},
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}),
    ]
}

/// A Service without a selector and its EndpointSlice, whose endpoints
/// (address, ready) the benchmark writes itself, as a controller of
/// endpoints would.
pub fn manual_service(namespace: &str, name: &str, endpoints: &[(&str, bool)]) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}),
        slice(namespace, name, endpoints),
    ]
}

pub fn slice(namespace: &str, name: &str, endpoints: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-manual"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGER}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}], "endpoints": endpoints})
}

/// Whether a route's status says our controller accepted it on gw.
pub fn accepted(route: &Value) -> bool {
    route["status"]["parents"].as_array().into_iter().flatten().any(|p| {
        p["parentRef"]["name"] == "gw"
            && p["conditions"].as_array().into_iter().flatten().any(|c| {
                c["type"] == "Accepted"
                    && c["status"] == "True"
                    && c["observedGeneration"] == route["metadata"]["generation"]
            })
    })
}

/// Counts the status changes of the HTTPRoutes labelled `bench=<label>` in
/// `namespace`, from a watch: each is one status write by the Lease holder.
pub struct StatusWrites {
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusWrites {
    pub async fn start(cluster: &Cluster, namespace: &str, label: &str) -> Result<StatusWrites> {
        let api = cluster.routes(namespace).await?;
        let version = api.list_metadata(&ListParams::default().limit(1)).await?.metadata.resource_version;
        let version = version.unwrap_or_else(|| "0".to_owned());
        let params = WatchParams::default().labels(&format!("bench={label}")).timeout(290);
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let task = tokio::spawn(async move {
            let mut last: BTreeMap<String, Value> = BTreeMap::new();
            let mut version = version;
            loop {
                let Ok(stream) = api.watch(&params, &version).await else { return };
                let mut stream = stream.boxed();
                while let Ok(Some(event)) = stream.try_next().await {
                    let object = match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => o,
                        WatchEvent::Bookmark(b) => {
                            version = b.metadata.resource_version;
                            continue;
                        }
                        _ => continue,
                    };
                    version = object.metadata.resource_version.clone().unwrap_or(version);
                    let name = object.metadata.name.clone().unwrap_or_default();
                    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
                    let before = last.insert(name, status.clone()).unwrap_or(Value::Null);
                    if status != before && !status.is_null() && status != json!({}) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(StatusWrites { count, task })
    }
}

impl Drop for StatusWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One replica's resident memory (bytes) and CPU time (seconds), from its
/// `process_*` metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss: f64,
    pub cpu: f64,
}

pub async fn usage(pod_ip: &str) -> Result<Usage> {
    let addr = format!("{pod_ip}:9090").parse()?;
    let reply = agimo_testkit::client::send(
        addr,
        agimo_testkit::client::Mode::Http1,
        agimo_testkit::client::get(pod_ip, "/metrics"),
    )
    .await?;
    let text = String::from_utf8_lossy(&reply.body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .with_context(|| format!("{name} in {pod_ip}'s metrics"))
    };
    Ok(Usage { rss: value("process_resident_memory_bytes ")?, cpu: value("process_cpu_seconds_total ")? })
}
