//! One worker per pod bound to the node. It brings the pod up (volumes,
//! then the network namespace, then the containers), restarts processes
//! that exit as the restartPolicy says, writes the pod's status whenever it
//! changes, and on deletion stops everything, frees the address and deletes
//! the pod with grace period 0 (so that namespaces can finish deleting).
//!
//! Whatever fails (a Secret not there yet, a bad env reference, a missing
//! program, an `ip` command, an API call) is retried with backoff and shown
//! as an event and in the container's waiting state; it never stops the
//! agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio::time::sleep;

use crate::agent::Ctx;
use crate::env::{self, PodFacts, Sources};
use crate::process::{self, Launch, Process, Protocol};
use crate::sandbox::{self, Sandbox};
use crate::status::{self, Observed, Transitions};
use crate::volumes;

/// What the dispatcher tells a worker: the pod's latest version, or `None`
/// once it is gone from the API.
pub type Update = Option<Arc<Pod>>;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Restart backoff of an exiting process (the kubelet's is 10 s to 5 min;
/// shorter here so tests do not wait).
const FIRST_RESTART_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long starts its next backoff from the beginning.
const RESET_BACKOFF_AFTER: Duration = Duration::from_secs(60);

/// Exponential backoff for one kind of retry.
#[derive(Debug)]
struct Backoff {
    at: Instant,
    delay: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { at: Instant::now(), delay: first, first, max }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Schedules the next attempt; returns its delay.
    fn fail(&mut self) -> Duration {
        let delay = self.delay;
        self.at = Instant::now() + delay;
        self.delay = (delay * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.at = Instant::now();
        self.delay = self.first;
    }
}

#[derive(Debug)]
enum Run {
    /// Not running; (re)started once `retry` is due.
    Waiting { reason: &'static str, message: Option<String> },
    /// Running: a process, or nothing for images without a program.
    Running { process: Option<Process>, started_at: Time, since: Instant },
    /// Exited, and the restartPolicy says it stays so.
    Terminated(ContainerStateTerminated),
}

#[derive(Debug)]
struct ContainerRun {
    spec: Container,
    program: Option<PathBuf>,
    run: Run,
    retry: Backoff,
    restart_count: i32,
    /// Started at least once.
    started_once: bool,
    last_terminated: Option<ContainerStateTerminated>,
    ready: bool,
    ports: Vec<(u16, Protocol)>,
}

impl ContainerRun {
    fn new(spec: &Container, program: Option<PathBuf>) -> ContainerRun {
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                };
                Some((u16::try_from(p.container_port).ok()?, protocol))
            })
            .collect();
        ContainerRun {
            spec: spec.clone(),
            program,
            run: Run::Waiting { reason: "ContainerCreating", message: None },
            retry: Backoff::new(FIRST_RESTART_BACKOFF, MAX_RESTART_BACKOFF),
            restart_count: 0,
            started_once: false,
            last_terminated: None,
            ready: false,
            ports,
        }
    }

    fn process_mut(&mut self) -> Option<&mut Process> {
        match &mut self.run {
            Run::Running { process: Some(p), .. } => Some(p),
            _ => None,
        }
    }

    fn container_id(&self, short_uid: &str) -> String {
        format!("agimo://{short_uid}-{}-{}", self.spec.name, self.restart_count)
    }

    fn status(&self, short_uid: &str) -> ContainerStatus {
        let (state, started) = match &self.run {
            Run::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some((*reason).to_owned()),
                        message: message.clone(),
                    }),
                    ..Default::default()
                },
                false,
            ),
            Run::Running { started_at, .. } => (
                ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(started_at.clone()) }),
                    ..Default::default()
                },
                true,
            ),
            Run::Terminated(t) => (ContainerState { terminated: Some(t.clone()), ..Default::default() }, false),
        };
        let image = self.spec.image.clone().unwrap_or_default();
        let image_id = match &self.program {
            Some(program) => format!("agimo://{}", program.display()),
            None => "agimo://none".to_owned(),
        };
        ContainerStatus {
            name: self.spec.name.clone(),
            image,
            image_id,
            container_id: self.started_once.then(|| self.container_id(short_uid)),
            ready: self.ready,
            started: Some(started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: self
                .last_terminated
                .clone()
                .map(|t| ContainerState { terminated: Some(t), ..Default::default() }),
            ..Default::default()
        }
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    api: Api<Pod>,
    namespace: String,
    name: String,
    uid: String,
    short_uid: String,
    /// `<state>/pods/<namespace>_<name>_<uid>`: `volumes/`, `logs/`.
    dir: PathBuf,
    /// Pods already Succeeded or Failed when first seen are not run again.
    finished: bool,
    sources: Sources,
    volumes_ready: bool,
    sandbox: Option<Sandbox>,
    setup: Backoff,
    containers: Vec<ContainerRun>,
    start_time: Time,
    transitions: Transitions,
    sent: Option<serde_json::Value>,
    status_retry: Backoff,
    /// Warnings already published as events (each once).
    warned: std::collections::HashSet<String>,
}

enum Wake {
    Update,
    Stop,
    Tick,
}

/// Runs the pod until it is deleted (or the agent stops); returns its UID.
pub async fn run(ctx: Arc<Ctx>, pod: Arc<Pod>, mut updates: watch::Receiver<Update>) -> String {
    let mut worker = Worker::new(ctx, pod);
    let uid = worker.uid.clone();
    loop {
        let latest = updates.borrow_and_update().clone();
        match latest {
            None => {
                tracing::info!("gone from the API; stopping it");
                worker.teardown().await;
                return uid;
            }
            Some(pod) => worker.pod = pod,
        }
        if worker.pod.metadata.deletion_timestamp.is_some() {
            tracing::info!("deleted; stopping it");
            worker.teardown().await;
            worker.delete_from_api(&mut updates).await;
            return uid;
        }
        worker.step().await;
        worker.write_status().await;
        let wake_at = worker.next_wake();
        let wake = tokio::select! {
            changed = updates.changed() => if changed.is_ok() { Wake::Update } else { Wake::Stop },
            _ = tokio::time::sleep_until(wake_at.into()) => Wake::Tick,
            _ = any_exit(&mut worker.containers) => Wake::Tick,
        };
        match wake {
            Wake::Stop => {
                // The agent stops: leave the pod in the API, remove it here.
                worker.teardown().await;
                return uid;
            }
            Wake::Update | Wake::Tick => {}
        }
    }
}

/// Resolves when any process exits (never if none runs).
async fn any_exit(containers: &mut [ContainerRun]) {
    let waits: Vec<_> =
        containers.iter_mut().filter_map(ContainerRun::process_mut).map(|p| Box::pin(p.child.wait())).collect();
    if waits.is_empty() {
        std::future::pending::<()>().await;
    }
    let _ = futures_util::future::select_all(waits).await;
}

impl Worker {
    fn new(ctx: Arc<Ctx>, pod: Arc<Pod>) -> Worker {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let (netns, _) = sandbox::names(&uid);
        let short_uid = netns.trim_start_matches(sandbox::NETNS_PREFIX).to_owned();
        let dir = ctx.config.state_dir.join("pods").join(format!("{namespace}_{name}_{uid}"));
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .containers
            .iter()
            .map(|c| ContainerRun::new(c, c.image.as_deref().and_then(|i| ctx.config.program_for(i)).cloned()))
            .collect();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let start_time =
            pod.status.as_ref().and_then(|s| s.start_time.clone()).unwrap_or_else(|| Time(Timestamp::now()));
        Worker {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            transitions: Transitions::from_pod(&pod),
            ctx,
            pod,
            namespace,
            name,
            uid,
            short_uid,
            dir,
            finished,
            sources: Sources::default(),
            volumes_ready: false,
            sandbox: None,
            setup: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            containers,
            start_time,
            sent: None,
            status_retry: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            warned: Default::default(),
        }
    }

    /// One pass: set up what is missing, start what is due, notice exits
    /// and readiness.
    async fn step(&mut self) {
        if self.finished {
            return;
        }
        if !self.volumes_ready {
            if !self.setup.due() {
                return;
            }
            if let Err(e) = self.prepare_volumes().await {
                let delay = self.setup.fail();
                self.warn("FailedMount", format!("MountVolume failed: {e}"), delay);
                return;
            }
            self.volumes_ready = true;
            self.setup.reset();
        }
        if self.sandbox.is_none() {
            if !self.setup.due() {
                return;
            }
            if let Err(e) = self.create_sandbox().await {
                let delay = self.setup.fail();
                self.warn("FailedCreatePodSandBox", format!("Failed to create pod sandbox: {e}"), delay);
                return;
            }
            self.setup.reset();
        }
        for i in 0..self.containers.len() {
            self.step_container(i).await;
        }
    }

    /// Fetches the Secrets and ConfigMaps the pod references.
    async fn fetch_sources(&mut self) -> Result<(), String> {
        let (secrets, config_maps) = volumes::referenced(&self.pod);
        let mut sources = Sources::default();
        let secret_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for name in secrets {
            let found = secret_api.get_opt(&name).await.map_err(|e| format!("get Secret {name:?}: {e}"))?;
            if let Some(secret) = found {
                let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                sources.secrets.insert(name, data);
            }
        }
        let config_map_api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for name in config_maps {
            let found = config_map_api.get_opt(&name).await.map_err(|e| format!("get ConfigMap {name:?}: {e}"))?;
            if let Some(cm) = found {
                let mut data: std::collections::BTreeMap<String, Vec<u8>> =
                    cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
                sources.config_maps.insert(name, data);
            }
        }
        self.sources = sources;
        Ok(())
    }

    fn facts(&self) -> PodFacts<'_> {
        PodFacts { pod: &self.pod, pod_ip: self.sandbox.as_ref().map(|s| s.ip), host_ip: self.ctx.config.node_ip }
    }

    async fn prepare_volumes(&mut self) -> Result<(), String> {
        self.fetch_sources().await?;
        let volumes_dir = self.dir.join("volumes");
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        for volume in &volumes {
            let (content, note) = volumes::plan(volume, &self.facts(), &self.sources)
                .map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            if let Some(note) = note {
                tracing::debug!(volume = %volume.name, "{note}");
            }
            volumes::write(&volumes_dir.join(&volume.name), &content)
                .map_err(|e| format!("volume {:?}: {e}", volume.name))?;
        }
        for c in &self.containers {
            std::fs::create_dir_all(self.dir.join("logs").join(&c.spec.name))
                .map_err(|e| format!("log directory: {e}"))?;
        }
        self.ctx.logs.insert(&self.namespace, &self.name, self.dir.join("logs"));
        Ok(())
    }

    async fn create_sandbox(&mut self) -> Result<(), String> {
        let previous = self.pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
        let ip = self.ctx.ipam.lock().unwrap_or_else(|e| e.into_inner()).allocate(previous);
        let Some(ip) = ip else { return Err("no free pod address".to_owned()) };
        match sandbox::create(&self.ctx.config, &self.uid, ip).await {
            Ok(s) => {
                tracing::info!(ip = %s.ip, netns = %s.netns, "network namespace ready");
                self.sandbox = Some(s);
                Ok(())
            }
            Err(e) => {
                self.ctx.ipam.lock().unwrap_or_else(|e| e.into_inner()).release(ip);
                Err(e)
            }
        }
    }

    async fn step_container(&mut self, i: usize) {
        let inode = self.sandbox.as_ref().map_or(0, |s| s.netns_inode);
        let c = &mut self.containers[i];
        match &mut c.run {
            Run::Waiting { .. } if c.retry.due() => self.start(i).await,
            Run::Running { process: Some(p), started_at, since } => match p.child.try_wait() {
                Ok(Some(exit)) => {
                    let (started_at, since) = (started_at.clone(), *since);
                    self.exited(i, exit, started_at, since);
                }
                Ok(None) => {
                    if !c.ready && process::listens(p.pid, inode, &c.ports) {
                        c.ready = true;
                        tracing::info!(container = %c.spec.name, "ready");
                    }
                }
                Err(e) => tracing::warn!(container = %c.spec.name, error = %e, "cannot check the process"),
            },
            _ => {}
        }
    }

    /// Starts container `i` (or reports why it cannot start).
    async fn start(&mut self, i: usize) {
        let name = self.containers[i].spec.name.clone();
        let prepared = self.prepare_launch(i).await;
        let c = &mut self.containers[i];
        let (env, args) = match prepared {
            Ok(launch) => launch,
            Err(e) => {
                let delay = c.retry.fail();
                c.run = Run::Waiting { reason: "CreateContainerConfigError", message: Some(e.clone()) };
                self.warn("Failed", format!("Error: container {name}: {e}"), delay);
                return;
            }
        };
        let attempt = if c.started_once { c.restart_count + 1 } else { 0 };
        let log = self.dir.join("logs").join(&name).join(format!("{attempt}.log"));
        let now = Time(Timestamp::now());
        let Some(program) = c.program.clone() else {
            // No program for this image: nothing runs, the container is up.
            if let Err(e) = std::fs::File::create(&log) {
                tracing::warn!(container = %name, error = %e, "cannot create the log file");
            }
            c.run = Run::Running { process: None, started_at: now, since: Instant::now() };
            c.restart_count = attempt;
            c.started_once = true;
            c.ready = true;
            tracing::info!(container = %name, image = ?c.spec.image, "no program for this image; reported running");
            return;
        };
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone()).unwrap_or_default();
        let launched = process::check_program(&program, c.spec.image.as_deref().unwrap_or_default()).and_then(|()| {
            process::spawn(&Launch {
                netns: &netns,
                program: &program,
                args: &args,
                env: &env,
                cwd: &self.dir,
                log: &log,
            })
            .map_err(|e| format!("cannot start {}: {e}", program.display()))
        });
        match launched {
            Ok(p) => {
                tracing::info!(container = %name, pid = p.pid, program = %program.display(), restarts = attempt, "started");
                c.ready = c.ports.is_empty();
                c.run = Run::Running { process: Some(p), started_at: now, since: Instant::now() };
                c.restart_count = attempt;
                c.started_once = true;
                self.event(EventType::Normal, "Started", format!("Started container {name}"));
            }
            Err(e) => {
                let delay = c.retry.fail();
                c.run = Run::Waiting { reason: "RunContainerError", message: Some(e.clone()) };
                self.warn("Failed", format!("Error: container {name}: {e}"), delay);
            }
        }
    }

    /// The environment and arguments of container `i`, with paths under its
    /// volumeMounts rewritten. Secrets and ConfigMaps are fetched again on
    /// retries (they may have appeared since).
    async fn prepare_launch(&mut self, i: usize) -> Result<(Vec<(String, String)>, Vec<String>), String> {
        if self.containers[i].run_is_config_error() {
            self.fetch_sources().await?;
        }
        let spec = &self.containers[i].spec;
        let resolved = env::resolve(spec, &self.facts(), &self.sources).map_err(|e| e.to_string())?;
        let pod_volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        let mounts = volumes::mounts(spec, &pod_volumes, &self.dir.join("volumes"));
        let mut env = vec![("HOSTNAME".to_owned(), self.name.clone())];
        env.extend(resolved.into_iter().map(|(k, v)| {
            let v = env::rewrite_path(&v, &mounts);
            (k, v)
        }));
        let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let args = spec.args.iter().flatten().map(|a| env::rewrite_path(&env::expand(a, lookup), &mounts)).collect();
        if spec.command.as_ref().is_some_and(|c| !c.is_empty()) {
            tracing::debug!(container = %spec.name, "command is ignored: the program replaces the image's entrypoint");
        }
        Ok((env, args))
    }

    fn exited(&mut self, i: usize, exit: std::process::ExitStatus, started_at: Time, since: Instant) {
        use std::os::unix::process::ExitStatusExt;
        let policy =
            self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".to_owned());
        let short_uid = self.short_uid.clone();
        let pod_name = self.name.clone();
        let c = &mut self.containers[i];
        let code = exit.code().unwrap_or_else(|| 128 + exit.signal().unwrap_or(0));
        let terminated = ContainerStateTerminated {
            exit_code: code,
            signal: exit.signal(),
            reason: Some(if code == 0 { "Completed" } else { "Error" }.to_owned()),
            started_at: Some(started_at),
            finished_at: Some(Time(Timestamp::now())),
            container_id: Some(c.container_id(&short_uid)),
            message: None,
        };
        c.ready = false;
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        let name = c.spec.name.clone();
        if !restart {
            tracing::info!(container = %name, code, "exited; restartPolicy {policy}: not restarted");
            c.run = Run::Terminated(terminated);
            return;
        }
        if since.elapsed() > RESET_BACKOFF_AFTER {
            c.retry.reset();
        }
        let delay = c.retry.fail();
        tracing::warn!(container = %name, code, "exited; restarting in {delay:?}");
        c.last_terminated = Some(terminated);
        c.run = Run::Waiting {
            reason: "CrashLoopBackOff",
            message: Some(format!("back-off {delay:?} restarting failed container={name} pod={pod_name}")),
        };
        self.event(
            EventType::Warning,
            "BackOff",
            format!("Back-off restarting failed container {name} (exit code {code})"),
        );
    }

    fn container_statuses(&self) -> (Vec<ContainerStatus>, Vec<ContainerStatus>) {
        let containers = self.containers.iter().map(|c| c.status(&self.short_uid)).collect();
        // Init containers are not run: reported completed once the pod is set up.
        let init = self.pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten());
        let init = init
            .map(|c| {
                let done = self.sandbox.is_some();
                let state = if done {
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            reason: Some("Completed".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                } else {
                    ContainerState {
                        waiting: Some(ContainerStateWaiting { reason: Some("PodInitializing".into()), message: None }),
                        ..Default::default()
                    }
                };
                ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: "agimo://none".into(),
                    ready: done,
                    started: Some(false),
                    state: Some(state),
                    ..Default::default()
                }
            })
            .collect();
        (containers, init)
    }

    /// Writes the pod's status if it changed since the last write.
    async fn write_status(&mut self) {
        if self.finished || !self.status_retry.due() {
            return;
        }
        let (containers, init_containers) = self.container_statuses();
        let observed = Observed {
            pod: &self.pod,
            host_ip: self.ctx.config.node_ip,
            pod_ip: self.sandbox.as_ref().map(|s| s.ip),
            start_time: &self.start_time,
            containers,
            init_containers,
        };
        let status = status::pod_status(observed, &mut self.transitions, &Time(Timestamp::now()));
        // The UID makes the patch fail on a pod recreated with the same name.
        let patch = serde_json::json!({"metadata": {"uid": self.uid}, "status": status::patchable(&status)});
        if self.sent.as_ref() == Some(&patch) {
            return;
        }
        match self.api.patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => {
                self.sent = Some(patch);
                self.status_retry.reset();
            }
            Err(e) => {
                let delay = self.status_retry.fail();
                tracing::warn!(error = %e, "cannot write the pod's status; retrying in {delay:?}");
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(5);
        let mut earlier = |at: Instant| wake = wake.min(at);
        if self.finished {
            return wake;
        }
        if !self.status_retry.due() {
            earlier(self.status_retry.at);
        }
        if !self.volumes_ready || self.sandbox.is_none() {
            earlier(self.setup.at);
            return wake;
        }
        for c in &self.containers {
            match &c.run {
                Run::Waiting { .. } => earlier(c.retry.at),
                // Readiness is checked every 100 ms until the ports listen.
                Run::Running { process: Some(_), .. } if !c.ready => {
                    earlier(Instant::now() + Duration::from_millis(100))
                }
                _ => {}
            }
        }
        wake
    }

    /// Stops the processes and removes the network namespace, the address
    /// and the pod's directory.
    async fn teardown(&mut self) {
        for c in &mut self.containers {
            let name = c.spec.name.clone();
            if let Some(p) = c.process_mut() {
                let _ = p.child.start_kill();
                if tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await.is_err() {
                    tracing::warn!(container = %name, pid = p.pid, "did not exit after SIGKILL");
                }
                tracing::info!(container = %name, "stopped");
            }
            c.run = Run::Waiting { reason: "ContainerCreating", message: None };
        }
        if let Some(s) = self.sandbox.take() {
            sandbox::destroy(&s.netns, &s.veth).await;
            self.ctx.ipam.lock().unwrap_or_else(|e| e.into_inner()).release(s.ip);
            tracing::info!(ip = %s.ip, "network namespace removed");
        }
        self.ctx.logs.remove(&self.namespace, &self.name, &self.dir.join("logs"));
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the pod's directory");
        }
    }

    /// Deletes the pod (grace period 0, only this UID), retrying API errors
    /// until it is gone.
    async fn delete_from_api(&mut self, updates: &mut watch::Receiver<Update>) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            match self.api.delete(&self.name, &params).await {
                Ok(_) => {
                    tracing::info!("deleted");
                    return;
                }
                // Gone already, or the name belongs to a newer pod now.
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => return,
                Err(e) => {
                    let delay = backoff.fail();
                    tracing::warn!(error = %e, "cannot delete the pod; retrying in {delay:?}");
                    tokio::select! {
                        _ = sleep(delay) => {}
                        changed = updates.changed() => if changed.is_err() || updates.borrow().is_none() { return },
                    }
                }
            }
        }
    }

    /// A warning log line, and an event once per distinct message.
    fn warn(&mut self, reason: &'static str, message: String, retry_in: Duration) {
        tracing::warn!(reason, "{message}; retrying in {retry_in:?}");
        if self.warned.insert(format!("{reason}: {message}")) {
            self.event(EventType::Warning, reason, message);
        }
    }

    /// Publishes an event about the pod in the background (a failure to
    /// publish is only logged).
    fn event(&self, type_: EventType, reason: &'static str, note: String) {
        let recorder = self.ctx.recorder.clone();
        let reference = self.pod.object_ref(&());
        tokio::spawn(async move {
            let event = Event {
                type_,
                reason: reason.to_owned(),
                note: Some(note),
                action: reason.to_owned(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "cannot publish an event");
            }
        });
    }
}

impl ContainerRun {
    fn run_is_config_error(&self) -> bool {
        matches!(self.run, Run::Waiting { reason: "CreateContainerConfigError", .. })
    }
}
