//! Scale-to-zero settings from annotations, on an HTTPRoute or on a Gateway
//! (a default for all its routes; the route wins).
//!
//! ```text
//! agimo.dev/scale-to-zero: "true"   hold requests while no backend has a ready endpoint
//! agimo.dev/wait-timeout: "90s"     how long (Gateway API duration; default 60s) → then 504
//! agimo.dev/max-pending: "1000"     held requests per host at most (default 1000) → then 503
//! ```
//!
//! A bad value is reported (with the value kept in force) and the last good
//! value of that annotation on that object stays in force: the compiler reads
//! it from the previous compile's [`Carryover`] and records the values in
//! force in the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use agimo_shared::snapshot::Gate;

use super::compiled::{AnnotationKey, Carryover};
use super::conditions::{self, Reason, types};
use super::duration;
use crate::api::Condition;

pub const SCALE_TO_ZERO: &str = "agimo.dev/scale-to-zero";
pub const WAIT_TIMEOUT: &str = "agimo.dev/wait-timeout";
pub const MAX_PENDING: &str = "agimo.dev/max-pending";
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_PENDING: usize = 1000;

/// The annotation values in force: those the previous compile carried over,
/// and those this compile carries over to the next.
pub struct Annotations<'c> {
    pub previous: &'c Carryover,
    pub next: &'c mut Carryover,
}

/// The scale-to-zero annotations of one object, as in force.
#[derive(Clone, Debug, Default)]
pub struct GateAnnotations {
    pub enabled: Option<bool>,
    pub wait_timeout: Option<Duration>,
    pub max_pending: Option<usize>,
    /// One message per bad value, saying what is in force instead.
    pub errors: Vec<String>,
}

impl GateAnnotations {
    /// Whether the object carries any of the annotations.
    pub fn present(&self) -> bool {
        self.enabled.is_some() || self.wait_timeout.is_some() || self.max_pending.is_some() || !self.errors.is_empty()
    }
}

/// Parses an object's annotations. `object` names it in messages and in the
/// carryover.
pub fn parse(
    object: &str,
    annotations: Option<&BTreeMap<String, String>>,
    in_force: &mut Annotations<'_>,
) -> GateAnnotations {
    let Some(annotations) = annotations else {
        return GateAnnotations::default();
    };
    let mut errors = Vec::new();
    let mut read = |annotation: &'static str, parse: &dyn Fn(&str) -> Result<(), String>| -> Option<String> {
        let value = annotations.get(annotation)?;
        let key = AnnotationKey { object: object.to_owned(), annotation };
        let kept = match parse(value) {
            Ok(()) => Some(value.clone()),
            Err(why) => {
                let previous = in_force.previous.last_good(&key).cloned();
                let keeping = match &previous {
                    Some(p) => format!("keeping the previous value {p:?}"),
                    None => "using the default".to_owned(),
                };
                errors.push(format!("{annotation} {value:?} is invalid ({why}); {keeping}"));
                previous
            }
        };
        if let Some(kept) = &kept {
            in_force.next.keep(key, kept.clone());
        }
        kept
    };
    let enabled = read(SCALE_TO_ZERO, &|v| parse_bool(v).map(drop)).and_then(|v| parse_bool(&v).ok());
    let wait_timeout =
        read(WAIT_TIMEOUT, &|v| parse_wait_timeout(v).map(drop)).and_then(|v| parse_wait_timeout(&v).ok());
    let max_pending = read(MAX_PENDING, &|v| parse_max_pending(v).map(drop)).and_then(|v| parse_max_pending(&v).ok());
    GateAnnotations { enabled, wait_timeout, max_pending, errors }
}

/// The gate of a route attached to a Gateway: the route's settings, then the
/// Gateway's, then the defaults. `None` when scale-to-zero is off.
pub fn effective(route: &GateAnnotations, gateway: &GateAnnotations) -> Option<Gate> {
    if !route.enabled.or(gateway.enabled).unwrap_or(false) {
        return None;
    }
    Some(Gate {
        wait_timeout: route.wait_timeout.or(gateway.wait_timeout).unwrap_or(DEFAULT_WAIT_TIMEOUT),
        max_pending: route.max_pending.or(gateway.max_pending).unwrap_or(DEFAULT_MAX_PENDING),
    })
}

/// The `agimo.dev/ScaleToZero` condition of a route on one Gateway: whether
/// requests are held, with what settings, and any annotation that is wrong.
/// Without a route, the Gateway's own: the default for its routes.
pub fn condition(route: Option<&GateAnnotations>, gateway: &GateAnnotations, generation: Option<i64>) -> Condition {
    let gate = effective(route.unwrap_or(&GateAnnotations::default()), gateway);
    let mut message = describe(gate.as_ref());
    if route.is_none() {
        message = format!("default for its routes: {message}");
    }
    let errors: Vec<&str> =
        route.into_iter().flat_map(|r| &r.errors).chain(&gateway.errors).map(String::as_str).collect();
    let reason = if !errors.is_empty() {
        message = format!("{}; {message}", errors.join("; "));
        Reason::InvalidAnnotation
    } else if gate.is_some() {
        Reason::Enabled
    } else {
        Reason::Disabled
    };
    conditions::condition(types::SCALE_TO_ZERO, gate.is_some(), reason, message, generation)
}

/// A human summary of a gate, for status messages.
fn describe(gate: Option<&Gate>) -> String {
    match gate {
        Some(g) => format!(
            "requests wait up to {}ms for a ready endpoint, at most {} per host",
            g.wait_timeout.as_millis(),
            g.max_pending
        ),
        None => "requests are not held: a backend without ready endpoints answers 503".to_owned(),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected \"true\" or \"false\"".into()),
    }
}

fn parse_wait_timeout(v: &str) -> Result<Duration, String> {
    let d = duration::parse(v).map_err(|e| format!("expected a duration such as 90s or 2m: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

fn parse_max_pending(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_route_wins_over_the_gateway_and_defaults_fill_in() {
        let (previous, mut next) = (Carryover::default(), Carryover::default());
        let mut in_force = Annotations { previous: &previous, next: &mut next };
        let gw =
            parse("Gateway ns/gw", Some(&annotations(&[(SCALE_TO_ZERO, "true"), (MAX_PENDING, "5")])), &mut in_force);
        let route = parse("HTTPRoute ns/r", Some(&annotations(&[(WAIT_TIMEOUT, "90s")])), &mut in_force);
        let gate = effective(&route, &gw).unwrap();
        assert_eq!(gate, Gate { wait_timeout: Duration::from_secs(90), max_pending: 5 });
        let off = parse("HTTPRoute ns/off", Some(&annotations(&[(SCALE_TO_ZERO, "false")])), &mut in_force);
        assert_eq!(effective(&off, &gw), None);
        assert_eq!(effective(&GateAnnotations::default(), &GateAnnotations::default()), None);
    }

    #[test]
    fn a_bad_value_keeps_the_previous_one_in_force() {
        let (nothing, mut first) = (Carryover::default(), Carryover::default());
        let mut in_force = Annotations { previous: &nothing, next: &mut first };
        let good = parse("HTTPRoute ns/r", Some(&annotations(&[(WAIT_TIMEOUT, "30s")])), &mut in_force);
        assert_eq!(good.wait_timeout, Some(Duration::from_secs(30)));
        let mut second = Carryover::default();
        let mut in_force = Annotations { previous: &first, next: &mut second };
        let bad =
            parse("HTTPRoute ns/r", Some(&annotations(&[(WAIT_TIMEOUT, "soon"), (MAX_PENDING, "-1")])), &mut in_force);
        assert_eq!(bad.wait_timeout, Some(Duration::from_secs(30)));
        assert_eq!(bad.max_pending, None);
        assert_eq!(bad.errors.len(), 2);
        assert!(bad.errors[0].contains("agimo.dev/wait-timeout \"soon\" is invalid"), "{:?}", bad.errors);
        assert!(bad.errors[0].contains("keeping the previous value \"30s\""), "{:?}", bad.errors);
        assert!(bad.errors[1].contains("using the default"), "{:?}", bad.errors);
        // The previous value is carried over to the compile after next too.
        assert_eq!(second.annotation_in_force("HTTPRoute ns/r", WAIT_TIMEOUT), Some("30s"));
        assert_eq!(second.annotation_in_force("HTTPRoute ns/r", MAX_PENDING), None);
    }
}
