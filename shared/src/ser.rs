//! Serde helpers so the snapshot serialises readably (for golden files and
//! the admin API) without storing strings that the hot path would re-parse.

use std::fmt::Display;

use http::{HeaderName, HeaderValue};
use serde::Serializer;
use serde::ser::SerializeMap;

pub(crate) fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub(crate) fn opt_display<T: Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

pub(crate) fn header_pairs<S: Serializer>(pairs: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (name, value) in pairs {
        map.serialize_entry(name.as_str(), &String::from_utf8_lossy(value.as_bytes()))?;
    }
    map.end()
}

pub(crate) fn status_codes<S: Serializer>(codes: &[http::StatusCode], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(codes.iter().map(http::StatusCode::as_u16))
}

pub(crate) fn header_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

pub(crate) fn opt_duration<S: Serializer>(value: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.collect_str(&format_args!("{}ms", d.as_millis())),
        None => s.serialize_none(),
    }
}

pub(crate) fn opt_header_value<S: Serializer>(value: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(&String::from_utf8_lossy(v.as_bytes())),
        None => s.serialize_none(),
    }
}

pub(crate) fn duration<S: Serializer>(value: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}ms", value.as_millis()))
}
