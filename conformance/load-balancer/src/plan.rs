//! What should be, from the whole world: which Services get which pool
//! address, which statuses need writing, and which `IP:port` listeners
//! forward to which endpoints. Pure: no I/O, no clock, deterministic.
//!
//! ```text
//!   Services ──▶ claims (type LoadBalancer, our class; oldest first) ──▶ pool::allocate ──▶ addresses
//!      │                                                                                      │
//!      ├──▶ statuses: status.loadBalancer.ingress [{ip, ipMode: VIP}] that differ ◀───────────┤
//!      └──▶ listeners: (address ∪ spec.externalIPs) × TCP ports ──▶ Target ◀── EndpointSlices (ready)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::forward::Target;
use crate::pool::{self, Allocation, Claim};
use crate::{Config, ServiceRef};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the runtime makes true.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pool addresses of the Services of type LoadBalancer we handle.
    pub allocation: Allocation,
    /// `status.loadBalancer.ingress` to write, for the Services whose status
    /// differs from it.
    pub statuses: BTreeMap<ServiceRef, Vec<LoadBalancerIngress>>,
    /// What each listener forwards to.
    pub listeners: BTreeMap<SocketAddr, Target>,
    /// Listener addresses wanted by more than one Service; the first
    /// (oldest) Service has the listener.
    pub conflicts: BTreeSet<Conflict>,
}

/// Two Services want the same `IP:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub addr: SocketAddr,
    /// The Service that has the listener.
    pub owner: ServiceRef,
    /// The Service that does not.
    pub service: ServiceRef,
}

/// Whether we give `service` a load balancer address: type LoadBalancer,
/// without `spec.loadBalancerClass` or with one of `classes`.
pub fn handles(service: &Service, classes: &[String]) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.as_ref().is_none_or(|class| classes.contains(class))
}

/// The plan for `services` and `slices`, given the addresses `held` since
/// the last plan (its `allocation.assigned`).
pub fn plan(
    config: &Config,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    held: &BTreeMap<ServiceRef, IpAddr>,
) -> Plan {
    let mut services: Vec<(ServiceRef, &Service)> = services.iter().map(|s| (service_ref(s), s.as_ref())).collect();
    // Oldest first, then by namespace/name: who keeps an address or a
    // listener when two want it.
    services.sort_by(|(ka, a), (kb, b)| {
        let created = |s: &Service| s.metadata.creation_timestamp.clone();
        created(a).is_none().cmp(&created(b).is_none()).then(created(a).cmp(&created(b))).then(ka.cmp(kb))
    });

    // External IPs and other load balancers' addresses are never handed out.
    let mut reserved: BTreeSet<IpAddr> = services.iter().flat_map(|(_, s)| external_ips(s)).collect();
    reserved.extend(
        services
            .iter()
            .filter(|(_, s)| is_load_balancer(s) && !handles(s, &config.classes))
            .flat_map(|(_, s)| ingress_ips(s)),
    );
    let claims: Vec<Claim> = services
        .iter()
        .filter(|(_, s)| handles(s, &config.classes))
        .map(|(key, s)| Claim {
            service: key.clone(),
            requested: s
                .spec
                .as_ref()
                .and_then(|spec| spec.load_balancer_ip.as_deref())
                .filter(|ip| !ip.is_empty())
                .and_then(|ip| ip.parse().ok()),
            published: ingress_ips(s),
        })
        .collect();
    let allocation = pool::allocate(&config.pool, &claims, held, &reserved);

    let mut statuses = BTreeMap::new();
    for (key, service) in &services {
        let current = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone());
        let current = current.unwrap_or_default();
        let wanted = if handles(service, &config.classes) {
            allocation.assigned.get(key).map(|ip| vec![ingress(*ip)]).unwrap_or_default()
        } else if !is_load_balancer(service) {
            // No longer of type LoadBalancer: our address goes.
            current
                .iter()
                .filter(|i| {
                    i.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()).is_none_or(|ip| !config.pool.contains(&ip))
                })
                .cloned()
                .collect()
        } else {
            // Another load balancer's Service.
            continue;
        };
        if wanted != current {
            statuses.insert(key.clone(), wanted);
        }
    }

    let mut by_service: BTreeMap<ServiceRef, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let name = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(name)) = (&slice.metadata.namespace, name) {
            by_service.entry(ServiceRef::new(namespace, name)).or_default().push(slice);
        }
    }
    let mut listeners: BTreeMap<SocketAddr, Target> = BTreeMap::new();
    let mut conflicts = BTreeSet::new();
    for (key, service) in &services {
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let mut ips = external_ips(service);
        ips.extend(allocation.assigned.get(key));
        ips.sort();
        ips.dedup();
        let slices = by_service.get(key).map(Vec::as_slice).unwrap_or_default();
        for port in spec.ports.iter().flatten().filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP")) {
            let Ok(number) = u16::try_from(port.port) else { continue };
            for ip in &ips {
                let addr = SocketAddr::new(*ip, number);
                if let Some(owner) = listeners.get(&addr) {
                    conflicts.insert(Conflict { addr, owner: owner.service.clone(), service: key.clone() });
                    continue;
                }
                let target = Target { service: key.clone(), port: number, endpoints: endpoints(port, slices) };
                listeners.insert(addr, target);
            }
        }
    }
    Plan { allocation, statuses, listeners, conflicts }
}

/// The ready endpoints of one Service port: from each of the Service's
/// EndpointSlices, the addresses of endpoints not marked unready, at the
/// slice's port of the same name as the Service port, else at the
/// `targetPort` number. Sorted, without duplicates.
pub fn endpoints(port: &ServicePort, slices: &[&EndpointSlice]) -> Vec<SocketAddr> {
    let name = port.name.as_deref().unwrap_or("");
    let target_port = match &port.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(_)) => None,
        // The API server defaults targetPort to port.
        None => u16::try_from(port.port).ok(),
    };
    let mut endpoints = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let named = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == name && p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(number) = named.or(target_port) else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            // Unset means ready, as the EndpointSlice API defines.
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            endpoints.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, number)),
            );
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// The `status.loadBalancer.ingress` entry for a pool address.
pub fn ingress(ip: IpAddr) -> LoadBalancerIngress {
    LoadBalancerIngress { ip: Some(ip.to_string()), ip_mode: Some("VIP".to_owned()), ..Default::default() }
}

pub fn service_ref(service: &Service) -> ServiceRef {
    ServiceRef::new(
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn external_ips(service: &Service) -> Vec<IpAddr> {
    let ips = service.spec.as_ref().and_then(|s| s.external_ips.as_ref());
    ips.into_iter().flatten().filter_map(|ip| ip.parse().ok()).collect()
}

fn ingress_ips(service: &Service) -> Vec<IpAddr> {
    let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn config() -> Config {
        Config {
            pool: "10.245.1.0/24".parse().unwrap(),
            classes: vec!["agimo.dev/local".to_owned()],
            connect_timeout: Duration::from_secs(1),
        }
    }

    fn mk_service(name: &str, created: &str, spec: Value, status: Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                "spec": spec,
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn mk_slice(service: &str, ports: Value, endpoints: Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                    "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }))
            .unwrap(),
        )
    }

    fn port(value: Value) -> ServicePort {
        serde_json::from_value(value).unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn svc(name: &str) -> ServiceRef {
        ServiceRef::new("ns", name)
    }

    #[test]
    fn endpoints_by_port_name_else_target_port_number() {
        let slice = mk_slice(
            "s",
            json!([{"name": "http", "port": 3000, "protocol": "TCP"}, {"name": "metrics", "port": 9090}]),
            json!([
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.1"]},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "terminating": true}},
            ]),
        );
        let slices = [slice.as_ref()];
        // By name, whatever the targetPort says (it may be a name).
        let http = port(json!({"name": "http", "port": 80, "targetPort": "web"}));
        assert_eq!(endpoints(&http, &slices), addrs(&["10.244.1.1:3000", "10.244.1.2:3000"]));
        let metrics = port(json!({"name": "metrics", "port": 90, "targetPort": 1}));
        assert_eq!(endpoints(&metrics, &slices), addrs(&["10.244.1.1:9090", "10.244.1.2:9090"]));
        // No slice port of that name: the targetPort number, if it is one.
        let other = port(json!({"name": "other", "port": 81, "targetPort": 8081}));
        assert_eq!(endpoints(&other, &slices), addrs(&["10.244.1.1:8081", "10.244.1.2:8081"]));
        let named = port(json!({"name": "other", "port": 81, "targetPort": "other"}));
        assert_eq!(endpoints(&named, &slices), vec![]);
        // An unnamed Service port matches the unnamed slice port; slices of
        // FQDN addresses are ignored; duplicates across slices counted once.
        let unnamed = mk_slice("s", json!([{"port": 3001}]), json!([{"addresses": ["10.244.1.1"]}]));
        let mut fqdn = (*mk_slice("s", json!([{"port": 1}]), json!([{"addresses": ["example.com"]}]))).clone();
        fqdn.address_type = "FQDN".to_owned();
        let twice = mk_slice("s", json!([{"port": 3001}]), json!([{"addresses": ["10.244.1.1", "10.244.1.4"]}]));
        let p = port(json!({"port": 80, "targetPort": 3001}));
        assert_eq!(endpoints(&p, &[&unnamed, &fqdn, &twice]), addrs(&["10.244.1.1:3001", "10.244.1.4:3001"]));
    }

    #[test]
    fn load_balancers_get_addresses_statuses_and_listeners() {
        let services = [
            mk_service(
                "web",
                "2026-01-01T00:00:00Z",
                json!({"type": "LoadBalancer", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 3000},
                              {"name": "dns", "port": 53, "protocol": "UDP"}]}),
                json!({}),
            ),
            // Keeps the address it publishes; its status is already right.
            mk_service(
                "kept",
                "2026-01-02T00:00:00Z",
                json!({"type": "LoadBalancer", "loadBalancerClass": "agimo.dev/local", "ports": [{"port": 8080}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "10.245.1.1", "ipMode": "VIP"}]}}),
            ),
            // Another load balancer's: its address is not ours to touch or give.
            mk_service(
                "foreign",
                "2026-01-03T00:00:00Z",
                json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb", "ports": [{"port": 80}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "10.245.1.2"}]}}),
            ),
            // A ClusterIP Service with an external IP, and a stale address.
            mk_service(
                "static",
                "2026-01-04T00:00:00Z",
                json!({"type": "ClusterIP", "externalIPs": ["10.245.255.20"], "ports": [{"port": 80, "targetPort": 3000}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "10.245.1.9", "ipMode": "VIP"}]}}),
            ),
        ];
        let slices = [mk_slice(
            "web",
            json!([{"name": "http", "port": 3000}]),
            json!([{"addresses": ["10.244.1.1"]}, {"addresses": ["10.244.1.2"]}]),
        )];
        let plan = plan(&config(), &services, &slices, &BTreeMap::new());
        let assigned: Vec<(ServiceRef, IpAddr)> = plan.allocation.assigned.clone().into_iter().collect();
        assert_eq!(
            assigned,
            vec![(svc("kept"), "10.245.1.1".parse().unwrap()), (svc("web"), "10.245.1.3".parse().unwrap())]
        );
        // Only what differs is written; the stale address of a ClusterIP
        // Service goes.
        assert_eq!(plan.statuses.keys().cloned().collect::<Vec<_>>(), [svc("static"), svc("web")]);
        assert_eq!(plan.statuses[&svc("static")], vec![]);
        assert_eq!(
            serde_json::to_value(&plan.statuses[&svc("web")]).unwrap(),
            json!([{"ip": "10.245.1.3", "ipMode": "VIP"}])
        );
        let listeners: Vec<(String, String, Vec<SocketAddr>)> = plan
            .listeners
            .iter()
            .map(|(addr, t)| (addr.to_string(), format!("{}:{}", t.service, t.port), t.endpoints.clone()))
            .collect();
        assert_eq!(
            listeners,
            vec![
                ("10.245.1.1:8080".to_owned(), "ns/kept:8080".to_owned(), vec![]),
                ("10.245.1.3:80".to_owned(), "ns/web:80".to_owned(), addrs(&["10.244.1.1:3000", "10.244.1.2:3000"])),
                ("10.245.255.20:80".to_owned(), "ns/static:80".to_owned(), vec![]),
            ]
        );
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn the_oldest_service_has_a_contested_listener_and_external_ips_are_not_handed_out() {
        let services = [
            mk_service(
                "newer",
                "2026-01-02T00:00:00Z",
                json!({"externalIPs": ["10.245.1.1"], "ports": [{"port": 80}]}),
                json!({}),
            ),
            mk_service(
                "older",
                "2026-01-01T00:00:00Z",
                json!({"externalIPs": ["10.245.1.1"], "ports": [{"port": 80}, {"port": 81}]}),
                json!({}),
            ),
            mk_service(
                "lb",
                "2026-01-03T00:00:00Z",
                json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
                json!({}),
            ),
        ];
        let plan = plan(&config(), &services, &[], &BTreeMap::new());
        assert_eq!(plan.allocation.assigned[&svc("lb")], "10.245.1.2".parse::<IpAddr>().unwrap());
        let addr: SocketAddr = "10.245.1.1:80".parse().unwrap();
        assert_eq!(plan.listeners[&addr].service, svc("older"));
        assert_eq!(
            plan.conflicts.iter().cloned().collect::<Vec<_>>(),
            vec![Conflict { addr, owner: svc("older"), service: svc("newer") }]
        );
    }

    #[test]
    fn a_service_that_stops_being_a_load_balancer_loses_its_address() {
        let lb = mk_service(
            "s",
            "2026-01-01T00:00:00Z",
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "10.245.1.1", "ipMode": "VIP"}]}}),
        );
        let first = plan(&config(), std::slice::from_ref(&lb), &[], &BTreeMap::new());
        assert!(first.statuses.is_empty());
        assert_eq!(first.listeners.keys().map(ToString::to_string).collect::<Vec<_>>(), ["10.245.1.1:80"]);
        let cluster_ip = mk_service(
            "s",
            "2026-01-01T00:00:00Z",
            json!({"type": "ClusterIP", "ports": [{"port": 80}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "10.245.1.1", "ipMode": "VIP"}]}}),
        );
        let second = plan(&config(), &[cluster_ip], &[], &first.allocation.assigned);
        assert!(second.allocation.assigned.is_empty());
        assert_eq!(second.statuses[&svc("s")], vec![]);
        assert!(second.listeners.is_empty());
        // Deleted: nothing left.
        assert_eq!(plan(&config(), &[], &[], &first.allocation.assigned), Plan::default());
    }
}
