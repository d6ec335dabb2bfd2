//! The Node: registered once, its status (addresses, capacity, Ready
//! condition, kubelet endpoint) written at start and its Ready condition
//! renewed every heartbeat. The EndpointSlice controller skips pods whose
//! Node does not exist, and the API server finds the log server through
//! `daemonEndpoints.kubeletEndpoint` and the InternalIP address.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::Config;

/// The Node object as created (its status is written separately).
pub fn node(config: &Config) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.node_name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), arch().to_owned()),
    ]);
    Node {
        metadata: ObjectMeta { name: Some(config.node_name.clone()), labels: Some(labels), ..Default::default() },
        spec: Some(NodeSpec {
            pod_cidr: Some(config.pod_network.to_string()),
            pod_cidrs: Some(vec![config.pod_network.to_string()]),
            ..Default::default()
        }),
        status: None,
    }
}

/// What the machine offers, as Node capacity.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_kib,
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node's status; `ready_since` is the Ready condition's transition time.
pub fn status(config: &Config, machine: &Machine, ready_since: &Time, now: &Time) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(machine.cpus.to_string())),
        ("memory".to_owned(), Quantity(format!("{}Ki", machine.memory_kib))),
        ("pods".to_owned(), Quantity(config.max_pods.to_string())),
    ]);
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(ready_since.clone()),
    };
    NodeStatus {
        // The InternalIP only: no Hostname address, which the API server
        // would otherwise prefer (and could not resolve).
        addresses: Some(vec![NodeAddress { type_: "InternalIP".to_owned(), address: config.node_ip.to_string() }]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "agimo-node-agent does not measure memory",
            ),
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "agimo-node-agent does not measure disks"),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "agimo-node-agent does not measure processes"),
            condition("Ready", true, "KubeletReady", "agimo-node-agent is posting ready status"),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(config.logs_port) }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().to_owned(),
            operating_system: "linux".to_owned(),
            kernel_version: machine.kernel.clone(),
            os_image: machine.os_image.clone(),
            machine_id: machine.machine_id.clone(),
            system_uuid: machine.machine_id.clone(),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: format!("agimo-node-agent://{}", env!("CARGO_PKG_VERSION")),
            kubelet_version: config.kubelet_version.clone(),
            kube_proxy_version: String::new(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// Creates the Node if it does not exist and writes its status.
pub async fn register(client: &Client, config: &Config, machine: &Machine, ready_since: &Time) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(&config.node_name).await?.is_none() {
        match api.create(&PostParams::default(), &node(config)).await {
            Ok(_) => tracing::info!(node = %config.node_name, "registered the Node"),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e),
        }
    }
    write_status(&api, config, machine, ready_since).await
}

async fn write_status(api: &Api<Node>, config: &Config, machine: &Machine, ready_since: &Time) -> kube::Result<()> {
    let status = status(config, machine, ready_since, &Time(Timestamp::now()));
    // A merge patch: the agent owns the whole status (lists are replaced).
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
}

/// Renews the Node's status every `config.heartbeat`, registering the Node
/// again if it was deleted; errors are logged and retried next time.
pub async fn heartbeat(client: Client, config: Config, machine: Machine, ready_since: Time) {
    let api: Api<Node> = Api::all(client.clone());
    let mut ticks = tokio::time::interval(config.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let renewed = match write_status(&api, &config, &machine, &ready_since).await {
            Err(kube::Error::Api(s)) if s.is_not_found() => register(&client, &config, &machine, &ready_since).await,
            other => other,
        };
        if let Err(e) = renewed {
            tracing::warn!(error = %e, "cannot renew the Node's status; retrying at the next heartbeat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mk_config() -> Config {
        Config {
            node_name: "agimo-node".into(),
            node_ip: "10.244.0.1".parse().unwrap(),
            bridge: "agimo0".into(),
            pod_network: "10.244.0.0/16".parse().unwrap(),
            pod_ips: ("10.244.1.0".parse().unwrap(), "10.244.255.254".parse().unwrap()),
            programs: vec![],
            image_layouts: vec![],
            self_exe: "/usr/bin/agimo-node-agent".into(),
            state_dir: "/tmp/x".into(),
            logs_port: 10250,
            tls_cert: None,
            client_ca: None,
            api_server: "10.244.0.1:6443".parse().unwrap(),
            kubelet_version: "v1.36.3".into(),
            max_pods: 250,
            heartbeat: Duration::from_secs(10),
            dns: Default::default(),
        }
    }

    #[test]
    fn status_has_only_the_internal_ip_capacity_readiness_and_the_log_port() {
        let machine = Machine {
            cpus: 2,
            memory_kib: 1024,
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let since = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let now = Time("2026-01-01T00:01:00Z".parse().unwrap());
        let status = status(&mk_config(), &machine, &since, &now);
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses.len(), 1);
        assert_eq!((addresses[0].type_.as_str(), addresses[0].address.as_str()), ("InternalIP", "10.244.0.1"));
        let capacity = status.capacity.unwrap();
        assert_eq!(capacity["pods"], Quantity("250".into()));
        assert_eq!(capacity["cpu"], Quantity("2".into()));
        assert_eq!(capacity["memory"], Quantity("1024Ki".into()));
        assert_eq!(status.allocatable.unwrap(), capacity);
        let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(now));
        assert_eq!(ready.last_transition_time, Some(since));
        assert_eq!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
        assert_eq!(status.node_info.unwrap().kubelet_version, "v1.36.3");
    }

    #[test]
    fn node_is_labelled_like_a_kubelets() {
        let node = node(&mk_config());
        assert_eq!(node.metadata.labels.unwrap()["kubernetes.io/hostname"], "agimo-node");
        assert_eq!(node.spec.unwrap().pod_cidr.as_deref(), Some("10.244.0.0/16"));
    }
}
