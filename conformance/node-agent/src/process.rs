//! A container's process: the program run with `ip netns exec` in the pod's
//! network namespace, its stdout and stderr written line by line to a log
//! file in the CRI format the kubelet uses (`<RFC 3339 time> <stream> F
//! <line>`), and a readiness check that reads the process's socket tables.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The PATH a program starts with (its container's env may override it).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run, and where.
#[derive(Debug)]
pub struct Launch<'a> {
    pub netns: &'a str,
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub log: &'a Path,
}

/// A running program.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub pid: u32,
}

/// Whether `program` (run for `image`) can be started: an executable file.
pub fn check_program(program: &Path, image: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(program) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!("program {} for image {image:?} is not an executable file", program.display())),
        Err(e) => Err(format!("program {} for image {image:?}: {e}", program.display())),
    }
}

/// Starts the program; its output goes to `launch.log` (appended).
pub fn spawn(launch: &Launch<'_>) -> io::Result<Process> {
    let log = Arc::new(Mutex::new(OpenOptions::new().create(true).append(true).open(launch.log)?));
    let mut child = Command::new("ip")
        .args(["netns", "exec", launch.netns])
        .arg(launch.program)
        .args(launch.args)
        .env_clear()
        .env("PATH", PATH)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("the process exited at once"))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(copy_lines(out, "stdout", log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(copy_lines(err, "stderr", log));
    }
    Ok(Process { child, pid })
}

async fn copy_lines(stream: impl AsyncRead + Unpin, name: &'static str, log: Arc<Mutex<std::fs::File>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let entry = cri_line(Timestamp::now(), name, &line);
        let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(entry.as_bytes()) {
            tracing::warn!(error = %e, "cannot write a container log");
            return;
        }
    }
}

/// One line of output as a CRI log entry (always a full line: `F`).
pub fn cri_line(at: Timestamp, stream: &str, line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    format!("{at} {stream} F {text}\n")
}

/// Transport protocols of containerPorts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Whether process `pid` runs in the network namespace `netns_inode` yet
/// (`ip netns exec` enters it just before starting the program) and
/// listens on every port: TCP sockets in state LISTEN, UDP sockets bound.
/// SCTP ports are not checked.
pub fn listens(pid: u32, netns_inode: u64, ports: &[(u16, Protocol)]) -> bool {
    let in_pod = std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .and_then(|link| namespace_inode(&link.to_string_lossy()))
        .is_some_and(|inode| inode == netns_inode);
    if !in_pod {
        return false;
    }
    let table = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    let mut tcp = socket_ports(&table("tcp"), Some(TCP_LISTEN));
    tcp.extend(socket_ports(&table("tcp6"), Some(TCP_LISTEN)));
    let mut udp = socket_ports(&table("udp"), None);
    udp.extend(socket_ports(&table("udp6"), None));
    ports.iter().all(|(port, protocol)| match protocol {
        Protocol::Tcp => tcp.contains(port),
        Protocol::Udp => udp.contains(port),
        Protocol::Sctp => true,
    })
}

const TCP_LISTEN: &str = "0A";

/// `net:[4026532281]` → 4026532281.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Local ports of the sockets in a `/proc/<pid>/net/{tcp,udp}[6]` table, only
/// those in `state` if given.
pub fn socket_ports(table: &str, state: Option<&str>) -> HashSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let st = fields.nth(1)?;
            if state.is_some_and(|want| want != st) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41224 1 0000000000000000 100 0 0 10 0
   1: 0701F40A:0BB9 0101F40A:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 41225 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41230 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41300 2 0000000000000000 0
";

    #[test]
    fn reads_listening_tcp_and_bound_udp_ports() {
        // 3000 listens; 3001 (0x0BB9) is only an established connection in
        // the IPv4 table but listens in the IPv6 one.
        assert_eq!(socket_ports(TCP, Some(TCP_LISTEN)), HashSet::from([3000]));
        assert_eq!(socket_ports(TCP6, Some(TCP_LISTEN)), HashSet::from([3001]));
        assert_eq!(socket_ports(UDP, None), HashSet::from([8080]));
        assert_eq!(socket_ports("header only\n", None), HashSet::new());
    }

    #[test]
    fn parses_namespace_links() {
        assert_eq!(namespace_inode("net:[4026532281]"), Some(4026532281));
        assert_eq!(namespace_inode("mnt:[4026532281]"), None);
    }

    #[test]
    fn log_entries_are_cri_lines() {
        let at: Timestamp = "2026-05-01T10:00:00.5Z".parse().unwrap();
        assert_eq!(cri_line(at, "stdout", b"Starting server\n"), "2026-05-01T10:00:00.5Z stdout F Starting server\n");
        assert_eq!(cri_line(at, "stderr", b"no newline"), "2026-05-01T10:00:00.5Z stderr F no newline\n");
    }

    #[test]
    fn a_missing_or_non_executable_program_is_named_in_the_error() {
        let err = check_program(Path::new("/nonexistent/echo-basic"), "registry.k8s.io/gateway-api/echo-basic:v1")
            .unwrap_err();
        assert_eq!(
            err,
            "program /nonexistent/echo-basic for image \"registry.k8s.io/gateway-api/echo-basic:v1\": No such file or directory (os error 2)"
        );
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(check_program(&manifest, "x").unwrap_err().contains("is not an executable file"));
        assert!(check_program(Path::new("/bin/sh"), "x").is_ok());
    }

    #[tokio::test]
    async fn a_process_that_is_not_in_the_namespace_does_not_listen() {
        // Our own process runs in some namespace, never inode 1.
        assert!(!listens(std::process::id(), 1, &[]));
    }
}
