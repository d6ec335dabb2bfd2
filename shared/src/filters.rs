//! HTTPRoute filters, compiled: header modification, redirects, and the
//! share of requests a RequestMirror copies.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// RequestHeaderModifier (and later ResponseHeaderModifier): set, add, remove.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderModifier {
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "crate::ser::header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "crate::ser::header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "crate::ser::header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// "Set overwrites the request with the given header (name, value) before
    /// the action." "Add adds the given header(s) (name, value) to the request
    /// before the action. It appends to any existing values associated with
    /// the header name." (`my-header: foo` plus add `bar` gives
    /// `my-header: foo,bar`.) "Remove the given header(s) from the HTTP request
    /// before the action."
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            let joined = {
                let mut existing = headers.get_all(name).iter().peekable();
                if existing.peek().is_none() {
                    None
                } else {
                    let mut joined = Vec::new();
                    for v in existing {
                        joined.extend_from_slice(v.as_bytes());
                        joined.push(b',');
                    }
                    joined.extend_from_slice(value.as_bytes());
                    HeaderValue::from_bytes(&joined).ok()
                }
            };
            headers.insert(name.clone(), joined.unwrap_or_else(|| value.clone()));
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// The share of requests a RequestMirror copies: `numerator` in
/// `denominator` (`percent: 20` is 20 in 100; neither field is 100%).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    pub const ALL: Fraction = Fraction { numerator: 1, denominator: 1 };

    /// A fraction from the filter's fields; `None` if it is not one in
    /// `0..=1` with a positive denominator.
    pub fn new(numerator: u32, denominator: u32) -> Option<Self> {
        (denominator > 0 && numerator <= denominator).then_some(Fraction { numerator, denominator })
    }

    /// Whether a request is in the share; `roll` is uniform in
    /// `0..denominator`.
    pub fn includes(&self, roll: u32) -> bool {
        roll < self.numerator
    }
}

/// How a redirect rewrites the path.
#[derive(Clone, Debug, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// `prefix` is the rule's PathPrefix match, normalised without a trailing
    /// slash.
    ReplacePrefixMatch {
        prefix: String,
        replacement: String,
    },
}

impl PathModifier {
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.clone(),
            PathModifier::ReplacePrefixMatch { prefix, replacement } => replace_prefix(path, prefix, replacement),
        }
    }
}

/// Replaces a matched path prefix, following the table in the Gateway API's
/// `HTTPPathModifier.replacePrefixMatch` (e.g. `/foo/bar`, prefix `/foo`,
/// replacement `/xyz/` gives `/xyz/bar`; `/foo`, `/foo`, `` gives `/`).
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement.trim_end_matches('/'));
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// URLRewrite: the Host and path sent to the backend.
#[derive(Clone, Debug, Serialize)]
pub struct UrlRewrite {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_header_value")]
    pub hostname: Option<HeaderValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// RequestRedirect.
#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(serialize_with = "crate::ser::display")]
    pub status: StatusCode,
}

/// What a redirect needs to know about the request it answers.
pub struct RedirectRequest<'a> {
    /// `http` or `https`, from the listener.
    pub scheme: &'a str,
    /// The request's host without port.
    pub host: &'a str,
    pub listener_port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    /// The `Location` header value.
    ///
    /// Port rules from `HTTPRequestRedirectFilter.port`: "If no port is
    /// specified, the redirect port MUST be derived using the following rules:
    /// If redirect scheme is not-empty, the redirect port MUST be the
    /// well-known port associated with the redirect scheme. [...] If redirect
    /// scheme is empty, the redirect port MUST be the Gateway Listener port."
    /// and "Implementations SHOULD NOT add the port number in the 'Location'
    /// header" for HTTP on 80 and HTTPS on 443.
    pub fn location(&self, req: &RedirectRequest<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let port = self.port.unwrap_or_else(|| match self.scheme.as_deref() {
            Some(s) => well_known_port(s).unwrap_or(req.listener_port),
            None => req.listener_port,
        });
        let host = self.hostname.as_deref().unwrap_or(req.host);
        let path = match &self.path {
            Some(modifier) => modifier.apply(req.path),
            None => req.path.to_owned(),
        };
        let mut location = format!("{scheme}://{host}");
        if well_known_port(scheme) != Some(port) {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(&path);
        if let Some(q) = req.query {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_follows_the_spec_table() {
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
        ];
        for (path, prefix, replacement, want) in table {
            assert_eq!(replace_prefix(path, prefix, replacement), want, "{path} {prefix} {replacement}");
        }
    }

    fn redirect() -> Redirect {
        Redirect { scheme: None, hostname: None, port: None, path: None, status: StatusCode::FOUND }
    }

    fn req(scheme: &'static str, port: u16) -> RedirectRequest<'static> {
        RedirectRequest { scheme, host: "example.org", listener_port: port, path: "/a", query: Some("x=1") }
    }

    #[test]
    fn location_ports() {
        let r = Redirect { hostname: Some("other.org".into()), ..redirect() };
        assert_eq!(r.location(&req("http", 80)), "http://other.org/a?x=1");
        assert_eq!(r.location(&req("http", 8080)), "http://other.org:8080/a?x=1");
        let https = Redirect { scheme: Some("https".into()), ..redirect() };
        // Scheme set, no port: the scheme's well-known port, so none shown.
        assert_eq!(https.location(&req("http", 8080)), "https://example.org/a?x=1");
        let port = Redirect { port: Some(8443), scheme: Some("https".into()), ..redirect() };
        assert_eq!(port.location(&req("http", 80)), "https://example.org:8443/a?x=1");
        let to_80 = Redirect { port: Some(80), ..redirect() };
        assert_eq!(to_80.location(&req("https", 443)), "https://example.org:80/a?x=1");
    }

    #[test]
    fn fraction_includes_numerator_rolls_in_denominator() {
        let f = Fraction::new(25, 50).unwrap();
        assert_eq!((0..50).filter(|&r| f.includes(r)).count(), 25);
        assert!(!(0..100).any(|r| Fraction::new(0, 100).unwrap().includes(r)));
        assert!((0..100).all(|r| Fraction::new(100, 100).unwrap().includes(r)));
        assert!(Fraction::new(3, 2).is_none());
        assert!(Fraction::new(0, 0).is_none());
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let m = HeaderModifier {
            set: vec![(HeaderName::from_static("x-set"), HeaderValue::from_static("s"))],
            add: vec![(HeaderName::from_static("x-add"), HeaderValue::from_static("b"))],
            remove: vec![HeaderName::from_static("x-remove")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("a"));
        h.insert("x-remove", HeaderValue::from_static("gone"));
        m.apply(&mut h);
        assert_eq!(h["x-set"], "s");
        assert_eq!(h["x-add"], "a,b");
        assert!(!h.contains_key("x-remove"));
    }
}
