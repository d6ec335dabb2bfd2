//! A container run from an OCI image, as containerd and runc would run it.
//! The agent works out what the container runs ([`build`]: the Kubernetes
//! rules for `command`, `args` and the image's Entrypoint and Cmd, the
//! image's Env under the container's, the working directory, the user from
//! the securityContext or the image) into a [`Spec`], writes it as JSON and
//! starts the agent's own binary in the pod's network namespace, where the
//! hidden subcommand `enter` ([`main`]) sets the container up and becomes
//! its program:
//!
//! ```text
//!   ip netns exec agimo-pod-<uid> agimo-node-agent enter --spec <container dir>/spec.json
//!     mount --make-rprivate /                      (ip netns exec gave us a mount namespace)
//!     mount -t overlay  lowerdir=<image rootfs>,upperdir=<dir>/upper,workdir=<dir>/work  <dir>/root
//!     /proc (proc), /dev (tmpfs: null zero full random urandom tty bound from the host,
//!       pts, shm, fd and std* links), /sys (sysfs, read-only); /proc/sys and co. read-only
//!       and /proc/kcore and co. masked unless privileged
//!     mount --bind each volume (and extra file) at its path inside the root; ro if asked
//!     pivot_root <dir>/root; the old root detached; / read-only for readOnlyRootFilesystem
//!     chdir WORKINGDIR; no_new_privs; bounding set; setgroups, setgid, setuid; caps of root
//!     exec PROGRAM with exactly the container's environment
//! ```
//!
//! The image's root filesystem is only ever the overlay's lower layer, so it
//! stays pristine, and each container start gets a fresh writable layer.
//! The process keeps its pid from `ip` to the program (every step execs), so
//! the agent's signals, exits and probes reach it; `nsenter --mount` (exec
//! probes) lands in the container's root, since pivot_root made it the
//! namespace's. Paths inside the root (mount points, the working directory)
//! are resolved with the root as `/`, so an image's symlink cannot point a
//! mount outside it. A failure prints `agimo-node-agent: …` and exits with
//! [`START_ERROR`], as the `sh` prelude of programs does.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container as ContainerSpec, PodSpec};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};

use crate::image::{self, ImageConfig, Pulled};
use crate::process::{self, START_ERROR};
use crate::security::{ImageUser, Security};

/// A bind mount into the container: `source` on the host at `target`
/// inside the container's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// The source is a file: the mount point is an (empty) file.
    pub file: bool,
}

impl From<&process::Mount> for BindMount {
    fn from(m: &process::Mount) -> BindMount {
        BindMount { source: m.source.clone(), target: m.target.clone(), read_only: m.read_only, file: m.file }
    }
}

/// Everything `enter` needs, written by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The image's unpacked root filesystem: the overlay's lower layer.
    pub image_rootfs: PathBuf,
    /// The container's directory: `upper/` and `work/` (its writable
    /// layer) and `root/`, where the overlay is mounted.
    pub dir: PathBuf,
    pub read_only_root: bool,
    /// Volumes and extra files, in any order (parents are mounted first).
    pub mounts: Vec<BindMount>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory inside the container (absolute).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The capability bounding set (`net_bind_service`, …); `None`: all.
    pub capabilities: Option<BTreeSet<String>>,
    pub no_new_privs: bool,
    /// Mask and make read-only what runtimes hide in /proc and /sys (not
    /// for privileged containers).
    pub mask_paths: bool,
}

/// A container to be run from `image`, as the agent knows it.
#[derive(Clone, Copy, Debug)]
pub struct Container<'a> {
    /// `namespace/name` of the pod, for messages.
    pub pod: &'a str,
    pub pod_spec: &'a PodSpec,
    pub container: &'a ContainerSpec,
    /// The container's environment as [`crate::env::resolve`] gives it.
    pub env: &'a [(String, String)],
    /// Its volumes (and any extra files) as bind mounts.
    pub mounts: &'a [process::Mount],
    pub image: &'a Pulled,
    /// The container's directory (see [`Spec::dir`]).
    pub dir: &'a Path,
}

/// A container worked out: the spec for `enter`, and what probes need to
/// know of it.
#[derive(Clone, Debug)]
pub struct Built {
    pub spec: Spec,
    pub security: Security,
    /// The environment the program gets (the image's, then the container's).
    pub env: Vec<(String, String)>,
}

/// Works out what `container` runs and as whom; an error is a
/// configuration error (the container waits with
/// `CreateContainerConfigError`).
pub fn build(c: &Container<'_>) -> Result<Built, String> {
    let config = &c.image.config;
    let rootfs = &c.image.rootfs;
    let read =
        |path: &str| image::read_in_root(rootfs, path).map_err(|e| format!("cannot read {path} of the image: {e}"));
    let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
    let user = ImageUser { user: config.user.as_deref().unwrap_or(""), passwd: &passwd, group: &group };
    let security = Security::of_image(c.pod, c.pod_spec, c.container, &user).map_err(|e| e.to_string())?;
    let argv = command_line(config, c.container, c.env);
    if argv.is_empty() {
        return Err("no command specified: the image has no Entrypoint or Cmd and the container no command".to_owned());
    }
    let cwd = c
        .container
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .or(config.working_dir.as_deref().filter(|d| !d.is_empty()))
        .unwrap_or("/")
        .to_owned();
    if !cwd.starts_with('/') {
        return Err(format!("the working directory {cwd:?} is not an absolute path"));
    }
    if let Some(caps) = &security.capabilities {
        for name in caps {
            capability(name)?;
        }
    }
    let env = merge_env(config.env.as_deref().unwrap_or_default(), c.env);
    let privileged = c.container.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
    let spec = Spec {
        image_rootfs: rootfs.clone(),
        dir: c.dir.to_owned(),
        read_only_root: security.read_only_root,
        mounts: c.mounts.iter().map(BindMount::from).collect(),
        argv,
        env: env.clone(),
        cwd,
        uid: security.user.unwrap_or(0),
        gid: security.group.unwrap_or(0),
        groups: security.supplemental_groups.clone().unwrap_or_default(),
        capabilities: security.capabilities.clone(),
        no_new_privs: security.no_new_privs,
        mask_paths: !privileged,
    };
    Ok(Built { spec, security, env })
}

/// What the container runs, by the Kubernetes rules: a `command` replaces
/// the image's Entrypoint and Cmd (`args` follow it); `args` alone replace
/// the Cmd; neither runs Entrypoint and Cmd. `$(VAR)` references in
/// `command` and `args` are expanded with the container's `env`.
pub fn command_line(image: &ImageConfig, container: &ContainerSpec, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let expand = |words: &Option<Vec<String>>| -> Vec<String> {
        words.iter().flatten().map(|w| crate::env::expand(w, lookup)).collect()
    };
    let (command, args) = (expand(&container.command), expand(&container.args));
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    if !command.is_empty() {
        [command, args].concat()
    } else if !args.is_empty() {
        [entrypoint, args].concat()
    } else {
        [entrypoint, image.cmd.clone().unwrap_or_default()].concat()
    }
}

/// The program's environment: a default `PATH`, then the image's `Env`
/// (`NAME=value`), then the container's; a later value of a name replaces
/// the earlier one in place (as containerd merges them).
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![("PATH".to_owned(), process::PATH.to_owned())];
    let image = image.iter().map(|kv| kv.split_once('=').map_or((kv.as_str(), ""), |(k, v)| (k, v)));
    for (name, value) in image.chain(container.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        match env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => env.push((name.to_owned(), value.to_owned())),
        }
    }
    env
}

/// `net_bind_service` → `CAP_NET_BIND_SERVICE`.
fn capability(name: &str) -> Result<caps::Capability, String> {
    format!("CAP_{}", name.to_ascii_uppercase()).parse().map_err(|_| format!("unknown capability {name:?}"))
}

impl Spec {
    /// Writes the spec where `enter --spec` reads it (only root may read
    /// it: the environment may hold secrets).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::remove_file(path);
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }
}

/// The `enter` subcommand: sets the container of the spec at `path` up
/// and execs its program; on failure prints why and exits with
/// [`START_ERROR`].
pub fn main(path: &Path) -> ! {
    let loaded = fs::read(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|data| serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display())));
    let Err(error) = loaded.and_then(|spec: Spec| enter(&spec));
    eprintln!("agimo-node-agent: {error}");
    std::process::exit(START_ERROR)
}

/// Sets up and execs; returns only with the reason it could not.
fn enter(spec: &Spec) -> Result<Infallible, String> {
    // Mounts made here must never propagate back to the host (and
    // pivot_root wants private mounts).
    remount(Path::new("/"), MsFlags::MS_REC | MsFlags::MS_PRIVATE, "cannot make the mounts private")?;
    let root = root_filesystem(spec)?;
    system_mounts(&root, spec.mask_paths)?;
    let mut mounts: Vec<&BindMount> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in mounts {
        let target = if m.file { file_in_root(&root, &m.target)? } else { dir_in_root(&root, &m.target)? };
        bind(&m.source, &target, &format!("{} at {}", m.source.display(), m.target))?;
        if m.read_only {
            read_only(&target, &m.target)?;
        }
    }
    // Made while the root is still writable, as runc makes it.
    dir_in_root(&root, &spec.cwd)?;
    pivot(&root)?;
    if spec.read_only_root {
        read_only(Path::new("/"), "the root filesystem")?;
    }
    nix::unistd::chdir(spec.cwd.as_str())
        .map_err(|e| format!("cannot change to the working directory {}: {e}", spec.cwd))?;
    identity(spec)?;
    let Some((program, args)) = spec.argv.split_first() else { return Err("no command specified".to_owned()) };
    let error =
        std::process::Command::new(program).args(args).env_clear().envs(spec.env.iter().map(|(k, v)| (k, v))).exec();
    Err(format!("cannot run {program:?}: {error}"))
}

/// Mounts the overlay of the image's root filesystem and the container's
/// writable layer; returns the mount point.
fn root_filesystem(spec: &Spec) -> Result<PathBuf, String> {
    let (upper, work, root) = (spec.dir.join("upper"), spec.dir.join("work"), spec.dir.join("root"));
    for dir in [&upper, &work, &root] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let layers = [&spec.image_rootfs, &upper, &work];
    if let Some(bad) = layers.iter().find(|p| p.to_string_lossy().contains([',', ':'])) {
        return Err(format!("{} cannot be an overlay layer (`,` or `:` in the path)", bad.display()));
    }
    let options =
        format!("lowerdir={},upperdir={},workdir={}", spec.image_rootfs.display(), upper.display(), work.display());
    mount(Some("overlay"), &root, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| format!("cannot mount the image's root filesystem (overlay {options}): {e}"))?;
    Ok(root)
}

/// /proc, /dev and /sys inside `root`, as runc mounts them.
fn system_mounts(root: &Path, mask_paths: bool) -> Result<(), String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = dir_in_root(root, "/proc")?;
    mount_fs("proc", &proc, nosuid_nodev_noexec, None, "/proc")?;
    let dev = dir_in_root(root, "/dev")?;
    mount_fs("tmpfs", &dev, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, Some("mode=755,size=65536k"), "/dev")?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| format!("cannot create /dev/{name}: {e}"))?;
        bind(&Path::new("/dev").join(name), &target, &format!("/dev/{name}"))?;
    }
    for (name, fstype, flags, options) in [
        ("pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
        ("shm", "tmpfs", nosuid_nodev_noexec, "mode=1777,size=65536k"),
    ] {
        let target = dev.join(name);
        fs::create_dir(&target).map_err(|e| format!("cannot create /dev/{name}: {e}"))?;
        mount_fs(fstype, &target, flags, Some(options), &format!("/dev/{name}"))?;
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(|e| format!("cannot create /dev/{name}: {e}"))?;
    }
    let sys = dir_in_root(root, "/sys")?;
    mount_fs("sysfs", &sys, nosuid_nodev_noexec | MsFlags::MS_RDONLY, None, "/sys")?;
    if mask_paths {
        mask(root)?;
    }
    Ok(())
}

/// containerd's default read-only and masked paths.
fn mask(root: &Path) -> Result<(), String> {
    for path in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
        let target = root.join(&path[1..]);
        if target.exists() {
            bind(&target, &target, path)?;
            read_only(&target, path)?;
        }
    }
    for path in [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        let target = root.join(&path[1..]);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => mount_fs("tmpfs", &target, MsFlags::MS_RDONLY, None, path)?,
            Ok(_) => bind(Path::new("/dev/null"), &target, path)?,
            Err(_) => {}
        }
    }
    Ok(())
}

fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, options: Option<&str>, what: &str) -> Result<(), String> {
    mount(Some(fstype), target, Some(fstype), flags, options)
        .map_err(|e| format!("cannot mount {fstype} at {what}: {e}"))
}

fn bind(source: &Path, target: &Path, what: &str) -> Result<(), String> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("cannot mount {what}: {e}"))
}

fn remount(target: &Path, flags: MsFlags, failure: &str) -> Result<(), String> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| format!("{failure}: {e}"))
}

/// Makes the mount at `target` read-only, keeping its nosuid, nodev and
/// noexec.
fn read_only(target: &Path, what: &str) -> Result<(), String> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = statvfs(target) {
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if st.flags().contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    remount(target, flags, &format!("cannot make {what} read-only"))
}

/// A directory at `path` inside `root` (created if missing).
fn dir_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let dir = image::path_in_root(root, path).map_err(|e| format!("cannot resolve {path} in the image: {e}"))?;
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create the mount point {path}: {e}"))?;
    Ok(dir)
}

/// A file at `path` inside `root` (created empty if missing).
fn file_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let file = image::path_in_root(root, path).map_err(|e| format!("cannot resolve {path} in the image: {e}"))?;
    if fs::symlink_metadata(&file).is_err() {
        let created = match file.parent() {
            Some(parent) => fs::create_dir_all(parent).and_then(|()| fs::File::create(&file).map(drop)),
            None => Ok(()),
        };
        created.map_err(|e| format!("cannot create the mount point {path}: {e}"))?;
    }
    Ok(file)
}

/// Makes `root` the root of this mount namespace and detaches the old one.
fn pivot(root: &Path) -> Result<(), String> {
    let fail = |step: &str, e: nix::Error| format!("cannot enter the container's root filesystem ({step}): {e}");
    nix::unistd::chdir(root).map_err(|e| fail("chdir", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))
}

/// The process's identity and privileges, as setpriv applies them for
/// programs: no_new_privs, the bounding set (inheritable and ambient sets
/// empty), groups, gid, uid, and for root the permitted and effective sets
/// cut down to the bounding set (another user starts with none).
fn identity(spec: &Spec) -> Result<(), String> {
    use caps::CapSet;
    use nix::unistd::{Gid, Uid};
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    }
    let keep = match &spec.capabilities {
        Some(names) => {
            let keep: caps::CapsHashSet = names.iter().map(|n| capability(n)).collect::<Result<_, _>>()?;
            let supported = caps::runtime::thread_all_supported();
            for cap in supported.difference(&keep) {
                caps::drop(None, CapSet::Bounding, *cap)
                    .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
            }
            for set in [CapSet::Ambient, CapSet::Inheritable] {
                caps::clear(None, set).map_err(|e| format!("cannot clear the {set:?} capabilities: {e}"))?;
            }
            Some(keep.intersection(&supported).copied().collect::<caps::CapsHashSet>())
        }
        None => None,
    };
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("cannot set the groups {:?}: {e}", spec.groups))?;
    let gid = Gid::from_raw(spec.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("cannot set gid {}: {e}", spec.gid))?;
    let uid = Uid::from_raw(spec.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("cannot set uid {}: {e}", spec.uid))?;
    if let Some(keep) = keep
        && spec.uid == 0
    {
        for set in [CapSet::Effective, CapSet::Permitted] {
            caps::set(None, set, &keep).map_err(|e| format!("cannot set the {set:?} capabilities: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_container(extra: serde_json::Value) -> ContainerSpec {
        let mut c = json!({"name": "c", "image": "example.test/app:1"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    fn mk_image(config: serde_json::Value) -> ImageConfig {
        serde_json::from_value(config).unwrap()
    }

    #[test]
    fn command_and_args_follow_the_kubernetes_rules() {
        let image = mk_image(json!({"Entrypoint": ["/agimo"], "Cmd": ["run", "--help"]}));
        let env = vec![("PORT".to_owned(), "8080".to_owned())];
        let run = |c: serde_json::Value| command_line(&image, &mk_container(c), &env);
        assert_eq!(run(json!({})), ["/agimo", "run", "--help"], "Entrypoint and Cmd");
        assert_eq!(
            run(json!({"args": ["run", "--admin-address=0.0.0.0:$(PORT)"]})),
            ["/agimo", "run", "--admin-address=0.0.0.0:8080"]
        );
        assert_eq!(run(json!({"command": ["/bin/sh"]})), ["/bin/sh"], "a command drops Entrypoint and Cmd");
        assert_eq!(
            run(json!({"command": ["/bin/sh", "-c"], "args": ["echo $(PORT) $$(PORT) $(NONE)"]})),
            ["/bin/sh", "-c", "echo 8080 $(PORT) $(NONE)"]
        );
        assert_eq!(run(json!({"command": [], "args": []})), ["/agimo", "run", "--help"], "empty is unset");
        let cmd_only = mk_image(json!({"Cmd": ["/bin/sh"]}));
        assert_eq!(command_line(&cmd_only, &mk_container(json!({"args": ["-c", "true"]})), &env), ["-c", "true"]);
        assert!(command_line(&mk_image(json!({})), &mk_container(json!({})), &env).is_empty());
    }

    #[test]
    fn the_containers_env_overrides_the_images() {
        let image = ["PATH=/app/bin".to_owned(), "LANG=C".to_owned(), "EMPTY".to_owned(), "A=b=c".to_owned()];
        let container = [("LANG".to_owned(), "C.UTF-8".to_owned()), ("POD".to_owned(), "p".to_owned())];
        let pairs = |env: Vec<(String, String)>| env.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        assert_eq!(pairs(merge_env(&image, &container)), ["PATH=/app/bin", "LANG=C.UTF-8", "EMPTY=", "A=b=c", "POD=p"]);
        assert_eq!(pairs(merge_env(&[], &[])), [format!("PATH={}", process::PATH)]);
    }

    fn pulled(root: &Path, config: serde_json::Value) -> Pulled {
        Pulled {
            image_id: "example.test/app@sha256:00".to_owned(),
            manifest: "sha256:00".to_owned(),
            config: mk_image(config),
            rootfs: root.to_owned(),
            size: 0,
            cached: true,
        }
    }

    #[test]
    fn builds_the_spec_from_the_image_and_the_container() {
        let root = crate::image::tests::temp_dir("build");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n").unwrap();
        fs::write(root.join("etc/group"), "nonroot:x:65532:\n").unwrap();
        let image = pulled(
            &root,
            json!({"User": "nonroot", "Entrypoint": ["/agimo"], "Env": ["PATH=/bin"], "WorkingDir": "/srv"}),
        );
        let pod_spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        let container = mk_container(json!({"args": ["run"], "securityContext": {"readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}));
        let env = vec![("HOSTNAME".to_owned(), "p".to_owned())];
        let mounts = vec![process::Mount {
            source: PathBuf::from("/state/volumes/config"),
            target: "/etc/agimo".to_owned(),
            read_only: true,
            file: false,
        }];
        let c = Container {
            pod: "ns/p",
            pod_spec: &pod_spec,
            container: &container,
            env: &env,
            mounts: &mounts,
            image: &image,
            dir: Path::new("/state/c"),
        };
        let built = build(&c).unwrap();
        let spec = built.spec;
        assert_eq!(spec.argv, ["/agimo", "run"]);
        assert_eq!((spec.uid, spec.gid, spec.groups.clone()), (65532, 65532, vec![65532]));
        assert_eq!(spec.cwd, "/srv");
        assert_eq!(spec.env, [("PATH".to_owned(), "/bin".to_owned()), ("HOSTNAME".to_owned(), "p".to_owned())]);
        assert!(spec.read_only_root && spec.mask_paths && !spec.no_new_privs);
        assert_eq!(spec.capabilities, Some(BTreeSet::from(["net_bind_service".to_owned()])));
        assert_eq!(spec.mounts[0].target, "/etc/agimo");
        assert_eq!(built.security.user, Some(65532));
        // The spec survives its JSON.
        let path = root.join("spec.json");
        spec.write(&path).unwrap();
        assert_eq!(serde_json::from_slice::<Spec>(&fs::read(&path).unwrap()).unwrap(), spec);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let no_command = pulled(&root, json!({}));
        let bare = mk_container(json!({}));
        let err = build(&Container { image: &no_command, container: &bare, ..c }).unwrap_err();
        assert!(err.starts_with("no command specified"), "{err}");
        let relative = mk_container(json!({"workingDir": "srv", "command": ["/x"]}));
        assert!(build(&Container { container: &relative, ..c }).unwrap_err().contains("not an absolute path"));
        let bad_cap = mk_container(json!({"command": ["/x"], "securityContext": {"capabilities": {"add": ["FLY"]}}}));
        assert_eq!(build(&Container { container: &bad_cap, ..c }).unwrap_err(), "unknown capability \"fly\"");
        let non_root = mk_container(json!({"command": ["/x"], "securityContext": {"runAsNonRoot": true}}));
        assert!(build(&Container { container: &non_root, ..c }).unwrap_err().contains("non-numeric user (nonroot)"));
        fs::remove_dir_all(&root).unwrap();
    }
}
