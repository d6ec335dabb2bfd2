//! HTTP/2 abuse against the `agimo` binary, frame by frame: rapid reset,
//! CONTINUATION flood, SETTINGS, PING, PRIORITY and empty-frame floods, a
//! stream-count flood. Each attack is cut short, or held to the stream limit,
//! with bounded memory, and an ordinary client is served throughout.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agimo_testkit::client::{self, Mode};
use agimo_testkit::h2raw::*;
use support::process::{Running, serve_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A literal header `x-flood: <value>`, without indexing.
fn filler_header(value_len: usize) -> Vec<u8> {
    literal(b"x-flood", &vec![b'a'; value_len.min(126)])
}

/// How an attack ended, as the attacker saw it.
#[derive(Debug, Default)]
struct Ended {
    /// The error code of a GOAWAY frame Agimo sent.
    goaway: Option<u32>,
    /// Agimo closed the connection before the attacker gave up (a close
    /// that only answers the attacker's own is not Agimo's doing).
    closed_by_agimo: bool,
    /// Bytes the attacker got written before it stopped.
    sent: usize,
    /// Frames received, by type.
    received: std::collections::BTreeMap<u8, usize>,
}

/// HTTP/2's error code for a peer that is "exhibiting a behavior that might
/// be generating excessive load" (RFC 9113, 7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

impl Ended {
    /// Agimo cut the attacker off: a GOAWAY for its behaviour, or a close
    /// of its own.
    fn cut_off(&self) -> bool {
        self.goaway == Some(ENHANCE_YOUR_CALM) || self.closed_by_agimo
    }
}

/// Connects, sends the preface, then writes `frames()` batches (each call
/// gives the next batch) for up to `period`, while reading whatever comes
/// back.
async fn attack(addr: SocketAddr, period: Duration, mut batch: impl FnMut(usize) -> Vec<u8> + Send) -> Ended {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let gave_up = Arc::new(AtomicBool::new(false));
    let attacker_gave_up = gave_up.clone();
    let read = tokio::spawn(async move {
        let mut ended = Ended::default();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    ended.closed_by_agimo = !attacker_gave_up.load(Ordering::SeqCst);
                    return ended;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Walk the complete frames; keep the rest.
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
                if buf.len() < at + 9 + len {
                    break;
                }
                *ended.received.entry(buf[at + 3]).or_default() += 1;
                if buf[at + 3] == GOAWAY && len >= 8 {
                    let p = &buf[at + 9..at + 9 + len];
                    ended.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += 9 + len;
            }
            buf.drain(..at);
        }
    });
    let mut sent = 0;
    let mut write_failed = false;
    let start = PREFACE.iter().copied().chain(frame(SETTINGS, 0, 0, &[])).collect::<Vec<u8>>();
    if writer.write_all(&start).await.is_ok() {
        sent += start.len();
        let deadline = Instant::now() + period;
        let mut round = 0;
        while Instant::now() < deadline && !read.is_finished() {
            let bytes = batch(round);
            round += 1;
            if bytes.is_empty() {
                // Nothing more to send: hold on to what is open.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            match tokio::time::timeout_at(deadline.into(), writer.write_all(&bytes)).await {
                Ok(Ok(())) => sent += bytes.len(),
                // Agimo closed or reset the connection.
                Ok(Err(_)) => {
                    write_failed = true;
                    break;
                }
                // Agimo stopped reading (back-pressure) until the end.
                Err(_) => break,
            }
        }
    } else {
        write_failed = true;
    }
    // The attacker closes its side only now: if Agimo has not closed by
    // then, any close that follows answers the attacker's.
    if !write_failed {
        gave_up.store(true, Ordering::SeqCst);
    }
    drop(writer);
    let mut ended = match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(ended) => ended.unwrap(),
        Err(_) => Ended::default(),
    };
    ended.sent = sent;
    ended
}

async fn ordinary(addr: SocketAddr) -> Result<(), String> {
    let reply =
        tokio::time::timeout(Duration::from_secs(2), client::send(addr, Mode::H2c, client::get("ok.example", "/")))
            .await
            .map_err(|_| "no answer within 2 s".to_owned())?
            .map_err(|e| e.to_string())?;
    if reply.status == 200 { Ok(()) } else { Err(format!("status {}", reply.status)) }
}

/// What an attack did to Agimo.
#[derive(Debug)]
struct Effect {
    ended: Ended,
    /// Resident memory added at the peak, KiB.
    added_kib: u64,
    /// The most requests active at once.
    peak_active: f64,
    /// CPU time Agimo used during the attack (the ordinary client's requests
    /// included).
    cpu: Duration,
}

/// User and system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Runs an attack while an ordinary h2c client sends a request every 50 ms.
async fn under_attack(
    agimo: &Running,
    period: Duration,
    batch: impl FnMut(usize) -> Vec<u8> + Send + 'static,
) -> Effect {
    let pid = agimo.child.id();
    let before = agimo.rss_kib();
    let cpu_before = cpu_time(pid);
    let attacker = tokio::spawn(attack(agimo.http, period, batch));
    let mut peak = before;
    let mut peak_active: f64 = 0.0;
    let mut failures = Vec::new();
    let mut served = 0;
    while !attacker.is_finished() {
        match ordinary(agimo.http).await {
            Ok(()) => served += 1,
            Err(e) => failures.push(e),
        }
        peak = peak.max(agimo.rss_kib());
        peak_active = peak_active.max(agimo.metric_total("active_requests_total").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = attacker.await.unwrap();
    peak = peak.max(agimo.rss_kib());
    assert!(failures.is_empty(), "the ordinary client failed {} times: {failures:?}", failures.len());
    assert!(served > 0 || period < Duration::from_secs(1), "the ordinary client was never served");
    assert_eq!(ordinary(agimo.http).await, Ok(()), "served after the attack");
    Effect { ended, added_kib: peak.saturating_sub(before), peak_active, cpu: cpu_time(pid) - cpu_before }
}

const PERIOD: Duration = Duration::from_secs(4);
/// More memory than any of these attacks may add to Agimo.
const BOUND_KIB: u64 = 32 * 1024;

#[tokio::test]
async fn rapid_reset_is_cut_off() {
    let (agimo, _echo) = serve_echo(&[]).await;
    let authority = agimo.http.to_string();
    let block = get_block(&authority);
    let mut next_stream = 1u32;
    let effect = under_attack(&agimo, PERIOD, move |_| {
        let mut bytes = Vec::new();
        for _ in 0..500 {
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, next_stream, &block));
            bytes.extend(frame(RST_STREAM, 0, next_stream, &8u32.to_be_bytes()));
            next_stream += 2;
        }
        bytes
    })
    .await;
    println!("rapid reset: {effect:?}");
    assert!(effect.ended.cut_off(), "the attacker was not cut off: {effect:?}");
    assert!(effect.added_kib < BOUND_KIB, "{effect:?}");
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let (agimo, _echo) = serve_echo(&[]).await;
    let authority = agimo.http.to_string();
    let block = get_block(&authority);
    let filler: Vec<u8> = (0..100).flat_map(|_| filler_header(100)).collect();
    let effect = under_attack(&agimo, PERIOD, move |round| {
        let mut bytes = Vec::new();
        if round == 0 {
            bytes.extend(frame(HEADERS, END_STREAM, 1, &block));
        }
        for _ in 0..100 {
            bytes.extend(frame(CONTINUATION, 0, 1, &filler));
        }
        bytes
    })
    .await;
    println!("CONTINUATION flood: {effect:?}");
    assert!(effect.ended.cut_off(), "the attacker was not cut off: {effect:?}");
    assert!(effect.ended.sent < 16 << 20, "{effect:?}");
    assert!(effect.added_kib < BOUND_KIB, "{effect:?}");
}

#[tokio::test]
async fn settings_ping_and_empty_frame_floods_are_cut_off() {
    let (agimo, _echo) = serve_echo(&[]).await;
    let floods: [(&str, u8, u8, Vec<u8>); 4] = [
        ("SETTINGS", SETTINGS, 0, vec![]),
        ("PING", PING, 0, vec![0u8; 8]),
        ("PRIORITY", PRIORITY, 0, vec![0, 0, 0, 0, 16]),
        ("empty DATA", DATA, 0, vec![]),
    ];
    for (name, kind, flags, payload) in floods {
        // The attacker reads every answer, as fast as it can.
        let stream = if kind == DATA || kind == PRIORITY { 1 } else { 0 };
        let block = post_block(&agimo.http.to_string());
        let effect = under_attack(&agimo, PERIOD, move |round| {
            let mut bytes = Vec::new();
            if round == 0 && stream == 1 {
                bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
            }
            bytes.extend((0..1000).flat_map(|_| frame(kind, flags, stream, &payload)));
            bytes
        })
        .await;
        println!("{name} flood: {effect:?}");
        println!("{name} flood: {:?} of Agimo's CPU", effect.cpu);
        assert!(effect.ended.cut_off(), "{name}: the attacker was not cut off: {effect:?}");
        // The budget is 1,000 such frames at once and 100 a second.
        assert!(effect.ended.sent < 1 << 20, "{name}: {effect:?}");
        assert!(effect.added_kib < BOUND_KIB, "{name}: {effect:?}");
    }
}

#[tokio::test]
async fn a_stream_count_flood_gets_no_more_than_the_stream_limit() {
    let (agimo, _echo) = serve_echo(&[]).await;
    let authority = agimo.http.to_string();
    let block = post_block(&authority);
    // 300 requests at once whose bodies never end: each would hold a stream
    // (and a backend request) open. Past the limit of 100 they are refused.
    let effect = under_attack(&agimo, PERIOD, move |round| {
        if round > 0 {
            return Vec::new();
        }
        (0..300u32)
            .flat_map(|i| {
                let id = 2 * i + 1;
                frame(HEADERS, END_HEADERS, id, &block).into_iter().chain(frame(DATA, 0, id, b"x"))
            })
            .collect()
    })
    .await;
    println!("stream flood: {effect:?}");
    assert_eq!(effect.peak_active, 100.0, "the stream limit is 100: {effect:?}");
    assert!(effect.added_kib < BOUND_KIB, "{effect:?}");
}
