//! One attempt at a forwarded request: choose its backendRef and endpoint
//! (through the scale-to-zero gate on a gated route), then send it within
//! the rule's timeouts. [`super::forward`] makes one; [`super::retry`] makes
//! them again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use agimo_shared::snapshot::{Backend, BackendTarget, BackendTls, Backends, WeightedBackend};
use http::{Request, Response};
use tokio::net::TcpStream;

use super::error::ProxyError;
use super::gate;
use super::route::Routed;
use super::state::Proxy;
use crate::upstream::UpstreamError;
use crate::upstream::body::{Body, RequestBody, RequestGuard};

/// Where a request goes: its backendRef, backend and endpoint, and the
/// connection the gate made to it, if it made one.
pub(super) struct Target<'r> {
    pub chosen: &'r WeightedBackend,
    pub backend: Arc<Backend>,
    pub endpoint: SocketAddr,
    pub connected: Option<TcpStream>,
}

/// Picks the backendRef by weight, and an endpoint: at once on a route
/// without the gate; on a gated route, one the upstream has a connection
/// to, or one the gate connects to, waiting for a ready replica if there is
/// none ([`gate::admit`]). The request counts as active from here.
///
/// A retry passes the endpoint that failed (`retry_of`): another of the
/// backend's endpoints is chosen if it has one; and the request keeps the
/// active count it has in `guard` (moved to pending if the gate holds it).
pub(super) async fn choose<'r>(
    proxy: &'r Proxy,
    routed: &'r Routed,
    backends: &'r Backends,
    req: &Request<RequestBody>,
    started: Instant,
    guard: &mut RequestGuard,
    retry_of: Option<SocketAddr>,
) -> Result<Target<'r>, ProxyError> {
    let Routed { stats, rule, .. } = routed;
    let chosen = backends.pick(fastrand::u64(0..backends.total_weight()));
    let backend = match &chosen.target {
        BackendTarget::Invalid(reason) => return Err(ProxyError::InvalidBackend { reason: reason.clone() }),
        BackendTarget::Service(backend) => backend.clone(),
    };
    if let Some(BackendTls::Invalid(reason)) = &backend.tls {
        return Err(ProxyError::InvalidBackend { reason: reason.clone() });
    }
    let first = (!backend.endpoints.is_empty()).then(|| gate::pick_endpoint(&backend, retry_of));
    let Some(gate) = &rule.gate else {
        let endpoint = first.ok_or_else(|| ProxyError::NoReadyEndpoints { backend: backend.id.clone() })?;
        guard.active.get_or_insert_with(|| stats.active());
        return Ok(Target { chosen, backend, endpoint, connected: None });
    };
    // Scale-to-zero: the request goes to an endpoint the upstream has a
    // connection to, or makes one to first.
    let by_hyper = !crate::upstream::by_h1(req);
    if let Some(endpoint) = first
        && proxy.upstream.has_connection(backend.protocol, backend.origination(), by_hyper, endpoint)
    {
        guard.active.get_or_insert_with(|| stats.active());
        return Ok(Target { chosen, backend, endpoint, connected: None });
    }
    let gated = gate::Gated { proxy, rule, gate, backends, host: stats, started, hyper: by_hyper };
    let first = first.map(|endpoint| (chosen, backend, endpoint));
    let retry = retry_of.and_then(|failed| Some((guard.active.take()?, failed)));
    // Boxed: only requests that connect here pay for its state.
    let admitted = Box::pin(gate::admit(&gated, first, retry)).await?;
    guard.active = Some(admitted.active);
    Ok(Target {
        chosen: admitted.chosen,
        backend: admitted.backend,
        endpoint: admitted.endpoint,
        connected: admitted.connected,
    })
}

/// Sends the request to `endpoint` (on the gate's connection if it made
/// one) within the rule's timeouts: the request timeout counts from when
/// the request arrived, the backend one from when it is sent.
pub(super) async fn send(
    proxy: &Proxy,
    routed: &Routed,
    backend: &Backend,
    endpoint: SocketAddr,
    connected: Option<TcpStream>,
    req: Box<Request<RequestBody>>,
    started: Instant,
) -> Result<Response<Body>, ProxyError> {
    let timeouts = &routed.rule.timeouts;
    let upstream = &proxy.upstream;
    // The send is made in each arm: one made before the match would take
    // room in this future for every arm's copy of it.
    let sent = match (timeouts.request, timeouts.backend_request) {
        (None, None) => match connected {
            None => upstream.send(backend.protocol, backend.origination(), endpoint, req).await,
            // Boxed: only requests the gate connected pay for its state.
            Some(stream) => {
                Box::pin(upstream.send_on(backend.protocol, backend.origination(), endpoint, stream, req)).await
            }
        },
        (request, backend_request) => {
            let now = tokio::time::Instant::now();
            let request_deadline = request.map(|t| tokio::time::Instant::from_std(started + t));
            let backend_deadline = backend_request.map(|t| now + t);
            let deadline = [request_deadline, backend_deadline].into_iter().flatten().min().expect("one is set");
            let sent = match connected {
                None => {
                    tokio::time::timeout_at(
                        deadline,
                        upstream.send(backend.protocol, backend.origination(), endpoint, req),
                    )
                    .await
                }
                Some(stream) => {
                    let send_on =
                        Box::pin(upstream.send_on(backend.protocol, backend.origination(), endpoint, stream, req));
                    tokio::time::timeout_at(deadline, send_on).await
                }
            };
            sent.map_err(|_| {
                let which = if request_deadline == Some(deadline) { "request" } else { "backendRequest" };
                ProxyError::Timeout { backend: backend.id.clone(), timeout: which }
            })?
        }
    };
    sent.map_err(|e| match e {
        UpstreamError::Connect(source) => ProxyError::UpstreamConnect { backend: backend.id.clone(), endpoint, source },
        UpstreamError::Failed(source) => ProxyError::UpstreamFailed { backend: backend.id.clone(), endpoint, source },
        UpstreamError::RequestBody(source) => ProxyError::InvalidRequestBody { source },
        UpstreamError::Tls(source) => ProxyError::UpstreamTls { backend: backend.id.clone(), endpoint, source },
    })
}
