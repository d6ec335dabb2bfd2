//! TLS passthrough (a TLS listener in mode `Passthrough`, TLSRoutes): the
//! client's ClientHello is read, never answered; its SNI picks the listener
//! and the route; the connection then goes to a backend endpoint, the
//! ClientHello first, and bytes are copied both ways. Agimo never holds a
//! key or sees the plaintext.
//!
//! ```text
//!  client ──ClientHello──► read (until whole) ──SNI──► listener ──► TLSRoute ──► gate (held at zero)
//!                                                                                   │
//!  client ◄════════════════ copy both ways ═════════════════► endpoint ◄─ ClientHello
//! ```
//!
//! A connection nothing serves (no SNI, no listener or route for it, no
//! usable backend, a wait that timed out) is closed without a TLS alert, as
//! a load balancer that cannot route it would. It counts as a request of its
//! host (the SNI) in the metrics, held while it waits for a ready endpoint
//! and active while it is open, so KEDA scales TLS workloads as HTTP ones.

use std::io;
use std::time::Instant;

use agimo_shared::matching::RequestView;
use agimo_shared::snapshot::{Action, BackendTarget};
use http::{HeaderMap, Method};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gate::{Gated, admit, pick_endpoint};
use super::state::{ConnInfo, Proxy};

/// The most bytes read for a ClientHello (TLS allows records of 16 KiB; a
/// ClientHello with post-quantum key shares takes a few).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Serves one connection on a TLS passthrough socket.
pub(crate) async fn serve<S>(proxy: &Proxy, conn: &ConnInfo, mut client: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read = tokio::time::timeout(proxy.config.tls_handshake_timeout, client_hello(&mut client));
    let (hello, sni) = match read.await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS passthrough: no ClientHello");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS passthrough: the ClientHello timed out");
            return;
        }
    };
    // A TLSRoute has hostnames: a connection without SNI matches none.
    let Some(sni) = sni.map(|s| s.to_ascii_lowercase()) else {
        tracing::debug!(peer = %conn.peer, "TLS passthrough: no SNI; closed");
        return;
    };
    let Some(mut upstream) = connect(proxy, conn, &sni).await else {
        return;
    };
    if let Err(e) = upstream.0.write_all(&hello).await {
        tracing::debug!(peer = %conn.peer, %sni, error = %e, "TLS passthrough: the backend closed");
        return;
    }
    let _active = upstream.1;
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream.0).await {
        tracing::debug!(peer = %conn.peer, %sni, error = %e, "TLS passthrough connection ended");
    }
}

/// The connection to a backend endpoint for `sni`, and the host's active
/// count while it is open; `None` (logged) when nothing serves it.
async fn connect(proxy: &Proxy, conn: &ConnInfo, sni: &str) -> Option<(TcpStream, crate::metrics::Active)> {
    let snapshot = proxy.snapshot.load();
    let bind = snapshot.bind(conn.bind).filter(|b| b.protocol == conn.protocol)?;
    let Some(listener) = bind.listener_for_sni(Some(sni)) else {
        tracing::debug!(peer = %conn.peer, %sni, "TLS passthrough: no listener for this SNI; closed");
        return None;
    };
    let headers = HeaderMap::new();
    let view = RequestView::new(&Method::GET, "/", None, &headers);
    let Some((bucket, entry)) = listener.routes.find(sni, &view) else {
        tracing::debug!(peer = %conn.peer, %sni, "TLS passthrough: no TLSRoute for this SNI; closed");
        return None;
    };
    let (stats, rule) = (proxy.metrics.host(&bucket.label), entry.rule.clone());
    stats.request();
    let Action::Forward(backends) = &rule.action else {
        tracing::warn!(route = %rule.route, %sni, "TLS passthrough: the route has no usable backend; closed");
        return None;
    };
    // By weight among all the rule's backends: "if an invalid backend is
    // requested to have 80% of requests, then 80% of requests must be
    // rejected instead."
    let chosen = backends.pick(fastrand::u64(0..backends.total_weight().max(1)));
    let backend = match &chosen.target {
        BackendTarget::Service(b) => snapshot.backends.get(&b.id).unwrap_or(b).clone(),
        BackendTarget::Invalid(why) => {
            tracing::warn!(route = %rule.route, %sni, why, "TLS passthrough: invalid backend; closed");
            return None;
        }
    };
    let ready = (!backend.endpoints.is_empty()).then(|| {
        let endpoint = pick_endpoint(&backend, None);
        (chosen, backend.clone(), endpoint)
    });
    let (endpoint, connected, active) = match (&rule.gate, ready) {
        (Some(gate), next) => {
            let g = Gated { proxy, rule: &rule, gate, backends, host: &stats, started: Instant::now(), hyper: true };
            match admit(&g, next, None).await {
                Ok(admitted) => (admitted.endpoint, admitted.connected, admitted.active),
                Err(e) => {
                    tracing::warn!(route = %rule.route, %sni, reason = e.reason(), error = %e, "TLS passthrough: closed");
                    return None;
                }
            }
        }
        (None, Some((_, _, endpoint))) => (endpoint, None, stats.active()),
        (None, None) => {
            tracing::warn!(route = %rule.route, %sni, backend = %backend.id, "TLS passthrough: no ready endpoint; closed");
            return None;
        }
    };
    let stream = match connected {
        Some(stream) => stream,
        None => match tokio::time::timeout(proxy.config.upstream_connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(route = %rule.route, %sni, %endpoint, error = %e, "TLS passthrough: cannot connect");
                return None;
            }
            Err(_) => {
                tracing::warn!(route = %rule.route, %sni, %endpoint, "TLS passthrough: connect timed out");
                return None;
            }
        },
    };
    let _ = stream.set_nodelay(true);
    Some((stream, active))
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
