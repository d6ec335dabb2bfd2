//! The node of `conformance/local-cluster`: a real kube-apiserver and
//! kube-controller-manager run there without a container runtime, and this
//! agent stands in for the kubelet (and the scheduler). It registers the Node
//! `agimo-node`, binds pending pods to it, runs each pod in a network
//! namespace of its own with an address on the cluster bridge, writes pod
//! statuses, deletes pods once their processes are gone, and serves container
//! logs to `kubectl logs`.
//!
//! Images come from OCI image layouts given with `--image-layout DIR`, the
//! node's registry ([`image`]): a container whose image is named in one runs
//! from that image's root filesystem, as containerd and runc would run it
//! (an overlay over the unpacked layers, its own /proc, /dev and /sys, the
//! image's Entrypoint, Cmd, Env, WorkingDir and User; [`enter`]). Else a
//! container whose image contains a pattern given with `--program
//! PATTERN=PATH` runs that program from the local disk, in place of the
//! image's entrypoint (`echo-basic`, the conformance suite's backend;
//! `coredns/coredns`, the cluster DNS; `agimo-node-agent/test-shell`,
//! `/bin/sh` for our tests). Either process gets what a kubelet gives a
//! container, so that a program like `agimo` runs as an in-cluster client:
//!
//! - `/etc/resolv.conf` and `/etc/hosts` as the kubelet writes them
//!   ([`dns`]: the cluster DNS for `dnsPolicy: ClusterFirst`, `dnsConfig`,
//!   the pod's hostname and `hostAliases`);
//! - its volumes at their mountPaths, bind-mounted in the process's own
//!   mount namespace ([`process::prelude`] for programs, [`enter`] inside
//!   an image's root), among them the service
//!   account's `kube-api-access-…` volume with a real token from the
//!   TokenRequest API, bound to the pod and renewed at 80 % of its lifetime
//!   ([`token`]), `ca.crt` from the ConfigMap `kube-root-ca.crt` and the
//!   namespace ([`volumes`]);
//! - its environment, with `KUBERNETES_SERVICE_HOST`/`_PORT` naming the API
//!   server and the downward API ([`env`]);
//! - its securityContext: user, groups, `runAsNonRoot`,
//!   `readOnlyRootFilesystem`, capabilities, no new privileges
//!   ([`security`]);
//! - its startup, readiness and liveness probes ([`probe`]), which decide
//!   `started`, `ready` (so EndpointSlices follow) and restarts;
//! - on deletion its preStop hook, SIGTERM, and SIGKILL after the grace
//!   period ([`pod`]).
//!
//! A container of any other image cannot be pulled: it waits with
//! `ErrImagePull`, then `ImagePullBackOff`, as a kubelet's would.
//!
//! ```text
//!   kube-apiserver ──watch pods──▶ dispatcher ──pods/binding, Node + heartbeat──▶ kube-apiserver
//!                                      │ one worker per pod bound here
//!                                      ▼
//!                                   worker ──ip netns add, ip link add, ip netns exec──▶ the pod
//!                                      ├──--image-layout: index.json, blobs ──unpack──▶ <state>/images/sha256-…/rootfs
//!                                      │     ──overlay, pivot_root (agimo-node-agent enter)──▶ the container's root
//!                                      ├──serviceaccounts/token, Secrets, ConfigMaps──▶ <pod>/volumes ──bind──▶ mountPaths
//!                                      ├──probes (httpGet, tcpSocket from here; exec via nsenter)──▶ the pod
//!                                      └──pods/status, events, delete (grace 0)──▶ kube-apiserver
//!   kubectl logs ─▶ kube-apiserver ─▶ https://10.244.0.1:10250/containerLogs/… ─▶ the workers' log files
//!
//!   netns agimo (control plane, agent):  bridge agimo0 10.244.0.1/16, API server 10.244.0.1:6443
//!        │ veth agp<uid>
//!   netns agimo-pod-<uid>:  eth0 10.244.x.y/16, default via 10.244.0.1, lo; the pod's processes,
//!                           each in a mount namespace of its own (ip netns exec)
//! ```
//!
//! The agent runs in the cluster's network namespace but in the host's mount
//! namespace (`nsenter --net`, not `ip netns exec`, which would give it a
//! mount namespace of its own where the pod namespaces it creates stay
//! invisible to everyone else).

#![forbid(unsafe_code)]

pub mod agent;
pub mod dns;
pub mod enter;
pub mod env;
pub mod image;
pub mod ipam;
pub mod logs;
pub mod node;
pub mod pod;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod security;
pub mod status;
pub mod token;
pub mod volumes;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent is told on its command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node's name; pods bound here have it in `spec.nodeName`.
    pub node_name: String,
    /// The Node's InternalIP: the bridge's address, the pods' default
    /// gateway and the address the log server listens on.
    pub node_ip: Ipv4Addr,
    /// The bridge pods are attached to (in the agent's network namespace).
    pub bridge: String,
    /// The subnet of the bridge; pod addresses get its prefix length.
    pub pod_network: ipnet::Ipv4Net,
    /// First and last pod address handed out.
    pub pod_ips: (Ipv4Addr, Ipv4Addr),
    /// Programs run for images: the first whose pattern occurs in the image.
    pub programs: Vec<(String, PathBuf)>,
    /// OCI image layouts, the node's registry ([`image`]); an image found
    /// there runs from its own root filesystem, whatever `programs` say.
    pub image_layouts: Vec<PathBuf>,
    /// This agent's own binary: containers from images start through its
    /// `enter` subcommand ([`enter`]).
    pub self_exe: PathBuf,
    /// Per-pod directories (volumes, logs).
    pub state_dir: PathBuf,
    /// The port of the log server (the Node's kubelet endpoint).
    pub logs_port: u16,
    /// Serving certificate and key (PEM) of the log server; self-signed if absent.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// If set, the log server requires client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// The API server as pods reach it (KUBERNETES_SERVICE_HOST and _PORT).
    pub api_server: std::net::SocketAddr,
    /// Reported as the Node's kubelet version.
    pub kubelet_version: String,
    /// The Node's `pods` capacity.
    pub max_pods: u32,
    /// How often the Node's Ready condition is renewed.
    pub heartbeat: Duration,
    /// The cluster DNS and domain, and the node's own resolver settings:
    /// what pods' `/etc/resolv.conf` and `/etc/hosts` are made from.
    pub dns: dns::NodeDns,
}

impl Config {
    /// The program that runs for `image`, if any.
    pub fn program_for(&self, image: &str) -> Option<&PathBuf> {
        self.programs.iter().find(|(pattern, _)| image.contains(pattern.as_str())).map(|(_, path)| path)
    }
}
