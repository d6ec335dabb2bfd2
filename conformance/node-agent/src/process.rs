//! A container's process: the program run with `ip netns exec` in the pod's
//! network namespace, its stdout and stderr written line by line to a log
//! file in the CRI format the kubelet uses (`<RFC 3339 time> <stream> F
//! <line>`).
//!
//! `ip netns exec` also gives the process a mount namespace of its own (it
//! unshares and makes `/` a slave of the host's), so a mount made there is
//! seen by the container alone. A container with volumes or a
//! securityContext starts through a short `sh` script, its [`prelude`]:
//!
//! ```text
//!   ip netns exec agimo-pod-<uid> sh -c PRELUDE agimo-container PROGRAM ARGS...
//!     mkdir -p MOUNTPATH; mount --bind VOLUME-DIR MOUNTPATH   (each volumeMount, parents first)
//!     mount -o remount,bind,ro MOUNTPATH                      (readOnly and API-data volumes)
//!     mount -o remount,bind,ro /                              (readOnlyRootFilesystem)
//!     cd WORKINGDIR
//!     exec setpriv --reuid U --regid G ... -- PROGRAM ARGS...  (securityContext)
//! ```
//!
//! Every step replaces the process (`exec`), so the pid the agent holds is
//! the program's. Mount points that do not exist are created as empty
//! directories (or empty files, for a subPath that is a file) on the host's
//! filesystem; nothing is mounted outside the container's namespace. A step
//! that fails prints `agimo-node-agent: …` to the container's log and exits
//! with [`START_ERROR`].

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::security::Security;

/// The PATH a program starts with (its container's env may override it).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The exit code of a prelude that could not set the container up (the
/// code a runtime reports for a container that failed to start).
pub const START_ERROR: i32 = 128;

/// What to run, and where.
#[derive(Debug)]
pub struct Launch<'a> {
    pub netns: &'a str,
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub log: &'a Path,
    /// The start script ([`prelude`]), if the container needs one.
    pub prelude: Option<&'a str>,
}

/// A volume as a container sees it: `source` (on the host) at `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// The source is a file (a subPath naming one), not a directory.
    pub file: bool,
}

/// The start script of a container with `mounts`, `security` and a
/// `working_dir`, run by `sh -c` with the program and its arguments as
/// `"$@"`; `None` if there is nothing to do (the program is run directly).
pub fn prelude(mounts: &[Mount], security: &Security, working_dir: Option<&str>) -> Option<String> {
    let setpriv = security.setpriv_args();
    if mounts.is_empty() && setpriv.is_empty() && !security.read_only_root && working_dir.is_none() {
        return None;
    }
    let (mkdir, mount) = (tool("mkdir"), tool("mount"));
    let mut script = format!("fail() {{ echo \"agimo-node-agent: $*\" >&2; exit {START_ERROR}; }}\n");
    let mut line = |command: String, failure: String| {
        script.push_str(&format!("{command} || fail {}\n", quote(&failure)));
    };
    // Parents before what is mounted inside them.
    let mut ordered: Vec<&Mount> = mounts.iter().collect();
    ordered.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in ordered {
        let (source, target) = (m.source.display().to_string(), m.target.as_str());
        if m.file {
            let parent = Path::new(target).parent().map_or_else(|| "/".to_owned(), |p| p.display().to_string());
            line(
                format!("{{ [ -e {t} ] || {{ {mkdir} -p {p} && : > {t}; }}; }}", t = quote(target), p = quote(&parent)),
                format!("cannot create the mount point {target}"),
            );
        } else {
            line(format!("{mkdir} -p {}", quote(target)), format!("cannot create the mount point {target}"));
        }
        line(
            format!("{mount} --bind {} {}", quote(&source), quote(target)),
            format!("cannot mount {source} at {target}"),
        );
        if m.read_only {
            line(format!("{mount} -o remount,bind,ro {}", quote(target)), format!("cannot make {target} read-only"));
        }
    }
    if security.read_only_root {
        // `bind`: only this namespace's view of / becomes read-only, never
        // the filesystem itself.
        line(format!("{mount} -o remount,bind,ro /"), "cannot make the root filesystem read-only".to_owned());
    }
    if let Some(dir) = working_dir {
        line(format!("cd {}", quote(dir)), format!("cannot change to the working directory {dir}"));
    }
    if setpriv.is_empty() {
        script.push_str("exec \"$@\"\n");
    } else {
        let args: Vec<String> = setpriv.iter().map(|a| quote(a)).collect();
        script.push_str(&format!("exec {} {} -- \"$@\"\n", tool("setpriv"), args.join(" ")));
    }
    Some(script)
}

/// `s` quoted for `sh`.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=,+:@".contains(&b)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The absolute path of a system tool (a container's PATH may not have it).
pub fn tool(name: &str) -> String {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .map_or_else(|| name.to_owned(), |p| p.display().to_string())
}

/// A running program.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub pid: u32,
}

/// "Pulls" a program into the node's image store `images`: a copy readable
/// and executable by every user, named by its size and modification time, so
/// a container running as a non-root user can start a program built under a
/// directory only root may enter (`~/.cache`), and a rebuilt program is picked
/// up by the next container start. Returns the copy's path.
pub fn pull(program: &Path, images: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(program)?;
    let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("program");
    let pulled = images.join(format!("{name}-{}-{}", meta.size(), meta.mtime()));
    if pulled.is_file() {
        return Ok(pulled);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(images)?;
    std::fs::set_permissions(images, std::fs::Permissions::from_mode(0o755))?;
    let partial = images.join(format!(".{name}-{}.partial", std::process::id()));
    std::fs::copy(program, &partial)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, &pulled)?;
    Ok(pulled)
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
    let mut command = Command::new("ip");
    command.args(["netns", "exec", launch.netns]);
    if let Some(prelude) = launch.prelude {
        command.args([tool("sh").as_str(), "-c", prelude, "agimo-container"]);
    }
    let mut child = command
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

/// Sends `signal` (`TERM`, `KILL`, …) to `pid`; false if it could not.
pub async fn signal(pid: u32, signal: &str) -> bool {
    let status = Command::new(tool("kill"))
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    status.is_ok_and(|s| s.success())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_are_cri_lines() {
        let at: Timestamp = "2026-05-01T10:00:00.5Z".parse().unwrap();
        assert_eq!(cri_line(at, "stdout", b"Starting server\n"), "2026-05-01T10:00:00.5Z stdout F Starting server\n");
        assert_eq!(cri_line(at, "stderr", b"no newline"), "2026-05-01T10:00:00.5Z stderr F no newline\n");
    }

    #[test]
    fn pulling_copies_a_program_where_every_user_can_run_it_once_per_version() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("agimo-pull-{}", std::process::id()));
        let source = dir.join("private").join("agimo");
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::set_permissions(source.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&source, b"#!/bin/sh\necho v1\n").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o700)).unwrap();
        let images = dir.join("images");
        let first = pull(&source, &images).unwrap();
        assert!(first.starts_with(&images));
        assert_eq!(std::fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::metadata(&images).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read(&first).unwrap(), b"#!/bin/sh\necho v1\n");
        assert_eq!(pull(&source, &images).unwrap(), first, "the same version is pulled once");
        // A rebuilt program (another size) is a new image.
        std::fs::write(&source, b"#!/bin/sh\necho version 2\n").unwrap();
        let second = pull(&source, &images).unwrap();
        assert_ne!(second, first);
        assert_eq!(std::fs::read(&second).unwrap(), b"#!/bin/sh\necho version 2\n");
        std::fs::remove_dir_all(&dir).unwrap();
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

    fn mount(source: &str, target: &str, read_only: bool) -> Mount {
        Mount { source: source.into(), target: target.into(), read_only, file: false }
    }

    #[test]
    fn no_prelude_without_volumes_or_security() {
        assert_eq!(prelude(&[], &Security::default(), None), None);
    }

    #[test]
    fn the_prelude_mounts_parents_first_then_locks_down_and_drops_privileges() {
        let mounts = [
            mount("/state/p/volumes/nested", "/etc/app/conf.d", true),
            mount("/state/p/volumes/it's", "/etc/app", false),
        ];
        let security = Security {
            user: Some(65532),
            group: Some(65532),
            read_only_root: true,
            no_new_privs: true,
            ..Default::default()
        };
        let script = prelude(&mounts, &security, Some("/work dir")).unwrap();
        let expected = "fail() { echo \"agimo-node-agent: $*\" >&2; exit 128; }\n\
            /usr/bin/mkdir -p /etc/app || fail 'cannot create the mount point /etc/app'\n\
            /usr/bin/mount --bind '/state/p/volumes/it'\\''s' /etc/app || fail 'cannot mount /state/p/volumes/it'\\''s at /etc/app'\n\
            /usr/bin/mkdir -p /etc/app/conf.d || fail 'cannot create the mount point /etc/app/conf.d'\n\
            /usr/bin/mount --bind /state/p/volumes/nested /etc/app/conf.d || fail 'cannot mount /state/p/volumes/nested at /etc/app/conf.d'\n\
            /usr/bin/mount -o remount,bind,ro /etc/app/conf.d || fail 'cannot make /etc/app/conf.d read-only'\n\
            /usr/bin/mount -o remount,bind,ro / || fail 'cannot make the root filesystem read-only'\n\
            cd '/work dir' || fail 'cannot change to the working directory /work dir'\n\
            exec /usr/bin/setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs -- \"$@\"\n";
        assert_eq!(script, expected);
    }

    #[tokio::test]
    async fn the_prelude_runs_the_program_with_its_arguments() {
        // Without mounts or a user change it runs anywhere: a working
        // directory alone needs a prelude.
        let script = prelude(&[], &Security::default(), Some("/")).unwrap();
        let out = tokio::process::Command::new("sh")
            .args(["-c", &script, "agimo-container", "/bin/sh", "-c", "pwd; echo \"$0|$1\"", "zero", "it's one"])
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/\nzero|it's one\n");
        let script = prelude(&[], &Security::default(), Some("/nonexistent-dir")).unwrap();
        let out = tokio::process::Command::new("sh").args(["-c", &script, "x", "/bin/true"]).output().await.unwrap();
        assert_eq!(out.status.code(), Some(START_ERROR));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("agimo-node-agent: cannot change to the working directory /nonexistent-dir")
        );
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(
            quote("/var/run/secrets/kubernetes.io/serviceaccount"),
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(x)"), "'$(x)'");
    }
}
