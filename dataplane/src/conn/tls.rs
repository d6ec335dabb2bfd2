//! TLS termination: certificates are chosen per handshake from the current
//! snapshot, by SNI, the way Gateway listeners choose by hostname.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;

use super::server::Server;

/// Resolves the certificate of the listener that the SNI selects on one
/// socket. Because it reads the snapshot at each handshake, a certificate
/// change applies to the next connection without a restart.
pub struct SniResolver {
    server: Arc<Server>,
    bind: SocketAddr,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").field("bind", &self.bind).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.server.proxy.snapshot.load();
        let bind = snapshot.bind(self.bind)?;
        // An SNI that no listener claims falls back to the default listener,
        // so the client completes the handshake and gets a readable 404.
        let listener = bind.listener_for_sni(hello.server_name()).or_else(|| bind.listener_for_sni(None))?;
        // With several certificates (RSA and ECDSA, say), the first one whose
        // key can sign with a scheme the client offers.
        let schemes = hello.signature_schemes();
        let key = listener
            .certificates
            .iter()
            .find(|c| c.key.key.choose_scheme(schemes).is_some())
            .or_else(|| listener.certificates.first())
            .map(|c| c.key.clone());
        if key.is_none() {
            tracing::warn!(bind = %self.bind, sni = ?hello.server_name(), "no certificate for TLS handshake");
        }
        key
    }
}

/// The rustls configuration of one HTTPS socket: ALPN h2 and http/1.1.
pub fn server_config(server: Arc<Server>, bind: SocketAddr) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { server, bind }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
