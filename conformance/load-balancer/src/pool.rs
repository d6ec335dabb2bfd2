//! Load balancer addresses from the pool (`--pool`).
//!
//! A pure function of the Services that want an address, in priority order
//! (oldest first), and of what each already holds: the address this process
//! gave it earlier, else one it publishes in `status.loadBalancer.ingress`
//! (so addresses survive restarts). A Service keeps what it holds; one that
//! asks for `spec.loadBalancerIP` gets exactly that address if it is in the
//! pool and free, and none otherwise (as MetalLB does: handing out another
//! address than the one asked for would hide the mistake); the others get
//! the lowest free address. A Service that no longer claims an address (it
//! was deleted or changed type) simply no longer holds one, which frees it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ServiceRef;

/// A Service that wants a load balancer address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub service: ServiceRef,
    /// `spec.loadBalancerIP`, if set.
    pub requested: Option<IpAddr>,
    /// The addresses in its `status.loadBalancer.ingress`.
    pub published: Vec<IpAddr>,
}

/// Why a Service got no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `spec.loadBalancerIP` is outside the pool.
    OutsidePool { requested: IpAddr, pool: IpNet },
    /// `spec.loadBalancerIP` is held by another Service (or is one's external IP).
    Taken { requested: IpAddr, by: Option<ServiceRef> },
    /// Every address of the pool is in use.
    Exhausted { pool: IpNet },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OutsidePool { requested, pool } => {
                write!(f, "spec.loadBalancerIP {requested} is outside the address pool {pool}")
            }
            Refusal::Taken { requested, by: Some(by) } => {
                write!(f, "spec.loadBalancerIP {requested} is already assigned to Service {by}")
            }
            Refusal::Taken { requested, by: None } => {
                write!(
                    f,
                    "spec.loadBalancerIP {requested} is in use (an external IP or another load balancer's address)"
                )
            }
            Refusal::Exhausted { pool } => write!(f, "no free address left in the pool {pool}"),
        }
    }
}

/// The outcome: an address per Service, or the reason it has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub assigned: BTreeMap<ServiceRef, IpAddr>,
    pub refused: BTreeMap<ServiceRef, Refusal>,
}

/// Assigns addresses of `pool` to `claims` (in priority order). `held` are
/// the addresses assigned by the previous run of this function; `reserved`
/// addresses (external IPs, other load balancers' addresses) are never
/// handed out.
pub fn allocate(
    pool: &IpNet,
    claims: &[Claim],
    held: &BTreeMap<ServiceRef, IpAddr>,
    reserved: &BTreeSet<IpAddr>,
) -> Allocation {
    let mut taken: BTreeMap<IpAddr, &ServiceRef> = BTreeMap::new();
    let mut allocation = Allocation::default();
    let usable = |ip: &IpAddr| pool.contains(ip) && !reserved.contains(ip);

    // First, every Service keeps the address it holds, unless it now asks
    // for another one.
    for claim in claims {
        let kept = held
            .get(&claim.service)
            .into_iter()
            .chain(&claim.published)
            .find(|ip| usable(ip) && !taken.contains_key(ip) && claim.requested.is_none_or(|r| r == **ip));
        if let Some(&ip) = kept {
            taken.insert(ip, &claim.service);
            allocation.assigned.insert(claim.service.clone(), ip);
        }
    }
    // Then requested addresses, if free.
    for claim in claims {
        let Some(requested) = claim.requested else { continue };
        if allocation.assigned.contains_key(&claim.service) {
            continue;
        }
        let refusal = if !pool.contains(&requested) {
            Refusal::OutsidePool { requested, pool: *pool }
        } else if reserved.contains(&requested) {
            Refusal::Taken { requested, by: None }
        } else if let Some(by) = taken.get(&requested) {
            Refusal::Taken { requested, by: Some((*by).clone()) }
        } else {
            taken.insert(requested, &claim.service);
            allocation.assigned.insert(claim.service.clone(), requested);
            continue;
        };
        allocation.refused.insert(claim.service.clone(), refusal);
    }
    // Then the others get the lowest free address.
    let mut free = pool.hosts().filter(|ip| usable(ip) && !taken.contains_key(ip));
    for claim in claims {
        if claim.requested.is_some() || allocation.assigned.contains_key(&claim.service) {
            continue;
        }
        match free.next() {
            Some(ip) => {
                allocation.assigned.insert(claim.service.clone(), ip);
            }
            None => {
                allocation.refused.insert(claim.service.clone(), Refusal::Exhausted { pool: *pool });
            }
        }
    }
    allocation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(name: &str) -> ServiceRef {
        ServiceRef::new("ns", name)
    }

    fn mk_claim(name: &str, requested: Option<&str>, published: &[&str]) -> Claim {
        Claim { service: svc(name), requested: requested.map(ip), published: published.iter().map(|s| ip(s)).collect() }
    }

    fn assigned(a: &Allocation) -> Vec<(String, String)> {
        a.assigned.iter().map(|(k, v)| (k.name.clone(), v.to_string())).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn lowest_free_addresses_in_priority_order() {
        let pool: IpNet = "10.245.1.0/24".parse().unwrap();
        let claims = [mk_claim("b", None, &[]), mk_claim("a", None, &[])];
        let a = allocate(&pool, &claims, &BTreeMap::new(), &BTreeSet::new());
        // The network address is never handed out.
        assert_eq!(assigned(&a), pairs(&[("a", "10.245.1.2"), ("b", "10.245.1.1")]));
        assert!(a.refused.is_empty());
    }

    #[test]
    fn published_addresses_are_kept_across_restarts() {
        let pool: IpNet = "10.245.1.0/24".parse().unwrap();
        // After a restart nothing is held: "new" is the oldest, but "old"
        // keeps the address in its status; one outside the pool is not kept.
        let claims = [
            mk_claim("new", None, &[]),
            mk_claim("old", None, &["10.245.1.1"]),
            mk_claim("foreign", None, &["192.0.2.1"]),
        ];
        let a = allocate(&pool, &claims, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(assigned(&a), pairs(&[("foreign", "10.245.1.3"), ("new", "10.245.1.2"), ("old", "10.245.1.1")]));
        // The next run, with what it assigned held, gives the same answer,
        // also before the statuses are written.
        let again = allocate(&pool, &claims.map(|c| Claim { published: vec![], ..c }), &a.assigned, &BTreeSet::new());
        assert_eq!(again, a);
    }

    #[test]
    fn a_held_address_wins_over_a_published_one_and_conflicts_go_to_the_first() {
        let pool: IpNet = "10.245.1.0/24".parse().unwrap();
        let held = BTreeMap::from([(svc("a"), ip("10.245.1.7"))]);
        // Someone copied a's address into b's status: a (first) keeps it.
        let claims = [mk_claim("a", None, &["10.245.1.9"]), mk_claim("b", None, &["10.245.1.7"])];
        let a = allocate(&pool, &claims, &held, &BTreeSet::new());
        assert_eq!(assigned(&a), pairs(&[("a", "10.245.1.7"), ("b", "10.245.1.1")]));
    }

    #[test]
    fn requested_addresses_if_in_the_pool_and_free() {
        let pool: IpNet = "10.245.1.0/24".parse().unwrap();
        let held = BTreeMap::from([(svc("holder"), ip("10.245.1.5"))]);
        let reserved = BTreeSet::from([ip("10.245.1.1"), ip("10.245.1.6")]);
        let claims = [
            mk_claim("holder", None, &[]),
            mk_claim("wants-free", Some("10.245.1.50"), &[]),
            mk_claim("wants-held", Some("10.245.1.5"), &[]),
            mk_claim("wants-external", Some("10.245.1.6"), &[]),
            mk_claim("wants-outside", Some("10.245.2.1"), &[]),
            mk_claim("any", None, &[]),
        ];
        let a = allocate(&pool, &claims, &held, &reserved);
        // The reserved 10.245.1.1 is skipped.
        assert_eq!(
            assigned(&a),
            pairs(&[("any", "10.245.1.2"), ("holder", "10.245.1.5"), ("wants-free", "10.245.1.50")])
        );
        assert_eq!(
            a.refused[&svc("wants-held")],
            Refusal::Taken { requested: ip("10.245.1.5"), by: Some(svc("holder")) }
        );
        assert_eq!(a.refused[&svc("wants-external")], Refusal::Taken { requested: ip("10.245.1.6"), by: None });
        assert_eq!(a.refused[&svc("wants-outside")], Refusal::OutsidePool { requested: ip("10.245.2.1"), pool });
        assert_eq!(
            a.refused[&svc("wants-held")].to_string(),
            "spec.loadBalancerIP 10.245.1.5 is already assigned to Service ns/holder"
        );

        // Once the holder is gone, the address goes to the one that asked.
        let a = allocate(&pool, &claims[1..], &a.assigned, &reserved);
        assert_eq!(a.assigned[&svc("wants-held")], ip("10.245.1.5"));
    }

    #[test]
    fn a_service_that_asks_for_another_address_moves_to_it() {
        let pool: IpNet = "10.245.1.0/24".parse().unwrap();
        let held = BTreeMap::from([(svc("a"), ip("10.245.1.1"))]);
        let a = allocate(&pool, &[mk_claim("a", Some("10.245.1.9"), &["10.245.1.1"])], &held, &BTreeSet::new());
        assert_eq!(assigned(&a), pairs(&[("a", "10.245.1.9")]));
    }

    #[test]
    fn deleted_services_free_their_addresses_and_an_exhausted_pool_refuses() {
        let pool: IpNet = "10.245.1.0/30".parse().unwrap();
        let claims = [mk_claim("a", None, &[]), mk_claim("b", None, &[]), mk_claim("c", None, &[])];
        let first = allocate(&pool, &claims, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(assigned(&first), pairs(&[("a", "10.245.1.1"), ("b", "10.245.1.2")]));
        assert_eq!(first.refused[&svc("c")], Refusal::Exhausted { pool });
        // a is deleted: c gets its address, b keeps its own.
        let second = allocate(&pool, &claims[1..], &first.assigned, &BTreeSet::new());
        assert_eq!(assigned(&second), pairs(&[("b", "10.245.1.2"), ("c", "10.245.1.1")]));
        assert!(second.refused.is_empty());
    }
}
