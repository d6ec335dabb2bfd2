//! The data path, without Kubernetes: one TCP listener per `IP:port` of the
//! plan, each forwarding every accepted connection to an endpoint of its
//! [`Target`], round robin, then copying both ways with half-close. A
//! connection whose endpoint refuses it (or does not answer in time) is
//! closed: like a cloud load balancer, this one does not try another
//! endpoint for it, so clients see what they would see in a real cluster.
//!
//! ```text
//!   Listeners::update(plan) ── one writer ──▶ ArcSwap<Target> per listener
//!                                                  │ loaded once per connection
//!   client ──▶ accept (IP:port) ──▶ connect endpoints[n] ──▶ copy_bidirectional
//! ```
//!
//! A connection keeps the endpoints it was given: changing a listener's
//! target affects new connections only, and connections outlive the removal
//! of their listener.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::ServiceRef;

/// What a listener forwards to: a Service port and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: ServiceRef,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// Sorted; connections go to them round robin.
    pub endpoints: Vec<SocketAddr>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

/// The running listeners, by address.
pub struct Listeners {
    running: BTreeMap<SocketAddr, Running>,
    connect_timeout: Duration,
}

struct Running {
    target: Arc<ArcSwap<Target>>,
    task: JoinHandle<()>,
}

impl Listeners {
    pub fn new(connect_timeout: Duration) -> Listeners {
        Listeners { running: BTreeMap::new(), connect_timeout }
    }

    /// Makes the running listeners those of `desired`: starts the new ones,
    /// stops (and so unbinds) the ones not wanted any more, and gives the
    /// others their new target.
    pub fn update(&mut self, desired: &BTreeMap<SocketAddr, Target>) {
        self.running.retain(|addr, running| {
            if desired.contains_key(addr) {
                return true;
            }
            running.task.abort();
            tracing::info!(%addr, service = %running.target.load(), "listener removed");
            false
        });
        for (addr, target) in desired {
            match self.running.get(addr) {
                Some(running) => {
                    if **running.target.load() != *target {
                        running.target.store(Arc::new(target.clone()));
                    }
                }
                None => {
                    let shared = Arc::new(ArcSwap::from_pointee(target.clone()));
                    let task = tokio::spawn(listen(*addr, shared.clone(), self.connect_timeout));
                    self.running.insert(*addr, Running { target: shared, task });
                }
            }
        }
    }

    /// The addresses listened on (or being bound).
    pub fn addrs(&self) -> impl Iterator<Item = &SocketAddr> {
        self.running.keys()
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.task.abort();
        }
    }
}

/// Binds `addr` (retrying until it can) and forwards what it accepts.
async fn listen(addr: SocketAddr, target: Arc<ArcSwap<Target>>, connect_timeout: Duration) {
    let listener = bind(addr, &target).await;
    tracing::info!(%addr, service = %target.load(), "listener added");
    let mut next = 0usize;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let target = target.load_full();
                tokio::spawn(forward(stream, peer, addr, target, next, connect_timeout));
                next = next.wrapping_add(1);
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                tracing::warn!(%addr, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr`, retrying with backoff; warns on the first failure and
/// whenever the error changes.
async fn bind(addr: SocketAddr, target: &ArcSwap<Target>) -> TcpListener {
    let mut backoff = Duration::from_millis(250);
    let mut last_error = None;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                let error = e.to_string();
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%addr, service = %target.load(), error, "cannot listen; retrying until it works \
                        (is the address local in this network namespace, and the port free?)");
                } else {
                    tracing::debug!(%addr, error, "cannot listen yet");
                }
                last_error = Some(error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Connects `client` to the `n`-th endpoint of `target` (modulo their
/// number) and copies both ways until both sides are done; closes it if that
/// endpoint cannot be reached.
async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    target: Arc<Target>,
    n: usize,
    connect_timeout: Duration,
) {
    let count = target.endpoints.len();
    if count == 0 {
        tracing::debug!(%listener, %peer, service = %target, "no ready endpoint; closing the connection");
        return;
    }
    let endpoint = target.endpoints[n % count];
    let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::info!(%listener, %peer, service = %target, %endpoint, error = %e, "cannot connect to the endpoint; closing the connection");
            return;
        }
        Err(_) => {
            tracing::info!(%listener, %peer, service = %target, %endpoint, ?connect_timeout, "connect to the endpoint timed out; closing the connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::trace!(%listener, %peer, %endpoint, sent, received, "connection done"),
        Err(e) => tracing::debug!(%listener, %peer, %endpoint, error = %e, "connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agimo_testkit::client::{self, Mode};
    use agimo_testkit::echo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback address nobody listens on (yet).
    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    fn mk_target(endpoints: &[SocketAddr]) -> Target {
        Target { service: ServiceRef::new("ns", "svc"), port: 80, endpoints: endpoints.to_vec() }
    }

    async fn backend_of(addr: SocketAddr) -> std::io::Result<String> {
        let reply = client::send(addr, Mode::Http1, client::get("lb", "/")).await?;
        Ok(reply.echo().backend)
    }

    /// Retries `backend_of` while the listener binds.
    async fn backend_eventually(addr: SocketAddr) -> String {
        for _ in 0..100 {
            if let Ok(backend) = backend_of(addr).await {
                return backend;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{addr} never forwarded");
    }

    #[tokio::test]
    async fn round_robin_does_not_skip_dead_endpoints_and_follows_updates() {
        let a = echo::spawn("127.0.0.1:0".parse().unwrap(), "a").await.unwrap();
        let b = echo::spawn("127.0.0.1:0".parse().unwrap(), "b").await.unwrap();
        let dead = free_addr();
        let addr = free_addr();
        let mut listeners = Listeners::new(Duration::from_secs(1));
        listeners.update(&BTreeMap::from([(addr, mk_target(&[a.addr, dead, b.addr]))]));
        backend_eventually(addr).await;

        // Connections go round, and the one for the dead endpoint fails:
        // no other endpoint is tried for it (a cloud load balancer does not).
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(backend_of(addr).await.unwrap_or_else(|_| "failed".to_owned()));
        }
        let count = |name: &str| seen.iter().filter(|b| *b == name).count();
        assert_eq!((count("a"), count("b"), count("failed")), (2, 2, 2), "{seen:?}");

        // A connection opened before an update keeps its endpoint; new
        // connections use the new set.
        listeners.update(&BTreeMap::from([(addr, mk_target(&[a.addr]))]));
        let mut held = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        listeners.update(&BTreeMap::from([(addr, mk_target(&[b.addr]))]));
        for _ in 0..4 {
            assert_eq!(backend_of(addr).await.unwrap(), "b");
        }
        held.write_all(b"GET /held HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        held.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("\"path\":\"/held\""), "{reply}");
        assert!(reply.contains("\"backend\":\"a\""), "{reply}");
    }

    #[tokio::test]
    async fn without_endpoints_connections_are_closed_at_once() {
        let addr = free_addr();
        let mut listeners = Listeners::new(Duration::from_secs(1));
        listeners.update(&BTreeMap::from([(addr, mk_target(&[]))]));
        let mut stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.expect("closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // Every endpoint refusing: closed as well.
        listeners.update(&BTreeMap::from([(addr, mk_target(&[free_addr(), free_addr()]))]));
        let error = client::send(addr, Mode::Http1, client::get("lb", "/")).await.unwrap_err();
        assert!(!error.to_string().is_empty());
    }

    #[tokio::test]
    async fn half_close_reaches_the_endpoint_and_the_answer_comes_back() {
        // A backend that reads until the client is done sending, then answers.
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = backend.accept().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            stream.write_all(format!("got {} bytes", request.len()).as_bytes()).await.unwrap();
        });
        let addr = free_addr();
        let mut listeners = Listeners::new(Duration::from_secs(1));
        listeners.update(&BTreeMap::from([(addr, mk_target(&[backend_addr]))]));
        let mut stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        stream.write_all(&[7u8; 100_000]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply)).await.unwrap().unwrap();
        assert_eq!(reply, "got 100000 bytes");
    }

    #[tokio::test]
    async fn removed_listeners_free_their_port_and_busy_ports_are_retried() {
        let echo = echo::spawn("127.0.0.1:0".parse().unwrap(), "e").await.unwrap();
        // The port is taken by someone else at first.
        let squatter = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = squatter.local_addr().unwrap();
        let mut listeners = Listeners::new(Duration::from_secs(1));
        listeners.update(&BTreeMap::from([(addr, mk_target(&[echo.addr]))]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(squatter);
        assert_eq!(backend_eventually(addr).await, "e");
        assert_eq!(listeners.addrs().collect::<Vec<_>>(), [&addr]);

        listeners.update(&BTreeMap::new());
        assert_eq!(listeners.addrs().count(), 0);
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "{addr} still accepts connections");
        TcpListener::bind(addr).await.expect("the port is free again");
    }
}
