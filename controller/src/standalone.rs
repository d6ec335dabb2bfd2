//! Standalone mode: Gateway API YAML files in, a serving dataplane out.
//!
//! ```text
//!  files ──load──► World ──compile──► Snapshot ──watch channel──► Dataplane
//!    ▲                        │
//!    └── file watcher         └──► Statuses ──► logs, GET /status
//! ```
//!
//! A load that fails keeps the last good snapshot serving; the error is logged
//! and shown at `/status` until the files are fixed. The files are the source
//! of truth: the parsed objects are dropped once compiled (at 5,000 routes they
//! are 7 MB), and read again when something else asks for a compile.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agimo_shared::snapshot::ObjectRef;
use anyhow::Context;
use notify::RecursiveMode;
use tokio::sync::mpsc;

use crate::api::{Time, Timestamp};
use crate::runtime::{Runtime, ServeOptions, lock, shutdown_signal};
use crate::sources::files;
use crate::world::World;

pub struct Options {
    pub config: PathBuf,
    pub serve: ServeOptions,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // Watched before the first load: an edit made while Agimo starts is
    // seen (at worst it reloads what was just loaded), never lost.
    let (changes, mut changed) = mpsc::channel(1);
    let watcher = watch_files(&options.config, changes);
    let mut state = State { world: World::default(), first_seen: BTreeMap::new() };
    // The first load must succeed: there is no last good config to keep.
    state
        .load(&options.config, options.serve.bind_address)
        .map_err(|e| anyhow::anyhow!("cannot load {}:\n{e}", options.config.display()))?;
    let _watcher = watcher?;
    let mut runtime = Runtime::start(&options.serve, options.config.display().to_string(), &state.world).await?;
    state.world.clear_objects();
    let mut sockets = runtime.sockets();

    tracing::info!(config = %options.config.display(), "watching configuration");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = changed.recv() => state.load_and_compile(&options, &mut runtime),
            Ok(()) = sockets.changed() => {
                // Sockets that cannot be bound show in the listeners' statuses.
                let errors = sockets.borrow_and_update().errors.clone();
                if errors != state.world.bind_errors {
                    state.world.bind_errors = errors;
                    state.load_and_compile(&options, &mut runtime);
                }
            }
        }
    }
    runtime.shutdown(options.serve.shutdown_delay, options.serve.shutdown_grace_period).await;
    Ok(())
}

/// The last good world.
struct State {
    world: World,
    /// When each Gateway and HTTPRoute was first loaded. Files rarely carry a
    /// `creationTimestamp`, but the Gateway API breaks ties by age (which
    /// Gateway keeps a shared port, which route wins a tie), so standalone
    /// mode stamps objects with the time it first saw them.
    first_seen: BTreeMap<(&'static str, ObjectRef), Time>,
}

impl State {
    /// Loads the files and compiles them; if they do not load, the last good
    /// configuration keeps serving and the errors show at `/status`.
    fn load_and_compile(&mut self, options: &Options, runtime: &mut Runtime) {
        match self.load(&options.config, options.serve.bind_address) {
            Ok(()) => {
                runtime.compile(&self.world);
                self.world.clear_objects();
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "configuration not loaded; the last good configuration keeps serving");
                }
                lock(&runtime.published).load_errors = errors.0.iter().map(ToString::to_string).collect();
            }
        }
    }

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
            stamp("Gateway", key, &mut Arc::make_mut(gateway).metadata);
        }
        for (key, route) in &mut world.http_routes {
            stamp("HTTPRoute", key, &mut Arc::make_mut(route).metadata);
        }
        for (key, route) in &mut world.grpc_routes {
            stamp("GRPCRoute", key, &mut Arc::make_mut(route).metadata);
        }
        for (key, route) in &mut world.tls_routes {
            stamp("TLSRoute", key, &mut Arc::make_mut(route).metadata);
        }
        self.first_seen = seen;
        world.default_address = Some(bind_address);
        world.bind_errors = std::mem::take(&mut self.world.bind_errors);
        self.world = world;
        Ok(())
    }
}

/// Watches the config file (through its directory, so editors that replace
/// the file are seen) or directory; sends a unit per batch of changes.
fn watch_files(
    config: &Path,
    changes: mpsc::Sender<()>,
) -> anyhow::Result<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>>
{
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(50),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            let relevant = match &result {
                Ok(events) => events.iter().any(|e| changes_content(&e.kind) && touches_config(&e.paths)),
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

/// Whether an event's paths can be read by a load: a config file
/// (`.yaml`, `.yml`, `.json`), a directory, a hidden entry (a ConfigMap
/// volume swaps its `..data` symlink), or a path without an extension. Other
/// files in the directory (a log written there, an editor's backup) do not
/// reload: Agimo's own log in its config directory would otherwise reload
/// it at every line.
fn touches_config(paths: &[PathBuf]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            hidden || p.extension().is_none() || p.is_dir() || files::is_config_file(p)
        })
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
