//! The `agimo` binary: wiring only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use agimo_dataplane::EscapedSlashes;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agimo", version, about = "A Gateway API implementation that scales backends to zero")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads that serve traffic (default: one per CPU the process may
    /// use). The controller (watches, compiles, statuses, the admin and
    /// metrics endpoints) runs on a thread of its own.
    #[arg(long, global = true, env = "AGIMO_WORKER_THREADS")]
    worker_threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Gateway API resources from YAML files (no cluster needed);
    /// changes to the files apply within a second.
    Standalone {
        /// A YAML file or a directory of YAML files.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Serve the Gateways of a Kubernetes cluster (kubeconfig from
    /// KUBECONFIG or ~/.kube/config, or the in-cluster service account), and
    /// write their statuses.
    Run {
        /// The controllerName of the GatewayClasses to serve.
        #[arg(long, default_value = agimo_controller::api::CONTROLLER_NAME)]
        controller_name: String,
        /// Addresses for Gateways without spec.addresses, published in their
        /// status.addresses (e.g. 10.245.0.0/24); each Gateway also gets a
        /// ClusterIP Service in its namespace whose endpoint is its address.
        /// Without a pool such Gateways listen on --bind-address.
        #[arg(long)]
        gateway_address_pool: Option<ipnet::IpNet>,
        #[command(flatten)]
        gateway_services: Box<GatewayServiceArgs>,
        /// Elect one replica to write statuses with a Lease.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// The namespace of the Lease (default: $POD_NAMESPACE, else default).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        leader_election_namespace: String,
        /// The name of the Lease.
        #[arg(long, default_value = "agimo-controller")]
        leader_election_id: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

/// In a cluster: a Service per Gateway, in its namespace, whose
/// EndpointSlices list Agimo's pods.
#[derive(Args)]
struct GatewayServiceArgs {
    /// Expose every Gateway through a Service of this type in the Gateway's
    /// namespace, whose address the Gateway publishes; its EndpointSlices
    /// list Agimo's pods (--gateway-service-selector), and its listeners get
    /// ports of their own on the pods (--gateway-pod-ports).
    #[arg(long, value_parser = ["LoadBalancer", "ClusterIP", "NodePort"], conflicts_with = "gateway_address_pool",
          requires = "gateway_service_selector")]
    gateway_service_type: Option<String>,
    /// Agimo's own namespace, where its pods are.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    gateway_service_namespace: String,
    /// The labels of Agimo's pods, KEY=VALUE[,KEY=VALUE...]: the endpoints
    /// of the Gateway Services.
    #[arg(long, value_parser = parse_labels)]
    gateway_service_selector: Option<BTreeMap<String, String>>,
    /// An annotation for every Gateway Service, KEY=VALUE (repeatable),
    /// e.g. a cloud load balancer's settings.
    #[arg(long = "gateway-service-annotation", value_name = "KEY=VALUE", value_parser = parse_pair)]
    gateway_service_annotations: Vec<(String, String)>,
    /// Ports the pods listen on for Gateway listeners, FIRST-LAST.
    #[arg(long, default_value = "20000-29999", value_parser = parse_port_range)]
    gateway_pod_ports: RangeInclusive<u16>,
    /// Where static Gateway addresses (spec.addresses) may come from
    /// (repeatable); they become the Service's externalIPs. Others make the
    /// Gateway not Programmed (AddressNotUsable).
    #[arg(long = "gateway-static-address-range", value_name = "CIDR", value_delimiter = ',')]
    gateway_static_address_ranges: Vec<ipnet::IpNet>,
}

impl GatewayServiceArgs {
    fn exposure(self) -> Option<agimo_controller::gateway_services::Exposure> {
        Some(agimo_controller::gateway_services::Exposure {
            service_type: self.gateway_service_type?,
            namespace: self.gateway_service_namespace,
            selector: self.gateway_service_selector.unwrap_or_default(),
            annotations: self.gateway_service_annotations.into_iter().collect(),
            pod_ports: self.gateway_pod_ports,
            static_ranges: self.gateway_static_address_ranges,
        })
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let labels: BTreeMap<String, String> = s.split(',').map(parse_pair).collect::<Result<_, _>>()?;
    if labels.is_empty() { Err("no labels".to_owned()) } else { Ok(labels) }
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = s.split_once('-').ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || first > last {
        return Err(format!("{s:?}: FIRST must be at least 1 and at most LAST"));
    }
    Ok(first..=last)
}

#[derive(Args)]
struct ServeArgs {
    /// Address for listeners of Gateways without spec.addresses.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Where /metrics is served (Prometheus text format).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_address: SocketAddr,
    /// Where /status, /healthz, /readyz (and /metrics) are served.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_address: SocketAddr,
    /// Where KEDA's external scaler gRPC service is served (triggers
    /// `external-push` and `external`), or `off`.
    #[arg(long, default_value = "0.0.0.0:9091", value_parser = parse_optional_address)]
    keda_scaler_address: OptionalAddress,
    /// HOST:PORT names (comma-separated) that resolve to the KEDA scaler of
    /// every replica (in a cluster, a headless Service): the replica KEDA
    /// talks to adds the others' requests to its own. Resolved every 5 s;
    /// the replica's own address may be among them.
    #[arg(long, value_delimiter = ',')]
    keda_scaler_peers: Vec<String>,
    /// Time a client has to send a complete HTTP/1.1 request head; also
    /// closes idle HTTP/1.1 keep-alive connections.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// Close a connection with no request in flight after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Largest request head accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_request_header_bytes: usize,
    /// Most request headers accepted.
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// On SIGTERM or Ctrl-C, how long open connections get to finish.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    shutdown_grace_period: Duration,
    /// On SIGTERM, how long listeners keep accepting while /readyz already
    /// fails, so that load balancers and EndpointSlices stop sending new
    /// connections before the listeners close (in a cluster: a few seconds).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
    /// Close a connection whose client has taken no response bytes for this
    /// long (a slow or stalled reader); 0 turns it off.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// Park an HTTP/1.1 connection with nothing in flight and nothing
    /// received for this long: its server state and buffers are freed
    /// until the client sends again; 0 never parks.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    park_idle_after: Duration,
    /// Open client connections beyond which new ones are refused (HTTP: a
    /// 503 with `Connection: close`; HTTPS: closed at once).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = 100)]
    http2_max_concurrent_streams: u32,
    /// What `%2F` and `%5C` (escaped slashes) in a request path do:
    /// `unescape-and-redirect` (a 307 to the path with them decoded),
    /// `keep` (they are data, not separators), or `reject` (400). The rest of
    /// the path is always normalised.
    #[arg(long, default_value = "unescape-and-redirect", value_parser = parse_escaped_slashes)]
    escaped_slashes: EscapedSlashes,
}

/// A socket address, or `off` (clap takes `Option` as "the flag may be
/// absent", hence the newtype).
#[derive(Clone, Copy, Debug)]
struct OptionalAddress(Option<SocketAddr>);

fn parse_optional_address(s: &str) -> Result<OptionalAddress, String> {
    match s {
        "off" => Ok(OptionalAddress(None)),
        _ => s.parse().map(|a| OptionalAddress(Some(a))).map_err(|e| format!("{s:?}: {e}; expected HOST:PORT or off")),
    }
}

fn parse_escaped_slashes(s: &str) -> Result<EscapedSlashes, String> {
    match s {
        "unescape-and-redirect" => Ok(EscapedSlashes::UnescapeAndRedirect),
        "keep" => Ok(EscapedSlashes::Keep),
        "reject" => Ok(EscapedSlashes::Reject),
        _ => Err(format!("{s:?}: expected unescape-and-redirect, keep or reject")),
    }
}

impl ServeArgs {
    fn options(&self, dataplane_runtime: &tokio::runtime::Handle) -> agimo_controller::runtime::ServeOptions {
        agimo_controller::runtime::ServeOptions {
            dataplane: self.dataplane(),
            dataplane_runtime: Some(dataplane_runtime.clone()),
            bind_address: self.bind_address,
            metrics_address: self.metrics_address,
            admin_address: self.admin_address,
            keda_scaler_address: self.keda_scaler_address.0,
            keda_scaler_peers: self.keda_scaler_peers.clone(),
            shutdown_grace_period: self.shutdown_grace_period,
            shutdown_delay: self.shutdown_delay,
        }
    }

    fn dataplane(&self) -> agimo_dataplane::Config {
        agimo_dataplane::Config {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_request_header_bytes: self.max_request_header_bytes,
            max_request_headers: self.max_request_headers,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            escaped_slashes: self.escaped_slashes,
            send_timeout: self.send_timeout,
            park_idle_after: self.park_idle_after,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            ..agimo_dataplane::Config::default()
        }
    }
}

/// jemalloc, set to give memory back: an idle connection that Agimo parks
/// frees its buffers (see `agimo_dataplane::Config::park_idle_after`),
/// and with the C library's allocator those pages would stay with the
/// process. Here unused pages go back to the system after about a second,
/// from a background thread, so the process shrinks while it is idle too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `malloc_conf`, read at its start: a C string pointer.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static string, never written.
unsafe impl Sync for MallocConf {}

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dataplane = dataplane_runtime(cli.worker_threads)?;
    // The controller runs here, apart from traffic: a compile or a burst of
    // watch events never holds up a request, and the reverse.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve(cli, dataplane))
}

/// Starts the runtime that serves traffic, on threads of its own. With one
/// thread it is tokio's current-thread runtime, as an nginx worker is one
/// event loop: none of the work-stealing scheduler's cross-thread
/// bookkeeping on every wake-up.
fn dataplane_runtime(threads: Option<std::num::NonZeroUsize>) -> anyhow::Result<tokio::runtime::Handle> {
    let runtime = match threads.map(std::num::NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = threads {
                builder.worker_threads(threads);
            }
            builder.thread_name("agimo-worker").enable_all().build()?
        }
    };
    let handle = runtime.handle().clone();
    // A current-thread runtime runs its tasks on the thread that blocks on
    // it; a multi-thread one has its workers, and this thread just keeps
    // the runtime alive.
    std::thread::Builder::new()
        .name("agimo-dataplane".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

async fn serve(cli: Cli, dataplane: tokio::runtime::Handle) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Standalone { config, serve } => {
            agimo_controller::standalone::run(agimo_controller::standalone::Options {
                config,
                serve: serve.options(&dataplane),
            })
            .await
        }
        Command::Run {
            controller_name,
            gateway_address_pool,
            gateway_services,
            leader_election,
            leader_election_namespace,
            leader_election_id,
            serve,
        } => {
            let lease = leader_election.then(|| agimo_controller::leader::LeaseConfig {
                namespace: leader_election_namespace,
                name: leader_election_id,
                identity: identity(),
                duration: Duration::from_secs(15),
                retry: Duration::from_secs(2),
            });
            agimo_controller::kubernetes::run(agimo_controller::kubernetes::Options {
                serve: serve.options(&dataplane),
                controller_name,
                gateway_address_pool,
                exposure: gateway_services.exposure(),
                lease,
            })
            .await
        }
    }
}

/// This replica's name in the Lease: the pod name when running in a pod.
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}
