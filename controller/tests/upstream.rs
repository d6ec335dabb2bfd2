//! The HTTP/1.1 connections to backends, as a backend sees them: reused
//! across requests, replaced without an error when the backend closes them,
//! never reused after a response that was not read to its end, and never
//! retried when the backend resets them. And the responses a backend may
//! send, as the client gets them: chunked, delimited by the connection's
//! close, after 1xx interim responses, malformed, cut short.

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
                        if let Some(canned) = canned(&request) {
                            if stream.write_all(canned).await.is_err() {
                                return;
                            }
                            // These end with the connection.
                            if ["/close", "/short", "/bad-"].iter().any(|p| request.contains(&format!(" {p}"))) {
                                return;
                            }
                        } else if request.starts_with("GET /big ") {
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

/// The answers of the raw backend to some paths, as bytes on the wire.
fn canned(request: &str) -> Option<&'static [u8]> {
    let path = request.split(' ').nth(1)?;
    Some(match path {
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        }
        "/te-and-cl" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/close" => b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nuntil the connection closes",
        "/early-hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "/bad-head" => b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
        "/short" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        _ => return None,
    })
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

#[tokio::test]
async fn chunked_responses_arrive_whole_and_their_connection_is_reused_unless_a_length_came_too() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    for _ in 0..3 {
        let reply = agimo.get(8080, "x", "/chunked").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "hello world");
    }
    assert_eq!(agimo.get(8080, "x", "/").await.body, "1", "still the first connection");
    // A Content-Length beside the Transfer-Encoding is not the length: it is
    // dropped, and the connection (which may be out of step) not reused.
    let reply = agimo.get(8080, "x", "/te-and-cl").await;
    assert_eq!((reply.status.as_u16(), &reply.body[..]), (200, &b"hello"[..]), "{reply:?}");
    assert_ne!(reply.header("content-length"), Some("3"), "{reply:?}");
    assert_eq!(agimo.get(8080, "x", "/").await.body, "2");
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn a_response_without_framing_ends_with_its_connection() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    let reply = agimo.get(8080, "x", "/close").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-framing"), Some("none"));
    assert_eq!(reply.body, "until the connection closes");
    assert_eq!(agimo.get(8080, "x", "/").await.body, "2", "a closed connection is not reused");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    let reply = agimo.get(8080, "x", "/early-hints").await;
    assert_eq!((reply.status.as_u16(), &reply.body[..]), (200, &b"ok"[..]), "{reply:?}");
    assert_eq!(agimo.get(8080, "x", "/").await.body, "1");
}

#[tokio::test]
async fn a_head_response_has_no_body_and_keeps_its_connection() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    let mut client = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    client.write_all(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\n1") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n") && text.contains("content-length: 5\r\n"), "{text}");
    let second = text.find("\r\n\r\nhttp/1.1 200 ok\r\n").expect("the GET's response right after the HEAD's head");
    assert!(text[second..].ends_with("\r\n\r\n1"), "{text}");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn malformed_responses_get_a_502_with_a_reason() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    for path in ["/bad-length", "/bad-head"] {
        let reply = agimo.get(8080, "x", path).await;
        assert_eq!(reply.status, 502, "{path}: {reply:?}");
        assert_eq!(reply.header("x-agimo-reason"), Some("upstream-failed"), "{reply:?}");
    }
}

#[tokio::test]
async fn a_body_cut_short_or_with_a_bad_chunk_is_cut_short_for_the_client() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    for path in ["/short", "/bad-chunk"] {
        assert_cut_short(&agimo, path).await;
    }
    // The broken connections were not reused.
    assert_eq!(agimo.get(8080, "x", "/").await.body, "3");
}

#[tokio::test]
async fn a_client_that_closes_after_its_response_gets_all_of_it() {
    let backend = Backend::start(Behaviour::KeepAlive).await;
    let agimo = agimo_for(&backend).await;
    // `Connection: close`: the whole body, framed, then the end.
    let text = exchange(&agimo, "GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "{text}");
    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    let text = exchange(&agimo, "GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
    // A long body, read from the backend in many pieces.
    let text = exchange(&agimo, "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let end = text.find("\r\n\r\n").expect("a response head");
    assert!(text[..end].contains("content-length: 4194304"), "{}", &text[..end]);
    assert_eq!(text.len() - end - 4, 4 << 20, "the whole body");
}

/// Sends `request` on a connection of its own and reads until Agimo closes it.
async fn exchange(agimo: &Agimo, request: &str) -> String {
    let mut client = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("the connection ends")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

async fn assert_cut_short(agimo: &Agimo, path: &str) {
    let mut client = tokio::net::TcpStream::connect(agimo.addr(8080)).await.unwrap();
    client.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // The connection ends (hyper may not have flushed the head yet): the
    // client never takes it for a whole response.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await.expect("the connection ends");
    let text = String::from_utf8_lossy(&got);
    if text.contains("\r\n\r\n") {
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {text}");
        assert!(!text.ends_with("\r\n0\r\n\r\n") && !text.contains("more"), "{path}: a whole body: {text}");
        if path == "/short" {
            let end = text.find("\r\n\r\n").unwrap();
            assert!(text.contains("content-length: 10\r\n") && text.len() - end - 4 < 10, "a whole body: {text}");
        }
    }
}
