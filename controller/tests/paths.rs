//! Path tricks: dot-segments, encoded dots, doubled and encoded slashes
//! cannot take a request to the backend of a route whose path match the
//! request should not satisfy. The path is normalised before matching, and
//! the backend receives the normalised path, so Agimo and the backend read
//! it the same way.

mod support;

use std::time::Duration;

use agimo_dataplane::{Config, EscapedSlashes};
use support::{Agimo, base_yaml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/public` → backend `public`, `/admin` → `admin`, exact `/exact` →
/// `exact`; nothing else.
fn yaml() -> String {
    base_yaml(&["public", "admin", "exact"])
        + "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /public}}]
    backendRefs: [{name: public, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /admin}}]
    backendRefs: [{name: admin, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: exact, port: 80}]
"
}

async fn start(escaped_slashes: EscapedSlashes) -> Agimo {
    let config = Config { escaped_slashes, ..Config::default() };
    Agimo::start_with(&yaml(), &["public", "admin", "exact"], config).await
}

/// Sends a raw request target, byte for byte as given; returns the status
/// line's code, the whole response.
async fn raw_get(agimo: &Agimo, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_default();
    (status, text)
}

/// The echo backend's report in a response: (backend, path received).
fn echoed(response: &str) -> (String, String) {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let reply: agimo_testkit::echo::EchoReply =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    (reply.backend, reply.path)
}

#[tokio::test]
async fn dot_segments_and_doubled_slashes_reach_the_route_the_backend_would_read() {
    let agimo = start(EscapedSlashes::default()).await;
    let cases = [
        // (target, backend, path the backend receives)
        ("/public/../admin/x", "admin", "/admin/x"),
        ("/admin/../public/x", "public", "/public/x"),
        ("/public/%2e%2e/admin", "admin", "/admin"),
        ("/public/%2E%2e/admin", "admin", "/admin"),
        ("/public/.%2e/admin", "admin", "/admin"),
        ("/public/./x", "public", "/public/x"),
        ("//admin", "admin", "/admin"),
        ("/public//x///y", "public", "/public/x/y"),
        ("/%61dmin/x", "admin", "/admin/x"),
        ("/exac%74", "exact", "/exact"),
        ("/x/../exact", "exact", "/exact"),
        ("/../../public/a?q=/../admin", "public", "/public/a?q=/../admin"),
        ("/public/a%3fb", "public", "/public/a%3Fb"),
    ];
    for (target, backend, path) in cases {
        let (status, response) = raw_get(&agimo, target).await;
        assert_eq!(status, 200, "{target}: {response}");
        assert_eq!(echoed(&response), (backend.to_owned(), path.to_owned()), "{target}");
    }
    // Paths that normalise to no route's match.
    for target in ["/public/../x", "/admin/..", "/exact/.", "/exact/"] {
        let (status, response) = raw_get(&agimo, target).await;
        assert_eq!(status, 404, "{target}: {response}");
    }
}

#[tokio::test]
async fn malformed_escapes_are_refused() {
    let agimo = start(EscapedSlashes::default()).await;
    for target in ["/public/%zz", "/public/%4", "/public/%"] {
        let (status, response) = raw_get(&agimo, target).await;
        assert_eq!(status, 400, "{target}: {response}");
        assert!(response.contains("x-agimo-reason: invalid-path"), "{response}");
    }
}

#[tokio::test]
async fn escaped_slashes_are_redirected_by_default() {
    let agimo = start(EscapedSlashes::default()).await;
    let (status, response) = raw_get(&agimo, "/public%2F..%2Fadmin?a=1").await;
    assert_eq!(status, 307, "{response}");
    assert!(response.contains("\r\nlocation: /admin?a=1\r\n"), "{response}");
    assert!(response.contains("x-agimo-reason: escaped-slash-redirect"), "{response}");
    let (status, response) = raw_get(&agimo, "/public%5cx").await;
    assert_eq!(status, 307, "{response}");
    assert!(response.contains("\r\nlocation: /public/x\r\n"), "{response}");
}

#[tokio::test]
async fn escaped_slashes_can_be_kept_as_data_or_refused() {
    let keep = start(EscapedSlashes::Keep).await;
    // Not a separator: `/public%2F..%2Fadmin` is one segment, which no
    // prefix matches; under `/public/` it goes to `public`, as data.
    let (status, response) = raw_get(&keep, "/public%2F..%2Fadmin").await;
    assert_eq!(status, 404, "{response}");
    let (status, response) = raw_get(&keep, "/public/a%2fb").await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(echoed(&response), ("public".to_owned(), "/public/a%2Fb".to_owned()));

    let reject = start(EscapedSlashes::Reject).await;
    let (status, response) = raw_get(&reject, "/public/a%2Fb").await;
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("x-agimo-reason: invalid-path"), "{response}");
}
