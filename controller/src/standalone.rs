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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agimo_dataplane::admin::{self, Endpoints};
use agimo_dataplane::{Dataplane, Metrics};
use agimo_shared::Snapshot;
use anyhow::Context;
use notify::RecursiveMode;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Time, Timestamp};
use crate::compiler::{Statuses, compile};
use crate::sources::files;
use crate::status;

pub struct Options {
    pub config: PathBuf,
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
    bind_errors: std::collections::BTreeMap<String, String>,
    statuses: Statuses,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // The first load must succeed: there is no last good config to keep.
    let world =
        files::load(&options.config).map_err(|e| anyhow::anyhow!("cannot load {}:\n{e}", options.config.display()))?;

    let dataplane = Dataplane::new(options.dataplane.clone(), Metrics::new());
    let stop = CancellationToken::new();
    let published =
        Arc::new(Mutex::new(Published { config: options.config.display().to_string(), ..Published::default() }));
    // The admin endpoints outlive the listeners, so /readyz can say
    // "not ready" while connections drain.
    let admin_stop = CancellationToken::new();
    start_admin(&options, &dataplane, &published, &admin_stop).await?;

    let (snapshots, receiver) = watch::channel(Arc::new(Snapshot::default()));
    let runner = dataplane.clone();
    let run_stop = stop.clone();
    let dataplane_task = tokio::spawn(async move { runner.run(receiver, run_stop).await });

    publish(&snapshots, &published, world);
    let (changes, mut changed) = mpsc::channel(1);
    let _watcher = watch_files(&options.config, changes)?;
    tracing::info!(config = %options.config.display(), "watching configuration");

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            Some(()) = changed.recv() => match files::load(&options.config) {
                Ok(world) => publish(&snapshots, &published, world),
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!(error = %e, "configuration not loaded; the last good configuration keeps serving");
                    }
                    lock(&published).load_errors = errors.0.iter().map(ToString::to_string).collect();
                }
            },
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

/// Compiles a world, hands the snapshot to the dataplane, and publishes the
/// statuses.
fn publish(snapshots: &watch::Sender<Arc<Snapshot>>, published: &Mutex<Published>, world: crate::World) {
    let started = std::time::Instant::now();
    let (snapshot, mut statuses) = compile(&world);
    let elapsed = started.elapsed();
    let now = Time(Timestamp::now());
    let mut published = lock(published);
    status::stamp(&mut statuses, &published.statuses, &now);
    status::log_changes(&statuses, &published.statuses);
    tracing::info!(binds = snapshot.binds.len(), compile_ms = elapsed.as_secs_f64() * 1000.0, "configuration loaded");
    snapshots.send_replace(Arc::new(snapshot));
    published.statuses = statuses;
    published.load_errors.clear();
    published.serving_since = Some(now);
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
            doc.listening = dataplane.listening().iter().map(ToString::to_string).collect();
            doc.bind_errors = dataplane.bind_errors().into_iter().map(|(addr, e)| (addr.to_string(), e)).collect();
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
    let is_file = config.is_file();
    let file = config.canonicalize().ok();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(150),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            let relevant = match &result {
                Ok(events) => events.iter().filter(|e| changes_content(&e.kind)).any(|e| {
                    !is_file
                        || e.paths.iter().any(|p| {
                            file.as_deref().is_some_and(|f| {
                                p.canonicalize().ok().as_deref() == Some(f) || p.file_name() == f.file_name()
                            })
                        })
                }),
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
    let (target, mode) = if is_file {
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
