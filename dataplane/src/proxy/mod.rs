//! Request handling: route a request with the current snapshot, apply its
//! rule (through the scale-to-zero gate on a gated route), and forward it to
//! a backend endpoint. Every error becomes a response in one place
//! ([`ProxyError::into_response`]).
//!
//! ```text
//!  handle ──► route (path, host, listener, rule) ──► forward::apply ──► choose ──► gate (held, connect)
//!    │                                                    ├──► mirror (copies, fire and forget)
//!    │                                                    │               └──► headers (rewrite)
//!    └── errors → responses (error)                       ├──► send (timeouts) ──► upstream
//!                                                         └──► retry: choose and send again (a rule's `retry`)
//! ```
//!
//! `choose` and `send` (one attempt) are [`attempt`]'s.

mod attempt;
mod error;
mod forward;
mod gate;
mod grpc;
mod headers;
mod mirror;
mod retry;
mod route;
mod state;
mod tls_route;

use std::time::Instant;

use http::{Request, Response};

pub use self::error::{ProxyError, REASON_HEADER};
pub(crate) use self::state::{ConnInfo, Proxy};
pub(crate) use self::tls_route::open as open_tls_route;
use crate::upstream::body::{Body, RequestBody, RequestGuard};

/// Handles one request end to end; never fails: errors become responses.
///
/// The request is boxed: it passes through several futures on its way to
/// the backend, and each would otherwise keep a copy of it.
pub(crate) async fn handle(
    proxy: &Proxy,
    conn: &ConnInfo,
    mut req: Box<Request<RequestBody>>,
    mut guard: RequestGuard,
) -> Response<Body> {
    let start = Instant::now();
    // Agimo's own errors for a gRPC request are gRPC errors.
    let grpc = grpc::is_grpc(req.headers());
    let routed = route::normalize_path(proxy, &mut req).and_then(|()| route::route(proxy, conn, &req));
    let (host, response) = match routed {
        Err(e) => {
            proxy.metrics.unmatched().request();
            tracing::debug!(peer = %conn.peer, status = e.status().as_u16(), reason = e.reason(), error = %e, "request not routed");
            (None, e.into_response_for(grpc))
        }
        Ok(routed) => {
            routed.stats.request();
            let response = match forward::apply(proxy, conn, req, &routed, start, &mut guard).await {
                Ok(response) => response,
                Err(e) if e.status().is_client_error() => {
                    tracing::debug!(
                        route = %routed.rule.route,
                        rule = routed.rule.index,
                        host = %routed.stats.label(),
                        peer = %conn.peer,
                        status = e.status().as_u16(),
                        reason = e.reason(),
                        error = %e,
                        "request refused"
                    );
                    e.into_response_for(grpc)
                }
                Err(e) => {
                    tracing::warn!(
                        route = %routed.rule.route,
                        rule = routed.rule.index,
                        host = %routed.stats.label(),
                        status = e.status().as_u16(),
                        reason = e.reason(),
                        error = %e,
                        "request failed"
                    );
                    e.into_response_for(grpc)
                }
            };
            (Some(routed.stats), response)
        }
    };
    host.as_deref().unwrap_or(proxy.metrics.unmatched()).observe_duration(start.elapsed());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_guard(guard))
}
