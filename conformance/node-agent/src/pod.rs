//! One worker per pod bound to the node. It brings the pod up (volumes and
//! service account tokens, then the network namespace, then the
//! containers), restarts processes that exit as the restartPolicy says,
//! runs their probes, renews tokens, writes the pod's status whenever it
//! changes, and on deletion stops the containers gracefully (preStop,
//! SIGTERM, SIGKILL after the grace period), frees the address and deletes
//! the pod with grace period 0 (so that namespaces can finish deleting).
//!
//! ```text
//!   updates (watch) ─┐
//!   process exits ───┼─▶ step: volumes+tokens → sandbox → start/restart/probe each container ─▶ write_status
//!   probe results ───┤                                    └─ probe tasks ─▶ probe results
//!   timers ──────────┘
//!   deletionTimestamp ─▶ terminate: preStop, SIGTERM … grace … SIGKILL ─▶ teardown ─▶ delete (grace 0)
//! ```
//!
//! What a container runs ([`Source`]): an image found in the node's image
//! layouts ([`crate::image`]) runs from its own root filesystem, as a
//! runtime would run it: it is pulled (unpacked once; `Pulling`/`Pulled`
//! events, `ErrImagePull` then `ImagePullBackOff` while that fails), its
//! Entrypoint, Cmd, Env, WorkingDir and User are combined with the
//! container's by the Kubernetes rules ([`crate::enter::build`]) and it
//! starts as `ip netns exec … agimo-node-agent enter --spec …`
//! ([`crate::enter`]); its status's `imageID` is `<repository>@sha256:…`.
//! Else a program given for the image (`--program`) stands in for its
//! entrypoint: `args` are its arguments, and a `command` replaces the
//! entrypoint, so the program takes the place of `command[0]` and
//! `command[1..]` come before `args` (`command: [sh, -c, SCRIPT]` with a
//! shell image runs the program with `-c SCRIPT`). `$(VAR)` references in
//! both are expanded. Else nothing runs.
//!
//! Probes: a startup probe holds liveness and readiness probes back until
//! it succeeds (`started`); readiness decides `ready` (without a readiness
//! probe a container is ready once started, as the kubelet has it: whether
//! it listens yet is not looked at); a failed liveness or startup probe sends SIGTERM, SIGKILL after
//! the grace period, and the exit is handled as any other (restartPolicy,
//! restartCount). A container whose image is neither in the node's image
//! layouts nor matched by a program does not start: it waits with
//! `ErrImagePull`, then `ImagePullBackOff`, as with an image no registry has.
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
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

use crate::agent::Ctx;
use crate::dns;
use crate::enter;
use crate::env::{self, PodFacts, Sources};
use crate::image;
use crate::probe::{self, Counter};
use crate::process::{self, Launch, Process};
use crate::sandbox::{self, Sandbox};
use crate::security::Security;
use crate::status::{self, Observed, Transitions};
use crate::token;
use crate::volumes::{self, Ownership};

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
/// The pod's files in its directory that every container gets.
const ETC_HOSTS: &str = "etc-hosts";
const RESOLV_CONF: &str = "resolv.conf";

/// `terminationGracePeriodSeconds` when the pod does not say.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// How long the pod's containers get between SIGTERM and SIGKILL: the
/// deletion's grace period, else the pod's `terminationGracePeriodSeconds`,
/// else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds));
    seconds.map_or(DEFAULT_GRACE, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
}

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
    /// Running: its process.
    Running { process: Process, started_at: Time, since: Instant },
    /// Exited, and the restartPolicy says it stays so.
    Terminated(ContainerStateTerminated),
}

/// What a container runs.
#[derive(Debug)]
enum Source {
    /// An image of the node's image layouts, from its own root filesystem
    /// (through `enter`); `pulled` once read and unpacked.
    Image { found: Box<image::Found>, pulled: Option<Arc<image::Pulled>> },
    /// A local program (`--program`) in place of the image's entrypoint.
    Program(PathBuf),
    /// Neither: the image cannot be pulled (looked for again at each try,
    /// as a kubelet tries its registry again).
    Missing,
}

impl Source {
    /// Where `image` comes from on this node: its image layouts first, then
    /// its programs.
    fn of(ctx: &Ctx, image: &str) -> Source {
        match (ctx.images.find(image), ctx.config.program_for(image)) {
            (Some(found), _) => Source::Image { found: Box::new(found), pulled: None },
            (None, Some(program)) => Source::Program(program.clone()),
            (None, None) => Source::Missing,
        }
    }
}

#[derive(Debug)]
struct ContainerRun {
    spec: Container,
    source: Source,
    run: Run,
    retry: Backoff,
    restart_count: i32,
    /// Started at least once.
    started_once: bool,
    last_terminated: Option<ContainerStateTerminated>,
    ready: bool,
    /// The startup probe passed (or there is none) since the last start.
    started: bool,
    /// The probes of the running process.
    probes: Vec<ProbeRun>,
    /// preStop, run before SIGTERM on deletion.
    pre_stop: Option<probe::Action>,
    /// What probes and hooks of the running process need.
    target: Option<probe::Target>,
    /// The process was started through a prelude (so exit code 128 means
    /// it could not be set up).
    prelude: bool,
    /// A probe failed: SIGTERM was sent; SIGKILL at this time.
    killing: Option<Instant>,
}

/// One probe of a running process.
#[derive(Debug)]
struct ProbeRun {
    kind: probe::Kind,
    spec: probe::Spec,
    counter: Counter,
    next_at: Instant,
    in_flight: bool,
}

/// A probe's result, sent back by the task that ran it.
#[derive(Debug)]
struct ProbeOutcome {
    container: usize,
    /// The container's restart count when the probe started (results for
    /// an earlier process are dropped).
    attempt: i32,
    kind: probe::Kind,
    result: Result<(), String>,
}

/// Everything a container's start needs, worked out before it starts.
struct Prepared {
    env: Vec<(String, String)>,
    args: Vec<String>,
    prelude: Option<String>,
    /// For an image: what `enter` sets up and runs.
    enter: Option<enter::Spec>,
    security: Security,
    probes: Vec<ProbeRun>,
    pre_stop: Option<probe::Action>,
}

impl ContainerRun {
    fn new(spec: &Container, source: Source) -> ContainerRun {
        ContainerRun {
            spec: spec.clone(),
            source,
            run: Run::Waiting { reason: "ContainerCreating", message: None },
            retry: Backoff::new(FIRST_RESTART_BACKOFF, MAX_RESTART_BACKOFF),
            restart_count: 0,
            started_once: false,
            last_terminated: None,
            ready: false,
            started: false,
            probes: Vec::new(),
            pre_stop: None,
            target: None,
            prelude: false,
            killing: None,
        }
    }

    fn has_probe(&self, kind: probe::Kind) -> bool {
        self.probes.iter().any(|p| p.kind == kind)
    }

    /// Ready without a readiness probe: as the kubelet has it, once the
    /// process runs and its startup probe (if any) passed. Whether it
    /// listens yet is not looked at: clients of a Service must cope with a
    /// pod that is Ready before it accepts connections, as in any cluster.
    fn ready_without_probe(&self) -> bool {
        self.started && !self.has_probe(probe::Kind::Readiness)
    }

    fn process_mut(&mut self) -> Option<&mut Process> {
        match &mut self.run {
            Run::Running { process: p, .. } => Some(p),
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
                self.started,
            ),
            Run::Terminated(t) => (ContainerState { terminated: Some(t.clone()), ..Default::default() }, false),
        };
        let image = self.spec.image.clone().unwrap_or_default();
        let image_id = match &self.source {
            Source::Image { pulled, .. } => pulled.as_ref().map(|p| p.image_id.clone()).unwrap_or_default(),
            Source::Program(program) => format!("agimo://{}", program.display()),
            Source::Missing => String::new(),
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
    probe_tx: mpsc::UnboundedSender<ProbeOutcome>,
    probe_rx: mpsc::UnboundedReceiver<ProbeOutcome>,
    /// When the service account tokens are requested again.
    tokens_at: Option<Instant>,
    token_retry: Backoff,
}

enum Wake {
    Update,
    Stop,
    Tick,
    Probe(ProbeOutcome),
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
            worker.terminate(&mut updates).await;
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
            Some(outcome) = worker.probe_rx.recv() => Wake::Probe(outcome),
        };
        match wake {
            Wake::Stop => {
                // The agent stops: leave the pod in the API, remove it here.
                worker.teardown().await;
                return uid;
            }
            Wake::Probe(outcome) => worker.probe_result(outcome),
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
            .map(|c| {
                let source = Source::of(&ctx, c.image.as_deref().unwrap_or_default());
                ContainerRun::new(c, source)
            })
            .collect();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        let start_time =
            pod.status.as_ref().and_then(|s| s.start_time.clone()).unwrap_or_else(|| Time(Timestamp::now()));
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        Worker {
            probe_tx,
            probe_rx,
            tokens_at: None,
            token_retry: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
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
        if self.tokens_at.is_some_and(|at| Instant::now() >= at) && self.token_retry.due() {
            self.refresh_tokens().await;
        }
        for i in 0..self.containers.len() {
            self.step_container(i).await;
        }
    }

    /// Requests every service account token the pod's volumes need; returns
    /// when they should be requested again.
    async fn request_tokens(&mut self) -> Result<Instant, String> {
        let mut refresh = token::MAX_REFRESH;
        for key in token::keys(&self.pod) {
            let issued = token::request(&self.ctx.client, &self.pod, &key).await?;
            refresh = refresh.min(token::refresh_in(issued.issued, issued.expires));
            self.sources.tokens.insert(key, issued.token);
        }
        Ok(Instant::now() + refresh)
    }

    /// Renews the tokens in volumes the containers have mounted.
    async fn refresh_tokens(&mut self) {
        let renewed = match self.request_tokens().await {
            Ok(at) => {
                let owner = Ownership::of(&self.pod);
                let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
                let mut written = Ok(at);
                for volume in &volumes {
                    let files = volumes::token_files(volume, &self.sources, owner).map_err(|e| e.to_string());
                    let dir = self.dir.join("volumes").join(&volume.name);
                    if let Err(e) = files.and_then(|f| volumes::replace(&dir, &f).map_err(|e| e.to_string())) {
                        written = Err(format!("volume {:?}: {e}", volume.name));
                        break;
                    }
                }
                written
            }
            Err(e) => Err(e),
        };
        match renewed {
            Ok(at) => {
                tracing::info!("service account tokens renewed");
                self.tokens_at = Some(at);
                self.token_retry.reset();
            }
            Err(e) => {
                let delay = self.token_retry.fail();
                self.warn("FailedMount", format!("cannot renew the service account token: {e}"), delay);
            }
        }
    }

    /// Fetches the Secrets and ConfigMaps the pod references.
    async fn fetch_sources(&mut self) -> Result<(), String> {
        let (secrets, config_maps) = volumes::referenced(&self.pod);
        let mut sources = Sources { tokens: std::mem::take(&mut self.sources.tokens), ..Default::default() };
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
        let tokens_at = self.request_tokens().await?;
        let volumes_dir = self.dir.join("volumes");
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        let owner = Ownership::of(&self.pod);
        for volume in &volumes {
            let (content, note) = volumes::plan(volume, &self.facts(), &self.sources, owner)
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
        self.tokens_at = (!self.sources.tokens.is_empty()).then_some(tokens_at);
        Ok(())
    }

    async fn create_sandbox(&mut self) -> Result<(), String> {
        let previous = self.pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
        let ip = self.ctx.ipam.lock().unwrap_or_else(|e| e.into_inner()).allocate(previous);
        let Some(ip) = ip else { return Err("no free pod address".to_owned()) };
        let made = match sandbox::create(&self.ctx.config, &self.uid, ip).await {
            Ok(s) => match self.write_dns_files(s.ip) {
                Ok(()) => Ok(s),
                Err(e) => {
                    sandbox::destroy(&s.netns, &s.veth).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match made {
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

    /// Writes the pod's `/etc/hosts` and `/etc/resolv.conf` into its
    /// directory, from where they are mounted into each container
    /// ([`Worker::dns_mounts`]).
    fn write_dns_files(&mut self, ip: std::net::Ipv4Addr) -> Result<(), String> {
        let node = &self.ctx.config.dns;
        let hosts = dns::hosts_file(&self.pod, ip, &node.cluster_domain);
        let resolv = dns::resolv_conf(&self.pod, node);
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for (name, text) in [(ETC_HOSTS, &hosts), (RESOLV_CONF, &resolv.text)] {
            let path = self.dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        for warning in resolv.warnings {
            let key = format!("DNSConfigForming: {warning}");
            if self.warned.insert(key) {
                tracing::warn!("{warning}");
                self.event(EventType::Warning, "DNSConfigForming", warning);
            }
        }
        Ok(())
    }

    /// The pod's `/etc/hosts` and `/etc/resolv.conf` for a container, as
    /// the kubelet and the runtime mount them, unless the container mounts
    /// a volume there itself.
    fn dns_mounts(&self, spec: &Container) -> Vec<process::Mount> {
        let own = |path: &str| spec.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == path);
        [(ETC_HOSTS, "/etc/hosts"), (RESOLV_CONF, "/etc/resolv.conf")]
            .into_iter()
            .filter(|(_, target)| !own(target))
            .map(|(name, target)| process::Mount {
                source: self.dir.join(name),
                target: target.to_owned(),
                read_only: false,
                file: true,
            })
            .collect()
    }

    async fn step_container(&mut self, i: usize) {
        let probe_tx = self.probe_tx.clone();
        let c = &mut self.containers[i];
        match &mut c.run {
            Run::Waiting { .. } if c.retry.due() => self.start(i).await,
            Run::Running { process: p, started_at, since } => match p.child.try_wait() {
                Ok(Some(exit)) => {
                    let (started_at, since) = (started_at.clone(), *since);
                    self.exited(i, exit, started_at, since);
                }
                Ok(None) => {
                    let now = Instant::now();
                    if let Some(deadline) = c.killing {
                        if now >= deadline {
                            tracing::warn!(container = %c.spec.name, pid = p.pid, "still running after the grace period; SIGKILL");
                            let _ = p.child.start_kill();
                        }
                        return;
                    }
                    let (started, attempt, target) = (c.started, c.restart_count, c.target.clone());
                    let Some(target) = target else { return };
                    for probe in c.probes.iter_mut() {
                        let active = (probe.kind == probe::Kind::Startup) != started;
                        if !active || probe.in_flight || now < probe.next_at {
                            continue;
                        }
                        probe.in_flight = true;
                        probe.next_at = now + probe.spec.period;
                        let (tx, target, kind) = (probe_tx.clone(), target.clone(), probe.kind);
                        let (action, timeout) = (probe.spec.action.clone(), probe.spec.timeout);
                        tokio::spawn(async move {
                            let result = probe::run(&action, &target, timeout).await;
                            let _ = tx.send(ProbeOutcome { container: i, attempt, kind, result });
                        });
                    }
                }
                Err(e) => tracing::warn!(container = %c.spec.name, error = %e, "cannot check the process"),
            },
            _ => {}
        }
    }

    /// Takes in one probe result: `started`, `ready`, or a kill.
    fn probe_result(&mut self, outcome: ProbeOutcome) {
        let pod_grace = self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
        let Some(c) = self.containers.get_mut(outcome.container) else { return };
        let running = matches!(c.run, Run::Running { .. });
        if !running || c.restart_count != outcome.attempt || c.killing.is_some() {
            return;
        }
        let name = c.spec.name.clone();
        let Some(probe) = c.probes.iter_mut().find(|p| p.kind == outcome.kind) else { return };
        probe.in_flight = false;
        let verdict = probe.counter.record(&probe.spec, outcome.result.is_ok());
        let grace = probe
            .spec
            .termination_grace
            .or_else(|| pod_grace.map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))))
            .unwrap_or(DEFAULT_GRACE);
        let kind = outcome.kind;
        if let Err(why) = &outcome.result {
            tracing::info!(container = %name, probe = %kind, "probe failed: {why}");
            self.event(EventType::Warning, "Unhealthy", format!("{kind} probe failed: {why}"));
        }
        let c = &mut self.containers[outcome.container];
        match (kind, verdict) {
            (probe::Kind::Startup, Some(true)) => {
                tracing::info!(container = %name, "startup probe succeeded");
                c.started = true;
                c.ready = c.ready_without_probe();
                let since = match &c.run {
                    Run::Running { since, .. } => *since,
                    _ => Instant::now(),
                };
                for p in c.probes.iter_mut().filter(|p| p.kind != probe::Kind::Startup) {
                    p.next_at = (since + p.spec.initial_delay).max(Instant::now());
                }
            }
            (probe::Kind::Readiness, Some(ready)) => {
                if c.ready != ready {
                    tracing::info!(container = %name, ready, "readiness changed");
                }
                c.ready = ready;
            }
            (probe::Kind::Startup | probe::Kind::Liveness, Some(false)) => {
                let pid = c.process_mut().map(|p| p.pid);
                tracing::warn!(container = %name, probe = %kind, ?grace, "probe failed; stopping the container");
                c.ready = false;
                c.killing = Some(Instant::now() + grace);
                if let Some(pid) = pid {
                    tokio::spawn(async move { process::signal(pid, "TERM").await });
                }
                self.event(
                    EventType::Normal,
                    "Killing",
                    format!("Container {name} failed {} probe, will be restarted", kind.to_string().to_lowercase()),
                );
            }
            _ => {}
        }
    }

    /// Reads and unpacks container `i`'s image if it is one of the node's
    /// images and that was not done yet (the node's layouts are its
    /// registry: `IfNotPresent` and `Always` alike find it there). False if
    /// that failed: the container waits with `ErrImagePull`, then
    /// `ImagePullBackOff`, and is tried again after a backoff.
    async fn pull(&mut self, i: usize) -> bool {
        let c = &mut self.containers[i];
        let image = c.spec.image.clone().unwrap_or_default();
        if matches!(c.source, Source::Missing) {
            c.source = Source::of(&self.ctx, &image);
        }
        if matches!(c.source, Source::Missing) {
            let e = format!(
                "image {image:?} not found: it is in none of the node's image layouts (--image-layout) \
                 and no --program matches it"
            );
            self.pull_failed(i, &image, e);
            return false;
        }
        let c = &self.containers[i];
        let Source::Image { found, pulled: None } = &c.source else { return true };
        let (found, image) = (found.clone(), c.spec.image.clone().unwrap_or_default());
        let store = self.ctx.images.clone();
        let started = Instant::now();
        let task = found.clone();
        let result = tokio::task::spawn_blocking(move || store.pull(&task).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(format!("the unpacking task failed: {e}")));
        let c = &mut self.containers[i];
        match result {
            Ok(pulled) => {
                let (cached, size, id) = (pulled.cached, pulled.size, pulled.image_id.clone());
                c.source = Source::Image { found, pulled: Some(Arc::new(pulled)) };
                tracing::info!(image, id, cached, "image ready");
                if cached {
                    self.event(
                        EventType::Normal,
                        "Pulled",
                        format!("Container image {image:?} already present on machine"),
                    );
                } else {
                    let took = started.elapsed();
                    self.event(EventType::Normal, "Pulling", format!("Pulling image {image:?}"));
                    self.event(
                        EventType::Normal,
                        "Pulled",
                        format!("Successfully pulled image {image:?} in {took:.3?}. Image size: {size} bytes."),
                    );
                }
                true
            }
            Err(e) => {
                self.pull_failed(i, &image, e);
                false
            }
        }
    }

    /// Container `i` waits with `ErrImagePull`, then `ImagePullBackOff`,
    /// and is tried again after a backoff.
    fn pull_failed(&mut self, i: usize, image: &str, e: String) {
        let c = &mut self.containers[i];
        let delay = c.retry.fail();
        let again = matches!(c.run, Run::Waiting { reason: "ErrImagePull" | "ImagePullBackOff", .. });
        c.run = if again {
            let message = format!("Back-off pulling image {image:?}: {e}");
            Run::Waiting { reason: "ImagePullBackOff", message: Some(message) }
        } else {
            Run::Waiting { reason: "ErrImagePull", message: Some(e.clone()) }
        };
        self.warn("Failed", format!("Failed to pull image {image:?}: {e}"), delay);
    }

    /// Starts container `i` (or reports why it cannot start).
    async fn start(&mut self, i: usize) {
        let name = self.containers[i].spec.name.clone();
        if !self.pull(i).await {
            return;
        }
        let prepared = self.prepare_launch(i).await;
        let c = &mut self.containers[i];
        let prepared = match prepared {
            Ok(prepared) => prepared,
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
        let program = match &c.source {
            Source::Program(program) => Some(program.clone()),
            Source::Image { .. } => None,
            Source::Missing => return, // pull() said why
        };
        let netns = self.sandbox.as_ref().map(|s| s.netns.clone()).unwrap_or_default();
        let cwd = self.dir.clone();
        let images = self.ctx.config.state_dir.join("images");
        let launched = match (&program, &prepared.enter) {
            (Some(program), _) => process::check_program(program, c.spec.image.as_deref().unwrap_or_default())
                .and_then(|()| {
                    let program = process::pull(program, &images)
                        .map_err(|e| format!("cannot copy {} to {}: {e}", program.display(), images.display()))?;
                    process::spawn(&Launch {
                        netns: &netns,
                        program: &program,
                        args: &prepared.args,
                        env: &prepared.env,
                        cwd: &cwd,
                        log: &log,
                        prelude: prepared.prelude.as_deref(),
                    })
                    .map_err(|e| format!("cannot start {}: {e}", program.display()))
                }),
            // From an image: through `enter`, with a fresh writable layer.
            (None, Some(spec)) => {
                let path = spec.dir.join("spec.json");
                let _ = std::fs::remove_dir_all(self.dir.join("containers").join(&name));
                let agent = &self.ctx.config.self_exe;
                std::fs::create_dir_all(&spec.dir)
                    .and_then(|()| spec.write(&path))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
                    .and_then(|()| {
                        let args = ["enter".to_owned(), "--spec".to_owned(), path.display().to_string()];
                        let launch = Launch {
                            netns: &netns,
                            program: agent,
                            args: &args,
                            env: &[],
                            cwd: &cwd,
                            log: &log,
                            prelude: None,
                        };
                        process::spawn(&launch).map_err(|e| format!("cannot start {}: {e}", agent.display()))
                    })
            }
            (None, None) => Err("nothing to run".to_owned()),
        };
        match launched {
            Ok(p) => {
                let program =
                    program.map_or_else(|| c.spec.image.clone().unwrap_or_default(), |p| p.display().to_string());
                tracing::info!(container = %name, pid = p.pid, %program, restarts = attempt, "started");
                let pod_ip = self.sandbox.as_ref().map_or(self.ctx.config.node_ip, |s| s.ip);
                let user = prepared.security.user.map(|u| (u, prepared.security.group.unwrap_or(0)));
                c.target = Some(probe::Target { pod_ip, pid: p.pid, env: prepared.env, user });
                c.prelude = prepared.prelude.is_some() || prepared.enter.is_some();
                c.probes = prepared.probes;
                c.pre_stop = prepared.pre_stop;
                c.killing = None;
                c.started = !c.has_probe(probe::Kind::Startup);
                c.ready = c.ready_without_probe();
                c.run = Run::Running { process: p, started_at: now, since: Instant::now() };
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

    /// What container `i` starts with: its environment and arguments (with
    /// paths under its volumeMounts rewritten), and, if it runs a program,
    /// its start script, securityContext, probes and preStop handler.
    /// Secrets and ConfigMaps are fetched again on retries (they may have
    /// appeared since).
    async fn prepare_launch(&mut self, i: usize) -> Result<Prepared, String> {
        if self.containers[i].run_is_config_error() {
            self.fetch_sources().await?;
        }
        let c = &self.containers[i];
        let spec = &c.spec;
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let base = env::kubelet_vars(&self.name, self.ctx.config.api_server);
        let resolved = env::resolve(spec, &self.facts(), &self.sources, &base).map_err(|e| e.to_string())?;
        let pod_volumes = pod_spec.volumes.clone().unwrap_or_default();
        let volumes_dir = self.dir.join("volumes");
        let rewrites = volumes::mounts(spec, &pod_volumes, &volumes_dir);
        let image = match &c.source {
            Source::Image { pulled, .. } => pulled.clone(),
            _ => None,
        };
        // In an image's own root the mountPaths are where the volumes are.
        let env: Vec<(String, String)> = match image {
            Some(_) => resolved,
            None => resolved.into_iter().map(|(k, v)| (k, env::rewrite_path(&v, &rewrites))).collect(),
        };
        let args = env::program_args(spec, &env, &rewrites);
        let mut prepared = Prepared {
            env,
            args,
            prelude: None,
            enter: None,
            security: Security::default(),
            probes: Vec::new(),
            pre_stop: None,
        };
        let pod_name = format!("{}/{}", self.namespace, self.name);
        if image.is_none() {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            prepared.security = Security::of(&pod_name, &pod_spec, spec, &passwd).map_err(|e| e.to_string())?;
        }
        let mut mounts = volumes::bind_mounts(spec, &pod_volumes, &volumes_dir);
        mounts.extend(self.dns_mounts(spec));
        for m in &mounts {
            // A subPath that is not there yet, or a missing hostPath: a
            // directory, as runtimes make it.
            if !m.source.exists() {
                std::fs::create_dir_all(&m.source)
                    .map_err(|e| format!("cannot create {} for {}: {e}", m.source.display(), m.target))?;
            }
        }
        if let Some(pulled) = &image {
            let attempt = if c.started_once { c.restart_count + 1 } else { 0 };
            let dir = self.dir.join("containers").join(&spec.name).join(attempt.to_string());
            let built = enter::build(&enter::Container {
                pod: &pod_name,
                pod_spec: &pod_spec,
                container: spec,
                env: &prepared.env,
                mounts: &mounts,
                image: pulled,
                dir: &dir,
            })?;
            prepared.env = built.env;
            prepared.security = built.security;
            prepared.enter = Some(built.spec);
        } else {
            let working_dir = spec.working_dir.as_deref().filter(|d| !d.is_empty());
            prepared.prelude = process::prelude(&mounts, &prepared.security, working_dir);
        }
        let now = Instant::now();
        for kind in [probe::Kind::Startup, probe::Kind::Readiness, probe::Kind::Liveness] {
            if let Some(spec) = probe::of(spec, kind).map_err(|e| e.to_string())? {
                let next_at = now + spec.initial_delay;
                prepared.probes.push(ProbeRun { kind, spec, counter: Counter::default(), next_at, in_flight: false });
            }
        }
        let pre_stop = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        prepared.pre_stop =
            pre_stop.map(|h| probe::parse_handler(h, spec, "preStop hook")).transpose().map_err(|e| e.to_string())?;
        Ok(prepared)
    }

    fn exited(&mut self, i: usize, exit: std::process::ExitStatus, started_at: Time, since: Instant) {
        use std::os::unix::process::ExitStatusExt;
        let policy =
            self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".to_owned());
        let short_uid = self.short_uid.clone();
        let pod_name = self.name.clone();
        let c = &mut self.containers[i];
        let code = exit.code().unwrap_or_else(|| 128 + exit.signal().unwrap_or(0));
        let start_error = c.prelude && exit.code() == Some(process::START_ERROR);
        let terminated = ContainerStateTerminated {
            exit_code: code,
            signal: exit.signal(),
            reason: Some(
                if start_error {
                    "StartError"
                } else if code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned(),
            ),
            started_at: Some(started_at),
            finished_at: Some(Time(Timestamp::now())),
            container_id: Some(c.container_id(&short_uid)),
            message: start_error.then(|| "the container could not be set up; its log says why".to_owned()),
        };
        c.ready = false;
        c.killing = None;
        c.probes.clear();
        c.target = None;
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
        if let Some(at) = self.tokens_at {
            earlier(at.max(self.token_retry.at));
        }
        for c in &self.containers {
            match &c.run {
                Run::Waiting { .. } => earlier(c.retry.at),
                Run::Running { .. } => {
                    if let Some(deadline) = c.killing {
                        earlier(deadline);
                        continue;
                    }
                    for p in c.probes.iter().filter(|p| !p.in_flight && (p.kind == probe::Kind::Startup) != c.started) {
                        earlier(p.next_at);
                    }
                }
                _ => {}
            }
        }
        wake
    }

    /// Stops the containers as the kubelet does on deletion: each one's
    /// preStop handler, then SIGTERM, then SIGKILL once the grace period is
    /// over (or at once if the pod goes away or the agent stops; a second
    /// deletion with a shorter grace period shortens it). Then tears down.
    async fn terminate(&mut self, updates: &mut watch::Receiver<Update>) {
        let grace = grace_period(&self.pod);
        let mut deadline = Instant::now() + grace;
        let mut signals = tokio::task::JoinSet::new();
        for c in &mut self.containers {
            let (Some(target), Some(p)) = (c.target.clone(), c.process_mut()) else { continue };
            if !matches!(p.child.try_wait(), Ok(None)) {
                continue;
            }
            let (pid, name, pre_stop) = (p.pid, c.spec.name.clone(), c.pre_stop.clone());
            tracing::info!(container = %name, pid, ?grace, pre_stop = pre_stop.is_some(), "stopping: SIGTERM, SIGKILL after the grace period");
            signals.spawn(async move {
                if let Some(action) = pre_stop
                    && let Err(e) = probe::run(&action, &target, grace).await
                {
                    tracing::warn!(container = %name, "preStop hook failed: {e}");
                }
                process::signal(pid, "TERM").await;
            });
        }
        if !signals.is_empty() {
            self.event(EventType::Normal, "Killing", format!("Stopping the pod's containers (grace period {grace:?})"));
        }
        loop {
            let running = self
                .containers
                .iter_mut()
                .filter_map(ContainerRun::process_mut)
                .map(|p| matches!(p.child.try_wait(), Ok(None)))
                .filter(|running| *running)
                .count();
            if running == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(running, "still running after the grace period; SIGKILL");
                break;
            }
            tokio::select! {
                _ = sleep(Duration::from_millis(100)) => {}
                changed = updates.changed() => {
                    if changed.is_err() {
                        break; // the agent stops
                    }
                    let latest = updates.borrow_and_update().clone();
                    match latest {
                        None => break, // gone from the API
                        Some(pod) => {
                            deadline = deadline.min(Instant::now() + grace_period(&pod));
                            self.pod = pod;
                        }
                    }
                }
            }
        }
        signals.abort_all();
        self.teardown().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_grace_period_of_the_deletion_wins() {
        let pod = |meta: serde_json::Value, spec: serde_json::Value| -> Pod {
            let mut spec = spec;
            spec["containers"] = json!([]);
            serde_json::from_value(json!({"metadata": meta, "spec": spec})).unwrap()
        };
        assert_eq!(grace_period(&pod(json!({}), json!({}))), Duration::from_secs(30));
        assert_eq!(grace_period(&pod(json!({}), json!({"terminationGracePeriodSeconds": 5}))), Duration::from_secs(5));
        assert_eq!(
            grace_period(&pod(json!({"deletionGracePeriodSeconds": 1}), json!({"terminationGracePeriodSeconds": 5}))),
            Duration::from_secs(1)
        );
        assert_eq!(grace_period(&pod(json!({"deletionGracePeriodSeconds": 0}), json!({}))), Duration::ZERO);
    }
}
