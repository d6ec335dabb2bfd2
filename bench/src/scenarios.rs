//! The measurements. Each prints a Markdown table of medians over
//! `--rounds` interleaved rounds, then the raw figures.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::Opts;
use crate::config;
use crate::load::{self, WrkRun};
use crate::peers::{self, AGIMO_PORT, AgimoPorts, Env, LARGE, SMALL_BODY, Target};
use crate::procs::{Proc, wait_for_port};

/// The processes shared by the side-by-side scenarios.
pub struct Peers {
    backend: Proc,
    echo: Proc,
    agimo: Option<Proc>,
    agimo_config: PathBuf,
    agimo_log: PathBuf,
    nginx: Proc,
    haproxy: Proc,
}

impl Peers {
    pub fn start(env: &Env) -> Result<Peers> {
        for port in [peers::BACKEND_PORT, peers::ECHO_PORT, AGIMO_PORT, peers::NGINX_PORT, peers::HAPROXY_PORT] {
            ensure!(
                TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port} is in use: is another benchmark (or a leftover nginx) running?"
            );
        }
        let backend = peers::start_backend(env)?;
        let echo = peers::start_echo(env)?;
        let nginx = peers::start_nginx_proxy(env)?;
        let haproxy = peers::start_haproxy(env)?;
        let agimo_config = env.path("agimo");
        config::write_base(&agimo_config, AGIMO_PORT)?;
        config::write_grpc(&agimo_config, peers::AGIMO_GRPC_PORT)?;
        config::write_tls(&agimo_config, peers::AGIMO_TLS_PORT)?;
        fs::write(agimo_config.join("routes.yaml"), config::basic_routes(0))?;
        let agimo = peers::start_agimo(env, &agimo_config, "agimo.log", AgimoPorts::MAIN)?;
        wait_for_port(AGIMO_PORT, Duration::from_secs(30))?;
        let peers =
            Peers { backend, echo, agimo: Some(agimo), agimo_config, agimo_log: env.path("agimo.log"), nginx, haproxy };
        for target in Target::ALL {
            let (status, body) = load::get(target.port(), "bench.example", "/", &[])?;
            ensure!(status == 200 && body == SMALL_BODY, "{} answered {status} {body:?}", target.name());
            wait_for_port(target.grpc_port(), Duration::from_secs(10))?;
            load::grpc_check(target.grpc_port()).with_context(|| format!("{} over gRPC", target.name()))?;
        }
        Ok(peers)
    }

    fn proxy(&mut self, target: Target) -> &mut Proc {
        match target {
            Target::Agimo => self.agimo.as_mut().expect("agimo is running"),
            Target::Nginx => &mut self.nginx,
            Target::Haproxy => &mut self.haproxy,
            Target::Direct => &mut self.backend,
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        for t in Target::ALL {
            self.proxy(t).check_alive()?;
        }
        Ok(())
    }

    /// Pins the echo backend (the gRPC scenario's backend).
    fn echo_pin(&self, cpus: &str) -> Result<()> {
        self.echo.pin(cpus)
    }

    pub fn stop_agimo(&mut self) {
        self.agimo = None;
    }
}

pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_owned()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&text).lines().next().unwrap_or_default().to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "Machine: {cores} cores, {cpu}. Peers: {}; {}; {}.",
        version("nginx", "-v"),
        version("haproxy", "-v"),
        version("wrk", "-v")
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

fn fmt_list(v: &[f64], digits: usize) -> String {
    v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

/// Medians by target.
pub struct ByTarget(Vec<(Target, Vec<f64>)>);

impl ByTarget {
    fn new(targets: &[Target]) -> Self {
        ByTarget(targets.iter().map(|&t| (t, Vec::new())).collect())
    }

    fn push(&mut self, target: Target, value: f64) {
        if let Some((_, v)) = self.0.iter_mut().find(|(t, _)| *t == target) {
            v.push(value);
        }
    }

    pub fn median(&self, target: Target) -> f64 {
        self.0.iter().find(|(t, _)| *t == target).map_or(f64::NAN, |(_, v)| median(v.clone()))
    }

    fn raw(&self, what: &str, digits: usize) {
        for (t, v) in &self.0 {
            println!("    raw {what} {}: [{}]", t.name(), fmt_list(v, digits));
        }
    }
}

/// 1. Throughput, unpinned, keep-alive, small responses.
pub fn throughput(opts: &Opts, peers: &mut Peers) -> Result<ByTarget> {
    println!("## 1. Throughput (wrk -t2 -c64, keep-alive, {SMALL_BODY:?} body, unpinned)\n");
    let mut rps = ByTarget::new(&Target::ALL);
    let mut errors = 0;
    for _ in 0..opts.rounds {
        for target in Target::ALL {
            let wrk = WrkRun::new(target.port(), "/", opts.seconds).run()?;
            rps.push(target, wrk.rps);
            errors += wrk.errors;
        }
    }
    peers.check_alive()?;
    let (nginx, direct) = (rps.median(Target::Nginx), rps.median(Target::Direct));
    println!("| target | requests/s (median) | × nginx | × direct |\n|---|---|---|---|");
    for t in Target::ALL {
        let r = rps.median(t);
        println!("| {} | {r:.0} | {:.2} | {:.2} |", t.name(), r / nginx, r / direct);
    }
    println!();
    rps.raw("requests/s", 0);
    println!("    errors (all runs): {errors}\n");
    Ok(rps)
}

/// gRPC: unary calls over h2c, many streams per connection (h2load), to the
/// echo backend's gRPC; throughput unpinned, then CPU per call with the proxy
/// on CPU 0 and the backend and h2load on CPU 1.
pub fn grpc(opts: &Opts, env: &Env, peers: &mut Peers) -> Result<()> {
    let (connections, streams) = (8, 16);
    println!(
        "## gRPC (h2load -c{connections} -m{streams}, unary calls with a 16-byte message, h2c; the echo backend answers)\n"
    );
    let mut rps = ByTarget::new(&Target::ALL);
    let mut errors = 0;
    for _ in 0..opts.rounds {
        for target in Target::ALL {
            let run = load::h2load(&env.work, target.grpc_port(), opts.seconds, connections, streams, None)?;
            rps.push(target, run.rps);
            errors += run.errors;
        }
    }
    for t in Target::PROXIES {
        peers.proxy(t).pin("0")?;
    }
    peers.echo_pin("1")?;
    let mut micros = ByTarget::new(&Target::PROXIES);
    for _ in 0..opts.rounds {
        for target in Target::PROXIES {
            let before = peers.proxy(target).cpu();
            let run = load::h2load(&env.work, target.grpc_port(), opts.seconds, connections, streams, Some("1"))?;
            let used = peers.proxy(target).cpu() - before;
            micros.push(target, used.as_secs_f64() * 1e6 / run.requests as f64);
            errors += run.errors;
        }
    }
    for t in Target::PROXIES {
        peers.proxy(t).pin("0,1")?;
    }
    peers.echo_pin("0,1")?;
    peers.check_alive()?;
    let (nginx, direct) = (rps.median(Target::Nginx), rps.median(Target::Direct));
    let nginx_cpu = micros.median(Target::Nginx);
    println!(
        "| target | calls/s (median) | × nginx | × direct | CPU µs/call (pinned) | × nginx |\n|---|---|---|---|---|---|"
    );
    for t in Target::ALL {
        let r = rps.median(t);
        let cpu = match t {
            Target::Direct => "– | –".to_owned(),
            _ => format!("{:.2} | {:.2}", micros.median(t), micros.median(t) / nginx_cpu),
        };
        println!("| {} | {r:.0} | {:.2} | {:.2} | {cpu} |", t.name(), r / nginx, r / direct);
    }
    println!();
    rps.raw("calls/s", 0);
    micros.raw("CPU µs/call", 2);
    println!("    errors (all runs): {errors}\n");
    Ok(())
}

/// TLS passthrough: HTTPS to the backend (which terminates TLS) through each
/// proxy routing by SNI without terminating: keep-alive requests/s, and new
/// connections/s (a full handshake each, no session resumption), with the
/// proxies' CPU per connection.
pub fn tls(opts: &Opts, peers: &mut Peers) -> Result<()> {
    println!(
        "## TLS passthrough (oha over HTTPS to the backend through each proxy, routed by SNI; ECDSA P-256, no resumption)\n"
    );
    let mut keepalive = ByTarget::new(&Target::ALL);
    let mut handshakes = ByTarget::new(&Target::ALL);
    let mut micros = ByTarget::new(&Target::PROXIES);
    let mut errors = 0;
    for _ in 0..opts.rounds {
        for target in Target::ALL {
            let run = load::oha_tls(&opts.oha, target.tls_port(), opts.seconds, 64, false)?;
            keepalive.push(target, run.rps);
            errors += run.errors;
            let before = (target != Target::Direct).then(|| peers.proxy(target).cpu());
            let run = load::oha_tls(&opts.oha, target.tls_port(), opts.seconds, 16, true)?;
            if let Some(before) = before {
                let used = peers.proxy(target).cpu() - before;
                let connections = run.rps * f64::from(opts.seconds);
                micros.push(target, used.as_secs_f64() * 1e6 / connections.max(1.0));
            }
            handshakes.push(target, run.rps);
            errors += run.errors;
        }
    }
    peers.check_alive()?;
    let (nginx_ka, nginx_hs, nginx_cpu) =
        (keepalive.median(Target::Nginx), handshakes.median(Target::Nginx), micros.median(Target::Nginx));
    println!(
        "| target | keep-alive requests/s | × nginx | new connections/s | × nginx | proxy CPU µs/connection | × nginx |\n\
         |---|---|---|---|---|---|---|"
    );
    for t in Target::ALL {
        let (k, h) = (keepalive.median(t), handshakes.median(t));
        let cpu = match t {
            Target::Direct => "– | –".to_owned(),
            _ => format!("{:.1} | {:.2}", micros.median(t), micros.median(t) / nginx_cpu),
        };
        println!("| {} | {k:.0} | {:.2} | {h:.0} | {:.2} | {cpu} |", t.name(), k / nginx_ka, h / nginx_hs);
    }
    println!();
    keepalive.raw("keep-alive requests/s", 0);
    handshakes.raw("new connections/s", 0);
    micros.raw("proxy CPU µs/connection", 1);
    println!("    errors (all runs): {errors}\n");
    Ok(())
}

/// 2. CPU per request: proxy pinned to CPU 0, backend and wrk to CPU 1.
pub fn cpu(opts: &Opts, peers: &mut Peers) -> Result<()> {
    println!("## 2. CPU per request (proxy on CPU 0; backend and wrk -t1 -c64 on CPU 1)\n");
    for t in Target::PROXIES {
        peers.proxy(t).pin("0")?;
    }
    peers.backend.pin("1")?;
    let mut micros = ByTarget::new(&Target::PROXIES);
    let mut rps = ByTarget::new(&Target::PROXIES);
    for _ in 0..opts.rounds {
        for target in Target::PROXIES {
            let before = peers.proxy(target).cpu();
            let wrk = WrkRun { threads: 1, cpus: Some("1"), ..WrkRun::new(target.port(), "/", opts.seconds) }.run()?;
            let used = peers.proxy(target).cpu() - before;
            micros.push(target, used.as_secs_f64() * 1e6 / wrk.requests as f64);
            rps.push(target, wrk.rps);
        }
    }
    for t in Target::ALL {
        peers.proxy(t).pin("0,1")?;
    }
    let nginx = micros.median(Target::Nginx);
    println!("| proxy | CPU µs/request (median) | × nginx | requests/s pinned |\n|---|---|---|---|");
    for t in Target::PROXIES {
        let m = micros.median(t);
        println!("| {} | {m:.2} | {:.2} | {:.0} |", t.name(), m / nginx, rps.median(t));
    }
    println!();
    micros.raw("µs/request", 2);
    println!();
    Ok(())
}

/// 3. Latency at a fixed rate below saturation (oha, latency correction).
pub fn latency(opts: &Opts, peers: &mut Peers, throughput: Option<&ByTarget>) -> Result<()> {
    // Half the slowest proxy's throughput, so no proxy is saturated.
    let slowest = throughput
        .map(|t| Target::PROXIES.iter().map(|&p| t.median(p)).fold(f64::INFINITY, f64::min))
        .filter(|r| r.is_finite())
        .unwrap_or(10_000.0);
    let rate = ((slowest / 2.0 / 1000.0).floor() as u32).max(1) * 1000;
    println!("## 3. Latency at a fixed {rate} requests/s (oha -c 32 --latency-correction, unpinned)\n");
    let mut p50 = ByTarget::new(&Target::ALL);
    let mut p99 = ByTarget::new(&Target::ALL);
    let mut achieved = ByTarget::new(&Target::ALL);
    let mut errors = 0;
    for _ in 0..opts.rounds {
        for target in Target::ALL {
            let r = load::oha(&opts.oha, target.port(), rate, opts.seconds, 32)?;
            p50.push(target, r.p50_ms);
            p99.push(target, r.p99_ms);
            achieved.push(target, r.rps);
            errors += r.errors;
        }
    }
    peers.check_alive()?;
    let nginx = p99.median(Target::Nginx);
    println!("| target | p50 ms | p99 ms | p99 × nginx | achieved requests/s |\n|---|---|---|---|---|");
    for t in Target::ALL {
        let (a, b) = (p50.median(t), p99.median(t));
        println!("| {} | {a:.3} | {b:.3} | {:.2} | {:.0} |", t.name(), b / nginx, achieved.median(t));
    }
    println!();
    p50.raw("p50 ms", 3);
    p99.raw("p99 ms", 3);
    println!("    errors (all runs): {errors}\n");
    Ok(())
}

/// Route-table sweep (scenario 4): one Agimo per table size, all running
/// side by side on CPU 0, measured in interleaved rounds as the peers are,
/// so that drift on a shared machine falls on every size alike.
pub fn routes(opts: &Opts, env: &Env) -> Result<()> {
    println!(
        "## 4. Route-table sweep (one Agimo per size, side by side on CPU 0, rounds interleaved; wrk -t1 -c64 on CPU 1 cycling through up to 1,000 routes spread over the table)\n"
    );
    struct Size {
        n: usize,
        agimo: Proc,
        port: u16,
        script: PathBuf,
        compile_ms: f64,
        micros: Vec<f64>,
        errors: u64,
    }
    let mut sizes = Vec::new();
    for (i, &n) in opts.routes.iter().enumerate() {
        let ports = AgimoPorts::sweep(u16::try_from(i)?);
        let dir = env.path(&format!("routes-{n}"));
        config::write_base(&dir, ports.listener)?;
        let (yaml, probes) = config::route_table(n);
        fs::write(dir.join("routes.yaml"), yaml)?;
        let step = (n / 1000).max(1);
        let sample: Vec<&config::Probe> = probes.iter().step_by(step).collect();
        let script = env.path(&format!("routes-{n}.lua"));
        fs::write(&script, config::wrk_script(&sample))?;
        let log = format!("agimo-routes-{n}.log");
        let agimo = peers::start_agimo(env, &dir, &log, ports)?;
        wait_for_port(ports.listener, Duration::from_secs(300))?;
        let compile_ms = compile_times(&env.path(&log))?.last().copied().context("no compile in the log")?;
        for p in [sample[0], sample[sample.len() / 2], sample[sample.len() - 1]] {
            let (status, _) = load::get(ports.listener, &p.host, &p.path, &p.headers)?;
            ensure!(status == 200, "route probe {}{} answered {status}", p.host, p.path);
        }
        agimo.pin("0")?;
        sizes.push(Size { n, agimo, port: ports.listener, script, compile_ms, micros: Vec::new(), errors: 0 });
    }
    for _ in 0..opts.rounds {
        for size in &mut sizes {
            let before = size.agimo.cpu();
            let wrk = WrkRun {
                threads: 1,
                cpus: Some("1"),
                script: Some(&size.script),
                ..WrkRun::new(size.port, "/", opts.seconds)
            }
            .run()?;
            size.micros.push((size.agimo.cpu() - before).as_secs_f64() * 1e6 / wrk.requests as f64);
            size.errors += wrk.errors;
        }
    }
    println!("| HTTPRoutes | compile ms | µs/request | × 100 routes | RSS MB | errors |\n|---|---|---|---|---|---|");
    let mut base = None;
    for size in &mut sizes {
        size.agimo.check_alive()?;
        let rss_mb = size.agimo.rss() as f64 / (1 << 20) as f64;
        let m = median(size.micros.clone());
        let base = *base.get_or_insert(m);
        println!("| {} | {:.1} | {m:.2} | {:.2} | {rss_mb:.1} | {} |", size.n, size.compile_ms, m / base, size.errors);
    }
    println!();
    for size in &sizes {
        println!("    raw µs/request at {} routes: [{}]", size.n, fmt_list(&size.micros, 2));
    }
    println!();
    Ok(())
}

/// The `compile_ms` of every "configuration compiled" line of Agimo's JSON log.
fn compile_times(log: &Path) -> Result<Vec<f64>> {
    let text = fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter(|l| l.contains("configuration compiled"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["fields"]["compile_ms"].as_f64())
        .collect())
}

/// 5. Memory per idle client connection.
pub fn idle(opts: &Opts, peers: &mut Peers) -> Result<()> {
    println!("## 5. Idle client connections (RSS growth / connections)\n");
    println!(
        "| proxy | connections | bytes per connection, no request yet | bytes per connection, after one request |\n|---|---|---|---|"
    );
    for target in Target::PROXIES {
        // A little below the proxy's own cap, so none is refused.
        let n = opts.idle_connections.min(target.max_connections() - 40);
        // The same connections, first idle before any request, then idle
        // after one request each: memory the proxy freed in between cannot
        // be reused for the second figure.
        let before = peers.proxy(target).rss();
        let mut conns = open_idle(target.port(), n)?;
        std::thread::sleep(Duration::from_millis(1500));
        let connected = peers.proxy(target).rss();
        request_each(&mut conns)?;
        // Idle means idle for a while: Agimo parks an HTTP/1.1 connection
        // (frees hyper's buffers for it) after a second without a request.
        std::thread::sleep(Duration::from_millis(3000));
        let after_request = peers.proxy(target).rss();
        peers.proxy(target).check_alive()?;
        drop(conns);
        std::thread::sleep(Duration::from_millis(1500));
        let per = |rss: u64| rss.saturating_sub(before) as f64 / n as f64;
        println!("| {} | {n} | {:.0} | {:.0} |", target.name(), per(connected), per(after_request));
    }
    println!();
    Ok(())
}

fn open_idle(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    (0..n).map(|i| TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connection {i}"))).collect()
}

/// One request on each connection, its response read whole.
fn request_each(conns: &mut [TcpStream]) -> Result<()> {
    let request = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n";
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request)?;
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(SMALL_BODY.as_bytes()) {
            let k = s.read(&mut buf)?;
            ensure!(k > 0, "connection {i} closed before the response ended");
            got.extend_from_slice(&buf[..k]);
        }
    }
    Ok(())
}

/// Scenario 8, requests held at the scale-to-zero gate: the memory they
/// take, what the request past `max-pending` gets, and how fast they are
/// released when their clients go.
pub fn held(opts: &Opts, peers: &mut Peers) -> Result<()> {
    const HOSTS: usize = 10;
    let n = opts.held - opts.held % HOSTS;
    println!("## 8. {n} requests held at the scale-to-zero gate ({HOSTS} hosts, HTTP/1.1, one connection each)\n");
    let file = peers.agimo_config.join("held.yaml");
    fs::write(&file, config::held_routes(HOSTS, n / HOSTS))?;
    let pending = || -> Result<Option<f64>> {
        let (_, text) = load::get(peers::AGIMO_METRICS_PORT, "metrics", "/metrics", &[])?;
        let mut series = text.lines().filter(|l| l.starts_with("pending_requests_total{host=\"held-")).peekable();
        if series.peek().is_none() {
            return Ok(None);
        }
        Ok(Some(series.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()))
    };
    wait_until("the held routes are served", Duration::from_secs(10), || Ok(pending()?.is_some()))?;
    std::thread::sleep(Duration::from_millis(500));
    let before = peers.proxy(Target::Agimo).rss();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", AGIMO_PORT)).with_context(|| format!("connection {i}"))?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: held-{}.bench\r\n\r\n", i % HOSTS).as_bytes())?;
        conns.push(s);
    }
    wait_until("every request is held", Duration::from_secs(60), || Ok(pending()? == Some(n as f64)))?;
    let held = peers.proxy(Target::Agimo).rss();
    let (over, _) = load::get(AGIMO_PORT, "held-0.bench", "/", &[])?;
    peers.proxy(Target::Agimo).check_alive()?;
    drop(conns);
    let gone = Instant::now();
    wait_until("the held requests are released", Duration::from_secs(30), || Ok(pending()? == Some(0.0)))?;
    let released = gone.elapsed();
    fs::remove_file(&file)?;
    println!(
        "| held | RSS before | RSS holding | bytes per held request | one more request | all released after the clients left |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.1} MB | {:.1} MB | {:.0} | {over} | {} ms |",
        before as f64 / 1e6,
        held as f64 / 1e6,
        held.saturating_sub(before) as f64 / n as f64,
        released.as_millis()
    );
    println!();
    Ok(())
}

/// Polls `check` every 20 ms until it holds, or fails after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !check()? {
        ensure!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// 6. Snapshot swaps under load, with websockets open.
pub fn swaps(opts: &Opts, env: &Env, peers: &mut Peers) -> Result<()> {
    let (n, sockets) = (opts.swaps, opts.websockets);
    println!("## 6. {n} snapshot swaps under load (wrk -t1 -c32) with {sockets} websockets open\n");
    let routes = peers.agimo_config.join("routes.yaml");
    let mut compiled = compile_times(&peers.agimo_log)?.len();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let exchanged = Arc::new(AtomicU64::new(0));
    let websockets = runtime.block_on(ws::open(sockets))?;
    let pingers = std::thread::spawn({
        let (stop, exchanged) = (stop.clone(), exchanged.clone());
        move || runtime.block_on(ws::exchange(websockets, stop, exchanged))
    });
    let wrk = WrkRun { threads: 1, connections: 32, ..WrkRun::new(AGIMO_PORT, "/", 3600) }
        .spawn(&env.path("swaps-wrk.log"))?;
    let started = Instant::now();
    for generation in 1..=n {
        let tmp = routes.with_extension("tmp");
        fs::write(&tmp, config::basic_routes(generation))?;
        fs::rename(&tmp, &routes)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = compile_times(&peers.agimo_log)?.len();
            if now > compiled {
                compiled = now;
                break;
            }
            if Instant::now() > deadline {
                bail!("swap {generation} was not compiled within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let elapsed = started.elapsed();
    wrk.interrupt();
    wrk.wait(Duration::from_secs(10))?;
    stop.store(true, Ordering::Release);
    let dropped = pingers.join().map_err(|_| anyhow::anyhow!("the websocket thread panicked"))??;
    let report = load::parse_wrk(&fs::read_to_string(env.path("swaps-wrk.log"))?)?;
    let served = load::get(AGIMO_PORT, "bench.example", "/", &[])?;
    ensure!(served.0 == 200, "after the swaps: {}", served.0);
    println!("| swaps | seconds | requests | request errors | websockets dropped | websocket messages echoed |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.1} | {} | {} | {dropped} of {sockets} | {} |\n",
        elapsed.as_secs_f64(),
        report.requests,
        report.errors,
        exchanged.load(Ordering::Acquire)
    );
    Ok(())
}

mod ws {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::Result;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use crate::peers::AGIMO_PORT;

    type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    pub async fn open(n: usize) -> Result<Vec<Ws>> {
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{AGIMO_PORT}/ws")).await?;
            sockets.push(ws);
        }
        Ok(sockets)
    }

    /// Each websocket sends a message every 100 ms and expects its echo
    /// until `stop`; returns how many failed (closed, errored, or no echo
    /// within 5 s).
    pub async fn exchange(sockets: Vec<Ws>, stop: Arc<AtomicBool>, exchanged: Arc<AtomicU64>) -> Result<usize> {
        let tasks: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| {
                let (stop, exchanged) = (stop.clone(), exchanged.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let text = format!("socket {i} message {n}");
                        if ws.send(Message::text(text.clone())).await.is_err() {
                            return false;
                        }
                        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                            Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => {}
                            _ => return false,
                        }
                        exchanged.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    ws.close(None).await.is_ok()
                })
            })
            .collect();
        let mut dropped = 0;
        for task in tasks {
            if !task.await.unwrap_or(false) {
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

/// 7. Large bodies: 1 MiB downloads and uploads, streamed.
pub fn bodies(opts: &Opts, env: &Env, peers: &mut Peers) -> Result<()> {
    println!("## 7. Large bodies (1 MiB per request, wrk -t1 -c8, unpinned)\n");
    let script = env.path("upload.lua");
    fs::write(&script, config::upload_script())?;
    let mut down = ByTarget::new(&Target::ALL);
    let mut up = ByTarget::new(&Target::ALL);
    let mut peak_growth = Vec::new();
    let mib = |rps: f64| rps * LARGE as f64 / (1 << 20) as f64;
    for _ in 0..opts.rounds {
        for target in Target::ALL {
            let baseline = peers.proxy(target).rss();
            let sampler = RssSampler::start(peers.proxy(target));
            let run = |port: u16, path: &str, script: Option<&Path>| {
                WrkRun { threads: 1, connections: 8, script, ..WrkRun::new(port, path, opts.seconds) }.run()
            };
            let d = run(target.port(), "/1m", None)?;
            let upload_port = if target == Target::Direct { peers::ECHO_PORT } else { target.port() };
            let u = run(upload_port, "/upload", Some(&script))?;
            let peak = sampler.stop();
            ensure!(
                d.errors == 0 && u.errors == 0,
                "{}: {} download and {} upload errors",
                target.name(),
                d.errors,
                u.errors
            );
            down.push(target, mib(d.rps));
            up.push(target, mib(u.rps));
            if target == Target::Agimo {
                peak_growth.push(peak.saturating_sub(baseline) as f64 / (1 << 20) as f64);
            }
        }
    }
    let nginx = (down.median(Target::Nginx), up.median(Target::Nginx));
    println!("| target | download MiB/s | × nginx | upload MiB/s | × nginx |\n|---|---|---|---|---|");
    for t in Target::ALL {
        let (d, u) = (down.median(t), up.median(t));
        println!("| {} | {d:.0} | {:.2} | {u:.0} | {:.2} |", t.name(), d / nginx.0, u / nginx.1);
    }
    let growth = median(peak_growth.clone());
    println!(
        "\nAgimo's peak RSS growth while 8 connections move 1 MiB bodies both ways: {growth:.1} MiB, {:.0} KiB per \
         connection (median): bounded by hyper's per-connection buffers, not by the body size.\n",
        growth * 1024.0 / 8.0
    );
    down.raw("download MiB/s", 0);
    up.raw("upload MiB/s", 0);
    println!("    raw Agimo peak RSS growth MiB: [{}]\n", fmt_list(&peak_growth, 1));
    Ok(())
}

/// Samples a process tree's RSS every 20 ms and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(proc: &Proc) -> Self {
        let pids = proc.tree();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = 0;
                while !stop.load(Ordering::Acquire) {
                    peak = peak.max(crate::procs::rss_of(&pids));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            }
        });
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or(0)
    }
}
