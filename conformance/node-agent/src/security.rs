//! A container's securityContext as the kubelet and a container runtime
//! apply it, for a program that runs from the host's filesystem: the user
//! and groups it runs as, `runAsNonRoot`, `readOnlyRootFilesystem`, the
//! capability bounding set and `allowPrivilegeEscalation: false` (no new
//! privileges). [`Security::setpriv_args`] turns it into util-linux
//! `setpriv` options, which the container's start script
//! ([`crate::process::prelude`]) execs the program through.
//!
//! ```text
//!   pod.spec.securityContext ─┐
//!   container.securityContext ┴─▶ Security ──▶ setpriv --reuid --regid --groups --bounding-set --nnp
//!                                          └──▶ mount -o remount,bind,ro /   (readOnlyRootFilesystem)
//! ```
//!
//! A program that sets none of these runs as the agent does (root, every
//! capability), as before: no image says otherwise. A container run from an
//! OCI image ([`Security::of_image`]) runs as a runtime would run it: as the
//! image's `User` unless `runAsUser`/`runAsGroup` say otherwise (names
//! looked up in the image's own /etc/passwd and /etc/group), with the
//! groups the image's /etc/group gives that user, and containerd's default
//! capabilities unless `capabilities` or `privileged` change them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The capabilities a container runtime (containerd, CRI-O) gives a
/// container by default; `capabilities.add` and `drop` change this set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "net_raw",
    "setfcap",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// How a container's process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// `runAsUser`; `None`: root, as the agent runs.
    pub user: Option<u32>,
    /// `runAsGroup`, else the user's primary group on this machine (the
    /// programs' "image"), else 0; `None` when neither user nor group is set.
    pub group: Option<u32>,
    /// `supplementalGroups` and `fsGroup`; set only if the pod sets any.
    pub supplemental_groups: Option<Vec<u32>>,
    pub read_only_root: bool,
    /// The capability bounding set (names as setpriv spells them, e.g.
    /// `net_bind_service`); `None`: unrestricted.
    pub capabilities: Option<BTreeSet<String>>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
}

/// Why a container may not start; the kubelet reports these as
/// `CreateContainerConfigError`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})")]
    WouldRunAsRoot { pod: String, container: String },
    #[error("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")]
    RootUser { pod: String, container: String },
    #[error("{field} {value} is not a valid ID")]
    BadId { field: &'static str, value: i64 },
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod:?}, container: {container})"
    )]
    NonNumericUser { user: String, pod: String, container: String },
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

/// Who an image runs as unless the securityContext says otherwise: its
/// config's `User` (`uid`, `uid:gid`, `name`, `name:group`, or empty for
/// root) and the text of its /etc/passwd and /etc/group.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageUser<'a> {
    pub user: &'a str,
    pub passwd: &'a str,
    pub group: &'a str,
}

impl Security {
    /// The effective settings of `container` (its own securityContext over
    /// the pod's). `pod` names the pod in errors; `passwd` is the text of
    /// /etc/passwd, for the primary group of a `runAsUser` without
    /// `runAsGroup`.
    pub fn of(pod: &str, spec: &PodSpec, container: &Container, passwd: &str) -> Result<Security, SecurityError> {
        let p = spec.security_context.clone().unwrap_or_default();
        let c = container.security_context.clone().unwrap_or_default();
        let id = |field: &'static str, value: Option<i64>| -> Result<Option<u32>, SecurityError> {
            value.map(|v| u32::try_from(v).map_err(|_| SecurityError::BadId { field, value: v })).transpose()
        };
        let user = id("runAsUser", c.run_as_user.or(p.run_as_user))?;
        let group = id("runAsGroup", c.run_as_group.or(p.run_as_group))?;
        if c.run_as_non_root.or(p.run_as_non_root) == Some(true) {
            let names = || (pod.to_owned(), container.name.clone());
            match user {
                None => {
                    let (pod, container) = names();
                    return Err(SecurityError::WouldRunAsRoot { pod, container });
                }
                Some(0) => {
                    let (pod, container) = names();
                    return Err(SecurityError::RootUser { pod, container });
                }
                Some(_) => {}
            }
        }
        let group = match (user, group) {
            (_, Some(g)) => Some(g),
            (Some(u), None) => Some(primary_group(passwd, u).unwrap_or(0)),
            (None, None) => None,
        };
        let supplemental_groups = pod_groups(spec)?;
        let privileged = c.privileged == Some(true);
        let capabilities = match &c.capabilities {
            Some(caps) if !privileged => {
                bounding_set(caps.add.as_deref().unwrap_or_default(), caps.drop.as_deref().unwrap_or_default())
            }
            _ => None,
        };
        Ok(Security {
            user,
            group,
            supplemental_groups,
            read_only_root: c.read_only_root_filesystem == Some(true),
            capabilities,
            no_new_privs: c.allow_privilege_escalation == Some(false),
        })
    }

    /// The effective settings of `container` run from an image whose
    /// default user is `image`: `runAsUser` and `runAsGroup` win, else the
    /// image's user and group; a user without a group has its primary
    /// group in the image's /etc/passwd (else 0). Its groups are that
    /// group, the pod's `supplementalGroups` and `fsGroup`, and the groups
    /// the image's /etc/group lists the user in (the kubelet's default
    /// `Merge` policy). `runAsNonRoot` is checked as the kubelet checks it,
    /// before names are resolved: a user name cannot be verified. Without
    /// `capabilities` the bounding set is containerd's default one.
    pub fn of_image(
        pod: &str,
        spec: &PodSpec,
        container: &Container,
        image: &ImageUser<'_>,
    ) -> Result<Security, SecurityError> {
        let p = spec.security_context.clone().unwrap_or_default();
        let c = container.security_context.clone().unwrap_or_default();
        let id = |field: &'static str, value: Option<i64>| -> Result<Option<u32>, SecurityError> {
            value.map(|v| u32::try_from(v).map_err(|_| SecurityError::BadId { field, value: v })).transpose()
        };
        let run_as_user = id("runAsUser", c.run_as_user.or(p.run_as_user))?;
        let run_as_group = id("runAsGroup", c.run_as_group.or(p.run_as_group))?;
        let (image_user, image_group) = match image.user.split_once(':') {
            Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
            None => (image.user, None),
        };
        let numeric = image_user.parse::<u32>().ok();
        if c.run_as_non_root.or(p.run_as_non_root) == Some(true) {
            let (pod, container) = (pod.to_owned(), container.name.clone());
            match (run_as_user, numeric) {
                (Some(0), _) => return Err(SecurityError::RootUser { pod, container }),
                (Some(_), _) => {}
                (None, None) if !image_user.is_empty() => {
                    return Err(SecurityError::NonNumericUser { user: image_user.to_owned(), pod, container });
                }
                (None, Some(0) | None) => return Err(SecurityError::WouldRunAsRoot { pod, container }),
                (None, Some(_)) => {}
            }
        }
        let (user, image_gid) = match run_as_user {
            Some(uid) => (uid, None),
            None if image_user.is_empty() => (0, None),
            None => match numeric {
                Some(uid) => (uid, None),
                None => {
                    let (uid, gid) = passwd_entry(image.passwd, |name, _| name == image_user)
                        .map(|(_, uid, gid)| (uid, gid))
                        .ok_or_else(|| SecurityError::UnknownUser(image_user.to_owned()))?;
                    (uid, Some(gid))
                }
            },
        };
        let group = match (run_as_group, image_group.filter(|_| run_as_user.is_none())) {
            (Some(g), _) => g,
            (None, Some(g)) => match g.parse::<u32>() {
                Ok(g) => g,
                Err(_) => group_entries(image.group)
                    .find(|(name, _, _)| *name == g)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| SecurityError::UnknownGroup(g.to_owned()))?,
            },
            (None, None) => image_gid.or_else(|| primary_group(image.passwd, user)).unwrap_or(0),
        };
        let mut groups = vec![group];
        let name = passwd_entry(image.passwd, |_, uid| uid == user).map(|(name, _, _)| name);
        let member_of = group_entries(image.group)
            .filter(|(_, _, members)| name.is_some_and(|n| members.split(',').any(|m| m == n)))
            .map(|(_, gid, _)| gid);
        for g in pod_groups(spec)?.unwrap_or_default().into_iter().chain(member_of) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let capabilities = match (&c.capabilities, c.privileged == Some(true)) {
            (_, true) => None,
            (Some(caps), false) => {
                bounding_set(caps.add.as_deref().unwrap_or_default(), caps.drop.as_deref().unwrap_or_default())
            }
            (None, false) => bounding_set(&[], &[]),
        };
        Ok(Security {
            user: Some(user),
            group: Some(group),
            supplemental_groups: Some(groups),
            read_only_root: c.read_only_root_filesystem == Some(true),
            capabilities,
            no_new_privs: c.allow_privilege_escalation == Some(false),
        })
    }

    /// The options of `setpriv` that apply these settings, empty if there
    /// is nothing to change.
    pub fn setpriv_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(user) = self.user {
            args.push(format!("--reuid={user}"));
        }
        if let Some(group) = self.group {
            args.push(format!("--regid={group}"));
        }
        match &self.supplemental_groups {
            Some(groups) if !groups.is_empty() => {
                let list: Vec<String> = groups.iter().map(u32::to_string).collect();
                args.push(format!("--groups={}", list.join(",")));
            }
            // A new user or group must not keep root's groups.
            _ if self.user.is_some() || self.group.is_some() || self.supplemental_groups.is_some() => {
                args.push("--clear-groups".to_owned());
            }
            _ => {}
        }
        if let Some(caps) = &self.capabilities {
            // Root's permitted and effective sets become the bounding set at
            // exec; another user starts with none (no ambient capabilities,
            // as with containerd).
            let mut set = String::from("-all");
            for cap in caps {
                set.push_str(",+");
                set.push_str(cap);
            }
            args.push("--inh-caps=-all".to_owned());
            args.push(format!("--bounding-set={set}"));
        }
        if self.no_new_privs {
            args.push("--no-new-privs".to_owned());
        }
        args
    }
}

/// `CAP_NET_ADMIN` / `NET_ADMIN` → `net_admin`.
fn capability_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    lower.strip_prefix("cap_").map(str::to_owned).unwrap_or(lower)
}

/// The default set with `add` and without `drop` (`ALL` in either means
/// every capability); `None` if that is every capability.
fn bounding_set(add: &[String], drop: &[String]) -> Option<BTreeSet<String>> {
    let add: Vec<String> = add.iter().map(|c| capability_name(c)).collect();
    let drop: Vec<String> = drop.iter().map(|c| capability_name(c)).collect();
    if add.iter().any(|c| c == "all") {
        return None;
    }
    let mut set: BTreeSet<String> = if drop.iter().any(|c| c == "all") {
        BTreeSet::new()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).filter(|c| !drop.contains(c)).collect()
    };
    set.extend(add);
    Some(set)
}

/// The primary group of `uid` in /etc/passwd text.
pub fn primary_group(passwd: &str, uid: u32) -> Option<u32> {
    passwd_entry(passwd, |_, u| u == uid).map(|(_, _, gid)| gid)
}

/// The first /etc/passwd entry `(name, uid, gid)` for which `want(name, uid)`.
fn passwd_entry(passwd: &str, want: impl Fn(&str, u32) -> bool) -> Option<(&str, u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let (name, _, u, g) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let (u, g) = (u.parse::<u32>().ok()?, g.parse::<u32>().ok()?);
        want(name, u).then_some((name, u, g))
    })
}

/// The entries `(name, gid, members)` of /etc/group text.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    group.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let (name, _, g) = (fields.next()?, fields.next()?, fields.next()?);
        Some((name, g.parse().ok()?, fields.next().unwrap_or("")))
    })
}

/// The pod's `supplementalGroups` and `fsGroup`, if it sets any.
fn pod_groups(spec: &PodSpec) -> Result<Option<Vec<u32>>, SecurityError> {
    let p = spec.security_context.clone().unwrap_or_default();
    let mut groups: Vec<u32> = Vec::new();
    for g in p.supplemental_groups.iter().flatten().copied().chain(p.fs_group) {
        let g = u32::try_from(g).map_err(|_| SecurityError::BadId { field: "supplementalGroups", value: g })?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok((p.supplemental_groups.as_ref().is_some_and(|g| !g.is_empty()) || p.fs_group.is_some()).then_some(groups))
}

/// The user that owns files every container of the pod reads (the
/// kubelet's "FsUser"): the common `runAsUser` of all containers, if they
/// all set the same one.
pub fn fs_user(spec: &PodSpec) -> Option<u32> {
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_user));
    let first = users.next()??;
    users.all(|u| u == Some(first)).then(|| u32::try_from(first).ok()).flatten()
}

/// The pod's `fsGroup`.
pub fn fs_group(spec: &PodSpec) -> Option<u32> {
    spec.security_context.as_ref().and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          app:x:1000:1001::/home/app:/bin/sh\n";

    fn mk_spec(pod_security: serde_json::Value, container_security: serde_json::Value) -> PodSpec {
        serde_json::from_value(json!({
            "securityContext": pod_security,
            "containers": [{"name": "c", "securityContext": container_security}]
        }))
        .unwrap()
    }

    fn security(pod: serde_json::Value, container: serde_json::Value) -> Result<Security, SecurityError> {
        let spec = mk_spec(pod, container);
        Security::of("ns/p", &spec, &spec.containers[0], PASSWD)
    }

    #[test]
    fn without_a_security_context_nothing_changes() {
        let s = security(json!({}), json!({})).unwrap();
        assert_eq!(s, Security::default());
        assert!(s.setpriv_args().is_empty());
    }

    #[test]
    fn the_container_overrides_the_pod_and_the_group_comes_from_passwd() {
        let s = security(json!({"runAsUser": 1000, "runAsNonRoot": true}), json!({})).unwrap();
        assert_eq!((s.user, s.group), (Some(1000), Some(1001)), "app's primary group");
        assert_eq!(s.setpriv_args(), ["--reuid=1000", "--regid=1001", "--clear-groups"]);
        let s = security(json!({"runAsUser": 1000, "runAsGroup": 5}), json!({"runAsUser": 4242})).unwrap();
        assert_eq!((s.user, s.group), (Some(4242), Some(5)));
        // Unknown to /etc/passwd: group 0, as a runtime does.
        let s = security(json!({}), json!({"runAsUser": 4242})).unwrap();
        assert_eq!(s.group, Some(0));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let err = security(json!({"runAsNonRoot": true}), json!({})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container has runAsNonRoot and image will run as root (pod: \"ns/p\", container: c)"
        );
        let err = security(json!({}), json!({"runAsNonRoot": true, "runAsUser": 0})).unwrap_err();
        assert_eq!(err.to_string(), "container's runAsUser breaks non-root policy (pod: \"ns/p\", container: c)");
        // The container may lift the pod's rule.
        assert!(security(json!({"runAsNonRoot": true}), json!({"runAsNonRoot": false})).is_ok());
        assert!(matches!(security(json!({"runAsUser": -1}), json!({})), Err(SecurityError::BadId { .. })));
    }

    #[test]
    fn groups_capabilities_and_no_new_privs() {
        let s = security(
            json!({"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 2000, "supplementalGroups": [3000, 2000]}),
            json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                   "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CAP_KILL"]}}),
        )
        .unwrap();
        assert!(s.read_only_root);
        assert_eq!(
            s.setpriv_args(),
            [
                "--reuid=65532",
                "--regid=65532",
                "--groups=3000,2000",
                "--inh-caps=-all",
                "--bounding-set=-all,+kill,+net_bind_service",
                "--no-new-privs"
            ]
        );
        let s = security(json!({}), json!({"capabilities": {"drop": ["NET_RAW", "setuid"]}})).unwrap();
        let caps = s.capabilities.unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 2);
        assert!(!caps.contains("net_raw") && !caps.contains("setuid") && caps.contains("chown"));
        assert_eq!(security(json!({}), json!({"capabilities": {"add": ["ALL"]}})).unwrap().capabilities, None);
        let privileged = security(json!({}), json!({"privileged": true, "capabilities": {"drop": ["ALL"]}})).unwrap();
        assert_eq!(privileged.capabilities, None);
    }

    #[test]
    fn fs_user_is_the_user_every_container_shares() {
        let spec: PodSpec = serde_json::from_value(json!({
            "securityContext": {"runAsUser": 1000, "fsGroup": 7},
            "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 1000}}]
        }))
        .unwrap();
        assert_eq!((fs_user(&spec), fs_group(&spec)), (Some(1000), Some(7)));
        let spec: PodSpec = serde_json::from_value(json!({
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 1001}}]
        }))
        .unwrap();
        assert_eq!(fs_user(&spec), None);
        assert_eq!(fs_user(&mk_spec(json!({}), json!({}))), None);
    }

    const IMAGE_PASSWD: &str =
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n";
    const IMAGE_GROUP: &str = "root:x:0:\nnonroot:x:65532:\nextra:x:4000:nonroot,other\nwheel:x:10:root\n";

    fn image_security(
        pod: serde_json::Value,
        container: serde_json::Value,
        user: &str,
    ) -> Result<Security, SecurityError> {
        let spec = mk_spec(pod, container);
        let image = ImageUser { user, passwd: IMAGE_PASSWD, group: IMAGE_GROUP };
        Security::of_image("ns/p", &spec, &spec.containers[0], &image)
    }

    fn identity(s: &Security) -> (u32, u32, Vec<u32>) {
        (s.user.unwrap(), s.group.unwrap(), s.supplemental_groups.clone().unwrap())
    }

    #[test]
    fn an_image_runs_as_its_user_unless_the_security_context_says_otherwise() {
        // Numeric, names through the image's own files, and groups it lists the user in.
        assert_eq!(
            identity(&image_security(json!({}), json!({}), "65532:65532").unwrap()),
            (65532, 65532, vec![65532, 4000])
        );
        assert_eq!(
            identity(&image_security(json!({}), json!({}), "nonroot").unwrap()),
            (65532, 65532, vec![65532, 4000])
        );
        assert_eq!(
            identity(&image_security(json!({}), json!({}), "nonroot:extra").unwrap()),
            (65532, 4000, vec![4000])
        );
        assert_eq!(
            identity(&image_security(json!({}), json!({}), "65532:wheel").unwrap()),
            (65532, 10, vec![10, 4000])
        );
        // Unknown to the image's passwd: group 0. No user: root.
        assert_eq!(identity(&image_security(json!({}), json!({}), "1234").unwrap()), (1234, 0, vec![0]));
        assert_eq!(identity(&image_security(json!({}), json!({}), "").unwrap()), (0, 0, vec![0, 10]));
        // runAsUser and runAsGroup win; the pod's groups come before the image's.
        let s = image_security(
            json!({"runAsUser": 1000, "supplementalGroups": [3000], "fsGroup": 2000}),
            json!({}),
            "nonroot:extra",
        )
        .unwrap();
        assert_eq!(identity(&s), (1000, 0, vec![0, 3000, 2000]));
        let s =
            image_security(json!({"runAsGroup": 3000, "supplementalGroups": [4000]}), json!({}), "nonroot").unwrap();
        assert_eq!(identity(&s), (65532, 3000, vec![3000, 4000]));
        assert_eq!(
            image_security(json!({}), json!({}), "nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            image_security(json!({}), json!({}), "nonroot:staff").unwrap_err().to_string(),
            "unable to find group staff: no matching entries in group file"
        );
    }

    #[test]
    fn run_as_non_root_checks_the_image_user_as_the_kubelet_does() {
        let non_root = json!({"runAsNonRoot": true});
        assert_eq!(
            image_security(non_root.clone(), json!({}), "nonroot").unwrap_err().to_string(),
            "container has runAsNonRoot and image has non-numeric user (nonroot), cannot verify user is non-root \
             (pod: \"ns/p\", container: c)"
        );
        assert!(matches!(
            image_security(non_root.clone(), json!({}), "nonroot:65532"),
            Err(SecurityError::NonNumericUser { .. })
        ));
        assert!(matches!(image_security(non_root.clone(), json!({}), ""), Err(SecurityError::WouldRunAsRoot { .. })));
        assert!(matches!(
            image_security(non_root.clone(), json!({}), "0:65532"),
            Err(SecurityError::WouldRunAsRoot { .. })
        ));
        assert!(matches!(
            image_security(non_root.clone(), json!({"runAsUser": 0}), "65532"),
            Err(SecurityError::RootUser { .. })
        ));
        assert_eq!(image_security(non_root.clone(), json!({}), "65532:65532").unwrap().user, Some(65532));
        // A numeric runAsUser makes a named image user fine.
        assert_eq!(image_security(non_root, json!({"runAsUser": 65532}), "nonroot").unwrap().user, Some(65532));
    }

    #[test]
    fn an_image_gets_the_runtimes_default_capabilities() {
        let caps = |container: serde_json::Value| image_security(json!({}), container, "").unwrap().capabilities;
        let default: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(caps(json!({})), Some(default));
        assert_eq!(caps(json!({"capabilities": {"drop": ["ALL"]}})), Some(BTreeSet::new()));
        assert_eq!(caps(json!({"privileged": true})), None);
        let s =
            image_security(json!({}), json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}), "")
                .unwrap();
        assert!(s.read_only_root && s.no_new_privs);
    }

    #[test]
    fn reads_primary_groups() {
        assert_eq!(primary_group(PASSWD, 65534), Some(65534));
        assert_eq!(primary_group(PASSWD, 1000), Some(1001));
        assert_eq!(primary_group(PASSWD, 7), None);
        assert_eq!(primary_group("garbage\n::x:\n", 0), None);
    }
}
