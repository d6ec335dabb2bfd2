//! gRPC for tests, without protobuf: messages are opaque bytes in gRPC's
//! length-prefixed framing, over h2c. The echo backend ([`crate::echo`])
//! answers a gRPC call with a message describing the request (JSON, an
//! [`EchoReply`]), then every message it receives, then the trailers
//! `grpc-status: 0` and `x-echo-backend: <name>`.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::echo::EchoReply;

/// One message in gRPC's framing: uncompressed flag, length, bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).expect("a test message fits in u32"));
    out.put_slice(message);
    out.freeze()
}

/// Takes every whole message off the front of `buffer`.
pub fn unframe(buffer: &mut BytesMut) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while buffer.len() >= 5 {
        let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
        if buffer.len() < 5 + len {
            break;
        }
        buffer.advance(5);
        messages.push(buffer.split_to(len).freeze());
    }
    messages
}

/// A gRPC response, read to its end.
#[derive(Debug)]
pub struct GrpcReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    /// Empty for a trailers-only response (its status is in `headers`).
    pub trailers: HeaderMap,
}

impl GrpcReply {
    /// `grpc-status`, from the trailers or, trailers-only, the headers.
    pub fn grpc_status(&self) -> Option<u32> {
        self.metadata("grpc-status").and_then(|s| s.parse().ok())
    }

    pub fn grpc_message(&self) -> Option<&str> {
        self.metadata("grpc-message")
    }

    /// A trailer, or in a trailers-only response a header.
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.trailers.get(name).or_else(|| self.headers.get(name)).and_then(|v| v.to_str().ok())
    }

    /// The echo backend's description of the call (its first message).
    pub fn echo(&self) -> EchoReply {
        let first = self.messages.first().unwrap_or_else(|| panic!("no message: {self:?}"));
        serde_json::from_slice(first).unwrap_or_else(|e| panic!("not an echo reply ({e}): {self:?}"))
    }
}

/// A gRPC request to `path` (`/package.Service/Method`) for `authority`.
pub fn request<B>(authority: &str, path: &str, metadata: &[(&str, &str)], body: B) -> Request<B> {
    let mut req = Request::post(format!("http://{authority}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    for (name, value) in metadata {
        req = req.header(*name, *value);
    }
    req.body(body).expect("a valid gRPC request")
}

async fn connect<B>(addr: SocketAddr) -> std::io::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A unary call on a new h2c connection: one message out, the reply read
/// to its end.
pub async fn unary(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    metadata: &[(&str, &str)],
    message: &[u8],
) -> std::io::Result<GrpcReply> {
    let mut sender = connect(addr).await?;
    let req = request(authority, path, metadata, Full::new(frame(message)));
    let response = sender.send_request(req).await.map_err(std::io::Error::other)?;
    let (parts, mut body) = response.into_parts();
    let mut reply =
        GrpcReply { status: parts.status, headers: parts.headers, messages: Vec::new(), trailers: HeaderMap::new() };
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        match frame.into_data() {
            Ok(data) => {
                buffer.extend_from_slice(&data);
                reply.messages.extend(unframe(&mut buffer));
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    reply.trailers = trailers;
                }
            }
        }
    }
    Ok(reply)
}

/// A streaming call: messages sent one at a time, replies read as they come.
pub struct GrpcStream {
    outgoing: Option<mpsc::Sender<Bytes>>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buffer: BytesMut,
    received: std::collections::VecDeque<Bytes>,
    pub trailers: HeaderMap,
}

/// Opens a streaming call on a new h2c connection; returns once the
/// response headers have arrived (a call held at the gate returns when it is
/// released).
pub async fn open(addr: SocketAddr, authority: &str, path: &str) -> std::io::Result<GrpcStream> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (Ok::<_, std::convert::Infallible>(Frame::data(frame(&m))), rx))
    });
    let mut sender = connect(addr).await?;
    let req = request(authority, path, &[], StreamBody::new(Box::pin(frames)));
    let response = sender.send_request(req).await.map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    Ok(GrpcStream {
        outgoing: Some(tx),
        status: parts.status,
        headers: parts.headers,
        body,
        buffer: BytesMut::new(),
        received: Default::default(),
        trailers: HeaderMap::new(),
    })
}

impl GrpcStream {
    pub async fn send(&mut self, message: &[u8]) {
        let outgoing = self.outgoing.as_ref().expect("the stream is still open for sending");
        outgoing.send(Bytes::copy_from_slice(message)).await.expect("the call is still running");
    }

    /// Ends the client's half of the stream.
    pub fn close_send(&mut self) {
        self.outgoing = None;
    }

    /// The next message, or `None` at the end of the response (its trailers
    /// are then in `trailers`).
    pub async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if let Some(m) = self.received.pop_front() {
                return Ok(Some(m));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            match frame.map_err(std::io::Error::other)?.into_data() {
                Ok(data) => {
                    self.buffer.extend_from_slice(&data);
                    self.received.extend(unframe(&mut self.buffer));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers = trailers;
                    }
                }
            }
        }
    }
}
