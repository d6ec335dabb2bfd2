//! Connections on TLS listeners (TLSRoutes): the ClientHello is read whole
//! and its SNI picks the listener, the route and a backend endpoint
//! ([`proxy::tls_route`](crate::proxy)); then, as the listener's mode says:
//!
//! ```text
//!  Passthrough  client ══ ClientHello, then every byte both ways ══► endpoint   (Agimo holds no key)
//!  Terminate    client ══ TLS (the listener's certificate) ══ Agimo ── plaintext both ways ──► endpoint
//! ```
//!
//! In Terminate mode the endpoint is connected before the handshake
//! completes, so a backend that speaks first is heard. A connection nothing
//! serves (no SNI, a malformed hello, no route) is closed without an alert.

use std::io;
use std::sync::Arc;

use agimo_shared::snapshot::TlsMode;
use bytes::Bytes;
use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::park::Session;
use super::server::Server;
use crate::activity::{Activity, OpenConnection, Watched};
use crate::proxy::{self, ConnInfo};

/// The most bytes read for a ClientHello (TLS allows records of 16 KiB; a
/// ClientHello with post-quantum key shares takes a few).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Serves one connection on a TLS socket; `terminate` answers the
/// handshakes of its listeners in mode Terminate.
pub(super) async fn serve(
    server: Arc<Server>,
    mut client: Watched<TcpStream>,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    terminate: Arc<ServerConfig>,
    _open: OpenConnection,
) {
    let config = &server.proxy.config;
    let (hello, sni) = match tokio::time::timeout(config.tls_handshake_timeout, client_hello(&mut client)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS: no ClientHello");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS: the ClientHello timed out");
            return;
        }
    };
    // A TLSRoute has hostnames: a connection without SNI matches none.
    let Some(sni) = sni.map(|s| s.to_ascii_lowercase()) else {
        tracing::debug!(peer = %conn.peer, "TLS: no SNI; closed");
        return;
    };
    let Some(mut upstream) = proxy::open_tls_route(&server.proxy, &conn, &sni).await else {
        return;
    };
    let _active = upstream.active;
    let copied = match upstream.mode {
        TlsMode::Passthrough => match upstream.stream.write_all(&hello).await {
            Ok(()) => tokio::io::copy_bidirectional(&mut client, &mut upstream.stream).await,
            Err(e) => Err(e),
        },
        TlsMode::Terminate => {
            // The hello is read again, by the handshake, from the bytes kept.
            let replayed = Session::new(client, Bytes::from(hello), activity);
            let handshake = TlsAcceptor::from(terminate).accept(replayed);
            match tokio::time::timeout(config.tls_handshake_timeout, handshake).await {
                Ok(Ok(mut tls)) => tokio::io::copy_bidirectional(&mut tls, &mut upstream.stream).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        }
    };
    if let Err(e) = copied {
        tracing::debug!(peer = %conn.peer, %sni, error = %e, "TLS connection ended");
    }
}

/// Reads until the whole ClientHello has arrived (it may span several TCP
/// segments and TLS records); returns the bytes read, to replay to the
/// backend, and the SNI. rustls's [`Acceptor`] parses a copy of the bytes:
/// nothing is answered, and a malformed hello is an error (the caller
/// closes the connection without an alert).
async fn client_hello<S: AsyncRead + Unpin>(client: &mut S) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut read = Vec::with_capacity(2048);
    let mut fed = 0;
    let mut acceptor = Acceptor::default();
    loop {
        if read.len() >= MAX_CLIENT_HELLO {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the ClientHello is too long"));
        }
        let n = client.read_buf(&mut read).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut unread = &read[fed..];
        while !unread.is_empty() {
            if acceptor.read_tls(&mut unread)? == 0 {
                break;
            }
        }
        fed = read.len() - unread.len();
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((read, sni));
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, from a rustls client, split at every byte.
    #[tokio::test]
    async fn a_client_hello_in_pieces_is_read_whole_with_its_sni() {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("app.example").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for byte in sent {
                theirs.write_all(&[byte]).await.unwrap();
            }
            theirs
        });
        let (read, sni) = client_hello(&mut ours).await.unwrap();
        assert_eq!(sni.as_deref(), Some("app.example"));
        assert_eq!(read, hello, "every byte read is kept for the backend");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn what_is_not_a_client_hello_is_refused() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        theirs.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(client_hello(&mut ours).await.is_err());
        let (mut ours, theirs) = tokio::io::duplex(1024);
        drop(theirs);
        assert!(client_hello(&mut ours).await.is_err(), "a connection closed before its hello");
    }
}
