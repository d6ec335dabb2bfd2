//! The compiler as a whole, on small worlds made with builders: what a user
//! sees in the snapshot and the statuses.

use std::time::Duration;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::{Action, BackendTarget, ObjectRef, Rule};

use super::*;
use crate::api::Condition;
use crate::sources::files::load_str;

/// A world of our GatewayClass `agimo` and `objects` (YAML documents).
fn mk_world(objects: &[String]) -> World {
    let class = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: agimo}
spec: {controllerName: agimo.dev/gateway-controller}
";
    let text: String = std::iter::once(class.to_owned()).chain(objects.iter().map(|o| format!("---\n{o}"))).collect();
    load_str("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// Gateway `default/<name>` on 10.0.0.1 with `listeners` (a YAML flow list)
/// and `spec` (more spec fields, indented by two spaces).
fn mk_gateway(name: &str, listeners: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  gatewayClassName: agimo
  addresses: [{{value: 10.0.0.1}}]
  listeners: {listeners}
{spec}"
    )
}

/// HTTP listener `http` on port 80.
const HTTP: &str = "[{name: http, port: 80, protocol: HTTP}]";

/// HTTPRoute `default/<name>` on Gateway `gw`, one rule to `backend` port
/// 80, with `annotations` (a YAML flow map).
fn mk_route(name: &str, annotations: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default, annotations: {annotations}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]
"
    )
}

/// Service `default/<name>` with port 80.
fn mk_service(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
"
    )
}

fn key(name: &str) -> ObjectRef {
    ObjectRef { namespace: "default".into(), name: name.into() }
}

/// Every rule the snapshot serves.
fn rules(snapshot: &Snapshot) -> Vec<&Rule> {
    let listeners = snapshot.binds.iter().flat_map(|b| &b.listeners);
    listeners.flat_map(|l| l.routes.buckets()).flat_map(|b| &b.entries).map(|e| e.rule.as_ref()).collect()
}

/// How long the first rule holds requests, if it does.
fn wait_timeout(snapshot: &Snapshot) -> Option<Duration> {
    rules(snapshot)[0].gate.as_ref().map(|g| g.wait_timeout)
}

/// A condition of route `name` on its first parent.
fn route_condition<'s>(statuses: &'s Statuses, name: &str, type_: &str) -> &'s Condition {
    let parent = &statuses.http_routes[&key(name)][0];
    parent.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} on route {name}"))
}

/// A condition of listener `listener` of Gateway `gateway`.
fn listener_condition<'s>(statuses: &'s Statuses, gateway: &str, listener: &str, type_: &str) -> &'s Condition {
    let listeners = statuses.gateways[&key(gateway)].listeners.iter().flatten();
    let l = listeners.into_iter().find(|l| l.name == listener).expect("listener status");
    l.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} on {listener}"))
}

#[test]
fn a_bad_annotation_keeps_the_value_the_previous_compile_carried_over() {
    let gated = |timeout: &str| {
        let annotations = format!("{{agimo.dev/scale-to-zero: \"true\", agimo.dev/wait-timeout: {timeout}}}");
        mk_world(&[mk_gateway("gw", HTTP, ""), mk_route("r", &annotations, "app"), mk_service("app")])
    };
    let first = compile(&gated("30s"), &Carryover::default());
    assert_eq!(wait_timeout(&first.snapshot), Some(Duration::from_secs(30)));
    assert_eq!(first.carryover.annotation_in_force("HTTPRoute default/r", "agimo.dev/wait-timeout"), Some("30s"));

    let second = compile(&gated("soon"), &first.carryover);
    assert_eq!(wait_timeout(&second.snapshot), Some(Duration::from_secs(30)));
    let condition = route_condition(&second.statuses, "r", "agimo.dev/ScaleToZero");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "InvalidAnnotation"));
    assert!(condition.message.contains("keeping the previous value \"30s\""), "{}", condition.message);
    assert_eq!(second.carryover, first.carryover, "the last good value is carried on");

    // Without the carryover, the bad value falls back to the default.
    let fresh = compile(&gated("soon"), &Carryover::default());
    assert_eq!(wait_timeout(&fresh.snapshot), Some(Duration::from_secs(60)));
    let condition = route_condition(&fresh.statuses, "r", "agimo.dev/ScaleToZero");
    assert!(condition.message.contains("using the default"), "{}", condition.message);
}

#[test]
fn a_backend_ref_to_a_missing_service_answers_500_and_says_why() {
    let world = mk_world(&[mk_gateway("gw", HTTP, ""), mk_route("r", "{}", "missing")]);
    let compiled = compile(&world, &Carryover::default());
    let rules = rules(&compiled.snapshot);
    let Action::Forward(backends) = &rules[0].action else { panic!("{:?}", rules[0].action) };
    assert!(
        matches!(&backends.backends[0].target, BackendTarget::Invalid(why) if why.contains("Service default/missing not found")),
        "{:?}",
        backends.backends[0].target
    );
    let resolved = route_condition(&compiled.statuses, "r", "ResolvedRefs");
    assert_eq!((resolved.status.as_str(), resolved.reason.as_str()), ("False", "BackendNotFound"));
    assert_eq!(route_condition(&compiled.statuses, "r", "Accepted").status, "True", "the route still attaches");
}

#[test]
fn a_route_on_a_gateway_that_is_not_accepted_says_why() {
    let parameters = "  infrastructure: {parametersRef: {group: example.com, kind: Config, name: c}}\n";
    let world = mk_world(&[mk_gateway("gw", HTTP, parameters), mk_route("r", "{}", "app"), mk_service("app")]);
    let compiled = compile(&world, &Carryover::default());
    assert!(compiled.snapshot.binds.is_empty(), "nothing is served");
    let accepted = route_condition(&compiled.statuses, "r", "Accepted");
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "GatewayNotAccepted"));
    assert!(accepted.message.contains("Agimo takes no Gateway parameters"), "{}", accepted.message);
}

#[test]
fn listeners_on_one_port_with_two_protocols_conflict_and_are_not_served() {
    let listeners = "[{name: http, port: 80, protocol: HTTP}, \
                     {name: https, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}]";
    let compiled = compile(&mk_world(&[mk_gateway("gw", listeners, "")]), &Carryover::default());
    for listener in ["http", "https"] {
        let conflicted = listener_condition(&compiled.statuses, "gw", listener, "Conflicted");
        assert_eq!((conflicted.status.as_str(), conflicted.reason.as_str()), ("True", "ProtocolConflict"));
    }
    assert!(compiled.snapshot.binds.is_empty());
}
