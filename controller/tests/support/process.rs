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
        .args(["--keda-scaler-address", &SocketAddr::new(ip, 9091).to_string()])
        .args(args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agimo starts");
    Running { child, dir, http: SocketAddr::new(ip, 8080), admin, log }
}

impl Running {
    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The sum of every series of metric `name` on `/metrics`.
    pub async fn metric_total(&self, name: &str) -> f64 {
        let reply = agimo_testkit::client::send(
            self.admin,
            agimo_testkit::client::Mode::Http1,
            agimo_testkit::client::get("admin", "/metrics"),
        )
        .await
        .expect("metrics");
        super::metric_total(&String::from_utf8_lossy(&reply.body), name)
    }
}

/// Writes `yaml` (`{{ip}}` replaced by a loopback address of its own) as the
/// whole configuration and runs `agimo standalone ARGS` on it until
/// `/readyz` answers 200.
pub async fn serve_config(yaml: &str, args: &[&str]) -> Running {
    serve_config_at(super::unique_loopback(), yaml, args).await
}

/// [`serve_config`] on a loopback address the caller chose.
pub async fn serve_config_at(ip: std::net::IpAddr, yaml: &str, args: &[&str]) -> Running {
    let dir = std::env::temp_dir().join(format!("agimo-process-{}-{ip}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agimo.yaml"), yaml.replace("{{ip}}", &ip.to_string())).unwrap();
    let running = spawn(ip, dir.clone(), &dir, args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ready = agimo_testkit::client::send(
            running.admin,
            agimo_testkit::client::Mode::Http1,
            agimo_testkit::client::get("admin", "/readyz"),
        )
        .await;
        if ready.is_ok_and(|r| r.status == 200) {
            return running;
        }
        assert!(std::time::Instant::now() < deadline, "agimo did not become ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `agimo standalone ARGS` with every path of the HTTP listener on 8080 going
/// to an echo backend `v1`.
pub async fn serve_echo(args: &[&str]) -> (Running, agimo_testkit::echo::Echo) {
    let echo = agimo_testkit::echo::spawn("127.0.0.1:0".parse().unwrap(), "v1").await.unwrap();
    let yaml =
        super::base_yaml(&[]) + &super::service_at("v1", &echo.addr.port().to_string()) + &super::route_to("r", "v1");
    (serve_config(&yaml, args).await, echo)
}
