//! Load generators and their reports: wrk (closed loop, throughput), oha
//! (open loop at a fixed rate, with latency correction) and h2load (gRPC
//! calls over h2c), plus one-shot HTTP/1.1 and gRPC probes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::procs::Proc;

/// What wrk reported.
#[derive(Clone, Debug, Default)]
pub struct Wrk {
    pub requests: u64,
    pub rps: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx
    /// responses.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A wrk run: `connections` over `threads`, for `seconds`.
pub struct WrkRun<'a> {
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
    pub host: Option<&'a str>,
    pub script: Option<&'a Path>,
    /// Runs wrk under `taskset -c` with these CPUs.
    pub cpus: Option<&'a str>,
}

impl WrkRun<'_> {
    pub fn new(port: u16, path: &str, seconds: u32) -> WrkRun<'static> {
        WrkRun {
            url: format!("http://127.0.0.1:{port}{path}"),
            threads: 2,
            connections: 64,
            seconds,
            host: None,
            script: None,
            cpus: None,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, "wrk"]);
                c
            }
            None => Command::new("wrk"),
        };
        cmd.args([
            "--latency",
            "-t",
            &self.threads.to_string(),
            "-c",
            &self.connections.to_string(),
            "-d",
            &format!("{}s", self.seconds),
            "--timeout",
            "10s",
        ]);
        if let Some(host) = self.host {
            cmd.args(["-H", &format!("Host: {host}")]);
        }
        if let Some(script) = self.script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(&self.url);
        cmd
    }

    pub fn run(&self) -> Result<Wrk> {
        let out = self.command().output().context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        }
        parse_wrk(&text)
    }

    /// Starts wrk in the background with its report in `log`; stop it with
    /// [`Proc::interrupt`] and read the report with [`parse_wrk`].
    pub fn spawn(&self, log: &Path) -> Result<Proc> {
        Proc::spawn("wrk", &mut self.command(), log)
    }
}

pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut wrk = Wrk::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rps] => wrk.rps = rps.parse()?,
            [n, "requests", "in", ..] => wrk.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => wrk.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                wrk.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            ["50%", v] => wrk.p50_ms = parse_duration_ms(v)?,
            ["99%", v] => wrk.p99_ms = parse_duration_ms(v)?,
            _ => {}
        }
    }
    if wrk.requests == 0 {
        bail!("wrk reported no requests:\n{text}");
    }
    Ok(wrk)
}

fn parse_duration_ms(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("a unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("unknown unit in {v}"),
    })
}

/// What oha reported for a fixed-rate run.
#[derive(Clone, Debug, Default)]
pub struct Oha {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Sends `rate` requests per second for `seconds` over `connections`,
/// measuring each request from when it was due (latency correction).
pub fn oha(oha: &Path, port: u16, rate: u32, seconds: u32, connections: u32) -> Result<Oha> {
    let out = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "--latency-correction", "--disable-compression"])
        .args(["-z", &format!("{seconds}s"), "-q", &rate.to_string(), "-c", &connections.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha's JSON report")?;
    let pct = |p: &str| json["latencyPercentiles"][p].as_f64().map(|s| s * 1000.0).unwrap_or(f64::NAN);
    let statuses = json["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    let not_ok: u64 = statuses.iter().filter(|(code, _)| !code.starts_with('2')).filter_map(|(_, n)| n.as_u64()).sum();
    // Requests still in flight when the run's time is up are cut off by oha
    // itself ("aborted due to deadline"); they are not the target's errors.
    let failed: u64 = json["errorDistribution"]
        .as_object()
        .map_or(0, |e| e.iter().filter(|(what, _)| !what.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum());
    Ok(Oha {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        errors: not_ok + failed,
    })
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status and body.
pub fn get(port: u16, host: &str, path: &str, headers: &[(String, String)]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("a status line")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The gRPC method the benchmark calls (the echo backend answers any).
pub const GRPC_PATH: &str = "/bench.Echo/Get";

/// One unary gRPC call to `port`: it must end with `grpc-status: 0` and the
/// echo's two messages (its description of the call, then ours).
pub fn grpc_check(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let reply = runtime.block_on(agimo_testkit::grpc::unary(addr, "bench.example", GRPC_PATH, &[], b"ping"))?;
    let status = reply.grpc_status();
    if status != Some(0) || reply.messages.len() != 2 || reply.messages[1].as_ref() != b"ping" {
        bail!("the call ended with grpc-status {status:?} and {} messages: {reply:?}", reply.messages.len());
    }
    Ok(())
}

/// What h2load reported.
#[derive(Clone, Debug, Default)]
pub struct H2load {
    pub requests: u64,
    pub rps: f64,
    /// Requests that failed or errored, and responses other than 2xx.
    pub errors: u64,
}

/// gRPC calls (a 5-byte-framed 16-byte message each) with h2load for
/// `seconds`: `connections` h2c connections of `streams` concurrent streams.
pub fn h2load(
    work: &Path,
    port: u16,
    seconds: u32,
    connections: u32,
    streams: u32,
    cpus: Option<&str>,
) -> Result<H2load> {
    let body = work.join("grpc-request.bin");
    if !body.exists() {
        std::fs::write(&body, agimo_testkit::grpc::frame(b"0123456789abcdef"))?;
    }
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "h2load"]);
            c
        }
        None => Command::new("h2load"),
    };
    cmd.args(["-D", &seconds.to_string(), "-t", "1", "-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(&body)
        .arg(format!("http://127.0.0.1:{port}{GRPC_PATH}"));
    let out = cmd.output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_h2load(&text)
}

pub fn parse_h2load(text: &str) -> Result<H2load> {
    let mut report = H2load::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().map(|w| w.trim_end_matches(',')).collect();
        match words.as_slice() {
            ["finished", "in", _, rps, "req/s", ..] => report.rps = rps.parse()?,
            [
                "requests:",
                total,
                "total",
                _,
                "started",
                _,
                "done",
                _,
                "succeeded",
                failed,
                "failed",
                errored,
                "errored",
                ..,
            ] => {
                report.requests = total.parse()?;
                report.errors += failed.parse::<u64>()? + errored.parse::<u64>()?;
            }
            ["status", "codes:", _, "2xx", n3, "3xx", n4, "4xx", n5, "5xx"] => {
                report.errors += n3.parse::<u64>()? + n4.parse::<u64>()? + n5.parse::<u64>()?;
            }
            _ => {}
        }
    }
    if report.requests == 0 {
        bail!("h2load reported no requests:\n{text}");
    }
    Ok(report)
}

/// HTTPS GETs of `/` for `seconds` over `connections` with oha, to
/// [`crate::peers::TLS_HOST`] at `port` (SNI and Host; the certificate is
/// not verified); with `new_connections`, one TLS handshake per request.
/// Returns requests/s, requests and errors.
pub fn oha_tls(oha: &Path, port: u16, seconds: u32, connections: u32, new_connections: bool) -> Result<Oha> {
    let host = crate::peers::TLS_HOST;
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--output-format", "json", "--insecure", "--disable-compression"])
        .args(["-z", &format!("{seconds}s"), "-c", &connections.to_string()])
        .args(["--connect-to", &format!("{host}:{port}:127.0.0.1:{port}")]);
    if new_connections {
        cmd.arg("--disable-keepalive");
    }
    let out = cmd.arg(format!("https://{host}:{port}/")).output().context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha's JSON report")?;
    let statuses = json["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    let not_ok: u64 = statuses.iter().filter(|(code, _)| !code.starts_with('2')).filter_map(|(_, n)| n.as_u64()).sum();
    let ok: u64 = statuses.iter().filter(|(code, _)| code.starts_with('2')).filter_map(|(_, n)| n.as_u64()).sum();
    let failed: u64 = json["errorDistribution"]
        .as_object()
        .map_or(0, |e| e.iter().filter(|(what, _)| !what.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum());
    if ok == 0 {
        bail!("oha got no 2xx from port {port}: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(Oha {
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: not_ok + failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_reports_are_read() {
        let text = "starting benchmark...
finished in 8.00s, 41235.50 req/s, 3.11MB/s
requests: 329884 total, 329884 started, 329884 done, 329880 succeeded, 4 failed, 1 errored, 0 timeout
status codes: 329880 2xx, 0 3xx, 2 4xx, 0 5xx
";
        let r = parse_h2load(text).unwrap();
        assert_eq!((r.requests, r.errors), (329_884, 7));
        assert!((r.rps - 41_235.5).abs() < 0.01);
        assert!(parse_h2load("nothing").is_err());
    }
}
