//! Gateway addresses from a pool (`--gateway-address-pool`).
//!
//! Every replica runs this on the same world and gets the same answer: a
//! Gateway keeps the pool address already published in its
//! `status.addresses`; the others get the lowest free address, oldest
//! Gateway first. Gateways that request `spec.addresses` are not assigned one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use agimo_shared::snapshot::ObjectRef;
use ipnet::IpNet;

use crate::api::Gateway;
use crate::world::World;

/// Assigns a pool address to each of our Gateways without `spec.addresses`.
pub fn allocate(world: &World, pool: &IpNet) -> BTreeMap<ObjectRef, IpAddr> {
    let gateways = world.our_gateways_oldest_first();
    let requested =
        |g: &Gateway| g.spec.addresses.iter().flatten().any(|a| a.value.as_deref().is_some_and(|v| !v.is_empty()));
    // Addresses Gateways asked for explicitly are never handed out.
    let mut taken: BTreeSet<IpAddr> = gateways
        .iter()
        .flat_map(|(_, g)| g.spec.addresses.iter().flatten())
        .filter_map(|a| a.value.as_deref()?.parse().ok())
        .collect();
    let mut assigned = BTreeMap::new();
    // First, every Gateway keeps the address it already has.
    for (key, gateway) in gateways.iter().filter(|(_, g)| !requested(g)) {
        let published = gateway
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| a.value.parse::<IpAddr>().ok())
            .find(|ip| pool.contains(ip) && !taken.contains(ip));
        if let Some(ip) = published {
            taken.insert(ip);
            assigned.insert((*key).clone(), ip);
        }
    }
    // Then the others get the lowest free address.
    let mut free = pool.hosts().filter(|ip| !taken.contains(ip));
    for (key, _) in gateways.iter().filter(|(_, g)| !requested(g)) {
        if assigned.contains_key(*key) {
            continue;
        }
        match free.next() {
            Some(ip) => {
                assigned.insert((*key).clone(), ip);
            }
            None => tracing::warn!(gateway = %key, pool = %pool, "the Gateway address pool is exhausted"),
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::files::load_str;

    fn world(extra: &str) -> World {
        load_str(
            "t.yaml",
            &format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: agimo}}
spec: {{controllerName: agimo.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: other}}
spec: {{controllerName: example.com/other}}
{extra}"
            ),
        )
        .unwrap()
    }

    fn gateway(name: &str, created: &str, extra: &str) -> String {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: ns, creationTimestamp: '{created}'}}
spec:
  gatewayClassName: agimo
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
{extra}"
        )
    }

    #[test]
    fn oldest_first_and_published_addresses_are_kept() {
        let pool: IpNet = "10.245.0.0/29".parse().unwrap();
        let w = world(
            &(gateway("b", "2026-01-02T00:00:00Z", "")
                + &gateway(
                    "a",
                    "2026-01-03T00:00:00Z",
                    "status: {addresses: [{type: IPAddress, value: 10.245.0.1}]}\n",
                )
                + &gateway("c", "2026-01-01T00:00:00Z", "")
                + &gateway("fixed", "2026-01-01T00:00:00Z", "  addresses: [{value: 10.245.0.2}]\n")),
        );
        let got = allocate(&w, &pool);
        let ip = |n: &str| got.get(&ObjectRef { namespace: "ns".into(), name: n.into() }).map(|i| i.to_string());
        // `a` keeps its published address even though it is the newest.
        assert_eq!(ip("a").as_deref(), Some("10.245.0.1"));
        // 10.245.0.2 is requested by `fixed`, so `c` (older) then `b` get .3, .4.
        assert_eq!(ip("c").as_deref(), Some("10.245.0.3"));
        assert_eq!(ip("b").as_deref(), Some("10.245.0.4"));
        assert_eq!(ip("fixed"), None);
        assert_eq!(allocate(&w, &pool), got, "allocation is deterministic");
    }

    #[test]
    fn an_exhausted_pool_leaves_gateways_without_address() {
        let pool: IpNet = "10.245.0.0/30".parse().unwrap();
        let w = world(
            &(gateway("a", "2026-01-01T00:00:00Z", "")
                + &gateway("b", "2026-01-02T00:00:00Z", "")
                + &gateway("c", "2026-01-03T00:00:00Z", "")),
        );
        assert_eq!(allocate(&w, &pool).len(), 2);
    }
}
