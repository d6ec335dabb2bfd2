//! Standalone mode: Gateway API YAML files in, a serving dataplane out.
//!
//! ```text
//!  files ──load──► World ──compile──► Snapshot ──watch channel──► Dataplane
//!    ▲                        │
//!    └── file watcher         └──► Statuses ──► logs, GET /status
//! ```
//!
//! A load that fails keeps the last good snapshot serving; the error is logged
//! and shown at `/status` until the files are fixed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agimo_dataplane::admin::{self, Endpoints};
use agimo_dataplane::{Dataplane, Metrics};
use agimo_shared::Snapshot;
use agimo_shared::snapshot::ObjectRef;
use anyhow::Context;
use notify::RecursiveMode;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Time, Timestamp};
use crate::compiler::{Statuses, compile};
use crate::sources::files;
use crate::status;
use crate::world::World;

pub struct Options {
    pub config: PathBuf,
    /// Where Gateways without `spec.addresses` listen.
    pub bind_address: IpAddr,
    pub dataplane: agimo_dataplane::Config,
    pub metrics_address: SocketAddr,
    pub admin_address: SocketAddr,
    /// How long a shutdown waits for open connections to finish.
    pub shutdown_grace_period: Duration,
}

/// What `/status` shows in standalone mode.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    config: String,
    /// Errors of the last load attempt; empty when the files are good.
    load_errors: Vec<String>,
    /// When the snapshot being served was compiled.
    serving_since: Option<Time>,
    listening: Vec<String>,
    bind_errors: BTreeMap<String, String>,
    statuses: Statuses,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let published =
        Arc::new(Mutex::new(Published { config: options.config.display().to_string(), ..Published::default() }));
    let mut state = State { world: World::default(), first_seen: BTreeMap::new(), published: published.clone() };
    // The first load must succeed: there is no last good config to keep.
    state
        .load(&options.config, options.bind_address)
        .map_err(|e| anyhow::anyhow!("cannot load {}:\n{e}", options.config.display()))?;

    let dataplane = Dataplane::new(options.dataplane.clone(), Metrics::new());
    // The admin endpoints outlive the listeners, so /readyz can say
    // "not ready" while connections drain.
    let admin_stop = CancellationToken::new();
    start_admin(&options, &dataplane, &published, &admin_stop).await?;

    let (snapshots, receiver) = watch::channel(state.compile());
    let mut sockets = dataplane.watch_sockets();
    let stop = CancellationToken::new();
    let runner = dataplane.clone();
    let run_stop = stop.clone();
    let dataplane_task = tokio::spawn(async move { runner.run(receiver, run_stop).await });

    let (changes, mut changed) = mpsc::channel(1);
    let _watcher = watch_files(&options.config, changes)?;
    tracing::info!(config = %options.config.display(), "watching configuration");

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            Some(()) = changed.recv() => match state.load(&options.config, options.bind_address) {
                Ok(()) => {
                    snapshots.send_replace(state.compile());
                }
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(error = %e, "configuration not loaded; the last good configuration keeps serving");
                    }
                    lock(&published).load_errors = errors.0.iter().map(ToString::to_string).collect();
                }
            },
            Ok(()) = sockets.changed() => {
                // Sockets that cannot be bound show in the listeners' statuses.
                let errors = sockets.borrow_and_update().errors.clone();
                if errors != state.world.bind_errors {
                    state.world.bind_errors = errors;
                    snapshots.send_replace(state.compile());
                }
            }
        }
    }
    // Readiness turns false first; then listeners close and connections
    // finish what they are doing, up to the grace period.
    tracing::info!(connections = dataplane.open_connections(), "shutting down");
    dataplane.begin_shutdown();
    stop.cancel();
    let _ = dataplane_task.await;
    let left = dataplane.drain(options.shutdown_grace_period).await;
    if left > 0 {
        tracing::warn!(connections = left, "grace period over; closing the connections still open");
    }
    admin_stop.cancel();
    Ok(())
}

/// The last good world and what was published from it.
struct State {
    world: World,
    /// When each Gateway and HTTPRoute was first loaded. Files rarely carry a
    /// `creationTimestamp`, but the Gateway API breaks ties by age (which
    /// Gateway keeps a shared port, which route wins a tie), so standalone
    /// mode stamps objects with the time it first saw them.
    first_seen: BTreeMap<(&'static str, ObjectRef), Time>,
    published: Arc<Mutex<Published>>,
}

impl State {
    /// Loads the files; on success they become the world to compile.
    fn load(&mut self, config: &Path, bind_address: IpAddr) -> Result<(), files::LoadErrors> {
        let mut world = files::load(config)?;
        let now = Time(Timestamp::now());
        let mut seen = BTreeMap::new();
        let mut stamp = |kind: &'static str, key: &ObjectRef, meta: &mut crate::api::ObjectMeta| {
            let first = self.first_seen.get(&(kind, key.clone())).cloned().unwrap_or_else(|| now.clone());
            meta.creation_timestamp.get_or_insert_with(|| first.clone());
            seen.insert((kind, key.clone()), first);
        };
        for (key, gateway) in &mut world.gateways {
            stamp("Gateway", key, &mut gateway.metadata);
        }
        for (key, route) in &mut world.http_routes {
            stamp("HTTPRoute", key, &mut route.metadata);
        }
        self.first_seen = seen;
        world.default_address = Some(bind_address);
        world.bind_errors = std::mem::take(&mut self.world.bind_errors);
        self.world = world;
        Ok(())
    }

    /// Compiles the world and publishes its statuses.
    fn compile(&mut self) -> Arc<Snapshot> {
        let started = std::time::Instant::now();
        let (snapshot, mut statuses) = compile(&self.world);
        let elapsed = started.elapsed();
        let now = Time(Timestamp::now());
        let mut published = lock(&self.published);
        status::stamp(&mut statuses, &published.statuses, &now);
        status::log_changes(&statuses, &published.statuses);
        tracing::info!(
            binds = snapshot.binds.len(),
            compile_ms = elapsed.as_secs_f64() * 1000.0,
            "configuration compiled"
        );
        published.statuses = statuses;
        published.load_errors.clear();
        published.serving_since = Some(now);
        Arc::new(snapshot)
    }
}

async fn start_admin(
    options: &Options,
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
            doc.bind_errors = sockets.errors.into_iter().map(|(addr, e)| (addr.to_string(), e)).collect();
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

/// Watches the config file (through its directory, so editors that replace
/// the file are seen) or directory; sends a unit per batch of changes.
fn watch_files(
    config: &Path,
    changes: mpsc::Sender<()>,
) -> anyhow::Result<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>>
{
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(150),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            let relevant = match &result {
                Ok(events) => events.iter().any(|e| changes_content(&e.kind)),
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "file watch error");
                    }
                    false
                }
            };
            if relevant {
                // A full channel already holds a pending reload.
                let _ = changes.try_send(());
            }
        },
    )?;
    // A single file is watched through its directory, and any change there
    // reloads: editors replace files, and Kubernetes ConfigMap volumes swap a
    // `..data` symlink, neither of which is an event on the file itself.
    let (target, mode) = if config.is_file() {
        (config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")), RecursiveMode::NonRecursive)
    } else {
        (config, RecursiveMode::Recursive)
    };
    debouncer.watch(target, mode).with_context(|| format!("cannot watch {}", target.display()))?;
    Ok(debouncer)
}

/// Whether a file event can change what a load reads. Reading the files
/// ourselves causes access events, which must not trigger another load.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
