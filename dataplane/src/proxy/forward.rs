//! What a matched rule does with a request: answer it (an invalid rule, a
//! redirect) or forward it: choose a backend and endpoint (through the
//! scale-to-zero gate on a gated route), rewrite the request, send it within
//! the rule's timeouts, and pass the response or the upgraded stream back.

use std::time::Instant;

use agimo_shared::cors::Cors;
use agimo_shared::filters::{Redirect, RedirectRequest};
use agimo_shared::hostname::normalize_host;
use agimo_shared::snapshot::{Action, Backends, Rule, WeightedBackend};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::attempt::{Target, choose, send};
use super::error::ProxyError;
use super::headers::{is_upgrade, prepare_upstream_request, strip_hop_by_hop};
use super::retry;
use super::route::{Routed, request_authority};
use super::state::{ConnInfo, Proxy};
use crate::activity::OpenConnection;
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
    let Some(cors) = &routed.rule.filters.cors else {
        return act(proxy, conn, req, routed, started, guard).await;
    };
    // CORS: the gateway answers preflights itself (a scaled-to-zero
    // backend is not woken for one) and adds the headers to the responses
    // of the rule's action.
    if Cors::is_preflight(req.method(), req.headers()) {
        let (status, headers) = cors.preflight(req.headers());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = act(proxy, conn, req, routed, started, guard).await?;
    cors.apply_to_response(origin.as_ref(), response.headers_mut());
    Ok(response)
}

/// The rule's action.
async fn act(
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
    // Before the backend is chosen: a mirror's copy does not depend on it.
    super::mirror::start(proxy, conn, rule, &mut req);
    if let Some(retry) = &rule.retry
        && !is_upgrade(req.headers())
    {
        // Boxed: only requests on rules with a retry pay for its state.
        let (chosen, response) =
            Box::pin(retry::forward(proxy, conn, req, routed, backends, retry, started, guard)).await?;
        return Ok(respond(chosen, rule, response));
    }
    let target = choose(proxy, routed, backends, &req, started, guard, None).await?;
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
    Ok(respond(chosen, rule, response))
}

/// A backend's response as the client gets it: hop-by-hop headers removed,
/// the response filters applied, the backendRef's first, then the rule's.
fn respond(chosen: &WeightedBackend, rule: &Rule, mut response: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(response.headers_mut(), false);
    for filters in [&chosen.filters, &rule.filters] {
        if let Some(modifier) = &filters.response_headers {
            modifier.apply(response.headers_mut());
        }
    }
    response
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
    use std::sync::Arc;

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
                retry: None,
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
