//! A rule's `retry` (GEP-1731): a backend request that failed is sent again,
//! to another endpoint where the backend has one, through the same choice
//! of backend and endpoint ([`attempt::choose`], the scale-to-zero gate on a
//! gated route) and the same send ([`attempt::send`]) as the first attempt.
//!
//! ```text
//!  request ─► keep the body (≤ KEEP_LIMIT) ─► choose ─► send ─► response
//!                 │ longer: one attempt          ▲         │ status in codes, connect
//!                 ▼                              │         │ failed, connection broke,
//!             choose ─► send ─► response         └─ back off ◄ backendRequest timeout
//!                                                 (attempts left, before the request timeout)
//! ```
//!
//! What is retried: a response whose status the rule lists in `codes`, a
//! connect that failed, a connection that broke before a response, and a
//! `backendRequest` timeout; any method, since the rule's `retry` asks for
//! it (the spec: "Implementations SHOULD retry on connection errors ... if a
//! retry stanza is configured"). What is not: a request whose body is longer
//! than [`KEEP_LIMIT`] (it is streamed to the backend once and cannot be sent
//! again), a websocket upgrade, and anything past the rule's `request`
//! timeout, which covers every attempt and the waits between them.
//!
//! The request counts as active once, across its attempts; held again by
//! the gate on a retry, it counts as pending instead, never as both.

use std::time::{Duration, Instant};

use agimo_shared::snapshot::{Backends, Retry, WeightedBackend};
use http::{HeaderMap, Method, Request, Response, Uri, Version};

use super::attempt::{self, Target};
use super::error::ProxyError;
use super::headers::prepare_upstream_request;
use super::route::Routed;
use super::state::{ConnInfo, Proxy};
use crate::upstream::body::{Body, KeptBody, RequestBody, RequestGuard};

/// The longest request body kept in memory so that a retry can send it
/// again. A longer body is streamed to the backend, and the request is not
/// retried.
pub(super) const KEEP_LIMIT: usize = 64 * 1024;

/// Later retries wait longer: twice the previous wait, up to this many times
/// the rule's `backoff`.
const MAX_BACKOFF_FACTOR: u32 = 8;

/// What a retry sends again: the request as the client sent it (before the
/// filters, which depend on the backendRef each attempt chooses) and its
/// body.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: KeptBody,
}

impl Replay {
    fn request(&self) -> Box<Request<RequestBody>> {
        let mut req = Request::new(self.body.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Box::new(req)
    }
}

/// Forwards a request on a rule with a `retry`: the first attempt, then
/// retries while the outcome is retriable, attempts are left, the body was
/// kept, and the next attempt can start before the request timeout. Returns
/// the backendRef that answered and its response, or the last attempt's
/// error.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<'r>(
    proxy: &'r Proxy,
    conn: &ConnInfo,
    req: Box<Request<RequestBody>>,
    routed: &'r Routed,
    backends: &'r Backends,
    retry: &Retry,
    started: Instant,
    guard: &mut RequestGuard,
) -> Result<(&'r WeightedBackend, Response<Body>), ProxyError> {
    let (parts, body) = req.into_parts();
    let (replay, body) = match body.keep(KEEP_LIMIT).await {
        Ok(Ok(kept)) => {
            let replay = Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                body: kept.clone(),
            };
            (Some(replay), kept.body())
        }
        Ok(Err(streamed)) => (None, streamed),
        Err(e) => return Err(ProxyError::InvalidRequestBody { source: e.into() }),
    };
    let request_deadline = routed.rule.timeouts.request.map(|t| started + t);
    let mut next = Some(Box::new(Request::from_parts(parts, body)));
    let mut failed_on = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(mut req) = next.take().or_else(|| replay.as_ref().map(Replay::request)) else {
            unreachable!("a request is sent again only when it was kept");
        };
        let target = attempt::choose(proxy, routed, backends, &req, started, guard, failed_on).await?;
        prepare_upstream_request(&mut req, conn, &[&routed.rule.filters, &target.chosen.filters]);
        let Target { chosen, backend, endpoint, connected } = target;
        let outcome = attempt::send(proxy, routed, &backend, endpoint, connected, req, started).await;
        let why = match &outcome {
            Ok(response) if retry.retries_status(response.status()) => format!("status {}", response.status().as_u16()),
            Ok(_) => return outcome.map(|response| (chosen, response)),
            Err(e) if retriable(e) => e.to_string(),
            Err(_) => return outcome.map(|response| (chosen, response)),
        };
        let wait = backoff(retry.backoff, attempt);
        let in_time = request_deadline.is_none_or(|deadline| Instant::now() + wait < deadline);
        if attempt > retry.attempts || replay.is_none() || !in_time {
            tracing::debug!(
                route = %routed.rule.route,
                rule = routed.rule.index,
                backend = %backend.id,
                %endpoint,
                attempt,
                kept = replay.is_some(),
                in_time,
                outcome = %why,
                "not retried"
            );
            return outcome.map(|response| (chosen, response));
        }
        tracing::debug!(
            route = %routed.rule.route,
            rule = routed.rule.index,
            backend = %backend.id,
            %endpoint,
            attempt,
            retry_in_ms = wait.as_millis() as u64,
            outcome = %why,
            "retrying"
        );
        drop(outcome);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = proxy.stopping.cancelled() => {
                return Err(ProxyError::ShuttingDown { host: routed.stats.label().to_string() });
            }
        }
        failed_on = Some(endpoint);
    }
}

/// Whether a failed attempt may be sent again: the backend could not be
/// reached, broke the connection, or did not answer within the
/// `backendRequest` timeout. (The `request` timeout ends every attempt; the
/// gate's own deadline has passed on a request it gave up on.)
fn retriable(e: &ProxyError) -> bool {
    match e {
        ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamFailed { .. } => true,
        ProxyError::Timeout { timeout, .. } => *timeout == "backendRequest",
        _ => false,
    }
}

/// The wait before retry `attempt` (1 for the first): `minimum`, doubled at
/// each retry up to [`MAX_BACKOFF_FACTOR`] times it, plus up to half of
/// that at random, so that requests failed together do not come back
/// together. Never less than `minimum`, as the spec requires.
fn backoff(minimum: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(MAX_BACKOFF_FACTOR.trailing_zeros());
    let base = minimum * factor;
    base + base.mul_f64(fastrand::f64()) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_never_waits_less_than_the_minimum_and_grows_to_a_cap() {
        let min = Duration::from_millis(100);
        for attempt in 1..20 {
            for _ in 0..100 {
                let wait = backoff(min, attempt);
                let base = min * (1 << (attempt - 1).min(3));
                assert!(wait >= base && wait <= base * 3 / 2, "attempt {attempt}: {wait:?}");
            }
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn connect_failures_resets_and_backend_timeouts_are_retried_but_not_the_request_timeout() {
        let endpoint = "10.0.0.1:80".parse().unwrap();
        let connect = ProxyError::UpstreamConnect { backend: "b".into(), endpoint, source: "refused".into() };
        let reset = ProxyError::UpstreamFailed { backend: "b".into(), endpoint, source: "reset".into() };
        let backend = ProxyError::Timeout { backend: "b".into(), timeout: "backendRequest" };
        let request = ProxyError::Timeout { backend: "b".into(), timeout: "request" };
        let body = ProxyError::InvalidRequestBody { source: "cut".into() };
        assert!(retriable(&connect) && retriable(&reset) && retriable(&backend));
        assert!(!retriable(&request) && !retriable(&body));
    }
}
