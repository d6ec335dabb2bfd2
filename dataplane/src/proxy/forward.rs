//! What a matched rule does with a request: answer it (an invalid rule, a
//! redirect) or forward it: choose a backend and endpoint (through the
//! scale-to-zero gate on a gated route), rewrite the request, send it within
//! the rule's timeouts, and pass the response or the upgraded stream back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use agimo_shared::filters::{Redirect, RedirectRequest};
use agimo_shared::hostname::normalize_host;
use agimo_shared::snapshot::{Action, Backend, BackendTarget, BackendTls, Backends, WeightedBackend};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::error::ProxyError;
use super::gate;
use super::headers::{prepare_upstream_request, strip_hop_by_hop};
use super::route::{Routed, request_authority};
use super::state::{ConnInfo, Proxy};
use crate::activity::OpenConnection;
use crate::upstream::UpstreamError;
use crate::upstream::body::{Body, RequestBody, RequestGuard};

/// Answers or forwards a routed request.
pub(super) async fn apply(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: Box<Request<RequestBody>>,
    routed: &Routed,
    started: Instant,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, ProxyError> {
    match &routed.rule.action {
        Action::Reject(r) => Err(ProxyError::InvalidRule { status: r.status, reason: r.reason.clone() }),
        Action::Redirect(redirect) => Ok(self::redirect(conn, &req, redirect, routed.listener_port)),
        Action::Forward(backends) => forward(proxy, conn, req, routed, backends, started, guard).await,
    }
}

/// A RequestRedirect filter's answer.
fn redirect(conn: &ConnInfo, req: &Request<RequestBody>, redirect: &Redirect, listener_port: u16) -> Response<Body> {
    let authority = request_authority(req).unwrap_or_default();
    let location = redirect.location(&RedirectRequest {
        scheme: conn.protocol.scheme(),
        host: &normalize_host(authority),
        listener_port,
        path: req.uri().path(),
        query: req.uri().query(),
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = redirect.status;
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Where a request goes: its backendRef, backend and endpoint, and the
/// connection the gate made to it, if it made one.
struct Target<'r> {
    chosen: &'r WeightedBackend,
    backend: Arc<Backend>,
    endpoint: SocketAddr,
    connected: Option<TcpStream>,
}

async fn forward(
    proxy: &Proxy,
    conn: &ConnInfo,
    mut req: Box<Request<RequestBody>>,
    routed: &Routed,
    backends: &Backends,
    started: Instant,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, ProxyError> {
    let rule = &routed.rule;
    let target = choose(proxy, routed, backends, &req, started, guard).await?;
    let upgrade = prepare_upstream_request(&mut req, conn, &[&rule.filters, &target.chosen.filters]);
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    let Target { chosen, backend, endpoint, connected } = target;
    let mut response = send(proxy, routed, &backend, endpoint, connected, req, started).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_client_upgrade) = on_client_upgrade
    {
        let on_backend_upgrade = hyper::upgrade::on(&mut response);
        // The websocket (or other upgraded stream) counts as active until it closes.
        let guards = (guard.active.take(), OpenConnection::new(&proxy.connections));
        tokio::spawn(tunnel(on_client_upgrade, on_backend_upgrade, backend.id.clone(), guards));
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    strip_hop_by_hop(response.headers_mut(), false);
    // Response filters: the backendRef's first, then the rule's.
    for filters in [&chosen.filters, &rule.filters] {
        if let Some(modifier) = &filters.response_headers {
            modifier.apply(response.headers_mut());
        }
    }
    Ok(response)
}

/// Picks the backendRef by weight, and an endpoint: at once on a route
/// without the gate; on a gated route, one the upstream has a connection
/// to, or one the gate connects to, waiting for a ready replica if there is
/// none ([`gate::admit`]). The request counts as active from here.
async fn choose<'r>(
    proxy: &'r Proxy,
    routed: &'r Routed,
    backends: &'r Backends,
    req: &Request<RequestBody>,
    started: Instant,
    guard: &mut RequestGuard,
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
    let first = (!backend.endpoints.is_empty()).then(|| backend.endpoints[fastrand::usize(0..backend.endpoints.len())]);
    let Some(gate) = &rule.gate else {
        let endpoint = first.ok_or_else(|| ProxyError::NoReadyEndpoints { backend: backend.id.clone() })?;
        guard.active = Some(stats.active());
        return Ok(Target { chosen, backend, endpoint, connected: None });
    };
    // Scale-to-zero: the request goes to an endpoint the upstream has a
    // connection to, or makes one to first.
    let by_hyper = !crate::upstream::by_h1(req);
    if let Some(endpoint) = first
        && proxy.upstream.has_connection(backend.protocol, backend.origination(), by_hyper, endpoint)
    {
        guard.active = Some(stats.active());
        return Ok(Target { chosen, backend, endpoint, connected: None });
    }
    let gated = gate::Gated { proxy, rule, gate, backends, host: stats, started, hyper: by_hyper };
    let first = first.map(|endpoint| (chosen, backend, endpoint));
    // Boxed: only requests that connect here pay for its state.
    let admitted = Box::pin(gate::admit(&gated, first)).await?;
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
async fn send(
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

/// Copies an upgraded connection (a websocket) both ways until either side
/// closes; `guards` count it as an active request and an open connection
/// meanwhile.
async fn tunnel<G>(
    on_client_upgrade: hyper::upgrade::OnUpgrade,
    on_backend_upgrade: hyper::upgrade::OnUpgrade,
    backend_id: String,
    guards: G,
) {
    let _guards = guards;
    match tokio::try_join!(on_client_upgrade, on_backend_upgrade) {
        Ok((client, backend)) => {
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut backend = hyper_util::rt::TokioIo::new(backend);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(backend = %backend_id, error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::warn!(backend = %backend_id, error = %e, "protocol upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use agimo_shared::snapshot::{Filters, ObjectRef, Protocol, Rejection, Rule, Timeouts};

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    /// An invalid rule is answered with the status its rejection carries,
    /// whatever the compiler chose.
    #[tokio::test]
    async fn an_invalid_rule_answers_its_rejections_status() {
        let proxy = Proxy::new(Config::default(), Metrics::new());
        let conn = ConnInfo::new("192.0.2.1:5000".parse().unwrap(), "127.0.0.1:80".parse().unwrap(), Protocol::Http);
        for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::SERVICE_UNAVAILABLE] {
            let rule = Arc::new(Rule {
                route: ObjectRef { namespace: "ns".into(), name: "r".into() },
                index: 0,
                name: None,
                filters: Filters::default(),
                timeouts: Timeouts::default(),
                gate: None,
                action: Action::Reject(Rejection { status, reason: "why".into() }),
            });
            let routed = Routed { stats: proxy.metrics.host("a.example"), rule, listener_port: 80 };
            let req = Box::new(Request::get("/").body(RequestBody::Empty).unwrap());
            let answered = apply(&proxy, &conn, req, &routed, Instant::now(), &mut RequestGuard::default()).await;
            let response = answered.err().expect("an error").into_response();
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()[crate::proxy::REASON_HEADER], "invalid-rule");
        }
    }
}
