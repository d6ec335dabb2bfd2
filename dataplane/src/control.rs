//! The dataplane's handle: it applies the snapshots the controller sends
//! (the only writer of the `ArcSwap`), opens and closes sockets to match,
//! and says whether the dataplane is ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agimo_shared::Snapshot;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::conn::{Server, SocketState, Sockets};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Whether the dataplane serves, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// No snapshot applied yet.
    Loading,
    Ready,
    /// Shutdown has begun.
    Draining,
}

/// A handle to the dataplane; cheap to clone.
#[derive(Clone)]
pub struct Dataplane {
    server: Arc<Server>,
    control: Arc<Control>,
}

/// The run task's state, and what it tells others.
struct Control {
    ready: AtomicBool,
    draining: AtomicBool,
    sockets: watch::Sender<SocketState>,
    /// The last snapshot whose sockets have been reconciled.
    applied: watch::Sender<Option<Arc<Snapshot>>>,
}

impl Dataplane {
    pub fn new(config: Config, metrics: Metrics) -> Self {
        Dataplane {
            server: Arc::new(Server::new(Proxy::new(config, metrics))),
            control: Arc::new(Control {
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                sockets: watch::Sender::new(SocketState::default()),
                applied: watch::Sender::new(None),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.server.proxy.metrics
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.server.proxy.snapshot.load_full()
    }

    /// True once the first snapshot is applied, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    /// Why the dataplane is or is not ready, as `/readyz` says it.
    pub fn readiness(&self) -> Readiness {
        if self.control.draining.load(Ordering::Acquire) {
            Readiness::Draining
        } else if self.control.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Loading
        }
    }

    /// Open client connections, upgraded ones (websockets) included.
    pub fn open_connections(&self) -> usize {
        self.server.proxy.connections.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown: readiness turns false at once. Cancel the
    /// `stop` token given to [`Dataplane::run`] to close the listeners and ask
    /// connections to finish, then [`Dataplane::drain`].
    pub fn begin_shutdown(&self) {
        self.control.draining.store(true, Ordering::Release);
    }

    /// Waits until every connection has closed or `grace` has passed;
    /// returns the number still open.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// The sockets listened on and the binds that failed.
    pub fn sockets(&self) -> SocketState {
        self.control.sockets.borrow().clone()
    }

    /// Follows [`Dataplane::sockets`] as it changes.
    pub fn watch_sockets(&self) -> watch::Receiver<SocketState> {
        self.control.sockets.subscribe()
    }

    /// Applies every snapshot the controller sends until `stop` fires: swaps
    /// it in, then opens and closes sockets to match. This task is the only
    /// writer of the snapshot. Binds that fail are retried every second.
    /// When `stop` fires, requests held at the gate are answered 503
    /// `shutting-down`.
    pub async fn run(&self, snapshots: watch::Receiver<Arc<Snapshot>>, stop: CancellationToken) {
        self.apply_snapshots(snapshots, &stop).await;
        self.server.proxy.stopping.cancel();
    }

    async fn apply_snapshots(&self, mut snapshots: watch::Receiver<Arc<Snapshot>>, stop: &CancellationToken) {
        let mut sockets = Sockets::default();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = snapshots.borrow_and_update().clone();
        self.server.proxy.metrics.declare_hosts(snapshot.host_labels());
        self.server.proxy.snapshot.store(snapshot.clone());
        loop {
            sockets.reconcile(&self.server, &snapshot, stop).await;
            self.control.sockets.send_if_modified(|state| {
                let new = sockets.state();
                let changed = *state != new;
                *state = new;
                changed
            });
            self.control.ready.store(true, Ordering::Release);
            self.control.applied.send_replace(Some(snapshot.clone()));
            tracing::debug!(binds = snapshot.binds.len(), "snapshot applied");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = retry.tick(), if sockets.has_errors() => {}
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // The controller is gone: keep serving the last snapshot.
                        stop.cancelled().await;
                        return;
                    }
                    snapshot = snapshots.borrow_and_update().clone();
                    // Requests from now on see the new snapshot; requests in
                    // flight finish on the one they started with; held ones
                    // look again.
                    self.server.proxy.metrics.declare_hosts(snapshot.host_labels());
                    self.server.proxy.snapshot.store(snapshot.clone());
                    self.server.proxy.swaps.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Waits until `snapshot` is served and its sockets are open (for tests
    /// and tools).
    pub async fn wait_for(&self, snapshot: &Arc<Snapshot>) {
        let mut applied = self.control.applied.subscribe();
        let _ = applied.wait_for(|a| a.as_ref().is_some_and(|a| Arc::ptr_eq(a, snapshot))).await;
    }
}
