//! Volumes, materialised as directories under the pod's directory: Secret,
//! ConfigMap, downward API and projected volumes become files (service
//! account tokens included, see [`crate::token`]), emptyDir an empty
//! directory anyone may write, hostPath stays where it is. Each container
//! sees them at their mountPaths through bind mounts in its own mount
//! namespace ([`bind_mounts`], done by [`crate::process::prelude`]); env
//! values naming a path under a mountPath are still rewritten to the
//! volume's directory as well ([`crate::env::rewrite_path`] with the table
//! [`mounts`] builds), which holds the same files.
//!
//! ```text
//!   Secret / ConfigMap / TokenRequest / downward API ─▶ plan ─▶ Content ─▶ write ─▶ <pod>/volumes/<name>/…
//!                                                                                  └─ bind mount ─▶ mountPath
//! ```
//!
//! File ownership follows the kubelet: with `fsGroup`, files belong to that
//! group and are group-readable; a service account token is private (0600)
//! to the user every container runs as, if they share one, or to `fsGroup`
//! (0640). A required Secret or ConfigMap (or key) that is missing, in a
//! projected volume too, is an error: the pod waits for it.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use crate::env::{EnvError, Kind, PodFacts, Sources};
use crate::process::Mount;

/// One file of a volume; `path` is relative to the volume's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// Owner and group; `None`: the agent's (root).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl File {
    fn new(path: impl Into<String>, data: Vec<u8>, mode: u32, owner: Ownership) -> File {
        // fsGroup: the group owns the file and may read it.
        let mode = if owner.fs_group.is_some() { mode | 0o040 } else { mode };
        File { path: path.into(), data, mode, uid: None, gid: owner.fs_group }
    }
}

/// What a volume becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A directory holding these files.
    Files(Vec<File>),
    /// An empty directory every user may write (emptyDir).
    EmptyDir,
    /// An existing host directory, used in place.
    HostPath(PathBuf),
}

/// Who owns the files of the pod's volumes (see the module's docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The `runAsUser` all containers share, if they do.
    pub fs_user: Option<u32>,
    pub fs_group: Option<u32>,
}

impl Ownership {
    pub fn of(pod: &Pod) -> Ownership {
        let spec = pod.spec.clone().unwrap_or_default();
        Ownership { fs_user: crate::security::fs_user(&spec), fs_group: crate::security::fs_group(&spec) }
    }
}

/// The default file mode of Secret, ConfigMap and downward API volumes.
const DEFAULT_MODE: i32 = 0o644;

/// What `volume` becomes, and a note for things left out. A required
/// Secret or ConfigMap (or key) that is missing is an error: the pod waits
/// for it, as with a kubelet.
pub fn plan(
    volume: &Volume,
    facts: &PodFacts<'_>,
    sources: &Sources,
    owner: Ownership,
) -> Result<(Content, Option<String>), EnvError> {
    let mode = |m: Option<i32>| m.unwrap_or(DEFAULT_MODE) as u32 & 0o777;
    if let Some(s) = &volume.secret {
        let name = s.secret_name.as_deref().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let files = key_files(sources, Kind::Secret, name, s.items.as_deref(), optional, mode(s.default_mode), owner)?;
        return Ok((Content::Files(files), None));
    }
    if let Some(c) = &volume.config_map {
        let optional = c.optional.unwrap_or(false);
        let files =
            key_files(sources, Kind::ConfigMap, &c.name, c.items.as_deref(), optional, mode(c.default_mode), owner)?;
        return Ok((Content::Files(files), None));
    }
    if let Some(d) = &volume.downward_api {
        let mut files = Vec::new();
        for item in d.items.iter().flatten() {
            if let Some(f) = &item.field_ref {
                let data = facts.field(&f.field_path)?.into_bytes();
                files.push(File::new(&item.path, data, mode(item.mode.or(d.default_mode)), owner));
            }
        }
        return Ok((Content::Files(files), None));
    }
    if let Some(p) = &volume.projected {
        let mut files = Vec::new();
        let default_mode = mode(p.default_mode);
        for source in p.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                let optional = s.optional.unwrap_or(false);
                files.extend(key_files(
                    sources,
                    Kind::Secret,
                    &s.name,
                    s.items.as_deref(),
                    optional,
                    default_mode,
                    owner,
                )?);
            }
            if let Some(c) = &source.config_map {
                let optional = c.optional.unwrap_or(false);
                files.extend(key_files(
                    sources,
                    Kind::ConfigMap,
                    &c.name,
                    c.items.as_deref(),
                    optional,
                    default_mode,
                    owner,
                )?);
            }
            for item in source.downward_api.iter().flat_map(|d| d.items.iter().flatten()) {
                if let Some(f) = &item.field_ref {
                    let data = facts.field(&f.field_path)?.into_bytes();
                    files.push(File::new(&item.path, data, mode(item.mode.or(p.default_mode)), owner));
                }
            }
        }
        files.extend(token_files(volume, sources, owner)?);
        let note = p
            .sources
            .iter()
            .flatten()
            .any(|s| s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some())
            .then(|| "clusterTrustBundle and podCertificate sources are left out".to_owned());
        return Ok((Content::Files(files), note));
    }
    if let Some(h) = &volume.host_path {
        return Ok((Content::HostPath(PathBuf::from(&h.path)), None));
    }
    let note = (volume.empty_dir.is_none()).then(|| "unsupported volume type; an empty directory instead".to_owned());
    Ok((Content::EmptyDir, note))
}

/// The service account token files of a projected volume, with the tokens
/// in `sources` (requested before planning).
pub fn token_files(volume: &Volume, sources: &Sources, owner: Ownership) -> Result<Vec<File>, EnvError> {
    let Some(p) = &volume.projected else { return Ok(Vec::new()) };
    let mut files = Vec::new();
    for projection in p.sources.iter().flatten().filter_map(|s| s.service_account_token.as_ref()) {
        let key = crate::token::TokenKey::of(projection);
        let token = sources.tokens.get(&key).ok_or_else(|| EnvError::NoToken(key.audience.clone()))?;
        // Private to the pod's user or group when there is one (the
        // kubelet's rule), else the volume's mode.
        let private = owner.fs_user.is_some() || owner.fs_group.is_some();
        let mode = if private { 0o600 } else { p.default_mode.unwrap_or(DEFAULT_MODE) as u32 & 0o777 };
        let mut file = File::new(&projection.path, token.clone().into_bytes(), mode, owner);
        file.uid = owner.fs_user;
        files.push(file);
    }
    Ok(files)
}

fn key_files(
    sources: &Sources,
    kind: Kind,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
    owner: Ownership,
) -> Result<Vec<File>, EnvError> {
    let Some(data) = sources.object(kind, name, optional)? else { return Ok(Vec::new()) };
    let Some(items) = items else {
        return Ok(data.iter().map(|(k, v)| File::new(k, v.clone(), default_mode, owner)).collect());
    };
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => {
                let mode = item.mode.map_or(default_mode, |m| m as u32 & 0o777);
                files.push(File::new(&item.path, v.clone(), mode, owner));
            }
            None if optional => {}
            None => return Err(EnvError::KeyNotFound { kind, name: name.to_owned(), key: item.key.clone() }),
        }
    }
    Ok(files)
}

/// Writes a planned volume into `dir` (replacing what an earlier attempt
/// left there).
pub fn write(dir: &Path, content: &Content) -> io::Result<()> {
    let files = match content {
        Content::Files(files) => files.as_slice(),
        Content::EmptyDir => &[],
        Content::HostPath(_) => return Ok(()),
    };
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    if *content == Content::EmptyDir {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
    }
    for file in files {
        let path = file_path(dir, file)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        write_file(&path, file)?;
    }
    Ok(())
}

/// Replaces `files` in a volume already in use: each is written beside its
/// old version and renamed over it, so a reader sees the old or the new
/// file, never a part. (The directory itself must stay: containers have it
/// mounted.)
pub fn replace(dir: &Path, files: &[File]) -> io::Result<()> {
    for file in files {
        let path = file_path(dir, file)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = path.with_file_name(format!("..{name}.new"));
        write_file(&staged, file)?;
        fs::rename(&staged, &path)?;
    }
    Ok(())
}

fn file_path(dir: &Path, file: &File) -> io::Result<PathBuf> {
    let relative = Path::new(&file.path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("volume path {:?} leaves its volume", file.path),
        ));
    }
    Ok(dir.join(relative))
}

fn write_file(path: &Path, file: &File) -> io::Result<()> {
    fs::write(path, &file.data)?;
    if file.uid.is_some() || file.gid.is_some() {
        std::os::unix::fs::chown(path, file.uid, file.gid)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(file.mode))
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

/// Each of the container's volumeMounts as a bind mount: the directory
/// (or, with a subPath, the directory or file) on the host, the mountPath,
/// and whether it is read-only (`readOnly`, and always for Secret,
/// ConfigMap, downward API and projected volumes, as the kubelet mounts
/// them).
pub fn bind_mounts(container: &Container, volumes: &[Volume], volumes_dir: &Path) -> Vec<Mount> {
    let sources = mounts(container, volumes, volumes_dir);
    container
        .volume_mounts
        .iter()
        .flatten()
        .zip(sources)
        .map(|(m, (target, source))| {
            let volume = volumes.iter().find(|v| v.name == m.name);
            let api_data = volume.is_some_and(|v| {
                v.secret.is_some() || v.config_map.is_some() || v.downward_api.is_some() || v.projected.is_some()
            });
            Mount { file: source.is_file(), source, target, read_only: m.read_only == Some(true) || api_data }
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
        plan_owned(v, Ownership::default())
    }

    fn plan_owned(v: serde_json::Value, owner: Ownership) -> Result<(Content, Option<String>), EnvError> {
        let pod = mk_pod(json!({"containers": []}));
        let facts = PodFacts { pod: &pod, pod_ip: None, host_ip: "10.244.0.1".parse().unwrap() };
        plan(&mk_volume(v), &facts, &mk_sources(), owner)
    }

    fn file(path: &str, data: &[u8], mode: u32) -> File {
        File { path: path.into(), data: data.to_vec(), mode, uid: None, gid: None }
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

    /// The volume the ServiceAccount admission adds to every pod.
    fn kube_api_access(extra: serde_json::Value) -> serde_json::Value {
        let mut sources = vec![
            json!({"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}),
            json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
            json!({"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}),
        ];
        sources.extend(extra.as_array().cloned().unwrap_or_default());
        json!({"name": "kube-api-access-x", "projected": {"defaultMode": 0o644, "sources": sources}})
    }

    fn with_root_ca(mut sources: Sources) -> Sources {
        sources.config_maps.insert("kube-root-ca.crt".into(), BTreeMap::from([("ca.crt".into(), b"ROOT".to_vec())]));
        sources.tokens.insert(
            crate::token::TokenKey { audience: String::new(), expiration_seconds: 3607 },
            "eyJhbGciOi".to_owned(),
        );
        sources
    }

    #[test]
    fn the_service_account_volume_has_token_ca_and_namespace() {
        let pod = mk_pod(json!({"containers": []}));
        let facts = PodFacts { pod: &pod, pod_ip: None, host_ip: "10.244.0.1".parse().unwrap() };
        let sources = with_root_ca(mk_sources());
        let volume = mk_volume(kube_api_access(json!([])));
        let (content, note) = plan(&volume, &facts, &sources, Ownership::default()).unwrap();
        assert_eq!(
            content,
            Content::Files(vec![
                file("ca.crt", b"ROOT", 0o644),
                file("namespace", b"infra", 0o644),
                file("token", b"eyJhbGciOi", 0o644),
            ])
        );
        assert_eq!(note, None);
        // A pod whose containers all run as 1000 with fsGroup 2000: the
        // token is theirs alone, other files readable by the group.
        let owner = Ownership { fs_user: Some(1000), fs_group: Some(2000) };
        let (Content::Files(files), _) = plan(&volume, &facts, &sources, owner).unwrap() else { panic!("files") };
        let token = files.iter().find(|f| f.path == "token").unwrap();
        assert_eq!((token.mode, token.uid, token.gid), (0o640, Some(1000), Some(2000)));
        let ca = files.iter().find(|f| f.path == "ca.crt").unwrap();
        assert_eq!((ca.mode, ca.uid, ca.gid), (0o644, None, Some(2000)));
        let owner = Ownership { fs_user: Some(1000), fs_group: None };
        let tokens = token_files(&volume, &sources, owner).unwrap();
        assert_eq!((tokens[0].mode, tokens[0].uid, tokens[0].gid), (0o600, Some(1000), None));
    }

    #[test]
    fn projected_volumes_wait_for_required_sources() {
        // kube-root-ca.crt is not published yet: the pod waits, as with a kubelet.
        let err = plan_of(kube_api_access(json!([]))).unwrap_err();
        assert_eq!(err.to_string(), "ConfigMap \"kube-root-ca.crt\" not found");
        let optional = json!({"name": "p", "projected": {"sources": [
            {"configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"secret": {"name": "later", "optional": true}}]}});
        let (content, _) = plan_of(optional).unwrap();
        assert_eq!(content, Content::Files(vec![file("ca.crt", b"CA", 0o644)]));
    }

    #[test]
    fn empty_dirs_are_writable_by_anyone() {
        let (content, note) = plan_of(json!({"name": "tmp", "emptyDir": {}})).unwrap();
        assert_eq!((content.clone(), note), (Content::EmptyDir, None));
        let dir = std::env::temp_dir().join(format!("agimo-node-agent-emptydir-{}", std::process::id()));
        write(&dir, &content).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o777);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replacing_files_keeps_the_directory() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("agimo-node-agent-replace-{}", std::process::id()));
        write(&dir, &Content::Files(vec![file("token", b"old", 0o644), file("ca.crt", b"CA", 0o644)])).unwrap();
        let inode = fs::metadata(&dir).unwrap().ino();
        replace(&dir, &[file("token", b"new", 0o600)]).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().ino(), inode, "a bind mount of the directory still sees it");
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"new");
        assert_eq!(fs::metadata(dir.join("token")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), b"CA");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "nothing staged is left");
        fs::remove_dir_all(&dir).unwrap();
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
    fn bind_mounts_are_read_only_for_api_data_and_when_asked() {
        let pod = mk_pod(json!({
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "host", "mountPath": "/data", "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": []}},
                        {"name": "tmp", "emptyDir": {}}, {"name": "host", "hostPath": {"path": "/srv"}}]
        }));
        let spec = pod.spec.as_ref().unwrap();
        let mounts = bind_mounts(&spec.containers[0], spec.volumes.as_deref().unwrap(), Path::new("/pods/x/volumes"));
        let summary: Vec<(&str, &Path, bool)> =
            mounts.iter().map(|m| (m.target.as_str(), m.source.as_path(), m.read_only)).collect();
        assert_eq!(
            summary,
            [
                ("/var/run/secrets/kubernetes.io/serviceaccount", Path::new("/pods/x/volumes/kube-api-access-x"), true),
                ("/tmp", Path::new("/pods/x/volumes/tmp"), false),
                ("/data", Path::new("/srv"), true),
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
