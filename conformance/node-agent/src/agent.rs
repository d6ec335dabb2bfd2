//! Wiring and dispatch: registers the Node, starts the heartbeat and the
//! log server, then watches every pod. Pending pods without a node are
//! bound to this one (there is no scheduler); pods bound here get a worker
//! ([`crate::pod`]) that receives each new version of its pod. On shutdown
//! the workers stop their pods (processes, namespaces, addresses) but leave
//! them in the API.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Config;
use crate::image::ImageStore;
use crate::ipam::Ipam;
use crate::logs::{self, LogIndex};
use crate::node::{self, Machine};
use crate::pod::{self, Update};
use crate::sandbox;

/// What every worker shares.
pub struct Ctx {
    pub client: Client,
    pub config: Config,
    pub ipam: Mutex<Ipam>,
    pub logs: LogIndex,
    pub recorder: Recorder,
    /// The node's images (`--image-layout`).
    pub images: ImageStore,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let removed = sandbox::destroy_leftovers().await;
    if removed > 0 {
        tracing::info!(removed, "removed network namespaces and veths of an earlier run");
    }
    let pods_dir = config.state_dir.join("pods");
    if pods_dir.exists() {
        std::fs::remove_dir_all(&pods_dir)?;
    }
    std::fs::create_dir_all(&pods_dir)?;

    let logs_addr = SocketAddr::from((config.node_ip, config.logs_port));
    let listener = tokio::net::TcpListener::bind(logs_addr)
        .await
        .map_err(|e| anyhow::anyhow!("log server: cannot listen on {logs_addr}: {e}"))?;
    let index = LogIndex::default();
    tokio::spawn(logs::serve(listener, logs::tls_config(&config)?, index.clone()));
    tracing::info!(%logs_addr, "serving container logs");

    let machine = Machine::probe();
    let ready_since = Time(Timestamp::now());
    let mut backoff = Duration::from_millis(500);
    while let Err(e) = node::register(&client, &config, &machine, &ready_since).await {
        tracing::warn!(error = %e, "cannot register the Node; retrying in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    tokio::spawn(node::heartbeat(client.clone(), config.clone(), machine, ready_since));

    let reporter = Reporter { controller: "agimo-node-agent".to_owned(), instance: Some(config.node_name.clone()) };
    let ipam = Ipam::new(config.pod_ips.0, config.pod_ips.1).map_err(anyhow::Error::msg)?;
    let images = ImageStore::new(config.image_layouts.clone(), config.state_dir.join("images"));
    let ctx = Arc::new(Ctx {
        images,
        recorder: Recorder::new(client.clone(), reporter),
        client,
        ipam: Mutex::new(ipam),
        logs: index,
        config,
    });
    dispatch(ctx, shutdown).await;
    Ok(())
}

/// Watches pods until `shutdown`, then stops every worker.
async fn dispatch(ctx: Arc<Ctx>, shutdown: impl Future<Output = ()>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|pod: &mut Pod| pod.metadata.managed_fields = None)
        .boxed();
    let mut workers: HashMap<String, watch::Sender<Update>> = HashMap::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let binding: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut relist: Option<HashSet<String>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(WatchEvent::Init)) => relist = Some(HashSet::new()),
                Some(Ok(WatchEvent::InitApply(pod))) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(pod.uid().unwrap_or_default());
                    }
                    apply(&ctx, pod, &mut workers, &mut tasks, &binding);
                }
                Some(Ok(WatchEvent::InitDone)) => {
                    // Pods deleted while the watch was down.
                    let seen = relist.take().unwrap_or_default();
                    for (uid, tx) in &workers {
                        if !seen.contains(uid) {
                            tx.send_replace(None);
                        }
                    }
                }
                Some(Ok(WatchEvent::Apply(pod))) => apply(&ctx, pod, &mut workers, &mut tasks, &binding),
                Some(Ok(WatchEvent::Delete(pod))) => {
                    if let Some(tx) = workers.get(&pod.uid().unwrap_or_default()) {
                        tx.send_replace(None);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
                None => break,
            },
            Some(done) = tasks.join_next() => {
                if let Ok(uid) = done && workers.get(&uid).is_some_and(watch::Sender::is_closed) {
                    workers.remove(&uid);
                }
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!(pods = workers.len(), "stopping the pods on this node");
    // Dropping the senders tells each worker to stop its pod.
    drop(workers);
    if tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("some pods did not stop within 30 s");
    }
}

/// Routes one version of a pod: bind it, hand it to its worker, or start one.
fn apply(
    ctx: &Arc<Ctx>,
    pod: Pod,
    workers: &mut HashMap<String, watch::Sender<Update>>,
    tasks: &mut JoinSet<String>,
    binding: &Arc<Mutex<HashSet<String>>>,
) {
    let uid = pod.uid().unwrap_or_default();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    if node_name.is_empty() {
        if wants_binding(&pod) && binding.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone()) {
            let (ctx, binding) = (ctx.clone(), binding.clone());
            tokio::spawn(async move {
                bind(&ctx, &pod).await;
                binding.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
            });
        }
        return;
    }
    if node_name != ctx.config.node_name {
        return;
    }
    let pod = Arc::new(pod);
    match workers.get(&uid) {
        Some(tx) if !tx.is_closed() => {
            tx.send_replace(Some(pod));
        }
        _ => {
            let (tx, rx) = watch::channel(Some(pod.clone()));
            let span = tracing::info_span!("pod", pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()));
            tasks.spawn(pod::run(ctx.clone(), pod, rx).instrument(span));
            workers.insert(uid, tx);
        }
    }
}

/// A pod the (absent) default scheduler would place: no node yet, the
/// default scheduler, not terminating or finished, no scheduling gates.
pub fn wants_binding(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().unwrap_or_default().is_empty()
        && spec.scheduler_name.as_deref().is_none_or(|s| s == "default-scheduler")
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Binds `pod` to this node through `pods/binding`, retrying API errors
/// until it is bound (by us or anyone) or gone.
async fn bind(ctx: &Ctx, pod: &Pod) {
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.uid(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(ctx.config.node_name.clone()),
            ..Default::default()
        },
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), node = %ctx.config.node_name, "bound");
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Scheduled".to_owned(),
                    note: Some(format!("Successfully assigned {namespace}/{name} to {}", ctx.config.node_name)),
                    action: "Binding".to_owned(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
                    tracing::debug!(error = %e, "cannot publish an event");
                }
                return;
            }
            // Already bound (409) or deleted (404).
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => return,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot bind; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_pod(spec: serde_json::Value, extra: serde_json::Value) -> Pod {
        let mut pod = json!({"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": spec});
        if let (Some(pod), Some(extra)) = (pod.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if k == "metadata" {
                    pod["metadata"].as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
                } else {
                    pod.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(pod).unwrap()
    }

    #[test]
    fn binds_only_pending_pods_of_the_default_scheduler() {
        let containers = json!([{"name": "c"}]);
        assert!(wants_binding(&mk_pod(json!({"containers": containers}), json!({}))));
        assert!(wants_binding(&mk_pod(
            json!({"containers": containers, "schedulerName": "default-scheduler"}),
            json!({})
        )));
        assert!(!wants_binding(&mk_pod(json!({"containers": containers, "nodeName": "other"}), json!({}))));
        assert!(!wants_binding(&mk_pod(json!({"containers": containers, "schedulerName": "volcano"}), json!({}))));
        assert!(!wants_binding(&mk_pod(
            json!({"containers": containers, "schedulingGates": [{"name": "wait"}]}),
            json!({})
        )));
        assert!(!wants_binding(&mk_pod(
            json!({"containers": containers}),
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
        )));
        assert!(!wants_binding(&mk_pod(json!({"containers": containers}), json!({"status": {"phase": "Succeeded"}}))));
    }
}
