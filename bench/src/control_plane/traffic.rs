//! Traffic during the scenarios: keep-alive HTTP/1.1 clients through the
//! Gateway, either checking every answer (a 200 from one of the expected
//! backends) or sending at a fixed rate as background load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What the clients saw.
pub struct Tally {
    /// When the clients started (problems are printed with their time).
    pub started: Instant,
    pub ok: AtomicU64,
    /// Answers other than 200.
    pub not_ok: AtomicU64,
    /// 200s from a backend that should not have answered.
    pub wrong_backend: AtomicU64,
    /// Connections refused or broken, requests without an answer.
    pub failed: AtomicU64,
    /// The first few problems, to print.
    pub examples: Mutex<Vec<String>>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            started: Instant::now(),
            ok: AtomicU64::new(0),
            not_ok: AtomicU64::new(0),
            wrong_backend: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        }
    }
}

impl Tally {
    fn note(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < 3 {
            let what = what.lines().next().unwrap_or_default().to_owned();
            examples.push(format!("{what} at {:.2} s", self.started.elapsed().as_secs_f64()));
        }
    }

    pub fn summary(&self) -> String {
        let examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "{} answered 200 from a right backend, {} other statuses, {} from a wrong backend, {} failed{}",
            self.ok.load(Ordering::Relaxed),
            self.not_ok.load(Ordering::Relaxed),
            self.wrong_backend.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            if examples.is_empty() { String::new() } else { format!(" (e.g. {})", examples.join("; ")) }
        )
    }
}

/// A keep-alive connection, opened again when it breaks.
struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Connection { addr, sender: None }
    }

    /// GET `path` with `host`: the status and the body.
    async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        let request =
            Request::get(path).header(http::header::HOST, host).body(Empty::new()).map_err(|e| e.to_string())?;
        let result = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(10), result).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.sender = None;
                Err("no answer within 10 s".to_owned())
            }
        }
    }
}

/// The pod that answered, from echo-basic's JSON.
fn pod(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json["pod"].as_str().map(str::to_owned)
}

/// Sends GETs of `path` to `host` one after another until `stop`, checking
/// each: a 200 from a pod whose name starts with one of `backends`.
pub fn check(
    addr: SocketAddr,
    host: String,
    path: String,
    backends: Vec<String>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = Connection::new(addr);
        while !stop.load(Ordering::Relaxed) {
            match conn.get(&host, &path).await {
                Ok((200, body)) => match pod(&body) {
                    Some(p) if backends.iter().any(|b| p.starts_with(&format!("{b}-"))) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tally.note(&tally.wrong_backend, format!("{host}{path} answered by {other:?}")),
                },
                Ok((status, body)) => {
                    let body = String::from_utf8_lossy(&body).chars().take(120).collect::<String>();
                    tally.note(&tally.not_ok, format!("{host}{path}: {status} {body}"))
                }
                Err(e) => tally.note(&tally.failed, format!("{host}{path}: {e}")),
            }
        }
    })
}

/// Background load: `rate` GETs per second to `host` over `connections`
/// keep-alive connections until `stop`. Returns what was sent and answered.
pub fn background(
    addr: SocketAddr,
    host: String,
    rate: u32,
    connections: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Duration)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..connections {
            let (host, stop, sent, failed) = (host.clone(), stop.clone(), sent.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                // Spread the connections' ticks over one period.
                tokio::time::sleep(period * i / connections).await;
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut conn = Connection::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !matches!(conn.get(&host, "/").await, Ok((200, _))) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), started.elapsed())
    })
}

/// GETs `path` of `host` on new connections until it answers 200 (every
/// `interval`), up to `limit`; the time it took.
pub async fn until_served(
    addr: SocketAddr,
    (host, path): (&str, &str),
    interval: Duration,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let mut conn = Connection::new(addr);
        if let Ok((200, _)) = conn.get(host, path).await {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}
