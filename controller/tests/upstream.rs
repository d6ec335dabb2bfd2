//! The HTTP/1.1 connections to backends, as a backend sees them: reused
//! across requests, replaced without an error when the backend closes them,
//! never reused after a response that was not read to its end, and never
//! retried when the backend resets them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Agimo, base_yaml, route_to, service_at};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 backend that counts its connections and answers each
/// request with the number of the connection it came on. `/big` gets 4 MiB
/// sent slowly.
struct Backend {
    port: u16,
    connections: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    KeepAlive,
    /// Close every connection after one response without saying so (as when
    /// a keep-alive timeout expires).
    CloseAfterResponse,
    /// Reset the connection (RST) once a request head has arrived.
    Reset,
}

impl Backend {
    async fn start(behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let id = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let request = String::from_utf8_lossy(&head[..end]).into_owned();
                        head.drain(..end + 4);
                        if behaviour == Behaviour::Reset {
                            stream.set_zero_linger().unwrap();
                            return;
                        }
                        if request.starts_with("GET /big ") {
                            let size = 4 << 20;
                            let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                            if stream.write_all(header.as_bytes()).await.is_err() {
                                return;
                            }
                            for _ in 0..size / 65536 {
                                if stream.write_all(&[b'x'; 65536]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        } else {
                            let body = id.to_string();
                            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        if behaviour == Behaviour::CloseAfterResponse {
                            return;
                        }
                    }
                });
            }
        });
        Backend { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn agimo_for(backend: &Backend) -> Agimo {
    let yaml = base_yaml(&[]) + &service_at("raw", &backend.port.to_string()) + &route_to("r", "raw");
    Agimo::start(&yaml, &[]).await
}

#[tokio::test]
async fn backend_connections_are_reused() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    for _ in 0..50 {
        let reply = agimo.get(8080, "x", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "1", "every request on the backend's first connection");
    }
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_backend_closing_idle_connections_costs_no_error() {
    let backend = Backend::start(Behaviour::CloseAfterResponse).await;
    let agimo = agimo_for(&backend).await;
    for i in 1..=100 {
        let reply = agimo.get(8080, "x", "/").await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    assert_eq!(backend.connections(), 100, "a new connection for each request");
}

#[tokio::test]
async fn a_response_not_read_to_its_end_does_not_leave_its_connection_for_reuse() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    assert_eq!(agimo.get(8080, "x", "/").await.body, "1");

    // A client reads the head of a long response and goes away.
    let mut client = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    drop(client);

    // /big went on the first connection, still busy with its body: the next
    // requests get a second connection, and keep it.
    for _ in 0..5 {
        let reply = agimo.get(8080, "x", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "2");
    }
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn a_backend_that_resets_connections_gets_a_502_with_a_reason_and_no_retry() {
    let backend = Backend::start(Behaviour::Reset).await;
    let agimo = agimo_for(&backend).await;
    for i in 1..=20 {
        let reply = agimo.get(8080, "x", "/").await;
        assert_eq!(reply.status, 502, "request {i}: {reply:?}");
        assert_eq!(reply.header("x-agimo-reason"), Some("upstream-failed"), "{reply:?}");
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.contains("backend default/raw") && body.contains("failed"), "{body}");
    }
    assert_eq!(backend.connections(), 20, "one backend connection per request: none retried");
}
