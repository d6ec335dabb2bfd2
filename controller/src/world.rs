//! The world: every resource the compiler reads, keyed by namespace and name.
//!
//! Sources (YAML files in standalone mode, watches in Kubernetes mode) fill a
//! `World`; the compiler reads it and nothing else. It holds inputs only: it
//! imports no later stage of the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use agimo_shared::snapshot::ObjectRef;

use crate::api::{
    BackendTlsPolicy, ConfigMap, EndpointSlice, Gateway, GatewayClass, GatewayStatusAddress, GrpcRoute, HttpRoute,
    ListenerSet, Namespace, ObjectMeta, Pod, ReferenceGrant, Secret, Service, TlsRoute,
};

/// Objects are shared (`Arc`), so a source can hand the compiler a world
/// without copying them.
#[derive(Clone, Debug)]
pub struct World {
    /// The `controllerName` of the GatewayClasses to serve.
    pub controller_name: String,
    pub gateway_classes: BTreeMap<String, Arc<GatewayClass>>,
    pub gateways: BTreeMap<ObjectRef, Arc<Gateway>>,
    pub http_routes: BTreeMap<ObjectRef, Arc<HttpRoute>>,
    pub grpc_routes: BTreeMap<ObjectRef, Arc<GrpcRoute>>,
    pub tls_routes: BTreeMap<ObjectRef, Arc<TlsRoute>>,
    pub listener_sets: BTreeMap<ObjectRef, Arc<ListenerSet>>,
    pub reference_grants: BTreeMap<ObjectRef, Arc<ReferenceGrant>>,
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectRef, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectRef, Arc<Secret>>,
    pub config_maps: BTreeMap<ObjectRef, Arc<ConfigMap>>,
    pub backend_tls_policies: BTreeMap<ObjectRef, Arc<BackendTlsPolicy>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Addresses assigned to Gateways that do not request one in
    /// `spec.addresses` (by an address pool, in Kubernetes mode).
    pub assigned_addresses: BTreeMap<ObjectRef, IpAddr>,
    /// With Gateway Services (`--gateway-service-type`): each Gateway's
    /// Service, pod ports and addresses.
    pub exposed: Option<BTreeMap<ObjectRef, Exposed>>,
    /// Whether Agimo writes a Service per Gateway (Gateway Services or an
    /// address pool, in Kubernetes mode).
    pub generates_services: bool,
    /// With Gateway Services: Agimo's own pods (`--gateway-service-selector`
    /// in its namespace), the endpoints of every Gateway's Service.
    pub gateway_pods: BTreeMap<ObjectRef, Arc<Pod>>,
    /// Where Gateways with neither `spec.addresses` nor an assigned address
    /// listen (`--bind-address`); `None` means `0.0.0.0`.
    pub default_address: Option<IpAddr>,
    /// Sockets the dataplane could not bind, with the error, so statuses can
    /// say so.
    pub bind_errors: BTreeMap<SocketAddr, agimo_dataplane::BindError>,
}

/// How one Gateway is exposed through its Gateway Service, as the Gateway
/// Services plan decided from the world.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposed {
    /// The name of its Service (in the Gateway's namespace).
    pub service: String,
    /// Listener port → the pods' port, as planned.
    pub pod_ports: BTreeMap<u16, u16>,
    /// The planned pod ports that the Gateway's Service, as the API server
    /// has it, already maps: the ones a replica serves. A replica whose world
    /// lags behind the Lease holder's may plan other ports for a new
    /// Gateway; serving only what the written Service says keeps every
    /// replica on the ports clients are sent to.
    pub serving: BTreeMap<u16, u16>,
    /// Listener ports left without a pod port (the range is exhausted).
    pub unassigned_ports: Vec<u16>,
    /// What `status.addresses` publishes; empty until the Service has one.
    pub addresses: Vec<GatewayStatusAddress>,
    /// Static addresses outside every `--gateway-static-address-range`.
    pub unusable: Vec<String>,
    /// Why there is no address yet, when there is none.
    pub pending: Option<String>,
}

/// One resource of a kind the world holds.
#[derive(Clone, Debug)]
pub enum Resource {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TlsRoute(TlsRoute),
    ListenerSet(ListenerSet),
    ReferenceGrant(ReferenceGrant),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    ConfigMap(ConfigMap),
    BackendTlsPolicy(BackendTlsPolicy),
    Namespace(Namespace),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::GatewayClass(_) => "GatewayClass",
            Resource::Gateway(_) => "Gateway",
            Resource::HttpRoute(_) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
            Resource::TlsRoute(_) => "TLSRoute",
            Resource::ListenerSet(_) => "ListenerSet",
            Resource::ReferenceGrant(_) => "ReferenceGrant",
            Resource::Service(_) => "Service",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::Secret(_) => "Secret",
            Resource::ConfigMap(_) => "ConfigMap",
            Resource::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Resource::Namespace(_) => "Namespace",
        }
    }

    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Resource::GatewayClass(_) | Resource::Namespace(_))
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::GatewayClass(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::HttpRoute(o) => &o.metadata,
            Resource::GrpcRoute(o) => &o.metadata,
            Resource::TlsRoute(o) => &o.metadata,
            Resource::ListenerSet(o) => &o.metadata,
            Resource::ReferenceGrant(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::Secret(o) => &o.metadata,
            Resource::ConfigMap(o) => &o.metadata,
            Resource::BackendTlsPolicy(o) => &o.metadata,
            Resource::Namespace(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::GatewayClass(o) => &mut o.metadata,
            Resource::Gateway(o) => &mut o.metadata,
            Resource::HttpRoute(o) => &mut o.metadata,
            Resource::GrpcRoute(o) => &mut o.metadata,
            Resource::TlsRoute(o) => &mut o.metadata,
            Resource::ListenerSet(o) => &mut o.metadata,
            Resource::ReferenceGrant(o) => &mut o.metadata,
            Resource::Service(o) => &mut o.metadata,
            Resource::EndpointSlice(o) => &mut o.metadata,
            Resource::Secret(o) => &mut o.metadata,
            Resource::ConfigMap(o) => &mut o.metadata,
            Resource::BackendTlsPolicy(o) => &mut o.metadata,
            Resource::Namespace(o) => &mut o.metadata,
        }
    }
}

impl Default for World {
    fn default() -> Self {
        World {
            controller_name: crate::api::CONTROLLER_NAME.to_owned(),
            gateway_classes: BTreeMap::new(),
            gateways: BTreeMap::new(),
            http_routes: BTreeMap::new(),
            grpc_routes: BTreeMap::new(),
            tls_routes: BTreeMap::new(),
            listener_sets: BTreeMap::new(),
            reference_grants: BTreeMap::new(),
            services: BTreeMap::new(),
            endpoint_slices: BTreeMap::new(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            backend_tls_policies: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            assigned_addresses: BTreeMap::new(),
            exposed: None,
            generates_services: false,
            gateway_pods: BTreeMap::new(),
            default_address: None,
            bind_errors: BTreeMap::new(),
        }
    }
}

impl World {
    /// Adds a resource; returns false (and keeps the first) if one of the
    /// same kind and name is already present.
    pub fn insert(&mut self, resource: Resource) -> bool {
        fn put<K: Ord, V>(map: &mut BTreeMap<K, Arc<V>>, key: K, value: V) -> bool {
            match map.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => false,
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Arc::new(value));
                    true
                }
            }
        }
        let key = object_ref(resource.metadata());
        match resource {
            Resource::GatewayClass(o) => put(&mut self.gateway_classes, key.name, o),
            Resource::Namespace(o) => put(&mut self.namespaces, key.name, o),
            Resource::Gateway(o) => put(&mut self.gateways, key, o),
            Resource::HttpRoute(o) => put(&mut self.http_routes, key, o),
            Resource::GrpcRoute(o) => put(&mut self.grpc_routes, key, o),
            Resource::TlsRoute(o) => put(&mut self.tls_routes, key, o),
            Resource::ListenerSet(o) => put(&mut self.listener_sets, key, o),
            Resource::ReferenceGrant(o) => put(&mut self.reference_grants, key, o),
            Resource::Service(o) => put(&mut self.services, key, o),
            Resource::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            Resource::Secret(o) => put(&mut self.secrets, key, o),
            Resource::ConfigMap(o) => put(&mut self.config_maps, key, o),
            Resource::BackendTlsPolicy(o) => put(&mut self.backend_tls_policies, key, o),
        }
    }

    /// Drops the objects, keeping the inputs that are not objects (bind
    /// errors, addresses, Gateway Services).
    pub fn clear_objects(&mut self) {
        self.gateway_classes.clear();
        self.gateways.clear();
        self.http_routes.clear();
        self.listener_sets.clear();
        self.reference_grants.clear();
        self.services.clear();
        self.endpoint_slices.clear();
        self.secrets.clear();
        self.config_maps.clear();
        self.backend_tls_policies.clear();
        self.namespaces.clear();
    }

    /// Our Gateways (of a GatewayClass with our controller name), oldest
    /// first, then by namespace/name, as the Gateway API breaks ties.
    pub fn our_gateways_oldest_first(&self) -> Vec<(&ObjectRef, &Gateway)> {
        let ours: BTreeSet<&str> = self
            .gateway_classes
            .iter()
            .filter(|(_, c)| c.spec.controller_name == self.controller_name)
            .map(|(name, _)| name.as_str())
            .collect();
        let mut gateways: Vec<(&ObjectRef, &Gateway)> = self
            .gateways
            .iter()
            .filter(|(_, g)| ours.contains(g.spec.gateway_class_name.as_str()))
            .map(|(k, g)| (k, g.as_ref()))
            .collect();
        gateways.sort_by(|(ka, a), (kb, b)| oldest_first(a, ka, b, kb));
        gateways
    }

    /// The ListenerSets whose parentRef names Gateway `gateway` (attached or
    /// not: the Gateway's `allowedListeners` decides that).
    pub fn listener_sets_of<'a>(&'a self, gateway: &'a ObjectRef) -> impl Iterator<Item = &'a ListenerSet> + 'a {
        self.listener_sets
            .iter()
            .filter(move |(key, set)| listener_set_parent(key, set).as_ref() == Some(gateway))
            .map(|(_, s)| s.as_ref())
    }

    pub fn default_address(&self) -> IpAddr {
        self.default_address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// The labels of a namespace. A namespace without an object still has
    /// the `kubernetes.io/metadata.name` label the API server always sets.
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(namespace).and_then(|ns| ns.metadata.labels.clone()).unwrap_or_default();
        labels.insert(crate::api::NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
        labels
    }
}

/// The Gateway API's order of precedence between Gateways: the oldest
/// first (one without `creationTimestamp` last), then by namespace/name.
pub fn oldest_first(a: &Gateway, a_key: &ObjectRef, b: &Gateway, b_key: &ObjectRef) -> std::cmp::Ordering {
    let created = |g: &Gateway| g.metadata.creation_timestamp.clone().map(|t| t.0);
    let (ca, cb) = (created(a), created(b));
    ca.is_none().cmp(&cb.is_none()).then(ca.cmp(&cb)).then_with(|| a_key.cmp(b_key))
}

/// The Gateway a ListenerSet's parentRef names, if it names a Gateway.
pub fn listener_set_parent(key: &ObjectRef, set: &ListenerSet) -> Option<ObjectRef> {
    let p = &set.spec.parent_ref;
    let group = p.group.as_deref().unwrap_or(crate::api::GATEWAY_GROUP);
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    (group == crate::api::GATEWAY_GROUP && kind == "Gateway").then(|| ObjectRef {
        namespace: p.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
        name: p.name.clone(),
    })
}

/// The key of a namespaced object.
pub fn object_ref(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef { namespace: meta.namespace.clone().unwrap_or_default(), name: meta.name.clone().unwrap_or_default() }
}
