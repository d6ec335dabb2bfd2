//! A rule's `retry` as a client sees it: in-process Agimo in front of
//! loopback backends that fail in chosen ways (a status code, a refused
//! connect, no answer), next to a healthy echo server.

mod support;

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{Agimo, gateway_yaml};

/// A backend that answers every request with `status`, or never answers
/// (`None`); it counts the requests it received and the body bytes of the
/// last one.
struct Failing {
    port: u16,
    hits: Arc<AtomicUsize>,
    body_bytes: Arc<AtomicUsize>,
}

async fn failing(status: Option<u16>) -> Failing {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let body_bytes = Arc::new(AtomicUsize::new(0));
    let (h, b) = (hits.clone(), body_bytes.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (hits, body_bytes) = (h.clone(), b.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let (hits, body_bytes) = (hits.clone(), body_bytes.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        body_bytes.store(body, Ordering::SeqCst);
                        match status {
                            Some(code) => {
                                let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"failed")));
                                *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                            None => std::future::pending().await,
                        }
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Failing { port, hits, body_bytes }
}

/// A port on loopback where nothing listens: connects are refused.
async fn refusing_port() -> u16 {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Service `svc` (port 80) with one EndpointSlice per port given (ports as
/// YAML, e.g. `{{port:echo}}`), each with the endpoint 127.0.0.1.
fn service(ports: &[&str]) -> String {
    let mut yaml = "---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec: {ports: [{name: http, port: 80}]}
"
    .to_owned();
    for (i, port) in ports.iter().enumerate() {
        yaml.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{i}, namespace: default, labels: {{kubernetes.io/service-name: svc}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
        ));
    }
    yaml
}

/// The Gateway, Service `svc` at `ports`, and an HTTPRoute with one rule to
/// it that has these extra fields (`retry`, `timeouts`; YAML at the rule's
/// indentation).
fn setup(ports: &[&str], rule: &str) -> String {
    gateway_yaml(support::HTTP_LISTENER)
        + &service(ports)
        + &format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: svc, port: 80}}]
{rule}"
        )
}

async fn post(agimo: &Agimo, path: &str, body: Vec<u8>) -> Reply {
    let req =
        http::Request::post(path).header(http::header::HOST, "r.example").body(Full::new(Bytes::from(body))).unwrap();
    client::send(agimo.addr(8080), Mode::Http1, req).await.expect("request")
}

#[tokio::test]
async fn a_retried_status_goes_to_the_other_endpoint_which_answers() {
    let broken = failing(Some(500)).await;
    let port = broken.port.to_string();
    let yaml = setup(&[&port, "{{port:echo}}"], "    retry: {codes: [500], attempts: 1, backoff: 1ms}\n");
    let agimo = Agimo::start(&yaml, &["echo"]).await;
    for i in 0..20 {
        let reply = agimo.get(8080, "r.example", &format!("/get/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.echo().backend, "echo");
        let reply = post(&agimo, "/post", b"small body".to_vec()).await;
        assert_eq!(reply.status, 200, "a POST is retried on a listed code: {reply:?}");
        assert_eq!(reply.echo().body_bytes, 10, "the kept body is sent again whole");
    }
    // With one endpoint of two broken, 40 requests all reached it first
    // with a chance of 2^-40 if no retry happened: the 200s above came from
    // retries too.
    assert!(broken.hits.load(Ordering::SeqCst) > 0, "the broken endpoint was tried");
}

#[tokio::test]
async fn when_attempts_run_out_the_last_response_is_returned() {
    let broken = failing(Some(503)).await;
    let port = broken.port.to_string();
    let yaml = setup(&[&port], "    retry: {codes: [503], attempts: 2, backoff: 1ms}\n");
    let agimo = Agimo::start(&yaml, &[]).await;
    let reply = agimo.get(8080, "r.example", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, Bytes::from_static(b"failed"), "the backend's own answer, not Agimo's");
    assert_eq!(broken.hits.load(Ordering::SeqCst), 3, "the first attempt and 2 retries");
    let reply = post(&agimo, "/", vec![b'x'; 1000]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(broken.hits.load(Ordering::SeqCst), 6);
    assert_eq!(broken.body_bytes.load(Ordering::SeqCst), 1000, "the last retry carried the whole body");
}

#[tokio::test]
async fn a_status_not_listed_is_not_retried() {
    let broken = failing(Some(502)).await;
    let port = broken.port.to_string();
    let yaml = setup(&[&port], "    retry: {codes: [500], attempts: 3, backoff: 1ms}\n");
    let agimo = Agimo::start(&yaml, &[]).await;
    assert_eq!(agimo.get(8080, "r.example", "/").await.status, 502);
    assert_eq!(broken.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connect_is_retried_to_a_live_endpoint() {
    let refused = refusing_port().await.to_string();
    let yaml = setup(&[&refused, "{{port:echo}}"], "    retry: {attempts: 1, backoff: 1ms}\n");
    let agimo = Agimo::start(&yaml, &["echo"]).await;
    for i in 0..20 {
        let reply = agimo.get(8080, "r.example", &format!("/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // Without a retry, the refused endpoint answers 503 with Agimo's reason.
    let alone = setup(&[&refused], "    retry: {attempts: 2, backoff: 1ms}\n");
    agimo.apply(&alone).await;
    let reply = agimo.get(8080, "r.example", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-agimo-reason"), Some("upstream-connect-failed"));
}

#[tokio::test]
async fn a_backend_request_timeout_is_retried_to_a_live_endpoint() {
    let silent = failing(None).await;
    let port = silent.port.to_string();
    let rule = "    timeouts: {backendRequest: 200ms}\n    retry: {attempts: 1, backoff: 1ms}\n";
    let agimo = Agimo::start(&setup(&[&port, "{{port:echo}}"], rule), &["echo"]).await;
    for i in 0..10 {
        let started = Instant::now();
        let reply = agimo.get(8080, "r.example", &format!("/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    }
    assert!(silent.hits.load(Ordering::SeqCst) > 0, "the silent endpoint was tried");
}

#[tokio::test]
async fn the_request_timeout_bounds_every_attempt_and_wait() {
    let silent = failing(None).await;
    let port = silent.port.to_string();
    let rule = "    timeouts: {request: 700ms, backendRequest: 200ms}\n    retry: {attempts: 10, backoff: 50ms}\n";
    let agimo = Agimo::start(&setup(&[&port], rule), &[]).await;
    let started = Instant::now();
    let reply = agimo.get(8080, "r.example", "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-agimo-reason"), Some("timeout"));
    assert!(took < Duration::from_millis(1000), "{took:?}");
    let hits = silent.hits.load(Ordering::SeqCst);
    assert!((2..=3).contains(&hits), "200 ms attempts with 50 ms and more between fit 2 or 3 times in 700 ms: {hits}");
}

#[tokio::test]
async fn a_post_with_a_body_past_the_kept_limit_is_not_retried() {
    let broken = failing(Some(500)).await;
    let port = broken.port.to_string();
    let yaml = setup(&[&port], "    retry: {codes: [500], attempts: 3, backoff: 1ms}\n");
    let agimo = Agimo::start(&yaml, &[]).await;
    let big = 64 * 1024 + 1;
    let reply = post(&agimo, "/upload", vec![b'x'; big]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(broken.hits.load(Ordering::SeqCst), 1, "streamed once, never again");
    assert_eq!(broken.body_bytes.load(Ordering::SeqCst), big, "the whole body reached the backend");
    let reply = post(&agimo, "/upload", vec![b'x'; 64 * 1024]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(broken.hits.load(Ordering::SeqCst), 5, "a body at the limit is kept: 1 + 3 attempts");
}

#[tokio::test]
async fn a_gated_route_retries_through_the_gate() {
    let broken = failing(Some(500)).await;
    let port = broken.port.to_string();
    let yaml = setup(&[&port, "{{port:echo}}"], "    retry: {codes: [500], attempts: 1, backoff: 1ms}\n").replace(
        "metadata: {name: r, namespace: default}",
        "metadata: {name: r, namespace: default, annotations: {agimo.dev/scale-to-zero: 'true', agimo.dev/wait-timeout: 5s}}",
    );
    let agimo = Agimo::start(&yaml, &["echo"]).await;
    for i in 0..20 {
        let reply = agimo.get(8080, "r.example", &format!("/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert!(broken.hits.load(Ordering::SeqCst) > 0);
    let metrics = agimo.dataplane.metrics().render();
    assert_eq!(support::metric_total(&metrics, "active_requests"), 0.0, "{metrics}");
    assert_eq!(support::metric_total(&metrics, "pending_requests_total"), 0.0, "{metrics}");
}
