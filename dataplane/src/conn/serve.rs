//! Serving one connection: TLS, then HTTP/1.1 requests without a body by
//! [`http1::server`], the others by hyper, as are h2c by prior knowledge and
//! ALPN h2 on TLS; the header-read, idle and send limits checked on a tick;
//! idle HTTP/1.1 connections parked ([`park`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1 as hyper_http1, http2 as hyper_http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::h2guard::H2Guard;
use super::park::{self, Opening, Session};
use super::server::Server;
use crate::activity::{Activity, OpenConnection, Watched};
use crate::config::Config;
use crate::http1;
use crate::http1::server::Served;
use crate::proxy::{self, ConnInfo};
use crate::upstream::body::{Body, RequestBody, RequestGuard};

pub(super) async fn serve_tls(
    server: Arc<Server>,
    stream: Watched<TcpStream>,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
    open: OpenConnection,
) {
    let handshake = TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(server.proxy.config.tls_handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            // ALPN decided the protocol: no sniffing for the HTTP/2 preface.
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::H2,
                _ => Alpn::None,
            };
            let conn = Arc::new(conn.with_sni(stream.get_ref().1.server_name()));
            serve_http(server, stream, conn, activity, alpn, stop, open).await
        }
        Ok(Err(e)) => tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %conn.peer, "TLS handshake timed out"),
    }
}

/// Whether a TLS client chose HTTP/2 by ALPN. (Otherwise the first bytes
/// tell: the HTTP/2 preface or an HTTP/1.1 request.)
#[derive(Clone, Copy)]
pub(super) enum Alpn {
    None,
    H2,
}

/// The proxy as a hyper service for one connection.
#[derive(Clone)]
struct ProxyService {
    server: Arc<Server>,
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
        let (server, conn) = (self.server.clone(), self.conn.clone());
        let guard = RequestGuard { active: None, connection: Some(self.activity.begin()) };
        let req = Box::new(req.map(RequestBody::Incoming));
        Box::pin(async move { Ok(proxy::handle(&server.proxy, &conn, req, guard).await) })
    }
}

pub(super) async fn serve_http<S>(
    server: Arc<Server>,
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
            let deadline = activity.quiet_deadline(&server.proxy.config);
            match park::opening(&mut io, deadline, &stop).await {
                Some(opening) => opening,
                None => return,
            }
        }
    };
    let service = ProxyService { server: server.clone(), conn, activity: activity.clone() };
    match opening {
        Opening::Http2(preface) => {
            let io = TokioIo::new(H2Guard::new(Session::new(io, preface, activity.clone())));
            // Boxed: an HTTP/1.1 connection's task has no room for it.
            Box::pin(async {
                let connection = server.http2.serve_connection(io, service);
                tokio::pin!(connection);
                drive(&server.proxy.config, connection, &activity, peer, &stop, None).await
            })
            .await;
        }
        Opening::Http1(read) => serve_http1(&server, io, read, service, &activity, &stop).await,
    }
}

/// Serves an HTTP/1.1 connection: requests without a body with
/// [`http1::server`], the others with hyper, from the first of them until hyper
/// lets go of the connection again. Parks it whenever it has been idle for
/// [`Config::park_idle_after`](crate::Config::park_idle_after) (see
/// [`park`]).
async fn serve_http1<S>(
    server: &Server,
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
        let connection = http1::server::Connection { config: &server.proxy.config, peer: service.conn.peer, activity };
        let (proxy, conn) = (&server.proxy, &*service.conn);
        let handler = |req| proxy::handle(proxy, conn, req, RequestGuard::default());
        let served = Box::pin(http1::server::serve(&mut io, &mut read, &connection, stop, handler)).await;
        match served {
            Served::Ended => return,
            Served::Park => {}
            Served::HandOver => {
                let unread = std::mem::take(&mut read).freeze();
                // Boxed, as above.
                let Some(parked) = Box::pin(until_parked(server, io, unread, service.clone(), activity, stop)).await
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
            let _parked = server.proxy.metrics.parked();
            let deadline = activity.quiet_deadline(&server.proxy.config);
            match park::unpark(&mut io, deadline, stop).await {
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
    server: &Server,
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
    let mut connection = server.http1.serve_connection(TokioIo::new(session), service).with_upgrades();
    let config = &server.proxy.config;
    let driven = drive(config, Pin::new(&mut connection), activity, peer, stop, config.park_after()).await;
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

impl<I> Graceful for hyper_http1::UpgradeableConnection<I, ProxyService>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I> Graceful for hyper_http2::Connection<I, ProxyService, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_http2::Connection::graceful_shutdown(self)
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
    config: &Config,
    mut connection: Pin<&mut impl Graceful>,
    activity: &Activity,
    peer: SocketAddr,
    stop: &CancellationToken,
    park_after: Option<Duration>,
) -> Driven {
    // Zero turns a check off.
    let idle = config.idle_timeout;
    let send = config.send_timeout;
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
