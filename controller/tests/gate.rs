//! Scale-to-zero in process: requests for a backend without ready endpoints
//! are held, counted in `pending_requests_total`, and released to the first
//! endpoint that turns ready, for every protocol; timeouts, overflow and
//! clients that give up.

mod support;

use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::wait::eventually;
use futures_util::{SinkExt, StreamExt};
use support::{Agimo, HttpRoute, base_yaml, metric, route_for_host, service_without_endpoints};
use tokio_tungstenite::tungstenite::Message;

/// Gateway `gw`, the echo backend `app` (listening, but with no endpoint in
/// its Service yet), and a route for host `app.example` with `annotations`.
fn scaled_to_zero(annotations: &str) -> String {
    base_yaml(&[])
        + &service_without_endpoints("app")
        + &format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
  namespace: default
  annotations: {{{annotations}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [app.example]
  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
"
        )
}

/// The same world with the `app` endpoint ready.
fn scaled_up(annotations: &str) -> String {
    scaled_to_zero(annotations).replace(&service_without_endpoints("app"), &support::service_yaml("app"))
}

const GATED: &str = "agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 30s";

fn gauge(agimo: &Agimo, name: &str) -> f64 {
    metric(&agimo.dataplane.metrics().render(), name, "app.example").unwrap_or(0.0)
}

/// Waits (up to 5 s) until `pending_requests_total{host="app.example"}` is `n`.
async fn pending(agimo: &Agimo, n: f64) {
    let started = Instant::now();
    while gauge(agimo, "pending_requests_total") != n {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "pending never reached {n}: {}",
            gauge(agimo, "pending_requests_total")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn held_requests_of_every_protocol_complete_once_an_endpoint_is_ready() {
    let agimo = Agimo::start(&scaled_to_zero(GATED), &["app"]).await;
    let addr = agimo.addr(8080);

    // HTTP/1.1 with a body, h2c, a websocket upgrade and a streaming response,
    // all sent while the backend has no endpoint.
    let mut post = client::get("app.example", "/upload");
    *post.method_mut() = http::Method::POST;
    *post.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 100_000]));
    let h1 = tokio::spawn(client::send(addr, Mode::Http1, post));
    let h2 = tokio::spawn(client::send(addr, Mode::H2c, client::get("app.example", "/over-h2")));
    let ws = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async("ws://app.example:8080/ws", stream).await
    });
    let sse = tokio::spawn(client::send(addr, Mode::Http1, client::get("app.example", "/stream?n=2&interval_ms=50")));
    pending(&agimo, 4.0).await;
    assert_eq!(gauge(&agimo, "requests_total"), 4.0);
    assert_eq!(gauge(&agimo, "active_requests_total"), 0.0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!h1.is_finished() && !h2.is_finished() && !ws.is_finished() && !sse.is_finished(), "requests wait");

    // The workload scales up: its endpoint turns ready.
    agimo.apply(&scaled_up(GATED)).await;
    let echo = h1.await.unwrap().unwrap().echo();
    assert_eq!((echo.backend.as_str(), echo.method.as_str(), echo.body_bytes), ("app", "POST", 100_000));
    let reply = h2.await.unwrap().unwrap();
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.echo().path, "/over-h2");
    let sse = sse.await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&sse.body), "data: app 0\n\ndata: app 1\n\n");
    let (mut ws, response) = ws.await.unwrap().expect("websocket upgrade after the hold");
    assert_eq!(response.status(), 101);
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
    // The open websocket is the one active request.
    assert_eq!(gauge(&agimo, "active_requests_total"), 1.0);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.close(None).await.unwrap();
    drop(ws);
    let started = Instant::now();
    while gauge(&agimo, "active_requests_total") != 0.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the closed websocket stays active");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Scaled back to zero: a new request is held again.
    agimo.apply(&scaled_to_zero(GATED)).await;
    let again = tokio::spawn(client::send(addr, Mode::Http1, client::get("app.example", "/again")));
    pending(&agimo, 1.0).await;
    agimo.apply(&scaled_up(GATED)).await;
    assert_eq!(again.await.unwrap().unwrap().status, 200);
    assert_eq!(gauge(&agimo, "requests_total"), 5.0);
}

#[tokio::test]
async fn a_request_waits_at_most_the_wait_timeout() {
    let agimo =
        Agimo::start(&scaled_to_zero("agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 300ms"), &["app"]).await;
    let started = Instant::now();
    let reply = agimo.get(8080, "app.example", "/").await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-agimo-reason"), Some("wait-timeout"));
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
}

#[tokio::test]
async fn beyond_max_pending_requests_are_refused_with_retry_after() {
    let agimo =
        Agimo::start(&scaled_to_zero("agimo.dev/scale-to-zero: 'true', agimo.dev/max-pending: '2'"), &["app"]).await;
    let addr = agimo.addr(8080);
    let held: Vec<_> =
        (0..2).map(|_| tokio::spawn(client::send(addr, Mode::Http1, client::get("app.example", "/")))).collect();
    pending(&agimo, 2.0).await;
    let refused = agimo.get(8080, "app.example", "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-agimo-reason"), Some("too-many-pending"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(gauge(&agimo, "pending_requests_total"), 2.0);
    agimo.apply(&scaled_up("agimo.dev/scale-to-zero: 'true', agimo.dev/max-pending: '2'")).await;
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
}

#[tokio::test]
async fn a_client_that_gives_up_is_no_longer_pending() {
    use tokio::io::AsyncWriteExt;
    let agimo = Agimo::start(&scaled_to_zero(GATED), &["app"]).await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n").await.unwrap();
    pending(&agimo, 1.0).await;
    drop(stream);
    pending(&agimo, 0.0).await;
    // HTTP/2: the stream is reset, the connection stays.
    let h2 = tokio::spawn(client::send(agimo.addr(8080), Mode::H2c, client::get("app.example", "/")));
    pending(&agimo, 1.0).await;
    h2.abort();
    pending(&agimo, 0.0).await;
}

#[tokio::test]
async fn weighted_backends_prefer_a_ready_one_and_ungated_routes_do_not_wait() {
    let yaml = base_yaml(&["ready"])
        + &service_without_endpoints("asleep")
        + &HttpRoute::new("split")
            .annotation("agimo.dev/scale-to-zero", "true")
            .hostname("split.example")
            .weighted("asleep", 90)
            .weighted("ready", 10)
            .yaml()
        + &route_for_host("plain", "plain.example", "asleep");
    let agimo = Agimo::start(&yaml, &["ready"]).await;
    let hits = agimo.backends_hit(8080, "split.example", "/", 50).await;
    assert_eq!(hits.get("ready"), Some(&50), "{hits:?}");
    let started = Instant::now();
    let plain = agimo.get(8080, "plain.example", "/").await;
    assert_eq!(plain.status, 503);
    assert_eq!(plain.header("x-agimo-reason"), Some("no-ready-endpoints"));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn gateway_defaults_route_overrides_and_bad_values() {
    let yaml = |route_annotations: &str| {
        scaled_to_zero(route_annotations).replace(
            "metadata: {name: gw, namespace: default}",
            "metadata: {name: gw, namespace: default, annotations: {agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 200ms}}",
        )
    };
    // The Gateway's annotations are the default: held, then 504 after 200ms.
    let agimo = Agimo::start(&yaml(""), &["app"]).await;
    let started = Instant::now();
    assert_eq!(agimo.get(8080, "app.example", "/").await.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(180));
    // The route turns it off: 503 at once.
    agimo.apply(&yaml("agimo.dev/scale-to-zero: 'false'")).await;
    assert_eq!(agimo.get(8080, "app.example", "/").await.status, 503);
    // The route sets its own timeout; then a bad value keeps it in force.
    let statuses = agimo.apply(&yaml("agimo.dev/wait-timeout: 400ms")).await;
    let started = Instant::now();
    assert_eq!(agimo.get(8080, "app.example", "/").await.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(380), "{:?}", started.elapsed());
    let condition = |statuses: &agimo_controller::Statuses| {
        let parents = &statuses.http_routes.values().next().unwrap()[0];
        parents.conditions.iter().find(|c| c.type_ == "agimo.dev/ScaleToZero").cloned().unwrap()
    };
    let c = condition(&statuses);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Enabled"));
    let statuses = agimo.apply(&yaml("agimo.dev/wait-timeout: soon")).await;
    let c = condition(&statuses);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "InvalidAnnotation"));
    assert!(c.message.contains("agimo.dev/wait-timeout \"soon\" is invalid"), "{}", c.message);
    assert!(c.message.contains("keeping the previous value \"400ms\""), "{}", c.message);
    let started = Instant::now();
    assert_eq!(agimo.get(8080, "app.example", "/").await.status, 504);
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "the previous 400ms stays in force: {:?}",
        started.elapsed()
    );
}

/// A loopback port that is bound but does not listen: connects to it are
/// refused, as to a pod that is Ready before its process listens (a
/// container without a readiness probe), until [`NotListening::listen`].
struct NotListening {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl NotListening {
    fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        NotListening { socket, port }
    }

    /// The echo backend `name` starts listening on the port.
    fn listen(self, name: &str) -> tokio::task::JoinHandle<()> {
        let listener = self.socket.listen(1024).unwrap();
        tokio::spawn(agimo_testkit::echo::serve(listener, name.to_owned()))
    }
}

/// [`scaled_to_zero`] with the `app` endpoint ready at 127.0.0.1:`port`.
fn ready_at(annotations: &str, port: u16) -> String {
    scaled_to_zero(annotations)
        .replace(&service_without_endpoints("app"), &support::service_at("app", &port.to_string()))
}

#[tokio::test]
async fn a_released_request_waits_for_its_endpoint_to_listen() {
    let agimo = Agimo::start(&scaled_to_zero(GATED), &[]).await;
    let pod = NotListening::new();
    let held = tokio::spawn(client::send(agimo.addr(8080), Mode::Http1, client::get("app.example", "/first")));
    pending(&agimo, 1.0).await;
    // The endpoint turns ready before anything listens on it: the request
    // is released to it, its connects are refused, and it keeps waiting.
    agimo.apply(&ready_at(GATED, pod.port)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the request waits for the endpoint to listen");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 1.0, "still pending while it connects");
    assert_eq!(gauge(&agimo, "active_requests_total"), 0.0);
    let _app = pod.listen("app");
    let reply = held.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.echo();
    assert_eq!((echo.backend.as_str(), echo.path.as_str()), ("app", "/first"));
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
    // A request that finds the endpoint ready connects at once.
    assert_eq!(agimo.get(8080, "app.example", "/second").await.status, 200);
}

#[tokio::test]
async fn retries_follow_the_endpoints_as_they_change() {
    let agimo = Agimo::start(&scaled_to_zero(GATED), &["app"]).await;
    let pod = NotListening::new();
    let held = tokio::spawn(client::send(agimo.addr(8080), Mode::Http1, client::get("app.example", "/")));
    pending(&agimo, 1.0).await;
    agimo.apply(&ready_at(GATED, pod.port)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The endpoint that never listened goes away: the request waits again,
    // still pending, until another is ready, and goes there.
    agimo.apply(&scaled_to_zero(GATED)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!held.is_finished());
    assert_eq!(gauge(&agimo, "pending_requests_total"), 1.0);
    agimo.apply(&scaled_up(GATED)).await;
    let reply = held.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.echo().backend, "app");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
    drop(pod);
}

#[tokio::test]
async fn a_request_gives_up_at_the_deadline_when_its_endpoint_never_listens() {
    const ONE_SECOND: &str = "agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 1s";
    let agimo = Agimo::start(&scaled_to_zero(ONE_SECOND), &[]).await;
    let pod = NotListening::new();
    let started = Instant::now();
    let held = tokio::spawn(client::send(agimo.addr(8080), Mode::Http1, client::get("app.example", "/")));
    pending(&agimo, 1.0).await;
    agimo.apply(&ready_at(ONE_SECOND, pod.port)).await;
    let reply = held.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.header("x-agimo-reason"), Some("wait-timeout"));
    let body = String::from_utf8_lossy(&reply.body);
    let endpoint = format!("backend default/app:80 at 127.0.0.1:{}, failed: ", pod.port);
    assert!(body.contains(&endpoint) && body.contains("refused"), "{body}");
    assert!(waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
    assert_eq!(gauge(&agimo, "active_requests_total"), 0.0);

    // A request that finds the endpoint ready, but refusing, waits the same
    // way from its arrival, counted as pending.
    let started = Instant::now();
    let direct = tokio::spawn(client::send(agimo.addr(8080), Mode::Http1, client::get("app.example", "/")));
    pending(&agimo, 1.0).await;
    assert_eq!(gauge(&agimo, "active_requests_total"), 0.0);
    let reply = direct.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!((reply.status.as_u16(), reply.header("x-agimo-reason")), (504, Some("wait-timeout")));
    assert!(waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
}

#[tokio::test]
async fn requests_of_every_protocol_wait_for_their_endpoint_to_listen() {
    let h2_at_zero = "---
apiVersion: v1
kind: Service
metadata: {name: h2app, namespace: default}
spec: {ports: [{name: h2c, port: 80, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: h2app, namespace: default, labels: {kubernetes.io/service-name: h2app}}
addressType: IPv4
ports: [{name: h2c, port: 1}]
endpoints: []
"
    .to_owned()
        + &HttpRoute::new("h2app")
            .annotation("agimo.dev/scale-to-zero", "true")
            .annotation("agimo.dev/wait-timeout", "30s")
            .hostname("h2.example")
            .backend("h2app")
            .yaml();
    let agimo = Agimo::start(&(scaled_to_zero(GATED) + &h2_at_zero), &[]).await;
    let addr = agimo.addr(8080);
    let (app, h2app) = (NotListening::new(), NotListening::new());

    // A POST with a body and a websocket upgrade (hyper's HTTP/1.1 client to
    // the backend), an h2c client (Agimo's own HTTP/1.1 to the backend), and
    // a request to an h2c backend.
    let mut post = client::get("app.example", "/upload");
    *post.method_mut() = http::Method::POST;
    *post.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 100_000]));
    let post = tokio::spawn(client::send(addr, Mode::Http1, post));
    let h2 = tokio::spawn(client::send(addr, Mode::H2c, client::get("app.example", "/over-h2")));
    let ws = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async("ws://app.example:8080/ws", stream).await
    });
    let to_h2c = tokio::spawn(client::send(addr, Mode::Http1, client::get("h2.example", "/to-h2c")));
    pending(&agimo, 3.0).await;
    let h2_pending = || metric(&agimo.dataplane.metrics().render(), "pending_requests_total", "h2.example");
    eventually("the h2 request is held", || async { h2_pending() == Some(1.0) }).await;

    let h2_ready = h2_at_zero.replace(
        "port: 1}]\nendpoints: []",
        &format!("port: {}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]", h2app.port),
    );
    agimo.apply(&(ready_at(GATED, app.port) + &h2_ready)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!post.is_finished() && !h2.is_finished() && !ws.is_finished() && !to_h2c.is_finished(), "they wait");
    assert_eq!(gauge(&agimo, "pending_requests_total"), 3.0);
    assert_eq!(h2_pending(), Some(1.0));
    let _servers = (app.listen("app"), h2app.listen("h2app"));

    let echo = post.await.unwrap().unwrap().echo();
    assert_eq!((echo.backend.as_str(), echo.method.as_str(), echo.body_bytes), ("app", "POST", 100_000));
    let reply = h2.await.unwrap().unwrap();
    assert_eq!((reply.status.as_u16(), reply.version), (200, http::Version::HTTP_2));
    assert_eq!(reply.echo().path, "/over-h2");
    let (mut ws, response) = ws.await.unwrap().expect("websocket upgrade after the endpoint listens");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let echo = to_h2c.await.unwrap().unwrap().echo();
    assert_eq!((echo.backend.as_str(), echo.proto.as_str(), echo.path.as_str()), ("h2app", "HTTP/2.0", "/to-h2c"));
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
    assert_eq!(h2_pending(), Some(0.0));
    assert_eq!(gauge(&agimo, "active_requests_total"), 1.0, "the open websocket");
}

#[tokio::test]
async fn ungated_routes_fail_at_once_when_the_endpoint_refuses() {
    let pod = NotListening::new();
    let agimo = Agimo::start(&ready_at("", pod.port), &[]).await;
    let started = Instant::now();
    let reply = agimo.get(8080, "app.example", "/").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("x-agimo-reason"), Some("upstream-connect-failed"));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(gauge(&agimo, "pending_requests_total"), 0.0);
}

#[tokio::test]
async fn a_client_that_gives_up_while_its_request_connects_is_no_longer_pending() {
    use tokio::io::AsyncWriteExt;
    let pod = NotListening::new();
    let agimo = Agimo::start(&ready_at(GATED, pod.port), &[]).await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n").await.unwrap();
    pending(&agimo, 1.0).await;
    drop(stream);
    pending(&agimo, 0.0).await;
    assert_eq!(gauge(&agimo, "active_requests_total"), 0.0);
}
