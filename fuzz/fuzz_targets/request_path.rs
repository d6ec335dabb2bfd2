//! Request paths and hosts: normalisation never panics, is idempotent, and
//! leaves no dot-segment or doubled slash for a backend to read differently;
//! prefix matching agrees with a segment-by-segment reading of the result.
#![no_main]

use agimo_shared::hostname::{is_valid_authority, normalize_host};
use agimo_shared::matching::prefix_matches;
use agimo_shared::path::{EscapedSlashes, Normalized, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str)| {
    let (path, prefix, authority) = input;
    for mode in [EscapedSlashes::Keep, EscapedSlashes::Reject, EscapedSlashes::UnescapeAndRedirect] {
        let normalized = match normalize(path, mode) {
            Ok(Normalized::Path(p)) => p.into_owned(),
            Ok(Normalized::Redirect(p)) => p,
            Err(_) => continue,
        };
        if normalized == "*" {
            continue;
        }
        assert!(normalized.starts_with('/'), "{path:?} -> {normalized:?}");
        assert!(!normalized.contains("//"), "{path:?} -> {normalized:?}");
        for segment in normalized.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} -> {normalized:?}");
        }
        match normalize(&normalized, EscapedSlashes::Keep) {
            Ok(Normalized::Path(again)) => assert_eq!(again, normalized, "idempotent for {path:?}"),
            other => panic!("{path:?} -> {normalized:?} -> {other:?}"),
        }
        // A prefix (without trailing slash, as compiled) matches exactly
        // when its segments are the first segments of the path.
        let prefix = prefix.trim_end_matches('/');
        if prefix.starts_with('/') {
            let by_segments = normalized.split('/').zip(prefix.split('/')).all(|(a, b)| a == b)
                && normalized.split('/').count() >= prefix.split('/').count();
            assert_eq!(prefix_matches(prefix, &normalized), by_segments, "{prefix:?} vs {normalized:?}");
        }
    }
    if is_valid_authority(authority) {
        let host = normalize_host(authority);
        assert!(!host.contains([' ', ',', '@', '/']), "{authority:?} -> {host:?}");
    }
});
