//! Kubernetes mode's source: one watch per kind the compiler reads, each
//! keeping its objects parsed in memory, and a notification on every change.
//!
//! ```text
//!  API server ──watch (DynamicObject)──► parse (skip + warn on failure) ──► Cache<K>
//!                                                                  │
//!                                         Stores::world() ◄────────┘  ──► compile
//! ```
//!
//! Watches are robust: objects that fail to parse are skipped with a warning
//! (an object that parsed before keeps its last good version), errors back
//! off and retry, `managedFields` are dropped, the Gateway API CRDs are
//! checked before watching, and [`Stores::wait_ready`] waits for every
//! initial list before the first compile.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agimo_shared::snapshot::ObjectRef;
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::ApiCapabilities;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::api::{
    BackendTlsPolicy, ConfigMap, EndpointSlice, Gateway, GatewayClass, GrpcRoute, HttpRoute, ListenerSet, Namespace,
    Pod, ReferenceGrant, Secret, Service, TlsRoute,
};
use crate::world::World;

/// Objects of one kind, parsed, by namespace and name.
struct Cache<K> {
    objects: RwLock<BTreeMap<ObjectRef, Arc<K>>>,
    ready: watch::Sender<bool>,
}

impl<K> Cache<K> {
    fn new() -> Arc<Self> {
        Arc::new(Cache { objects: RwLock::new(BTreeMap::new()), ready: watch::Sender::new(false) })
    }

    fn snapshot(&self) -> BTreeMap<ObjectRef, Arc<K>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every watched kind, and a notification when any of them changes.
#[derive(Clone)]
pub struct Stores {
    gateway_classes: Arc<Cache<GatewayClass>>,
    gateways: Arc<Cache<Gateway>>,
    http_routes: Arc<Cache<HttpRoute>>,
    grpc_routes: Arc<Cache<GrpcRoute>>,
    tls_routes: Arc<Cache<TlsRoute>>,
    listener_sets: Arc<Cache<ListenerSet>>,
    reference_grants: Arc<Cache<ReferenceGrant>>,
    services: Arc<Cache<Service>>,
    endpoint_slices: Arc<Cache<EndpointSlice>>,
    secrets: Arc<Cache<Secret>>,
    config_maps: Arc<Cache<ConfigMap>>,
    backend_tls_policies: Arc<Cache<BackendTlsPolicy>>,
    namespaces: Arc<Cache<Namespace>>,
    /// Agimo's own pods, with Gateway Services (empty otherwise).
    gateway_pods: Arc<Cache<Pod>>,
    changed: Arc<Notify>,
}

/// Where Agimo's own pods are, to watch them: the endpoints of the Gateway
/// Services.
#[derive(Clone, Debug)]
pub struct OwnPods {
    pub namespace: String,
    /// A label selector, `k=v,k=v`.
    pub selector: String,
}

impl Stores {
    /// Checks that the Gateway API CRDs are installed (waiting for them if
    /// not), then starts a watch per kind, and one of Agimo's own pods when
    /// `own_pods` says where they are.
    pub async fn start(client: Client, own_pods: Option<OwnPods>) -> Stores {
        let OptionalKinds { reference_grants, grpc_routes, tls_routes, listener_sets, backend_tls_policies } = loop {
            match required_crds(&client).await {
                Ok(optional) => break optional,
                Err(e) => {
                    tracing::error!(error = %e, "waiting for the Gateway API CRDs; install them with \
                        `kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/<version>/standard-install.yaml`");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        };
        let stores = Stores {
            gateway_classes: Cache::new(),
            gateways: Cache::new(),
            http_routes: Cache::new(),
            grpc_routes: Cache::new(),
            tls_routes: Cache::new(),
            listener_sets: Cache::new(),
            reference_grants: Cache::new(),
            services: Cache::new(),
            endpoint_slices: Cache::new(),
            secrets: Cache::new(),
            config_maps: Cache::new(),
            backend_tls_policies: Cache::new(),
            namespaces: Cache::new(),
            gateway_pods: Cache::new(),
            changed: Arc::new(Notify::new()),
        };
        let all = watcher::Config::default().any_semantic();
        stores.spawn(&client, &stores.gateway_classes, ApiResource::erase::<GatewayClass>(&()), all.clone());
        stores.spawn(&client, &stores.gateways, ApiResource::erase::<Gateway>(&()), all.clone());
        stores.spawn(&client, &stores.http_routes, ApiResource::erase::<HttpRoute>(&()), all.clone());
        match reference_grants {
            Some(resource) => stores.spawn(&client, &stores.reference_grants, resource, all.clone()),
            None => {
                tracing::warn!("the ReferenceGrant CRD is not installed: cross-namespace references are refused");
                stores.reference_grants.ready.send_replace(true);
            }
        }
        match grpc_routes {
            Some(resource) => stores.spawn(&client, &stores.grpc_routes, resource, all.clone()),
            None => {
                tracing::warn!("the GRPCRoute CRD is not installed: Agimo serves HTTPRoutes only");
                stores.grpc_routes.ready.send_replace(true);
            }
        }
        match tls_routes {
            Some(resource) => stores.spawn(&client, &stores.tls_routes, resource, all.clone()),
            None => {
                tracing::info!("the TLSRoute CRD (v1) is not installed: TLS listeners serve no routes");
                stores.tls_routes.ready.send_replace(true);
            }
        }
        match listener_sets {
            Some(resource) => stores.spawn(&client, &stores.listener_sets, resource, all.clone()),
            None => {
                tracing::info!("the ListenerSet CRD is not installed: Gateways have their own listeners only");
                stores.listener_sets.ready.send_replace(true);
            }
        }
        stores.spawn(&client, &stores.services, ApiResource::erase::<Service>(&()), all.clone());
        stores.spawn(&client, &stores.endpoint_slices, ApiResource::erase::<EndpointSlice>(&()), all.clone());
        // Only TLS Secrets can be certificateRefs; other Secrets are not read.
        let tls = all.clone().fields("type=kubernetes.io/tls");
        stores.spawn(&client, &stores.secrets, ApiResource::erase::<Secret>(&()), tls);
        // ConfigMaps hold CA certificates: of BackendTLSPolicies and of client
        // certificate validation (tls.frontend).
        stores.spawn(&client, &stores.config_maps, ApiResource::erase::<ConfigMap>(&()), all.clone());
        match backend_tls_policies {
            Some(resource) => stores.spawn(&client, &stores.backend_tls_policies, resource, all.clone()),
            None => {
                tracing::warn!("the BackendTLSPolicy CRD is not installed: Agimo speaks plain HTTP to every backend");
                stores.backend_tls_policies.ready.send_replace(true);
            }
        }
        stores.spawn(&client, &stores.namespaces, ApiResource::erase::<Namespace>(&()), all);
        match own_pods {
            Some(OwnPods { namespace, selector }) => {
                let resource = ApiResource::erase::<Pod>(&());
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
                let config = watcher::Config::default().any_semantic().labels(&selector);
                // A pod's readiness is in its status, which is what matters here.
                let (cache, changed) = (stores.gateway_pods.clone(), stores.changed.clone());
                tokio::spawn(watch(api, config, resource.kind, cache, changed, Relevance::Always));
            }
            None => {
                stores.gateway_pods.ready.send_replace(true);
            }
        }
        stores
    }

    fn spawn<K>(&self, client: &Client, cache: &Arc<Cache<K>>, resource: ApiResource, config: watcher::Config)
    where
        K: Resource + DeserializeOwned + Send + Sync + 'static,
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let task = watch(api, config, resource.kind, cache.clone(), self.changed.clone(), Relevance::SpecAndMetadata);
        tokio::spawn(task);
    }

    /// Waits until every watch has listed its objects once.
    pub async fn wait_ready(&self) {
        async fn ready<K>(cache: &Cache<K>) {
            let _ = cache.ready.subscribe().wait_for(|r| *r).await;
        }
        ready(&self.gateway_classes).await;
        ready(&self.gateways).await;
        ready(&self.http_routes).await;
        ready(&self.grpc_routes).await;
        ready(&self.tls_routes).await;
        ready(&self.listener_sets).await;
        ready(&self.reference_grants).await;
        ready(&self.services).await;
        ready(&self.endpoint_slices).await;
        ready(&self.secrets).await;
        ready(&self.config_maps).await;
        ready(&self.backend_tls_policies).await;
        ready(&self.namespaces).await;
        ready(&self.gateway_pods).await;
    }

    /// Resolves when any watched object changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The current Services.
    pub fn services(&self) -> BTreeMap<ObjectRef, Arc<Service>> {
        self.services.snapshot()
    }

    /// The current EndpointSlices.
    pub fn endpoint_slices(&self) -> BTreeMap<ObjectRef, Arc<EndpointSlice>> {
        self.endpoint_slices.snapshot()
    }

    /// The current objects as a world (shared, not copied).
    pub fn world(&self) -> World {
        fn by_name<K>(m: BTreeMap<ObjectRef, Arc<K>>) -> BTreeMap<String, Arc<K>> {
            m.into_iter().map(|(k, v)| (k.name, v)).collect()
        }
        World {
            gateway_classes: by_name(self.gateway_classes.snapshot()),
            gateways: self.gateways.snapshot(),
            http_routes: self.http_routes.snapshot(),
            grpc_routes: self.grpc_routes.snapshot(),
            tls_routes: self.tls_routes.snapshot(),
            listener_sets: self.listener_sets.snapshot(),
            reference_grants: self.reference_grants.snapshot(),
            services: self.services.snapshot(),
            endpoint_slices: self.endpoint_slices.snapshot(),
            secrets: self.secrets.snapshot(),
            config_maps: self.config_maps.snapshot(),
            backend_tls_policies: self.backend_tls_policies.snapshot(),
            namespaces: by_name(self.namespaces.snapshot()),
            gateway_pods: self.gateway_pods.snapshot(),
            ..World::default()
        }
    }
}

/// The optional Gateway API kinds, when served.
struct OptionalKinds {
    /// ReferenceGrant, v1 else v1beta1.
    reference_grants: Option<ApiResource>,
    /// GRPCRoute, v1.
    grpc_routes: Option<ApiResource>,
    /// TLSRoute, v1.
    tls_routes: Option<ApiResource>,
    /// ListenerSet, v1.
    listener_sets: Option<ApiResource>,
    /// BackendTLSPolicy, v1.
    backend_tls_policies: Option<ApiResource>,
}

/// Checks the Gateway API kinds Agimo needs are served, and finds the
/// optional ones to watch.
async fn required_crds(client: &Client) -> anyhow::Result<OptionalKinds> {
    let group = kube::discovery::oneshot::group(client, crate::api::GATEWAY_GROUP).await?;
    let find = |kind: &str| -> Option<(ApiResource, ApiCapabilities)> {
        group.versioned_resources("v1").into_iter().find(|(r, _)| r.kind == kind)
    };
    for kind in ["GatewayClass", "Gateway", "HTTPRoute"] {
        if find(kind).is_none() {
            anyhow::bail!("{kind} {}/v1 is not served", crate::api::GATEWAY_GROUP);
        }
    }
    let grants = find("ReferenceGrant").map(|(r, _)| r).or_else(|| {
        group.versioned_resources("v1beta1").into_iter().find(|(r, _)| r.kind == "ReferenceGrant").map(|(r, _)| r)
    });
    Ok(OptionalKinds {
        reference_grants: grants,
        grpc_routes: find("GRPCRoute").map(|(r, _)| r),
        tls_routes: find("TLSRoute").map(|(r, _)| r),
        listener_sets: find("ListenerSet").map(|(r, _)| r),
        backend_tls_policies: find("BackendTLSPolicy").map(|(r, _)| r),
    })
}

/// How long a failed watch waits before trying again: from 500 ms,
/// doubling, at most 5 s (kube-rs's default goes to 30 s), back to the start
/// after a minute without failures. An API server that comes back after an
/// outage is seen within 5 s, and its first answer ("too old resource
/// version": it forgot the watch) is followed by a new list as quickly.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// Which changes of an object call for a new world.
#[derive(Clone, Copy, PartialEq)]
enum Relevance {
    /// Those the compiler can see ([`compiles_differently`]): not a status
    /// change of a kind with a generation.
    SpecAndMetadata,
    /// Every change (a pod's readiness is in its status).
    Always,
}

async fn watch<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    kind: String,
    cache: Arc<Cache<K>>,
    changed: Arc<Notify>,
    relevance: Relevance,
) where
    K: Resource + DeserializeOwned + Send + Sync + 'static,
{
    let mut stream = watcher::watcher(api, config)
        .backoff(watch_backoff())
        .modify(|o: &mut DynamicObject| {
            o.metadata.managed_fields = None;
            if let Some(a) = o.metadata.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .boxed();
    let mut relist: Option<BTreeMap<ObjectRef, Arc<K>>> = None;
    let write = || cache.objects.write().unwrap_or_else(|e| e.into_inner());
    let previous = |key: &ObjectRef| cache.objects.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist = Some(BTreeMap::new()),
            Ok(Event::InitApply(object)) => {
                let key = key_of(&object);
                // An object that no longer parses keeps its last good version.
                let parsed = parse::<K>(&kind, object).or_else(|| previous(&key));
                if let (Some(list), Some(parsed)) = (relist.as_mut(), parsed) {
                    list.insert(key, parsed);
                }
            }
            Ok(Event::InitDone) => {
                let list = relist.take().unwrap_or_default();
                tracing::debug!(kind, objects = list.len(), "listed");
                *write() = list;
                cache.ready.send_replace(true);
                changed.notify_one();
            }
            Ok(Event::Apply(object)) => {
                let key = key_of(&object);
                if let Some(parsed) = parse::<K>(&kind, object) {
                    let relevant = relevance == Relevance::Always
                        || previous(&key).is_none_or(|old| compiles_differently(old.meta(), parsed.meta()));
                    write().insert(key, parsed);
                    // Status updates (most of them ours) need no recompile.
                    if relevant {
                        changed.notify_one();
                    }
                }
            }
            Ok(Event::Delete(object)) => {
                write().remove(&key_of(&object));
                changed.notify_one();
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// Whether a new version of an object can change what the compiler makes of
/// it. For kinds with a `metadata.generation` (the Gateway API's), a version
/// with the same generation, labels and annotations only changed its status.
fn compiles_differently(old: &kube::api::ObjectMeta, new: &kube::api::ObjectMeta) -> bool {
    old.generation.is_none()
        || old.generation != new.generation
        || old.labels != new.labels
        || old.annotations != new.annotations
        || old.deletion_timestamp != new.deletion_timestamp
}

fn key_of(object: &DynamicObject) -> ObjectRef {
    ObjectRef {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// Parses one object; on failure warns and returns `None`, so one bad object
/// never stops the watch.
fn parse<K: Resource + DeserializeOwned>(kind: &str, object: DynamicObject) -> Option<Arc<K>> {
    let key = key_of(&object);
    match object.try_parse::<K>() {
        Ok(parsed) => Some(Arc::new(parsed)),
        Err(e) => {
            tracing::warn!(kind, object = %key, error = %e, "cannot parse; ignoring this version of the object");
            None
        }
    }
}
