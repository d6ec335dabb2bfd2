//! Finding a request's rule: its path normalised, its host and listener,
//! the route that matches.

use std::borrow::Cow;
use std::sync::Arc;

use agimo_shared::hostname::request_host;
use agimo_shared::matching::RequestView;
use agimo_shared::path::{self, Normalized};
use agimo_shared::snapshot::Rule;
use http::header;
use http::{Method, Request, Uri};

use super::error::ProxyError;
use super::state::{ConnInfo, Proxy};
use crate::metrics::HostStats;
use crate::upstream::body::RequestBody;

/// A request's place in the snapshot: the rule it matched and where.
pub(super) struct Routed {
    /// The metrics of the matched bucket (its `host` label).
    pub stats: Arc<HostStats>,
    pub rule: Arc<Rule>,
    pub listener_port: u16,
}

/// Normalises the request's path in place ([`agimo_shared::path`]): what
/// routes match and what the backend receives.
pub(super) fn normalize_path(proxy: &Proxy, req: &mut Request<RequestBody>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        // Authority-form, no path: refused by `route`.
        return Ok(());
    }
    let location = match path::normalize(req.uri().path(), proxy.config.escaped_slashes)? {
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
pub(super) fn route(proxy: &Proxy, conn: &ConnInfo, req: &Request<RequestBody>) -> Result<Routed, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed { method: req.method().clone() });
    }
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let authority = request_authority(req).ok_or(ProxyError::MissingHost)?;
    let host = request_host(authority).ok_or_else(|| ProxyError::InvalidHost { host: authority.to_owned() })?;
    let snapshot = proxy.snapshot.load();
    // A socket whose listeners changed protocol keeps its old connections
    // until they close; they no longer match any listener.
    let bind = snapshot
        .bind(conn.bind)
        .filter(|b| b.protocol == conn.protocol)
        .ok_or_else(|| ProxyError::NoListener { host: host.to_string() })?;
    let listener = bind.listener_for_host(&host).ok_or_else(|| ProxyError::NoListener { host: host.to_string() })?;
    // "If the current Listener (selected by SNI matching during
    // ClientHello) does not match the Host: If another Listener does match
    // the Host, the Gateway SHOULD return a 421." The listener the SNI chose
    // is the one whose certificate the handshake got ([`Bind::listener_for_sni`]).
    if let Some(sni) = conn.sni.as_deref()
        && let Some(by_sni) = bind.listener_for_sni(Some(sni)).or_else(|| bind.listener_for_sni(None))
        && !Arc::ptr_eq(by_sni, listener)
    {
        return Err(ProxyError::Misdirected {
            host: host.to_string(),
            sni: sni.to_owned(),
            host_listener: listener.name.clone(),
            sni_listener: by_sni.name.clone(),
        });
    }
    let view = RequestView::new(req.method(), req.uri().path(), req.uri().query(), req.headers());
    let (bucket, entry) = listener
        .routes
        .find(&host, &view)
        .ok_or_else(|| ProxyError::NoRoute { host: host.to_string(), path: req.uri().path().to_owned() })?;
    Ok(Routed { stats: proxy.metrics.host(&bucket.label), rule: entry.rule.clone(), listener_port: listener.port })
}

/// The request's authority: the URI's (HTTP/2 `:authority`, HTTP/1.1
/// absolute-form) or else the `Host` header.
pub(super) fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
    .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

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
