//! Request path normalisation (RFC 3986 section 6.2.2), done before route
//! matching; the normalised path is also what the backend receives, so Agimo
//! and the backend read a path the same way.
//!
//! - percent-encoded unreserved characters are decoded (`%61` is `a`,
//!   `%2E` is `.`), other escapes are upper-cased (`%3f` is `%3F`);
//! - dot-segments are removed (`/a/./b/../c` is `/a/c`, and `..` never
//!   climbs above `/`);
//! - repeated slashes are merged (`//a///b` is `/a/b`);
//! - a malformed escape (`%zz`, `%4`) is an error;
//! - escaped slashes (`%2F`, `%5C`) follow [`EscapedSlashes`].
//!
//! The query is never touched.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (escaped `/` and `\`) in a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Answer with a redirect to the path with them decoded as `/` (and
    /// normalised again), so the client asks for what a backend that decodes
    /// them would read. Envoy Gateway's default.
    #[default]
    UnescapeAndRedirect,
    /// Keep them, upper-cased; they are data, never segment separators, in
    /// matching and for the backend.
    Keep,
    /// Refuse the request.
    Reject,
}

/// The outcome of normalising a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Serve it with this path (borrowed when nothing changed).
    Path(Cow<'a, str>),
    /// Redirect the client to this path ([`EscapedSlashes::UnescapeAndRedirect`]).
    Redirect(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path has a malformed percent-escape")]
    InvalidEscape,
    #[error("the path has an escaped slash (%2F or %5C)")]
    EscapedSlash,
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// Normalises `path` (the request target's path, without the query).
pub fn normalize(path: &str, escaped_slashes: EscapedSlashes) -> Result<Normalized<'_>, PathError> {
    if path == "*" {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(path.as_bytes()) {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    let (decoded, unescaped_slash) = decode(path, escaped_slashes)?;
    let normalized = remove_dot_segments(&decoded);
    if unescaped_slash {
        return Ok(Normalized::Redirect(normalized));
    }
    Ok(Normalized::Path(if normalized == path { Cow::Borrowed(path) } else { Cow::Owned(normalized) }))
}

/// Whether the path has an escape, a doubled slash or a segment starting
/// with a dot: the only things normalisation can change.
fn needs_work(path: &[u8]) -> bool {
    path.iter().zip(path.iter().skip(1)).any(|(&a, &b)| a == b'%' || (a == b'/' && (b == b'/' || b == b'.')))
        || path.last() == Some(&b'%')
}

/// Decodes unreserved escapes and upper-cases the others; escaped slashes
/// per `escaped_slashes`. Returns whether a slash was unescaped.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<(String, bool), PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut unescaped_slash = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = bytes[i..].iter().position(|&b| b == b'%').map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err(PathError::InvalidEscape);
        };
        let value = (hi * 16 + lo) as u8;
        match value {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(value as char),
            b'/' | b'\\' => match escaped_slashes {
                EscapedSlashes::Keep => push_escape(&mut out, value),
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::UnescapeAndRedirect => {
                    out.push('/');
                    unescaped_slash = true;
                }
            },
            _ => push_escape(&mut out, value),
        }
        i += 3;
    }
    Ok((out, unescaped_slash))
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(value >> 4)] as char);
    out.push(HEX[usize::from(value & 15)] as char);
}

/// Removes `.` and `..` segments and empty ones (doubled slashes). A path
/// that ended in a slash or a dot-segment keeps a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> String {
        match normalize(path, EscapedSlashes::Keep).unwrap() {
            Normalized::Path(p) => p.into_owned(),
            Normalized::Redirect(r) => panic!("redirect to {r}"),
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a.b/c.d", "/a/b.", "*"] {
            assert!(
                matches!(normalize(path, EscapedSlashes::Keep), Ok(Normalized::Path(Cow::Borrowed(p))) if p == path)
            );
        }
    }

    #[test]
    fn dot_segments_and_doubled_slashes_go() {
        let cases = [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//a///b//", "/a/b/"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/.c", "/a/..b/.c"),
            ("/public/../admin", "/admin"),
        ];
        for (path, want) in cases {
            assert_eq!(norm(path), want, "{path}");
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_and_others_upper_cased() {
        let cases = [
            ("/%61dmin", "/admin"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E./b", "/b"),
            ("/a/.%2e", "/"),
            ("/%7euser", "/~user"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%20b", "/a%20b"),
            ("/%25", "/%25"),
            ("/%252e%252e", "/%252e%252e"),
        ];
        for (path, want) in cases {
            assert_eq!(norm(path), want, "{path}");
        }
    }

    #[test]
    fn malformed_escapes_are_errors() {
        for path in ["/%", "/%4", "/%zz", "/a%g0", "/%%41"] {
            assert_eq!(normalize(path, EscapedSlashes::Keep), Err(PathError::InvalidEscape), "{path}");
        }
        assert_eq!(normalize("a/b", EscapedSlashes::Keep), Err(PathError::NotAbsolute));
    }

    #[test]
    fn escaped_slashes_follow_the_setting() {
        assert_eq!(norm("/a%2fb/%5c"), "/a%2Fb/%5C");
        assert_eq!(normalize("/a%2Fb", EscapedSlashes::Reject), Err(PathError::EscapedSlash));
        assert_eq!(
            normalize("/public%2F..%2Fadmin", EscapedSlashes::UnescapeAndRedirect),
            Ok(Normalized::Redirect("/admin".into()))
        );
        assert_eq!(normalize("/a%5Cb", EscapedSlashes::UnescapeAndRedirect), Ok(Normalized::Redirect("/a/b".into())));
        // Nothing to unescape: no redirect.
        assert_eq!(
            normalize("/a/./b", EscapedSlashes::UnescapeAndRedirect),
            Ok(Normalized::Path(Cow::Owned("/a/b".into())))
        );
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in ["/a/%2e%2e/b//c/./", "/%61%2F%2e%2E/x", "//../a/%7e/..", "/a%3f%2f"] {
            let once = norm(path);
            assert_eq!(norm(&once), once, "{path}");
        }
    }
}
