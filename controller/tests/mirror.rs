//! RequestMirror as a client and a mirror see it: the mirror gets a copy of
//! the request after the rule's other filters (body included, up to the
//! limit), the client gets the primary backend's answer without waiting for
//! a mirror, a dead or silent mirror costs the primary nothing, copies
//! beyond the in-flight bound are dropped and counted, and percent 0 / 100
//! and fractions sample as they say.

mod support;

use std::time::{Duration, Instant};

use agimo_dataplane::Config;
use agimo_testkit::client::{self, Mode};
use agimo_testkit::recorder::{Recorded, Recorder};
use agimo_testkit::wait::eventually;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{Agimo, base_yaml, service_at};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A route on `/` to the echo backend `app`, mirrored by `filters` (YAML
/// list items at the rule's indentation).
fn mirrored_route(filters: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirrored, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
{filters}
    backendRefs: [{{name: app, port: 80}}]
"
    )
}

fn mirror_to(service: &str, extra: &str) -> String {
    format!("    - type: RequestMirror\n      requestMirror: {{backendRef: {{name: {service}, port: 80}}{extra}}}\n")
}

async fn start(yaml: &str, config: Config) -> Agimo {
    Agimo::start_with(&(base_yaml(&["app"]) + yaml), &["app"], config).await
}

fn dropped(agimo: &Agimo, reason: &str) -> String {
    let text = agimo.dataplane.metrics().render();
    let line = format!("mirror_requests_dropped_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or("0").trim().to_owned()
}

fn sent(agimo: &Agimo, outcome: &str) -> String {
    let text = agimo.dataplane.metrics().render();
    let line = format!("mirror_requests_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or("0").trim().to_owned()
}

async fn recorded(recorder: &Recorder, n: usize) -> Vec<Recorded> {
    eventually(&format!("{n} copies recorded"), || async {
        let got = recorder.requests();
        if got.len() >= n { Ok(got) } else { Err(format!("{} copies", got.len())) }
    })
    .await
}

#[tokio::test]
async fn the_mirror_gets_the_request_after_the_rules_filters() {
    let recorder = Recorder::spawn().await.unwrap();
    let filters = "    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: X-Set, value: s}], add: [{name: X-Add, value: b}], remove: [X-Remove]}\n".to_owned()
        + &mirror_to("rec", "");
    let yaml = service_at("rec", &recorder.addr.port().to_string()) + &mirrored_route(&filters);
    let agimo = start(&yaml, Config::default()).await;
    let req = Request::get("/mirror?id=1")
        .header("host", "mirror.example")
        .header("x-add", "a")
        .header("x-remove", "gone")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = client::send(agimo.addr(8080), Mode::Http1, req).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.echo();
    assert_eq!(echo.backend, "app");
    let copy = &recorded(&recorder, 1).await[0];
    assert!(copy.head_text().starts_with("GET /mirror?id=1 HTTP/1.1\r\n"), "{copy:?}");
    assert_eq!(copy.header("host"), ["mirror.example"]);
    assert_eq!(copy.header("x-set"), ["s"]);
    assert_eq!(copy.header("x-add"), ["a,b"]);
    assert!(copy.header("x-remove").is_empty(), "{copy:?}");
    assert!(copy.problems.is_empty(), "{copy:?}");
    eventually("one copy answered", || async { sent(&agimo, "answered") == "1" }).await;
}

#[tokio::test]
async fn bodies_are_mirrored_up_to_the_limit() {
    let recorder = Recorder::spawn().await.unwrap();
    let yaml = service_at("rec", &recorder.addr.port().to_string()) + &mirrored_route(&mirror_to("rec", ""));
    let config = Config { mirror_max_body_bytes: 1024, ..Config::default() };
    let agimo = start(&yaml, config).await;
    let post = |body: Bytes| {
        let req = Request::post("/upload").header("host", "a.example").body(Full::new(body)).unwrap();
        client::send(agimo.addr(8080), Mode::Http1, req)
    };
    let reply = post(Bytes::from_static(b"hello, mirror")).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let copy = &recorded(&recorder, 1).await[0];
    assert!(copy.head_text().starts_with("POST /upload HTTP/1.1\r\n"), "{copy:?}");
    assert_eq!(copy.payload, b"hello, mirror");
    assert!(copy.problems.is_empty(), "{copy:?}");

    // A chunked body: the copy is framed by its length.
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let chunked = "POST /chunked HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   5\r\nhello\r\n7\r\n, again\r\n0\r\n\r\n";
    stream.write_all(chunked.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let copy = &recorded(&recorder, 2).await[1];
    assert!(copy.head_text().starts_with("POST /chunked HTTP/1.1\r\n"), "{copy:?}");
    assert_eq!(copy.payload, b"hello, again");
    assert!(copy.problems.is_empty(), "{copy:?}");

    // Longer than the limit: the primary gets it whole, the mirror nothing.
    let reply = post(Bytes::from(vec![b'x'; 4096])).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    eventually("one copy dropped for its body", || async { dropped(&agimo, "body_too_large") == "1" }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.requests().len(), 2);
}

/// A port nothing listens on: connections to it are refused.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_dead_mirror_costs_the_primary_nothing() {
    let yaml = service_at("dead", &dead_port().await.to_string()) + &mirrored_route(&mirror_to("dead", ""));
    let agimo = start(&yaml, Config::default()).await;
    for _ in 0..5 {
        let reply = agimo.get(8080, "a.example", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.echo().backend, "app");
    }
    eventually("five copies failed", || async { sent(&agimo, "failed") == "5" }).await;
}

#[tokio::test]
async fn a_silent_mirror_costs_the_primary_nothing_and_copies_beyond_the_bound_are_dropped() {
    // Accepts connections, reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let yaml = service_at("silent", &port.to_string()) + &mirrored_route(&mirror_to("silent", ""));
    let config = Config { mirror_max_in_flight: 2, mirror_timeout: Duration::from_millis(800), ..Config::default() };
    let agimo = start(&yaml, config).await;
    let started = Instant::now();
    for _ in 0..5 {
        let reply = agimo.get(8080, "a.example", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert!(started.elapsed() < Duration::from_millis(500), "the primary waited: {:?}", started.elapsed());
    // Two copies hold the two slots; the three after them are dropped.
    assert_eq!(dropped(&agimo, "in_flight_limit"), "3");
    // The mirror timeout frees the slots: later copies are sent again.
    eventually("two copies timed out", || async { sent(&agimo, "failed") == "2" }).await;
    let reply = agimo.get(8080, "a.example", "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(dropped(&agimo, "in_flight_limit"), "3");
}

#[tokio::test]
async fn percent_and_fraction_sample_requests() {
    let (none, all, half) =
        (Recorder::spawn().await.unwrap(), Recorder::spawn().await.unwrap(), Recorder::spawn().await.unwrap());
    let filters = mirror_to("none", ", percent: 0")
        + &mirror_to("all", ", percent: 100")
        + &mirror_to("half", ", fraction: {numerator: 25, denominator: 50}");
    let yaml = service_at("none", &none.addr.port().to_string())
        + &service_at("all", &all.addr.port().to_string())
        + &service_at("half", &half.addr.port().to_string())
        + &mirrored_route(&filters);
    let agimo = start(&yaml, Config::default()).await;
    let n = 200;
    for _ in 0..n {
        let reply = agimo.get(8080, "a.example", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    recorded(&all, n).await;
    // Binomial(200, 0.5): 100 ± 7; 60..=140 is more than 5 standard deviations.
    // Copies are sent before the primary's answer comes back; give the
    // last ones a moment to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all.requests().len(), n);
    let halves = half.requests().len();
    assert!((60..=140).contains(&halves), "{halves} of {n} mirrored at 25/50");
    assert!(none.requests().is_empty());
}
