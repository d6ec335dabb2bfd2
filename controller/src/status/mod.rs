//! Publishing statuses: timestamps and change logs.
//!
//! The compiler stamps every condition with the Unix epoch. Before statuses
//! are shown or written, [`stamp`] gives each condition the time it last
//! changed: the previous time if its status is unchanged, else now.

pub mod writer;

use crate::api::{Condition, Time};
use crate::compiler::Statuses;

/// Replaces placeholder times: a condition whose type and status match the
/// previous publication keeps its `lastTransitionTime`; others get `now`.
pub fn stamp(current: &mut Statuses, previous: &Statuses, now: &Time) {
    for (name, status) in &mut current.gateway_classes {
        let old = previous.gateway_classes.get(name).and_then(|s| s.conditions.as_deref());
        stamp_conditions(status.conditions.iter_mut().flatten(), old.unwrap_or_default(), now);
    }
    for (key, status) in &mut current.gateways {
        let old = previous.gateways.get(key);
        let old_conditions = old.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        stamp_conditions(status.conditions.iter_mut().flatten(), old_conditions, now);
        for listener in status.listeners.iter_mut().flatten() {
            let old_listener =
                old.and_then(|s| s.listeners.as_ref()).and_then(|ls| ls.iter().find(|l| l.name == listener.name));
            stamp_conditions(
                listener.conditions.iter_mut(),
                old_listener.map(|l| l.conditions.as_slice()).unwrap_or_default(),
                now,
            );
        }
    }
    for (key, status) in &mut current.listener_sets {
        let old = previous.listener_sets.get(key);
        let old_conditions = old.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        stamp_conditions(status.conditions.iter_mut().flatten(), old_conditions, now);
        for listener in status.listeners.iter_mut().flatten() {
            let old_listener =
                old.and_then(|s| s.listeners.as_ref()).and_then(|ls| ls.iter().find(|l| l.name == listener.name));
            stamp_conditions(
                listener.conditions.iter_mut(),
                old_listener.map(|l| l.conditions.as_slice()).unwrap_or_default(),
                now,
            );
        }
    }
    let routes = [
        (&mut current.http_routes, &previous.http_routes),
        (&mut current.grpc_routes, &previous.grpc_routes),
        (&mut current.tls_routes, &previous.tls_routes),
    ];
    for (current, previous) in routes {
        for (key, parents) in current {
            let old = previous.get(key);
            for parent in parents {
                let old_parent = old.and_then(|ps| ps.iter().find(|p| p.parent_ref == parent.parent_ref));
                stamp_conditions(
                    parent.conditions.iter_mut(),
                    old_parent.map(|p| p.conditions.as_slice()).unwrap_or_default(),
                    now,
                );
            }
        }
    }
    for (key, ancestors) in &mut current.backend_tls_policies {
        let old = previous.backend_tls_policies.get(key);
        for ancestor in ancestors {
            let old_ancestor = old.and_then(|a| a.iter().find(|o| o.ancestor_ref == ancestor.ancestor_ref));
            stamp_conditions(
                ancestor.conditions.iter_mut(),
                old_ancestor.map(|a| a.conditions.as_slice()).unwrap_or_default(),
                now,
            );
        }
    }
}

pub fn stamp_conditions<'a>(conditions: impl Iterator<Item = &'a mut Condition>, previous: &[Condition], now: &Time) {
    for c in conditions {
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
    }
}

/// Logs every condition that changed since the previous publication: a
/// warning for the ones that report a problem, info for the others.
pub fn log_changes(current: &Statuses, previous: &Statuses) {
    let changed = |new: &Condition, old: Option<&[Condition]>| {
        old.and_then(|o| o.iter().find(|p| p.type_ == new.type_))
            .is_none_or(|p| p.status != new.status || p.reason != new.reason || p.message != new.message)
    };
    let emit = |object: &str, c: &Condition| {
        let problem = match c.type_.as_str() {
            "Conflicted" | "PartiallyInvalid" => c.status == "True",
            _ => c.status != "True",
        };
        if problem {
            tracing::warn!(object, condition = %c.type_, status = %c.status, reason = %c.reason, message = %c.message, "status");
        } else {
            tracing::info!(object, condition = %c.type_, status = %c.status, reason = %c.reason, "status");
        }
    };
    for (name, status) in &current.gateway_classes {
        let old = previous.gateway_classes.get(name).and_then(|s| s.conditions.as_deref());
        for c in status.conditions.iter().flatten().filter(|c| changed(c, old)) {
            emit(&format!("GatewayClass {name}"), c);
        }
    }
    for (key, status) in &current.gateways {
        let old = previous.gateways.get(key);
        for c in status.conditions.iter().flatten().filter(|c| changed(c, old.and_then(|s| s.conditions.as_deref()))) {
            emit(&format!("Gateway {key}"), c);
        }
        for listener in status.listeners.iter().flatten() {
            let old_listener = old
                .and_then(|s| s.listeners.as_ref())
                .and_then(|ls| ls.iter().find(|l| l.name == listener.name))
                .map(|l| l.conditions.as_slice());
            for c in listener.conditions.iter().filter(|c| changed(c, old_listener)) {
                emit(&format!("Gateway {key} listener {}", listener.name), c);
            }
        }
    }
    for (key, status) in &current.listener_sets {
        let old = previous.listener_sets.get(key);
        for c in status.conditions.iter().flatten().filter(|c| changed(c, old.and_then(|s| s.conditions.as_deref()))) {
            emit(&format!("ListenerSet {key}"), c);
        }
        for listener in status.listeners.iter().flatten() {
            let old_listener = old
                .and_then(|s| s.listeners.as_ref())
                .and_then(|ls| ls.iter().find(|l| l.name == listener.name))
                .map(|l| l.conditions.as_slice());
            for c in listener.conditions.iter().filter(|c| changed(c, old_listener)) {
                emit(&format!("ListenerSet {key} listener {}", listener.name), c);
            }
        }
    }
    let routes = [
        ("HTTPRoute", &current.http_routes, &previous.http_routes),
        ("GRPCRoute", &current.grpc_routes, &previous.grpc_routes),
    ];
    for (kind, current, previous) in routes {
        for (key, parents) in current {
            for parent in parents {
                let old = previous
                    .get(key)
                    .and_then(|ps| ps.iter().find(|p| p.parent_ref == parent.parent_ref))
                    .map(|p| p.conditions.as_slice());
                for c in parent.conditions.iter().filter(|c| changed(c, old)) {
                    emit(&format!("{kind} {key} parent {}", parent.parent_ref.name), c);
                }
            }
        }
    }
    for (key, ancestors) in &current.backend_tls_policies {
        for ancestor in ancestors {
            let old = previous
                .backend_tls_policies
                .get(key)
                .and_then(|a| a.iter().find(|o| o.ancestor_ref == ancestor.ancestor_ref))
                .map(|a| a.conditions.as_slice());
            for c in ancestor.conditions.iter().filter(|c| changed(c, old)) {
                emit(&format!("BackendTLSPolicy {key} ancestor {}", ancestor.ancestor_ref.name), c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Timestamp;
    use crate::compiler::condition;

    #[test]
    fn unchanged_conditions_keep_their_time() {
        let t = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let mut old = condition("Accepted", true, "Accepted", "", Some(1));
        old.last_transition_time = t(100);
        let mut same = condition("Accepted", true, "Accepted", "new message", Some(2));
        let mut flipped = condition("Accepted", false, "Invalid", "", Some(2));
        stamp_conditions(std::iter::once(&mut same), std::slice::from_ref(&old), &t(200));
        stamp_conditions(std::iter::once(&mut flipped), std::slice::from_ref(&old), &t(200));
        assert_eq!(same.last_transition_time, t(100));
        assert_eq!(flipped.last_transition_time, t(200));
    }
}
