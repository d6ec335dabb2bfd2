//! Agimo's dataplane: it serves the routing snapshot the controller compiles.
//!
//! ```text
//!  controller ──watch channel──► Dataplane::run ──store──► ArcSwap<Snapshot>
//!                                   │ opens/closes sockets        │ load (per request / handshake)
//!                                   ▼                             ▼
//!  client ──TCP──► accept loop ──► TLS (SNI from snapshot) ──► hyper (h1, h2, h2c)
//!                                                               │
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
pub mod metrics;
mod proxy;
mod server;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agimo_shared::Snapshot;
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::{ProxyError, REASON_HEADER};
pub use metrics::Metrics;

/// Dataplane settings; the defaults are safe for an edge proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where listeners of Gateways without `spec.addresses` bind.
    pub bind_address: IpAddr,
    /// Time allowed to send a complete HTTP/1.1 request head, counted from
    /// the connection's start or the end of the previous response (so it
    /// also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 gets a GOAWAY).
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers) accepted.
    pub max_request_header_bytes: usize,
    /// The most request headers accepted (HTTP/1.1).
    pub max_request_headers: usize,
    pub http2_max_concurrent_streams: u32,
    pub tls_handshake_timeout: Duration,
    pub upstream_connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            http2_max_concurrent_streams: 100,
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
        }
    }
}

/// State shared by every task of the dataplane.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) upstream: Client<HttpConnector, Incoming>,
    pub(crate) http: auto::Builder<TokioExecutor>,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Open client connections, upgraded ones (websockets) included.
    pub(crate) connections: Arc<AtomicUsize>,
    sockets: Mutex<server::Sockets>,
}

/// A handle to the dataplane; cheap to clone.
#[derive(Clone)]
pub struct Dataplane {
    shared: Arc<Shared>,
}

impl Dataplane {
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        let upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        let http = server::http_builder(&config);
        Dataplane {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                config,
                metrics,
                upstream,
                http,
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                connections: Arc::new(AtomicUsize::new(0)),
                sockets: Mutex::new(server::Sockets::default()),
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
        self.shared.ready.load(Ordering::Acquire) && !self.shared.draining.load(Ordering::Acquire)
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

    /// The socket addresses being listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.lock_sockets().addresses()
    }

    /// Addresses that could not be bound in the last swap, with the error.
    pub fn bind_errors(&self) -> BTreeMap<SocketAddr, String> {
        self.lock_sockets().errors.clone()
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, server::Sockets> {
        self.shared.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies every snapshot the controller sends until `stop` fires: opens
    /// the sockets a snapshot needs, swaps it in, then closes sockets it no
    /// longer needs. This task is the only writer of the snapshot.
    pub async fn run(&self, mut snapshots: watch::Receiver<Arc<Snapshot>>, stop: CancellationToken) {
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            self.apply(snapshot, &stop);
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // The controller is gone: keep serving the last snapshot.
                        stop.cancelled().await;
                        return;
                    }
                }
            }
        }
    }

    fn apply(&self, snapshot: Arc<Snapshot>, stop: &CancellationToken) {
        let mut sockets = self.lock_sockets();
        sockets.open(&self.shared, &snapshot, stop);
        self.shared.snapshot.store(snapshot.clone());
        sockets.close_unused(&self.shared, &snapshot);
        self.shared.ready.store(true, Ordering::Release);
        tracing::debug!(binds = snapshot.binds.len(), "snapshot applied");
    }

    /// Waits until `snapshot` is the one being served (for tests and tools).
    pub async fn wait_for(&self, snapshot: &Arc<Snapshot>) {
        while !Arc::ptr_eq(&self.shared.snapshot.load_full(), snapshot) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
