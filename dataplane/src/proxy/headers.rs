//! What the proxy does to a request's and a response's header fields on
//! the way through: hop-by-hop fields, the client's authority, cookies from
//! HTTP/2, the filters' modifications, `X-Forwarded-*`.

use agimo_shared::snapshot::Filters;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::state::ConnInfo;
use crate::upstream::body::RequestBody;

/// Rewrites a request for the upstream, in this order: the client's
/// authority as `Host`; the client's hop-by-hop headers removed; the filters
/// (the rule's, then the backendRef's: header modifications, which may set
/// any header, `Host` included, and which a client's `Connection` header
/// cannot undo; URL rewrites of host and path); then `X-Forwarded-*`. The
/// target endpoint goes into the URI later ([`crate::upstream`]). Returns
/// whether it is a websocket upgrade.
pub(super) fn prepare_upstream_request(req: &mut Request<RequestBody>, conn: &ConnInfo, filters: &[&Filters]) -> bool {
    let upgrade = is_upgrade(req.headers());
    let from_http2 = req.version() == Version::HTTP_2;
    // Keep the client's authority as the Host header, byte for byte.
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned())
        && let Ok(value) = HeaderValue::try_from(authority)
    {
        req.headers_mut().insert(header::HOST, value);
    }
    let headers = req.headers_mut();
    // gRPC backends expect `te: trailers` ("used to detect incompatible
    // proxies"); Agimo passes trailers through over HTTP/2, so it is true.
    let grpc_trailers = from_http2 && super::grpc::is_grpc(headers) && super::grpc::accepts_trailers(headers);
    strip_hop_by_hop(headers, upgrade);
    if grpc_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
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
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
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
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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
    use agimo_shared::snapshot::Protocol;

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
}
