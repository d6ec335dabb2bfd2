//! Volumes, materialised as plain directories under the pod's directory,
//! since nothing can be mounted: Secret, ConfigMap and downward API volumes
//! become files, emptyDir an empty directory, hostPath stays where it is. A
//! program finds a volume through env values under its mountPath, rewritten
//! by [`crate::env::rewrite_path`] with the table [`mounts`] builds.
//!
//! Projected volumes are the service account's (`kube-api-access-…`) in
//! practice: their Secret, ConfigMap and downward API sources are written
//! when they resolve and skipped when not, and tokens are not written.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use crate::env::{EnvError, Kind, PodFacts, Sources};

/// One file of a volume; `path` is relative to the volume's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What a volume becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A directory holding these files.
    Files(Vec<File>),
    /// An existing host directory, used in place.
    HostPath(PathBuf),
}

/// The default file mode of Secret, ConfigMap and downward API volumes.
const DEFAULT_MODE: i32 = 0o644;

/// What `volume` becomes, and a note for things left out. A required
/// Secret or ConfigMap (or key) that is missing is an error: the pod waits
/// for it, as with a kubelet.
pub fn plan(volume: &Volume, facts: &PodFacts<'_>, sources: &Sources) -> Result<(Content, Option<String>), EnvError> {
    let mode = |m: Option<i32>| m.unwrap_or(DEFAULT_MODE) as u32 & 0o777;
    if let Some(s) = &volume.secret {
        let name = s.secret_name.as_deref().unwrap_or_default();
        let files = key_files(
            sources,
            Kind::Secret,
            name,
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            mode(s.default_mode),
        )?;
        return Ok((Content::Files(files), None));
    }
    if let Some(c) = &volume.config_map {
        let files = key_files(
            sources,
            Kind::ConfigMap,
            &c.name,
            c.items.as_deref(),
            c.optional.unwrap_or(false),
            mode(c.default_mode),
        )?;
        return Ok((Content::Files(files), None));
    }
    if let Some(d) = &volume.downward_api {
        let mut files = Vec::new();
        for item in d.items.iter().flatten() {
            if let Some(f) = &item.field_ref {
                let data = facts.field(&f.field_path)?.into_bytes();
                files.push(File { path: item.path.clone(), data, mode: mode(item.mode.or(d.default_mode)) });
            }
        }
        return Ok((Content::Files(files), None));
    }
    if let Some(p) = &volume.projected {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for source in p.sources.iter().flatten() {
            let default_mode = mode(p.default_mode);
            let refs = [
                source.secret.as_ref().map(|s| (Kind::Secret, &s.name, s.items.as_deref())),
                source.config_map.as_ref().map(|c| (Kind::ConfigMap, &c.name, c.items.as_deref())),
            ];
            for (kind, name, items) in refs.into_iter().flatten() {
                match key_files(sources, kind, name, items, false, default_mode) {
                    Ok(more) => files.extend(more),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            for item in source.downward_api.iter().flat_map(|d| d.items.iter().flatten()) {
                if let Some(f) = &item.field_ref {
                    let data = facts.field(&f.field_path)?.into_bytes();
                    files.push(File { path: item.path.clone(), data, mode: mode(item.mode.or(p.default_mode)) });
                }
            }
            if source.service_account_token.is_some() {
                skipped.push("service account token".to_owned());
            }
        }
        let note = (!skipped.is_empty()).then(|| format!("left out of projected volume: {}", skipped.join(", ")));
        return Ok((Content::Files(files), note));
    }
    if let Some(h) = &volume.host_path {
        return Ok((Content::HostPath(PathBuf::from(&h.path)), None));
    }
    let note = (volume.empty_dir.is_none()).then(|| "unsupported volume type; an empty directory instead".to_owned());
    Ok((Content::Files(Vec::new()), note))
}

fn key_files(
    sources: &Sources,
    kind: Kind,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
) -> Result<Vec<File>, EnvError> {
    let Some(data) = sources.object(kind, name, optional)? else { return Ok(Vec::new()) };
    let Some(items) = items else {
        return Ok(data.iter().map(|(k, v)| File { path: k.clone(), data: v.clone(), mode: default_mode }).collect());
    };
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => files.push(File {
                path: item.path.clone(),
                data: v.clone(),
                mode: item.mode.map_or(default_mode, |m| m as u32 & 0o777),
            }),
            None if optional => {}
            None => return Err(EnvError::KeyNotFound { kind, name: name.to_owned(), key: item.key.clone() }),
        }
    }
    Ok(files)
}

/// Writes a planned volume into `dir` (replacing what an earlier attempt
/// left there).
pub fn write(dir: &Path, content: &Content) -> io::Result<()> {
    let Content::Files(files) = content else { return Ok(()) };
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    for file in files {
        let relative = Path::new(&file.path);
        if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("volume path {:?} leaves its volume", file.path),
            ));
        }
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &file.data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

/// Where each of the container's volumeMounts lives on the host:
/// `(mountPath, directory)`, for [`crate::env::rewrite_path`].
pub fn mounts(container: &Container, volumes: &[Volume], volumes_dir: &Path) -> Vec<(String, PathBuf)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let host_path = volumes.iter().find(|v| v.name == m.name).and_then(|v| v.host_path.as_ref());
            let base = match host_path {
                Some(h) => PathBuf::from(&h.path),
                None => volumes_dir.join(&m.name),
            };
            let dir = match m.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => base.join(sub),
                _ => base,
            };
            (m.mount_path.clone(), dir)
        })
        .collect()
}

/// The Secrets and ConfigMaps a pod references (volumes and environments of
/// all its containers), to fetch before planning.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    let Some(spec) = &pod.spec else { return (secrets, config_maps) };
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(name);
        }
        if let Some(c) = &volume.config_map {
            config_maps.insert(c.name.clone());
        }
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
            config_maps.extend(source.config_map.as_ref().map(|c| c.name.clone()));
        }
    }
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for from in container.env_from.iter().flatten() {
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
        }
        for source in container.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
            config_maps.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    (secrets, config_maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn mk_pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "tls-backend-1", "namespace": "infra"}, "spec": spec}))
            .unwrap()
    }

    fn mk_volume(v: serde_json::Value) -> Volume {
        serde_json::from_value(v).unwrap()
    }

    fn mk_sources() -> Sources {
        let mut sources = Sources::default();
        sources.secrets.insert(
            "tls".into(),
            BTreeMap::from([("tls.crt".into(), b"CERT".to_vec()), ("tls.key".into(), b"KEY".to_vec())]),
        );
        sources.config_maps.insert("ca".into(), BTreeMap::from([("ca.crt".into(), b"CA".to_vec())]));
        sources
    }

    fn plan_of(v: serde_json::Value) -> Result<(Content, Option<String>), EnvError> {
        let pod = mk_pod(json!({"containers": []}));
        let facts = PodFacts { pod: &pod, pod_ip: None, host_ip: "10.244.0.1".parse().unwrap() };
        plan(&mk_volume(v), &facts, &mk_sources())
    }

    fn file(path: &str, data: &[u8], mode: u32) -> File {
        File { path: path.into(), data: data.to_vec(), mode }
    }

    #[test]
    fn secret_items_become_files_at_their_paths() {
        let (content, note) = plan_of(json!({"name": "secret-volume", "secret": {"secretName": "tls",
            "items": [{"key": "tls.crt", "path": "crt"}, {"key": "tls.key", "path": "key", "mode": 0o600}]}}))
        .unwrap();
        assert_eq!(content, Content::Files(vec![file("crt", b"CERT", 0o644), file("key", b"KEY", 0o600)]));
        assert_eq!(note, None);
    }

    #[test]
    fn without_items_every_key_is_a_file() {
        let (content, _) = plan_of(json!({"name": "v", "configMap": {"name": "ca", "defaultMode": 0o400}})).unwrap();
        assert_eq!(content, Content::Files(vec![file("ca.crt", b"CA", 0o400)]));
    }

    #[test]
    fn missing_required_sources_are_errors_and_optional_ones_empty() {
        let err = plan_of(json!({"name": "v", "secret": {"secretName": "later"}})).unwrap_err();
        assert_eq!(err.to_string(), "Secret \"later\" not found");
        let err =
            plan_of(json!({"name": "v", "secret": {"secretName": "tls", "items": [{"key": "ca.crt", "path": "ca"}]}}))
                .unwrap_err();
        assert_eq!(err.to_string(), "key \"ca.crt\" not found in Secret \"tls\"");
        let (content, _) = plan_of(json!({"name": "v", "secret": {"secretName": "later", "optional": true}})).unwrap();
        assert_eq!(content, Content::Files(vec![]));
    }

    #[test]
    fn projected_volumes_write_what_resolves() {
        let (content, note) = plan_of(json!({"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
        ]}}))
        .unwrap();
        assert_eq!(content, Content::Files(vec![file("ca.crt", b"CA", 0o644), file("namespace", b"infra", 0o644)]));
        assert_eq!(
            note.as_deref(),
            Some("left out of projected volume: service account token, ConfigMap \"kube-root-ca.crt\" not found")
        );
    }

    #[test]
    fn writes_files_and_refuses_paths_that_escape() {
        let dir = std::env::temp_dir().join(format!("agimo-node-agent-volumes-{}", std::process::id()));
        let content = Content::Files(vec![file("a/b/crt", b"CERT", 0o600)]);
        write(&dir, &content).unwrap();
        assert_eq!(fs::read(dir.join("a/b/crt")).unwrap(), b"CERT");
        assert_eq!(fs::metadata(dir.join("a/b/crt")).unwrap().permissions().mode() & 0o777, 0o600);
        // A second attempt starts clean.
        write(&dir, &Content::Files(vec![file("other", b"", 0o644)])).unwrap();
        assert!(!dir.join("a").exists());
        assert!(write(&dir, &Content::Files(vec![file("../escape", b"", 0o644)])).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_point_at_volume_directories_or_host_paths() {
        let pod = mk_pod(json!({
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "secret-volume", "mountPath": "/etc/secret-volume"},
                {"name": "host", "mountPath": "/host", "subPath": "sub"}]}],
            "volumes": [{"name": "secret-volume", "secret": {"secretName": "tls"}}, {"name": "host", "hostPath": {"path": "/srv"}}]
        }));
        let spec = pod.spec.as_ref().unwrap();
        let mounts = mounts(&spec.containers[0], spec.volumes.as_deref().unwrap(), Path::new("/pods/x/volumes"));
        assert_eq!(
            mounts,
            vec![
                ("/etc/secret-volume".to_owned(), PathBuf::from("/pods/x/volumes/secret-volume")),
                ("/host".to_owned(), PathBuf::from("/srv/sub")),
            ]
        );
    }

    #[test]
    fn finds_every_referenced_secret_and_config_map() {
        let pod = mk_pod(json!({
            "containers": [{"name": "c",
                "envFrom": [{"configMapRef": {"name": "cm-env"}}],
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "s-vol"}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "cm-proj"}}]}}]
        }));
        let (secrets, config_maps) = referenced(&pod);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["s-env", "s-vol"]);
        assert_eq!(config_maps.into_iter().collect::<Vec<_>>(), ["cm-env", "cm-proj"]);
    }
}
