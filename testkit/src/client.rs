//! Small HTTP clients for tests: one request per connection, HTTP/1.1, h2c
//! (prior knowledge), or over TLS with SNI and ALPN.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::echo::EchoReply;
use crate::tls::TestCert;

/// A response, read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The echo backend's description of the request it received.
    pub fn echo(&self) -> EchoReply {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo reply ({e}): {} {:?} {}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to speak to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
}

/// Builds a GET request with a Host header (HTTP/1.1) or authority (h2).
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header(http::header::HOST, host).body(Full::new(Bytes::new())).expect("valid request")
}

/// Sends one request on a new connection.
pub async fn send(addr: SocketAddr, mode: Mode, req: Request<Full<Bytes>>) -> std::io::Result<Reply> {
    let stream = TcpStream::connect(addr).await?;
    send_on(stream, mode, req).await
}

/// Sends one request over an established stream (TCP or TLS).
pub async fn send_on<S>(stream: S, mode: Mode, mut req: Request<Full<Bytes>>) -> std::io::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let response = match mode {
        Mode::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(other)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(other)?
        }
        Mode::H2c => {
            // HTTP/2 carries the host as the :authority of an absolute URI.
            if let Some(host) = req.headers_mut().remove(http::header::HOST) {
                let host = host.to_str().map_err(other)?.to_owned();
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                *req.uri_mut() = format!("http://{host}{pq}").parse().map_err(other)?;
            }
            *req.version_mut() = Version::HTTP_2;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(other)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(other)?
        }
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(other)?.to_bytes();
    Ok(Reply { status: parts.status, version: parts.version, headers: parts.headers, body })
}

/// A TLS client stream and the ALPN protocol the server chose.
pub type TlsConnection = (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>);

/// Connects with TLS, sending `sni` and offering `alpn`; the server's
/// certificate must chain to `roots` and be valid for `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsConnection> {
    tls_connect_opts(addr, sni, roots, alpn, true, None).await
}

/// Like [`tls_connect`] without ALPN, presenting `client_cert` if the server
/// asks for a client certificate. With TLS 1.3 the client's handshake ends
/// before the server has judged its certificate: a refusal shows as an error
/// on the first request.
pub async fn tls_connect_with_client_cert(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    client_cert: Option<&TestCert>,
) -> std::io::Result<TlsConnection> {
    tls_connect_opts(addr, sni, roots, &[], true, client_cert).await
}

/// Like [`tls_connect`], but sends no SNI (as clients connecting to an IP
/// address do); the certificate must still be valid for `name`.
pub async fn tls_connect_without_sni(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> std::io::Result<TlsConnection> {
    tls_connect_opts(addr, name, roots, &[], false, None).await
}

async fn tls_connect_opts(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    send_sni: bool,
    client_cert: Option<&TestCert>,
) -> std::io::Result<TlsConnection> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_root_certificates(store);
    let mut config = match client_cert {
        None => config.with_no_client_auth(),
        Some(cert) => {
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(other)?;
            config.with_client_auth_cert(vec![cert.der.clone()], key).map_err(other)?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = send_sni;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).map_err(other)?;
    let stream = connector.connect(name, tcp).await?;
    let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    Ok((stream, alpn))
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
