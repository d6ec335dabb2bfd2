//! What both modes share once they have a world: compiling and publishing,
//! the dataplane task, the admin endpoints, and graceful shutdown.
//!
//! ```text
//!  World ──Runtime::compile──► Snapshot ──watch channel──► Dataplane::run
//!                  ▲    │  └───► Statuses ──► logs, /status (and the status writer)
//!                  └────┘ Carryover (to the next compile)
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agimo_dataplane::admin::{self, Endpoints};
use agimo_dataplane::{Dataplane, Metrics, SocketState};
use agimo_shared::Snapshot;
use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{Time, Timestamp};
use crate::compiler::{Carryover, Compiled, Statuses, compile};
use crate::status;
use crate::world::World;

/// How Agimo serves, in either mode.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub dataplane: agimo_dataplane::Config,
    /// Where the dataplane's tasks (listeners, connections, requests) run;
    /// `None`: the runtime the controller runs on.
    pub dataplane_runtime: Option<tokio::runtime::Handle>,
    /// Where Gateways without `spec.addresses` (or an assigned address) listen.
    pub bind_address: IpAddr,
    pub metrics_address: SocketAddr,
    pub admin_address: SocketAddr,
    /// Where KEDA's external scaler service listens; `None`: nowhere.
    pub keda_scaler_address: Option<SocketAddr>,
    /// HOST:PORT names resolving to every replica's scaler (a headless
    /// Service), whose answers each replica adds to its own.
    pub keda_scaler_peers: Vec<String>,
    /// How long a shutdown waits for open connections to finish.
    pub shutdown_grace_period: Duration,
    /// How long listeners keep accepting after a shutdown begins, with
    /// /readyz already failing, so load balancers stop sending first.
    pub shutdown_delay: Duration,
}

/// The document served at `/status`.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// Where the configuration comes from: a path, or `kubernetes`.
    pub source: String,
    /// Errors of the last load attempt (standalone); empty when all is good.
    pub load_errors: Vec<String>,
    /// Whether this replica writes statuses (Kubernetes mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// When the snapshot being served was compiled.
    pub serving_since: Option<Time>,
    pub listening: Vec<String>,
    pub bind_errors: BTreeMap<String, String>,
    /// The same statuses the status writer gets (shared, not copied).
    pub statuses: Arc<Statuses>,
}

pub struct Runtime {
    pub dataplane: Dataplane,
    pub published: Arc<Mutex<Published>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    statuses: watch::Sender<Arc<Statuses>>,
    /// What the last compile carried over to the next.
    carryover: Carryover,
    stop: CancellationToken,
    admin_stop: CancellationToken,
    dataplane_task: tokio::task::JoinHandle<()>,
}

impl Runtime {
    /// Binds the admin endpoints and starts the dataplane on the first world.
    pub async fn start(options: &ServeOptions, source: String, world: &World) -> anyhow::Result<Runtime> {
        let dataplane = Dataplane::new(options.dataplane.clone(), Metrics::new());
        let published = Arc::new(Mutex::new(Published { source, ..Published::default() }));
        // The admin endpoints outlive the listeners, so /readyz can say
        // "not ready" while connections drain.
        let admin_stop = CancellationToken::new();
        start_admin(options, &dataplane, &published, &admin_stop).await?;
        if let Some(addr) = options.keda_scaler_address {
            start_scaler(addr, options.keda_scaler_peers.clone(), &dataplane, &admin_stop).await?;
        }
        let mut carryover = Carryover::default();
        let (first, statuses) = compile_and_stamp(world, &mut carryover, &published);
        let (snapshots, receiver) = watch::channel(first);
        let stop = CancellationToken::new();
        let (runner, run_stop) = (dataplane.clone(), stop.clone());
        let run = async move { runner.run(receiver, run_stop).await };
        let dataplane_task = match &options.dataplane_runtime {
            Some(runtime) => runtime.spawn(run),
            None => tokio::spawn(run),
        };
        Ok(Runtime {
            dataplane,
            published,
            snapshots,
            statuses: watch::Sender::new(statuses),
            carryover,
            stop,
            admin_stop,
            dataplane_task,
        })
    }

    /// Compiles `world` (with what the last compile carried over), hands the
    /// snapshot to the dataplane and publishes the statuses.
    pub fn compile(&mut self, world: &World) {
        let (snapshot, statuses) = compile_and_stamp(world, &mut self.carryover, &self.published);
        self.snapshots.send_replace(snapshot);
        self.statuses.send_replace(statuses);
    }

    /// The published statuses as they change (for the status writer).
    pub fn statuses(&self) -> watch::Receiver<Arc<Statuses>> {
        self.statuses.subscribe()
    }

    pub fn sockets(&self) -> watch::Receiver<SocketState> {
        self.dataplane.watch_sockets()
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Readiness turns false first; listeners keep accepting for `delay`
    /// while load balancers take the replica out; then listeners close and
    /// connections finish what they are doing, up to the grace period.
    /// Starts leaving: readiness turns false at once; the listeners stay
    /// open until [`Runtime::shutdown`].
    pub fn begin_shutdown(&self) {
        self.dataplane.begin_shutdown();
    }

    pub async fn shutdown(self, delay: Duration, grace: Duration) {
        tracing::info!(connections = self.dataplane.open_connections(), ?delay, "shutting down");
        self.dataplane.begin_shutdown();
        tokio::time::sleep(delay).await;
        self.stop.cancel();
        let _ = self.dataplane_task.await;
        let left = self.dataplane.drain(grace).await;
        if left > 0 {
            tracing::warn!(connections = left, "grace period over; closing the connections still open");
        }
        self.admin_stop.cancel();
    }
}

fn compile_and_stamp(
    world: &World,
    carryover: &mut Carryover,
    published: &Mutex<Published>,
) -> (Arc<Snapshot>, Arc<Statuses>) {
    let started = std::time::Instant::now();
    let Compiled { snapshot, mut statuses, carryover: next } = compile(world, carryover);
    *carryover = next;
    let elapsed = started.elapsed();
    let now = Time(Timestamp::now());
    let mut published = lock(published);
    status::stamp(&mut statuses, &published.statuses, &now);
    status::log_changes(&statuses, &published.statuses);
    tracing::info!(
        binds = snapshot.binds.len(),
        routes = world.http_routes.len(),
        compile_ms = elapsed.as_secs_f64() * 1000.0,
        "configuration compiled"
    );
    let statuses = Arc::new(statuses);
    published.statuses = statuses.clone();
    published.load_errors.clear();
    published.serving_since = Some(now);
    (Arc::new(snapshot), statuses)
}

async fn start_admin(
    options: &ServeOptions,
    dataplane: &Dataplane,
    published: &Arc<Mutex<Published>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let render: admin::StatusRender = {
        let (published, dataplane) = (published.clone(), dataplane.clone());
        Arc::new(move || {
            let mut doc = lock(&published);
            let sockets = dataplane.sockets();
            doc.listening = sockets.listening.iter().map(ToString::to_string).collect();
            doc.bind_errors = sockets.errors.into_iter().map(|(addr, e)| (addr.to_string(), e.message)).collect();
            serde_yaml_ng::to_string(&*doc).unwrap_or_else(|e| format!("error: {e}\n"))
        })
    };
    let mut sockets = vec![(options.metrics_address, Endpoints { metrics: true, status: false })];
    if options.admin_address == options.metrics_address {
        sockets[0].1.status = true;
    } else {
        sockets.push((options.admin_address, Endpoints { metrics: true, status: true }));
    }
    for (addr, endpoints) in sockets {
        let listener = admin::bind(addr).await.with_context(|| format!("cannot listen on admin address {addr}"))?;
        tracing::info!(%addr, ?endpoints, "admin endpoints");
        tokio::spawn(admin::serve(listener, dataplane.clone(), render.clone(), endpoints, stop.clone()));
    }
    Ok(())
}

/// Serves KEDA's external scaler: like the admin endpoints, it outlives the
/// listeners, so KEDA sees the requests still in flight while they drain.
async fn start_scaler(
    addr: SocketAddr,
    peers: Vec<String>,
    dataplane: &Dataplane,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    use agimo_scaler::{Local, Peers, Scaler};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on KEDA scaler address {addr}"))?;
    tracing::info!(%addr, ?peers, "KEDA external scaler");
    let id = format!("{:016x}", fastrand::u64(..));
    let peers = if peers.is_empty() { Peers::fixed(id, Vec::new()) } else { Peers::resolve(id, peers, stop.clone()) };
    let (scaler, stop) = (Scaler::new(Local::new(dataplane.clone()), peers), stop.clone());
    tokio::spawn(async move {
        if let Err(e) = agimo_scaler::serve(listener, scaler, stop).await {
            tracing::error!(%addr, error = %e, "KEDA external scaler stopped");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C) received after this call: the
/// handlers are installed at once, not when the future is first polled. Make
/// it once, before the loop that waits for it: a future made anew in each
/// turn of a `select!` loop misses a signal that arrives while the loop is
/// busy in another branch (a compile, under churn), and the process would
/// then keep running, and keep its Lease, until SIGKILL.
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub use agimo_shared::lock;
