//! TLSRoutes: a connection on a TLS listener, its SNI read from its
//! ClientHello by the connection layer, goes to the route its SNI selects
//! and on to one of the route's backend endpoints, through the
//! scale-to-zero gate when the route is gated. What the connection layer
//! then copies to it is the client's TLS (the listener passes TLS through)
//! or the plaintext (the listener terminates TLS).
//!
//! ```text
//!  SNI ──► listener ──► TLSRoute ──► backendRef (by weight) ──► gate (held at zero) ──► endpoint
//! ```
//!
//! A connection nothing serves (no listener or route for its SNI, no usable
//! backend, a wait that timed out) gets `None`: the caller closes it
//! without a TLS alert, as a load balancer that cannot route it would. It
//! counts as a request of its host (the SNI) in the metrics, held while it
//! waits for a ready endpoint and active while it is open, so KEDA scales
//! TLS workloads as HTTP ones.

use std::time::Instant;

use agimo_shared::matching::RequestView;
use agimo_shared::snapshot::{Action, BackendTarget, TlsMode};
use http::{HeaderMap, Method};
use tokio::net::TcpStream;

use super::gate::{Gated, admit, pick_endpoint};
use super::state::{ConnInfo, Proxy};
use crate::metrics::Active;

/// A TLSRoute connection's way to its backend.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    /// The mode of the listener the SNI chose.
    pub mode: TlsMode,
    /// Counts the connection active for its host while it is open.
    pub active: Active,
}

/// The connection to a backend endpoint for `sni`; `None` (logged) when
/// nothing serves it.
pub(crate) async fn open(proxy: &Proxy, conn: &ConnInfo, sni: &str) -> Option<Upstream> {
    // Held while the connection waits at the gate: a full reference.
    let snapshot = proxy.snapshot.load_full();
    let bind = snapshot.bind(conn.bind).filter(|b| b.protocol == conn.protocol)?;
    let Some(listener) = bind.listener_for_sni(Some(sni)) else {
        tracing::debug!(peer = %conn.peer, %sni, "TLS: no listener for this SNI; closed");
        return None;
    };
    let mode = listener.tls_mode.unwrap_or(TlsMode::Passthrough);
    let headers = HeaderMap::new();
    let view = RequestView::new(&Method::GET, "/", None, &headers);
    let Some((bucket, entry)) = listener.routes.find(sni, &view) else {
        tracing::debug!(peer = %conn.peer, %sni, "TLS: no TLSRoute for this SNI; closed");
        return None;
    };
    let (stats, rule) = (proxy.metrics.host(&bucket.label), entry.rule.clone());
    stats.request();
    let Action::Forward(backends) = &rule.action else {
        tracing::warn!(route = %rule.route, %sni, "TLS: the route has no usable backend; closed");
        return None;
    };
    // By weight among all the rule's backends: "if an invalid backend is
    // requested to have 80% of requests, then 80% of requests must be
    // rejected instead."
    let chosen = backends.pick(fastrand::u64(0..backends.total_weight().max(1)));
    let backend = match &chosen.target {
        BackendTarget::Service(b) => snapshot.backends.get(&b.id).unwrap_or(b).clone(),
        BackendTarget::Invalid(why) => {
            tracing::warn!(route = %rule.route, %sni, why, "TLS: invalid backend; closed");
            return None;
        }
    };
    let ready = (!backend.endpoints.is_empty()).then(|| {
        let endpoint = pick_endpoint(&backend, None);
        (chosen, backend.clone(), endpoint)
    });
    let (endpoint, connected, active) = match (&rule.gate, ready) {
        (Some(gate), next) => {
            let g = Gated { proxy, rule: &rule, gate, backends, host: &stats, started: Instant::now(), hyper: true };
            match admit(&g, next, None).await {
                Ok(admitted) => (admitted.endpoint, admitted.connected, admitted.active),
                Err(e) => {
                    tracing::warn!(route = %rule.route, %sni, reason = e.reason(), error = %e, "TLS: closed");
                    return None;
                }
            }
        }
        (None, Some((_, _, endpoint))) => (endpoint, None, stats.active()),
        (None, None) => {
            tracing::warn!(route = %rule.route, %sni, backend = %backend.id, "TLS: no ready endpoint; closed");
            return None;
        }
    };
    let stream = match connected {
        Some(stream) => stream,
        None => match tokio::time::timeout(proxy.config.upstream_connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(route = %rule.route, %sni, %endpoint, error = %e, "TLS: cannot connect");
                return None;
            }
            Err(_) => {
                tracing::warn!(route = %rule.route, %sni, %endpoint, "TLS: connect timed out");
                return None;
            }
        },
    };
    let _ = stream.set_nodelay(true);
    Some(Upstream { stream, mode, active })
}
