//! TLS to backends: the client side of rustls over a new TCP connection,
//! configured by the compiler from a BackendTLSPolicy.

use std::net::SocketAddr;
use std::sync::Arc;

use agimo_shared::snapshot::TlsOrigination;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::UpstreamError;

/// Opens TLS on `stream`: SNI is the policy's hostname; the backend's
/// certificate is verified as the policy says.
pub(super) async fn handshake(
    tls: &TlsOrigination,
    endpoint: SocketAddr,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    TlsConnector::from(Arc::clone(&tls.config)).connect(tls.server_name.clone(), stream).await.map_err(|e| {
        UpstreamError::Tls(
            format!(
                "TLS handshake with {endpoint} failed (SNI {}, BackendTLSPolicy {}): {e}",
                tls.hostname, tls.policy
            )
            .into(),
        )
    })
}
