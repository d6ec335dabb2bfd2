//! GatewayClasses, Gateways and their listeners: validation, conflicts,
//! binds, and their statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use agimo_shared::Snapshot;
use agimo_shared::hostname::Hostname;
use agimo_shared::snapshot::{self, Bind, Certificate, ClientValidation, ObjectRef, Protocol, RouteTable};

use super::backend_tls::ClientCertificate;
use super::compiled::Statuses;
use super::conditions::{Problem, Reason, condition, types};
use super::grants::LabelSelector;
use super::kinds::RouteKind;
use super::scale_to_zero::{self, GateAnnotations};
use super::tls::{self, CertificateCache};
use crate::api::{
    Condition, FromNamespaces, FrontendTls, GATEWAY_GROUP, Gateway, GatewayClassStatus, GatewayStatus,
    GatewayStatusAddress, Listener, ListenerStatus, SupportedFeature, SupportedKind, TlsMode,
};
use crate::world::{Exposed, World, oldest_first};

/// The features Agimo claims in `GatewayClass.status.supportedFeatures` in
/// every mode, sorted by name as the spec requires. The conformance run reads
/// the list from the status, so what is claimed is what is tested.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "ReferenceGrant",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
];

/// Claimed where Agimo generates a Service per Gateway (beside it, with its
/// `spec.infrastructure` labels and annotations): with Gateway Services or an
/// address pool, not when Gateways only bind `--bind-address`.
pub const INFRASTRUCTURE_FEATURE: &str = "GatewayInfrastructure";

/// The features claimed for `world`'s mode, sorted by name.
pub fn supported_features(world: &World) -> Vec<&'static str> {
    let mut features = SUPPORTED_FEATURES.to_vec();
    if world.generates_services {
        features.push(INFRASTRUCTURE_FEATURE);
        features.sort_unstable();
    }
    features
}

/// The GatewayClasses we own and accept; writes their statuses.
pub fn accepted_classes(world: &World, statuses: &mut Statuses) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for (name, class) in &world.gateway_classes {
        if class.spec.controller_name != world.controller_name {
            continue;
        }
        let generation = class.metadata.generation;
        let accepted_condition = match &class.spec.parameters_ref {
            None => {
                accepted.insert(name.clone());
                condition(types::ACCEPTED, true, Reason::Accepted, "Agimo serves this GatewayClass", generation)
            }
            Some(p) => condition(
                types::ACCEPTED,
                false,
                Reason::InvalidParameters,
                format!("parametersRef {}/{} {}: Agimo takes no GatewayClass parameters", p.group, p.kind, p.name),
                generation,
            ),
        };
        statuses.gateway_classes.insert(
            name.clone(),
            GatewayClassStatus {
                conditions: Some(vec![accepted_condition]),
                supported_features: Some(
                    supported_features(world).into_iter().map(|f| SupportedFeature { name: f.to_owned() }).collect(),
                ),
            },
        );
    }
    accepted
}

/// A Gateway as the compiler sees it.
pub struct GatewayModel<'w> {
    pub key: ObjectRef,
    pub gateway: &'w Gateway,
    pub generation: Option<i64>,
    /// Addresses to bind: `spec.addresses` in order, else the assigned or
    /// default address (with Gateway Services: the default, 0.0.0.0).
    pub addresses: Vec<IpAddr>,
    /// With Gateway Services, the pods' port of each listener port that the
    /// Gateway's Service already maps (see [`crate::world::Exposed::serving`]).
    pub pod_ports: Option<BTreeMap<u16, u16>>,
    /// What `status.addresses` publishes.
    pub status_addresses: Vec<GatewayStatusAddress>,
    /// Why Programmed is False: an address that cannot be used, or none
    /// assigned yet.
    pub address_problem: Option<Problem>,
    /// `Err` says why Accepted is False.
    pub accepted: Result<(), Problem>,
    /// The Gateway's own listeners, then those of its attached ListenerSets
    /// (by creation time, then namespace/name).
    pub listeners: Vec<ListenerModel<'w>>,
    /// The ListenerSets whose parentRef is this Gateway, attached or not.
    pub listener_sets: Vec<ListenerSetModel>,
    /// Scale-to-zero defaults for the Gateway's routes.
    pub gate: GateAnnotations,
    /// `spec.tls.backend.clientCertificateRef`, if set: the certificate
    /// presented to TLS backends, or why it cannot be.
    pub backend_client: Option<Result<ClientCertificate, Problem>>,
    /// `tls.frontend` allows insecure fallback (default or on some port).
    pub insecure_frontend: bool,
}

/// A listener as the compiler sees it, with what decides its conditions.
pub struct ListenerModel<'w> {
    pub spec: &'w Listener,
    /// The ListenerSet it comes from; `None` for the Gateway's own.
    pub set: Option<ObjectRef>,
    /// The namespace of the Gateway or ListenerSet that defines it: where
    /// `allowedRoutes.namespaces.from: Same` admits routes from.
    pub namespace: String,
    pub hostname: Option<Hostname>,
    pub port: u16,
    pub protocol: Option<Protocol>,
    /// A TLS listener's `tls.mode`.
    pub tls_mode: Option<snapshot::TlsMode>,
    pub namespaces: AllowedNamespaces,
    /// The route kinds that may attach (`allowedRoutes.kinds`, else every
    /// kind of an HTTP or HTTPS listener).
    pub route_kinds: Vec<RouteKind>,
    pub supported_kinds: Vec<SupportedKind>,
    pub certificates: Vec<Certificate>,
    /// Client certificate validation (the Gateway's `tls.frontend` for this
    /// listener's port).
    pub client_validation: Option<Arc<ClientValidation>>,
    /// Why Accepted is False.
    pub invalid: Option<Problem>,
    /// Why ResolvedRefs is False.
    pub unresolved: Option<Problem>,
    /// Why Conflicted is True.
    pub conflict: Option<Problem>,
    /// The dataplane could not listen on this listener's socket.
    pub bind_error: Option<Problem>,
    /// Why OverlappingTLSConfig is True: another HTTPS listener on the port
    /// has an overlapping hostname.
    pub overlapping_tls: Option<Problem>,
    pub attached_routes: i32,
    pub routes: RouteTable,
}

pub enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

/// The sockets that serve a Gateway's listener on `port`: its addresses,
/// on the listener port or, with Gateway Services, on the pods' port for it.
fn sockets(addresses: &[IpAddr], pod_ports: Option<&BTreeMap<u16, u16>>, port: u16) -> Vec<SocketAddr> {
    let port = match pod_ports.map(|ports| ports.get(&port)) {
        Some(Some(p)) => *p,
        Some(None) => return Vec::new(),
        None => port,
    };
    addresses.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
}

impl ListenerModel<'_> {
    /// Whether the dataplane serves this listener.
    pub fn programmable(&self) -> bool {
        self.invalid.is_none()
            && self.conflict.is_none()
            && (self.protocol == Some(Protocol::Http)
                || self.tls_mode == Some(snapshot::TlsMode::Passthrough)
                || !self.certificates.is_empty())
    }

    pub fn allows_namespace(&self, world: &World, route_namespace: &str) -> bool {
        match &self.namespaces {
            AllowedNamespaces::Same => self.namespace == route_namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(s) => s.matches(&world.namespace_labels(route_namespace)),
        }
    }
}

/// A ListenerSet whose parentRef names a Gateway, as `listener_sets::inputs`
/// prepares it.
pub struct ListenerSetInput {
    pub key: ObjectRef,
    pub generation: Option<i64>,
    /// Why the Gateway's `allowedListeners` refuses it.
    pub not_allowed: Option<Problem>,
    /// Its listeners, in the Gateway's listener type.
    pub listeners: Vec<Listener>,
}

/// The ListenerSets of each Gateway, in order of precedence.
pub type ListenerSetInputs = BTreeMap<ObjectRef, Vec<ListenerSetInput>>;

/// A ListenerSet whose parentRef is a Gateway of ours.
pub struct ListenerSetModel {
    pub key: ObjectRef,
    pub generation: Option<i64>,
    /// Why the Gateway's `allowedListeners` refuses it.
    pub not_allowed: Option<Problem>,
    /// Its listeners among the Gateway's (empty when not allowed).
    pub listeners: Range<usize>,
}

impl ListenerSetModel {
    /// "A ListenerSet is successfully attached to a Gateway when [it] is
    /// selected by the Gateway's AllowedListeners field, [has] a valid
    /// ParentRef selecting the Gateway, [and] the condition Accepted: true."
    pub fn attached(&self, gw: &GatewayModel<'_>) -> bool {
        gw.accepted.is_ok()
            && self.not_allowed.is_none()
            && gw.listeners[self.listeners.clone()].iter().any(ListenerModel::programmable)
    }
}

/// Whether a listener is accepted (served, or waiting only for its socket).
fn accepted(l: &ListenerModel<'_>) -> bool {
    l.invalid.is_none() && l.conflict.is_none() && l.bind_error.is_none()
}

/// Appends the listeners of the ListenerSets the Gateway allows (`inputs`,
/// in order of precedence) to its `listeners`, marking the ones that
/// conflict with a listener that comes before them.
fn attach_listener_sets<'w>(
    world: &World,
    inputs: &'w [ListenerSetInput],
    listeners: &mut Vec<ListenerModel<'w>>,
    frontend: Option<&FrontendTls>,
    certs: &mut CertificateCache,
) -> Vec<ListenerSetModel> {
    let mut models = Vec::with_capacity(inputs.len());
    for input in inputs {
        let first = listeners.len();
        if input.not_allowed.is_none() {
            for l in &input.listeners {
                let owner = Owner { kind: "ListenerSet", key: &input.key, set: Some(&input.key) };
                // The Gateway's `tls.frontend` applies to its ports, whoever adds
                // the listener.
                let mut model = build_listener(world, owner, l, frontend, certs);
                if let Some(conflict) = conflict_with_earlier(listeners, &model) {
                    model.conflict = Some(conflict);
                }
                listeners.push(model);
            }
        }
        models.push(ListenerSetModel {
            key: input.key.clone(),
            generation: input.generation,
            not_allowed: input.not_allowed.clone(),
            listeners: first..listeners.len(),
        });
    }
    models
}

/// A ListenerSet's listener conflicts with an accepted listener before it
/// on the same port: with another protocol (ProtocolConflict), or the same
/// protocol and hostname (HostnameConflict). Compared as written, so a
/// listener with a protocol Agimo does not serve still conflicts.
fn conflict_with_earlier(earlier: &[ListenerModel<'_>], l: &ListenerModel<'_>) -> Option<Problem> {
    let hostname = |l: &ListenerModel<'_>| l.spec.hostname.clone().filter(|h| !h.is_empty());
    let owner = |l: &ListenerModel<'_>| match &l.set {
        None => "the Gateway".to_owned(),
        Some(set) => format!("ListenerSet {set}"),
    };
    earlier.iter().filter(|e| accepted(e) && e.spec.port == l.spec.port).find_map(|e| {
        if e.spec.protocol != l.spec.protocol {
            let message = format!(
                "port {} is used with protocol {} by listener {} of {}",
                e.spec.port,
                e.spec.protocol,
                e.spec.name,
                owner(e)
            );
            Some(Problem::new(Reason::ProtocolConflict, message))
        } else if hostname(e) == hostname(l) {
            let message = format!(
                "port {} and hostname {} are used by listener {} of {}",
                e.spec.port,
                hostname(e).unwrap_or_else(|| "(none)".to_owned()),
                e.spec.name,
                owner(e)
            );
            Some(Problem::new(Reason::HostnameConflict, message))
        } else {
            None
        }
    })
}

/// The Gateway's `status.attachedListenerSets`: set once a ListenerSet
/// names the Gateway or the Gateway allows some.
pub fn attached_count(gw: &GatewayModel<'_>) -> Option<i32> {
    if gw.listener_sets.is_empty() && gw.gateway.spec.allowed_listeners.is_none() {
        return None;
    }
    let attached = gw.listener_sets.iter().filter(|s| s.attached(gw)).count();
    Some(i32::try_from(attached).unwrap_or(i32::MAX))
}

/// Builds the models of every Gateway of an accepted class of ours, in a
/// stable order: oldest first, then by namespace and name.
pub fn build<'w>(
    world: &'w World,
    listener_sets: &'w ListenerSetInputs,
    classes: &BTreeSet<String>,
    in_force: &mut scale_to_zero::Annotations<'_>,
) -> Vec<GatewayModel<'w>> {
    let mut certificates = CertificateCache::default();
    let mut models: Vec<_> = world
        .gateways
        .iter()
        .filter(|(_, gw)| classes.contains(&gw.spec.gateway_class_name))
        .map(|(key, gw)| {
            let mut model = build_gateway(world, listener_sets, key, gw, &mut certificates);
            model.gate = scale_to_zero::parse(&format!("Gateway {key}"), gw.metadata.annotations.as_ref(), in_force);
            model
        })
        .collect();
    models.sort_by(|a, b| oldest_first(a.gateway, &a.key, b.gateway, &b.key));
    models
}

fn build_gateway<'w>(
    world: &'w World,
    listener_sets: &'w ListenerSetInputs,
    key: &ObjectRef,
    gw: &'w Gateway,
    certs: &mut CertificateCache,
) -> GatewayModel<'w> {
    let (requested, accepted) = check_spec(gw);
    let exposed = world.exposed.as_ref().map(|m| m.get(key).cloned().unwrap_or_default());
    let (addresses, publish_addresses) = bind_addresses(world, key, requested, exposed.is_some());
    let frontend = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref());
    let mut listeners: Vec<_> =
        gw.spec.listeners.iter().map(|l| build_listener(world, Owner::gateway(key), l, frontend, certs)).collect();
    mark_conflicts(&mut listeners);
    let inputs = listener_sets.get(key).map(Vec::as_slice).unwrap_or_default();
    let listener_sets = attach_listener_sets(world, inputs, &mut listeners, frontend, certs);
    mark_overlapping_tls(&mut listeners);
    let planned = exposed.as_ref().map(|e| &e.pod_ports);
    let unusable = mark_bind_errors(world, &mut listeners, &addresses, planned);
    // Sockets on the pod ports the Gateway's Service already maps only.
    let pod_ports = exposed.as_ref().map(|e| e.serving.clone());
    let (status_addresses, address_problem) = match &exposed {
        Some(exposed) => service_addresses(exposed),
        None => own_addresses(&addresses, publish_addresses, &unusable),
    };
    GatewayModel {
        key: key.clone(),
        gateway: gw,
        generation: gw.metadata.generation,
        addresses,
        pod_ports,
        status_addresses,
        address_problem,
        accepted,
        listeners,
        listener_sets,
        gate: GateAnnotations::default(),
        backend_client: backend_client_certificate(world, key, gw, certs),
        insecure_frontend: frontend.is_some_and(tls::allows_insecure_fallback),
    }
}

/// The Gateway's `spec.tls.backend.clientCertificateRef`, resolved as a
/// listener's certificateRef is (a `kubernetes.io/tls` Secret).
fn backend_client_certificate(
    world: &World,
    key: &ObjectRef,
    gw: &Gateway,
    certs: &mut CertificateCache,
) -> Option<Result<ClientCertificate, Problem>> {
    let r = gw.spec.tls.as_ref()?.backend.as_ref()?.client_certificate_ref.as_ref()?;
    let as_certificate_ref = crate::api::CertificateRef {
        group: r.group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
    };
    Some(match certs.resolve(world, ("Gateway", &key.namespace), &as_certificate_ref) {
        Ok(c) => Ok(ClientCertificate { secret: c.secret, key: c.key }),
        Err(mut problem) => {
            if problem.reason == Reason::InvalidCertificateRef {
                problem.reason = Reason::InvalidClientCertificateRef;
            }
            problem.message = format!("tls.backend.clientCertificateRef: {}", problem.message);
            Err(problem)
        }
    })
}

/// The IP addresses `spec.addresses` requests, and whether the rest of the
/// spec (parameters, address types) lets the Gateway be accepted.
fn check_spec(gw: &Gateway) -> (Vec<IpAddr>, Result<(), Problem>) {
    let mut accepted = Ok(());
    if let Some(p) = gw.spec.infrastructure.as_ref().and_then(|i| i.parameters_ref.as_ref()) {
        accepted = Err(Problem::new(
            Reason::InvalidParameters,
            format!(
                "infrastructure.parametersRef {}/{} {}: Agimo takes no Gateway parameters",
                p.group, p.kind, p.name
            ),
        ));
    }
    let mut addresses = Vec::new();
    for a in gw.spec.addresses.iter().flatten() {
        let type_ = a.r#type.as_deref().unwrap_or("IPAddress");
        let problem = match (type_, a.value.as_deref().filter(|v| !v.is_empty())) {
            ("IPAddress", None) => None,
            ("IPAddress", Some(v)) => match v.parse::<IpAddr>() {
                Ok(ip) => {
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                    None
                }
                Err(_) => Some(format!("address {v:?} is not an IP address")),
            },
            (other, _) => Some(format!("address type {other} is not supported; use IPAddress")),
        };
        if let Some(message) = problem {
            accepted = accepted.and(Err(Problem::new(Reason::UnsupportedAddress, message)));
        }
    }
    (addresses, accepted)
}

/// The addresses a Gateway's listeners bind, and whether `status.addresses`
/// publishes them (not when the Gateway listens on all addresses).
fn bind_addresses(world: &World, key: &ObjectRef, requested: Vec<IpAddr>, exposed: bool) -> (Vec<IpAddr>, bool) {
    if exposed {
        // Gateway Services: clients come through the Service; the pods
        // listen on every address.
        return (vec![world.default_address()], true);
    }
    if !requested.is_empty() {
        return (requested, true);
    }
    let address = world.assigned_addresses.get(key).copied().unwrap_or_else(|| world.default_address());
    (vec![address], !address.is_unspecified())
}

/// Sockets the dataplane could not bind: a refused port is the listener's
/// problem (its `bind_error`); an address that is not local makes the
/// Gateway's addresses unusable, and is returned.
fn mark_bind_errors(
    world: &World,
    listeners: &mut [ListenerModel<'_>],
    addresses: &[IpAddr],
    pod_ports: Option<&BTreeMap<u16, u16>>,
) -> Vec<String> {
    let mut unusable: Vec<String> = Vec::new();
    for l in listeners {
        let port = match pod_ports {
            Some(ports) => ports.get(&l.port).copied(),
            None => Some(l.port),
        };
        let Some(port) = port else {
            let message = "no port left in --gateway-pod-ports for this listener port";
            l.bind_error = Some(Problem::new(Reason::PortUnavailable, message));
            continue;
        };
        let mut failed = Vec::new();
        for ip in addresses {
            match world.bind_errors.get(&SocketAddr::new(*ip, port)) {
                Some(e) if e.address_not_available => {
                    let why = format!("{ip}: {e}");
                    if !unusable.contains(&why) {
                        unusable.push(why);
                    }
                }
                Some(e) => failed.push(format!("{ip}:{port}: {e}")),
                None => {}
            }
        }
        if !failed.is_empty() {
            let message = format!("cannot listen on {}; retrying", failed.join(", "));
            l.bind_error = Some(Problem::new(Reason::PortUnavailable, message));
        }
    }
    unusable
}

/// With a Gateway Service: what `status.addresses` publishes, and why
/// Programmed is False if there is no usable address yet.
fn service_addresses(exposed: &Exposed) -> (Vec<GatewayStatusAddress>, Option<Problem>) {
    let problem = if !exposed.unusable.is_empty() {
        let message = format!("not in any --gateway-static-address-range: {}", exposed.unusable.join(", "));
        Some(Problem::new(Reason::AddressNotUsable, message))
    } else {
        let waiting = |why: &String| format!("waiting for an address: {why}");
        exposed.pending.as_ref().map(|why| Problem::new(Reason::AddressNotAssigned, waiting(why)))
    };
    (exposed.addresses.clone(), problem)
}

/// Without a Gateway Service: the addresses the Gateway binds, and why
/// Programmed is False if some are not this machine's.
fn own_addresses(
    addresses: &[IpAddr],
    publish: bool,
    unusable: &[String],
) -> (Vec<GatewayStatusAddress>, Option<Problem>) {
    let published = addresses
        .iter()
        .filter(|_| publish)
        .map(|ip| GatewayStatusAddress { r#type: Some("IPAddress".to_owned()), value: ip.to_string() })
        .collect();
    let problem = (!unusable.is_empty()).then(|| {
        let message = format!("cannot listen on {}; use addresses of this machine (retrying)", unusable.join(", "));
        Problem::new(Reason::AddressNotUsable, message)
    });
    (published, problem)
}

/// Who defines a listener: a Gateway or a ListenerSet (its kind, as
/// ReferenceGrants name it), with its namespace.
#[derive(Clone, Copy)]
pub struct Owner<'a> {
    pub kind: &'static str,
    pub key: &'a ObjectRef,
    /// The ListenerSet, for its listeners.
    pub set: Option<&'a ObjectRef>,
}

impl<'a> Owner<'a> {
    fn gateway(key: &'a ObjectRef) -> Self {
        Owner { kind: "Gateway", key, set: None }
    }
}

pub fn build_listener<'w>(
    world: &World,
    owner: Owner<'_>,
    l: &'w Listener,
    frontend: Option<&FrontendTls>,
    certs: &mut CertificateCache,
) -> ListenerModel<'w> {
    let mut model = ListenerModel::new(l);
    model.set = owner.set.cloned();
    model.namespace = owner.key.namespace.clone();
    let namespace = owner.key.namespace.as_str();
    model.protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        // TLS: routed by SNI to TLSRoutes, passed through or terminated
        // (the mode's default). Both modes share a port (TLSRouteModeMixed).
        "TLS" => {
            model.tls_mode = Some(match l.tls.as_ref().and_then(|t| t.mode.as_ref()) {
                Some(TlsMode::Passthrough) => snapshot::TlsMode::Passthrough,
                _ => snapshot::TlsMode::Terminate,
            });
            Some(Protocol::Tls)
        }
        other => {
            let message = format!("protocol {other} is not supported; Agimo serves HTTP, HTTPS and TLS listeners");
            model.invalid = Some(Problem::new(Reason::UnsupportedProtocol, message));
            // No route kind is supported on it: listed kinds are invalid.
            if let Some(kinds) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) {
                let listed: Vec<String> = kinds
                    .iter()
                    .map(|k| format!("{}.{}", k.kind, k.group.as_deref().unwrap_or(GATEWAY_GROUP)))
                    .collect();
                let message = format!("route kinds {} are not supported on protocol {other}", listed.join(", "));
                model.unresolved = Some(Problem::new(Reason::InvalidRouteKinds, message));
            }
            return model;
        }
    };
    match u16::try_from(l.port) {
        Ok(port) if port > 0 => model.port = port,
        _ => model.invalid = Some(Problem::new(Reason::PortUnavailable, format!("port {} is out of range", l.port))),
    }
    if let Some(h) = l.hostname.as_deref().filter(|h| !h.is_empty()) {
        match Hostname::parse(h) {
            Ok(h) => model.hostname = Some(h),
            Err(e) => model.invalid = Some(Problem::new(Reason::UnsupportedValue, e.to_string())),
        }
    }
    model.namespaces = allowed_namespaces(l).unwrap_or_else(|problem| {
        model.invalid.get_or_insert(problem);
        AllowedNamespaces::Same
    });
    let kinds: &[RouteKind] = if model.protocol == Some(Protocol::Tls) { &RouteKind::TLS } else { &RouteKind::HTTP };
    (model.route_kinds, model.unresolved) = allowed_kinds(l, kinds);
    for kind in &model.route_kinds {
        model
            .supported_kinds
            .push(SupportedKind { group: Some(GATEWAY_GROUP.to_owned()), kind: kind.name().to_owned() });
    }
    if model.protocol == Some(Protocol::Https) {
        resolve_tls(world, owner.kind, namespace, &mut model, certs);
        // Client certificate validation is for "Listeners handling HTTPS
        // traffic".
        if let Some(frontend) = frontend {
            resolve_frontend(world, namespace, &mut model, frontend);
        }
    } else if model.tls_mode == Some(snapshot::TlsMode::Terminate) {
        resolve_tls(world, owner.kind, namespace, &mut model, certs);
    }
    model
}

impl<'w> ListenerModel<'w> {
    /// A listener with nothing decided yet.
    fn new(spec: &'w Listener) -> Self {
        ListenerModel {
            spec,
            set: None,
            namespace: String::new(),
            hostname: None,
            port: 0,
            protocol: None,
            tls_mode: None,
            namespaces: AllowedNamespaces::Same,
            route_kinds: Vec::new(),
            supported_kinds: Vec::new(),
            certificates: Vec::new(),
            client_validation: None,
            invalid: None,
            unresolved: None,
            conflict: None,
            overlapping_tls: None,
            bind_error: None,
            attached_routes: 0,
            routes: RouteTable::default(),
        }
    }
}

/// `allowedRoutes.namespaces`; an invalid selector makes the listener invalid.
fn allowed_namespaces(l: &Listener) -> Result<AllowedNamespaces, Problem> {
    let namespaces = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(FromNamespaces::Same) => Ok(AllowedNamespaces::Same),
        Some(FromNamespaces::All) => Ok(AllowedNamespaces::All),
        Some(FromNamespaces::Selector) => match namespaces.and_then(|n| n.selector.as_ref()) {
            Some(selector) => LabelSelector::compile(selector)
                .map(AllowedNamespaces::Selector)
                .map_err(|e| Problem::new(Reason::UnsupportedValue, e)),
            None => Err(Problem::new(
                Reason::UnsupportedValue,
                "allowedRoutes.namespaces.from is Selector but no selector is set",
            )),
        },
    }
}

/// `allowedRoutes.kinds`: which of the kinds the listener's protocol
/// supports (`supported`: HTTPRoute and GRPCRoute on HTTP and HTTPS, TLSRoute
/// on TLS) may attach, and why ResolvedRefs is False if other kinds are
/// listed.
fn allowed_kinds(l: &Listener, supported: &[RouteKind]) -> (Vec<RouteKind>, Option<Problem>) {
    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty());
    let Some(kinds) = kinds else {
        return (supported.to_vec(), None);
    };
    let mut allowed = Vec::new();
    let mut invalid = Vec::new();
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
        match RouteKind::from_name(&k.kind).filter(|kind| group == GATEWAY_GROUP && supported.contains(kind)) {
            Some(kind) if !allowed.contains(&kind) => allowed.push(kind),
            Some(_) => {}
            None => invalid.push(format!("{}.{}", k.kind, group)),
        }
    }
    allowed.sort();
    let problem = (!invalid.is_empty()).then(|| {
        let names: Vec<&str> = supported.iter().map(|k| k.name()).collect();
        let message = format!(
            "route kinds {} are not supported; this listener's protocol supports {}",
            invalid.join(", "),
            names.join(" and ")
        );
        Problem::new(Reason::InvalidRouteKinds, message)
    });
    (allowed, problem)
}

/// The `tls` of a listener that terminates TLS (HTTPS, TLS in mode
/// Terminate): its certificates, or why they cannot be used.
fn resolve_tls(
    world: &World,
    kind: &'static str,
    namespace: &str,
    model: &mut ListenerModel<'_>,
    certs: &mut CertificateCache,
) {
    let tls = model.spec.tls.as_ref();
    if tls.and_then(|t| t.mode.as_ref()) == Some(&TlsMode::Passthrough) {
        model.invalid.get_or_insert(Problem::new(
            Reason::UnsupportedValue,
            "tls.mode Passthrough is not supported on HTTPS listeners",
        ));
    }
    let refs = tls.and_then(|t| t.certificate_refs.as_ref()).map(Vec::as_slice).unwrap_or_default();
    if refs.is_empty() {
        let message = format!("a {} listener that terminates TLS needs tls.certificateRefs", model.spec.protocol);
        model.unresolved.get_or_insert(Problem::new(Reason::InvalidCertificateRef, message));
    }
    for r in refs {
        match certs.resolve(world, (kind, namespace), r) {
            Ok(cert) => model.certificates.push(cert),
            // RefNotPermitted takes precedence: it tells the user what to add.
            Err(e) if model.unresolved.as_ref().is_none_or(|p| p.reason != Reason::RefNotPermitted) => {
                model.unresolved = Some(e)
            }
            Err(_) => {}
        }
    }
}

/// An HTTPS listener's client certificate validation: "If ALL
/// CACertificateRefs are invalid, the implementation MUST also ensure the
/// `Accepted` condition on the listener is set to `status: False`, with the
/// Reason `NoValidCACertificate`."
fn resolve_frontend(world: &World, namespace: &str, model: &mut ListenerModel<'_>, frontend: &FrontendTls) {
    if model.port == 0 {
        return;
    }
    let resolved = tls::resolve_frontend(world, namespace, frontend, model.port);
    model.client_validation = resolved.validation;
    if let Some(problem) = resolved.unresolved {
        model.unresolved.get_or_insert(problem);
    }
    if let Some(problem) = resolved.invalid {
        model.invalid.get_or_insert(problem);
    }
}

/// Marks listeners of one Gateway that are not distinct: "ALL indistinct
/// Listeners must not be accepted for processing."
fn mark_conflicts(listeners: &mut [ListenerModel<'_>]) {
    let n = listeners.len();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (a, b) = (&listeners[i], &listeners[j]);
            // A listener that is invalid on its own is not served, so it
            // conflicts with nothing.
            if a.invalid.is_some() || b.invalid.is_some() {
                continue;
            }
            let (Some(pa), Some(pb)) = (a.protocol, b.protocol) else {
                continue;
            };
            if a.port != b.port || a.port == 0 {
                continue;
            }
            let conflict = if pa != pb {
                Some(Problem::new(
                    Reason::ProtocolConflict,
                    format!("listener {} uses port {} with protocol {}", b.spec.name, b.port, b.spec.protocol),
                ))
            } else if a.hostname == b.hostname {
                Some(Problem::new(
                    Reason::HostnameConflict,
                    format!(
                        "listener {} uses the same port {} and hostname {}",
                        b.spec.name,
                        b.port,
                        a.hostname.as_ref().map_or("(none)".to_owned(), |h| h.to_string())
                    ),
                ))
            } else {
                None
            };
            if let Some(c) = conflict
                && listeners[i].conflict.is_none()
            {
                listeners[i].conflict = Some(c);
            }
        }
    }
}

/// "Controllers MUST detect the presence of overlapping hostnames": HTTPS
/// listeners on one port whose hostnames can match the same name (a
/// wildcard and a name under it, or a listener without hostname and any
/// other). They stay programmed; the more specific hostname wins.
fn mark_overlapping_tls(listeners: &mut [ListenerModel<'_>]) {
    let overlaps = |a: &Option<Hostname>, b: &Option<Hostname>| match (a, b) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => Hostname::intersect(Some(x), y).is_some(),
    };
    let n = listeners.len();
    for i in 0..n {
        let a = &listeners[i];
        if a.protocol != Some(Protocol::Https) || a.conflict.is_some() {
            continue;
        }
        let others: Vec<&str> = (0..n)
            .filter(|&j| j != i)
            .map(|j| &listeners[j])
            .filter(|b| b.protocol == Some(Protocol::Https) && b.port == a.port && b.conflict.is_none())
            .filter(|b| overlaps(&a.hostname, &b.hostname))
            .map(|b| b.spec.name.as_str())
            .collect();
        if !others.is_empty() {
            let message = format!("hostname overlaps with listeners {} on port {}", others.join(", "), a.port);
            listeners[i].overlapping_tls = Some(Problem::new(Reason::OverlappingHostnames, message));
        }
    }
}

/// Gateways that share a bind address and port are served by one socket. The
/// older Gateway keeps a port; a newer Gateway's listener that would change
/// its protocol, duplicate one of its hostnames, or listen on a specific
/// address where the other listens on all of them (or the reverse, which the
/// operating system refuses) is Conflicted, so adding a Gateway never breaks
/// one that already serves.
pub fn resolve_bind_conflicts(gateways: &mut [GatewayModel<'_>]) {
    /// Who serves a socket: its protocol, and each hostname with its owner.
    struct Claim {
        protocol: Protocol,
        /// One socket has one TLS handshake policy: the client certificate
        /// is asked for before the request names a host.
        client_validation: Option<Arc<ClientValidation>>,
        hosts: Vec<(Option<Hostname>, String)>,
    }
    let mut claims: BTreeMap<SocketAddr, Claim> = BTreeMap::new();
    for gw in gateways.iter_mut() {
        if gw.accepted.is_err() {
            continue;
        }
        for l in gw.listeners.iter_mut() {
            if !l.programmable() {
                continue;
            }
            let protocol = l.protocol.expect("programmable listeners have a protocol");
            let owner = format!("Gateway {} listener {}", gw.key, l.spec.name);
            let sockets = sockets(&gw.addresses, gw.pod_ports.as_ref(), l.port);
            let conflict = sockets.iter().find_map(|addr| {
                let overlapping = claims.iter().find(|(other, _)| {
                    other.port() == addr.port()
                        && *other != addr
                        && (other.ip().is_unspecified() || addr.ip().is_unspecified())
                });
                if let Some((other, claim)) = overlapping {
                    return Some(Problem::new(
                        Reason::PortUnavailable,
                        format!("cannot listen on {addr} while {other} is used by {}", claim.hosts[0].1),
                    ));
                }
                let claim = claims.get(addr)?;
                if claim.protocol != protocol {
                    return Some(Problem::new(
                        Reason::ProtocolConflict,
                        format!("{addr} is already served over {} by {}", claim.protocol, claim.hosts[0].1),
                    ));
                }
                if claim.client_validation != l.client_validation {
                    return Some(Problem::new(
                        Reason::PortUnavailable,
                        format!(
                            "{addr} is already served with another client certificate validation (tls.frontend) \
                             by {}",
                            claim.hosts[0].1
                        ),
                    ));
                }
                claim.hosts.iter().find(|(h, _)| *h == l.hostname).map(|(_, other)| {
                    Problem::new(Reason::HostnameConflict, format!("{addr} already serves this hostname for {other}"))
                })
            });
            match conflict {
                // The operating system refuses the socket: not a conflict
                // between listeners in the Gateway API's sense.
                Some(c) if c.reason == Reason::PortUnavailable => l.invalid = Some(c),
                Some(c) => l.conflict = Some(c),
                None => {
                    for addr in sockets {
                        claims
                            .entry(addr)
                            .or_insert_with(|| Claim {
                                protocol,
                                client_validation: l.client_validation.clone(),
                                hosts: Vec::new(),
                            })
                            .hosts
                            .push((l.hostname.clone(), owner.clone()));
                    }
                }
            }
        }
    }
}

/// Turns the models into the snapshot and writes the Gateway statuses.
pub fn into_snapshot(gateways: &mut [GatewayModel<'_>], statuses: &mut Statuses) -> Snapshot {
    let mut binds: BTreeMap<SocketAddr, (Protocol, Vec<Arc<snapshot::Listener>>)> = BTreeMap::new();
    for gw in gateways.iter_mut() {
        statuses.gateways.insert(gw.key.clone(), gateway_status(gw));
        if gw.accepted.is_err() {
            continue;
        }
        for l in gw.listeners.iter_mut() {
            if !l.programmable() {
                continue;
            }
            let protocol = l.protocol.expect("programmable listeners have a protocol");
            let mut routes = std::mem::take(&mut l.routes);
            routes.finish();
            let name = match &l.set {
                None => l.spec.name.clone(),
                Some(set) => format!("{set}/{}", l.spec.name),
            };
            let listener = Arc::new(snapshot::Listener {
                gateway: gw.key.clone(),
                name,
                hostname: l.hostname.clone(),
                port: l.port,
                protocol,
                tls_mode: l.tls_mode,
                certificates: l.certificates.clone(),
                client_validation: l.client_validation.clone(),
                routes,
            });
            for socket in sockets(&gw.addresses, gw.pod_ports.as_ref(), l.port) {
                binds.entry(socket).or_insert_with(|| (protocol, Vec::new())).1.push(listener.clone());
            }
        }
    }
    Snapshot::new(binds.into_iter().map(|(key, (protocol, listeners))| Bind::new(key, protocol, listeners)).collect())
}

fn gateway_status(gw: &GatewayModel<'_>) -> GatewayStatus {
    let listeners: Vec<ListenerStatus> = gw
        .listeners
        .iter()
        .filter(|l| l.set.is_none())
        .map(|l| listener_status(l, gw.accepted.is_ok(), gw.generation))
        .collect();
    let mut conditions = accepted_and_programmed(gw).to_vec();
    // Only a Gateway with a backend client certificate has Gateway-level
    // references to resolve.
    match &gw.backend_client {
        None => {}
        Some(Ok(c)) => conditions.push(condition(
            types::RESOLVED_REFS,
            true,
            Reason::ResolvedRefs,
            format!("the backend client certificate {} is resolved", c.secret),
            gw.generation,
        )),
        Some(Err(problem)) => conditions.push(problem.condition(types::RESOLVED_REFS, false, gw.generation)),
    }
    if gw.gate.present() {
        conditions.push(scale_to_zero::condition(None, &gw.gate, gw.generation));
    }
    // "This condition is removed as soon as FrontendValidationModeType is
    // changed back to `AllowValidOnly`."
    if gw.insecure_frontend {
        conditions.push(condition(
            types::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            Reason::ConfigurationChanged,
            "tls.frontend mode AllowInsecureFallback: clients without a valid certificate are let through",
            gw.generation,
        ));
    }
    let addresses = gw.status_addresses.clone();
    GatewayStatus {
        addresses: (!addresses.is_empty()).then_some(addresses),
        attached_listener_sets: attached_count(gw),
        conditions: Some(conditions),
        listeners: Some(listeners),
    }
}

/// A Gateway's Accepted and Programmed conditions.
fn accepted_and_programmed(gw: &GatewayModel<'_>) -> [Condition; 2] {
    let generation = gw.generation;
    let own = gw.listeners.iter().filter(|l| l.set.is_none()).count();
    let invalid: Vec<&str> = gw
        .listeners
        .iter()
        .filter(|l| l.set.is_none())
        .filter(|l| l.invalid.is_some() || l.conflict.is_some() || l.bind_error.is_some())
        .map(|l| l.spec.name.as_str())
        .collect();
    let not_accepted = |message| condition(types::PROGRAMMED, false, Reason::Invalid, message, generation);
    match &gw.accepted {
        Err(problem) => {
            [problem.condition(types::ACCEPTED, false, generation), not_accepted("the Gateway is not accepted")]
        }
        Ok(()) if invalid.len() == own => {
            let message = format!("no listener is valid: {}", invalid.join(", "));
            [
                condition(types::ACCEPTED, false, Reason::ListenersNotValid, message, generation),
                not_accepted("the Gateway has no valid listener"),
            ]
        }
        Ok(()) => [
            if invalid.is_empty() {
                condition(types::ACCEPTED, true, Reason::Accepted, "the Gateway is accepted", generation)
            } else {
                let message = format!("listeners not valid and not served: {}", invalid.join(", "));
                condition(types::ACCEPTED, true, Reason::ListenersNotValid, message, generation)
            },
            match &gw.address_problem {
                None => condition(types::PROGRAMMED, true, Reason::Programmed, "the Gateway is programmed", generation),
                Some(problem) => problem.condition(types::PROGRAMMED, false, generation),
            },
        ],
    }
}

pub fn listener_status(l: &ListenerModel<'_>, gateway_accepted: bool, generation: Option<i64>) -> ListenerStatus {
    let mut conditions: Vec<Condition> = Vec::with_capacity(4);
    // A ListenerSet's listener can conflict with one that takes precedence
    // even when it is invalid on its own: the conflict is what it reports.
    let first_problem = match l.set {
        None => l.invalid.as_ref().or(l.conflict.as_ref()),
        Some(_) => l.conflict.as_ref().or(l.invalid.as_ref()),
    };
    conditions.push(match first_problem.or(l.bind_error.as_ref()) {
        Some(problem) => problem.condition(types::ACCEPTED, false, generation),
        None => condition(types::ACCEPTED, true, Reason::Accepted, "the listener is accepted", generation),
    });
    conditions.push(if !gateway_accepted {
        condition(types::PROGRAMMED, false, Reason::Invalid, "the Gateway is not accepted", generation)
    } else if let Some(problem) = l.bind_error.as_ref().filter(|_| l.programmable()) {
        condition(types::PROGRAMMED, false, Reason::Pending, problem.message.clone(), generation)
    } else if l.programmable() {
        condition(types::PROGRAMMED, true, Reason::Programmed, "the listener is programmed", generation)
    } else if let Some(conflict) = l.conflict.as_ref().filter(|_| l.set.is_some()) {
        // The ListenerSet conformance tests want the conflict's reason here.
        conflict.condition(types::PROGRAMMED, false, generation)
    } else {
        let why = match l.invalid.as_ref().or(l.conflict.as_ref()).or(l.unresolved.as_ref()) {
            Some(problem) => problem.message.clone(),
            None => "the listener is not valid".to_owned(),
        };
        condition(types::PROGRAMMED, false, Reason::Invalid, why, generation)
    });
    conditions.push(match &l.unresolved {
        Some(problem) => problem.condition(types::RESOLVED_REFS, false, generation),
        None => condition(types::RESOLVED_REFS, true, Reason::ResolvedRefs, "all references are resolved", generation),
    });
    conditions.push(match &l.conflict {
        Some(problem) => problem.condition(types::CONFLICTED, true, generation),
        None => condition(types::CONFLICTED, false, Reason::NoConflicts, "no conflicts", generation),
    });
    // "MUST NOT be set when it is False."
    if let Some(problem) = &l.overlapping_tls {
        conditions.push(problem.condition(types::OVERLAPPING_TLS_CONFIG, true, generation));
    }
    ListenerStatus {
        attached_routes: l.attached_routes,
        conditions,
        name: l.spec.name.clone(),
        supported_kinds: Some(l.supported_kinds.clone()),
    }
}
