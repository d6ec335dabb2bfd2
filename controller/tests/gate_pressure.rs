//! The scale-to-zero gate under pressure, against the `agimo` binary: ten
//! thousand requests held across ten hosts (HTTP/2, a hundred streams per
//! connection) fit the memory budget docs/behaviour.md states, `max-pending` turns
//! the next one away, and when the clients give up every held request is
//! released at once.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::wait::eventually_within;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::process::{Running, serve_config};

const HOSTS: usize = 10;
const PER_HOST: usize = 1000;
const STREAMS_PER_CONNECTION: usize = 100;
/// The budget for ten thousand held requests in docs/behaviour.md (resident memory
/// added to the process).
const BUDGET_MIB: u64 = 64;

fn config() -> String {
    let mut yaml = support::base_yaml(&[]) + &support::service_without_endpoints("app");
    for i in 0..HOSTS {
        let route = support::HttpRoute::new(&format!("r{i}"))
            .annotation("agimo.dev/scale-to-zero", "true")
            .annotation("agimo.dev/wait-timeout", "5m")
            .annotation("agimo.dev/max-pending", &PER_HOST.to_string())
            .hostname(&format!("host-{i}.example"))
            .backend("app");
        yaml.push_str(&route.yaml());
    }
    yaml
}

/// Waits (up to `limit`, see [`eventually_within`]) until `want` requests
/// are pending; returns how long it took.
async fn pending_reaches(agimo: &Running, want: f64, limit: Duration) -> Duration {
    let started = Instant::now();
    eventually_within(limit, &format!("{want} requests pending"), || async {
        let now = agimo.metric_total("pending_requests_total").await;
        if now == want { Ok(()) } else { Err(format!("pending is {now}")) }
    })
    .await;
    started.elapsed()
}

/// An h2c connection holding `STREAMS_PER_CONNECTION` requests for `host`.
async fn hold(addr: SocketAddr, host: String) -> tokio::task::JoinHandle<()> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(async move {
        let requests = (0..STREAMS_PER_CONNECTION).map(|_| {
            let mut sender = sender.clone();
            let req = http::Request::get(format!("http://{host}/"))
                .version(http::Version::HTTP_2)
                .body(Full::new(Bytes::new()))
                .unwrap();
            async move { sender.send_request(req).await.map(|r| r.status()) }
        });
        tokio::select! {
            _ = conn => {}
            answers = futures_util::future::join_all(requests) => panic!("held requests were answered: {:?}", &answers[..3]),
        }
    })
}

#[tokio::test]
async fn ten_thousand_held_requests_fit_the_budget_and_are_released_when_clients_leave() {
    let agimo = serve_config(&config(), &[]).await;
    let before = agimo.rss_kib();

    let mut clients = Vec::new();
    for i in 0..HOSTS {
        for _ in 0..PER_HOST / STREAMS_PER_CONNECTION {
            clients.push(hold(agimo.http, format!("host-{i}.example")).await);
        }
    }
    pending_reaches(&agimo, (HOSTS * PER_HOST) as f64, Duration::from_secs(60)).await;
    let held = agimo.rss_kib();
    let added = held.saturating_sub(before);
    println!(
        "{} held requests: RSS {before} KiB -> {held} KiB, {} bytes per request",
        HOSTS * PER_HOST,
        added * 1024 / (HOSTS * PER_HOST) as u64
    );
    assert!(added < BUDGET_MIB * 1024, "{added} KiB for {} held requests", HOSTS * PER_HOST);

    // A full host turns the next request away; the others are unaffected.
    let overflow = client::send(agimo.http, Mode::Http1, client::get("host-0.example", "/")).await.unwrap();
    assert_eq!(overflow.status, 503, "{overflow:?}");
    assert_eq!(overflow.header("x-agimo-reason"), Some("too-many-pending"));
    assert_eq!(overflow.header("retry-after"), Some("1"));

    // The clients give up: every held request goes at once.
    for client in &clients {
        client.abort();
    }
    let released = pending_reaches(&agimo, 0.0, Duration::from_secs(5)).await;
    println!("released in {released:?}");
    assert!(released < Duration::from_secs(2), "{released:?}");
}
