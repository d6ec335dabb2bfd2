//! The two files the kubelet writes for every pod and mounts into each of
//! its containers: `/etc/resolv.conf`, from the pod's `dnsPolicy` and
//! `dnsConfig` and the node's cluster DNS (`--cluster-dns`,
//! `--cluster-domain`, `--resolv-conf`), and `/etc/hosts`, with the pod's
//! own name and address and its `hostAliases`. Both follow the kubelet's
//! `pkg/kubelet/network/dns` and `managedHostsFileContent`.
//!
//! ```text
//!   dnsPolicy ClusterFirst:  nameserver <cluster DNS>
//!                            search <ns>.svc.<domain> svc.<domain> <domain> <node's searches>
//!                            options ndots:5
//!   dnsPolicy Default:       the node's resolv.conf
//!   dnsPolicy None:          nothing but dnsConfig
//!   then dnsConfig:          nameservers and searches appended, options merged by name
//! ```

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;

/// Limits a resolver honours (glibc: 3 nameservers); the kubelet trims to
/// them and says so in an event.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// What the node knows about DNS: its kubelet flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDns {
    /// `--cluster-dns`: the cluster DNS Service's address(es).
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The node's own resolver configuration (`--resolv-conf`), as text;
    /// empty if the node has none.
    pub host: ResolvConf,
}

/// The parts of a resolv.conf that Kubernetes deals with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A pod's resolv.conf, and warnings for what was trimmed or ignored (the
/// kubelet publishes them as `DNSConfigForming` events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formed {
    pub text: String,
    pub warnings: Vec<String>,
}

impl ResolvConf {
    /// Reads `nameserver`, `search` (and `domain`) and `options` lines; the
    /// last `search`/`domain` line wins, as with glibc.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_owned)),
                Some("search" | "domain") => conf.searches = fields.map(str::to_owned).collect(),
                Some("options") => conf.options.extend(fields.map(str::to_owned)),
                _ => {}
            }
        }
        conf
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for server in &self.nameservers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// The resolv.conf of `pod` on a node with `node`.
pub fn resolv_conf(pod: &Pod, node: &NodeDns) -> Formed {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network == Some(true);
    let mut warnings = Vec::new();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        // A pod on the host's network with ClusterFirst uses the node's DNS.
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = match policy {
        "None" => ResolvConf::default(),
        _ if cluster_first && node.cluster_dns.is_empty() => {
            warnings.push(
                "pod's dnsPolicy is ClusterFirst but the node has no cluster DNS (--cluster-dns); \
                 falling back to the node's resolv.conf"
                    .to_owned(),
            );
            node.host.clone()
        }
        _ if cluster_first => {
            let domain = node.cluster_domain.trim_end_matches('.');
            let mut searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_owned()];
            searches.extend(node.host.searches.iter().filter(|s| !searches.contains(s)).cloned().collect::<Vec<_>>());
            ResolvConf {
                nameservers: node.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        _ => node.host.clone(),
    };
    if let Some(extra) = &spec.dns_config {
        for server in extra.nameservers.iter().flatten() {
            if !conf.nameservers.contains(server) {
                conf.nameservers.push(server.clone());
            }
        }
        for search in extra.searches.iter().flatten() {
            if !conf.searches.contains(search) {
                conf.searches.push(search.clone());
            }
        }
        for option in extra.options.iter().flatten() {
            let rendered = match &option.value {
                Some(value) => format!("{}:{value}", option.name.as_deref().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = |o: &str| o.split(':').next().unwrap_or_default().to_owned();
            let wanted = name(&rendered);
            conf.options.retain(|o| name(o) != wanted);
            conf.options.push(rendered);
        }
    }
    if conf.nameservers.len() > MAX_NAMESERVERS {
        warnings.push(format!(
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            conf.nameservers[..MAX_NAMESERVERS].join(" ")
        ));
        conf.nameservers.truncate(MAX_NAMESERVERS);
    }
    if conf.searches.len() > MAX_SEARCHES {
        warnings.push("Search Line limits were exceeded, some search paths have been omitted".to_owned());
        conf.searches.truncate(MAX_SEARCHES);
    }
    Formed { text: conf.render(), warnings }
}

/// The pod's hostname as the kubelet sets it: `spec.hostname`, else the
/// pod's name, cut to 63 characters without a trailing `-` or `.`.
pub fn hostname(pod: &Pod) -> String {
    let spec_name = pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty());
    let name = spec_name.unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

/// The pod's `/etc/hosts` (not for pods on the host's network, which see
/// the node's).
pub fn hosts_file(pod: &Pod, pod_ip: Ipv4Addr, cluster_domain: &str) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let hostname = hostname(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(subdomain) => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = cluster_domain.trim_end_matches('.');
            text.push_str(&format!("{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{domain}\t{hostname}\n"));
        }
        None => text.push_str(&format!("{pod_ip}\t{hostname}\n")),
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        text.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.unwrap_or_default();
            text.push_str(&format!("{}\t{}\n", alias.ip, names.join("\t")));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([]);
        serde_json::from_value(json!({"metadata": {"name": "web-7d9f", "namespace": "shop"}, "spec": spec})).unwrap()
    }

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: ResolvConf::parse("# the node's\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"),
        }
    }

    #[test]
    fn cluster_first_names_the_cluster_dns_and_the_search_path_of_the_namespace() {
        let formed = resolv_conf(&pod(json!({})), &node());
        assert_eq!(
            formed.text,
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
        assert!(formed.warnings.is_empty());
    }

    #[test]
    fn default_is_the_nodes_and_none_is_only_dns_config() {
        let text = resolv_conf(&pod(json!({"dnsPolicy": "Default"})), &node()).text;
        assert_eq!(text, "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n");
        let none = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["10.0.0.2"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(resolv_conf(&none, &node()).text, "nameserver 10.0.0.2\nsearch a.example\noptions ndots:2 edns0\n");
        // On the host's network, ClusterFirst is the node's DNS;
        // ClusterFirstWithHostNet is the cluster's.
        let host = resolv_conf(&pod(json!({"hostNetwork": true})), &node()).text;
        assert!(host.starts_with("nameserver 192.0.2.53\n"), "{host}");
        let with = resolv_conf(&pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})), &node());
        assert!(with.text.starts_with("nameserver 10.96.0.10\n"), "{}", with.text);
    }

    #[test]
    fn dns_config_appends_and_overrides_options_by_name() {
        let p = pod(json!({"dnsConfig": {
            "nameservers": ["10.96.0.10", "10.0.0.3"], "searches": ["svc.cluster.local", "x.example"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}]}}));
        assert_eq!(
            resolv_conf(&p, &node()).text,
            "nameserver 10.96.0.10\nnameserver 10.0.0.3\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example x.example\n\
             options ndots:1 single-request-reopen\n"
        );
    }

    #[test]
    fn too_many_nameservers_are_trimmed_with_a_warning() {
        let p = pod(json!({"dnsConfig": {"nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]}}));
        let formed = resolv_conf(&p, &node());
        assert_eq!(formed.text.matches("nameserver").count(), 3);
        assert!(!formed.text.contains("10.0.0.3"));
        assert_eq!(formed.warnings.len(), 1, "{:?}", formed.warnings);
    }

    #[test]
    fn without_cluster_dns_cluster_first_falls_back_to_the_node() {
        let node = NodeDns { cluster_dns: Vec::new(), ..node() };
        let formed = resolv_conf(&pod(json!({})), &node);
        assert!(formed.text.starts_with("nameserver 192.0.2.53\n"));
        assert_eq!(formed.warnings.len(), 1);
    }

    #[test]
    fn the_hosts_file_names_the_pod_and_its_aliases() {
        let ip = "10.244.1.7".parse().unwrap();
        let plain = hosts_file(&pod(json!({})), ip, "cluster.local");
        assert!(plain.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), "{plain}");
        assert!(plain.ends_with("fe00::2\tip6-allrouters\n10.244.1.7\tweb-7d9f\n"), "{plain}");
        let p = pod(json!({"hostname": "db-0", "subdomain": "db",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}));
        let text = hosts_file(&p, ip, "cluster.local.");
        assert!(
            text.ends_with(
                "10.244.1.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn hostnames_are_cut_to_a_dns_label() {
        let long = "a".repeat(62) + "-bcd";
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": long}, "spec": {"containers": []}})).unwrap();
        assert_eq!(hostname(&p), "a".repeat(62));
    }

    #[test]
    fn parses_a_resolv_conf() {
        let conf = ResolvConf::parse("domain old\nsearch a b ; comment\nnameserver 1.1.1.1\noptions rotate\n");
        assert_eq!(conf.searches, ["a", "b"]);
        assert_eq!(conf.nameservers, ["1.1.1.1"]);
        assert_eq!(conf.options, ["rotate"]);
    }
}
