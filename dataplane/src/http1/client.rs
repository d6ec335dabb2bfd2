//! Agimo's own HTTP/1.1 exchange with a backend, for requests without a body
//! (nearly all of a gateway's traffic): the request's task writes the head
//! and reads the response on a pooled connection itself.
//!
//! hyper's client gives each connection a task of its own and passes every
//! request, response and body chunk to it and back through channels; the
//! profile put that at a third of a proxied request's instructions. Here a
//! request costs a write, a read and an `httparse` parse (the parser hyper
//! uses). Requests with a body and protocol upgrades go through hyper's
//! client ([`crate::upstream`]).
//!
//! ```text
//!  request ──encode_head──► write ──► backend ──► read ──parse_head──► Response<ResponseBody>
//!                                                                         │ poll_frame: Content-Length,
//!                                                                         │ chunked, or until close
//!                                                                         └──► connection back to the pool
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{content_length, has_token, only_tokens};
use crate::base::{BoxError, lock};

/// The most response header fields accepted (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The read buffer's size, made anew when less than [`MIN_READ`] of it is
/// left: responses split from it share it, so it is not reused while one is
/// in flight, and a buffer is made once for many small responses.
const READ_SIZE: usize = 16 * 1024;
const MIN_READ: usize = 4 * 1024;
/// The read buffer's size while a long body streams through.
const BODY_READ_SIZE: usize = 64 * 1024;

/// An open HTTP/1.1 connection to a backend, with the bytes read from it
/// and not used yet.
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn { stream, read: BytesMut::new() }
    }

    /// Whether the backend closed the connection (or sent bytes no request
    /// asked for) while it was idle. Costs no system call unless the socket
    /// has become readable since the last response was read.
    pub fn closed_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.stream.poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        self.make_room(READ_SIZE);
        self.stream.read_buf(&mut self.read).await
    }

    fn make_room(&mut self, size: usize) {
        if self.read.capacity() - self.read.len() < MIN_READ {
            self.read.reserve(size);
        }
    }
}

/// Idle connections by endpoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<IdleConns>,
}

/// Each endpoint's idle connections, with when each became idle.
type IdleConns = HashMap<SocketAddr, Vec<(Conn, Instant)>, foldhash::fast::RandomState>;

impl Pool {
    /// An idle connection to `endpoint` that is still open and was used
    /// within `max_idle`.
    pub fn take(&self, endpoint: SocketAddr, max_idle: Duration) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&endpoint)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() <= max_idle && !conn.closed_while_idle() {
                return Some(conn);
            }
        }
        None
    }

    /// Whether [`Pool::take`] would find a connection to `endpoint`; those
    /// it would skip on the way are dropped, as it would drop them.
    pub fn has_idle(&self, endpoint: SocketAddr, max_idle: Duration) -> bool {
        let mut idle = lock(&self.idle);
        let Some(list) = idle.get_mut(&endpoint) else { return false };
        while let Some((conn, since)) = list.last() {
            if since.elapsed() <= max_idle && !conn.closed_while_idle() {
                return true;
            }
            list.pop();
        }
        false
    }

    fn put(&self, endpoint: SocketAddr, conn: Conn) {
        // Stale and closed connections are skipped when taken and dropped by
        // `reap`: no scan of the list here, on every response.
        lock(&self.idle).entry(endpoint).or_default().push((conn, Instant::now()));
    }

    /// Closes connections idle for longer than `max_idle` or closed by their
    /// backend.
    pub fn reap(&self, max_idle: Duration) {
        lock(&self.idle).retain(|_, list| {
            list.retain(|(conn, since)| since.elapsed() <= max_idle && !conn.closed_while_idle());
            !list.is_empty()
        });
    }
}

/// Where a connection goes when its response has ended.
pub struct Release {
    pub pool: Arc<Pool>,
    pub endpoint: SocketAddr,
}

/// Why an exchange failed, and whether the request may go again on another
/// connection.
#[derive(Debug)]
pub struct ExchangeError {
    pub error: BoxError,
    /// The connection ended before a byte of the response arrived: a
    /// connection the backend closed while it sat idle.
    pub no_response: bool,
}

impl ExchangeError {
    fn malformed(error: impl Into<BoxError>) -> Self {
        ExchangeError { error: error.into(), no_response: false }
    }
}

/// The request head as the backend gets it: the method, the path and query
/// (origin form), and the headers as they are (`Host` among them).
pub fn encode_head<B>(req: &Request<B>) -> Vec<u8> {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let size = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + path.len() + 32;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if expects_content(req.method()) && !req.headers().contains_key(header::CONTENT_LENGTH) {
        // A method that has content says it has none (RFC 9110 section 8.6).
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn expects_content(method: &Method) -> bool {
    ![Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS, Method::TRACE].contains(method)
}

/// Sends a request head on `conn` and reads the response head. The body
/// follows through the returned [`ResponseBody`], which owns the
/// connection; `release` gets it back once the body has ended cleanly.
pub async fn exchange(
    mut conn: Conn,
    head: &[u8],
    head_request: bool,
    release: Release,
) -> Result<Response<ResponseBody>, ExchangeError> {
    if let Err(e) = conn.stream.write_all(head).await {
        return Err(ExchangeError { error: e.into(), no_response: true });
    }
    let mut first = true;
    loop {
        if !conn.read.is_empty() {
            match parse_head(&mut conn.read, head_request).map_err(ExchangeError::malformed)? {
                Parsed::Interim => continue,
                Parsed::Partial => {}
                Parsed::Head(head) => {
                    let release = head.reusable.then_some(release);
                    let mut body = ResponseBody { conn: Some(conn), framing: head.framing, release };
                    body.finish_if_done();
                    let mut response = Response::new(body);
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    return Ok(response);
                }
            }
        }
        match conn.fill().await {
            Ok(0) => {
                let error = "the backend closed the connection before the response ended";
                return Err(ExchangeError { error: error.into(), no_response: first && conn.read.is_empty() });
            }
            Ok(_) => first = false,
            Err(e) => return Err(ExchangeError { error: e.into(), no_response: first && conn.read.is_empty() }),
        }
    }
}

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, after the last chunk.
    Trailers,
}

pub(crate) enum Parsed {
    /// The buffer does not hold a whole head yet.
    Partial,
    /// A 1xx response was skipped.
    Interim,
    Head(Head),
}

/// A response head, its body's framing, and whether the connection can
/// carry another response after it.
pub(crate) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    pub reusable: bool,
}

/// Parses a response head at the start of `read` and removes it from there.
/// The header values share the head's bytes.
pub(crate) fn parse_head(read: &mut BytesMut, head_request: bool) -> Result<Parsed, BoxError> {
    // Uninitialised: the parser writes only as many fields as there are.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, read, &mut fields)? {
            httparse::Status::Partial if read.len() > MAX_HEAD_BYTES => {
                return Err(format!("the response head is over {MAX_HEAD_BYTES} bytes").into());
            }
            httparse::Status::Partial => return Ok(Parsed::Partial),
            httparse::Status::Complete(len) => len,
        };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("101 Switching Protocols to a request that asked for no upgrade".into());
        }
        read.advance(len);
        return Ok(Parsed::Interim);
    }
    let version = if parsed.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    let start = read.as_ptr() as usize;
    let ranges: Vec<(HeaderName, usize, usize)> = parsed
        .headers
        .iter()
        .map(|h| {
            let offset = h.value.as_ptr() as usize - start;
            Ok((HeaderName::from_bytes(h.name.as_bytes())?, offset, offset + h.value.len()))
        })
        .collect::<Result<_, http::header::InvalidHeaderName>>()?;
    let head = read.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(ranges.len());
    // What framing and reuse depend on, noted on the way: no lookups after.
    let mut fields = Fields::default();
    for (name, from, to) in ranges {
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))?;
        // Hop-by-hop fields (RFC 9110 section 7.6.1) are read here and not
        // passed on, so the proxy has none to look for: a `Connection`
        // naming other fields is the exception, kept for the proxy to strip
        // what it names.
        if name == header::CONTENT_LENGTH {
            fields.content_length(&value)?;
        } else if name == header::TRANSFER_ENCODING {
            fields.chunked = Some(is_chunked(&value));
            continue;
        } else if name == header::CONNECTION {
            // Nearly always one token: no list to split.
            let only = value.as_bytes();
            if only.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if only.eq_ignore_ascii_case(b"close") {
                fields.close = true;
                continue;
            }
            fields.close |= has_token(value.as_bytes(), "close");
            if only_tokens(value.as_bytes(), &["close", "keep-alive"]) {
                continue;
            }
        } else if name == "keep-alive" || name == header::TE || name == header::TRAILER || name == header::UPGRADE {
            continue;
        }
        headers.append(name, value);
    }
    let (framing, delimited) = framing(&fields, status, head_request);
    if fields.chunked.is_some() && fields.length.is_some() {
        // It does not say the body's length (RFC 9112 section 6.3).
        headers.remove(header::CONTENT_LENGTH);
    }
    let reusable = delimited && version == Version::HTTP_11 && !fields.close;
    Ok(Parsed::Head(Head { status, version, headers, framing, reusable }))
}

/// The fields of a response head that say how its body is delimited and
/// whether its connection can be used again.
#[derive(Default)]
struct Fields {
    /// Content-Length, all its values (fields and list items) equal.
    length: Option<u64>,
    /// Transfer-Encoding (the last field): whether its final coding is
    /// chunked.
    chunked: Option<bool>,
    /// `Connection: close`.
    close: bool,
}

impl Fields {
    fn length(&mut self, n: u64) -> Result<(), BoxError> {
        if self.length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values".into());
        }
        self.length = Some(n);
        Ok(())
    }

    fn content_length(&mut self, value: &HeaderValue) -> Result<(), BoxError> {
        // One length, the usual case; else a list of equal ones.
        if let Some(n) = content_length(value.as_bytes()) {
            return self.length(n);
        }
        for item in super::items(value.as_bytes()) {
            let n = content_length(item)
                .ok_or_else(|| format!("an invalid Content-Length {:?}", String::from_utf8_lossy(item)))?;
            self.length(n)?;
        }
        Ok(())
    }
}

fn is_chunked(value: &HeaderValue) -> bool {
    value.to_str().ok().and_then(|v| v.rsplit(',').next()).is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// The body's framing, and whether the connection can carry another
/// response after it (RFC 9112 section 6.3).
fn framing(fields: &Fields, status: StatusCode, head_request: bool) -> (Framing, bool) {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return (Framing::Done, true);
    }
    match (fields.chunked, fields.length) {
        // With a Content-Length too, the message may have been meant to
        // smuggle one: the connection is not used again.
        (Some(true), length) => (Framing::Chunked(Chunk::Size), length.is_none()),
        (Some(false), _) => (Framing::UntilClose, false),
        (None, Some(0)) => (Framing::Done, true),
        (None, Some(n)) => (Framing::Length(n), true),
        (None, None) => (Framing::UntilClose, false),
    }
}

/// A backend's response body, read from its connection as the client takes
/// it; the connection goes back to its pool when the body has ended.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    release: Option<Release>,
}

impl ResponseBody {
    /// Gives the connection back (or closes it) once the body has ended.
    fn finish_if_done(&mut self) {
        if self.framing == Framing::Done
            && let Some(conn) = self.conn.take()
            && let Some(release) = self.release.take()
            // Bytes past the response: the connection is out of step.
            && conn.read.is_empty()
        {
            release.pool.put(release.endpoint, conn);
        }
    }

    /// Ends a body that cannot go on: its connection, out of step, is
    /// closed, and the client's response is cut short (the status has gone).
    fn broken(&mut self, error: BoxError) -> BoxError {
        let peer = self.conn.as_ref().and_then(|c| c.stream.peer_addr().ok());
        tracing::warn!(endpoint = ?peer, error = %error, "backend response body broken off: the response is cut short");
        self.conn = None;
        self.framing = Framing::Done;
        error
    }

    /// The next piece of the body from the bytes read, without reading.
    fn next_frame(&mut self) -> Result<Option<Bytes>, BoxError> {
        let conn = self.conn.as_mut().expect("a body that has not ended has its connection");
        self.framing.decode(&mut conn.read)
    }
}

impl Framing {
    /// Takes the next piece of a body framed so from the start of `read`:
    /// data, or `None` when `read` holds no more of it (or the body has
    /// ended: [`Framing::Done`]). Chunk-size lines, the CRLF after chunks
    /// and trailer fields are consumed on the way.
    pub(crate) fn decode(&mut self, read: &mut BytesMut) -> Result<Option<Bytes>, BoxError> {
        loop {
            match self {
                Framing::Done => return Ok(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if read.is_empty() {
                        return Ok(None);
                    }
                    let n = read.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    if *left == 0 {
                        *self = match *self {
                            Framing::Length(_) => Framing::Done,
                            _ => Framing::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Ok(Some(read.split_to(n).freeze()));
                }
                Framing::UntilClose => {
                    return Ok((!read.is_empty()).then(|| read.split().freeze()));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(read)? else { return Ok(None) };
                    let size = chunk_size(&line)?;
                    *self = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if read.len() < 2 {
                        return Ok(None);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err("a chunk's data is not followed by CRLF".into());
                    }
                    read.advance(2);
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    // Trailer fields are not passed on.
                    let Some(line) = take_line(read)? else { return Ok(None) };
                    if line.is_empty() {
                        *self = Framing::Done;
                    }
                }
            }
        }
    }
}

/// A line ending in CRLF at the start of `read`, without its CRLF, removed
/// from there; `None` if the line has not all arrived.
fn take_line(read: &mut BytesMut) -> Result<Option<BytesMut>, BoxError> {
    match read.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && read[end - 1] == b'\r' => {
            let mut line = read.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err("a bare LF in a chunked body".into()),
        None if read.len() > MAX_CHUNK_LINE => Err("a chunk-size line is too long".into()),
        None => Ok(None),
    }
}

/// A chunk-size line's size: hex digits, then any chunk extensions.
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(format!("an invalid chunk-size line {:?}", String::from_utf8_lossy(line)).into());
    }
    let digits = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    Ok(u64::from_str_radix(digits, 16)?)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.framing == Framing::Done {
                this.finish_if_done();
                return Poll::Ready(None);
            }
            match this.next_frame() {
                Err(e) => return Poll::Ready(Some(Err(this.broken(e)))),
                Ok(Some(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.framing == Framing::Done => continue,
                Ok(None) => {}
            }
            let conn = this.conn.as_mut().expect("a body that has not ended has its connection");
            conn.make_room(match this.framing {
                Framing::Length(n) | Framing::Chunked(Chunk::Data(n)) if n > READ_SIZE as u64 => BODY_READ_SIZE,
                Framing::UntilClose => BODY_READ_SIZE,
                _ => READ_SIZE,
            });
            match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.read)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    this.framing = Framing::Done;
                }
                Ok(0) => {
                    let e = "the backend closed the connection before the body ended".into();
                    return Poll::Ready(Some(Err(this.broken(e))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(this.broken(e.into())))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> (Head, Framing, bool, BytesMut) {
        let mut read = BytesMut::from(bytes);
        match parse_head(&mut read, head_request).unwrap() {
            Parsed::Head(head) => {
                let (framing, reusable) = (head.framing, head.reusable);
                (head, framing, reusable, read)
            }
            Parsed::Partial => panic!("partial"),
            Parsed::Interim => panic!("interim"),
        }
    }

    #[test]
    fn request_heads_are_origin_form_with_the_headers_as_they_are() {
        let req = Request::get("http://a.example/p?q=1")
            .header("host", "a.example")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap();
        assert_eq!(
            String::from_utf8(encode_head(&req)).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
        let post = Request::post("/p").header("host", "a").body(()).unwrap();
        assert_eq!(
            String::from_utf8(encode_head(&post)).unwrap(),
            "POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_give_status_headers_framing_and_reuse() {
        let (parts, framing, reusable, rest) =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello", false);
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!((framing, reusable, &rest[..]), (Framing::Length(5), true, &b"hello"[..]));

        let (_, framing, reusable, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!((framing, reusable), (Framing::Done, true), "no body after a HEAD");
        let (_, framing, reusable, _) = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::Done, true));
        let (_, framing, reusable, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::Chunked(Chunk::Size), true));
        let (parts, framing, reusable, _) =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::Chunked(Chunk::Size), false), "TE and CL: not reused");
        assert!(!parts.headers.contains_key("content-length"), "nor is the length passed on");
        let (_, framing, reusable, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        let (_, framing, reusable, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        let (_, _, reusable, _) =
            head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!reusable);
        let (parts, _, reusable, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!((parts.version, reusable), (Version::HTTP_10, false));
        let (_, framing, _, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\ncontent-length: 7\r\n\r\n", false);
        assert_eq!(framing, Framing::Length(7), "repeated equal lengths are one");
    }

    #[test]
    fn hop_by_hop_fields_stay_behind_unless_connection_names_others() {
        let (parts, framing, reusable, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
              Trailer: x-sum\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
            false,
        );
        let names: Vec<_> = parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!((framing, reusable), (Framing::Chunked(Chunk::Size), true), "the framing was still read");
        let (parts, _, reusable, _) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: p\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(parts.headers["connection"], "close, X-Private", "kept for the proxy to strip what it names");
        assert!(parts.headers.contains_key("x-private"));
        assert!(!reusable);
    }

    #[test]
    fn bad_response_heads_are_errors_and_partial_ones_wait() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 099 What\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"SMTP 220\r\n\r\n",
        ] {
            assert!(parse_head(&mut BytesMut::from(bad), false).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: "[..]), false), Ok(Parsed::Partial)));
        let mut huge = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        huge.extend_from_slice(&vec![b'a'; MAX_HEAD_BYTES]);
        assert!(parse_head(&mut huge, false).is_err());
        let mut interim =
            BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut interim, false), Ok(Parsed::Interim)));
        assert!(matches!(
            parse_head(&mut interim, false),
            Ok(Parsed::Head(Head { status: StatusCode::NO_CONTENT, framing: Framing::Done, reusable: true, .. }))
        ));
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"A;name=value").unwrap(), 10);
        assert_eq!(chunk_size(b"5 ;ext").unwrap(), 5);
        for bad in [&b""[..], b";x", b"-1", b"1 2", b"0x5", b"ffffffffffffffff", b"g"] {
            assert!(chunk_size(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
