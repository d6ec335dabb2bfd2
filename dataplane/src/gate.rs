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
//! snapshot), never by polling. The per-host count of held requests lives
//! outside the snapshot, so it survives swaps: it is the host's
//! `pending_requests_total` ([`crate::metrics::HostStats::hold`]).

use std::collections::HashMap;
use std::sync::Arc;

use agimo_shared::snapshot::{Backend, BackendTarget, Backends, Gate};
use tokio::sync::watch;

use crate::error::ProxyError;

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
