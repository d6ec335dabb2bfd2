//! The load balancer of `conformance/local-cluster`, what kind clusters get
//! from cloud-provider-kind: Services of type LoadBalancer get an address
//! from a pool (`--pool`), published in `status.loadBalancer.ingress`, and
//! every load balancer address and `spec.externalIPs` entry is served: a
//! listener per address and TCP Service port forwards each connection to a
//! ready endpoint of the Service (round robin; one attempt, as a cloud load
//! balancer makes). The local cluster's kube-proxy also knows these
//! addresses (`ipMode: VIP`): traffic from pods and from the cluster's
//! namespace is translated by its rules before it reaches these listeners,
//! as in-cluster traffic to a load balancer IP is in any cluster; the
//! listeners serve what kube-proxy leaves alone.
//!
//! ```text
//!   kube-apiserver ──watch Services, EndpointSlices──▶ reflector stores
//!                                                         │ on every change
//!                                                         ▼
//!                       plan(services, slices, held addresses) ── pure, no I/O
//!                          │ addresses (pool)     │ statuses             │ listeners: IP:port → endpoints
//!                          ▼                      ▼                      ▼
//!                     log + Events       services/status (merge patch)  forward: accept ─▶ connect a ready
//!                                                                        endpoint (one try) ─▶ copy both ways
//!
//!   netns agimo:  10.245.0.0/16 is a local route on lo, so the pool
//!                 (10.245.1.0/24) and external IPs there can be bound without
//!                 configuring addresses; pods 10.244.1.x behind bridge agimo0
//! ```
//!
//! The plan is a function of the whole world plus the addresses handed out
//! so far ([`plan::plan`]); the runtime ([`controller`]) only watches, runs
//! it, and applies the difference.

#![forbid(unsafe_code)]

pub mod controller;
pub mod forward;
pub mod plan;
pub mod pool;
pub mod status;

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

/// Everything the load balancer is told on its command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses handed to Services of type LoadBalancer.
    pub pool: IpNet,
    /// `spec.loadBalancerClass` values handled besides none (Services
    /// without a class are always handled, as by a cloud provider).
    pub classes: Vec<String>,
    /// How long connecting to an endpoint may take before the client's
    /// connection is closed.
    pub connect_timeout: Duration,
}

/// A Service by namespace and name, shown as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceRef {
        ServiceRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
