//! Agimo as a KEDA external scaler (triggers `external-push` and
//! `external`): what the gate sees, told to KEDA over gRPC.
//!
//! ```text
//!  request held at the gate ─► Metrics::request_held ─► open StreamIsActive streams wake ─► push `true`
//!                                                       (and every STREAM_INTERVAL: the current state)
//!  KEDA poll ─► IsActive / GetMetrics ─► pending + active requests of the trigger's hosts,
//!                                        this replica's plus its peers' (peers)
//! ```
//!
//! A trigger names what it scales on in its metadata ([`trigger`]):
//! `httpRoute: <namespace>/<name>` (or `<name>`, in the ScaledObject's
//! namespace) sums the `host` series of every bucket holding the route's
//! rules; `host: <hostname>` reads one series, as
//! `pending_requests_total{host=...}` does. It is active while any of them
//! holds or serves a request, or received one within
//! [`load::ACTIVITY_WINDOW`]; KEDA's `cooldownPeriod` then decides when an
//! inactive target goes to zero. `targetValue` (default 100) is the number of
//! pending plus active requests per replica the HPA aims at for 1 <-> N.
//!
//! Bad metadata is `InvalidArgument`, a route or host this Agimo does not
//! serve is `NotFound`, both with a message naming the fix: KEDA shows them
//! on the ScaledObject, where an answer of `false` would scale a workload to
//! zero for a typo.

pub mod load;
pub mod peers;
pub mod trigger;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use load::{Load, Local};
pub use peers::Peers;
pub use trigger::{Target, Trigger};

/// The generated KEDA contract (`proto/externalscaler.proto`).
pub mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};

/// How often an open `StreamIsActive` sends the current state, besides the
/// push a held request triggers: KEDA refreshes the target's last active
/// time with each `true`, and scales to zero after its cooldown on a `false`.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct Scaler {
    local: Local,
    peers: Peers,
}

/// A task aborted when dropped (a peer stream no longer wanted).
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Sender<T> = mpsc::Sender<Result<T, Status>>;

impl Scaler {
    pub fn new(local: Local, peers: Peers) -> Self {
        Scaler { local, peers }
    }

    /// Checks a peer's question: a replica never asks itself.
    fn check_asker(&self, trigger: &Trigger) -> Result<(), Status> {
        match &trigger.asked_by {
            Some(id) if id == self.peers.id() => Err(Status::already_exists("this is the asking replica itself")),
            _ => Ok(()),
        }
    }

    /// This replica's answer, and its peers' unless a peer is asking.
    async fn answer(&self, so: &ScaledObjectRef, trigger: &Trigger) -> Result<peers::Answer, Status> {
        self.check_asker(trigger)?;
        let local = self.local.load(trigger)?;
        let mut answer = peers::Answer { value: local.value(), active: local.is_active() };
        if trigger.asked_by.is_none() {
            let name = trigger.metric_name();
            let asked = self.peers.current().into_iter().map(|addr| {
                let (peers, name) = (self.peers.clone(), name.clone());
                async move { peers.ask(addr, so, &name).await }
            });
            for peer in join_all(asked).await.into_iter().flatten() {
                answer.value += peer.value;
                answer.active |= peer.active;
            }
        }
        Ok(answer)
    }

    /// Pushes the trigger's state into `tx`: at once whenever a request is
    /// held here or a peer's state changes, and every [`STREAM_INTERVAL`],
    /// until KEDA goes away. An error (the route is gone) ends the stream;
    /// KEDA opens it again.
    async fn stream(self, so: ScaledObjectRef, trigger: Trigger, tx: Sender<IsActiveResponse>) {
        let name = format!("{}/{}", so.namespace, so.name);
        let mut held = self.local.watch_held();
        let mut addrs = self.peers.watch();
        let mut addrs_open = true;
        let (peer_tx, mut peer_rx) = mpsc::channel(16);
        let mut following: HashMap<SocketAddr, Task> = HashMap::new();
        let mut peer_states: HashMap<SocketAddr, bool> = HashMap::new();
        let mut last: Option<bool> = None;
        let mut next_send = tokio::time::Instant::now();
        loop {
            held.borrow_and_update();
            addrs.borrow_and_update();
            if trigger.asked_by.is_none() {
                let current = self.peers.current();
                following.retain(|addr, _| current.contains(addr));
                peer_states.retain(|addr, _| current.contains(addr));
                for addr in current {
                    following.entry(addr).or_insert_with(|| {
                        Task(tokio::spawn(self.peers.clone().follow(addr, so.clone(), peer_tx.clone())))
                    });
                }
            }
            let local = match self.local.load(&trigger) {
                Ok(load) => load.is_active(),
                Err(status) => {
                    tracing::warn!(scaledobject = %name, error = %status.message(), "StreamIsActive ends");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let result = local || peer_states.values().any(|&active| active);
            let now = tokio::time::Instant::now();
            if last != Some(result) || now >= next_send {
                if last != Some(result) {
                    tracing::info!(scaledobject = %name, active = result, "pushing to KEDA");
                }
                if tx.send(Ok(IsActiveResponse { result })).await.is_err() {
                    return;
                }
                last = Some(result);
                next_send = now + STREAM_INTERVAL;
            }
            tokio::select! {
                changed = held.changed() => if changed.is_err() { return },
                // The resolver stopped (shutdown): peers stay as they are.
                changed = addrs.changed(), if addrs_open => addrs_open = changed.is_ok(),
                Some((addr, state)) = peer_rx.recv() => {
                    match state {
                        Some(active) => peer_states.insert(addr, active),
                        None => peer_states.remove(&addr),
                    };
                }
                _ = tokio::time::sleep_until(next_send) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let so = request.into_inner();
        let trigger = Trigger::parse(&so)?;
        let result = self.answer(&so, &trigger).await?.active;
        Ok(Response::new(IsActiveResponse { result }))
    }

    type StreamIsActiveStream = ReceiverStream<Result<IsActiveResponse, Status>>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let so = request.into_inner();
        let trigger = Trigger::parse(&so)?;
        self.check_asker(&trigger)?;
        // An unknown route fails the call itself, not only the stream.
        self.local.load(&trigger)?;
        if trigger.asked_by.is_none() {
            tracing::info!(scaledobject = %format!("{}/{}", so.namespace, so.name), target = ?trigger.target, "KEDA opened StreamIsActive");
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().stream(so, trigger, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let trigger = Trigger::parse(request.get_ref())?;
        self.local.hosts(&trigger)?;
        let spec = MetricSpec {
            metric_name: trigger.metric_name(),
            target_size: trigger.target_value.ceil() as i64,
            target_size_float: trigger.target_value,
        };
        Ok(Response::new(GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let so = request
            .scaled_object_ref
            .ok_or_else(|| Status::invalid_argument("GetMetrics without a scaledObjectRef"))?;
        let trigger = Trigger::parse(&so)?;
        let value = self.answer(&so, &trigger).await?.value;
        let metric_name = if request.metric_name.is_empty() { trigger.metric_name() } else { request.metric_name };
        let metric = MetricValue { metric_name, metric_value: value as i64, metric_value_float: value as f64 };
        Ok(Response::new(GetMetricsResponse { metric_values: vec![metric] }))
    }

    type StreamMetricSpecStream = ReceiverStream<Result<GetMetricSpecResponse, Status>>;

    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        // Targets come from the trigger's metadata and never change while
        // it stands: GetMetricSpec is enough (KEDA falls back to it).
        Err(Status::unimplemented("metric specs are fixed by the trigger's metadata; use GetMetricSpec"))
    }
}

/// Serves the scaler on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    scaler: Scaler,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ExternalScalerServer::new(scaler))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}
