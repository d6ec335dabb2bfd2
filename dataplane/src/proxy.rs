//! Request handling: route a request with the current snapshot, apply its
//! rule, and forward it to a backend endpoint.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use agimo_shared::filters::RedirectRequest;
use agimo_shared::hostname::{normalize_host, request_host};
use agimo_shared::matching::RequestView;
use agimo_shared::path::{self, Normalized};
use agimo_shared::snapshot::{Action, BackendTarget, Filters, Protocol, Rule};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::Shared;
use crate::body::{Body, RequestBody, RequestGuard};
use crate::error::ProxyError;
use crate::gate;
use crate::metrics::HostStats;
use crate::upstream::UpstreamError;

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The address of the socket that accepted the connection.
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// The peer's IP as `X-Forwarded-For` gets it, formatted once.
    peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, bind: SocketAddr, protocol: Protocol) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value");
        ConnInfo { peer, bind, protocol, peer_ip }
    }
}

/// Handles one request end to end; never fails: errors become responses.
///
/// The request is boxed: it passes through several futures on its way to
/// the backend, and each would otherwise keep a copy of it.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Box<Request<RequestBody>>,
    mut guard: RequestGuard,
) -> Response<Body> {
    let start = Instant::now();
    let routed = normalize_path(shared, &mut req).and_then(|()| route(shared, conn, &req));
    let (host, response) = match routed {
        Err(e) => {
            shared.metrics.unmatched().request();
            tracing::debug!(peer = %conn.peer, status = e.status().as_u16(), reason = e.reason(), error = %e, "request not routed");
            (None, e.into_response())
        }
        Ok(routed) => {
            routed.host.request();
            let response = match apply(shared, conn, req, &routed, start, &mut guard).await {
                Ok(response) => response,
                Err(e) if e.status().is_client_error() => {
                    tracing::debug!(
                        route = %routed.rule.route,
                        rule = routed.rule.index,
                        host = %routed.host.label(),
                        peer = %conn.peer,
                        status = e.status().as_u16(),
                        reason = e.reason(),
                        error = %e,
                        "request refused"
                    );
                    e.into_response()
                }
                Err(e) => {
                    tracing::warn!(
                        route = %routed.rule.route,
                        rule = routed.rule.index,
                        host = %routed.host.label(),
                        status = e.status().as_u16(),
                        reason = e.reason(),
                        error = %e,
                        "request failed"
                    );
                    e.into_response()
                }
            };
            (Some(routed.host), response)
        }
    };
    host.as_deref().unwrap_or(shared.metrics.unmatched()).observe_duration(start.elapsed());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_guard(guard))
}

struct Routed {
    /// The series of the matched bucket's `host` label.
    host: Arc<HostStats>,
    rule: Arc<Rule>,
    listener_port: u16,
}

/// Normalises the request's path in place ([`agimo_shared::path`]): what
/// routes match and what the backend receives.
fn normalize_path(shared: &Shared, req: &mut Request<RequestBody>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        // Authority-form, no path: refused by `route`.
        return Ok(());
    }
    let location = match path::normalize(req.uri().path(), shared.config.escaped_slashes)? {
        Normalized::Path(Cow::Borrowed(_)) => return Ok(()),
        Normalized::Path(Cow::Owned(path)) => path,
        Normalized::Redirect(path) => {
            let location = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            return Err(ProxyError::EscapedSlashRedirect { location });
        }
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{location}?{q}"),
        None => location,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|_| ProxyError::InvalidPath(path::PathError::InvalidEscape))?,
    );
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::InvalidPath(path::PathError::InvalidEscape))?;
    Ok(())
}

/// Finds the rule for a request in the current snapshot. The snapshot guard
/// is released before any await: the request keeps only the rule it needs.
fn route(shared: &Shared, conn: &ConnInfo, req: &Request<RequestBody>) -> Result<Routed, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed { method: req.method().clone() });
    }
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let authority = request_authority(req).ok_or(ProxyError::MissingHost)?;
    let host = request_host(authority).ok_or_else(|| ProxyError::InvalidHost { host: authority.to_owned() })?;
    let snapshot = shared.snapshot.load();
    // A socket whose listeners changed protocol keeps its old connections
    // until they close; they no longer match any listener.
    let bind = snapshot
        .bind(conn.bind)
        .filter(|b| b.protocol == conn.protocol)
        .ok_or_else(|| ProxyError::NoListener { host: host.to_string() })?;
    let listener = bind.listener_for_host(&host).ok_or_else(|| ProxyError::NoListener { host: host.to_string() })?;
    let view = RequestView::new(req.method(), req.uri().path(), req.uri().query(), req.headers());
    let (bucket, entry) = listener
        .routes
        .find(&host, &view)
        .ok_or_else(|| ProxyError::NoRoute { host: host.to_string(), path: req.uri().path().to_owned() })?;
    Ok(Routed { host: shared.metrics.host(&bucket.label), rule: entry.rule.clone(), listener_port: listener.port })
}

/// The request's authority: the URI's (HTTP/2 `:authority`, HTTP/1.1
/// absolute-form) or else the `Host` header.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
    .filter(|h| !h.is_empty())
}

async fn apply(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Box<Request<RequestBody>>,
    routed: &Routed,
    started: Instant,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, ProxyError> {
    let Routed { host, rule, listener_port } = routed;
    let listener_port = *listener_port;
    let backends = match &rule.action {
        Action::Reject(r) => {
            return Err(ProxyError::InvalidRule { status: r.status, reason: r.reason.clone() });
        }
        Action::Redirect(redirect) => {
            let authority = request_authority(&req).unwrap_or_default();
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
            return Ok(response);
        }
        Action::Forward(backends) => backends,
    };
    let chosen = backends.pick(fastrand::u64(0..backends.total_weight()));
    let backend = match &chosen.target {
        BackendTarget::Invalid(reason) => {
            return Err(ProxyError::InvalidBackend { reason: reason.clone() });
        }
        BackendTarget::Service(backend) => backend.clone(),
    };
    let (chosen, backend, endpoint, connected) = match &rule.gate {
        None => {
            if backend.endpoints.is_empty() {
                return Err(ProxyError::NoReadyEndpoints { backend: backend.id.clone() });
            }
            let endpoint = backend.endpoints[fastrand::usize(0..backend.endpoints.len())];
            guard.active = Some(host.active());
            (chosen, backend, endpoint, None)
        }
        Some(gate) => {
            // Scale-to-zero: the request goes to an endpoint the upstream
            // has a connection to, or makes one to first ([`gate::admit`]).
            let by_hyper = !crate::upstream::by_h1(&req);
            let first = (!backend.endpoints.is_empty())
                .then(|| (backend.endpoints[fastrand::usize(0..backend.endpoints.len())], backend));
            match first {
                Some((endpoint, backend)) if shared.upstream.has_connection(backend.protocol, by_hyper, endpoint) => {
                    guard.active = Some(host.active());
                    (chosen, backend, endpoint, None)
                }
                first => {
                    let gated = gate::Gated { shared, rule, gate, backends, host, started, hyper: by_hyper };
                    let first = first.map(|(endpoint, backend)| (chosen, backend, endpoint));
                    // Boxed: only requests that connect here pay for its state.
                    let admitted = Box::pin(gate::admit(&gated, first)).await?;
                    guard.active = Some(admitted.active);
                    (admitted.chosen, admitted.backend, admitted.endpoint, admitted.connected)
                }
            }
        }
    };
    let upgrade = prepare_upstream_request(&mut req, conn, &[&rule.filters, &chosen.filters]);
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    // The send is made in each arm: one made before the match would take
    // room in this future for every arm's copy of it.
    let result = match (rule.timeouts.request, rule.timeouts.backend_request) {
        (None, None) => Ok(match connected {
            None => shared.upstream.send(backend.protocol, endpoint, req).await,
            // Boxed: only requests the gate connected pay for its state.
            Some(stream) => Box::pin(shared.upstream.send_on(backend.protocol, endpoint, stream, req)).await,
        }),
        (request, backend_request) => {
            // The request timeout counts from when the request arrived; the
            // backend one from when it is sent to the backend.
            let now = tokio::time::Instant::now();
            let request_deadline = request.map(|t| tokio::time::Instant::from_std(started + t));
            let backend_deadline = backend_request.map(|t| now + t);
            let deadline = [request_deadline, backend_deadline].into_iter().flatten().min().expect("one is set");
            let sent = match connected {
                None => tokio::time::timeout_at(deadline, shared.upstream.send(backend.protocol, endpoint, req)).await,
                Some(stream) => {
                    let send_on = Box::pin(shared.upstream.send_on(backend.protocol, endpoint, stream, req));
                    tokio::time::timeout_at(deadline, send_on).await
                }
            };
            sent.map_err(|_| {
                let which = if request_deadline == Some(deadline) { "request" } else { "backendRequest" };
                ProxyError::Timeout { backend: backend.id.clone(), timeout: which }
            })
        }
    };
    let mut response = result?.map_err(|e| match e {
        UpstreamError::Connect(source) => ProxyError::UpstreamConnect { backend: backend.id.clone(), endpoint, source },
        UpstreamError::Failed(source) => ProxyError::UpstreamFailed { backend: backend.id.clone(), endpoint, source },
        UpstreamError::RequestBody(source) => ProxyError::InvalidRequestBody { source },
    })?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_client_upgrade) = on_client_upgrade
    {
        let on_backend_upgrade = hyper::upgrade::on(&mut response);
        // The websocket (or other upgraded stream) counts as active until it closes.
        let active = guard.active.take();
        let open = crate::server::OpenConnection::new(&shared.connections);
        let backend_id = backend.id.clone();
        tokio::spawn(async move {
            let _guards = (active, open);
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
        });
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

/// Rewrites a request for the upstream, in this order: the client's
/// authority as `Host`; the client's hop-by-hop headers removed; the filters
/// (the rule's, then the backendRef's: header modifications, which may set
/// any header, `Host` included, and which a client's `Connection` header
/// cannot undo; URL rewrites of host and path); then `X-Forwarded-*`. The
/// target endpoint goes into the URI later ([`crate::upstream`]). Returns
/// whether it is a websocket upgrade.
fn prepare_upstream_request(req: &mut Request<RequestBody>, conn: &ConnInfo, filters: &[&Filters]) -> bool {
    let upgrade = is_upgrade(req.headers());
    let from_http2 = req.version() == Version::HTTP_2;
    // Keep the client's authority as the Host header, byte for byte.
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned())
        && let Ok(value) = HeaderValue::try_from(authority)
    {
        req.headers_mut().insert(header::HOST, value);
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if from_http2 {
        join_cookies(headers);
    }
    for f in filters {
        if let Some(modifier) = &f.request_headers {
            modifier.apply(req.headers_mut());
        }
        if let Some(rewrite) = &f.rewrite {
            if let Some(host) = &rewrite.hostname {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            if let Some(path) = &rewrite.path {
                let rewritten = path.apply(req.uri().path());
                let pq = match req.uri().query() {
                    Some(q) => format!("{rewritten}?{q}"),
                    None => rewritten,
                };
                if let Ok(pq) = pq.parse::<http::uri::PathAndQuery>() {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
    append_forwarded(req.headers_mut(), conn);
    upgrade
}

/// HTTP/2 clients may split `cookie` into several fields; HTTP/1.1 needs one,
/// joined with "; " (RFC 9113 section 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (values.next(), values.next()) {
        let mut joined = first.as_bytes().to_vec();
        for v in headers.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// A websocket upgrade (RFC 6455): the only protocol upgrade Agimo passes
/// through. Others (notably `h2c`, which would open an HTTP/2 tunnel past
/// route matching) are dropped with the other hop-by-hop headers.
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), including those the
/// Connection header names. An upgrade keeps `Connection: upgrade` and
/// `Upgrade`.
///
/// Every request and response passes here, and most carry none of these
/// headers or only `Connection: keep-alive`: one pass over the names finds
/// what is there, and only that is looked up and removed.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let found: Vec<HeaderName> = headers.keys().filter(|name| is_hop_by_hop(name)).cloned().collect();
    if found.is_empty() {
        // An upgrade has a Connection header: never here.
        return;
    }
    let connection: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
    for token in connection.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim) {
        if !(keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
            // Looked up as a &str: no HeaderName is built; an invalid name
            // matches nothing.
            headers.remove(token);
        }
    }
    for name in found {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The hop-by-hop headers that are so by name. Every header of every
/// request and response passes here: the length rules most out at once.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        _ => false,
    }
}

// Constants: `from_static` in a function body checks its name at every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn append_forwarded(headers: &mut HeaderMap, conn: &ConnInfo) {
    let xff = X_FORWARDED_FOR;
    let mut value = String::new();
    for existing in headers.get_all(&xff).iter().filter_map(|v| v.to_str().ok()) {
        if !existing.trim().is_empty() {
            value.push_str(existing.trim());
            value.push_str(", ");
        }
    }
    let value = if value.is_empty() {
        Some(conn.peer_ip.clone())
    } else {
        value.push_str(conn.peer_ip.to_str().unwrap_or_default());
        HeaderValue::try_from(value).ok()
    };
    if let Some(value) = value {
        headers.insert(xff, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.protocol.scheme()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn hop_by_hop_names_from_every_connection_header_in_any_case() {
        let mut h = headers(&[
            ("connection", "X-Private, , not a name"),
            ("connection", "close"),
            ("x-private", "secret"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-sum"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_untouched() {
        let mut h = headers(&[("host", "a.example"), ("x-kept", "yes"), ("x-kept", "twice")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, headers(&[("host", "a.example"), ("x-kept", "yes"), ("x-kept", "twice")]));
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])), "Upgrade without Connection: upgrade");
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let conn = ConnInfo::new("192.0.2.7:5555".parse().unwrap(), "0.0.0.0:80".parse().unwrap(), Protocol::Https);
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
        ]);
        append_forwarded(&mut h, &conn);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut first_hop = headers(&[("x-forwarded-for", " ")]);
        append_forwarded(&mut first_hop, &conn);
        assert_eq!(first_hop.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["192.0.2.7"]);
        assert_eq!(first_hop["x-forwarded-proto"], "https");
    }

    #[test]
    fn authority_prefers_the_uri() {
        let req = Request::get("http://absolute.example/x").header("host", "header.example").body(()).unwrap();
        assert_eq!(request_authority(&req), Some("absolute.example"));
        let req = Request::get("/x").header("host", "header.example:8080").body(()).unwrap();
        assert_eq!(request_authority(&req), Some("header.example:8080"));
        let req = Request::get("/x").header("host", "").body(()).unwrap();
        assert_eq!(request_authority(&req), None);
    }
}
