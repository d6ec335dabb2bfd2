//! Agimo's own HTTP/1.1 server, for requests without a body (GET, HEAD and
//! the like: nearly all of a gateway's traffic). The connection's task reads
//! the request head, parses it with `httparse` (the parser hyper uses), hands
//! the request to the handler it was given (the proxy's, or a test's: this
//! module knows nothing of routing), and writes the response: its head and
//! the body bytes at hand in one write.
//!
//! hyper's server dispatcher, with its buffers, its per-request service
//! future and header-read timer, was two fifths of a proxied request's
//! instructions in the profile. A request this server does not take (one with
//! a body, an upgrade, `Expect`, `CONNECT`) is left whole in the read buffer,
//! and hyper serves the connection from there on ([`crate::conn`]).
//!
//! ```text
//!  client ──read──► parse_head ──no body──► handler ──► write_response ──► client
//!                       │                       ▲ the client closed: the request is dropped
//!                       └──other──► hyper (crate::conn), with every byte read
//! ```
//!
//! Limits are checked on a tick, as [`crate::conn`] does for hyper's
//! connections: the header-read and idle timeouts, the send timeout, parking.
//! No timer is set per request.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::base::BoxError;
use crate::config::Config;

/// How a connection left this server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// It is over: closed by the client, cut off, or answered with
    /// `Connection: close`.
    Ended,
    /// A request this server does not take is at the start of the read
    /// buffer, whole: hyper serves the connection from here.
    HandOver,
    /// It has been idle for the park time, nothing read
    /// ([`crate::conn::park`]).
    Park,
}

/// The read buffer grows by this much when less than [`MIN_READ`] of it is
/// free. Request heads share it, so its memory is reused once the request
/// before has gone.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ: usize = 1024;
/// Header fields parsed into room on the stack; a larger configured
/// maximum gets room on the heap.
const STACK_HEADERS: usize = 100;
/// Body data this long or longer is written from where it is; shorter data
/// is copied beside the head, for one write.
const COPY_UNDER: usize = 16 * 1024;
/// A write buffer grown past this by a long head is not kept for the next
/// response.
const KEEP_OUT: usize = 64 * 1024;

/// Where a connection is served from, for the server's limits and logs.
pub(crate) struct Connection<'c> {
    pub config: &'c Config,
    pub peer: SocketAddr,
    pub activity: &'c Arc<Activity>,
}

/// What answers the requests this server reads: any function from a
/// request (its body type `Q` the empty body, `Default`) to a response.
pub(crate) trait Handler<Q> {
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin;
    type Answer: Future<Output = Response<Self::Body>>;
    fn answer(&self, request: Box<Request<Q>>) -> Self::Answer;
}

impl<Q, F, A, B> Handler<Q> for F
where
    F: Fn(Box<Request<Q>>) -> A,
    A: Future<Output = Response<B>>,
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    type Body = B;
    type Answer = A;
    fn answer(&self, request: Box<Request<Q>>) -> A {
        self(request)
    }
}

/// Serves HTTP/1.1 requests on `io`, the bytes read so far in `read`, until
/// the connection ends, is to be parked, or brings a request for hyper.
/// `handler` answers each request.
pub(crate) async fn serve<S, Q, H>(
    io: &mut S,
    read: &mut BytesMut,
    conn: &Connection<'_>,
    stop: &CancellationToken,
    handler: H,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin,
    Q: Default,
    H: Handler<Q>,
{
    let Connection { config, peer, activity } = *conn;
    let closing = AtomicBool::new(false);
    let mut requests = pin!(requests(io, read, conn, &closing, handler));
    // Waiting for a request head: the header-read timeout or the idle
    // timeout, the shorter, counted from the end of the last response, and
    // anew from the first byte of a connection woken from parking.
    let quiet = [config.idle_timeout, config.header_read_timeout].into_iter().filter(|t| !t.is_zero()).min();
    let send = Some(config.send_timeout).filter(|t| !t.is_zero());
    let park = config.park_after();
    let period = [quiet.map(|t| t / 4), send.map(|t| t / 4), park.map(|t| t / 2)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(900));
    let started = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            served = requests.as_mut() => return served,
            _ = stop.cancelled(), if !closing.load(Ordering::Relaxed) => {
                if activity.is_quiet() {
                    return Served::Ended;
                }
                // The request in flight is answered, with `Connection: close`.
                closing.store(true, Ordering::Relaxed);
            }
            _ = tick.tick() => {
                if let Some(send) = send
                    && activity.write_blocked_for() >= send
                {
                    tracing::debug!(%peer, timeout = ?send, "connection closed: the client stopped reading");
                    return Served::Ended;
                }
                if let Some(quiet) = quiet
                    && activity.idle_for() >= quiet
                    && started.elapsed() >= quiet
                {
                    tracing::debug!(%peer, timeout = ?quiet, "connection closed: no whole request head in time");
                    return Served::Ended;
                }
                if park.is_some_and(|after| activity.may_park(after)) {
                    return Served::Park;
                }
            }
        }
    }
}

/// The request loop: read a head, answer it, again.
async fn requests<S, Q, H>(
    io: &mut S,
    read: &mut BytesMut,
    conn: &Connection<'_>,
    closing: &AtomicBool,
    handler: H,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin,
    Q: Default,
    H: Handler<Q>,
{
    let Connection { config, peer, activity } = *conn;
    let mut out = Vec::new();
    loop {
        let plain = loop {
            if !read.is_empty() {
                match parse_head(read, config) {
                    Ok(Parsed::Plain(plain)) => break plain,
                    Ok(Parsed::Other) => return Served::HandOver,
                    Ok(Parsed::Partial) => {}
                    Err(status) => {
                        tracing::debug!(%peer, status = status.as_u16(), "malformed request head");
                        refuse(io, status).await;
                        return Served::Ended;
                    }
                }
            }
            if read.capacity() - read.len() < MIN_READ {
                read.reserve(READ_SIZE);
            }
            match io.read_buf(read).await {
                Ok(0) | Err(_) => return Served::Ended,
                Ok(_) => activity.bytes_read(),
            }
        };
        let head_request = plain.request.method() == Method::HEAD;
        // In flight until the response's last byte is written, not only
        // until its body ends.
        let in_flight = activity.begin();
        // Pinned where it is made: the future is large, and each move of
        // it a copy.
        let answer = pin!(handler.answer(plain.request));
        let Some(response) = until_answered(io, read, answer).await else {
            tracing::debug!(%peer, "the client closed its connection before the response: request dropped");
            return Served::Ended;
        };
        let keep_alive = plain.keep_alive && !closing.load(Ordering::Relaxed);
        let written = write_response(io, &mut out, response, head_request, plain.http10, keep_alive).await;
        drop(in_flight);
        match written {
            Ok(true) if !closing.load(Ordering::Relaxed) => {}
            Ok(_) => {
                let _ = io.shutdown().await;
                return Served::Ended;
            }
            Err(e) => {
                // Dropped without a shutdown (nor TLS close_notify): a body
                // cut short is not taken for a whole one.
                tracing::debug!(%peer, error = %e, "response not written whole: connection dropped");
                return Served::Ended;
            }
        }
        if out.capacity() > KEEP_OUT {
            out = Vec::new();
        }
        if !read.is_empty() {
            // The start of the next request: no parking under it.
            activity.bytes_read();
        }
    }
}

/// The response to a request, or `None` if the client closed its connection
/// first (the request is dropped: a held one stops counting as pending).
/// The connection is watched only while no byte of a next request has come:
/// bytes that come meanwhile (a pipelined request) are kept in `read`, and a
/// client that pipelines and then closes its side still gets its answers.
async fn until_answered<S, F, B>(io: &mut S, read: &mut BytesMut, mut answer: Pin<&mut F>) -> Option<Response<B>>
where
    S: AsyncRead + Unpin,
    F: Future<Output = Response<B>>,
{
    loop {
        tokio::select! {
            biased;
            response = answer.as_mut() => return Some(response),
            got = io.read_buf(read), if read.is_empty() => {
                if matches!(got, Ok(0) | Err(_)) {
                    return None;
                }
            }
        }
    }
}

/// A request this server takes, and what its head says of the connection.
pub(crate) struct Plain<Q> {
    pub request: Box<Request<Q>>,
    pub keep_alive: bool,
    pub http10: bool,
}

pub(crate) enum Parsed<Q> {
    /// The buffer does not hold a whole head yet.
    Partial,
    Plain(Plain<Q>),
    /// A request with a body, an upgrade, `Expect` or `CONNECT`: hyper's.
    Other,
}

/// Parses the request head at the start of `read`. A request without a
/// body is taken out of `read`, its header values sharing the head's bytes;
/// any other request is left there. A malformed head is the status to refuse
/// it with.
pub(crate) fn parse_head<Q: Default>(read: &mut BytesMut, config: &Config) -> Result<Parsed<Q>, StatusCode> {
    let max = config.max_request_headers;
    // Uninitialised: the parser writes only as many fields as there are.
    let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
        [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let fields: &mut [MaybeUninit<httparse::Header>] = if max <= STACK_HEADERS {
        &mut stack[..max]
    } else {
        heap.resize(max, MaybeUninit::uninit());
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, read, fields) {
        Ok(httparse::Status::Complete(len)) if len <= config.max_request_header_bytes => len,
        Ok(httparse::Status::Partial) if read.len() <= config.max_request_header_bytes => return Ok(Parsed::Partial),
        // Over the size: the request line alone (no line end within the
        // limit) is a long target.
        Ok(_) if !read[..config.max_request_header_bytes].contains(&b'\n') => return Err(StatusCode::URI_TOO_LONG),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    let method = parsed.method.unwrap_or_default();
    let http10 = parsed.version == Some(0);
    let mut keep_alive = !http10;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let is = |other: &str| name.eq_ignore_ascii_case(other.as_bytes());
        if is("content-length") || is("transfer-encoding") || is("upgrade") || is("expect") {
            return Ok(Parsed::Other);
        }
        if is("connection") {
            for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if method == "CONNECT" {
        return Ok(Parsed::Other);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| StatusCode::BAD_REQUEST)?;
    let start = read.as_ptr() as usize;
    let range = |part: &[u8]| {
        let from = part.as_ptr() as usize - start;
        from..from + part.len()
    };
    let target = range(parsed.path.unwrap_or("/").as_bytes());
    let fields: Vec<(HeaderName, std::ops::Range<usize>)> = parsed
        .headers
        .iter()
        .map(|h| Ok((HeaderName::from_bytes(h.name.as_bytes())?, range(h.value))))
        .collect::<Result<_, header::InvalidHeaderName>>()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let head = read.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| StatusCode::BAD_REQUEST)?;
        headers.append(name, value);
    }
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| StatusCode::BAD_REQUEST)?;
    if !is_request_target(&uri, &method) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut request = Box::new(Request::new(Q::default()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *request.headers_mut() = headers;
    Ok(Parsed::Plain(Plain { request, keep_alive, http10 }))
}

/// Whether a request target has one of the forms a request without
/// `CONNECT` may have (RFC 9112 section 3.2): origin form (`/path?query`),
/// absolute form (`http://host/path`), or `*` for `OPTIONS`. Anything else
/// (`GET example.com`, `GET '`) would reach the backend as some other path.
fn is_request_target(uri: &Uri, method: &Method) -> bool {
    if uri.scheme().is_some() {
        return uri.authority().is_some();
    }
    match uri.path_and_query().map(|pq| pq.as_str()) {
        Some("*") => method == Method::OPTIONS,
        Some(target) => target.starts_with('/') && uri.authority().is_none(),
        None => false,
    }
}

/// Answers a malformed request head and closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, status: StatusCode) {
    let response = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default()
    );
    if io.write_all(response.as_bytes()).await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// How a response body is delimited on the way to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    None,
    /// This many bytes are left.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, no length known).
    UntilClose,
}

/// Writes a response: its head, and its body as it comes. Returns whether
/// the connection can carry another request: not if the client asked to
/// close, the body could only be delimited by closing, or the body broke
/// off or did not match its length.
async fn write_response<S, B>(
    io: &mut S,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    http10: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let request = Asked { head_request, http10, keep_alive };
    let (framing, keep_alive) = write_head(out, &parts, body.size_hint().exact(), request);
    if framing == Framing::None {
        drop(body);
        return send(io, out).await.map(|()| keep_alive);
    }
    let whole = write_body(io, out, body, framing).await?;
    Ok(keep_alive && whole)
}

/// What the request said of its response.
#[derive(Clone, Copy)]
struct Asked {
    head_request: bool,
    http10: bool,
    keep_alive: bool,
}

/// Writes a response head into `out`: the status line, the response's
/// fields but those of framing and of the connection, which are this
/// server's own, then its framing and the connection's fate. Returns the
/// body's framing and whether the connection is kept.
fn write_head(out: &mut Vec<u8>, parts: &http::response::Parts, exact: Option<u64>, asked: Asked) -> (Framing, bool) {
    let Asked { head_request, http10, mut keep_alive } = asked;
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        // A filter cannot set framing or the connection's fate (nor smuggle
        // a second framing in).
        if name == header::CONTENT_LENGTH {
            // Digits only, as the response came with it (a backend's is
            // checked where it is read; a filter's may be anything).
            length = length.or_else(|| super::content_length(value.as_bytes()));
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION || name == "keep-alive" {
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A response to HEAD keeps the length a GET would have had.
    let length = length.or_else(|| exact.filter(|_| !bodiless));
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if !http10 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    if !dated {
        date(out);
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Writes the body after its head (waiting in `out`) as it comes, framed
/// so. Returns whether it went out whole: not if it was longer or shorter
/// than its length (the connection cannot carry another response then).
async fn write_body<S, B>(io: &mut S, out: &mut Vec<u8>, mut body: B, mut framing: Framing) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        // What the body has ready goes out with what is waiting; when it
        // has nothing ready, what is waiting goes out first.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Later),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame.map(|f| f.map_err(Into::into)))),
        })
        .await;
        let mut data = match next {
            Next::Later => {
                send(io, out).await?;
                continue;
            }
            Next::Frame(None) => break,
            Next::Frame(Some(Err(e))) => {
                // Logged where it broke. What came goes out, and the
                // connection is dropped: the response is cut short.
                send(io, out).await?;
                return Err(io::Error::other(e));
            }
            Next::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailer fields are not passed on.
                _ => continue,
            },
        };
        let mut over = false;
        if let Framing::Length(left) = &mut framing {
            if data.len() as u64 > *left {
                tracing::debug!(over = data.len() as u64 - *left, "response body longer than its Content-Length: cut");
                data.truncate(*left as usize);
                over = true;
            }
            *left -= data.len() as u64;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() < COPY_UNDER {
            out.extend_from_slice(&data);
        } else {
            io.write_all_buf(&mut Buf::chain(&out[..], data)).await?;
            out.clear();
            // TLS may hold some back until flushed.
            io.flush().await?;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if over {
            return send(io, out).await.map(|()| false);
        }
        if out.len() >= COPY_UNDER {
            // A client slower than its backend holds no more than this here.
            send(io, out).await?;
        }
    }
    let mut whole = true;
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(left) if left > 0 => {
            tracing::debug!(missing = left, "response body shorter than its Content-Length: closing the connection");
            whole = false;
        }
        _ => {}
    }
    send(io, out).await?;
    Ok(whole)
}

enum Next {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    /// Nothing ready yet.
    Later,
}

/// Writes and flushes `out`, and empties it.
async fn send<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

/// A `Date` field (RFC 9110 section 6.6.1), formatted once a second.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::Full;

    fn parse(bytes: &[u8]) -> (Result<Parsed<()>, StatusCode>, BytesMut) {
        let mut read = BytesMut::from(bytes);
        let parsed = parse_head(&mut read, &Config::default());
        (parsed, read)
    }

    fn plain(bytes: &[u8]) -> (Plain<()>, BytesMut) {
        match parse(bytes) {
            (Ok(Parsed::Plain(plain)), rest) => (plain, rest),
            _ => panic!("not a request without a body: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_request_without_a_body_is_taken_out_of_the_buffer() {
        let (plain, rest) = plain(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next");
        let req = &plain.request;
        assert_eq!((req.method(), req.uri().path(), req.uri().query()), (&Method::GET, "/a", Some("b=c")));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers().get_all("x-two").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(plain.keep_alive && !plain.http10);
        assert_eq!(&rest[..], b"GET /next", "the pipelined request stays");
    }

    #[test]
    fn requests_for_hyper_are_left_whole() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        ] {
            let (parsed, rest) = parse(head);
            assert!(matches!(parsed, Ok(Parsed::Other)), "{:?}", String::from_utf8_lossy(head));
            assert_eq!(&rest[..], head, "every byte is left for hyper");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keeps = |head: &[u8]| plain(head).0.keep_alive;
        assert!(!keeps(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keeps(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keeps(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
    }

    #[test]
    fn request_targets_are_origin_or_absolute_form_or_an_options_star() {
        for good in ["GET /a?b HTTP/1.1", "GET http://a.example/b HTTP/1.1", "OPTIONS * HTTP/1.1"] {
            let (parsed, _) = parse(format!("{good}\r\nHost: x\r\n\r\n").as_bytes());
            assert!(matches!(parsed, Ok(Parsed::Plain(_))), "{good}");
        }
        // The first found by fuzzing (fuzz/seeds/http1_request_head/target-quote):
        // it went to the backend as `GET /`.
        for bad in ["GET ' HTTP/1.1", "GET a.example HTTP/1.1", "GET a.example:80 HTTP/1.1", "GET * HTTP/1.1"] {
            let (parsed, _) = parse(format!("{bad}\r\nHost: x\r\n\r\n").as_bytes());
            assert_eq!(parsed.err(), Some(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn heads_are_partial_until_whole_and_bad_ones_refused() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").0, Ok(Parsed::Partial)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").0.err(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(parse(b"GET /\x7f HTTP/1.1\r\n\r\n").0.err(), Some(StatusCode::BAD_REQUEST));
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).0.err(), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(65 * 1024));
        assert_eq!(parse(long.as_bytes()).0.err(), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(65 * 1024));
        assert_eq!(parse(target.as_bytes()).0.err(), Some(StatusCode::URI_TOO_LONG));
    }

    async fn written(response: Response<Full<Bytes>>, head_request: bool, http10: bool) -> (String, bool) {
        let mut io = Vec::new();
        let mut out = Vec::new();
        let keep = write_response(&mut io, &mut out, response, head_request, http10, true).await.unwrap();
        (String::from_utf8(io).unwrap(), keep)
    }

    fn without_date(text: &str) -> String {
        text.lines().filter(|l| !l.starts_with("date: ")).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_or_chunks() {
        let full = || Response::new(Full::new(Bytes::from_static(b"hello")));
        let (text, keep) = written(full(), false, false).await;
        assert!(text.contains("\r\ndate: "), "{text}");
        assert_eq!(without_date(&text), "HTTP/1.1 200 OK\ncontent-length: 5\n\nhello");
        assert!(keep);
        let (text, _) = written(full(), true, false).await;
        assert_eq!(without_date(&text), "HTTP/1.1 200 OK\n", "no body and no length made up for HEAD");
    }

    #[tokio::test]
    async fn framing_and_connection_fields_are_the_servers_own() {
        // As a ResponseHeaderModifier filter could set them.
        let mut response = Response::new(Full::new(Bytes::from_static(b"hello")));
        for (name, value) in
            [("transfer-encoding", "chunked"), ("connection", "keep-alive, x-a"), ("keep-alive", "timeout=5")]
        {
            response.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("+5"));
        let (text, keep) = written(response, false, false).await;
        assert_eq!(without_date(&text), "HTTP/1.1 200 OK\ncontent-length: 5\n\nhello");
        assert!(keep);
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_closes_the_connection() {
        let mut response = Response::new(Full::new(Bytes::from_static(b"abc")));
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (text, keep) = written(response, false, false).await;
        assert!(without_date(&text).ends_with("content-length: 5\n\nabc"), "{text}");
        assert!(!keep, "the client must not read the next response as the rest of this one");
    }
}
