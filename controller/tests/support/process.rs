//! `agimo standalone` as a child process, for tests of the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Running {
    pub child: Child,
    pub dir: PathBuf,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `agimo standalone --config <config> ARGS` with its admin endpoints on `ip`.
pub fn spawn(ip: std::net::IpAddr, dir: PathBuf, config: &Path, args: &[&str]) -> Running {
    let log = PathBuf::from(format!("{}.log", dir.display()));
    let admin = SocketAddr::new(ip, 9901);
    // One worker thread, as the benchmark runs it (the Kubernetes tests and
    // the conformance run use the default, one per CPU).
    let child = Command::new(env!("CARGO_BIN_EXE_agimo"))
        .env("AGIMO_WORKER_THREADS", "1")
        .args(["standalone", "--config"])
        .arg(config)
        .args(["--metrics-address", &SocketAddr::new(ip, 9090).to_string()])
        .args(["--admin-address", &admin.to_string()])
        .args(args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agimo starts");
    Running { child, dir, http: SocketAddr::new(ip, 8080), admin, log }
}
