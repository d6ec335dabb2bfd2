//! GRPCRoutes in process: method and header matching with GRPCRoute
//! precedence, unary and streaming calls over h2c with trailers intact,
//! Agimo's own errors as gRPC errors, the HTTPRoute/GRPCRoute hostname rule,
//! and calls held at the scale-to-zero gate until a backend is ready.

mod support;

use std::time::{Duration, Instant};

use agimo_testkit::grpc::{self, GrpcReply};
use support::{Agimo, base_yaml, metric, service_without_endpoints};

/// A GRPCRoute `name` on `gw` with these hostnames, annotations and rules
/// (YAML list items).
fn grpc_route(name: &str, created: &str, hostnames: &str, annotations: &str, rules: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: '{created}', annotations: {{{annotations}}}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{hostnames}]
  rules:
{rules}"
    )
}

const RULES: &str = "  - matches: [{method: {service: pkg.Echo, method: Get}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{method: {service: pkg.Echo, method: Get}, headers: [{name: version, value: two}]}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{method: {service: pkg.Echo}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: service-only}]}}]
    backendRefs: [{name: v2, port: 80}]
";

async fn call(agimo: &Agimo, path: &str, metadata: &[(&str, &str)]) -> GrpcReply {
    grpc::unary(agimo.addr(8080), "grpc.example", path, metadata, b"hello").await.expect("a gRPC call")
}

#[tokio::test]
async fn calls_are_routed_by_service_method_and_headers_with_trailers_intact() {
    let yaml = base_yaml(&["v1", "v2"]) + &grpc_route("echo", "2026-01-01T00:00:00Z", "grpc.example", "", RULES);
    let agimo = Agimo::start(&yaml, &["v1", "v2"]).await;
    let statuses = agimo.apply(&yaml).await;
    let parents =
        &statuses.grpc_routes[&agimo_shared::snapshot::ObjectRef { namespace: "default".into(), name: "echo".into() }];
    let accepted = parents[0].conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("True", "Accepted"));
    let gateway =
        &statuses.gateways[&agimo_shared::snapshot::ObjectRef { namespace: "default".into(), name: "gw".into() }];
    let listener = &gateway.listeners.as_ref().unwrap()[0];
    let kinds: Vec<&str> = listener.supported_kinds.iter().flatten().map(|k| k.kind.as_str()).collect();
    assert_eq!(kinds, vec!["HTTPRoute", "GRPCRoute"]);
    assert_eq!(listener.attached_routes, 1);

    // Service and method: v1; with the header too, the match with more
    // header matches wins: v2.
    let reply = call(&agimo, "/pkg.Echo/Get", &[]).await;
    assert_eq!(reply.grpc_status(), Some(0), "{reply:?}");
    let echo = reply.echo();
    assert_eq!((echo.backend.as_str(), echo.path.as_str(), echo.proto.as_str()), ("v1", "/pkg.Echo/Get", "HTTP/2.0"));
    assert_eq!(echo.headers.get("te").map(String::as_str), Some("trailers"), "te: trailers reaches the backend");
    assert_eq!(reply.messages[1].as_ref(), b"hello", "the message reaches the backend and comes back");
    assert_eq!(reply.metadata("x-echo-backend"), Some("v1"), "the backend's trailers reach the client");
    let reply = call(&agimo, "/pkg.Echo/Get", &[("version", "two")]).await;
    assert_eq!(reply.echo().backend, "v2");
    // Another method of the service: the service-only rule, with its filter.
    let reply = call(&agimo, "/pkg.Echo/List", &[]).await;
    assert_eq!((reply.echo().backend.as_str(), reply.grpc_status()), ("v2", Some(0)));
    assert_eq!(reply.headers.get("x-route").unwrap(), "service-only");

    // Nothing matches: a trailers-only UNIMPLEMENTED, not a 404.
    let reply = call(&agimo, "/other.Svc/Get", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.grpc_status(), Some(12), "{reply:?}");
    assert_eq!(reply.headers.get("content-type").unwrap(), "application/grpc");
    assert_eq!(reply.metadata("x-agimo-reason"), Some("no-route"));
    assert!(reply.grpc_message().unwrap().contains("/other.Svc/Get"), "{reply:?}");
    assert!(reply.messages.is_empty() && reply.trailers.is_empty(), "trailers-only: {reply:?}");
    // A host no listener serves: UNIMPLEMENTED too.
    let reply = grpc::unary(agimo.addr(8080), "elsewhere.example", "/pkg.Echo/Get", &[], b"x").await.unwrap();
    assert_eq!(reply.grpc_status(), Some(12), "{reply:?}");

    // A streaming call: each message comes back before the next is sent.
    let mut stream = grpc::open(agimo.addr(8080), "grpc.example", "/pkg.Echo/Chat").await.expect("a stream");
    assert_eq!(stream.status, 200);
    let first = stream.recv().await.unwrap().expect("the echo's description");
    assert!(String::from_utf8_lossy(&first).contains("\"backend\":\"v2\""));
    for message in [b"one".as_slice(), b"two"] {
        stream.send(message).await;
        assert_eq!(stream.recv().await.unwrap().as_deref(), Some(message));
    }
    stream.close_send();
    assert_eq!(stream.recv().await.unwrap(), None);
    assert_eq!(stream.trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn a_grpc_route_without_a_usable_backend_answers_unavailable() {
    let rules = "  - backendRefs: [{name: missing, port: 80}]\n";
    let yaml = base_yaml(&[]) + &grpc_route("broken", "2026-01-01T00:00:00Z", "grpc.example", "", rules);
    let agimo = Agimo::start(&yaml, &[]).await;
    let statuses = agimo.apply(&yaml).await;
    let parent = &statuses.grpc_routes.values().next().unwrap()[0];
    let resolved = parent.conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    assert_eq!((resolved.status.as_str(), resolved.reason.as_str()), ("False", "BackendNotFound"));
    // "If all entries in BackendRefs are invalid, and there are also no
    // filters specified in this route rule, all traffic which matches this
    // rule MUST receive an `UNAVAILABLE` status."
    let reply = call(&agimo, "/pkg.Echo/Get", &[]).await;
    assert_eq!(reply.grpc_status(), Some(14), "{reply:?}");
    assert_eq!(reply.metadata("x-agimo-reason"), Some("invalid-backend"));
}

#[tokio::test]
async fn an_http_route_and_a_grpc_route_never_share_a_hostname_on_a_listener() {
    let http_route = |created: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default, creationTimestamp: '{created}'}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ['*.example']
  rules: [{{backendRefs: [{{name: v1, port: 80}}]}}]
"
        )
    };
    let condition = |statuses: &agimo_controller::Statuses, grpc: bool| {
        let routes = if grpc { &statuses.grpc_routes } else { &statuses.http_routes };
        let accepted = routes.values().next().unwrap()[0].conditions.iter().find(|c| c.type_ == "Accepted").cloned();
        let accepted = accepted.unwrap();
        (accepted.status, accepted.reason)
    };
    // The HTTPRoute is older: it keeps *.example, and the GRPCRoute for
    // grpc.example (which intersects it) is refused.
    let older_http = base_yaml(&["v1", "v2"])
        + &http_route("2026-01-01T00:00:00Z")
        + &grpc_route("echo", "2026-01-02T00:00:00Z", "grpc.example", "", RULES);
    let agimo = Agimo::start(&older_http, &["v1", "v2"]).await;
    let statuses = agimo.apply(&older_http).await;
    assert_eq!(condition(&statuses, false), ("True".into(), "Accepted".into()));
    assert_eq!(condition(&statuses, true), ("False".into(), "HostnameConflict".into()));
    let reply = call(&agimo, "/pkg.Echo/Get", &[]).await;
    assert_eq!(reply.echo().path, "/pkg.Echo/Get");
    assert_eq!(reply.echo().backend, "v1", "served by the HTTPRoute");
    // The GRPCRoute is older: the HTTPRoute is refused.
    let older_grpc = base_yaml(&["v1", "v2"])
        + &http_route("2026-01-03T00:00:00Z")
        + &grpc_route("echo", "2026-01-02T00:00:00Z", "grpc.example", "", RULES);
    let statuses = agimo.apply(&older_grpc).await;
    assert_eq!(condition(&statuses, true), ("True".into(), "Accepted".into()));
    assert_eq!(condition(&statuses, false), ("False".into(), "HostnameConflict".into()));
    assert_eq!(agimo.get(8080, "www.example", "/").await.status, 404, "the HTTPRoute serves nothing");
}

#[tokio::test]
async fn calls_for_a_backend_at_zero_are_held_and_released_with_their_trailers() {
    let gated = "agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 30s";
    let rules = "  - backendRefs: [{name: app, port: 80}]\n";
    let at_zero = base_yaml(&[])
        + &service_without_endpoints("app")
        + &grpc_route("app", "2026-01-01T00:00:00Z", "grpc.example", gated, rules);
    let scaled_up = at_zero.replace(&service_without_endpoints("app"), &support::service_yaml("app"));
    let agimo = Agimo::start(&at_zero, &["app"]).await;
    let addr = agimo.addr(8080);

    let unary = tokio::spawn(grpc::unary(addr, "grpc.example", "/pkg.Echo/Get", &[], b"held"));
    let stream = tokio::spawn(grpc::open(addr, "grpc.example", "/pkg.Echo/Chat"));
    let pending = || metric(&agimo.dataplane.metrics().render(), "pending_requests_total", "grpc.example");
    let started = Instant::now();
    while pending() != Some(2.0) {
        assert!(started.elapsed() < Duration::from_secs(5), "the calls are not held: {:?}", pending());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!unary.is_finished() && !stream.is_finished(), "calls wait for a ready endpoint");

    // The workload scales up: both complete, trailers included.
    agimo.apply(&scaled_up).await;
    let reply = unary.await.unwrap().expect("the held unary call");
    assert_eq!((reply.grpc_status(), reply.echo().backend.as_str()), (Some(0), "app"));
    assert_eq!(reply.messages[1].as_ref(), b"held");
    let mut stream = stream.await.unwrap().expect("the held stream");
    assert!(stream.recv().await.unwrap().is_some());
    stream.send(b"after the hold").await;
    assert_eq!(stream.recv().await.unwrap().as_deref(), Some(b"after the hold".as_slice()));
    stream.close_send();
    assert_eq!(stream.recv().await.unwrap(), None);
    assert_eq!(stream.trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(pending(), Some(0.0));
    assert_eq!(metric(&agimo.dataplane.metrics().render(), "requests_total", "grpc.example"), Some(2.0));
}

#[tokio::test]
async fn a_held_call_that_times_out_is_deadline_exceeded() {
    let gated = "agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 300ms";
    let rules = "  - backendRefs: [{name: app, port: 80}]\n";
    let yaml = base_yaml(&[])
        + &service_without_endpoints("app")
        + &grpc_route("app", "2026-01-01T00:00:00Z", "grpc.example", gated, rules);
    let agimo = Agimo::start(&yaml, &[]).await;
    let reply = call(&agimo, "/pkg.Echo/Get", &[]).await;
    assert_eq!(reply.grpc_status(), Some(4), "{reply:?}");
    assert_eq!(reply.metadata("x-agimo-reason"), Some("wait-timeout"));
}
