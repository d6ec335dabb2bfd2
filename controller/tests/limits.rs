//! Connection limits that are on by default: request head size and count,
//! header-read timeout, idle timeout.

mod support;

use std::time::{Duration, Instant};

use agimo_dataplane::Config;
use agimo_testkit::wait::eventually;
use support::{Agimo, base_yaml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml() -> String {
    base_yaml(&["v1"]) + &support::route_to("r", "v1")
}

/// Sends raw bytes and reads until the server closes or 5 s pass.
async fn raw(agimo: &Agimo, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let agimo = Agimo::start(&yaml(), &["v1"]).await;
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(70 * 1024));
    let response = raw(&agimo, big.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{}", &response[..response.len().min(200)]);

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response =
        raw(&agimo, format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{}", &response[..response.len().min(200)]);

    let fine = raw(&agimo, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}

#[tokio::test]
async fn slow_request_heads_and_idle_connections_are_closed() {
    let config = Config {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        ..Config::default()
    };
    let agimo = Agimo::start_with(&yaml(), &["v1"], config).await;

    // A client that never finishes its request head is cut off.
    let started = Instant::now();
    let response = raw(&agimo, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(!response.contains("200 OK"), "{response}");

    // A keep-alive connection with nothing in flight is closed when idle.
    let mut stream = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_politely() {
    let config = Config { max_connections: 3, ..Config::default() };
    let agimo = Agimo::start_with(&yaml(), &["v1"], config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap());
    }
    eventually("3 connections open", || async { agimo.dataplane.open_connections() == 3 }).await;

    let refused = raw(&agimo, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("x-agimo-reason: too-many-connections"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    let metrics = agimo.dataplane.metrics().render();
    assert!(metrics.contains("refused_connections_total 1"), "{metrics}");

    // A connection that closes frees its place.
    held.pop();
    eventually("2 connections open", || async { agimo.dataplane.open_connections() == 2 }).await;
    let served = raw(&agimo, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_are_served() {
    let config = Config { send_timeout: Duration::from_millis(500), ..Config::default() };
    let agimo = Agimo::start_with(&yaml(), &["v1"], config).await;
    // A small receive window, and never a read: 64 MiB cannot fit in the
    // socket buffers, so Agimo's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(agimo.addr(8080)).await.unwrap();
    slow.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    eventually("1 connection open", || async { agimo.dataplane.open_connections() == 1 }).await;

    let started = Instant::now();
    let fine = raw(&agimo, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
    eventually("no connection open", || async { agimo.dataplane.open_connections() == 0 }).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "the stalled reader was cut off after {elapsed:?}");
    // What the slow client gets: part of the body, then the end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await.expect("closed");
    assert!(rest.len() < 64 << 20, "read {} bytes", rest.len());
}
