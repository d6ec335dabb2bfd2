//! Sockets and connections: one accept loop per bind address, each
//! connection served by hyper (HTTP/1.1, h2c by prior knowledge, ALPN h2 on
//! TLS) with header-read and idle limits.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agimo_shared::Snapshot;
use agimo_shared::snapshot::Protocol;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::RequestGuard;
use crate::h2guard::H2Guard;
use crate::proxy::{self, ConnInfo};
use crate::{Config, Shared};

/// The hyper server settings for every connection.
pub fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(config.header_read_timeout).filter(|t| !t.is_zero()))
        .max_headers(config.max_request_headers)
        .max_buf_size(config.max_request_header_bytes.max(8192));
    builder
        .http2()
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
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%bind, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
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
            tokio::spawn(serve_http(
                shared.clone(),
                TokioIo::new(H2Guard::new(stream)),
                conn,
                activity,
                Alpn::None,
                stop.clone(),
                open,
            ));
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
            serve_http(shared, TokioIo::new(H2Guard::new(stream)), conn, activity, alpn, stop, open).await
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

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: TokioIo<I>,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    alpn: Alpn,
    stop: CancellationToken,
    _open: OpenConnection,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        service_fn(move |req| {
            let (shared, conn) = (shared.clone(), conn.clone());
            let guard = RequestGuard { active: None, connection: Some(activity.begin()) };
            // Boxed: hyper keeps room for one request future per connection
            // for the connection's whole life; a box makes that room a
            // pointer while the connection is idle.
            Box::pin(async move { Ok::<_, Infallible>(proxy::handle(&shared, &conn, req, guard).await) })
        })
    };
    // The connection is pinned here and lent to `drive`: moved into it, it
    // would take its room twice in this task (as the argument and as
    // `drive`'s pinned local), for every idle connection.
    match alpn {
        Alpn::None => {
            let connection = shared.http.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            drive(&shared, connection, &activity, peer, stop).await
        }
        // `serve_connection_with_upgrades` would still sniff for the HTTP/2
        // preface; HTTP/2 has no upgrades to offer anyway.
        Alpn::H2 => {
            let connection = shared.http2_only.serve_connection(io, service);
            tokio::pin!(connection);
            drive(&shared, connection, &activity, peer, stop).await
        }
    }
}

/// A hyper connection that can be asked to finish.
trait Graceful: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> Graceful for auto::UpgradeableConnection<'_, I, S, E>
where
    Self: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, E, B> Graceful for auto::Connection<'_, I, S, E>
where
    Self: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self)
    }
}

/// Runs a connection to its end: closed gracefully when `stop` fires or it
/// has been idle too long, dropped when its client stopped reading.
async fn drive(
    shared: &Shared,
    mut connection: Pin<&mut impl Graceful>,
    activity: &Activity,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    // Zero turns a check off.
    let idle = shared.config.idle_timeout;
    let send = shared.config.send_timeout;
    let period = [idle, send].into_iter().filter(|t| !t.is_zero()).min().map_or(Duration::from_secs(3600), |t| t / 4);
    let mut tick = tokio::time::interval(period);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if !send.is_zero() && activity.write_blocked_for() >= send {
                    // The client stopped reading (slow read): drop it.
                    tracing::debug!(%peer, timeout = ?send, "connection closed: the client stopped reading");
                    return;
                }
                if !closing && !idle.is_zero() && activity.idle_for() >= idle {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended, for
/// the idle timeout; since when a write to the client has been waiting, for
/// the send timeout.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds after `start`, plus one, since when the client socket has
    /// not taken a write; 0 while writes go through.
    write_blocked_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle_for(&self) -> Duration {
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

    fn write_blocked_for(&self) -> Duration {
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
