//! HTTP/1.1 on the wire, knowing nothing of routing: the client that
//! exchanges bodiless requests with backends, the server that reads
//! bodiless requests from clients and writes any response, and the field
//! parsing both share.

pub(crate) mod client;
pub(crate) mod server;

/// A Content-Length value: ASCII digits only, 19 at most (any such number
/// fits a `u64`). Lists and anything else are `None`.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The items of a comma-separated field value, trimmed.
pub(crate) fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value has `token` (in any case).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    items(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether every item of a comma-separated field value is one of `tokens`
/// (in any case).
pub(crate) fn only_tokens(value: &[u8], tokens: &[&str]) -> bool {
    items(value).all(|item| item.is_empty() || tokens.iter().any(|t| item.eq_ignore_ascii_case(t.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        assert_eq!(content_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1,1", b"0x5", b"10000000000000000000"] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn tokens_are_found_in_lists_in_any_case() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
        assert!(only_tokens(b"close, Upgrade,", &["close", "upgrade"]));
        assert!(!only_tokens(b"close, x-other", &["close", "upgrade"]));
    }
}
