//! Connections to backend endpoints: pooled HTTP/1.1, and one multiplexed
//! cleartext HTTP/2 connection per endpoint for `kubernetes.io/h2c` backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use agimo_shared::snapshot::BackendProtocol;
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request to an endpoint failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    Connect(BoxError),
    /// The connection broke or the response was malformed.
    Failed(BoxError),
}

pub struct Upstream {
    http1: Client<HttpConnector, Incoming>,
    h2c: Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>,
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        Upstream { http1, h2c: Mutex::new(HashMap::new()), connect_timeout }
    }

    /// Sends `req` (whose `Host` header carries the authority) to `endpoint`.
    pub async fn send(
        &self,
        protocol: BackendProtocol,
        endpoint: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        match protocol {
            BackendProtocol::Http1 => {
                *req.uri_mut() = uri(&endpoint.to_string(), &path_and_query)?;
                *req.version_mut() = Version::HTTP_11;
                self.http1.request(req).await.map_err(|e| {
                    if e.is_connect() { UpstreamError::Connect(e.into()) } else { UpstreamError::Failed(e.into()) }
                })
            }
            BackendProtocol::H2c => {
                // HTTP/2 carries the authority as :authority, from the URI.
                let authority = req
                    .headers_mut()
                    .remove(header::HOST)
                    .and_then(|h| h.to_str().ok().map(str::to_owned))
                    .unwrap_or_else(|| endpoint.to_string());
                *req.uri_mut() = uri(&authority, &path_and_query)?;
                *req.version_mut() = Version::HTTP_2;
                let mut sender = self.h2c_sender(endpoint).await?;
                sender.send_request(req).await.map_err(|e| UpstreamError::Failed(e.into()))
            }
        }
    }

    /// The open HTTP/2 connection to `endpoint`, or a new one.
    async fn h2c_sender(&self, endpoint: SocketAddr) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let existing = self.lock().get(&endpoint).filter(|s| !s.is_closed()).cloned();
        if let Some(sender) = existing {
            sender.clone().ready().await.map_err(|e| UpstreamError::Failed(e.into()))?;
            return Ok(sender);
        }
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(format!("connect timed out after {:?}", self.connect_timeout).into()))?
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "h2c backend connection ended");
            }
        });
        self.lock().insert(endpoint, sender.clone());
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<Incoming>>> {
        self.h2c.lock().unwrap_or_else(|e| e.into_inner())
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
