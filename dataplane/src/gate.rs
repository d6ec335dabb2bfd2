//! The scale-to-zero gate: a request whose backends have no ready endpoint
//! waits, without a thread, until a snapshot swap brings one, then goes to
//! it.
//!
//! ```text
//!  request ─► no ready endpoint ─► Held (pending_requests_total +1, per-host cap)
//!                                    │  waits on: snapshot swaps │ wait-timeout │ client gone
//!                                    ▼
//!        swap: a backend of the rule has endpoints ─► forward (pending −1)
//! ```
//!
//! Waiters are woken by swaps (EndpointSlice changes compiled into a new
//! snapshot), never by polling. State lives here, outside the snapshot, so it
//! survives swaps: the per-host counts of held requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agimo_shared::snapshot::{Backend, BackendTarget, Backends, Gate};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::metrics::{HostStats, Pending};

/// Held requests per `host` label, to enforce `max-pending`.
#[derive(Default)]
pub struct Waiting {
    per_host: Mutex<HashMap<Arc<str>, usize>>,
}

/// One held request; counts in `pending_requests_total` until dropped
/// (released, timed out, or the client went away).
pub struct Held<'a> {
    waiting: &'a Waiting,
    host: Arc<str>,
    _pending: Pending,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut per_host = self.waiting.per_host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_host.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                per_host.remove(&self.host);
            }
        }
    }
}

impl Waiting {
    /// Admits one more held request for `host`, or refuses it beyond `max`.
    pub fn enter<'a>(&'a self, stats: &Arc<HostStats>, max: usize) -> Result<Held<'a>, ProxyError> {
        let host = stats.label();
        let mut per_host = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_host.entry(host.clone()).or_insert(0);
        if *n >= max {
            return Err(ProxyError::TooManyPending { host: host.to_string(), max });
        }
        *n += 1;
        Ok(Held { waiting: self, host: host.clone(), _pending: stats.pending() })
    }
}

/// The backends of a rule that have ready endpoints in the current
/// snapshot, with their weights; the request's rule may come from an older
/// snapshot, so backends are looked up again by id.
pub fn ready_backends(backends: &Backends, current: &HashMap<String, Arc<Backend>>) -> Vec<(usize, u32, Arc<Backend>)> {
    backends
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, wb)| match &wb.target {
            BackendTarget::Service(b) => {
                let now = current.get(&b.id).unwrap_or(b);
                (!now.endpoints.is_empty()).then(|| (i, wb.weight, now.clone()))
            }
            BackendTarget::Invalid(_) => None,
        })
        .collect()
}

/// Chooses among ready backends by weight.
pub fn pick_weighted(ready: &[(usize, u32, Arc<Backend>)]) -> Option<(usize, Arc<Backend>)> {
    let total: u64 = ready.iter().map(|(_, w, _)| u64::from(*w)).sum();
    if total == 0 {
        return ready.first().map(|(i, _, b)| (*i, b.clone()));
    }
    let mut roll = fastrand::u64(0..total);
    for (i, w, b) in ready {
        if roll < u64::from(*w) {
            return Some((*i, b.clone()));
        }
        roll -= u64::from(*w);
    }
    None
}

/// Waits until a backend of `backends` has a ready endpoint; returns its
/// index in the rule and the backend as now. Each snapshot swap wakes every
/// waiter once.
pub async fn wait_for_ready(
    gate: &Gate,
    backends: &Backends,
    snapshot: impl Fn() -> Arc<agimo_shared::Snapshot>,
    swaps: &mut watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    host: &str,
) -> Result<(usize, Arc<Backend>), ProxyError> {
    loop {
        swaps.borrow_and_update();
        let current = snapshot();
        if let Some(found) = pick_weighted(&ready_backends(backends, &current.backends)) {
            return Ok(found);
        }
        tokio::select! {
            changed = swaps.changed() => {
                if changed.is_err() {
                    // The dataplane is shutting down: no swap will come.
                    tokio::time::sleep_until(deadline).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ProxyError::WaitTimeout { host: host.to_owned(), waited: gate.wait_timeout });
            }
        }
    }
}
