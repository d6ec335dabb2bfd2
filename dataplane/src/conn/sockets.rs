//! The sockets the snapshot asks for: one accept loop per bind address,
//! reconciled at every snapshot; each accepted connection served in a task
//! of its own, within the connection cap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::serve::{Alpn, serve_http, serve_tls};
use super::server::Server;
use super::tls::TlsConfigs;
use crate::activity::{Activity, OpenConnection, Watched};
use crate::proxy::ConnInfo;

/// What the dataplane listens on, and what it could not bind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub listening: Vec<SocketAddr>,
    /// Addresses that could not be bound, with the error; retried every
    /// second.
    pub errors: BTreeMap<SocketAddr, BindError>,
}

/// Why a socket could not be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindError {
    /// The IP address is not one of this machine's (EADDRNOTAVAIL), as
    /// opposed to the port being taken or refused.
    pub address_not_available: bool,
    pub message: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The accept loops that are running, by socket address. Owned by the run
/// task, which alone opens and closes sockets.
#[derive(Default)]
pub struct Sockets {
    running: BTreeMap<SocketAddr, (CancellationToken, tokio::task::JoinHandle<()>)>,
    errors: BTreeMap<SocketAddr, BindError>,
}

impl Sockets {
    /// Makes the open sockets those of `snapshot`: closes sockets it no
    /// longer has (their connections finish the requests in flight, then
    /// close), waits until they are closed so their ports are free, then opens
    /// the missing ones. Failed binds are kept in [`SocketState::errors`].
    pub async fn reconcile(&mut self, server: &Arc<Server>, snapshot: &Snapshot, stop: &CancellationToken) {
        let wanted: BTreeMap<SocketAddr, Protocol> = snapshot.binds.iter().map(|b| (b.address, b.protocol)).collect();
        let unused: Vec<SocketAddr> = self.running.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for addr in unused {
            if let Some((token, task)) = self.running.remove(&addr) {
                tracing::info!(%addr, "closing listener");
                token.cancel();
                let _ = task.await;
            }
        }
        self.errors.clear();
        for (&addr, protocol) in &wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            match listen(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, ?protocol, "listening");
                    let token = stop.child_token();
                    let task = tokio::spawn(accept_loop(server.clone(), listener, addr, token.clone()));
                    self.running.insert(addr, (token, task));
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen; retrying every second");
                    let address_not_available = e.kind() == std::io::ErrorKind::AddrNotAvailable;
                    self.errors.insert(addr, BindError { address_not_available, message: e.to_string() });
                }
            }
        }
    }

    pub fn state(&self) -> SocketState {
        SocketState { listening: self.running.keys().copied().collect(), errors: self.errors.clone() }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener, bind: SocketAddr, stop: CancellationToken) {
    let tls = super::tls::TlsConfigs::new(server.clone(), bind);
    let what = bind.to_string();
    while let Some((stream, peer)) = super::listen::next(&listener, &stop, &what).await {
        serve_connection(&server, stream, peer, bind, &tls, &stop);
    }
}

/// Starts serving one accepted connection in a task of its own. A plaintext
/// connection's task is just [`serve_http`], with no room for TLS state: an
/// idle connection costs as little memory as hyper allows. Past
/// [`Config::max_connections`](crate::Config::max_connections) a connection is
/// refused: a plaintext one with a `503` and `Connection: close`, a TLS one
/// by closing it (a handshake is what an overloaded proxy cannot afford).
fn serve_connection(
    server: &Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    tls: &TlsConfigs,
    stop: &CancellationToken,
) {
    let snapshot = server.proxy.snapshot.load();
    let Some(current) = snapshot.bind(bind) else {
        return;
    };
    let protocol = current.protocol;
    if server.proxy.connections.load(Ordering::Acquire) >= server.proxy.config.max_connections {
        server.proxy.metrics.refused_connection();
        tracing::debug!(%peer, %bind, max = server.proxy.config.max_connections, "connection refused: too many open");
        if protocol == Protocol::Http {
            tokio::spawn(refuse(stream));
        }
        return;
    }
    let _ = stream.set_nodelay(true);
    let open = OpenConnection::new(&server.proxy.connections);
    let conn = Arc::new(ConnInfo::new(peer, bind, protocol));
    let activity = Arc::new(Activity::new());
    let stream = Watched::new(stream, activity.clone());
    match protocol {
        Protocol::Http => {
            tokio::spawn(serve_http(server.clone(), stream, conn, activity, Alpn::None, stop.clone(), open));
        }
        Protocol::Https => {
            let tls = tls.get(current.client_validation());
            tokio::spawn(serve_tls(server.clone(), stream, conn, activity, tls, stop.clone(), open));
        }
        Protocol::Tls => {
            let terminate = tls.tls_routes();
            tokio::spawn(super::tls_route::serve(server.clone(), stream, conn, activity, terminate, open));
        }
    }
}

/// The answer to a connection over the cap.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\
        retry-after: 1\r\nx-agimo-reason: too-many-connections\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(RESPONSE)).await;
}
