//! Connections to backend endpoints: a pool of HTTP/1.1 connections per
//! endpoint, and one multiplexed cleartext HTTP/2 connection per endpoint for
//! `kubernetes.io/h2c` backends.
//!
//! A request without a body (and no upgrade) is exchanged by Agimo's own
//! HTTP/1.1 code in the request's task ([`crate::http1::client`]). Requests with a body
//! and upgrades go through hyper's client, from a second pool on hyper's
//! connection API: a connection goes back to its endpoint's idle list when
//! the response body has been read to its end ([`Pooled`]). Both pools keep
//! connections idle for [`IDLE_TIMEOUT`] at most.
//!
//! A backend with TLS (a BackendTLSPolicy, [`TlsOrigination`]) is spoken to
//! through hyper's client only, over a rustls stream: HTTP/1.1 connections
//! idle per TLS configuration ([`TlsOrigination::key`]), HTTP/2 ones (ALPN
//! `h2`) one per endpoint and configuration, never mixed with plain ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agimo_shared::snapshot::{BackendProtocol, TlsOrigination};
use http::{Method, Request, Response, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub(crate) mod body;
mod pool;
mod request;
mod tls;

use self::body::{Body, RequestBody, RequestBodyError};
use self::pool::{Idle, IdleMap, Pooled};
use crate::base::{BoxError, lock};
use crate::http1::client as h1;

/// Idle HTTP/1.1 connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request to an endpoint failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    Connect(BoxError),
    /// The connection broke or the response was malformed.
    Failed(BoxError),
    /// The client's request body broke while it was being sent.
    RequestBody(BoxError),
    /// The TLS handshake failed (the backend's certificate did not verify,
    /// among others): nothing was sent.
    Tls(BoxError),
}

impl UpstreamError {
    /// A failure of hyper's client: the backend's, or the client's if its
    /// request body broke on the way ([`RequestBodyError`]).
    fn from_hyper(error: hyper::Error) -> Self {
        if RequestBodyError::is_cause_of(&error) {
            UpstreamError::RequestBody(error.into())
        } else {
            UpstreamError::Failed(error.into())
        }
    }
}

type H2cMap = Mutex<HashMap<SocketAddr, http2::SendRequest<RequestBody>>>;
/// Idle TLS HTTP/1.1 connections, per [`TlsOrigination::key`].
type TlsIdle = Mutex<HashMap<u64, Idle>>;
/// TLS HTTP/2 connections, per endpoint and [`TlsOrigination::key`].
type TlsH2Map = Mutex<HashMap<(SocketAddr, u64), http2::SendRequest<RequestBody>>>;

pub struct Upstream {
    h1: Arc<h1::Pool>,
    http1: Idle,
    reaper: std::sync::Once,
    h2c: Arc<H2cMap>,
    tls_http1: Arc<TlsIdle>,
    tls_h2: Arc<TlsH2Map>,
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            h1: Arc::default(),
            http1: Idle::default(),
            reaper: std::sync::Once::new(),
            h2c: Arc::default(),
            tls_http1: Arc::default(),
            tls_h2: Arc::default(),
            connect_timeout,
        }
    }

    /// Sends `req` (whose `Host` header carries the authority) to `endpoint`.
    /// An HTTP/1.1 response's body gives its connection back to the pool
    /// once it has been read to its end.
    pub async fn send(
        &self,
        protocol: BackendProtocol,
        tls: Option<&TlsOrigination>,
        endpoint: SocketAddr,
        mut req: Box<Request<RequestBody>>,
    ) -> Result<Response<Body>, UpstreamError> {
        if let Some(tls) = tls {
            return Box::pin(self.send_tls(protocol, tls, endpoint, None, req)).await;
        }
        match protocol {
            BackendProtocol::Http1 if by_h1(&req) => {
                // Boxed: only this arm pays for its state.
                Box::pin(self.send_h1(endpoint, req)).await
            }
            BackendProtocol::Http1 => {
                to_http1(&mut req)?;
                let (response, sender) = self.send_http1(endpoint, req).await?;
                let pooled = Pooled { idle: self.http1.clone(), endpoint, sender: Some(sender) };
                Ok(response.map(|body| Body::upstream(body, Some(pooled))))
            }
            BackendProtocol::H2c => {
                to_h2c(&mut req, endpoint)?;
                let mut sender = self.h2c_sender(endpoint).await?;
                let response = sender.send_request(*req).await.map_err(UpstreamError::from_hyper)?;
                Ok(response.map(|body| Body::upstream(body, None)))
            }
        }
    }

    /// Sends `req` as [`Upstream::send`] does, but on `stream`: a new
    /// connection to `endpoint` made for it ([`Upstream::connect`]) by the
    /// scale-to-zero gate, which connects before it gives a request up. An
    /// HTTP/1.1 connection goes to the pool after its response as any; an
    /// HTTP/2 one becomes the endpoint's, for later requests to share.
    pub async fn send_on(
        &self,
        protocol: BackendProtocol,
        tls: Option<&TlsOrigination>,
        endpoint: SocketAddr,
        stream: TcpStream,
        mut req: Box<Request<RequestBody>>,
    ) -> Result<Response<Body>, UpstreamError> {
        self.start_reaper();
        if let Some(tls) = tls {
            return Box::pin(self.send_tls(protocol, tls, endpoint, Some(stream), req)).await;
        }
        match protocol {
            BackendProtocol::Http1 if by_h1(&req) => {
                let head = h1::encode_head(&req);
                let head_request = req.method() == Method::HEAD;
                drop(req);
                let release = h1::Release { pool: self.h1.clone(), endpoint };
                match h1::exchange(h1::Conn::new(stream), &head, head_request, release).await {
                    Ok(response) => Ok(response.map(Body::h1)),
                    Err(e) => Err(UpstreamError::Failed(e.error)),
                }
            }
            BackendProtocol::Http1 => {
                to_http1(&mut req)?;
                let mut sender = handshake_http1(endpoint, stream).await?;
                let response = sender.send_request(*req).await.map_err(UpstreamError::from_hyper)?;
                let pooled = Pooled { idle: self.http1.clone(), endpoint, sender: Some(sender) };
                Ok(response.map(|body| Body::upstream(body, Some(pooled))))
            }
            BackendProtocol::H2c => {
                to_h2c(&mut req, endpoint)?;
                let mut sender = self.handshake_h2c(endpoint, stream).await?;
                let response = sender.send_request(*req).await.map_err(UpstreamError::from_hyper)?;
                Ok(response.map(|body| Body::upstream(body, None)))
            }
        }
    }

    /// Whether [`Upstream::send`] would find a connection to `endpoint`
    /// open already for a request like this one (`hyper`: one with a body or
    /// an upgrade): an idle HTTP/1.1 connection, or the endpoint's HTTP/2
    /// one. Idle connections found closed or stale on the way are dropped,
    /// as taking them would. (Another request may take the idle one first.)
    pub(crate) fn has_connection(
        &self,
        protocol: BackendProtocol,
        tls: Option<&TlsOrigination>,
        hyper: bool,
        endpoint: SocketAddr,
    ) -> bool {
        let tls_idle = tls.map(|t| self.tls_idle(t));
        match (protocol, tls) {
            (BackendProtocol::H2c, Some(t)) => {
                lock(&self.tls_h2).get(&(endpoint, t.key)).is_some_and(|s| !s.is_closed())
            }
            (BackendProtocol::Http1, None) if !hyper => self.h1.has_idle(endpoint, IDLE_TIMEOUT),
            (BackendProtocol::Http1, _) => {
                let mut idle = lock(tls_idle.as_ref().unwrap_or(&self.http1));
                let Some(list) = idle.get_mut(&endpoint) else { return false };
                while let Some((sender, since)) = list.last() {
                    if since.elapsed() <= IDLE_TIMEOUT && !sender.is_closed() {
                        return true;
                    }
                    list.pop();
                }
                false
            }
            (BackendProtocol::H2c, None) => lock(&self.h2c).get(&endpoint).is_some_and(|s| !s.is_closed()),
        }
    }

    /// The idle list of TLS connections made with `tls`.
    fn tls_idle(&self, tls: &TlsOrigination) -> Idle {
        lock(&self.tls_http1).entry(tls.key).or_default().clone()
    }

    /// Sends `req` to a TLS backend, on `stream` (made by the gate) or a
    /// connection of the pool for `tls`, or a new one.
    async fn send_tls(
        &self,
        protocol: BackendProtocol,
        tls: &TlsOrigination,
        endpoint: SocketAddr,
        stream: Option<TcpStream>,
        mut req: Box<Request<RequestBody>>,
    ) -> Result<Response<Body>, UpstreamError> {
        self.start_reaper();
        match protocol {
            BackendProtocol::Http1 => {
                to_http1(&mut req)?;
                let idle = self.tls_idle(tls);
                let mut sender = match stream {
                    Some(stream) => Some(self.handshake_tls_http1(tls, endpoint, stream).await?),
                    None => self.idle_http1(&idle, endpoint).await,
                };
                let response = loop {
                    let mut current = match sender.take() {
                        Some(s) => s,
                        None => {
                            let stream = self.connect(endpoint).await?;
                            self.handshake_tls_http1(tls, endpoint, stream).await?
                        }
                    };
                    match current.try_send_request(*req).await {
                        Ok(response) => break (response, current),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) => {
                                tracing::debug!(%endpoint, error = %e.error(), "idle TLS connection closed: using a new one");
                                *req = unsent;
                            }
                            None => return Err(UpstreamError::from_hyper(e.into_error())),
                        },
                    }
                };
                let (response, sender) = response;
                let pooled = Pooled { idle, endpoint, sender: Some(sender) };
                Ok(response.map(|body| Body::upstream(body, Some(pooled))))
            }
            BackendProtocol::H2c => {
                to_h2c(&mut req, endpoint)?;
                to_https(&mut req)?;
                let existing = match stream {
                    Some(_) => None,
                    None => lock(&self.tls_h2).get(&(endpoint, tls.key)).filter(|s| !s.is_closed()).cloned(),
                };
                let mut sender = match existing {
                    Some(sender) => sender,
                    None => {
                        let stream = match stream {
                            Some(stream) => stream,
                            None => self.connect(endpoint).await?,
                        };
                        let stream = tls::handshake(tls, endpoint, stream).await?;
                        let sender = handshake_h2(endpoint, stream).await?;
                        lock(&self.tls_h2).insert((endpoint, tls.key), sender.clone());
                        sender
                    }
                };
                sender.ready().await.map_err(UpstreamError::from_hyper)?;
                let response = sender.send_request(*req).await.map_err(UpstreamError::from_hyper)?;
                Ok(response.map(|body| Body::upstream(body, None)))
            }
        }
    }

    async fn handshake_tls_http1(
        &self,
        tls: &TlsOrigination,
        endpoint: SocketAddr,
        stream: TcpStream,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stream = tls::handshake(tls, endpoint, stream).await?;
        handshake_http1(endpoint, stream).await
    }

    /// Sends a request without a body with [`h1`]: on an idle connection to
    /// `endpoint`, or a new one. A request that finds its idle connection
    /// closed by the endpoint (no byte of a response on it) goes again on a
    /// new connection if it is idempotent (RFC 9110 section 9.2.2).
    async fn send_h1(
        &self,
        endpoint: SocketAddr,
        req: Box<Request<RequestBody>>,
    ) -> Result<Response<Body>, UpstreamError> {
        let head = h1::encode_head(&req);
        let head_request = req.method() == Method::HEAD;
        let idempotent = req.method().is_idempotent();
        drop(req);
        let release = || h1::Release { pool: self.h1.clone(), endpoint };
        if let Some(conn) = self.h1.take(endpoint, IDLE_TIMEOUT) {
            match h1::exchange(conn, &head, head_request, release()).await {
                Ok(response) => return Ok(response.map(Body::h1)),
                Err(e) if e.no_response && idempotent => {
                    tracing::debug!(%endpoint, error = %e.error, "idle connection closed: using a new one");
                }
                Err(e) => return Err(UpstreamError::Failed(e.error)),
            }
        }
        let conn = h1::Conn::new(self.connect(endpoint).await?);
        self.start_reaper();
        match h1::exchange(conn, &head, head_request, release()).await {
            Ok(response) => Ok(response.map(Body::h1)),
            Err(e) => Err(UpstreamError::Failed(e.error)),
        }
    }

    fn start_reaper(&self) {
        self.reaper.call_once(|| {
            tokio::spawn(reap(
                Arc::downgrade(&self.http1),
                Arc::downgrade(&self.h1),
                Arc::downgrade(&self.h2c),
                Arc::downgrade(&self.tls_http1),
                Arc::downgrade(&self.tls_h2),
            ));
        });
    }

    /// Sends on an idle connection to `endpoint`, or a new one. A request
    /// that an idle connection could not take (closed by the endpoint in the
    /// meantime, nothing written) is sent again on a new connection.
    async fn send_http1(
        &self,
        endpoint: SocketAddr,
        mut req: Box<Request<RequestBody>>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<RequestBody>), UpstreamError> {
        if let Some(mut sender) = self.idle_http1(&self.http1, endpoint).await {
            match sender.try_send_request(*req).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        tracing::debug!(%endpoint, error = %e.error(), "idle connection closed: using a new one");
                        *req = unsent;
                    }
                    None => return Err(UpstreamError::from_hyper(e.into_error())),
                },
            }
        }
        // Boxed, as the HTTP/2 connect below: only a request that opens a
        // connection pays for the connect's state.
        let mut sender = Box::pin(self.connect_http1(endpoint)).await?;
        let response = sender.send_request(*req).await.map_err(UpstreamError::from_hyper)?;
        Ok((response, sender))
    }

    /// An idle connection to `endpoint` that is ready for a request.
    async fn idle_http1(&self, idle: &Idle, endpoint: SocketAddr) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let (mut sender, since) = lock(idle).get_mut(&endpoint)?.pop()?;
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            // Given back when its last response ended: ready at once, or as
            // soon as its connection task has seen that end.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect_http1(&self, endpoint: SocketAddr) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        self.start_reaper();
        let stream = self.connect(endpoint).await?;
        handshake_http1(endpoint, stream).await
    }

    /// A new TCP connection to `endpoint`, within the connect timeout.
    pub(crate) async fn connect(&self, endpoint: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(format!("connect timed out after {:?}", self.connect_timeout).into()))?
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The open HTTP/2 connection to `endpoint`, or a new one.
    async fn h2c_sender(&self, endpoint: SocketAddr) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let existing = lock(&self.h2c).get(&endpoint).filter(|s| !s.is_closed()).cloned();
        if let Some(sender) = existing {
            sender.clone().ready().await.map_err(UpstreamError::from_hyper)?;
            return Ok(sender);
        }
        Box::pin(self.connect_h2c(endpoint)).await
    }

    async fn connect_h2c(&self, endpoint: SocketAddr) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        self.start_reaper();
        let stream = self.connect(endpoint).await?;
        self.handshake_h2c(endpoint, stream).await
    }

    /// An HTTP/2 connection on `stream`, which becomes the endpoint's.
    async fn handshake_h2c(
        &self,
        endpoint: SocketAddr,
        stream: TcpStream,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let sender = handshake_h2(endpoint, stream).await?;
        lock(&self.h2c).insert(endpoint, sender.clone());
        Ok(sender)
    }
}

/// Whether a request goes by [`h1`]: an HTTP/1.1 request without a body,
/// and no upgrade.
pub(crate) fn by_h1(req: &Request<RequestBody>) -> bool {
    req.body().is_end_stream() && !req.headers().contains_key(header::UPGRADE)
}

/// An HTTP/1.1 request in origin form: the path and query only.
fn to_http1(req: &mut Request<RequestBody>) -> Result<(), UpstreamError> {
    if req.uri().authority().is_some() {
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() = Uri::try_from(path_and_query).map_err(|e| UpstreamError::Failed(e.into()))?;
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// An HTTP/2 request: the authority as :authority, from the URI.
fn to_h2c(req: &mut Request<RequestBody>, endpoint: SocketAddr) -> Result<(), UpstreamError> {
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| endpoint.to_string());
    *req.uri_mut() = uri(&authority, &path_and_query)?;
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// An HTTP/2 client connection on `stream`, driven by a task of its own.
async fn handshake_h2<S>(endpoint: SocketAddr, stream: S) -> Result<http2::SendRequest<RequestBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%endpoint, error = %e, "HTTP/2 backend connection ended");
        }
    });
    Ok(sender)
}

/// An HTTP/2 request to a TLS backend: scheme `https`.
fn to_https(req: &mut Request<RequestBody>) -> Result<(), UpstreamError> {
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Failed(e.into()))?;
    Ok(())
}

/// An HTTP/1.1 client connection on `stream` (upgrades allowed), driven by
/// a task of its own.
async fn handshake_http1<S>(endpoint: SocketAddr, stream: S) -> Result<http1::SendRequest<RequestBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| UpstreamError::Connect(e.into()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

/// Closes idle connections that outlived [`IDLE_TIMEOUT`] (those of
/// endpoints no longer in use among them), and forgets closed HTTP/2
/// connections (those of endpoints gone among them), until the pools are
/// gone.
async fn reap(
    idle: std::sync::Weak<IdleMap>,
    h1: std::sync::Weak<h1::Pool>,
    h2c: std::sync::Weak<H2cMap>,
    tls_idle: std::sync::Weak<TlsIdle>,
    tls_h2: std::sync::Weak<TlsH2Map>,
) {
    fn reap_idle(idle: &IdleMap) {
        lock(idle).retain(|_, list| {
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() <= IDLE_TIMEOUT);
            !list.is_empty()
        });
    }
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
    loop {
        tick.tick().await;
        let (Some(idle), Some(h1), Some(h2c), Some(tls_idle), Some(tls_h2)) =
            (idle.upgrade(), h1.upgrade(), h2c.upgrade(), tls_idle.upgrade(), tls_h2.upgrade())
        else {
            return;
        };
        lock(&h2c).retain(|_, sender| !sender.is_closed());
        lock(&tls_h2).retain(|_, sender| !sender.is_closed());
        reap_idle(&idle);
        // A TLS configuration no longer in use loses its list once empty.
        lock(&tls_idle).retain(|_, list| {
            reap_idle(list);
            !lock(list).is_empty()
        });
        h1.reap(IDLE_TIMEOUT);
    }
}

fn uri(authority: &str, path_and_query: &str) -> Result<Uri, UpstreamError> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| UpstreamError::Failed(format!("cannot form the upstream URI for {authority:?}: {e}").into()))
}
