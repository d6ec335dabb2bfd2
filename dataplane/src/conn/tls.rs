//! TLS termination: certificates are chosen per handshake from the current
//! snapshot, by SNI, the way Gateway listeners choose by hostname; client
//! certificates are asked for and validated as the socket's listeners say
//! (a Gateway's `tls.frontend`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use agimo_shared::snapshot::ClientValidation;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

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

/// The rustls configurations of one HTTPS socket: without client
/// certificates, and the one for the client certificate validation the
/// snapshot asks for (the compiler makes it one per socket), built when a
/// connection first needs it and kept while the validation is unchanged.
pub struct TlsConfigs {
    server: Arc<Server>,
    bind: SocketAddr,
    without_client_auth: Arc<ServerConfig>,
    with_client_auth: Mutex<Option<(Arc<ClientValidation>, Arc<ServerConfig>)>>,
    /// For the TLS listeners in mode Terminate: no ALPN (the stream is the
    /// backend's protocol, not HTTP) and no client certificates (the
    /// Gateway's `tls.frontend` is for HTTPS listeners).
    tls_routes: Arc<ServerConfig>,
}

impl TlsConfigs {
    pub fn new(server: Arc<Server>, bind: SocketAddr) -> Self {
        let resolver = Arc::new(SniResolver { server: server.clone(), bind });
        let without_client_auth = server_config(resolver.clone(), None, HTTP_ALPN);
        let tls_routes = server_config(resolver, None, &[]);
        TlsConfigs { server, bind, without_client_auth, with_client_auth: Mutex::new(None), tls_routes }
    }

    /// The configuration for the handshakes of TLSRoute connections.
    pub fn tls_routes(&self) -> Arc<ServerConfig> {
        self.tls_routes.clone()
    }

    /// The configuration for a handshake under `validation`.
    pub fn get(&self, validation: Option<&Arc<ClientValidation>>) -> Arc<ServerConfig> {
        let Some(validation) = validation else {
            return self.without_client_auth.clone();
        };
        let mut cached = self.with_client_auth.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, config)) = cached.as_ref()
            && **v == **validation
        {
            return config.clone();
        }
        let verifier: Arc<dyn ClientCertVerifier> = if validation.insecure_fallback {
            Arc::new(InsecureFallback { validated: validation.verifier.clone(), bind: self.bind })
        } else {
            validation.verifier.clone()
        };
        let resolver = Arc::new(SniResolver { server: self.server.clone(), bind: self.bind });
        let config = server_config(resolver, Some(verifier), HTTP_ALPN);
        *cached = Some((validation.clone(), config.clone()));
        config
    }
}

/// The protocols an HTTPS listener offers by ALPN.
const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A rustls configuration: the `alpn` protocols, certificates by SNI, client
/// certificates verified by `verifier` if given. Each configuration has its
/// own session cache, so a session made without a client certificate cannot
/// be resumed where one is required.
fn server_config(
    resolver: Arc<SniResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// `AllowInsecureFallback`: asks for a client certificate and validates it,
/// but lets the client through without one, or with one that fails
/// validation ("the gateway will accept connections even if the client
/// certificate is not presented or fails verification"). The client must
/// still prove it holds the key of the certificate it sends.
#[derive(Debug)]
struct InsecureFallback {
    validated: Arc<dyn ClientCertVerifier>,
    bind: SocketAddr,
}

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.validated.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.validated.verify_client_cert(end_entity, intermediates, now) {
            tracing::debug!(bind = %self.bind, error = %e, "client certificate not valid; let through (AllowInsecureFallback)");
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.validated.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.validated.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.validated.supported_verify_schemes()
    }
}
