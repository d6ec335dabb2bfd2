//! Containers from OCI images, for real and without a cluster: a small image
//! layout with a static busybox (Debian's `busybox-static`, `/bin/busybox`)
//! is found and unpacked by the image store, its spec worked out as the
//! agent does (`enter::build`), and `agimo-node-agent enter` runs it with
//! `ip netns exec` in a network namespace this test creates and deletes
//! (`agimo-enter-test-<pid>`), as the agent runs containers in pods. Needs
//! root (mounts, namespaces); skipped without it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agimo_node_agent::enter;
use agimo_node_agent::image::{ImageStore, Pulled};
use agimo_node_agent::probe::{self, Action, Target};
use agimo_node_agent::process::{Mount, START_ERROR};
use agimo_node_agent::security::DEFAULT_CAPABILITIES;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

mod oci;

const IMAGE: &str = "example.test/agimo/busybox:1";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory of this test's own, removed on drop (the containers' mounts
/// went with their mount namespaces).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("agimo-enter-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace of this test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("agimo-enter-test-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Netns(name)
    }

    /// `agimo-node-agent enter --spec SPEC` in this namespace, as the agent
    /// starts it.
    fn enter(&self, spec: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0, env!("CARGO_BIN_EXE_agimo-node-agent"), "enter", "--spec"]);
        command.arg(spec).env_clear().stdin(Stdio::null());
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

/// The test image (see [`oci::busybox_layers`]), running as `nonroot`.
fn mk_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let config = json!({
        "User": "nonroot", "Entrypoint": ["/bin/busybox"], "Cmd": ["sh", "-c", "echo default"],
        "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/work"
    });
    oci::write_image(&layout, IMAGE, &oci::busybox_layers(), config);
    layout
}

/// The spec of a container `container` of a pod `pod_spec` (JSON), with
/// `mounts`, in `dir`.
fn mk_spec(image: &Pulled, pod_spec: Value, container: Value, mounts: &[Mount], dir: &Path) -> enter::Built {
    let pod_spec: PodSpec = serde_json::from_value(pod_spec).unwrap();
    let container: Container = serde_json::from_value(container).unwrap();
    let env = vec![("HOSTNAME".to_owned(), "enter-test".to_owned()), ("FROM_POD".to_owned(), "yes".to_owned())];
    let built = enter::build(&enter::Container {
        pod: "test/enter",
        pod_spec: &pod_spec,
        container: &container,
        env: &env,
        mounts,
        image,
        dir,
    })
    .unwrap();
    fs::create_dir_all(dir).unwrap();
    built.spec.write(&dir.join("spec.json")).unwrap();
    built
}

fn lines(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect()
}

fn capability_mask(names: &[&str]) -> String {
    let mask = names
        .iter()
        .map(|n| format!("CAP_{}", n.to_uppercase()).parse::<caps::Capability>().unwrap().bitmask())
        .fold(0u64, |a, b| a | b);
    format!("{mask:016x}")
}

#[tokio::test]
async fn a_container_runs_from_its_image_in_a_pod_namespace() {
    if !is_root() {
        eprintln!("skipped: running containers needs root (mounts, network namespaces)");
        return;
    }
    let dir = TempDir::new();
    let dir = dir.0.as_path();
    let layout = mk_layout(dir);
    let store = ImageStore::new(vec![layout], dir.join("images"));
    let image = store.pull(&store.find(IMAGE).expect("the image is in the layout")).unwrap();
    let rootfs = image.rootfs.clone();
    assert!(!rootfs.join("old/file").exists() && rootfs.join("old/kept").exists(), "whited out");
    let netns = Netns::new();

    // Volumes: read-only data, a writable scratch directory, a file (as the
    // pod's resolv.conf comes).
    let data = dir.join("volumes/data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("hello"), "from a volume").unwrap();
    let scratch = dir.join("volumes/scratch");
    fs::create_dir_all(&scratch).unwrap();
    std::os::unix::fs::chown(&scratch, Some(65532), Some(65532)).unwrap();
    let resolv = dir.join("resolv.conf");
    fs::write(&resolv, "nameserver 10.96.0.10\n").unwrap();
    let mounts = vec![
        Mount { source: data.clone(), target: "/data".into(), read_only: true, file: false },
        Mount { source: scratch.clone(), target: "/scratch".into(), read_only: false, file: false },
        Mount { source: resolv, target: "/etc/resolv.conf".into(), read_only: true, file: true },
    ];
    let script = r#"
        echo "release=$(cat /etc/os-release-from-image)"
        echo "id=$(id -u) $(id -g) $(id -G)"
        echo "pwd=$(pwd)"
        echo "env=$FROM_IMAGE $FROM_POD $HOSTNAME $PATH"
        echo "data=$(cat /data/hello)"
        echo "resolv=$(cat /etc/resolv.conf)"
        touch /data/x 2>/dev/null && echo "data-write=yes" || echo "data-write=no"
        touch /root-file 2>/dev/null && echo "root-write=yes" || echo "root-write=no"
        touch /scratch/x && echo "scratch-write=yes"
        echo "old=$(ls /old)"
        echo "dev=$(ls /dev | tr '\n' ' ')"
        echo "hosts-root=$(ls / | tr '\n' ' ')"
        sed -n 's/^\(CapBnd\|CapEff\|CapPrm\|NoNewPrivs\):\s*/\1=/p' /proc/self/status
    "#;
    let container = json!({
        "name": "c", "image": IMAGE, "args": ["sh", "-c", script],
        "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    });
    let first = dir.join("containers/c/0");
    mk_spec(
        &image,
        json!({"containers": [], "securityContext": {"supplementalGroups": [3000]}}),
        container,
        &mounts,
        &first,
    );
    let out = netns.enter(&first.join("spec.json")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}\n{}", out.status, String::from_utf8_lossy(&out.stdout));
    let seen = lines(&out);
    let get = |k: &str| seen.get(k).map(String::as_str).unwrap_or_else(|| panic!("{k} missing: {seen:?} {stderr}"));
    assert_eq!(get("release"), "agimo test image", "the image's root");
    assert_eq!(get("id"), "65532 65532 65532 3000 4000", "the image's user; the pod's and the image's groups");
    assert_eq!(get("pwd"), "/work", "the image's WorkingDir, created");
    assert_eq!(get("env"), "yes yes enter-test /bin");
    assert_eq!(get("data"), "from a volume");
    assert_eq!(get("resolv"), "nameserver 10.96.0.10", "mounted where the image's symlink points, inside the root");
    assert_eq!(get("data-write"), "no");
    assert_eq!(get("root-write"), "no", "readOnlyRootFilesystem");
    assert_eq!(get("scratch-write"), "yes");
    assert_eq!(get("old"), "kept");
    for device in ["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"] {
        assert!(get("dev").split(' ').any(|d| d == device), "/dev/{device}: {}", get("dev"));
    }
    assert!(!get("hosts-root").contains("usr"), "only the image's root: {}", get("hosts-root"));
    assert_eq!(get("CapBnd"), capability_mask(&["net_bind_service"]));
    assert_eq!((get("CapEff"), get("CapPrm")), ("0000000000000000", "0000000000000000"), "a user has none");
    assert_eq!(get("NoNewPrivs"), "1");
    assert!(fs::read(scratch.join("x")).is_ok(), "written to the volume");
    // Mount points went to the container's layer; the image stays as it was.
    assert!(first.join("upper/work").is_dir() && first.join("upper/run/systemd/resolve/stub-resolv.conf").exists());
    assert!(!rootfs.join("work").exists() && !rootfs.join("run").exists());

    // Root with the runtime's default capabilities and a writable root;
    // `command` replaces the image's Entrypoint.
    let second = dir.join("containers/root/0");
    let container = json!({
        "name": "root", "image": IMAGE, "securityContext": {"runAsUser": 0},
        "command": ["/bin/busybox", "sh", "-c",
                    "touch /root-file && echo root-write=yes; echo id=$(id -u); \
                     sed -n 's/^\\(CapBnd\\|CapEff\\):\\s*/\\1=/p' /proc/self/status; \
                     [ -c /proc/keys ] && echo keys=masked; \
                     echo proc-sys=$(awk '$5 == \"/proc/sys\" { split($6, o, \",\"); print o[1] }' /proc/self/mountinfo)"]
    });
    mk_spec(&image, json!({"containers": []}), container, &[], &second);
    let out = netns.enter(&second.join("spec.json")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = lines(&out);
    assert_eq!(seen["root-write"], "yes");
    assert_eq!(seen["id"], "0");
    assert_eq!(seen["CapBnd"], capability_mask(&DEFAULT_CAPABILITIES));
    assert_eq!(seen["CapEff"], seen["CapBnd"], "root keeps the bounding set");
    assert_eq!(
        (seen.get("keys").map(String::as_str), seen.get("proc-sys").map(String::as_str)),
        (Some("masked"), Some("ro")),
        "as containerd hides them: {seen:?}"
    );
    assert!(second.join("upper/root-file").exists() && !rootfs.join("root-file").exists());

    // A program the image does not have: a start error, as the prelude reports it.
    let third = dir.join("containers/missing/0");
    mk_spec(
        &image,
        json!({"containers": []}),
        json!({"name": "missing", "image": IMAGE, "command": ["/no/such"]}),
        &[],
        &third,
    );
    let out = netns.enter(&third.join("spec.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(START_ERROR));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("agimo-node-agent: cannot run \"/no/such\""), "{stderr}");

    // Exec probes enter the running container's root, as its user.
    let fourth = dir.join("containers/sleeper/0");
    let built = mk_spec(
        &image,
        json!({"containers": []}),
        json!({"name": "sleeper", "image": IMAGE, "args": ["sleep", "30"]}),
        &[],
        &fourth,
    );
    let mut child = netns.enter(&fourth.join("spec.json")).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{pid}/exe")).map(|l| !l.ends_with("bin/busybox")).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let user = built.security.user.map(|u| (u, built.security.group.unwrap_or(0)));
    let target = Target { pod_ip: std::net::Ipv4Addr::LOCALHOST, pid, env: built.env.clone(), user };
    let exec = |command: &[&str]| Action::Exec { command: command.iter().map(|s| (*s).to_owned()).collect() };
    let probe = |action| {
        let target = target.clone();
        async move { probe::run(&action, &target, Duration::from_secs(5)).await }
    };
    probe(exec(&["/bin/busybox", "grep", "-q", "agimo test image", "/etc/os-release-from-image"])).await.unwrap();
    probe(exec(&["sh", "-c", "test \"$(id -u)\" = 65532"])).await.unwrap();
    let failed = probe(exec(&["/bin/busybox", "cat", "/etc/no-such-file"])).await.unwrap_err();
    assert!(failed.contains("exited with 1"), "{failed}");
    child.kill().unwrap();
    child.wait().unwrap();

    drop(netns);
}
