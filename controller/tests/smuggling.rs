//! Request smuggling and parsing: raw bytes to Agimo, a backend that records
//! exactly what reaches it. Every malformed or ambiguous request is either
//! refused with a 4xx or forwarded in one unambiguous form (one Host, one
//! body framing, CRLF line ends, no control bytes), and a request hidden in
//! another's body never reaches the backend on its own.

mod support;

use std::time::Duration;

use agimo_testkit::recorder::{Recorded, Recorder};
use support::{Agimo, base_yaml, route_to, service_at};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Probe {
    agimo: Agimo,
    recorder: Recorder,
}

/// What a client saw and what the backend got.
#[derive(Debug)]
struct Outcome {
    /// The status of every response the client read, in order.
    statuses: Vec<u16>,
    /// The server closed the connection.
    closed: bool,
    /// What reached the backend.
    forwarded: Vec<Recorded>,
    response: String,
}

impl Outcome {
    /// Refused with a 4xx and nothing forwarded.
    fn assert_refused(&self) {
        let first = self.statuses.first().copied().unwrap_or_default();
        assert!((400..500).contains(&first), "expected a 4xx, got {self:#?}");
        assert!(self.forwarded.is_empty(), "a refused request reached the backend: {self:#?}");
    }

    /// Whatever reached the backend is unambiguous.
    fn assert_forwarded_cleanly(&self) {
        for r in &self.forwarded {
            assert!(r.problems.is_empty(), "forwarded ambiguously: {:?}\n{}", r.problems, r.head_text());
            assert!(!r.target().contains("smuggled"), "a hidden request reached the backend: {}", r.head_text());
        }
    }

    /// Refused, or forwarded cleanly and answered.
    fn assert_refused_or_clean(&self) {
        let first = self.statuses.first().copied().unwrap_or_default();
        if (400..500).contains(&first) {
            self.assert_refused();
        } else {
            assert_eq!(first, 200, "{self:#?}");
            self.assert_forwarded_cleanly();
        }
    }
}

impl Probe {
    async fn start() -> Probe {
        let recorder = Recorder::spawn().await.unwrap();
        let yaml = base_yaml(&[]) + &service_at("rec", &recorder.addr.port().to_string()) + &route_to("r", "rec");
        Probe { agimo: Agimo::start(&yaml, &[]).await, recorder }
    }

    /// Sends `request` on a new connection and reads until the server closes
    /// it or stays silent for a second.
    async fn send(&self, request: &[u8]) -> Outcome {
        let before = self.recorder.requests().len();
        let mut stream = tokio::net::TcpStream::connect(self.agimo.addr(8080)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => break false,
            }
        };
        let response = String::from_utf8_lossy(&out).into_owned();
        let statuses = response
            .match_indices("HTTP/1.1 ")
            .filter(|(i, _)| *i == 0 || response[..*i].ends_with('\n'))
            .filter_map(|(i, _)| response.get(i + 9..i + 12)?.parse().ok())
            .collect();
        Outcome { statuses, closed, forwarded: self.recorder.requests().split_off(before), response }
    }
}

/// A request hidden in the body of another, by either reading of its
/// framing.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn content_length_with_transfer_encoding_goes_by_the_transfer_encoding_and_closes() {
    let probe = Probe::start().await;
    // RFC 9112 6.1: the chunked framing wins, Content-Length is dropped, and
    // the connection closes after the response, so the bytes after the
    // chunked body are never read as a request.
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let outcome = probe.send(request.as_bytes()).await;
    outcome.assert_refused_or_clean();
    assert!(outcome.statuses.len() <= 1, "{outcome:#?}");
    assert!(outcome.closed, "the connection must close after such a request: {outcome:#?}");
    if let [forwarded] = &outcome.forwarded[..] {
        assert_eq!(forwarded.payload, b"hello");
        assert!(forwarded.header("content-length").is_empty(), "{forwarded:?}");
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    let probe = Probe::start().await;
    for lengths in ["Content-Length: 5\r\nContent-Length: 6", "Content-Length: 5, 6", "Content-Length: +5"] {
        let request = format!("POST / HTTP/1.1\r\nHost: x\r\n{lengths}\r\n\r\nhello!{SMUGGLED}");
        let outcome = probe.send(request.as_bytes()).await;
        assert!(outcome.closed, "{lengths}: {outcome:#?}");
        outcome.assert_refused();
    }
}

#[tokio::test]
async fn repeated_equal_content_lengths_reach_the_backend_as_one_and_lists_are_refused() {
    let probe = Probe::start().await;
    let request =
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let outcome = probe.send(request.as_bytes()).await;
    assert_eq!(outcome.statuses, [200], "{outcome:#?}");
    outcome.assert_forwarded_cleanly();
    assert_eq!(outcome.forwarded[0].header("content-length"), ["5"]);
    assert_eq!(outcome.forwarded[0].payload, b"hello");

    let request = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello";
    probe.send(request.as_bytes()).await.assert_refused();
}

#[tokio::test]
async fn obfuscated_transfer_encodings_are_refused() {
    let probe = Probe::start().await;
    for te in [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: \x0bchunked",
        "Transfer-Encoding:\r\n chunked",
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
        let outcome = probe.send(request.as_bytes()).await;
        let first = outcome.statuses.first().copied().unwrap_or_default();
        assert!((400..500).contains(&first), "{te:?}: {outcome:#?}");
        outcome.assert_refused();
    }
}

#[tokio::test]
async fn chunked_bodies_reach_the_backend_re_framed() {
    let probe = Probe::start().await;
    // Upper case, tab before the value, chunk extensions: all legal, and the
    // backend gets plain chunks.
    let request = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tChunked\r\nConnection: close\r\n\r\n\
                   5;name=value\r\nhello\r\n6 ; x=\"q\"\r\n world\r\n0\r\n\r\n";
    let outcome = probe.send(request.as_bytes()).await;
    assert_eq!(outcome.statuses, [200], "{outcome:#?}");
    outcome.assert_forwarded_cleanly();
    assert_eq!(outcome.forwarded.len(), 1);
    assert_eq!(outcome.forwarded[0].payload, b"hello world");
    assert!(!String::from_utf8_lossy(&outcome.forwarded[0].body).contains("name=value"));
}

#[tokio::test]
async fn invalid_chunk_sizes_never_reach_the_backend_complete() {
    let probe = Probe::start().await;
    for size_line in ["-5", "0x5", "5 5", "fffffffffffffffffffff", "", "5\n", "g"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let outcome = probe.send(request.as_bytes()).await;
        assert!(!outcome.statuses.contains(&200), "{size_line:?}: {outcome:#?}");
        assert!(outcome.closed, "{size_line:?}: {outcome:#?}");
        // The head may already be on its way when the bad chunk arrives: the
        // backend then sees a body that never completes, never a complete
        // second request.
        for r in &outcome.forwarded {
            assert!(!r.problems.is_empty() || r.payload.is_empty(), "{size_line:?}: {r:#?}");
            assert!(!r.target().contains("smuggled"), "{size_line:?}: {}", r.head_text());
        }
    }
    assert!(probe.recorder.requests().iter().all(|r| !r.target().contains("smuggled")));
}

/// A request target that is neither a path, an absolute URI nor `*` for
/// OPTIONS is refused, with or without a body: it must not reach the backend
/// as some other path (fuzzing found `GET '` forwarded as `GET /`).
#[tokio::test]
async fn request_targets_of_no_valid_form_are_refused() {
    let probe = Probe::start().await;
    for target in ["'", "a.example", "a.example:80", "*"] {
        for request in [
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"),
        ] {
            probe.send(request.as_bytes()).await.assert_refused();
        }
    }
}

/// A fragment (no part of a request target) is dropped, by Agimo's server
/// and by hyper alike: the path routed on is the path forwarded.
#[tokio::test]
async fn a_fragment_is_dropped_from_what_is_routed_and_forwarded() {
    let probe = Probe::start().await;
    for request in
        ["GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", "POST /a#b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"]
    {
        let outcome = probe.send(request.as_bytes()).await;
        assert_eq!(outcome.statuses, [200], "{outcome:#?}");
        assert_eq!(outcome.forwarded.len(), 1, "{outcome:#?}");
        assert_eq!(outcome.forwarded[0].target(), "/a", "{outcome:#?}");
    }
}

/// A broken chunked body is the client's fault: a 400 with its own reason,
/// as nginx answers, never a 502 that blames the backend.
#[tokio::test]
async fn a_malformed_chunked_body_is_answered_400_not_blamed_on_the_backend() {
    let probe = Probe::start().await;
    for size_line in ["0x5", "g", "5 5"] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\nhello\r\n0\r\n\r\n"
        );
        let outcome = probe.send(request.as_bytes()).await;
        assert_eq!(outcome.statuses, [400], "{size_line:?}: {outcome:#?}");
        assert!(outcome.response.contains("x-agimo-reason: invalid-request-body"), "{size_line:?}: {outcome:#?}");
        assert!(outcome.closed, "{size_line:?}: {outcome:#?}");
    }
}

#[tokio::test]
async fn bare_line_feeds_are_normalised_and_folded_headers_and_bare_returns_refused() {
    let probe = Probe::start().await;
    for request in [
        "GET / HTTP/1.1\nHost: x\nConnection: close\n\n",
        "GET / HTTP/1.1\r\nHost: x\nX-A: b\r\nConnection: close\r\n\r\n",
    ] {
        let outcome = probe.send(request.as_bytes()).await;
        assert_eq!(outcome.statuses, [200], "{request:?}: {outcome:#?}");
        outcome.assert_forwarded_cleanly();
    }
    for request in [
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tfolded\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\rX-A: b\r\nConnection: close\r\n\r\n",
    ] {
        probe.send(request.as_bytes()).await.assert_refused();
    }
}

#[tokio::test]
async fn control_bytes_are_refused() {
    let probe = Probe::start().await;
    for request in [
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        "GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX\0A: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n",
    ] {
        let outcome = probe.send(request.as_bytes()).await;
        outcome.assert_refused();
    }
}

#[tokio::test]
async fn oversized_request_lines_are_refused() {
    let probe = Probe::start().await;
    let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70 * 1024));
    let outcome = probe.send(request.as_bytes()).await;
    outcome.assert_refused();
    assert!(outcome.statuses[0] == 414 || outcome.statuses[0] == 431, "{:?}", outcome.statuses);
}

#[tokio::test]
async fn several_host_headers_are_refused() {
    let probe = Probe::start().await;
    for hosts in ["Host: x\r\nHost: y", "Host: x\r\nHost: x", "Host: x, y"] {
        let outcome = probe.send(format!("GET / HTTP/1.1\r\n{hosts}\r\n\r\n").as_bytes()).await;
        outcome.assert_refused();
    }
    // HTTP/1.1 requires one.
    probe.send(b"GET / HTTP/1.1\r\n\r\n").await.assert_refused();
}

#[tokio::test]
async fn an_absolute_form_target_wins_over_the_host_header() {
    let recorder = Recorder::spawn().await.unwrap();
    let yaml = base_yaml(&["other"])
        + &service_at("rec", &recorder.addr.port().to_string())
        + &support::route_for_host("a", "a.example", "rec")
        + &support::route_for_host("b", "b.example", "other");
    let probe = Probe { agimo: Agimo::start(&yaml, &["other"]).await, recorder };
    // RFC 9112 3.2.2: the target's authority is the request's host; the Host
    // header is replaced by it, so the backend and Agimo agree on the host.
    let outcome = probe.send(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(outcome.statuses, [200], "{outcome:#?}");
    assert!(outcome.response.ends_with("ok"), "answered by the wrong backend: {}", outcome.response);
    outcome.assert_forwarded_cleanly();
    assert_eq!(outcome.forwarded.len(), 1);
    assert_eq!(outcome.forwarded[0].header("host"), ["a.example"]);
    assert_eq!(outcome.forwarded[0].target(), "/x");
}

/// Sends a raw HTTP/2 request (preface, SETTINGS, then `frames`) and reads
/// for a second; the frames Agimo answered with: (type, flags, payload).
async fn h2_exchange(probe: &Probe, frames: Vec<u8>) -> Vec<(u8, u8, Vec<u8>)> {
    use agimo_testkit::h2raw::{PREFACE, SETTINGS, frame};
    let mut stream = tokio::net::TcpStream::connect(probe.agimo.addr(8080)).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frames);
    stream.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut answered = Vec::new();
    let mut at = 0;
    while got.len() >= at + 9 {
        let len = (usize::from(got[at]) << 16) | (usize::from(got[at + 1]) << 8) | usize::from(got[at + 2]);
        let payload = got.get(at + 9..at + 9 + len).unwrap_or_default().to_vec();
        answered.push((got[at + 3], got[at + 4], payload));
        at += 9 + len;
    }
    answered
}

/// The frame types among `answered`.
fn kinds(answered: &[(u8, u8, Vec<u8>)]) -> Vec<u8> {
    answered.iter().map(|(kind, _, _)| *kind).collect()
}

#[tokio::test]
async fn http2_requests_that_would_desync_an_http1_backend_are_refused() {
    use agimo_testkit::h2raw::{DATA, END_HEADERS, END_STREAM, HEADERS, literal, post_block};
    let probe = Probe::start().await;
    let authority = probe.agimo.addr(8080).to_string();
    // The control: the same request, honest, is forwarded and answered.
    let mut block = post_block(&authority);
    block.extend(literal(b"content-length", b"5"));
    let mut frames = agimo_testkit::h2raw::frame(HEADERS, END_HEADERS, 1, &block);
    frames.extend(agimo_testkit::h2raw::frame(DATA, END_STREAM, 1, b"hello"));
    let answered = kinds(&h2_exchange(&probe, frames).await);
    assert!(answered.contains(&HEADERS), "the honest request was not answered: {answered:?}");
    let honest = probe.recorder.requests();
    assert_eq!(honest.len(), 1, "{honest:#?}");
    assert_eq!(honest[0].payload, b"hello");
    assert!(honest[0].problems.is_empty(), "{honest:#?}");

    let hidden = format!("0\r\n\r\n{SMUGGLED}");
    let cases: [(&str, Vec<u8>, Vec<u8>); 5] = [
        // H2.TE: a connection-specific header, which HTTP/2 forbids.
        ("transfer-encoding", literal(b"transfer-encoding", b"chunked"), hidden.clone().into_bytes()),
        // H2.CL: a length that does not match the DATA sent.
        ("content-length", literal(b"content-length", b"5"), format!("hello{SMUGGLED}").into_bytes()),
        // CRLF injected into a value or a name.
        ("crlf in a value", literal(b"x-a", b"a\r\ntransfer-encoding: chunked"), hidden.clone().into_bytes()),
        ("crlf in a name", literal(b"x-a\r\ntransfer-encoding", b"chunked"), hidden.clone().into_bytes()),
        ("upper-case name", literal(b"Transfer-Encoding", b"chunked"), hidden.into_bytes()),
    ];
    for (name, header, body) in cases {
        let mut block = post_block(&authority);
        block.extend(header);
        let mut frames = agimo_testkit::h2raw::frame(HEADERS, END_HEADERS, 1, &block);
        frames.extend(agimo_testkit::h2raw::frame(DATA, END_STREAM, 1, &body));
        let before = probe.recorder.requests().len();
        let answered = kinds(&h2_exchange(&probe, frames).await);
        let forwarded = probe.recorder.requests().split_off(before);
        assert!(forwarded.is_empty(), "{name}: forwarded {forwarded:#?}");
        // Refused by a stream reset or GOAWAY, never answered with headers.
        assert!(!answered.contains(&HEADERS), "{name}: answered {answered:?}");
    }
    assert!(probe.recorder.requests().iter().all(|r| !r.target().contains("smuggled")));
}

#[tokio::test]
async fn an_http2_header_list_over_the_limit_is_answered_431_and_not_forwarded() {
    use agimo_testkit::h2raw::{CONTINUATION, END_HEADERS, END_STREAM, HEADERS, frame, get_block, literal};
    let probe = Probe::start().await;
    // 700 headers of 100 bytes: about 76 KB decoded, over the 64 KiB limit,
    // in a HEADERS frame and CONTINUATIONs of 16 KB.
    let mut block = get_block(&probe.agimo.addr(8080).to_string());
    for i in 0..700 {
        block.extend(literal(format!("x-h{i:03}").as_bytes(), &[b'a'; 100]));
    }
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    let mut frames = frame(HEADERS, END_STREAM, 1, chunks[0]);
    for (i, chunk) in chunks.iter().enumerate().skip(1) {
        let flags = if i == chunks.len() - 1 { END_HEADERS } else { 0 };
        frames.extend(frame(CONTINUATION, flags, 1, chunk));
    }
    let answered = h2_exchange(&probe, frames).await;
    let (_, flags, status) =
        answered.iter().find(|(kind, _, _)| *kind == HEADERS).unwrap_or_else(|| panic!("no response: {answered:?}"));
    assert_eq!(flags & END_STREAM, END_STREAM, "{answered:?}");
    // `:status` as a literal with the name indexed (8) and the value
    // Huffman-coded "431" (0x69 0x90 0xff), as the h2 crate writes it; a
    // 200 would be the indexed 0x88.
    assert_eq!(&status[..], &[0x48, 0x83, 0x69, 0x90, 0xff], "{answered:?}");
    assert!(probe.recorder.requests().is_empty(), "forwarded: {:#?}", probe.recorder.requests());
}
