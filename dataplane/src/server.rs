//! Sockets and connections: one accept loop per bind address, each
//! connection served with header-read, idle and send limits: HTTP/1.1
//! requests without a body by [`crate::h1_server`], the others by hyper, as
//! are h2c by prior knowledge and ALPN h2 on TLS; idle HTTP/1.1 connections
//! parked (see [`crate::session`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agimo_shared::Snapshot;
use agimo_shared::snapshot::Protocol;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, RequestBody, RequestGuard};
use crate::h1_server::{self, Served};
use crate::h2guard::H2Guard;
use crate::proxy::{self, ConnInfo};
use crate::session::{self, Opening, Session};
use crate::{Config, Shared};

/// The hyper server settings for HTTP/1.1 connections.
pub fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(config.header_read_timeout).filter(|t| !t.is_zero()))
        .max_headers(config.max_request_headers)
        .max_buf_size(config.max_request_header_bytes.max(8192));
    builder
}

/// The hyper server settings for HTTP/2 connections.
pub fn http2_builder(config: &Config) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_request_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// What the dataplane listens on, and what it could not bind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub listening: Vec<SocketAddr>,
    /// Addresses that could not be bound, with the error; retried every
    /// second.
    pub errors: BTreeMap<SocketAddr, BindError>,
}

/// Why a socket could not be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindError {
    /// The IP address is not one of this machine's (EADDRNOTAVAIL), as
    /// opposed to the port being taken or refused.
    pub address_not_available: bool,
    pub message: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The accept loops that are running, by socket address. Owned by the run
/// task, which alone opens and closes sockets.
#[derive(Default)]
pub struct Sockets {
    running: BTreeMap<SocketAddr, (CancellationToken, tokio::task::JoinHandle<()>)>,
    errors: BTreeMap<SocketAddr, BindError>,
}

impl Sockets {
    /// Makes the open sockets those of `snapshot`: closes sockets it no
    /// longer has (their connections finish the requests in flight, then
    /// close), waits until they are closed so their ports are free, then opens
    /// the missing ones. Failed binds are kept in [`SocketState::errors`].
    pub async fn reconcile(&mut self, shared: &Arc<Shared>, snapshot: &Snapshot, stop: &CancellationToken) {
        let wanted: BTreeMap<SocketAddr, Protocol> = snapshot.binds.iter().map(|b| (b.address, b.protocol)).collect();
        let unused: Vec<SocketAddr> = self.running.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for addr in unused {
            if let Some((token, task)) = self.running.remove(&addr) {
                tracing::info!(%addr, "closing listener");
                token.cancel();
                let _ = task.await;
            }
        }
        self.errors.clear();
        for (&addr, protocol) in &wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            match listen(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, ?protocol, "listening");
                    let token = stop.child_token();
                    let task = tokio::spawn(accept_loop(shared.clone(), listener, addr, token.clone()));
                    self.running.insert(addr, (token, task));
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen; retrying every second");
                    let address_not_available = e.kind() == std::io::ErrorKind::AddrNotAvailable;
                    self.errors.insert(addr, BindError { address_not_available, message: e.to_string() });
                }
            }
        }
    }

    pub fn state(&self) -> SocketState {
        SocketState { listening: self.running.keys().copied().collect(), errors: self.errors.clone() }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, bind: SocketAddr, stop: CancellationToken) {
    let tls = crate::tls::server_config(shared.clone(), bind);
    let what = bind.to_string();
    while let Some((stream, peer)) = crate::listen::next(&listener, &stop, &what).await {
        serve_connection(&shared, stream, peer, bind, &tls, &stop);
    }
}

/// Starts serving one accepted connection in a task of its own. A plaintext
/// connection's task is just [`serve_http`], with no room for TLS state: an
/// idle connection costs as little memory as hyper allows. Past
/// [`Config::max_connections`](crate::Config::max_connections) a connection is
/// refused: a plaintext one with a `503` and `Connection: close`, a TLS one
/// by closing it (a handshake is what an overloaded proxy cannot afford).
fn serve_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    tls: &Arc<rustls::ServerConfig>,
    stop: &CancellationToken,
) {
    let Some(protocol) = shared.snapshot.load().bind(bind).map(|b| b.protocol) else {
        return;
    };
    if shared.connections.load(Ordering::Acquire) >= shared.config.max_connections {
        shared.metrics.refused_connection();
        tracing::debug!(%peer, %bind, max = shared.config.max_connections, "connection refused: too many open");
        if protocol == Protocol::Http {
            tokio::spawn(refuse(stream));
        }
        return;
    }
    let _ = stream.set_nodelay(true);
    let open = OpenConnection::new(&shared.connections);
    let conn = Arc::new(ConnInfo::new(peer, bind, protocol));
    let activity = Arc::new(Activity::new());
    let stream = Watched { inner: stream, activity: activity.clone() };
    match protocol {
        Protocol::Http => {
            tokio::spawn(serve_http(shared.clone(), stream, conn, activity, Alpn::None, stop.clone(), open));
        }
        Protocol::Https => {
            tokio::spawn(serve_tls(shared.clone(), stream, conn, activity, tls.clone(), stop.clone(), open));
        }
    }
}

/// The answer to a connection over the cap.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\
        retry-after: 1\r\nx-agimo-reason: too-many-connections\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(RESPONSE)).await;
}

async fn serve_tls(
    shared: Arc<Shared>,
    stream: Watched<TcpStream>,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
    open: OpenConnection,
) {
    let handshake = TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(shared.config.tls_handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            // ALPN decided the protocol: no sniffing for the HTTP/2 preface.
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::H2,
                _ => Alpn::None,
            };
            serve_http(shared, stream, conn, activity, alpn, stop, open).await
        }
        Ok(Err(e)) => tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %conn.peer, "TLS handshake timed out"),
    }
}

/// Whether a TLS client chose HTTP/2 by ALPN. (Otherwise the first bytes
/// tell: the HTTP/2 preface or an HTTP/1.1 request.)
#[derive(Clone, Copy)]
enum Alpn {
    None,
    H2,
}

/// The proxy as a hyper service for one connection.
#[derive(Clone)]
struct ProxyService {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: hyper keeps room for one request future per connection for the
    // connection's whole life; a box makes that room a pointer while the
    // connection is idle.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (shared, conn) = (self.shared.clone(), self.conn.clone());
        let guard = RequestGuard { active: None, connection: Some(self.activity.begin()) };
        let req = Box::new(req.map(RequestBody::Incoming));
        Box::pin(async move { Ok(proxy::handle(&shared, &conn, req, guard).await) })
    }
}

async fn serve_http<S>(
    shared: Arc<Shared>,
    mut io: S,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    alpn: Alpn,
    stop: CancellationToken,
    _open: OpenConnection,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let opening = match alpn {
        Alpn::H2 => Opening::Http2(Bytes::new()),
        Alpn::None => {
            let deadline = activity.quiet_deadline(&shared.config);
            match session::opening(&mut io, deadline, &stop).await {
                Some(opening) => opening,
                None => return,
            }
        }
    };
    let service = ProxyService { shared: shared.clone(), conn, activity: activity.clone() };
    match opening {
        Opening::Http2(preface) => {
            let io = TokioIo::new(H2Guard::new(Session::new(io, preface, activity.clone())));
            // Boxed: an HTTP/1.1 connection's task has no room for it.
            Box::pin(async {
                let connection = shared.http2.serve_connection(io, service);
                tokio::pin!(connection);
                drive(&shared, connection, &activity, peer, &stop, None).await
            })
            .await;
        }
        Opening::Http1(read) => serve_http1(&shared, io, read, service, &activity, &stop).await,
    }
}

/// Serves an HTTP/1.1 connection: requests without a body with
/// [`h1_server`], the others with hyper, from the first of them until hyper
/// lets go of the connection again. Parks it whenever it has been idle for
/// [`Config::park_idle_after`](crate::Config::park_idle_after) (see
/// [`session`]).
async fn serve_http1<S>(
    shared: &Shared,
    mut io: S,
    read: Bytes,
    service: ProxyService,
    activity: &Arc<Activity>,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut read = BytesMut::from(&read[..]);
    loop {
        // Boxed, so that a parked connection's task has no room for it.
        let served = Box::pin(h1_server::serve(shared, &mut io, &mut read, &service.conn, activity, stop)).await;
        match served {
            Served::Ended => return,
            Served::Park => {}
            Served::HandOver => {
                let unread = std::mem::take(&mut read).freeze();
                // Boxed, as above.
                let Some(parked) = Box::pin(until_parked(shared, io, unread, service.clone(), activity, stop)).await
                else {
                    return;
                };
                let unread;
                (io, unread) = parked;
                read = BytesMut::from(&unread[..]);
            }
        }
        if read.is_empty() {
            // The buffer is freed while parked.
            drop(std::mem::take(&mut read));
            tracing::trace!(peer = %service.conn.peer, "connection parked");
            let _parked = shared.metrics.parked();
            let deadline = activity.quiet_deadline(&shared.config);
            match session::unpark(&mut io, deadline, stop).await {
                Some(bytes) => read = BytesMut::from(&bytes[..]),
                None => return,
            }
        }
    }
}

/// Serves an HTTP/1.1 connection with hyper until it ends (`None`) or
/// hyper lets go of it to park it: its socket and the bytes read from it
/// that hyper had not used yet.
async fn until_parked<S>(
    shared: &Shared,
    io: S,
    read: Bytes,
    service: ProxyService,
    activity: &Arc<Activity>,
    stop: &CancellationToken,
) -> Option<(S, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = service.conn.peer;
    let session = Session::new(io, read, activity.clone());
    let mut connection = shared.http1.serve_connection(TokioIo::new(session), service).with_upgrades();
    let driven =
        drive(shared, Pin::new(&mut connection), activity, peer, stop, session::park_after(&shared.config)).await;
    activity.parked();
    if driven == Driven::Ended {
        return None;
    }
    // `None` once upgraded; the upgrade has the socket then.
    let parts = connection.into_parts()?;
    Some(parts.io.into_inner().into_parts(parts.read_buf))
}

/// A hyper connection that can be asked to finish.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I> Graceful for http1::UpgradeableConnection<I, ProxyService>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I> Graceful for http2::Connection<I, ProxyService, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// How [`drive`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Driven {
    /// The connection is over.
    Ended,
    /// hyper let go of an idle connection; the socket is still open.
    Parked,
}

/// Runs a connection until it ends (closed gracefully when `stop` fires or
/// it has been idle too long, dropped when its client stopped reading) or,
/// with `park_after`, until it has been idle that long and hyper has let go.
async fn drive(
    shared: &Shared,
    mut connection: Pin<&mut impl Graceful>,
    activity: &Activity,
    peer: SocketAddr,
    stop: &CancellationToken,
    park_after: Option<Duration>,
) -> Driven {
    // Zero turns a check off.
    let idle = shared.config.idle_timeout;
    let send = shared.config.send_timeout;
    let period = [idle / 4, send / 4, park_after.unwrap_or_default() / 2]
        .into_iter()
        .filter(|t| !t.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(900));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut closing = false;
    let mut parking = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                match result {
                    Ok(()) if parking => return Driven::Parked,
                    Ok(()) => {}
                    Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
                }
                return Driven::Ended;
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if !send.is_zero() && activity.write_blocked_for() >= send {
                    // The client stopped reading (slow read): drop it.
                    tracing::debug!(%peer, timeout = ?send, "connection closed: the client stopped reading");
                    return Driven::Ended;
                }
                if closing {
                    continue;
                }
                if !idle.is_zero() && activity.idle_for() >= idle {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                } else if park_after.is_some_and(|after| activity.may_park(after)) {
                    closing = true;
                    parking = true;
                    activity.parking();
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended, for
/// the idle timeout; since when a write to the client has been waiting, for
/// the send timeout; whether the client has sent anything since, and
/// whether the connection is being parked, for parking.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds after `start`, plus one, since when the client socket has
    /// not taken a write; 0 while writes go through.
    write_blocked_since: AtomicU64,
    /// Bytes have come from the client since the last request ended (the
    /// start of the next request, or of a slow one).
    read_since_idle: AtomicBool,
    parking: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            read_since_idle: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }

    pub(crate) fn bytes_read(&self) {
        if !self.read_since_idle.load(Ordering::Relaxed) {
            self.read_since_idle.store(true, Ordering::Relaxed);
        }
    }

    /// Nothing in flight or begun, nothing waiting to be sent, for `after`.
    pub(crate) fn may_park(&self, after: Duration) -> bool {
        !self.read_since_idle.load(Ordering::Relaxed)
            && self.write_blocked_since.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.idle_for() >= after
    }

    /// Nothing in flight, and nothing read since the last request ended.
    pub(crate) fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.read_since_idle.load(Ordering::Relaxed)
    }

    fn parking(&self) {
        self.parking.store(true, Ordering::Relaxed);
    }

    fn parked(&self) {
        self.parking.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// When a connection with nothing in flight, waiting for a request, is
    /// closed: the idle timeout or the header read timeout, whichever comes
    /// first, after the connection's start or its last request.
    pub(crate) fn quiet_deadline(&self, config: &Config) -> tokio::time::Instant {
        let since = self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        let quiet = [config.idle_timeout, config.header_read_timeout].into_iter().filter(|t| !t.is_zero()).min();
        // Far enough for "never", near enough not to overflow.
        let quiet = quiet.unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600));
        tokio::time::Instant::from_std(since + quiet)
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(since)
    }

    fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            let now = self.start.elapsed().as_millis() as u64 + 1;
            self.write_blocked_since.store(now, Ordering::Relaxed);
        }
    }

    fn write_went_through(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn write_blocked_for(&self) -> Duration {
        match self.write_blocked_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => self.start.elapsed().saturating_sub(Duration::from_millis(since - 1)),
        }
    }
}

/// A client socket that tells its [`Activity`] when writes stall.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    fn watch<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_went_through(),
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request in flight on a connection; ends when dropped.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Relaxed);
        self.0.read_since_idle.store(false, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open client connection until dropped.
pub struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnection {
    pub fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
