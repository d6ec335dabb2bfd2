//! A backend that speaks TLS: it answers every request with what it saw of
//! the handshake (`sni`, `alpn`, `client-cert`) as plain text, one
//! `key=value` a line, so tests can check what Agimo sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCert;

/// A running TLS backend; stops when dropped.
pub struct TlsBackend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 and HTTP/2 (by ALPN) over TLS with `cert` on a free
/// loopback port; with `client_ca`, only to clients presenting a
/// certificate that CA signed.
pub async fn spawn(cert: &TestCert, client_ca: Option<&CertificateDer<'static>>) -> TlsBackend {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate PEM")];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key PEM");
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).expect("a CA certificate");
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier"))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("a server configuration");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let (_, session) = tls.get_ref();
                let seen = format!(
                    "sni={}\nalpn={}\nclient-cert={}\n",
                    session.server_name().unwrap_or(""),
                    session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
                    session.peer_certificates().is_some_and(|c| !c.is_empty()),
                );
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!("{seen}path={}\nversion={:?}\n", req.uri().path(), req.version());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    TlsBackend { addr, task }
}
