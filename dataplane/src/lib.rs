//! Agimo's dataplane: it serves the routing snapshot the controller compiles.
//!
//! ```text
//!  controller ──watch channel──► Dataplane::run ──store──► ArcSwap<Snapshot>
//!                                   │ opens/closes sockets        │ load (per request / handshake)
//!                                   ▼                             ▼
//!  client ──TCP──► accept loop ──► TLS (SNI from snapshot) ──► h1_server (HTTP/1.1 without a body)
//!                                                               │ or hyper (bodies, upgrades, h2, h2c)
//!                                            proxy::handle ◄────┘  route ─► filters ─► backend
//!                                               │                               │
//!                                               └── metrics (per host)          └──► upstream pool ──► endpoint
//! ```
//!
//! The run task is the only writer of the `ArcSwap`; requests only load it, so
//! a request in flight finishes on the snapshot it started with and a swap
//! drops no connection.
#![forbid(unsafe_code)]

pub mod admin;
mod body;
mod error;
mod gate;
mod h1;
mod h1_server;
mod h2guard;
mod listen;
pub mod metrics;
mod proxy;
mod server;
mod session;
mod tls;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agimo_shared::Snapshot;
pub use agimo_shared::path::EscapedSlashes;
use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::{ProxyError, REASON_HEADER};
pub use metrics::Metrics;
pub use server::{BindError, SocketState};

/// Dataplane settings; the defaults are safe for an edge proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Time allowed to send a complete HTTP/1.1 request head, counted from
    /// the connection's start or the end of the previous response (so it
    /// also closes idle keep-alive connections), and again from the first
    /// byte of a parked connection. Zero turns it off.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 gets a GOAWAY). Zero turns it off.
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers) accepted.
    pub max_request_header_bytes: usize,
    /// The most request headers accepted (HTTP/1.1).
    pub max_request_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// A connection whose client takes no response bytes for this long (a
    /// slow or stalled reader) is closed. Zero turns it off.
    pub send_timeout: Duration,
    /// Open client connections (websockets included) beyond which new ones
    /// are refused.
    pub max_connections: usize,
    /// What `%2F` and `%5C` in a request path do (the rest of the path is
    /// always normalised: [`agimo_shared::path`]).
    pub escaped_slashes: EscapedSlashes,
    pub tls_handshake_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// An HTTP/1.1 connection with nothing in flight and nothing sent for
    /// this long is parked: its server state and buffers are freed, and
    /// only its socket is kept until the client sends again. Zero never
    /// parks.
    pub park_idle_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            http2_max_concurrent_streams: 100,
            send_timeout: Duration::from_secs(60),
            max_connections: 50_000,
            escaped_slashes: EscapedSlashes::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
            park_idle_after: Duration::from_secs(1),
        }
    }
}

/// State shared by every task of the dataplane.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) http1: hyper::server::conn::http1::Builder,
    pub(crate) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Open client connections, upgraded ones (websockets) included.
    pub(crate) connections: Arc<AtomicUsize>,
    sockets: watch::Sender<SocketState>,
    /// The last snapshot whose sockets have been reconciled.
    applied: watch::Sender<Option<Arc<Snapshot>>>,
    /// Bumped at every swap: wakes requests held at the gate.
    pub(crate) swaps: watch::Sender<u64>,
    /// Cancelled when the listeners close at shutdown: requests held at the
    /// gate are answered then ([`ProxyError::ShuttingDown`]), not left to
    /// be cut at the end of the grace period.
    pub(crate) stopping: CancellationToken,
}

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
    shared: Arc<Shared>,
}

impl Dataplane {
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let upstream = upstream::Upstream::new(config.upstream_connect_timeout);
        let http1 = server::http1_builder(&config);
        let http2 = server::http2_builder(&config);
        Dataplane {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                config,
                metrics,
                upstream,
                http1,
                http2,
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                connections: Arc::new(AtomicUsize::new(0)),
                sockets: watch::Sender::new(SocketState::default()),
                applied: watch::Sender::new(None),
                swaps: watch::Sender::new(0),
                stopping: CancellationToken::new(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// True once the first snapshot is applied, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    /// Why the dataplane is or is not ready, as `/readyz` says it.
    pub fn readiness(&self) -> Readiness {
        if self.shared.draining.load(Ordering::Acquire) {
            Readiness::Draining
        } else if self.shared.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Loading
        }
    }

    /// Open client connections, upgraded ones (websockets) included.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown: readiness turns false at once. Cancel the
    /// `stop` token given to [`Dataplane::run`] to close the listeners and ask
    /// connections to finish, then [`Dataplane::drain`].
    pub fn begin_shutdown(&self) {
        self.shared.draining.store(true, Ordering::Release);
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
        self.shared.sockets.borrow().clone()
    }

    /// Follows [`Dataplane::sockets`] as it changes.
    pub fn watch_sockets(&self) -> watch::Receiver<SocketState> {
        self.shared.sockets.subscribe()
    }

    /// Applies every snapshot the controller sends until `stop` fires: swaps
    /// it in, then opens and closes sockets to match. This task is the only
    /// writer of the snapshot. Binds that fail are retried every second.
    /// When `stop` fires, requests held at the gate are answered 503
    /// `shutting-down`.
    pub async fn run(&self, snapshots: watch::Receiver<Arc<Snapshot>>, stop: CancellationToken) {
        self.apply_snapshots(snapshots, &stop).await;
        self.shared.stopping.cancel();
    }

    async fn apply_snapshots(&self, mut snapshots: watch::Receiver<Arc<Snapshot>>, stop: &CancellationToken) {
        let mut sockets = server::Sockets::default();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = snapshots.borrow_and_update().clone();
        self.shared.metrics.declare_hosts(snapshot.host_labels());
        self.shared.snapshot.store(snapshot.clone());
        loop {
            sockets.reconcile(&self.shared, &snapshot, stop).await;
            self.shared.sockets.send_if_modified(|state| {
                let new = sockets.state();
                let changed = *state != new;
                *state = new;
                changed
            });
            self.shared.ready.store(true, Ordering::Release);
            self.shared.applied.send_replace(Some(snapshot.clone()));
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
                    self.shared.metrics.declare_hosts(snapshot.host_labels());
                    self.shared.snapshot.store(snapshot.clone());
                    self.shared.swaps.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Waits until `snapshot` is served and its sockets are open (for tests
    /// and tools).
    pub async fn wait_for(&self, snapshot: &Arc<Snapshot>) {
        let mut applied = self.shared.applied.subscribe();
        let _ = applied.wait_for(|a| a.as_ref().is_some_and(|a| Arc::ptr_eq(a, snapshot))).await;
    }
}
