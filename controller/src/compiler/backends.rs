//! backendRefs → Services → ready EndpointSlice endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agimo_shared::snapshot::{Backend, BackendProtocol, ObjectRef};

use super::backend_tls::{ClientCertificate, Policies};
use super::conditions::{Problem, Reason};
use super::grants;
use super::kinds::RouteKind;
use crate::api::{EndpointSlice, SERVICE_NAME_LABEL};
use crate::world::World;

/// A backendRef's target, whatever its route's filters say.
pub struct BackendRefSpec<'a> {
    /// The kind of the route that names it: what a ReferenceGrant must
    /// allow, and (GRPCRoute) that it speaks HTTP/2.
    pub route_kind: RouteKind,
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// A resolved backend's identity: its Service and port, protocol, client
/// certificate, and whether TLS passes through (a passthrough backend never
/// gets a BackendTLSPolicy's TLS).
type BackendKey = (ObjectRef, i32, BackendProtocol, Option<ObjectRef>, bool);

/// Resolves backendRefs against Services and EndpointSlices, sharing one
/// `Arc<Backend>` per Service port within a compile.
pub struct BackendResolver<'w> {
    world: &'w World,
    slices: BTreeMap<ObjectRef, Vec<&'w EndpointSlice>>,
    resolved: HashMap<BackendKey, Arc<Backend>>,
    /// The BackendTLSPolicies, and the Gateways that use each.
    pub policies: Policies,
    /// The Services resolved since [`BackendResolver::take_services`].
    services: BTreeSet<ObjectRef>,
}

impl<'w> BackendResolver<'w> {
    pub fn new(world: &'w World) -> Self {
        let mut slices: BTreeMap<ObjectRef, Vec<&EndpointSlice>> = BTreeMap::new();
        for (key, slice) in &world.endpoint_slices {
            let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry(ObjectRef { namespace: key.namespace.clone(), name: service.clone() })
                    .or_default()
                    .push(slice);
            }
        }
        BackendResolver {
            world,
            slices,
            resolved: HashMap::new(),
            policies: Policies::new(world),
            services: BTreeSet::new(),
        }
    }

    /// The Services that backendRefs named (and found) since the last call.
    pub fn take_services(&mut self) -> BTreeSet<ObjectRef> {
        std::mem::take(&mut self.services)
    }

    /// `client`: the certificate the Gateway presents to TLS backends.
    pub fn resolve(
        &mut self,
        route_namespace: &str,
        r: &BackendRefSpec<'_>,
        client: Option<&ClientCertificate>,
    ) -> Result<Arc<Backend>, Problem> {
        let group = r.group.unwrap_or("");
        let kind = r.kind.unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            let shown = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
            return Err(Problem::new(
                Reason::InvalidKind,
                format!("backendRef {}: unsupported kind {shown}; only core Services are supported", r.name),
            ));
        }
        let key = ObjectRef { namespace: r.namespace.unwrap_or(route_namespace).to_owned(), name: r.name.to_owned() };
        let allowed = grants::allows(
            self.world,
            grants::From { kind: r.route_kind.name(), namespace: route_namespace },
            grants::To { group: "", kind: "Service", namespace: &key.namespace, name: &key.name },
        );
        if !allowed {
            return Err(Problem::new(
                Reason::RefNotPermitted,
                format!(
                    "backendRef to Service {key} is not permitted: no ReferenceGrant in namespace {} allows {}s from \
                     namespace {route_namespace}",
                    key.namespace, r.route_kind
                ),
            ));
        }
        let Some(service) = self.world.services.get(&key) else {
            return Err(Problem::new(Reason::BackendNotFound, format!("Service {key} not found")));
        };
        self.services.insert(key.clone());
        let Some(port) = r.port else {
            return Err(Problem::new(Reason::BackendNotFound, format!("backendRef to Service {key} has no port")));
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(Problem::new(
                Reason::BackendNotFound,
                format!("Service {key} is of type ExternalName, which Agimo does not route to"),
            ));
        }
        let Some(service_port) =
            spec.and_then(|s| s.ports.as_ref()).and_then(|ports| ports.iter().find(|p| p.port == port))
        else {
            return Err(Problem::new(Reason::BackendNotFound, format!("Service {key} has no port {port}")));
        };
        // "kubernetes.io/h2c" and "kubernetes.io/ws" are the Gateway API's
        // (GEP-1911); a protocol Agimo cannot speak makes the ref invalid.
        let port_name = service_port.name.as_deref();
        if r.route_kind == RouteKind::Tls {
            // TLS passes through: whatever the port speaks, Agimo only
            // copies bytes, and no BackendTLSPolicy applies.
            let cache_key = (key.clone(), port, BackendProtocol::Http1, None, true);
            let endpoints = self.ready_endpoints(&key, port_name.unwrap_or(""));
            let backend = self.resolved.entry(cache_key).or_insert_with(|| {
                Arc::new(Backend {
                    id: format!("{key}:{port}"),
                    endpoints,
                    protocol: BackendProtocol::Http1,
                    tls: None,
                })
            });
            return Ok(backend.clone());
        }
        let protocol = match (r.route_kind, service_port.app_protocol.as_deref()) {
            // gRPC is HTTP/2: cleartext unless a BackendTLSPolicy says TLS.
            (RouteKind::Grpc, None | Some("kubernetes.io/h2c" | "grpc")) => BackendProtocol::H2c,
            (RouteKind::Grpc, Some("https" | "HTTPS"))
                if self.policies.tls_for(&key, port_name, BackendProtocol::H2c, None).is_some() =>
            {
                BackendProtocol::H2c
            }
            (RouteKind::Grpc, Some(other)) => {
                return Err(Problem::new(
                    Reason::UnsupportedProtocol,
                    format!(
                        "Service {key} port {port} has appProtocol {other:?}; a GRPCRoute's backends speak HTTP/2 \
                         (kubernetes.io/h2c, or TLS with a BackendTLSPolicy)"
                    ),
                ));
            }
            (_, None | Some("http" | "HTTP" | "kubernetes.io/ws")) => BackendProtocol::Http1,
            (_, Some("kubernetes.io/h2c")) => BackendProtocol::H2c,
            // HTTPS needs a BackendTLSPolicy to say what to verify.
            (_, Some("https" | "HTTPS"))
                if self.policies.tls_for(&key, port_name, BackendProtocol::Http1, None).is_some() =>
            {
                BackendProtocol::Http1
            }
            (_, Some(other)) => {
                return Err(Problem::new(
                    Reason::UnsupportedProtocol,
                    format!(
                        "Service {key} port {port} has appProtocol {other:?}; Agimo speaks HTTP/1.1, kubernetes.io/h2c \
                         and kubernetes.io/ws to backends, and HTTPS to those a BackendTLSPolicy targets"
                    ),
                ));
            }
        };
        let tls = self.policies.tls_for(&key, port_name, protocol, client);
        // The client certificate matters only to TLS backends.
        let client = client.filter(|_| tls.is_some()).map(|c| c.secret.clone());
        let cache_key = (key.clone(), port, protocol, client, false);
        if let Some(backend) = self.resolved.get(&cache_key) {
            return Ok(backend.clone());
        }
        let endpoints = self.ready_endpoints(&key, port_name.unwrap_or(""));
        let backend = Arc::new(Backend { id: format!("{key}:{port}"), endpoints, protocol, tls });
        self.resolved.insert(cache_key, backend.clone());
        Ok(backend)
    }

    /// The ready endpoints of a Service's port named `port_name`, sorted.
    fn ready_endpoints(&self, service: &ObjectRef, port_name: &str) -> Vec<SocketAddr> {
        let mut endpoints = Vec::new();
        for slice in self.slices.get(service).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let Some(target_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                // "ready" unset means ready, as the EndpointSlice API defines.
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        endpoints.push(SocketAddr::new(ip, target_port));
                    }
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        endpoints
    }
}
