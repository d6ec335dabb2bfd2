//! Gateway Services: in a cluster, every Gateway is reached through a Service
//! of its own, in its own namespace, beside it.
//!
//! ```text
//!  client ──► Service <gateway ns>/agimo-<ns>-<gateway>-<hash>  (no selector; LoadBalancer ingress,
//!               │                                                cluster IP, or externalIPs)
//!               └─ EndpointSlice (written by Agimo) ── port-80 = 20000 ──► every ready Agimo pod,
//!                                                       socket 0.0.0.0:20000 = Gateway ns/gateway, port 80
//! ```
//!
//! With `--gateway-service-type`, Agimo's pods serve every Gateway, but they
//! live in Agimo's namespace and a Service selects pods of its own namespace
//! only: so the Service has no selector, and Agimo writes its EndpointSlices
//! from its own pods ([`endpoints`]), ready as the EndpointSlice controller
//! would mark them (Ready and not terminating). The Service and its slices
//! carry the Gateway's `spec.infrastructure` labels and annotations, and the
//! Service is owned by the Gateway (deleted with it by the garbage collector
//! even when Agimo is not running).
//!
//! Several Gateways may listen on the same port, but a pod has one address:
//! each (Gateway, listener port) gets a port of its own on the pods from
//! `--gateway-pod-ports`, and the Gateway's Service maps the listener port to
//! it. Every replica computes the same plan from the same world: a Gateway
//! keeps the pod ports its Service already has, and new ones get the lowest
//! free port, oldest Gateway first. Every replica binds the pod ports; the
//! Lease holder writes the Services and slices ([`writer`]).
//!
//! What a Gateway publishes in `status.addresses`: its static addresses
//! (`spec.addresses`, which become the Service's `externalIPs` and must lie in
//! a `--gateway-static-address-range`), else the Service's load balancer
//! ingress (type LoadBalancer) or its cluster IP (ClusterIP, NodePort).
//!
//! With `--gateway-address-pool` instead (Agimo beside the cluster), Gateways
//! publish their pool address, and their Service ([`plan_addressed`]) is a
//! ClusterIP one whose endpoint is that address: the Gateway's name inside
//! the cluster.

pub mod endpoints;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use agimo_shared::snapshot::ObjectRef;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::{EndpointSlice, Gateway, GatewayStatusAddress, ObjectMeta, Service, ServicePort};
use crate::world::{Exposed, World};

/// Marks the Services Agimo manages (with `app.kubernetes.io/managed-by`).
pub const MANAGED_BY: &str = "agimo";
/// The annotation naming a Service's Gateway, `namespace/name`.
pub const GATEWAY_ANNOTATION: &str = "agimo.dev/gateway";
/// The annotation naming the controller that manages a Service, so that two
/// installations sharing a namespace leave each other's Services alone.
pub const CONTROLLER_ANNOTATION: &str = "agimo.dev/controller-name";
/// A digest of the Gateway's `spec.infrastructure` labels and annotations: a
/// label or annotation the Gateway drops changes it, so the writer applies
/// the Service again and the API server removes what Agimo no longer sets.
const INFRASTRUCTURE_ANNOTATION: &str = "agimo.dev/infrastructure-digest";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const GATEWAY_NAMESPACE_LABEL: &str = "agimo.dev/gateway-namespace";
const GATEWAY_NAME_LABEL: &str = "agimo.dev/gateway-name";
/// The label the Gateway API asks generated resources to carry with their
/// Gateway's name.
pub const GATEWAY_API_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// How Gateways are exposed, from the flags.
#[derive(Clone, Debug)]
pub struct Exposure {
    /// Agimo's own namespace, where its pods are.
    pub namespace: String,
    /// `LoadBalancer`, `ClusterIP` or `NodePort`.
    pub service_type: String,
    /// The labels of Agimo's pods: those whose addresses the Services'
    /// EndpointSlices list.
    pub selector: BTreeMap<String, String>,
    /// Put on every Service (cloud load balancer settings).
    pub annotations: BTreeMap<String, String>,
    /// Ports the pods listen on for Gateways.
    pub pod_ports: RangeInclusive<u16>,
    /// Where static `spec.addresses` may come from.
    pub static_ranges: Vec<IpNet>,
}

/// What Agimo writes for one Gateway: its Service and the Service's
/// EndpointSlices.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub service: Service,
    pub slices: Vec<EndpointSlice>,
}

/// What should exist, by the Service's namespace and name.
pub type Desired = BTreeMap<ObjectRef, Generated>;

/// The plan for every Gateway of ours, and the Services it takes.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub gateways: BTreeMap<ObjectRef, Exposed>,
    pub services: Desired,
}

/// Plans the Services of `world`'s Gateways.
pub fn plan(world: &World, exposure: &Exposure) -> Plan {
    let gateways = world.our_gateways_oldest_first();
    let current = managed_services(world);
    // A Service's name is unique across namespaces (it names the Gateway's
    // namespace); one in Agimo's namespace, where earlier versions put them,
    // passes its pod ports on until the writer deletes it.
    let by_name: BTreeMap<&str, &Service> = current.iter().map(|(k, s)| (k.name.as_str(), *s)).collect();
    let mut plan = Plan { gateways: assign_pod_ports(world, &gateways, &by_name, exposure), services: BTreeMap::new() };
    for (key, gateway) in &gateways {
        let exposed = plan.gateways.get_mut(*key).expect("planned above");
        let at = ObjectRef { namespace: key.namespace.clone(), name: exposed.service.clone() };
        let have = current.get(&at).copied();
        let written: BTreeSet<(i32, Option<u16>)> =
            by_name.get(exposed.service.as_str()).into_iter().flat_map(|s| target_ports(s)).collect();
        exposed.serving = exposed
            .pod_ports
            .iter()
            .filter(|(port, target)| written.contains(&(i32::from(**port), Some(**target))))
            .map(|(p, t)| (*p, *t))
            .collect();
        if let Some(service) = plan_service(key, gateway, exposed, have, exposure, &world.controller_name) {
            let slices = endpoints::from_pods(&service, &world.gateway_pods, &exposed.pod_ports);
            plan.services.insert(at, Generated { service, slices });
        }
    }
    plan
}

/// With an address pool: a ClusterIP Service per Gateway that has a usable
/// address, its endpoint that address at the listener ports.
pub fn plan_addressed(world: &World) -> Desired {
    let mut desired = Desired::new();
    for (key, gateway) in world.our_gateways_oldest_first() {
        let mut addresses: Vec<IpAddr> = static_addresses(gateway);
        addresses.extend(world.assigned_addresses.get(key));
        addresses.retain(|ip| endpoints::usable(*ip));
        let ports = listener_ports(world, key, gateway);
        if addresses.is_empty() || ports.is_empty() {
            continue;
        }
        let exposed = Exposed {
            service: service_name(key),
            pod_ports: ports.iter().map(|p| (*p, *p)).collect(),
            ..Exposed::default()
        };
        let spec = ServiceSpec { type_: Some("ClusterIP".to_owned()), ..ServiceSpec::default() };
        let service = desired_service((key, gateway), &exposed, spec, BTreeMap::new(), &world.controller_name);
        let slices = endpoints::from_addresses(&service, &addresses, &exposed.pod_ports);
        desired.insert(
            ObjectRef { namespace: key.namespace.clone(), name: exposed.service },
            Generated { service, slices },
        );
    }
    desired
}

/// Gives each listener port of each Gateway a port on the pods: the one its
/// Service already maps it to, else the lowest free one, oldest Gateway
/// first.
fn assign_pod_ports(
    world: &World,
    gateways: &[(&ObjectRef, &Gateway)],
    current: &BTreeMap<&str, &Service>,
    exposure: &Exposure,
) -> BTreeMap<ObjectRef, Exposed> {
    // Every pod port a Service points at stays taken until its Service lets
    // go of it: a port reused at once would, until the old Service is
    // updated, bring one Gateway's traffic to another's listener.
    let mut taken: BTreeSet<u16> = current.values().flat_map(|s| target_ports(s)).filter_map(|(_, t)| t).collect();
    let mut kept: BTreeSet<u16> = BTreeSet::new();
    let mut planned = BTreeMap::new();
    let mut wanted: Vec<(&ObjectRef, Vec<u16>)> = Vec::new();
    for (key, gateway) in gateways {
        let ports = listener_ports(world, key, gateway);
        let mut exposed = Exposed { service: service_name(key), ..Exposed::default() };
        // Ports a Gateway's own Service already gives its listeners are kept.
        for (port, target) in current.get(exposed.service.as_str()).into_iter().flat_map(|s| target_ports(s)) {
            let Ok(port) = u16::try_from(port) else { continue };
            if let Some(target) = target.filter(|t| exposure.pod_ports.contains(t) && !kept.contains(t))
                && ports.contains(&port)
            {
                kept.insert(target);
                exposed.pod_ports.insert(port, target);
            }
        }
        planned.insert((*key).clone(), exposed);
        wanted.push((*key, ports));
    }
    taken.extend(&kept);
    let mut free = exposure.pod_ports.clone().filter(|p| !taken.contains(p));
    for (key, ports) in wanted {
        let exposed = planned.get_mut(key).expect("planned above");
        for port in ports {
            if exposed.pod_ports.contains_key(&port) {
                continue;
            }
            match free.next() {
                Some(target) => {
                    exposed.pod_ports.insert(port, target);
                }
                None => exposed.unassigned_ports.push(port),
            }
        }
        if !exposed.unassigned_ports.is_empty() {
            tracing::warn!(gateway = %key, range = ?exposure.pod_ports, "--gateway-pod-ports is exhausted");
        }
    }
    planned
}

/// Each port of a Service with its target port, if that is a number.
fn target_ports(service: &Service) -> impl Iterator<Item = (i32, Option<u16>)> + '_ {
    service.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| {
        let target = match &p.target_port {
            Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
            _ => None,
        };
        (p.port, target)
    })
}

/// The Service a Gateway with its pod ports gets (none without a pod port),
/// and the addresses the Gateway publishes, or why there are none yet.
fn plan_service(
    key: &ObjectRef,
    gateway: &Gateway,
    exposed: &mut Exposed,
    have: Option<&Service>,
    exposure: &Exposure,
    controller_name: &str,
) -> Option<Service> {
    let statics = static_addresses(gateway);
    let in_range = |ip: &IpAddr| exposure.static_ranges.iter().any(|r| r.contains(ip));
    exposed.unusable = statics.iter().filter(|ip| !in_range(ip)).map(ToString::to_string).collect();
    let usable: Vec<IpAddr> = statics.iter().copied().filter(in_range).collect();
    let name = format!("{}/{}", key.namespace, exposed.service);
    if exposed.pod_ports.is_empty() {
        // A Service needs a port: without one, the Gateway has none.
        exposed.pending = Some(format!("no port left in --gateway-pod-ports for a Service {name}"));
        return None;
    }
    let spec = ServiceSpec {
        type_: Some(exposure.service_type.clone()),
        external_ips: (!usable.is_empty()).then(|| usable.iter().map(ToString::to_string).collect()),
        ..ServiceSpec::default()
    };
    let service = desired_service((key, gateway), exposed, spec, exposure.annotations.clone(), controller_name);
    match published_addresses(have, !statics.is_empty(), &usable, exposure, &name) {
        Ok(addresses) => exposed.addresses = addresses,
        Err(pending) => exposed.pending = Some(pending),
    }
    Some(service)
}

/// What `status.addresses` publishes given the Service as it is (`have`):
/// the static addresses once the Service carries them as external IPs, else
/// its load balancer ingress or cluster IP; or why there is none yet.
fn published_addresses(
    have: Option<&Service>,
    statics: bool,
    usable: &[IpAddr],
    exposure: &Exposure,
    name: &str,
) -> Result<Vec<GatewayStatusAddress>, String> {
    if statics {
        let external: Vec<String> = have.and_then(|s| s.spec.as_ref()?.external_ips.clone()).unwrap_or_default();
        if !usable.iter().all(|ip| external.contains(&ip.to_string())) {
            return Err(format!("Service {name} does not have the external IPs yet"));
        }
        return Ok(usable.iter().map(|ip| ip_address(&ip.to_string())).collect());
    }
    let Some(have) = have else {
        return Err(format!("Service {name} is not created yet"));
    };
    let addresses = service_addresses(have);
    if addresses.is_empty() {
        let what = if exposure.service_type == "LoadBalancer" { "load balancer address" } else { "cluster IP" };
        return Err(format!("Service {name} has no {what} yet"));
    }
    Ok(addresses)
}

/// The Services Agimo manages, in every namespace.
pub fn managed_services(world: &World) -> BTreeMap<ObjectRef, &Service> {
    world
        .services
        .iter()
        .filter(|(_, service)| is_managed(&service.metadata, &world.controller_name))
        .map(|(key, service)| (key.clone(), service.as_ref()))
        .collect()
}

/// Whether Agimo, serving `controller_name`, manages this object (a Service
/// or an EndpointSlice).
pub fn is_managed(metadata: &ObjectMeta, controller_name: &str) -> bool {
    let label = metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
    let controller = metadata.annotations.as_ref().and_then(|a| a.get(CONTROLLER_ANNOTATION));
    label.map(String::as_str) == Some(MANAGED_BY) && controller.map(String::as_str) == Some(controller_name)
}

/// `agimo-<namespace>-<name>-<hash>`: a DNS label (at most 63 characters)
/// that no other Gateway gets, since the hash covers the exact key.
pub fn service_name(key: &ObjectRef) -> String {
    let hash = digest_of(&format!("{}/{}", key.namespace, key.name));
    let readable: String = format!("agimo-{}-{}", key.namespace, key.name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(63 - 1 - hash.len())
        .collect();
    format!("{}-{hash}", readable.trim_end_matches('-'))
}

/// The first 4 bytes of the SHA-256 of `text`, in hex.
fn digest_of(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut hash = String::new();
    for b in &digest.as_ref()[..4] {
        let _ = write!(hash, "{b:02x}");
    }
    hash
}

/// The ports of a Gateway's listeners and of those of the ListenerSets that
/// name it.
fn listener_ports(world: &World, key: &ObjectRef, gateway: &Gateway) -> Vec<u16> {
    let own = gateway.spec.listeners.iter().map(|l| l.port);
    let sets = world.listener_sets_of(key).flat_map(|s| s.spec.listeners.iter().map(|l| l.port));
    let ports: BTreeSet<u16> = own.chain(sets).filter_map(|p| u16::try_from(p).ok()).filter(|p| *p != 0).collect();
    ports.into_iter().collect()
}

/// The IP addresses of `spec.addresses` (other types are the compiler's
/// business: they make the Gateway not Accepted).
fn static_addresses(gateway: &Gateway) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for a in gateway.spec.addresses.iter().flatten() {
        if a.r#type.as_deref().unwrap_or("IPAddress") != "IPAddress" {
            continue;
        }
        if let Some(ip) = a.value.as_deref().and_then(|v| v.parse::<IpAddr>().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips
}

fn ip_address(value: &str) -> GatewayStatusAddress {
    GatewayStatusAddress { r#type: Some("IPAddress".to_owned()), value: value.to_owned() }
}

/// Where clients reach a Service: its load balancer ingress (type
/// LoadBalancer), else its cluster IPs.
fn service_addresses(service: &Service) -> Vec<GatewayStatusAddress> {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        let ingress = service.status.iter().flat_map(|s| s.load_balancer.iter()).flat_map(|lb| lb.ingress.iter());
        return ingress
            .flatten()
            .filter_map(|i| match (&i.ip, &i.hostname) {
                (Some(ip), _) if !ip.is_empty() => Some(ip_address(ip)),
                (_, Some(host)) if !host.is_empty() => {
                    Some(GatewayStatusAddress { r#type: Some("Hostname".to_owned()), value: host.clone() })
                }
                _ => None,
            })
            .collect();
    }
    let ips = spec.and_then(|s| s.cluster_ips.clone().or_else(|| s.cluster_ip.clone().map(|ip| vec![ip])));
    ips.into_iter().flatten().filter(|ip| !ip.is_empty() && ip != "None").map(|ip| ip_address(&ip)).collect()
}

/// The Service of Gateway `key`, in its namespace, with `spec`'s type and
/// addresses and no selector. Its labels and annotations: the Gateway's
/// `spec.infrastructure` ones (over `annotations`, the
/// `--gateway-service-annotation` ones), then Agimo's own, which no Gateway
/// can override since they decide which Services Agimo manages.
fn desired_service(
    (key, gateway): (&ObjectRef, &Gateway),
    exposed: &Exposed,
    spec: ServiceSpec,
    mut annotations: BTreeMap<String, String>,
    controller_name: &str,
) -> Service {
    let infrastructure = gateway.spec.infrastructure.as_ref();
    let mut labels = infrastructure.and_then(|i| i.labels.clone()).unwrap_or_default();
    let infrastructure_labels = labels.clone();
    labels.extend([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        // Label values are at most 63 characters; the annotation has the key whole.
        (GATEWAY_NAMESPACE_LABEL.to_owned(), label_value(&key.namespace)),
        (GATEWAY_NAME_LABEL.to_owned(), label_value(&key.name)),
        (GATEWAY_API_NAME_LABEL.to_owned(), label_value(&key.name)),
    ]);
    let infrastructure_annotations = infrastructure.and_then(|i| i.annotations.clone()).unwrap_or_default();
    let digest = digest_of(&format!("{infrastructure_labels:?}{infrastructure_annotations:?}"));
    annotations.extend(infrastructure_annotations);
    annotations.insert(INFRASTRUCTURE_ANNOTATION.to_owned(), digest);
    annotations.insert(GATEWAY_ANNOTATION.to_owned(), format!("{}/{}", key.namespace, key.name));
    annotations.insert(CONTROLLER_ANNOTATION.to_owned(), controller_name.to_owned());
    let ports = exposed
        .pod_ports
        .iter()
        .map(|(port, target)| ServicePort {
            name: Some(port_name(*port)),
            port: i32::from(*port),
            target_port: Some(IntOrString::Int(i32::from(*target))),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        })
        .collect();
    // Owned by its Gateway: the garbage collector deletes it with the
    // Gateway, even while no Agimo runs.
    let owner = gateway.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: format!("{}/v1", crate::api::GATEWAY_GROUP),
        kind: "Gateway".to_owned(),
        name: key.name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
    Service {
        metadata: ObjectMeta {
            name: Some(exposed.service.clone()),
            namespace: Some(key.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec { ports: Some(ports), ..spec }),
        status: None,
    }
}

/// The name of the Service port (and EndpointSlice port) of a listener port.
fn port_name(port: u16) -> String {
    format!("port-{port}")
}

/// Whether every entry of `want` (labels, annotations) is in `have`.
fn contains(have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>) -> bool {
    want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
}

/// A label value: at most 63 characters, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let cut: String = s.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sources::files::load_str;

    fn exposure() -> Exposure {
        Exposure {
            namespace: "agimo-system".into(),
            service_type: "LoadBalancer".into(),
            selector: BTreeMap::from([("app.kubernetes.io/name".into(), "agimo".into())]),
            annotations: BTreeMap::from([("example.com/lb".into(), "internal".into())]),
            pod_ports: 20000..=20003,
            static_ranges: vec!["10.245.255.0/24".parse().unwrap()],
        }
    }

    fn world(extra: &str) -> World {
        load_str(
            "t.yaml",
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: agimo}}
spec: {{controllerName: agimo.dev/gateway-controller}}
{extra}"
            ),
        )
        .unwrap()
    }

    fn gateway(name: &str, created: &str, ports: &[u16], extra: &str) -> String {
        let listeners: Vec<String> =
            ports.iter().map(|p| format!("{{name: l{p}, port: {p}, protocol: HTTP}}")).collect();
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: ns, creationTimestamp: '{created}'}}
spec:
  gatewayClassName: agimo
  listeners: [{}]
{extra}",
            listeners.join(", ")
        )
    }

    fn key(name: &str) -> ObjectRef {
        ObjectRef { namespace: "ns".into(), name: name.into() }
    }

    /// The planned Service of Gateway ns/`gateway`.
    fn service_of<'p>(plan: &'p Plan, gateway: &str) -> &'p Service {
        let at = ObjectRef { namespace: "ns".into(), name: plan.gateways[&key(gateway)].service.clone() };
        &plan.services[&at].service
    }

    #[test]
    fn gateways_on_the_same_port_get_pod_ports_of_their_own_oldest_first() {
        let w = world(
            &(gateway("b", "2026-01-02T00:00:00Z", &[80], "") + &gateway("a", "2026-01-01T00:00:00Z", &[80, 443], "")),
        );
        let plan = plan(&w, &exposure());
        assert_eq!(plan.gateways[&key("a")].pod_ports, BTreeMap::from([(80, 20000), (443, 20001)]));
        assert_eq!(plan.gateways[&key("b")].pod_ports, BTreeMap::from([(80, 20002)]));
        let service = service_of(&plan, "a");
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        // Agimo's pods are in another namespace: its slices list them.
        assert_eq!(spec.selector, None);
        let ports: Vec<(i32, Option<IntOrString>)> =
            spec.ports.iter().flatten().map(|p| (p.port, p.target_port.clone())).collect();
        assert_eq!(ports, vec![(80, Some(IntOrString::Int(20000))), (443, Some(IntOrString::Int(20001)))]);
        let annotations = service.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[GATEWAY_ANNOTATION], "ns/a");
        assert_eq!(annotations["example.com/lb"], "internal");
        assert_eq!(service.metadata.namespace.as_deref(), Some("ns"), "beside its Gateway");
        // Not created yet: no address, and the status says why.
        assert!(plan.gateways[&key("a")].addresses.is_empty());
        assert!(plan.gateways[&key("a")].pending.as_deref().unwrap().contains("not created yet"));
    }

    /// The Service as the API server would hold it once written.
    fn existing(name: &str, gateway: &str, ports: &[(u16, u16)], status: &str) -> String {
        existing_in("ns", name, gateway, ports, status)
    }

    fn existing_in(namespace: &str, name: &str, gateway: &str, ports: &[(u16, u16)], status: &str) -> String {
        let ports: Vec<String> =
            ports.iter().map(|(p, t)| format!("{{name: port-{p}, port: {p}, targetPort: {t}}}")).collect();
        format!(
            "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app.kubernetes.io/managed-by: agimo}}
  annotations: {{agimo.dev/gateway: ns/{gateway}, agimo.dev/controller-name: agimo.dev/gateway-controller}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  ports: [{}]
{status}",
            ports.join(", ")
        )
    }

    #[test]
    fn pod_ports_already_in_a_service_are_kept_and_its_ingress_is_published() {
        let a = service_name(&key("a"));
        let w = world(
            &(gateway("old", "2026-01-01T00:00:00Z", &[80], "")
                + &gateway("a", "2026-01-02T00:00:00Z", &[80, 8080], "")
                + &existing(
                    &a,
                    "a",
                    &[(80, 20000), (9999, 20001)],
                    "status: {loadBalancer: {ingress: [{ip: 10.245.1.7}]}}",
                )),
        );
        let first = plan(&w, &exposure());
        // `a` keeps 20000 though `old` is older. Its port 9999 is gone, but
        // 20001 stays taken while a's Service still points at it: `old` gets
        // 20002, and a's new 8080 gets 20003.
        assert_eq!(first.gateways[&key("a")].pod_ports, BTreeMap::from([(80, 20000), (8080, 20003)]));
        assert_eq!(first.gateways[&key("old")].pod_ports, BTreeMap::from([(80, 20002)]));
        assert_eq!(first.gateways[&key("a")].addresses, vec![ip_address("10.245.1.7")]);
        assert_eq!(first.gateways[&key("a")].pending, None);
        // Once the Services are written as planned, each Gateway keeps its
        // ports, and 20001 is free for a newcomer.
        let written: String = first
            .services
            .values()
            .map(|g| format!("---\n{}", serde_yaml_ng::to_string(&g.service).unwrap()))
            .collect();
        let w = world(
            &(gateway("old", "2026-01-01T00:00:00Z", &[80], "")
                + &gateway("a", "2026-01-02T00:00:00Z", &[80, 8080], "")
                + &gateway("new", "2026-01-03T00:00:00Z", &[80], "")
                + &written),
        );
        let second = plan(&w, &exposure());
        assert_eq!(second.gateways[&key("a")].pod_ports, first.gateways[&key("a")].pod_ports);
        assert_eq!(second.gateways[&key("old")].pod_ports, first.gateways[&key("old")].pod_ports);
        assert_eq!(second.gateways[&key("new")].pod_ports, BTreeMap::from([(80, 20001)]));
    }

    #[test]
    fn a_service_without_ingress_leaves_the_gateway_pending() {
        let a = service_name(&key("a"));
        let w = world(&(gateway("a", "2026-01-02T00:00:00Z", &[80], "") + &existing(&a, "a", &[(80, 20000)], "")));
        let exposed = &plan(&w, &exposure()).gateways[&key("a")];
        assert!(exposed.addresses.is_empty());
        assert!(exposed.pending.as_deref().unwrap().contains("no load balancer address yet"), "{exposed:?}");
    }

    #[test]
    fn static_addresses_become_external_ips_when_in_range() {
        let w = world(
            &(gateway(
                "s",
                "2026-01-01T00:00:00Z",
                &[8080],
                "  addresses: [{value: 192.0.2.55}, {value: 10.245.255.10}]\n",
            )),
        );
        let first = plan(&w, &exposure());
        let exposed = &first.gateways[&key("s")];
        assert_eq!(exposed.unusable, vec!["192.0.2.55".to_owned()]);
        let service = service_of(&first, "s");
        assert_eq!(service.spec.clone().unwrap().external_ips, Some(vec!["10.245.255.10".to_owned()]));
        // Not published before the Service carries it.
        assert!(exposed.addresses.is_empty());
        assert!(exposed.pending.as_deref().unwrap().contains("external IPs"), "{exposed:?}");
        let written = format!("---\n{}", serde_yaml_ng::to_string(service).unwrap());
        let w = world(
            &(gateway(
                "s",
                "2026-01-01T00:00:00Z",
                &[8080],
                "  addresses: [{value: 192.0.2.55}, {value: 10.245.255.10}]\n",
            ) + &written),
        );
        assert_eq!(plan(&w, &exposure()).gateways[&key("s")].addresses, vec![ip_address("10.245.255.10")]);
    }

    #[test]
    fn services_of_another_controller_are_not_ours() {
        let a = service_name(&key("a"));
        let theirs = existing(&a, "a", &[(80, 20000)], "").replace(
            "agimo.dev/controller-name: agimo.dev/gateway-controller",
            "agimo.dev/controller-name: example.com/other",
        );
        let w = world(&(gateway("a", "2026-01-02T00:00:00Z", &[80], "") + &theirs));
        assert!(managed_services(&w).is_empty());
        let service = w.services.values().next().unwrap();
        assert!(!is_managed(&service.metadata, "agimo.dev/gateway-controller"));
        assert!(is_managed(&service.metadata, "example.com/other"));
    }

    #[test]
    fn a_gateway_without_any_pod_port_gets_no_service() {
        let w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", &[80, 81, 82, 83], "")
                + &gateway("b", "2026-01-02T00:00:00Z", &[80], "")),
        );
        let plan = plan(&w, &exposure());
        let b = &plan.gateways[&key("b")];
        let at = ObjectRef { namespace: "ns".into(), name: b.service.clone() };
        assert!(!plan.services.contains_key(&at), "the API server refuses a Service without ports");
        assert!(b.pending.as_deref().unwrap().contains("no port left"), "{b:?}");
    }

    #[test]
    fn an_exhausted_pod_port_range_is_reported_per_listener_port() {
        let w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", &[80, 81, 82], "")
                + &gateway("b", "2026-01-02T00:00:00Z", &[80, 81], "")),
        );
        let plan = plan(&w, &exposure());
        assert_eq!(plan.gateways[&key("b")].pod_ports, BTreeMap::from([(80, 20003)]));
        assert_eq!(plan.gateways[&key("b")].unassigned_ports, vec![81]);
    }

    fn programmed(statuses: &crate::Statuses, name: &str) -> (String, String) {
        let status = &statuses.gateways[&key(name)];
        let c = status.conditions.iter().flatten().find(|c| c.type_ == "Programmed").unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn compiled_gateways_listen_on_their_pod_ports_and_publish_the_service_address() {
        let a = service_name(&key("a"));
        let mut w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", &[80], "")
                + &gateway("b", "2026-01-02T00:00:00Z", &[80], "")
                + &existing(&a, "a", &[(80, 20000)], "status: {loadBalancer: {ingress: [{ip: 10.245.1.7}]}}")),
        );
        w.exposed = Some(plan(&w, &exposure()).gateways);
        let crate::Compiled { snapshot, statuses, .. } = crate::compile(&w, &crate::Carryover::default());
        let binds: Vec<String> = snapshot.binds.iter().map(|b| b.address.to_string()).collect();
        // `a` listens on the pod port its Service maps port 80 to; `b` has
        // 20001 planned, but no Service yet: no replica serves it before the
        // Service says where clients go (replicas may plan differently until
        // they all see it), and it has no address to publish.
        assert_eq!(binds, vec!["0.0.0.0:20000"]);
        let listener = &snapshot.binds[0].listeners[0];
        assert_eq!((listener.gateway.name.as_str(), listener.port), ("a", 80));
        assert_eq!(programmed(&statuses, "a"), ("True".into(), "Programmed".into()));
        let published: Vec<&str> =
            statuses.gateways[&key("a")].addresses.iter().flatten().map(|a| a.value.as_str()).collect();
        assert_eq!(published, vec!["10.245.1.7"]);
        assert_eq!(programmed(&statuses, "b"), ("False".into(), "AddressNotAssigned".into()));
        assert_eq!(statuses.gateways[&key("b")].addresses, None);
        // Once `b`'s Service is written, both Gateways listen on port 80,
        // each through a pod port of its own.
        let b = service_name(&key("b"));
        let mut w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", &[80], "")
                + &gateway("b", "2026-01-02T00:00:00Z", &[80], "")
                + &existing(&a, "a", &[(80, 20000)], "status: {loadBalancer: {ingress: [{ip: 10.245.1.7}]}}\n")
                + &existing(&b, "b", &[(80, 20001)], "")),
        );
        w.exposed = Some(plan(&w, &exposure()).gateways);
        let snapshot = crate::compile(&w, &crate::Carryover::default()).snapshot;
        let binds: Vec<String> = snapshot.binds.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(binds, vec!["0.0.0.0:20000", "0.0.0.0:20001"]);
        assert_eq!(snapshot.binds[1].listeners[0].gateway.name.as_str(), "b");
    }

    #[test]
    fn a_static_address_out_of_range_is_not_usable() {
        let mut w = world(&gateway("s", "2026-01-01T00:00:00Z", &[8080], "  addresses: [{value: 192.0.2.55}]\n"));
        w.exposed = Some(plan(&w, &exposure()).gateways);
        let statuses = crate::compile(&w, &crate::Carryover::default()).statuses;
        assert_eq!(programmed(&statuses, "s"), ("False".into(), "AddressNotUsable".into()));
    }

    #[test]
    fn infrastructure_labels_and_annotations_are_on_the_service_but_not_over_agimos_own() {
        let infrastructure = "  infrastructure:
    labels: {team: payments, app.kubernetes.io/managed-by: someone-else}
    annotations: {example.com/lb: external, note: hi, agimo.dev/gateway: other/gw}
";
        let w = world(&gateway("a", "2026-01-01T00:00:00Z", &[80], infrastructure));
        let plan = plan(&w, &exposure());
        let service = service_of(&plan, "a");
        let labels = service.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels[GATEWAY_API_NAME_LABEL], "a");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY, "the label that makes the Service Agimo's stays");
        let annotations = service.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["note"], "hi");
        assert_eq!(annotations["example.com/lb"], "external", "the Gateway's own beat the flag's");
        assert_eq!(annotations[GATEWAY_ANNOTATION], "ns/a");
        assert!(is_managed(&service.metadata, "agimo.dev/gateway-controller"));
        let slice = &plan.services[&ObjectRef { namespace: "ns".into(), name: service_name(&key("a")) }].slices[0];
        let slice_labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!((slice_labels["team"].as_str(), slice_labels[GATEWAY_API_NAME_LABEL].as_str()), ("payments", "a"));
        assert_eq!(slice.metadata.annotations.as_ref().unwrap()["note"], "hi");
        // A Gateway without infrastructure keeps the flag's annotation.
        let w = world(&gateway("b", "2026-01-01T00:00:00Z", &[80], ""));
        let plan = super::plan(&w, &exposure());
        let service = service_of(&plan, "b");
        assert_eq!(service.metadata.annotations.as_ref().unwrap()["example.com/lb"], "internal");
        assert!(!service.metadata.labels.as_ref().unwrap().contains_key("team"));
        // Dropping a label changes what the writer compares, so the Service is
        // applied again (and the API server removes the label).
        let digest = |s: &Service| s.metadata.annotations.as_ref().unwrap()[INFRASTRUCTURE_ANNOTATION].clone();
        let w = world(&gateway("a", "2026-01-01T00:00:00Z", &[80], infrastructure));
        let before = digest(service_of(&super::plan(&w, &exposure()), "a"));
        let w = world(&gateway("a", "2026-01-01T00:00:00Z", &[80], &infrastructure.replace("team: payments, ", "")));
        let after = digest(service_of(&super::plan(&w, &exposure()), "a"));
        assert_ne!(before, after);
    }

    #[test]
    fn listener_set_ports_get_pod_ports_on_their_gateways_service() {
        let set = "---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: extra, namespace: ns}
spec:
  parentRef: {name: a}
  listeners: [{name: extra, port: 8443, protocol: HTTP}]
";
        let w = world(&(gateway("a", "2026-01-01T00:00:00Z", &[80], "") + set));
        let plan = plan(&w, &exposure());
        assert_eq!(plan.gateways[&key("a")].pod_ports, BTreeMap::from([(80, 20000), (8443, 20001)]));
    }

    #[test]
    fn a_service_left_in_agimos_namespace_passes_its_pod_ports_on_but_not_its_address() {
        let a = service_name(&key("a"));
        let old = existing_in(
            "agimo-system",
            &a,
            "a",
            &[(80, 20002)],
            "status: {loadBalancer: {ingress: [{ip: 10.245.1.7}]}}",
        );
        let w = world(&(gateway("a", "2026-01-01T00:00:00Z", &[80], "") + &old));
        let plan = plan(&w, &exposure());
        assert_eq!(plan.gateways[&key("a")].pod_ports, BTreeMap::from([(80, 20002)]));
        // Clients will reach the Service beside the Gateway, once it has an address.
        assert!(plan.gateways[&key("a")].addresses.is_empty());
        assert_eq!(plan.services.keys().map(|k| k.namespace.as_str()).collect::<Vec<_>>(), vec!["ns"]);
    }

    #[test]
    fn slices_list_agimos_pods_at_the_gateways_pod_ports() {
        let mut w = world(&gateway("a", "2026-01-01T00:00:00Z", &[80, 443], ""));
        let pod: crate::api::Pod = serde_yaml_ng::from_str(
            "metadata: {name: agimo-1, namespace: agimo-system}
status: {phase: Running, podIP: 10.1.0.5, conditions: [{type: Ready, status: 'True'}]}",
        )
        .unwrap();
        w.gateway_pods.insert(ObjectRef { namespace: "agimo-system".into(), name: "agimo-1".into() }, Arc::new(pod));
        let plan = plan(&w, &exposure());
        let generated = &plan.services[&ObjectRef { namespace: "ns".into(), name: service_name(&key("a")) }];
        let slice = &generated.slices[0];
        assert_eq!(slice.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(slice.endpoints.as_ref().unwrap()[0].addresses, vec!["10.1.0.5".to_owned()]);
        let ports: Vec<(String, i32)> =
            slice.ports.iter().flatten().map(|p| (p.name.clone().unwrap(), p.port.unwrap())).collect();
        assert_eq!(ports, vec![("port-80".to_owned(), 20000), ("port-443".to_owned(), 20001)]);
        // The Service's port of the same name maps the listener port to the pods' one.
        let service_ports: Vec<(String, i32)> = generated
            .service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect();
        assert_eq!(service_ports, vec![("port-80".to_owned(), 80), ("port-443".to_owned(), 443)]);
    }

    #[test]
    fn with_an_address_pool_a_gateway_gets_a_cluster_ip_service_at_its_address() {
        let mut w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", &[80], "  infrastructure: {labels: {team: a}}\n")
                + &gateway("local", "2026-01-01T00:00:00Z", &[80], "  addresses: [{value: 127.0.0.1}]\n")),
        );
        w.assigned_addresses.insert(key("a"), "10.245.0.1".parse().unwrap());
        let desired = plan_addressed(&w);
        // A loopback address is no endpoint the API server would take.
        assert_eq!(desired.len(), 1);
        let generated = &desired[&ObjectRef { namespace: "ns".into(), name: service_name(&key("a")) }];
        let spec = generated.service.spec.as_ref().unwrap();
        assert_eq!((spec.type_.as_deref(), spec.selector.as_ref()), (Some("ClusterIP"), None));
        assert_eq!(generated.service.metadata.labels.as_ref().unwrap()["team"], "a");
        let endpoint = &generated.slices[0].endpoints.as_ref().unwrap()[0];
        assert_eq!(endpoint.addresses, vec!["10.245.0.1".to_owned()]);
        assert_eq!(generated.slices[0].ports.as_ref().unwrap()[0].port, Some(80));
    }

    #[test]
    fn service_names_are_dns_labels_and_distinct() {
        let long = ObjectRef { namespace: "n".repeat(63), name: "Gw.with.dots".repeat(20) };
        let name = service_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("agimo-nnn"));
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(service_name(&key("a.b")), service_name(&key("a-b")));
    }
}
