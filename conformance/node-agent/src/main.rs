//! The `agimo-node-agent` binary: flags, logging, signals; see the library
//! for what it does.
//!
//! ```text
//!   flags ──▶ Config ──▶ agent::run(client, config, SIGTERM/SIGINT)
//!   enter --spec FILE ──▶ enter::main (a container from an image; no runtime, no logging)
//! ```

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use agimo_node_agent::Config;
use anyhow::Context;
use clap::Parser;

/// The node of conformance/local-cluster: registers a Node, binds pending
/// pods to it, runs each pod in a network namespace of its own and serves
/// their logs. Runs as root in the cluster's network namespace (with the
/// host's mount namespace); kubeconfig from KUBECONFIG or ~/.kube/config.
#[derive(Parser)]
#[command(name = "agimo-node-agent", version)]
struct Args {
    /// The Node's name.
    #[arg(long, default_value = "agimo-node")]
    node_name: String,
    /// The Node's InternalIP: an address of the bridge, the pods' gateway,
    /// where the log server listens.
    #[arg(long, default_value = "10.244.0.1")]
    node_ip: Ipv4Addr,
    /// The bridge pods are attached to.
    #[arg(long, default_value = "agimo0")]
    bridge: String,
    /// The bridge's subnet (pod addresses get its prefix length).
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_network: ipnet::Ipv4Net,
    /// The pod addresses handed out, FIRST-LAST (inside --pod-network,
    /// without --node-ip; never loopback).
    #[arg(long, default_value = "10.244.1.0-10.244.255.254")]
    pod_ips: String,
    /// PATTERN=PATH: a container whose image contains PATTERN runs the
    /// program PATH (repeatable; the first match wins) in place of the
    /// image's entrypoint: with the container's args, after command[1..] if
    /// it has a command. Containers of images neither here nor in an
    /// --image-layout cannot be pulled (ErrImagePull).
    #[arg(long = "program", value_name = "PATTERN=PATH")]
    programs: Vec<String>,
    /// An OCI image layout (oci-layout, index.json, blobs/): the node's
    /// registry (repeatable; the first that has an image wins). An image
    /// named in an index.json entry's io.containerd.image.name (or full
    /// org.opencontainers.image.ref.name) annotation runs from its own root
    /// filesystem, whatever --program says.
    #[arg(long = "image-layout", value_name = "DIR")]
    image_layouts: Vec<PathBuf>,
    /// Per-pod directories (materialised volumes, logs).
    #[arg(long, default_value = "/var/lib/agimo-node")]
    state_dir: PathBuf,
    /// Port of the log server (published as the kubelet endpoint).
    #[arg(long, default_value_t = 10250)]
    logs_port: u16,
    /// Serving certificate of the log server (PEM); self-signed without it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (the API server's
    /// --kubelet-client-certificate).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// The API server's address as pods reach it: their
    /// KUBERNETES_SERVICE_HOST (its serving certificate must name it);
    /// default: --node-ip.
    #[arg(long)]
    kubernetes_service_host: Option<std::net::IpAddr>,
    /// The API server's port as pods reach it: KUBERNETES_SERVICE_PORT.
    #[arg(long, default_value_t = 6443)]
    kubernetes_service_port: u16,
    /// Reported as the Node's kubelet version.
    #[arg(long, default_value = "v1.36.3")]
    kubelet_version: String,
    /// The Node's pod capacity.
    #[arg(long, default_value_t = 250)]
    max_pods: u32,
    /// How often the Node's status is renewed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// The cluster DNS Service's address, the nameserver of pods with
    /// dnsPolicy ClusterFirst (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain: pods search <namespace>.svc.DOMAIN,
    /// svc.DOMAIN and DOMAIN.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The node's resolver configuration: what pods with dnsPolicy Default
    /// get, and extra search domains for ClusterFirst ones. An empty value:
    /// the node has none.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Sets up a container from an image in the current (pod) namespace and
    /// execs its program; started by the agent itself.
    #[command(hide = true)]
    Enter {
        #[arg(long)]
        spec: PathBuf,
    },
}

impl Args {
    fn config(self) -> anyhow::Result<Config> {
        let pod_ips = agimo_node_agent::ipam::parse_range(&self.pod_ips).map_err(anyhow::Error::msg)?;
        for ip in [pod_ips.0, pod_ips.1, self.node_ip] {
            anyhow::ensure!(self.pod_network.contains(&ip), "{ip} is outside --pod-network {}", self.pod_network);
        }
        anyhow::ensure!(
            !(pod_ips.0..=pod_ips.1).contains(&self.node_ip),
            "--node-ip {} is inside --pod-ips {}",
            self.node_ip,
            self.pod_ips
        );
        // Checks the range (loopback, empty) the way the agent will use it.
        agimo_node_agent::ipam::Ipam::new(pod_ips.0, pod_ips.1).map_err(anyhow::Error::msg)?;
        let programs = self
            .programs
            .iter()
            .map(|p| {
                let (pattern, path) =
                    p.split_once('=').with_context(|| format!("--program {p:?}: expected PATTERN=PATH"))?;
                Ok((pattern.to_owned(), PathBuf::from(path)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (pattern, path) in &programs {
            if !path.is_file() {
                tracing::warn!(pattern, path = %path.display(), "program not found; its containers will fail to start");
            }
        }
        let image_layouts = self
            .image_layouts
            .iter()
            .map(|dir| std::path::absolute(dir).with_context(|| format!("--image-layout {}", dir.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for dir in &image_layouts {
            if !dir.join("index.json").is_file() {
                tracing::warn!(layout = %dir.display(), "no index.json in the image layout (yet)");
            }
        }
        Ok(Config {
            node_name: self.node_name,
            node_ip: self.node_ip,
            bridge: self.bridge,
            pod_network: self.pod_network,
            pod_ips,
            programs,
            image_layouts,
            self_exe: std::env::current_exe().context("the agent's own binary")?,
            // Absolute: volume directories are mounted by path.
            state_dir: std::path::absolute(&self.state_dir).context("--state-dir")?,
            logs_port: self.logs_port,
            tls_cert: self.tls_cert.zip(self.tls_key),
            client_ca: self.client_ca,
            api_server: std::net::SocketAddr::new(
                self.kubernetes_service_host.unwrap_or(std::net::IpAddr::V4(self.node_ip)),
                self.kubernetes_service_port,
            ),
            kubelet_version: self.kubelet_version,
            max_pods: self.max_pods,
            heartbeat: self.heartbeat,
            dns: agimo_node_agent::dns::NodeDns {
                cluster_dns: self.cluster_dns,
                cluster_domain: self.cluster_domain,
                host: if self.resolv_conf.is_empty() {
                    Default::default()
                } else {
                    let text = std::fs::read_to_string(&self.resolv_conf)
                        .with_context(|| format!("--resolv-conf {}", self.resolv_conf))?;
                    agimo_node_agent::dns::ResolvConf::parse(&text)
                },
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Enter { spec }) = &args.command {
        // Before any thread starts: what it sets up is this thread's.
        agimo_node_agent::enter::main(spec);
    }
    tokio::runtime::Runtime::new().context("tokio runtime")?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let config = args.config()?;
    let client = kube::Client::try_default().await.context("kubeconfig")?;
    tracing::info!(node = %config.node_name, ip = %config.node_ip, "starting");
    agimo_node_agent::agent::run(client, config, shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received; stopping");
}
