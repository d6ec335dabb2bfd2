//! A container's environment, resolved as the kubelet does: the variables
//! every container gets ([`kubelet_vars`]: `HOSTNAME`, the API server's
//! `KUBERNETES_SERVICE_HOST` and `_PORT`), then `envFrom`, then `env` in
//! order (a later name overrides an earlier one), literal values with
//! `$(VAR)` references to variables defined before them expanded,
//! `valueFrom` from the downward API (`fieldRef`), Secrets and ConfigMaps.
//! Values naming a path under a volumeMount are also rewritten to where the
//! agent materialised that volume ([`rewrite_path`]; the mountPath itself
//! works too, see [`crate::volumes`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::token::TokenKey;

/// The Secrets and ConfigMaps of the pod's namespace that the pod
/// references, as fetched; a name that is absent was not found.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub config_maps: HashMap<String, BTreeMap<String, Vec<u8>>>,
    /// Service account tokens of the pod's projected volumes.
    pub tokens: HashMap<TokenKey, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ConfigMap,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        })
    }
}

impl Sources {
    /// The data of a Secret or ConfigMap: `Ok(None)` if it is missing and
    /// `optional`, an error if it is missing and required.
    pub fn object(
        &self,
        kind: Kind,
        name: &str,
        optional: bool,
    ) -> Result<Option<&BTreeMap<String, Vec<u8>>>, EnvError> {
        let objects = match kind {
            Kind::Secret => &self.secrets,
            Kind::ConfigMap => &self.config_maps,
        };
        match objects.get(name) {
            Some(data) => Ok(Some(data)),
            None if optional => Ok(None),
            None => Err(EnvError::NotFound { kind, name: name.to_owned() }),
        }
    }

    /// One key of a Secret or ConfigMap, with the same `optional` rule.
    pub fn key(&self, kind: Kind, name: &str, key: &str, optional: bool) -> Result<Option<&[u8]>, EnvError> {
        match self.object(kind, name, optional)? {
            None => Ok(None),
            Some(data) => match data.get(key) {
                Some(value) => Ok(Some(value)),
                None if optional => Ok(None),
                None => Err(EnvError::KeyNotFound { kind, name: name.to_owned(), key: key.to_owned() }),
            },
        }
    }
}

/// Why a container's environment (or a volume) cannot be resolved; shown
/// in the pod's events and in its container status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("key {key:?} not found in {kind} {name:?}")]
    KeyNotFound { kind: Kind, name: String, key: String },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("unsupported fieldPath {0:?}")]
    FieldPath(String),
    #[error("env {0}: only fieldRef, secretKeyRef and configMapKeyRef are supported in valueFrom")]
    UnsupportedSource(String),
    #[error("no service account token for audience {0:?}")]
    NoToken(String),
}

/// What the downward API can tell about a pod.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
}

impl PodFacts<'_> {
    /// The value of a `fieldRef` path (the paths the kubelet supports).
    pub fn field(&self, path: &str) -> Result<String, EnvError> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let text = |s: Option<&String>| s.cloned().unwrap_or_default();
        let subscript = |prefix: &str| path.strip_prefix(prefix).and_then(|rest| rest.strip_suffix("']"));
        Ok(match path {
            "metadata.name" => text(meta.name.as_ref()),
            "metadata.namespace" => text(meta.namespace.as_ref()),
            "metadata.uid" => text(meta.uid.as_ref()),
            "metadata.labels" => lines(meta.labels.as_ref()),
            "metadata.annotations" => lines(meta.annotations.as_ref()),
            "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
            "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
            "status.podIP" | "status.podIPs" => self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            _ => {
                if let Some(key) = subscript("metadata.labels['") {
                    text(meta.labels.as_ref().and_then(|l| l.get(key)))
                } else if let Some(key) = subscript("metadata.annotations['") {
                    text(meta.annotations.as_ref().and_then(|a| a.get(key)))
                } else {
                    return Err(EnvError::FieldPath(path.to_owned()));
                }
            }
        })
    }
}

/// `key="value"` lines, as the downward API writes all labels or annotations.
fn lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

/// What the kubelet and the runtime give every container before its own
/// env: `HOSTNAME` (the pod's name) and the API server as pods reach it
/// (the `kubernetes` Service's variables, which in-cluster clients read).
pub fn kubelet_vars(hostname: &str, api_server: SocketAddr) -> Vec<(String, String)> {
    let (host, port) = (api_server.ip().to_string(), api_server.port().to_string());
    vec![
        ("HOSTNAME".to_owned(), hostname.to_owned()),
        ("KUBERNETES_SERVICE_HOST".to_owned(), host),
        ("KUBERNETES_SERVICE_PORT".to_owned(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port),
    ]
}

/// The container's environment: `base` (overridable, and usable in
/// `$(VAR)` references), then the container's, in definition order.
pub fn resolve(
    container: &Container,
    facts: &PodFacts<'_>,
    sources: &Sources,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, EnvError> {
    let mut vars: Vec<(String, String)> = base.to_vec();
    let mut index: HashMap<String, usize> = base.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
    let mut set = |vars: &mut Vec<(String, String)>, name: String, value: String| match index.get(&name) {
        Some(&i) => vars[i].1 = value,
        None => {
            index.insert(name.clone(), vars.len());
            vars.push((name, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let mut objects = Vec::new();
        if let Some(r) = &from.config_map_ref {
            objects.push((Kind::ConfigMap, r.name.as_str(), r.optional.unwrap_or(false)));
        }
        if let Some(r) = &from.secret_ref {
            objects.push((Kind::Secret, r.name.as_str(), r.optional.unwrap_or(false)));
        }
        for (kind, name, optional) in objects {
            for (key, value) in sources.object(kind, name, optional)?.into_iter().flatten() {
                let var = format!("{prefix}{key}");
                // The kubelet skips keys that are not valid variable names.
                if valid_name(&var) {
                    let value = utf8(value, || format!("{kind} {name:?} key {key:?}"))?;
                    set(&mut vars, var, value);
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let defined: HashMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(var.value.as_deref().unwrap_or(""), |name| defined.get(name).copied())
            }
            Some(from) => {
                let reference = if let Some(f) = &from.field_ref {
                    set(&mut vars, var.name.clone(), facts.field(&f.field_path)?);
                    continue;
                } else if let Some(r) = &from.secret_key_ref {
                    (Kind::Secret, &r.name, &r.key, r.optional.unwrap_or(false))
                } else if let Some(r) = &from.config_map_key_ref {
                    (Kind::ConfigMap, &r.name, &r.key, r.optional.unwrap_or(false))
                } else {
                    return Err(EnvError::UnsupportedSource(var.name.clone()));
                };
                let (kind, name, key, optional) = reference;
                match sources.key(kind, name, key, optional)? {
                    Some(value) => utf8(value, || format!("{kind} {name:?} key {key:?}"))?,
                    // An optional reference that does not resolve sets nothing.
                    None => continue,
                }
            }
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(vars)
}

fn utf8(value: &[u8], what: impl FnOnce() -> String) -> Result<String, EnvError> {
    String::from_utf8(value.to_vec()).map_err(|_| EnvError::NotUtf8 { what: what() })
}

/// Whether an `envFrom` key can be a variable name: printable ASCII without
/// `=` (what the API server accepts for `env` names).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

/// Expands `$(NAME)` references with `lookup`; `$$` is a literal `$`; a
/// reference that does not resolve stays as written (the kubelet's rules).
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The arguments of the program that stands in for the container's image
/// entrypoint: `command[1..]` (the program takes the place of
/// `command[0]`), then `args`, with `$(VAR)` references to `env` expanded
/// and paths under `mounts` rewritten.
pub fn program_args(container: &Container, env: &[(String, String)], mounts: &[(String, PathBuf)]) -> Vec<String> {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let words = container.command.iter().flatten().skip(1).chain(container.args.iter().flatten());
    words.map(|a| rewrite_path(&expand(a, lookup), mounts)).collect()
}

/// Rewrites `value` if it names a path at or under one of `mounts`
/// (mountPath → the directory the agent materialised the volume in); the
/// longest mountPath wins. Other values are returned unchanged.
pub fn rewrite_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut best: Option<(&str, &Path, &str)> = None;
    for (mount_path, dir) in mounts {
        let mount_path = mount_path.trim_end_matches('/');
        if mount_path.is_empty() {
            continue; // a mount at `/` would capture every absolute path
        }
        let Some(rest) = value.strip_prefix(mount_path) else { continue };
        if (rest.is_empty() || rest.starts_with('/')) && best.is_none_or(|(m, _, _)| m.len() < mount_path.len()) {
            best = Some((mount_path, dir, rest));
        }
    }
    match best {
        Some((_, dir, rest)) => format!("{}{rest}", dir.display()),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn mk_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-7d9", "namespace": "apps", "uid": "0c7e-11",
                         "labels": {"app": "web", "tier": "front"}, "annotations": {"note": "a \"b\""}},
            "spec": {"nodeName": "agimo-node", "serviceAccountName": "default", "containers": []}
        }))
        .unwrap()
    }

    fn mk_container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "image": "echo-basic", "env": env})).unwrap()
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts { pod, pod_ip: Some("10.244.1.7".parse().unwrap()), host_ip: "10.244.0.1".parse().unwrap() }
    }

    fn mk_sources() -> Sources {
        let mut sources = Sources::default();
        sources.secrets.insert("creds".into(), BTreeMap::from([("token".into(), b"s3cret".to_vec())]));
        sources.config_maps.insert(
            "settings".into(),
            BTreeMap::from([("LEVEL".into(), b"debug".to_vec()), ("bad=name".into(), b"x".to_vec())]),
        );
        sources
    }

    #[test]
    fn resolves_literals_field_refs_and_key_refs_in_order() {
        let pod = mk_pod();
        let container = mk_container(json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {"name": "URL", "value": "http://$(POD_IP):3000/$(UNKNOWN)/$$(POD_IP)"},
            {"name": "EMPTY"},
        ]));
        let env = resolve(&container, &facts(&pod), &mk_sources(), &[]).unwrap();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("web-7d9"));
        assert_eq!(get("NAMESPACE"), Some("apps"));
        assert_eq!(get("POD_IP"), Some("10.244.1.7"));
        assert_eq!(get("HOST_IP"), Some("10.244.0.1"));
        assert_eq!(get("NODE"), Some("agimo-node"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("LEVEL"), Some("debug"));
        assert_eq!(get("URL"), Some("http://10.244.1.7:3000/$(UNKNOWN)/$(POD_IP)"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(env[0].0, "POD_NAME", "definition order is kept");
    }

    #[test]
    fn env_from_comes_first_and_env_overrides_it() {
        let pod = mk_pod();
        let mut container = mk_container(json!([{"name": "CFG_LEVEL", "value": "info"}]));
        container.env_from = Some(vec![
            serde_json::from_value(json!({"prefix": "CFG_", "configMapRef": {"name": "settings"}})).unwrap(),
            serde_json::from_value(json!({"secretRef": {"name": "missing", "optional": true}})).unwrap(),
        ]);
        let env = resolve(&container, &facts(&pod), &mk_sources(), &[]).unwrap();
        // `bad=name` cannot be a variable and is skipped.
        assert_eq!(env, vec![("CFG_LEVEL".to_owned(), "info".to_owned())]);
    }

    #[test]
    fn missing_required_references_are_errors_and_optional_ones_set_nothing() {
        let pod = mk_pod();
        let sources = mk_sources();
        let err = |env| resolve(&mk_container(env), &facts(&pod), &sources, &[]).unwrap_err().to_string();
        assert_eq!(
            err(json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}])),
            "Secret \"nope\" not found"
        );
        assert_eq!(
            err(json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}])),
            "key \"nope\" not found in ConfigMap \"settings\""
        );
        assert_eq!(
            err(json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}])),
            "unsupported fieldPath \"status.phase\""
        );
        assert_eq!(
            err(json!([{"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}])),
            "env A: only fieldRef, secretKeyRef and configMapKeyRef are supported in valueFrom"
        );
        let optional = mk_container(json!([
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
        ]));
        assert_eq!(resolve(&optional, &facts(&pod), &sources, &[]).unwrap(), vec![]);
    }

    #[test]
    fn every_container_finds_the_api_server_and_may_override_or_reference_it() {
        let pod = mk_pod();
        let base = kubelet_vars("web-7d9", "10.244.0.1:6443".parse().unwrap());
        let container = mk_container(json!([
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "HOSTNAME", "value": "mine"},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
        ]));
        let env = resolve(&container, &facts(&pod), &mk_sources(), &base).unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("HOSTNAME", "mine"),
                ("KUBERNETES_SERVICE_HOST", "10.244.0.1"),
                ("KUBERNETES_SERVICE_PORT", "6443"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
                ("API", "https://10.244.0.1:6443"),
                ("UID", "0c7e-11"),
                ("SA", "default"),
                ("NOTE", "a \"b\""),
            ]
        );
    }

    #[test]
    fn downward_api_formats_all_labels_and_annotations() {
        let pod = mk_pod();
        let facts = facts(&pod);
        assert_eq!(facts.field("metadata.labels").unwrap(), "app=\"web\"\ntier=\"front\"\n");
        assert_eq!(facts.field("metadata.annotations").unwrap(), "note=\"a \\\"b\\\"\"\n");
        assert_eq!(facts.field("metadata.annotations['none']").unwrap(), "");
        assert_eq!(facts.field("metadata.uid").unwrap(), "0c7e-11");
    }

    #[test]
    fn expands_like_the_kubelet() {
        let lookup = |name: &str| match name {
            "A" => Some("1"),
            "EMPTY" => Some(""),
            _ => None,
        };
        assert_eq!(expand("$(A)-$(EMPTY)-$(B)", lookup), "1--$(B)");
        assert_eq!(expand("$$(A) $$ $ $(A", lookup), "$(A) $ $ $(A");
        assert_eq!(expand("no refs", lookup), "no refs");
        assert_eq!(expand("tail$", lookup), "tail$");
    }

    #[test]
    fn the_program_replaces_the_first_word_of_command() {
        let env = vec![("PORT".to_owned(), "8080".to_owned())];
        let mounts = vec![("/etc/cfg".to_owned(), PathBuf::from("/state/pod/volumes/cfg"))];
        let container = |extra: serde_json::Value| -> Container {
            let mut c = json!({"name": "c"});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(c).unwrap()
        };
        // The Helm chart's way: args only.
        let agimo = container(json!({"args": ["run", "--admin-address=0.0.0.0:$(PORT)"]}));
        assert_eq!(program_args(&agimo, &env, &mounts), ["run", "--admin-address=0.0.0.0:8080"]);
        let shell = container(json!({"command": ["sh", "-c"], "args": ["echo $(cat /x) $(PORT)"]}));
        assert_eq!(program_args(&shell, &env, &mounts), ["-c", "echo $(cat /x) 8080"]);
        let both = container(json!({"command": ["/agimo", "run"], "args": ["/etc/cfg/file"]}));
        assert_eq!(program_args(&both, &env, &mounts), ["run", "/state/pod/volumes/cfg/file"]);
        assert!(program_args(&container(json!({})), &env, &mounts).is_empty());
    }

    #[test]
    fn rewrites_paths_under_mounts_to_their_directories() {
        let mounts = vec![
            ("/etc/secret-volume".to_owned(), PathBuf::from("/state/pod/volumes/secret-volume")),
            ("/etc/secret-volume/nested/".to_owned(), PathBuf::from("/state/pod/volumes/nested")),
            ("/".to_owned(), PathBuf::from("/state/pod/volumes/root")),
        ];
        assert_eq!(rewrite_path("/etc/secret-volume/crt", &mounts), "/state/pod/volumes/secret-volume/crt");
        assert_eq!(rewrite_path("/etc/secret-volume", &mounts), "/state/pod/volumes/secret-volume");
        assert_eq!(rewrite_path("/etc/secret-volume/nested/key", &mounts), "/state/pod/volumes/nested/key");
        assert_eq!(rewrite_path("/etc/secret-volume2/crt", &mounts), "/etc/secret-volume2/crt");
        assert_eq!(rewrite_path("relative/etc/secret-volume", &mounts), "relative/etc/secret-volume");
        assert_eq!(rewrite_path("1", &mounts), "1");
    }
}
