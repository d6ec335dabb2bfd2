//! The other replicas of this Agimo. KEDA keeps one connection, to one
//! replica behind the scaler's Service; that replica answers for all of
//! them by asking the others, over the same gRPC contract with
//! [`REPLICA_ONLY`] set to its own id ("your requests only: I sum").
//!
//! Peers are the addresses a name resolves to (in a cluster, a headless
//! Service listing every ready replica), looked up every [`REFRESH`]. The
//! name also resolves to the asking replica itself: a replica that receives
//! its own id answers `AlreadyExists`, and the asker leaves that address
//! out from then on.
//!
//! ```text
//!  KEDA ──StreamIsActive──► replica A ──StreamIsActive (agimoReplicaOnly=A)──► replica B, C …
//!                             │ own gate                                         │ their gates
//!                             └─ true when any of them is active ◄───────────────┘
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::proto::external_scaler_client::ExternalScalerClient;
use crate::proto::{GetMetricsRequest, ScaledObjectRef};
use crate::trigger::REPLICA_ONLY;

/// How often the peers' name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// How long a peer gets to answer a unary question, or to connect.
const TIMEOUT: Duration = Duration::from_secs(1);

/// How long a peer stream that ended waits before it is opened again.
const RETRY: Duration = Duration::from_secs(1);

/// The addresses of HOST:PORT: itself if HOST is an IP address.
async fn lookup(resolver: Option<&TokioResolver>, name: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (host, port) = name.rsplit_once(':').ok_or("expected HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let resolver = resolver.ok_or("no DNS resolver")?;
    let ips = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// A peer's answer to a unary question.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub value: u64,
    pub active: bool,
}

/// The peer replicas, and how to ask them.
#[derive(Clone)]
pub struct Peers {
    /// This replica's id, sent with every question.
    id: String,
    addrs: watch::Receiver<Vec<SocketAddr>>,
    /// The sender of fixed addresses, kept so that `addrs` stays open
    /// (a closed watch would end every stream that follows it).
    _fixed: Option<Arc<watch::Sender<Vec<SocketAddr>>>>,
    /// Addresses found to be this replica.
    own: Arc<Mutex<HashSet<SocketAddr>>>,
    clients: Arc<Mutex<HashMap<SocketAddr, ExternalScalerClient<Channel>>>>,
}

impl Peers {
    /// Peers at the addresses `names` (HOST:PORT each) resolve to, looked
    /// up now and every [`REFRESH`] until `stop`. Names go to the DNS
    /// servers of /etc/resolv.conf (with its search domains), through a
    /// resolver in Rust: Agimo's image has no libc name service modules.
    pub fn resolve(id: String, names: Vec<String>, stop: CancellationToken) -> Peers {
        let (tx, addrs) = watch::channel(Vec::new());
        tokio::spawn(async move {
            // No cache: each lookup asks again (every REFRESH), so a name
            // that had no ready replica a moment ago is not held negative
            // for the DNS server's SOA TTL.
            let resolver = TokioResolver::builder_tokio().and_then(|mut b| {
                b.options_mut().positive_max_ttl = Some(Duration::ZERO);
                b.options_mut().negative_max_ttl = Some(Duration::ZERO);
                b.build()
            });
            let resolver = match resolver {
                Ok(resolver) => Some(resolver),
                Err(e) => {
                    tracing::error!(error = %e, "no DNS resolver (/etc/resolv.conf): only KEDA scaler peers given as IP:PORT are found");
                    None
                }
            };
            loop {
                let mut found: Vec<SocketAddr> = Vec::new();
                let mut complete = true;
                for name in &names {
                    match lookup(resolver.as_ref(), name).await {
                        Ok(addrs) => found.extend(addrs),
                        Err(e) => {
                            // No ready replica yet, or a wrong name: say why.
                            tracing::warn!(%name, error = %e, "cannot resolve KEDA scaler peers");
                            complete = false;
                        }
                    }
                }
                found.sort();
                found.dedup();
                // A failed lookup keeps what the last one found.
                tx.send_if_modified(|current| {
                    let changed = *current != found && (complete || !found.is_empty());
                    if changed {
                        tracing::info!(peers = ?found, "KEDA scaler peers");
                        *current = found;
                    }
                    changed
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH) => {}
                }
            }
        });
        Peers::with(id, addrs)
    }

    /// Peers at fixed addresses.
    pub fn fixed(id: String, addrs: Vec<SocketAddr>) -> Peers {
        let (tx, addrs) = watch::channel(addrs);
        Peers { _fixed: Some(Arc::new(tx)), ..Peers::with(id, addrs) }
    }

    fn with(id: String, addrs: watch::Receiver<Vec<SocketAddr>>) -> Peers {
        Peers { id, addrs, _fixed: None, own: Arc::default(), clients: Arc::default() }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The peers now, this replica left out.
    pub fn current(&self) -> Vec<SocketAddr> {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        self.addrs.borrow().iter().filter(|a| !own.contains(a)).copied().collect()
    }

    /// Changes when the resolved addresses do.
    pub fn watch(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.addrs.clone()
    }

    fn client(&self, addr: SocketAddr) -> ExternalScalerClient<Channel> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|a, _| self.addrs.borrow().contains(a));
        clients
            .entry(addr)
            .or_insert_with(|| {
                let endpoint =
                    Endpoint::from_shared(format!("http://{addr}")).expect("a socket address is a valid URI");
                ExternalScalerClient::new(endpoint.connect_timeout(TIMEOUT).connect_lazy())
            })
            .clone()
    }

    /// The question for a peer: `so`, asking for its own requests only.
    fn question(&self, so: &ScaledObjectRef) -> ScaledObjectRef {
        let mut so = so.clone();
        so.scaler_metadata.insert(REPLICA_ONLY.into(), self.id.clone());
        so
    }

    /// Whether `status` is a peer saying it is this replica; if so, leaves
    /// `addr` out from now on.
    fn is_own(&self, addr: SocketAddr, status: &Status) -> bool {
        let own = status.code() == Code::AlreadyExists;
        if own {
            self.own.lock().unwrap_or_else(|e| e.into_inner()).insert(addr);
        }
        own
    }

    /// Asks one peer for its value and activity; `None` if it cannot say
    /// (logged: a replica that is not answering is not counted).
    pub async fn ask(&self, addr: SocketAddr, so: &ScaledObjectRef, metric_name: &str) -> Option<Answer> {
        let mut client = self.client(addr);
        let question = self.question(so);
        let metrics = GetMetricsRequest { scaled_object_ref: Some(question.clone()), metric_name: metric_name.into() };
        let asked = async {
            let value =
                client.get_metrics(metrics).await?.into_inner().metric_values.first().map_or(0, |m| m.metric_value);
            let active = client.is_active(question).await?.into_inner().result;
            Ok::<_, Status>(Answer { value: u64::try_from(value).unwrap_or(0), active })
        };
        match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(status)) if self.is_own(addr, &status) => None,
            Ok(Err(status)) => {
                tracing::warn!(peer = %addr, code = ?status.code(), error = status.message(), "KEDA scaler peer did not answer");
                None
            }
            Err(_) => {
                tracing::warn!(peer = %addr, "KEDA scaler peer did not answer in time");
                None
            }
        }
    }

    /// Follows one peer's StreamIsActive for `so`: sends `(addr, Some(active))`
    /// for each message and `(addr, None)` when the stream breaks (then opens
    /// it again after [`RETRY`]), until `tx` closes or the peer turns out to
    /// be this replica.
    pub async fn follow(self, addr: SocketAddr, so: ScaledObjectRef, tx: mpsc::Sender<(SocketAddr, Option<bool>)>) {
        let question = self.question(&so);
        loop {
            let mut client = self.client(addr);
            let ended = match client.stream_is_active(question.clone()).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                if tx.send((addr, Some(message.result))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(status) => Some(status),
            };
            if let Some(status) = &ended {
                if self.is_own(addr, status) {
                    let _ = tx.send((addr, None)).await;
                    return;
                }
                tracing::debug!(peer = %addr, error = status.message(), "KEDA scaler peer stream ended");
            }
            if tx.send((addr, None)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peer_names_are_host_and_port_or_a_clear_error() {
        assert_eq!(lookup(None, "10.0.0.7:9091").await, Ok(vec!["10.0.0.7:9091".parse().unwrap()]));
        assert_eq!(lookup(None, "[fd00::7]:9091").await, Ok(vec!["[fd00::7]:9091".parse().unwrap()]));
        assert_eq!(lookup(None, "agimo-keda-scaler-peers").await, Err("expected HOST:PORT".to_owned()));
        assert_eq!(lookup(None, "peers.agimo.svc:grpc").await, Err(r#"bad port "grpc""#.to_owned()));
        assert_eq!(lookup(None, "peers.agimo.svc:70000").await, Err(r#"bad port "70000""#.to_owned()));
        assert_eq!(lookup(None, "peers.agimo.svc:9091").await, Err("no DNS resolver".to_owned()));
    }
}
