//! What this replica's gate holds and serves for a trigger: the `host`
//! series of the dataplane's metrics, summed over the trigger's hosts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agimo_dataplane::Dataplane;
use tokio::sync::watch;
use tonic::Status;

use crate::trigger::{Target, Trigger};

/// A host that received a request this recently is active, even with
/// nothing in flight now (a request that came and went between two looks
/// still counts).
pub const ACTIVITY_WINDOW: Duration = Duration::from_secs(2);

/// Pending and active requests of a trigger's hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub pending: u64,
    pub active: u64,
    /// A request arrived within [`ACTIVITY_WINDOW`].
    pub recent: bool,
}

impl Load {
    pub fn is_active(&self) -> bool {
        self.pending > 0 || self.active > 0 || self.recent
    }

    /// The metric KEDA and the HPA scale on.
    pub fn value(&self) -> u64 {
        self.pending + self.active
    }
}

/// `requests_total` of a host when last looked at, and when it last moved.
#[derive(Clone, Copy, Debug)]
struct Seen {
    requests: u64,
    moved: Option<Instant>,
}

/// This replica's side: reads the dataplane's snapshot and metrics.
#[derive(Clone)]
pub struct Local {
    dataplane: Dataplane,
    seen: Arc<Mutex<HashMap<Arc<str>, Seen>>>,
}

impl Local {
    pub fn new(dataplane: Dataplane) -> Self {
        Local { dataplane, seen: Arc::default() }
    }

    /// Changes each time a request starts being held here.
    pub fn watch_held(&self) -> watch::Receiver<u64> {
        self.dataplane.metrics().watch_held()
    }

    /// The `host` labels a trigger reads, or why there are none.
    pub fn hosts(&self, trigger: &Trigger) -> Result<Vec<Arc<str>>, Status> {
        let snapshot = self.dataplane.snapshot();
        let labels = snapshot.host_labels();
        if labels.is_empty() && !self.dataplane.is_ready() {
            return Err(Status::unavailable("Agimo has not loaded its configuration yet"));
        }
        match &trigger.target {
            Target::Route(route) => {
                let hosts = snapshot.route_host_labels(route);
                if hosts.is_empty() {
                    return Err(Status::not_found(format!(
                        "HTTPRoute {route} is not served by this Agimo: no Gateway of its class has it attached and accepted"
                    )));
                }
                Ok(hosts.into_iter().collect())
            }
            Target::Host(host) => match labels.get(host.as_str()) {
                Some(label) => Ok(vec![label.clone()]),
                None => Err(Status::not_found(format!(
                    "host {host:?} is not a hostname of any HTTPRoute served by this Agimo \
                     (write it as on the route, e.g. app.example.com or *.example.com)"
                ))),
            },
        }
    }

    /// The trigger's load on this replica now.
    pub fn load(&self, trigger: &Trigger) -> Result<Load, Status> {
        let hosts = self.hosts(trigger)?;
        let now = Instant::now();
        let mut load = Load::default();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for label in hosts {
            let stats = self.dataplane.metrics().host(&label);
            load.pending += stats.pending();
            load.active += stats.in_flight();
            let requests = stats.requests();
            // The first look knows nothing of when earlier requests came.
            let entry = seen.entry(label).or_insert(Seen { requests, moved: None });
            if entry.requests != requests {
                *entry = Seen { requests, moved: Some(now) };
            }
            load.recent |= entry.moved.is_some_and(|at| now.duration_since(at) < ACTIVITY_WINDOW);
        }
        Ok(load)
    }
}
