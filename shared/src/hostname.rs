//! Hostnames as the Gateway API uses them: exact (`foo.example.com`) or wildcard
//! (`*.example.com`), plus the request-side normalisation of a `Host` header.

use std::fmt;

use serde::{Serialize, Serializer};

/// A listener or route hostname, lowercased and validated.
///
/// A wildcard stores its suffix with the leading dot (`.example.com`), so
/// matching is a suffix comparison: "`*.example.com` would match both
/// `test.example.com`, and `foo.test.example.com`, but not `example.com`."
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hostname {
    Exact(String),
    Wildcard(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostnameError {
    #[error("hostname {0:?} is empty")]
    Empty(String),
    #[error("hostname {0:?} is not a valid RFC 1123 DNS name (optionally prefixed with `*.`)")]
    Invalid(String),
    #[error("hostname {0:?} is an IP address; the Gateway API allows DNS names only")]
    IpAddress(String),
}

impl Hostname {
    /// Parses a hostname as written in a Gateway listener or an HTTPRoute.
    pub fn parse(raw: &str) -> Result<Self, HostnameError> {
        if raw.is_empty() {
            return Err(HostnameError::Empty(raw.to_owned()));
        }
        if raw.parse::<std::net::IpAddr>().is_ok() {
            return Err(HostnameError::IpAddress(raw.to_owned()));
        }
        let lower = raw.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(HostnameError::Invalid(raw.to_owned()));
        }
        Ok(if wildcard { Hostname::Wildcard(format!(".{name}")) } else { Hostname::Exact(name.to_owned()) })
    }

    /// Whether a normalised request host (see [`normalize_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Hostname::Exact(name) => name == host,
            Hostname::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Hostname::Wildcard(_))
    }

    /// Intersects a listener hostname with a route hostname, as the Gateway API
    /// defines it for HTTPRoute `hostnames`: the result is the more specific of
    /// the two when one includes the other, and `None` when they are disjoint.
    pub fn intersect(listener: Option<&Hostname>, route: &Hostname) -> Option<Hostname> {
        let Some(listener) = listener else {
            return Some(route.clone());
        };
        match (listener, route) {
            (Hostname::Exact(l), Hostname::Exact(r)) => (l == r).then(|| route.clone()),
            (Hostname::Exact(l), Hostname::Wildcard(_)) => route.matches(l).then(|| listener.clone()),
            (Hostname::Wildcard(_), Hostname::Exact(r)) => listener.matches(r).then(|| route.clone()),
            (Hostname::Wildcard(l), Hostname::Wildcard(r)) => {
                if r.ends_with(l.as_str()) {
                    Some(route.clone())
                } else if l.ends_with(r.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hostname::Exact(name) => f.write_str(name),
            Hostname::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl Serialize for Hostname {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Whether a request's authority (`Host` header or target authority) is
/// one a backend can read only one way: a DNS-style name (letters, digits,
/// `-`, `.`, `_`, `~`), an IPv4 address, or a bracketed IPv6 literal, with
/// an optional numeric port. No user info, no lists, no spaces, no
/// percent-encoding.
pub fn is_valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else { return false };
        if literal.is_empty() || !literal.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        match after {
            "" => return true,
            _ => ("x", after.strip_prefix(':')),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok =
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let port_ok = match port {
        None => !authority.starts_with('['),
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
    };
    host_ok && port_ok
}

/// Normalises a request's host (from `Host` or `:authority`) for matching:
/// strips userinfo and the port, a trailing dot, and lowercases.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// A request's authority, validated ([`is_valid_authority`]) and normalised
/// for matching ([`normalize_host`]) in one pass over its bytes: every
/// request comes through here. `None` if the authority is not valid.
pub fn request_host(authority: &str) -> Option<std::borrow::Cow<'_, str>> {
    if authority.starts_with('[') {
        // An IPv6 literal: rare enough for the two passes.
        return is_valid_authority(authority).then(|| normalize_host(authority));
    }
    let bytes = authority.as_bytes();
    let mut upper = false;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'A'..=b'Z' => upper = true,
            b':' => {
                let port = &bytes[i + 1..];
                if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                end = i;
                break;
            }
            _ => return None,
        }
    }
    let host = &authority[..end];
    if host.is_empty() {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(if upper { std::borrow::Cow::Owned(host.to_ascii_lowercase()) } else { std::borrow::Cow::Borrowed(host) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hostname {
        Hostname::parse(s).unwrap()
    }

    #[test]
    fn authorities_readable_only_one_way_are_valid() {
        for ok in ["a.example", "a.example:8080", "A-b_c~d.example.", "10.0.0.1:80", "[::1]", "[::1]:443", "x"] {
            assert!(is_valid_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "x, y",
            "x,y",
            "a b",
            "user@a.example",
            "a.example:",
            "a.example:http",
            "a.example:123456",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "a%2eexample",
            "a\tb",
            "a/b",
            ":80",
            "a:b:c",
            "\0",
        ] {
            assert!(!is_valid_authority(bad), "{bad:?}");
        }
    }

    #[test]
    fn request_host_is_validation_then_normalisation() {
        for authority in [
            "a.example",
            "a.example:8080",
            "A-b_c~d.example.",
            "Example.COM:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[::ABCD]:1",
            "x",
            ".",
            "",
            "x, y",
            "user@a.example",
            "a.example:",
            "a.example:http",
            "a.example:123456",
            "[::1",
            "[::1]:",
            "a%2eexample",
            ":80",
            "a:b:c",
            "a:1:2",
            "é.example",
        ] {
            let expected = is_valid_authority(authority).then(|| normalize_host(authority));
            assert_eq!(request_host(authority), expected, "{authority:?}");
        }
    }

    #[test]
    fn parses_and_validates() {
        assert_eq!(h("Foo.Example.com"), Hostname::Exact("foo.example.com".into()));
        assert_eq!(h("*.example.com"), Hostname::Wildcard(".example.com".into()));
        assert!(Hostname::parse("").is_err());
        assert!(Hostname::parse("foo..com").is_err());
        assert!(Hostname::parse("-foo.com").is_err());
        assert!(Hostname::parse("foo_bar.com").is_err());
        assert!(Hostname::parse("*").is_err());
        assert!(Hostname::parse("foo.*.com").is_err());
        assert_eq!(Hostname::parse("10.0.0.1"), Err(HostnameError::IpAddress("10.0.0.1".into())));
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_apex() {
        let w = h("*.example.com");
        assert!(w.matches("foo.example.com"));
        assert!(w.matches("foo.bar.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("fooexample.com"));
    }

    #[test]
    fn intersection_follows_the_spec_examples() {
        let l = h("*.example.com");
        assert_eq!(Hostname::intersect(Some(&l), &h("foo.example.com")), Some(h("foo.example.com")));
        assert_eq!(Hostname::intersect(Some(&l), &h("*.foo.example.com")), Some(h("*.foo.example.com")));
        assert_eq!(Hostname::intersect(Some(&l), &h("*.com")), Some(l.clone()));
        assert_eq!(Hostname::intersect(Some(&l), &h("example.com")), None);
        assert_eq!(Hostname::intersect(Some(&l), &h("*.example.net")), None);
        let e = h("very.specific.com");
        assert_eq!(Hostname::intersect(Some(&e), &h("*.specific.com")), Some(e.clone()));
        assert_eq!(Hostname::intersect(Some(&e), &h("other.specific.com")), None);
        assert_eq!(Hostname::intersect(None, &h("a.b")), Some(h("a.b")));
    }

    #[test]
    fn normalizes_request_hosts() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("user@host:1"), "host");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }
}
