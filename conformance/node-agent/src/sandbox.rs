//! A pod's network, made by running `ip`: a network namespace
//! `agimo-pod-<uid>` and a veth pair, the host end `agp<uid>` on the bridge
//! (in the agent's own network namespace, in hairpin mode), the pod end
//! `eth0` with the pod's address, the bridge's address as default gateway,
//! and `lo` up. Names use
//! the first 12 hex digits of the pod UID (an interface name has at most 15
//! characters).

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Config;

pub const NETNS_PREFIX: &str = "agimo-pod-";
pub const VETH_PREFIX: &str = "agp";

/// A pod's network namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
}

/// The network namespace and host veth names of the pod with `uid`.
pub fn names(uid: &str) -> (String, String) {
    let short: String = uid.chars().filter(char::is_ascii_hexdigit).take(12).collect::<String>().to_ascii_lowercase();
    (format!("{NETNS_PREFIX}{short}"), format!("{VETH_PREFIX}{short}"))
}

/// Creates the pod's namespace and veth pair with address `ip` (removing
/// leftovers of an earlier attempt first); on failure nothing is left.
pub async fn create(config: &Config, uid: &str, ip: Ipv4Addr) -> Result<Sandbox, String> {
    let (netns, veth) = names(uid);
    destroy(&netns, &veth).await;
    let made = async {
        run_ip(&["netns", "add", &netns], None).await?;
        run_ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns], None).await?;
        run_ip(&["link", "set", "dev", &veth, "master", &config.bridge, "up"], None).await?;
        // Hairpin: a pod that reaches a Service's ClusterIP may be sent back
        // to itself by kube-proxy, out of the port it came in by (the
        // kubelet's hairpin-veth mode does the same).
        run_ip(&["link", "set", "dev", &veth, "type", "bridge_slave", "hairpin", "on"], None).await?;
        let inside = format!(
            "link set lo up\naddr add {ip}/{prefix} dev eth0\nlink set eth0 up\nroute add default via {gateway} dev eth0\n",
            prefix = config.pod_network.prefix_len(),
            gateway = config.node_ip,
        );
        run_ip(&["-n", &netns, "-batch", "-"], Some(&inside)).await?;
        Ok(Sandbox { netns: netns.clone(), veth: veth.clone(), ip })
    }
    .await;
    if made.is_err() {
        destroy(&netns, &veth).await;
    }
    made
}

/// Removes a pod's namespace and veth, killing whatever still runs in the
/// namespace (only processes this agent started live there). Missing parts
/// are fine.
pub async fn destroy(netns: &str, veth: &str) {
    if let Ok(pids) = output_ip(&["netns", "pids", netns]).await {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status().await;
        }
    }
    let _ = run_ip(&["link", "del", veth], None).await;
    let _ = run_ip(&["netns", "delete", netns], None).await;
}

/// Removes every pod namespace and veth an earlier run of the agent left;
/// returns how many it removed.
pub async fn destroy_leftovers() -> usize {
    let namespaces = output_ip(&["netns", "list"]).await.unwrap_or_default();
    let links = output_ip(&["-o", "link", "show", "type", "veth"]).await.unwrap_or_default();
    let namespaces = ours(&namespaces, NETNS_PREFIX, netns_names);
    let veths = ours(&links, VETH_PREFIX, link_names);
    for netns in &namespaces {
        let veth = netns.replacen(NETNS_PREFIX, VETH_PREFIX, 1);
        destroy(netns, &veth).await;
    }
    let mut removed = namespaces.len();
    for veth in &veths {
        // Most went with their namespace's other end.
        if run_ip(&["link", "del", veth], None).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

fn ours(listing: &str, prefix: &str, parse: fn(&str) -> Vec<String>) -> Vec<String> {
    parse(listing)
        .into_iter()
        .filter(|n| {
            n.strip_prefix(prefix).is_some_and(|rest| rest.len() == 12 && rest.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .collect()
}

/// Names in `ip netns list` output (`name (id: 3)` or `name`).
fn netns_names(listing: &str) -> Vec<String> {
    listing.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// Names in `ip -o link show` output (`12: agp0123@if2: <...`).
fn link_names(listing: &str) -> Vec<String> {
    listing.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_owned()).collect()
}

async fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    output_with_stdin(args, stdin).await.map(drop)
}

async fn output_ip(args: &[&str]) -> Result<String, String> {
    output_with_stdin(args, None).await
}

async fn output_with_stdin(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let describe = || format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", describe()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(|e| format!("{}: {e}", describe()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("{}: {e}", describe()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}", describe(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let (netns, veth) = names("8C1A7F1E-3b2d-4c5e-9f00-0123456789ab");
        assert_eq!(netns, "agimo-pod-8c1a7f1e3b2d");
        assert_eq!(veth, "agp8c1a7f1e3b2d");
        assert!(veth.len() <= 15);
    }

    #[test]
    fn finds_only_our_leftovers() {
        let netns = "agimo-pod-8c1a7f1e3b2d (id: 1)\nagimo\nagimo-pod-short\nother-8c1a7f1e3b2d\n";
        assert_eq!(ours(netns, NETNS_PREFIX, netns_names), ["agimo-pod-8c1a7f1e3b2d"]);
        let links = "5: agp8c1a7f1e3b2d@if2: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue master agimo0\n\
                     6: vethx@if2: <BROADCAST> mtu 1500\n7: agp0123@if2: <BROADCAST> mtu 1500\n";
        assert_eq!(ours(links, VETH_PREFIX, link_names), ["agp8c1a7f1e3b2d"]);
    }
}
