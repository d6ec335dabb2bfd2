//! The EndpointSlices of a Gateway Service, which has no selector: Agimo
//! writes them as the EndpointSlice controller would for a Service that
//! selected Agimo's pods.
//!
//! ```text
//!  Agimo's pods (watched in its namespace) ──► one endpoint per pod IP: ready = Ready and not terminating,
//!                                                serving = Ready, terminating = being deleted
//!  Service ports (port-80 → 20000)          ──► slice ports (port-80 = 20000)
//! ```
//!
//! A pod being deleted turns unready at once, before its readiness probe
//! fails, so load balancers stop sending it new connections while it
//! finishes the ones it has (its shutdown delay).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use agimo_shared::snapshot::ObjectRef;
use k8s_openapi::api::core::v1::ObjectReference;

use super::port_name;
use crate::api::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice, ObjectMeta, Pod, SERVICE_NAME_LABEL, Service,
};

/// The label naming the controller of an EndpointSlice, so that Kubernetes'
/// own EndpointSlice controllers leave it alone.
const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the slices Agimo writes.
const SLICE_MANAGED_BY: &str = "gateway-controller.agimo.dev";

/// The slices of `service` listing `pods` at their pod ports (listener port →
/// pod port): one for IPv4, and one for IPv6 when a pod has such an address.
pub fn from_pods(
    service: &Service,
    pods: &BTreeMap<ObjectRef, Arc<Pod>>,
    pod_ports: &BTreeMap<u16, u16>,
) -> Vec<EndpointSlice> {
    let mut by_family: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::from([("IPv4", Vec::new())]);
    for (key, pod) in pods {
        let status = pod.status.as_ref();
        // Finished pods serve nothing (the EndpointSlice controller skips them too).
        if matches!(status.and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) {
            continue;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let mut ips: Vec<IpAddr> =
            status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
        for ip in ips {
            let endpoint = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_owned()),
                    namespace: Some(key.namespace.clone()),
                    name: Some(key.name.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            };
            by_family.entry(family(ip)).or_default().push(endpoint);
        }
    }
    by_family.into_iter().map(|(family, endpoints)| slice(service, family, endpoints, pod_ports)).collect()
}

/// The slice of `service` listing `addresses` (Agimo beside the cluster, at
/// its Gateway addresses), always ready: a process that is not running has
/// no Lease to write statuses with either.
pub fn from_addresses(service: &Service, addresses: &[IpAddr], ports: &BTreeMap<u16, u16>) -> Vec<EndpointSlice> {
    let mut by_family: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for ip in addresses {
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Endpoint::default()
        };
        by_family.entry(family(*ip)).or_default().push(endpoint);
    }
    by_family.into_iter().map(|(family, endpoints)| slice(service, family, endpoints, ports)).collect()
}

/// Whether the API server takes `ip` as an endpoint address (it refuses
/// unspecified, loopback, link-local and multicast ones).
pub fn usable(ip: IpAddr) -> bool {
    let special = ip.is_unspecified() || ip.is_loopback() || ip.is_multicast();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !special && !link_local
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// One slice of `service`: named after it and the address family, with its
/// labels and annotations (the Gateway's infrastructure ones, Agimo's), and
/// the label that ties it to the Service.
fn slice(service: &Service, family: &str, endpoints: Vec<Endpoint>, ports: &BTreeMap<u16, u16>) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
    labels.insert(SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGED_BY.to_owned());
    let ports = ports
        .iter()
        .map(|(port, target)| EndpointPort {
            name: Some(port_name(*port)),
            port: Some(i32::from(*target)),
            protocol: Some("TCP".to_owned()),
            app_protocol: None,
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", family.to_ascii_lowercase())),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: service.metadata.annotations.clone(),
            ..ObjectMeta::default()
        },
        address_type: family.to_owned(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

/// Whether `have` already is what `want` describes (others may add labels,
/// annotations and owner references).
pub fn up_to_date(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    super::contains(&have.metadata.labels, &want.metadata.labels)
        && super::contains(&have.metadata.annotations, &want.metadata.annotations)
        && have.address_type == want.address_type
        && have.endpoints.as_deref().unwrap_or_default() == want.endpoints.as_deref().unwrap_or_default()
        && have.ports.as_deref().unwrap_or_default() == want.ports.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, deleting: bool) -> (ObjectRef, Arc<Pod>) {
        let yaml = format!(
            "metadata: {{name: {name}, namespace: agimo-system, uid: u-{name}{}}}
spec: {{nodeName: node-1, containers: []}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: '{}'}}]}}",
            if deleting { ", deletionTimestamp: '2026-12-07T00:00:00Z'" } else { "" },
            if ready { "True" } else { "False" },
        );
        (
            ObjectRef { namespace: "agimo-system".into(), name: name.into() },
            Arc::new(serde_yaml_ng::from_str(&yaml).unwrap()),
        )
    }

    fn service() -> Service {
        serde_yaml_ng::from_str(
            "metadata: {name: agimo-ns-gw-1234, namespace: ns, labels: {team: a, gateway.networking.k8s.io/gateway-name: gw},
  annotations: {note: hi}}",
        )
        .unwrap()
    }

    #[test]
    fn pods_are_ready_only_while_ready_and_not_terminating() {
        let pods = BTreeMap::from([
            pod("a", "10.1.0.1", true, false),
            pod("b", "10.1.0.2", false, false),
            pod("c", "10.1.0.3", true, true),
            pod("d", "fd00::4", true, false),
        ]);
        let slices = from_pods(&service(), &pods, &BTreeMap::from([(80, 20000), (443, 20001)]));
        assert_eq!(slices.len(), 2, "IPv4 and IPv6");
        let v4 = &slices[0];
        assert_eq!(v4.metadata.name.as_deref(), Some("agimo-ns-gw-1234-ipv4"));
        assert_eq!(v4.metadata.namespace.as_deref(), Some("ns"));
        let labels = v4.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "agimo-ns-gw-1234");
        assert_eq!(labels["team"], "a", "the Gateway's infrastructure labels");
        assert_eq!(labels[SLICE_MANAGED_BY_LABEL], SLICE_MANAGED_BY);
        // (address, ready, serving, terminating)
        type State = (String, Option<bool>, Option<bool>, Option<bool>);
        let states: Vec<State> = v4
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (e.addresses[0].clone(), c.ready, c.serving, c.terminating)
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("10.1.0.1".into(), Some(true), Some(true), Some(false)),
                ("10.1.0.2".into(), Some(false), Some(false), Some(false)),
                ("10.1.0.3".into(), Some(false), Some(true), Some(true)),
            ]
        );
        assert_eq!(
            v4.endpoints.as_ref().unwrap()[0].target_ref.as_ref().unwrap().namespace.as_deref(),
            Some("agimo-system")
        );
        let ports: Vec<(Option<String>, Option<i32>)> =
            v4.ports.iter().flatten().map(|p| (p.name.clone(), p.port)).collect();
        assert_eq!(ports, vec![(Some("port-80".into()), Some(20000)), (Some("port-443".into()), Some(20001))]);
        assert_eq!(slices[1].address_type, "IPv6");
        assert_eq!(slices[1].endpoints.as_ref().unwrap()[0].addresses, vec!["fd00::4".to_owned()]);
    }

    #[test]
    fn without_pods_the_slice_is_empty_but_there() {
        let slices = from_pods(&service(), &BTreeMap::new(), &BTreeMap::from([(80, 20000)]));
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].endpoints, Some(Vec::new()));
    }

    #[test]
    fn addresses_the_api_server_refuses_are_not_usable() {
        for bad in ["0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "::1", "fe80::1"] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        assert!(usable("10.245.0.1".parse().unwrap()));
    }

    #[test]
    fn a_changed_endpoint_is_not_up_to_date_but_foreign_labels_are() {
        let pods = BTreeMap::from([pod("a", "10.1.0.1", true, false)]);
        let want = from_pods(&service(), &pods, &BTreeMap::from([(80, 20000)])).remove(0);
        let mut have = want.clone();
        have.metadata.labels.as_mut().unwrap().insert("extra".into(), "x".into());
        assert!(up_to_date(&have, &want));
        let deleting = BTreeMap::from([pod("a", "10.1.0.1", true, true)]);
        let have = from_pods(&service(), &deleting, &BTreeMap::from([(80, 20000)])).remove(0);
        assert!(!up_to_date(&have, &want));
    }
}
