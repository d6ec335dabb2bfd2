//! RequestMirror: copies of a request, as the rule's other filters leave
//! it, sent to each mirror whose fraction draws it, fire and forget.
//!
//! The client never waits for a mirror and never sees its answer: copies go
//! from tasks of their own. What a slow or dead mirror can cost is bounded:
//! a copy takes one of [`Config::mirror_max_in_flight`] slots from the
//! moment it is drawn until its mirror has answered in full or
//! [`Config::mirror_timeout`] has passed, and a copy drawn while every slot
//! is taken is dropped. A request body is copied as the backend reads it
//! ([`Tee`]), up to [`Config::mirror_max_body_bytes`]; the copy is sent once
//! the body has been read to its end, and not at all if the body is longer,
//! is never read whole, or takes longer than the mirror timeout to arrive. Websocket upgrades are not mirrored. Every copy
//! not sent is counted in `mirror_requests_dropped_total`, every copy sent
//! in `mirror_requests_total`.
//!
//! [`Config::mirror_max_in_flight`]: crate::config::Config::mirror_max_in_flight
//! [`Config::mirror_timeout`]: crate::config::Config::mirror_timeout
//! [`Config::mirror_max_body_bytes`]: crate::config::Config::mirror_max_body_bytes

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agimo_shared::snapshot::{Backend, Rule};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::sync::OwnedSemaphorePermit;

use super::headers::{is_upgrade, prepare_upstream_request};
use super::state::{ConnInfo, Proxy};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::upstream::body::{BodyTooLarge, RequestBody, Tee};

/// Draws the rule's mirrors for `req` and starts the copies of those drawn.
/// Call before the request is forwarded: a request with a body gets its
/// body teed, for the copies.
pub(super) fn start(proxy: &Proxy, conn: &ConnInfo, rule: &Rule, req: &mut Request<RequestBody>) {
    let mirrors = &rule.filters.mirrors;
    if mirrors.is_empty() {
        return;
    }
    let drawn: Vec<&Arc<Backend>> = mirrors
        .iter()
        .filter(|m| m.fraction.includes(fastrand::u32(0..m.fraction.denominator)))
        .map(|m| &m.backend)
        .collect();
    if drawn.is_empty() {
        return;
    }
    let metrics = &proxy.metrics;
    let drop_all = |reason: &str| {
        for backend in &drawn {
            metrics.mirror_dropped(reason);
            tracing::debug!(route = %rule.route, rule = rule.index, mirror = %backend.id, reason, "mirror copy dropped");
        }
    };
    if is_upgrade(req.headers()) {
        return drop_all("upgrade");
    }
    let limit = proxy.config.mirror_max_body_bytes;
    if req.body().size_hint().lower() > limit as u64 {
        return drop_all("body_too_large");
    }
    // A slot per copy, taken now: the bound holds while a body is copied.
    let mut copies = Vec::with_capacity(drawn.len());
    for backend in drawn {
        match proxy.mirror_slots.clone().try_acquire_owned() {
            Ok(slot) => copies.push(Copy { backend: backend.clone(), slot }),
            Err(_) => {
                metrics.mirror_dropped("in_flight_limit");
                tracing::debug!(route = %rule.route, rule = rule.index, mirror = %backend.id, "mirror copy dropped: too many in flight");
            }
        }
    }
    if copies.is_empty() {
        return;
    }
    let mut head = Request::new(RequestBody::Empty);
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    prepare_upstream_request(&mut head, conn, &[&rule.filters]);
    let (parts, _) = head.into_parts();
    let head = Head { method: parts.method, uri: parts.uri, version: parts.version, headers: parts.headers };
    let sender = Sender {
        upstream: proxy.upstream.clone(),
        metrics: proxy.metrics.clone(),
        timeout: proxy.config.mirror_timeout,
    };
    let body = if req.body().is_end_stream() {
        None
    } else {
        let body = match std::mem::take(req.body_mut()) {
            RequestBody::Incoming(body) => body,
            // Only a client's body is teed; nothing else reaches here.
            other => {
                *req.body_mut() = other;
                return;
            }
        };
        let (tee, copy) = Tee::new(body, limit);
        *req.body_mut() = RequestBody::Teed(Box::new(tee));
        Some(copy)
    };
    tokio::spawn(async move {
        let body = match body {
            None => Bytes::new(),
            // A client that sends its body slowly delays the copies no
            // longer than a mirror may take.
            Some(copy) => match tokio::time::timeout(sender.timeout, copy).await {
                Ok(Ok(Ok(body))) => body,
                failed => {
                    let reason = match failed {
                        Ok(Ok(Err(BodyTooLarge))) => "body_too_large",
                        _ => "body_incomplete",
                    };
                    for copy in &copies {
                        sender.metrics.mirror_dropped(reason);
                        tracing::debug!(mirror = %copy.backend.id, reason, "mirror copy dropped");
                    }
                    return;
                }
            },
        };
        let head = Arc::new(head);
        for copy in copies {
            tokio::spawn(sender.clone().send(copy, head.clone(), body.clone()));
        }
    });
}

/// A drawn copy and the slot it holds until it is done.
struct Copy {
    backend: Arc<Backend>,
    slot: OwnedSemaphorePermit,
}

/// The request head every copy gets.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

#[derive(Clone)]
struct Sender {
    upstream: Arc<Upstream>,
    metrics: Metrics,
    timeout: Duration,
}

impl Sender {
    /// Sends one copy to an endpoint of its mirror and reads the answer to
    /// its end (so the connection can be used again), within the timeout.
    async fn send(self, copy: Copy, head: Arc<Head>, body: Bytes) {
        let Copy { backend, slot } = copy;
        let _slot = slot;
        if backend.endpoints.is_empty() {
            self.metrics.mirror_dropped("no_ready_endpoint");
            tracing::debug!(mirror = %backend.id, "mirror copy dropped: no ready endpoint");
            return;
        }
        let endpoint = backend.endpoints[fastrand::usize(0..backend.endpoints.len())];
        let mut req = Request::new(RequestBody::full(body));
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers.clone();
        let exchange = exchange(&self.upstream, &backend, endpoint, Box::new(req));
        let outcome = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(())) => "answered",
            Ok(Err(error)) => {
                tracing::debug!(mirror = %backend.id, %endpoint, %error, "mirror copy failed");
                "failed"
            }
            Err(_) => {
                tracing::debug!(mirror = %backend.id, %endpoint, timeout = ?self.timeout, "mirror copy timed out");
                "failed"
            }
        };
        self.metrics.mirror_sent(outcome);
    }
}

async fn exchange(
    upstream: &Upstream,
    backend: &Backend,
    endpoint: SocketAddr,
    req: Box<Request<RequestBody>>,
) -> Result<(), String> {
    let response =
        upstream.send(backend.protocol, backend.origination(), endpoint, req).await.map_err(|e| format!("{e:?}"))?;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| e.to_string())?;
    }
    Ok(())
}
