//! An echo backend: answers every request with JSON describing it, like the
//! Gateway API conformance suite's echo server, plus a websocket echo at
//! `/ws`, a streaming response at `/stream`, `/status/<code>`, `<n>` bytes
//! at `/bytes/<n>`, and for gRPC calls (content type `application/grpc`) a
//! streaming echo ([`crate::grpc`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the echo server reports about a request.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EchoReply {
    /// The backend's name (`--name`), to tell backends apart.
    pub backend: String,
    /// The request target exactly as received (path and query).
    pub path: String,
    pub method: String,
    pub host: String,
    pub proto: String,
    /// Headers, lowercased names, repeated values joined with `,`.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Bytes of request body received.
    pub body_bytes: usize,
}

/// A running echo server.
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an echo server on `addr` (port 0 picks a free port).
pub async fn spawn(addr: SocketAddr, name: &str) -> std::io::Result<Echo> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, name.to_owned()));
    Ok(Echo { addr, task })
}

/// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` forever.
pub async fn serve(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(respond(&name, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
}

type EchoBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> EchoBody {
    Full::new(bytes.into()).boxed()
}

async fn respond(name: &str, mut req: Request<Incoming>) -> Response<EchoBody> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return websocket(req);
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        return response;
    }
    if path == "/stream" {
        return stream(name, req.uri().query());
    }
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
        // A large body, for slow readers.
        return Response::new(full(vec![b'x'; n.min(1 << 30)]));
    }
    if let Some(ms) = query_param(req.uri().query(), "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = std::collections::BTreeMap::<String, String>::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut reply = EchoReply {
        backend: name.to_owned(),
        path: req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned(),
        method: req.method().to_string(),
        host,
        proto: format!("{:?}", req.version()),
        headers,
        body_bytes: 0,
    };
    if grpc {
        return grpc_echo(name, &reply, req.into_body());
    }
    reply.body_bytes = match req.body_mut().collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let mut response = Response::new(full(serde_json::to_vec(&reply).expect("serializable")));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// A gRPC call: the request's description as the first message, then every
/// message received as it arrives, then trailers with `grpc-status: 0`.
fn grpc_echo(name: &str, reply: &EchoReply, mut body: Incoming) -> Response<EchoBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(16);
    let first = crate::grpc::frame(&serde_json::to_vec(reply).expect("serializable"));
    let name = name.to_owned();
    tokio::spawn(async move {
        if tx.send(Frame::data(first)).await.is_err() {
            return;
        }
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(Frame::data(data)).await.is_err()
            {
                return;
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        if let Ok(value) = http::HeaderValue::try_from(name) {
            trailers.insert("x-echo-backend", value);
        }
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let frames =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx)) });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// `/stream?n=3&interval_ms=100`: server-sent events, one every interval.
fn stream(name: &str, query: Option<&str>) -> Response<EchoBody> {
    let n: u32 = query_param(query, "n").and_then(|v| v.parse().ok()).unwrap_or(3);
    let interval = Duration::from_millis(query_param(query, "interval_ms").and_then(|v| v.parse().ok()).unwrap_or(100));
    let name = name.to_owned();
    let events = futures_util::stream::unfold(0u32, move |i| {
        let name = name.clone();
        async move {
            if i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let frame = Frame::data(Bytes::from(format!("data: {name} {i}\n\n")));
            Some((Ok::<_, Infallible>(frame), i + 1))
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    response
}

/// Accepts a websocket upgrade and echoes every text and binary message.
fn websocket(mut req: Request<Incoming>) -> Response<EchoBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let mut response = Response::new(full("expected a websocket upgrade\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        http::HeaderValue::try_from(derive_accept_key(key.as_bytes())).expect("base64 is a valid header value"),
    );
    response
}
