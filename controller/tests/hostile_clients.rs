//! Slow and greedy clients against the `agimo` binary: slowloris and slow
//! read from slowhttptest (Debian's package; ./test.sh installs it), and ten
//! thousand idle connections. Throughout each attack an ordinary client
//! makes a request every 50 ms and must be served every time.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use support::process::serve_echo;

/// One attack at a time: each test asks what its attack alone does to an
/// ordinary client. Run together on a 2-core machine, the three attacks
/// (1,300 slow connections and 10,000 idle ones) made the ordinary client's
/// connections wait for SYN retransmits (1 s, then 3 s).
static ONE_ATTACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One request on a new connection: its latency if answered 200, with the
/// part of it spent connecting.
async fn ordinary_request(addr: SocketAddr) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let connected = started.elapsed();
        let reply = client::send_on(stream, Mode::Http1, client::get("ordinary.example", "/")).await?;
        Ok::<_, std::io::Error>((connected, reply))
    };
    let (connected, reply) = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        return Err(format!("status {}", reply.status));
    }
    Ok((started.elapsed(), connected))
}

/// What the ordinary client saw over a period.
#[derive(Debug)]
struct Served {
    ok: usize,
    failures: Vec<String>,
    slowest: Duration,
    /// Requests over 200 ms: (total, of which connecting).
    slow: Vec<(Duration, Duration)>,
}

/// An ordinary client: a request every 50 ms until `period` is over.
async fn ordinary_client(addr: SocketAddr, period: Duration) -> Served {
    let mut served = Served { ok: 0, failures: Vec::new(), slowest: Duration::ZERO, slow: Vec::new() };
    let end = Instant::now() + period;
    while Instant::now() < end {
        match ordinary_request(addr).await {
            Ok((latency, connecting)) => {
                served.ok += 1;
                served.slowest = served.slowest.max(latency);
                if latency > Duration::from_millis(200) {
                    served.slow.push((latency, connecting));
                }
            }
            Err(e) => served.failures.push(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served
}

fn assert_served(served: &Served) {
    assert!(served.failures.is_empty(), "the ordinary client was refused: {served:?}");
    assert!(served.ok > 20, "{served:?}");
    assert!(served.slowest < Duration::from_secs(1), "the ordinary client waited: {served:?}");
}

/// One line of slowhttptest's CSV report.
#[derive(Debug)]
struct Tick {
    closed: u64,
    connected: u64,
}

/// Runs slowhttptest with `args` and returns its per-second report.
async fn slowhttptest(args: &[&str]) -> Vec<Tick> {
    let prefix = std::env::temp_dir().join(format!("agimo-slowhttptest-{}-{}", std::process::id(), args.join("")));
    let prefix = prefix.to_string_lossy().replace(['/', ':'], "_").replace("_tmp_", "/tmp/");
    let output = tokio::process::Command::new("slowhttptest")
        .args(args)
        .args(["-g", "-o", &prefix])
        .output()
        .await
        .expect("slowhttptest runs (./test.sh installs it: apt-get install slowhttptest)");
    assert!(output.status.success(), "slowhttptest: {}", String::from_utf8_lossy(&output.stderr));
    let csv = std::fs::read_to_string(format!("{prefix}.csv")).expect("slowhttptest's CSV report");
    let _ = std::fs::remove_file(format!("{prefix}.csv"));
    let _ = std::fs::remove_file(format!("{prefix}.html"));
    // Seconds,Closed,Pending,Connected,Service Available
    csv.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<u64> = line.split(',').map(|c| c.trim().parse().unwrap_or(0)).collect();
            Some(Tick { closed: *cols.get(1)?, connected: *cols.get(3)? })
        })
        .collect()
}

#[tokio::test]
async fn slowloris_connections_are_cut_off_and_others_served() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    let (agimo, _echo) = serve_echo(&["--header-read-timeout", "2s"]).await;
    let url = format!("http://{}/", agimo.http);
    // 1,000 connections that each send a header line every second, never
    // finishing their request head.
    let args = ["-H", "-c", "1000", "-r", "250", "-i", "1", "-x", "24", "-l", "10", "-p", "3", "-u", &url];
    let (ticks, served) = tokio::join!(slowhttptest(&args), ordinary_client(agimo.http, Duration::from_secs(9)));
    assert_served(&served);
    let closed = ticks.iter().map(|t| t.closed).max().unwrap_or(0);
    assert!(closed >= 500, "agimo closed {closed} slowloris connections: {ticks:?}");
}

#[tokio::test]
async fn slow_readers_are_cut_off_and_others_served() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    let (agimo, _echo) = serve_echo(&["--send-timeout", "2s"]).await;
    let baseline = open_fds(agimo.child.id());
    let url = format!("http://{}/bytes/1048576", agimo.http);
    // 300 connections asking for 1 MiB ten times each, advertising a window
    // of at most 64 bytes and reading 32 bytes every 2 s.
    let args = [
        "-X", "-c", "300", "-r", "100", "-w", "1", "-y", "64", "-n", "2", "-z", "32", "-k", "10", "-l", "10", "-p",
        "3", "-u", &url,
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let attack = tokio::spawn(async move { slowhttptest(&args.iter().map(String::as_str).collect::<Vec<_>>()).await });
    let served = ordinary_client(agimo.http, Duration::from_secs(9)).await;
    // The attacker still holds its 300 connections (it reads too slowly to
    // see them end); Agimo has closed its side of them.
    let during = open_fds(agimo.child.id());
    let ticks = attack.await.unwrap();
    assert_served(&served);
    assert!(ticks.iter().any(|t| t.connected >= 250), "the attack never got going: {ticks:?}");
    assert!(during < baseline + 50, "agimo holds {during} descriptors (before the attack: {baseline})");
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test]
async fn ten_thousand_idle_connections_leave_others_served() {
    let _alone = ONE_ATTACK_AT_A_TIME.lock().await;
    let (agimo, _echo) = serve_echo(&[]).await;
    let before = agimo.rss_kib();
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..20 {
        let batch = (0..500).map(|_| tokio::net::TcpStream::connect(agimo.http));
        for stream in futures_util::future::join_all(batch).await {
            idle.push(stream.expect("connect"));
        }
    }
    let served = ordinary_client(agimo.http, Duration::from_secs(3)).await;
    assert_served(&served);
    let after = agimo.rss_kib();
    let per_connection = (after.saturating_sub(before) * 1024) / idle.len() as u64;
    println!("10,000 idle connections: RSS {before} KiB -> {after} KiB, {per_connection} bytes each");
    // A generous bound that still catches a per-connection buffer (hyper's
    // read buffer alone is 8 KiB); the benchmark measures the real figure.
    assert!(per_connection < 8 * 1024, "{per_connection} bytes per idle connection");
}
