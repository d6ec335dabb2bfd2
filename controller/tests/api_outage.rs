//! The API server goes away for minutes under traffic (kube-apiserver of the
//! local cluster killed, then started again with the same command line):
//! Agimo keeps serving the last good config and stays ready, its watches
//! recover, and a change made once the API server is back is served and its
//! status written.
//!
//! It takes the API away from everything else, so `./test.sh` runs it on
//! its own:
//!
//! ```sh
//! conformance/local-cluster exec -- cargo test -p agimo-controller --features kubernetes-tests --test api_outage
//! ```
//! `AGIMO_API_OUTAGE_SECONDS` sets the outage (default 120).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agimo_testkit::wait::{eventually, eventually_within};
use support::cluster::*;

/// The local cluster's kube-apiserver process, as `local-cluster` started it.
struct ApiServer {
    pid_file: PathBuf,
    log: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl ApiServer {
    fn find() -> ApiServer {
        let state = PathBuf::from(std::env::var("AGIMO_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/agimo-cluster".into()));
        let pid_file = state.join("kube-apiserver.pid");
        let pid = Self::pid_in(&pid_file);
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
        assert!(argv[0].ends_with("kube-apiserver"), "{pid_file:?} is not the API server: {argv:?}");
        let env = split(std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        ApiServer { pid_file, log: state.join("kube-apiserver.log"), argv, env, cwd }
    }

    fn pid_in(pid_file: &PathBuf) -> u32 {
        std::fs::read_to_string(pid_file)
            .unwrap_or_else(|e| panic!("{pid_file:?}: {e}: is the local cluster up?"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Kills it (SIGKILL: a crash; SIGTERM would drain its watches for a
    /// minute first) and waits until it is gone.
    async fn stop(&self) {
        let pid = Self::pid_in(&self.pid_file);
        let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        assert!(killed.success());
        eventually("the API server stops", || async { !std::path::Path::new(&format!("/proc/{pid}")).exists() }).await;
    }

    /// Starts it again as before, appending to its log; `local-cluster down`
    /// stops it through the pid file. It outlives this test.
    #[allow(clippy::zombie_processes)]
    fn start(&self) {
        let log = std::fs::OpenOptions::new().append(true).create(true).open(&self.log).unwrap();
        let child = std::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the API server starts");
        std::fs::write(&self.pid_file, child.id().to_string()).unwrap();
    }
}

#[tokio::test]
async fn traffic_flows_through_an_api_server_outage_and_watches_recover() {
    let outage =
        Duration::from_secs(std::env::var("AGIMO_API_OUTAGE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120));
    let api = ApiServer::find();
    let mut c = Cluster::new("outage").await;
    let v1 = c.backend("v1", 1).await;
    let admin = c.start_agimo();
    c.apply(
        &(gateway("gw", "  - {name: http, port: 80, protocol: HTTP}\n")
            + &service("svc", v1)
            + &route("before", "gw", "/before", "svc")),
    )
    .await;
    let gw = c.wait_for("Gateway", "gw", "an address", |o| gateway_address(o).is_some()).await;
    let at = SocketAddr::new(gateway_address(&gw).unwrap(), 80);
    eventually_served(at, "x", "/before", 200, "v1").await;

    // Traffic every 50 ms from now until the end.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = tokio::spawn({
        let running = running.clone();
        async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while running.load(Ordering::Relaxed) {
                match get(at, "x", "/before").await {
                    Some(r) if r.status == 200 => ok += 1,
                    other => failed.push(other.map_or("connection failed".to_owned(), |r| r.status.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed)
        }
    });

    api.stop().await;
    let stopped = Instant::now();
    eprintln!("API server stopped for {outage:?}");
    while stopped.elapsed() < outage {
        let ready = get(admin, "admin", "/readyz").await.map(|r| r.status.as_u16());
        assert_eq!(ready, Some(200), "agimo stopped being ready {:?} into the outage", stopped.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    api.start();
    let restarted = Instant::now();

    // Once the API server answers, a new route is served and its status
    // written: the watches and the status writer came back by themselves.
    let ns = c.ns.clone();
    let after = route("after", "gw", "/after", "svc");
    eventually_within(Duration::from_secs(120), "the API server comes back (the new route applies)", || async {
        matches!(tokio::time::timeout(Duration::from_secs(5), c.try_apply(&after)).await, Ok(Ok(())))
    })
    .await;
    eprintln!("API server back after {:?}", restarted.elapsed());
    eventually_within(Duration::from_secs(90), "/after served by v1", || async {
        get(at, "x", "/after").await.is_some_and(|r| r.status == 200 && r.echo().backend == "v1")
    })
    .await;
    eprintln!("the new route served {:?} after the restart", restarted.elapsed());
    let accepted = |o: &serde_json::Value| {
        our_parent(o, &ns, "gw").is_some_and(|p| has(o, &p["conditions"], "Accepted", "True", "Accepted"))
    };
    eventually_within(Duration::from_secs(90), "the new route's status is written", || async {
        accepted(&c.get("HTTPRoute", "after").await)
    })
    .await;
    eprintln!("its status written {:?} after the restart", restarted.elapsed());

    running.store(false, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    eprintln!("{ok} requests served during the test, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed during the outage: {failed:?}");
    assert!(ok > outage.as_secs() as usize * 5, "{ok} requests");
}
