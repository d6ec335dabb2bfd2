//! The HTTPRoute CORS filter, compiled: origins as matchers, methods and
//! header names typed, and the response headers it produces.
//!
//! ```text
//!  request ── preflight? (OPTIONS + Origin + Access-Control-Request-Method)
//!     │ yes: the gateway answers 204 itself ── Cors::preflight
//!     └ no:  forwarded; an allowed Origin gets Allow-Origin, Allow-Credentials,
//!            Expose-Headers on the response ── Cors::apply_to_response
//! ```

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::{Serialize, Serializer};

/// An `HTTPCORSFilter`, parsed.
#[derive(Clone, Debug, Serialize)]
pub struct Cors {
    pub allow_origins: Allowed<OriginPattern>,
    pub allow_methods: Allowed<Method>,
    pub allow_headers: Allowed<HeaderName>,
    pub expose_headers: Allowed<HeaderName>,
    pub max_age_seconds: u32,
    pub allow_credentials: bool,
}

/// A list of allowed values, or the wildcard `*` (which the CRD allows only
/// alone in a list).
#[derive(Clone, Debug)]
pub enum Allowed<T> {
    Any,
    Only(Vec<T>),
}

impl<T> Default for Allowed<T> {
    fn default() -> Self {
        Allowed::Only(Vec::new())
    }
}

impl<T: fmt::Display> Serialize for Allowed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<T: fmt::Display> fmt::Display for Allowed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::Any => f.write_str("*"),
            Allowed::Only(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

/// One entry of `allowOrigins` other than `*`: `<scheme>://<host>(:<port>)`
/// where the host may start with `*.`, or be `*`. The port is the scheme's
/// default when not written, so `https://a.example` and
/// `https://a.example:443` are the same origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: "`*` is a greedy match to the
    /// _left_, including any number of DNS labels to the left of its
    /// position."
    Suffix(String),
    /// "A wildcard by itself matches all hosts."
    Any,
}

/// Why an `allowOrigins` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("allowOrigins entry {origin:?} is not <http|https>://<host>[:<port>] (the host may start with \"*.\"): {why}")]
pub struct OriginError {
    origin: String,
    why: &'static str,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, OriginError> {
        let err = |why| OriginError { origin: s.to_owned(), why };
        let (scheme, host, port) = split_origin(s).ok_or_else(|| err("no scheme, host or valid port"))?;
        if scheme != "http" && scheme != "https" {
            return Err(err("the scheme is neither http nor https"));
        }
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_host(suffix).map_err(err)?;
            HostPattern::Suffix(format!(".{suffix}"))
        } else {
            check_host(&host).map_err(err)?;
            HostPattern::Exact(host)
        };
        Ok(OriginPattern { scheme, host, port })
    }

    /// Whether an `Origin` request header value is this origin (scheme and
    /// host compared without case, ports after defaults).
    pub fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        scheme == self.scheme
            && port == self.port
            && match &self.host {
                HostPattern::Exact(h) => host == *h,
                HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
                HostPattern::Any => true,
            }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::Suffix(s) => write!(f, "*{s}")?,
            HostPattern::Any => f.write_str("*")?,
        }
        write!(f, ":{}", self.port)
    }
}

impl Serialize for OriginPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `scheme://host[:port]`, lowercased, with the scheme's default port; an
/// origin has no path, query or userinfo.
fn split_origin(s: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal ends with `]`: its colons are not a port.
        Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok().filter(|p| *p > 0)?),
        _ => (
            rest,
            match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => 0,
            },
        ),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

fn check_host(host: &str) -> Result<(), &'static str> {
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| "bad IPv6 address");
    }
    if host.split('.').all(label_ok) { Ok(()) } else { Err("the host is not a DNS name or IP address") }
}

impl Cors {
    /// The `allowOrigins` entry that admits `origin`, if any.
    fn admits(&self, origin: &HeaderValue) -> bool {
        match &self.allow_origins {
            Allowed::Any => true,
            Allowed::Only(patterns) => origin.to_str().is_ok_and(|o| patterns.iter().any(|p| p.matches(o))),
        }
    }

    /// Whether a request is a CORS preflight, which the gateway answers
    /// itself: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: `204 No Content`, with the CORS headers
    /// when the `Origin` is allowed and without them when not (the spec's
    /// "returns 204/200 response but doesn't set the relevant cross-origin
    /// response headers").
    pub fn preflight(&self, request: &HeaderMap) -> (StatusCode, HeaderMap) {
        let mut out = HeaderMap::new();
        out.insert(header::VARY, HeaderValue::from_static("origin"));
        let Some(origin) = request.get(header::ORIGIN).filter(|o| self.admits(o)) else {
            return (StatusCode::NO_CONTENT, out);
        };
        self.insert_origin_headers(origin.clone(), &mut out);
        // With `*`, echo what was asked: always a valid answer, and the only
        // one allowed with credentials ("must return a single HTTP method
        // matching the value of the `Access-Control-Request-Method`").
        let methods = match &self.allow_methods {
            Allowed::Any => request.get(header::ACCESS_CONTROL_REQUEST_METHOD).cloned(),
            Allowed::Only(m) if m.is_empty() => None,
            only => HeaderValue::try_from(only.to_string()).ok(),
        };
        if let Some(methods) = methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        let headers = match &self.allow_headers {
            Allowed::Any => request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
            Allowed::Only(h) if h.is_empty() => None,
            only => HeaderValue::try_from(only.to_string()).ok(),
        };
        if let Some(headers) = headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(self.max_age_seconds));
        (StatusCode::NO_CONTENT, out)
    }

    /// Adds the CORS headers to the response of an actual (not preflight)
    /// request whose `Origin` is allowed; `origin` is that request's header.
    pub fn apply_to_response(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let origin = origin.filter(|o| self.admits(o));
        let exposed_any = matches!(self.expose_headers, Allowed::Any) && self.allow_credentials;
        // With credentials, `*` in `exposeHeaders` cannot be sent: name the
        // headers this response has instead.
        let names = (origin.is_some() && exposed_any)
            .then(|| response.keys().map(HeaderName::as_str).collect::<Vec<_>>().join(", "));
        response.append(header::VARY, HeaderValue::from_static("origin"));
        let Some(origin) = origin else {
            return;
        };
        self.insert_origin_headers(origin.clone(), response);
        if let Some(names) = names.and_then(|n| HeaderValue::try_from(n).ok()) {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, names);
        }
    }

    /// Allow-Origin (the request's `Origin`, echoed: valid with and without
    /// credentials), Allow-Credentials, Expose-Headers.
    fn insert_origin_headers(&self, origin: HeaderValue, out: &mut HeaderMap) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        } else {
            out.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        let expose = match &self.expose_headers {
            Allowed::Any if self.allow_credentials => None,
            Allowed::Only(h) if h.is_empty() => None,
            other => HeaderValue::try_from(other.to_string()).ok(),
        };
        if let Some(expose) = expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Allowed<OriginPattern> {
        Allowed::Only(list.iter().map(|o| OriginPattern::parse(o).unwrap()).collect())
    }

    fn cors(allow_origins: Allowed<OriginPattern>, credentials: bool) -> Cors {
        Cors {
            allow_origins,
            allow_methods: Allowed::Only(vec![Method::GET, Method::OPTIONS]),
            allow_headers: Allowed::Only(vec![
                HeaderName::from_static("x-header-1"),
                HeaderName::from_static("x-header-2"),
            ]),
            expose_headers: Allowed::Only(vec![HeaderName::from_static("x-header-3")]),
            max_age_seconds: 3600,
            allow_credentials: credentials,
        }
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::try_from(*k).unwrap(), HeaderValue::try_from(*v).unwrap())).collect()
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn origin_patterns_match_scheme_host_and_port() {
        let p = OriginPattern::parse("https://www.foo.com").unwrap();
        assert!(p.matches("https://www.foo.com"));
        assert!(p.matches("HTTPS://WWW.FOO.COM:443"));
        assert!(!p.matches("http://www.foo.com"));
        assert!(!p.matches("https://www.foo.com:8443"));
        assert!(!p.matches("https://foo.com"));
        assert!(!p.matches("null"));

        let wild = OriginPattern::parse("https://*.bar.com").unwrap();
        assert!(wild.matches("https://www.bar.com"));
        // "any number of DNS labels to the left"
        assert!(wild.matches("https://xpto.www.bar.com"));
        assert!(!wild.matches("https://bar.com"));
        assert!(!wild.matches("https://foobar.com"));
        assert!(!wild.matches("https://www.bar.com.evil.example"));

        let any_host = OriginPattern::parse("http://*:8080").unwrap();
        assert!(any_host.matches("http://anything.example:8080"));
        assert!(!any_host.matches("http://anything.example"));
    }

    #[test]
    fn bad_origins_are_refused() {
        for bad in [
            "www.foo.com",
            "ftp://a.example",
            "https://",
            "https://a.example/path",
            "https://a.example:0",
            "https://a..b",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(OriginPattern::parse("https://[::1]:8443").unwrap().matches("https://[::1]:8443"));
    }

    #[test]
    fn preflight_from_an_allowed_origin_gets_every_header() {
        let c = cors(origins(&["https://www.foo.com", "https://*.bar.com"]), true);
        let req = request(&[
            ("origin", "https://xpto.www.bar.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-header-1"),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &req));
        assert!(!Cors::is_preflight(&Method::GET, &req));
        let (status, h) = c.preflight(&req);
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://xpto.www.bar.com"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, OPTIONS"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, "access-control-expose-headers"), Some("x-header-3"));
        assert_eq!(get(&h, "access-control-max-age"), Some("3600"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("origin"));
    }

    #[test]
    fn preflight_from_another_origin_gets_no_cors_headers() {
        let c = cors(origins(&["https://www.foo.com"]), true);
        let (status, h) =
            c.preflight(&request(&[("origin", "https://foobar.com"), ("access-control-request-method", "GET")]));
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")), "{h:?}");
    }

    #[test]
    fn wildcards_with_credentials_echo_the_request() {
        let mut c = cors(Allowed::Any, true);
        c.allow_methods = Allowed::Any;
        c.allow_headers = Allowed::Any;
        c.expose_headers = Allowed::Any;
        let req = request(&[
            ("origin", "https://other.foo.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]);
        let (_, h) = c.preflight(&req);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://other.foo.com"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, "access-control-expose-headers"), None);
        // Without Access-Control-Request-Headers: no Allow-Headers at all.
        let (_, h) =
            c.preflight(&request(&[("origin", "https://a.example"), ("access-control-request-method", "PUT")]));
        assert_eq!(get(&h, "access-control-allow-headers"), None);

        // On the actual response, `*` in exposeHeaders becomes the names the
        // response has.
        let mut response = request(&[("x-one", "1"), ("content-type", "text/plain")]);
        c.apply_to_response(Some(&HeaderValue::from_static("https://other.foo.com")), &mut response);
        assert_eq!(get(&response, "access-control-expose-headers"), Some("x-one, content-type"));
        assert_eq!(get(&response, "access-control-allow-credentials"), Some("true"));
    }

    #[test]
    fn responses_get_headers_only_for_allowed_origins() {
        let c = cors(origins(&["https://www.foo.com"]), false);
        let mut response = request(&[("access-control-allow-credentials", "true")]);
        c.apply_to_response(Some(&HeaderValue::from_static("https://www.foo.com")), &mut response);
        assert_eq!(get(&response, "access-control-allow-origin"), Some("https://www.foo.com"));
        // allowCredentials false: "omit the header entirely", the backend's too.
        assert_eq!(get(&response, "access-control-allow-credentials"), None);
        assert_eq!(get(&response, "vary"), Some("origin"));

        let mut response = HeaderMap::new();
        c.apply_to_response(Some(&HeaderValue::from_static("https://foobar.com")), &mut response);
        assert_eq!(get(&response, "access-control-allow-origin"), None);
        c.apply_to_response(None, &mut response);
        assert_eq!(get(&response, "access-control-allow-origin"), None);
    }
}
