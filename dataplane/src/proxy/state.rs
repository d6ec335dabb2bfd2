//! What every request reads: the snapshot, the upstream pools, the metrics,
//! and what it knows of its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::Protocol;
use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The proxy's state, shared by every request.
pub(crate) struct Proxy {
    /// Stored by the run task alone; loaded per request.
    pub snapshot: ArcSwap<Snapshot>,
    pub config: Config,
    pub metrics: Metrics,
    /// Shared with the mirror tasks ([`super::mirror`]).
    pub upstream: Arc<Upstream>,
    /// Slots for RequestMirror copies in flight
    /// ([`Config::mirror_max_in_flight`]).
    pub mirror_slots: Arc<Semaphore>,
    /// Open client connections, upgraded ones (websockets) included.
    pub connections: Arc<AtomicUsize>,
    /// Bumped at every swap: wakes requests held at the gate.
    pub swaps: watch::Sender<u64>,
    /// Cancelled when the listeners close at shutdown: requests held at the
    /// gate are answered then ([`super::ProxyError::ShuttingDown`]), not
    /// left to be cut at the end of the grace period.
    pub stopping: CancellationToken,
}

impl Proxy {
    pub fn new(config: Config, metrics: Metrics) -> Self {
        Proxy {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            upstream: Arc::new(Upstream::new(config.upstream_connect_timeout)),
            mirror_slots: Arc::new(Semaphore::new(config.mirror_max_in_flight)),
            config,
            metrics,
            connections: Arc::new(AtomicUsize::new(0)),
            swaps: watch::Sender::new(0),
            stopping: CancellationToken::new(),
        }
    }
}

/// What a request knows about the connection it came on.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The address of the socket that accepted the connection.
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// The server name the TLS client sent (SNI), if any: requests for a
    /// host of another listener are misdirected (421).
    pub sni: Option<Box<str>>,
    /// The peer's IP as `X-Forwarded-For` gets it, formatted once.
    pub(super) peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, bind: SocketAddr, protocol: Protocol) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
        ConnInfo { peer, bind, protocol, sni: None, peer_ip }
    }

    /// This connection after its TLS handshake, with the SNI it sent.
    pub fn with_sni(&self, sni: Option<&str>) -> Self {
        ConnInfo { sni: sni.map(Box::from), ..self.clone() }
    }
}
