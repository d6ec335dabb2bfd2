//! Parking: an HTTP/1.1 connection idle for `park_idle_after` gives up
//! hyper's state and buffers and keeps only its socket. What a client sees
//! must not change: the same connection serves its next request, over
//! TLS too, partial request heads are neither lost nor given more time, and
//! the idle timeout still closes it.

mod support;

use std::time::{Duration, Instant};

use agimo_dataplane::Config;
use agimo_testkit::client::{self, Mode};
use agimo_testkit::tls::self_signed;
use agimo_testkit::wait::eventually;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Agimo, base_yaml};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PARK: Duration = Duration::from_millis(100);

fn yaml() -> String {
    base_yaml(&["v1"]) + &support::route_to("r", "v1")
}

fn config() -> Config {
    Config { park_idle_after: PARK, ..Config::default() }
}

fn parked(agimo: &Agimo) -> f64 {
    let text = agimo.dataplane.metrics().render();
    let line = text.lines().find(|l| l.starts_with("parked_connections ")).expect("parked_connections is exported");
    line["parked_connections ".len()..].parse().expect("a number")
}

/// One keep-alive HTTP/1.1 connection, for several requests.
async fn keep_alive<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    sender
}

/// A GET on `sender`'s connection: status, `Connection` header, body.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (u16, Option<String>, String) {
    sender.ready().await.expect("the connection is still open");
    let response = sender.send_request(client::get("x", path)).await.expect("response");
    let status = response.status().as_u16();
    let connection = response.headers().get("connection").map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, connection, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_request() {
    let agimo = Agimo::start_with(&yaml(), &["v1"], config()).await;
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    // hyper's client sends every request on this one connection, and fails
    // them if it closes.
    let mut sender = keep_alive(stream).await;
    for round in 0..3 {
        let (status, connection, body) = get(&mut sender, &format!("/round-{round}")).await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert_eq!(connection, None, "round {round}: the connection stays open");
        assert!(body.contains(&format!("/round-{round}")), "{body}");
        // Idle: parked after PARK, and counted while parked.
        eventually("the connection is parked", || async { parked(&agimo) == 1.0 }).await;
    }
    let (status, _, body) = get(&mut sender, "/last").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parked(&agimo), 0.0, "a connection serving a request is not parked");
    drop(sender);
    eventually("nothing parked and no connection open", || async {
        parked(&agimo) == 0.0 && agimo.dataplane.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_request() {
    let cert = self_signed(&["tls.example"]);
    let yaml = support::gateway_yaml(
        "  - name: https
    port: 8443
    protocol: HTTPS
    tls: {certificateRefs: [{name: cert}]}
",
    ) + &support::route_to("r", "v1")
        + &support::service_yaml("v1")
        + &support::tls_secret("cert", &cert);
    let agimo = Agimo::start_with(&yaml, &["v1"], config()).await;
    let (stream, _) =
        client::tls_connect(agimo.addr(8443), "tls.example", std::slice::from_ref(&cert.der), &[b"http/1.1"])
            .await
            .unwrap();
    let mut sender = keep_alive(stream).await;
    for round in 0..3 {
        let (status, connection, body) = get(&mut sender, &format!("/tls-{round}")).await;
        assert_eq!((status, connection), (200, None), "round {round}: {body}");
        eventually("the connection is parked", || async { parked(&agimo) == 1.0 }).await;
    }
}

#[tokio::test]
async fn a_request_head_sent_across_the_park_time_is_served_whole() {
    let agimo = Agimo::start_with(&yaml(), &["v1"], config()).await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    // A first request, then the next one in pieces, slower than PARK.
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    for piece in [&b"GET /sec"[..], b"ond HTTP/1.1\r\nHo", b"st: x\r\nX-Slow: yes\r\n", b"\r\n"] {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(PARK * 3).await;
    }
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("/second") && second.contains("yes"), "the head arrived whole: {second}");
}

#[tokio::test]
async fn parking_gives_a_slow_request_head_no_more_time() {
    let header_read_timeout = Duration::from_millis(600);
    let agimo =
        Agimo::start_with(&yaml(), &["v1"], Config { header_read_timeout, idle_timeout: Duration::ZERO, ..config() })
            .await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // A byte at a time, each after the park time: never parked, and closed
    // when the header read timeout runs out.
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle().take(100) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(read) = tokio::time::timeout(PARK * 2, stream.read(&mut buf)).await {
            assert!(matches!(read, Ok(0) | Err(_)), "no response to an unfinished head");
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow head was never cut off");
    let elapsed = started.elapsed();
    assert!(elapsed < header_read_timeout * 3, "closed after {elapsed:?}");
}

#[tokio::test]
async fn a_parked_connection_is_closed_by_the_idle_timeout() {
    let idle_timeout = Duration::from_millis(700);
    let agimo = Agimo::start_with(&yaml(), &["v1"], Config { idle_timeout, ..config() }).await;
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    eventually("the connection is parked", || async { parked(&agimo) == 1.0 }).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the parked connection was never closed");
    let elapsed = idle_since.elapsed();
    assert!(elapsed >= idle_timeout - Duration::from_millis(50) && elapsed < idle_timeout * 3, "{elapsed:?}");
    assert!(rest.is_empty(), "nothing is sent to an idle connection that is closed");
    eventually("nothing parked", || async { parked(&agimo) == 0.0 }).await;
}

#[tokio::test]
async fn a_websocket_is_never_parked() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let agimo = Agimo::start_with(&yaml(), &["v1"], config()).await;
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://ws.example:8080/ws", stream).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        tokio::time::sleep(PARK * 3).await;
        assert_eq!(parked(&agimo), 0.0);
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
    }
}

#[tokio::test]
async fn http2_connections_are_served_as_before() {
    let agimo = Agimo::start_with(&yaml(), &["v1"], config()).await;
    let stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    let reply = client::send_on(stream, Mode::H2c, client::get("x", "/h2")).await.unwrap();
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.status, 200);
}

/// Reads one response with a `content-length` body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("a response").unwrap();
        assert!(n > 0, "closed before the response ended: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn the_binary_parks_after_its_flag_and_never_with_zero() {
    for (flag, parks) in [("200ms", true), ("0s", false)] {
        let (agimo, _echo) = support::process::serve_echo(&["--park-idle-after", flag]).await;
        let mut sender = keep_alive(tokio::net::TcpStream::connect(agimo.http).await.unwrap()).await;
        assert_eq!(get(&mut sender, "/one").await.0, 200);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let reply = client::send(agimo.admin, Mode::Http1, client::get("admin", "/metrics")).await.unwrap();
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let parked = text.lines().find_map(|l| l.strip_prefix("parked_connections ")).expect("the gauge");
        assert_eq!(parked.trim(), if parks { "1" } else { "0" }, "--park-idle-after {flag}");
        assert_eq!(get(&mut sender, "/two").await.0, 200, "--park-idle-after {flag}");
    }
}
