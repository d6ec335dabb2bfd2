//! gRPC requests: Agimo's own errors answered as gRPC errors (a
//! trailers-only response), and `te: trailers` passed on to the backend.
//!
//! From gRPC's PROTOCOL-HTTP2.md: "Trailers-Only is permitted for calls that
//! produce an immediate error": one HEADERS frame with END_STREAM carrying
//! `:status 200`, `content-type: application/grpc`, `grpc-status` and a
//! percent-encoded `grpc-message`. A gRPC client ignores the HTTP status of a
//! response with a gRPC content-type, so without this every error Agimo makes
//! would reach it as `UNKNOWN`.

use http::header::{self, HeaderMap, HeaderValue};

/// gRPC status codes Agimo answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// Whether a request is gRPC: its content type is `application/grpc`,
/// optionally with a `+codec` or parameters (`application/grpc-web` is
/// another protocol).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(rest) = value.get(..16).filter(|p| p.eq_ignore_ascii_case("application/grpc")).map(|_| &value[16..])
    else {
        return false;
    };
    rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
}

/// Whether the client said it accepts trailers (`te: trailers`, the only
/// value HTTP/2 allows).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// The trailers-only headers of an error: status 200 is set by the caller.
pub fn error_headers(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code as u8)));
    if let Ok(value) = HeaderValue::try_from(percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
}

/// "Percent-Byte-Unencoded → 1*( %x20-%x24 / %x26-%x7E ) ; space and VCHAR,
/// except %": every other byte of the UTF-8 message becomes `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        for yes in ["application/grpc", "application/grpc+proto", "Application/GRPC;charset=utf-8"] {
            assert!(is_grpc(&with_type(yes)), "{yes}");
        }
        for no in ["application/grpc-web", "application/json", "application/grp", "text/plain"] {
            assert!(!is_grpc(&with_type(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded_on_one_line() {
        assert_eq!(percent_encode("no route for 100% of ü\n"), "no route for 100%25 of %C3%BC");
        let mut h = HeaderMap::new();
        error_headers(&mut h, Code::Unavailable, "backend b has no ready endpoints");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-message"], "backend b has no ready endpoints");
    }

    #[test]
    fn trailers_are_accepted_by_te_trailers_only() {
        let mut h = HeaderMap::new();
        assert!(!accepts_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        assert!(accepts_trailers(&h));
    }
}
