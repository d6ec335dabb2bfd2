//! A recording backend for request-smuggling tests: it keeps every request
//! exactly as it arrived on the wire, frames it strictly (RFC 9112: a
//! `Transfer-Encoding` of exactly `chunked`, else one `Content-Length`, else
//! no body), answers `200 ok`, and flags anything a strict server could read
//! two ways.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend received it.
#[derive(Clone)]
pub struct Recorded {
    /// The request head, request line to the blank line included, raw.
    pub head: Vec<u8>,
    /// The body as framed on the wire (chunk framing included).
    pub body: Vec<u8>,
    /// The body once de-chunked.
    pub payload: Vec<u8>,
    /// What makes this request ambiguous, if anything.
    pub problems: Vec<String>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("head", &self.head_text())
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("problems", &self.problems)
            .finish()
    }
}

impl Recorded {
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    /// The request line's target.
    pub fn target(&self) -> String {
        self.head_text().split(' ').nth(1).unwrap_or_default().to_owned()
    }

    /// Values of a header (name case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        header_lines(&self.head)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// A running recording backend.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn spawn() -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let sink = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, sink.clone()));
            }
        });
        Ok(Recorder { addr, requests, task })
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, sink: Arc<Mutex<Vec<Recorded>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = next_request(&mut stream, &mut buf).await else { return };
        let malformed = !request.problems.is_empty();
        sink.lock().unwrap().push(request);
        if malformed || stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
            return;
        }
    }
}

/// Reads one request; `None` when the connection closes before a head.
async fn next_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let mut problems = head_problems(&head);
    let te: Vec<String> = header_values(&head, "transfer-encoding");
    let cl: Vec<String> = header_values(&head, "content-length");
    let mut body = Vec::new();
    let mut payload = Vec::new();
    if !te.is_empty() {
        if te != ["chunked"] {
            problems.push(format!("Transfer-Encoding {te:?} is not exactly `chunked`"));
        } else if let Err(e) = read_chunked(stream, buf, &mut body, &mut payload).await {
            problems.push(e);
        }
    } else if let Some(first) = cl.first() {
        match first.parse::<usize>() {
            Ok(n) if first.bytes().all(|b| b.is_ascii_digit()) => {
                while buf.len() < n {
                    if !fill(stream, buf).await {
                        problems.push(format!("body ended after {} of {n} bytes", buf.len()));
                        break;
                    }
                }
                body = buf.drain(..n.min(buf.len())).collect();
                payload = body.clone();
            }
            _ => problems.push(format!("Content-Length {first:?} is not a number")),
        }
    }
    Some(Recorded { head, body, payload, problems })
}

/// What a strict reader objects to in a head: bytes other than visible
/// ASCII, space, tab and CRLF line ends; folded lines; more than one `Host`,
/// `Content-Length` or `Transfer-Encoding`; both body framings at once.
fn head_problems(head: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, &b) in head.iter().enumerate() {
        let ok = match b {
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\t' | b' '..=b'~' => true,
            _ => false,
        };
        if !ok {
            problems.push(format!("byte {b:#04x} at {i}"));
        }
    }
    if header_lines(head).any(|l| l.starts_with([' ', '\t'])) {
        problems.push("folded header line".into());
    }
    for name in ["host", "content-length", "transfer-encoding"] {
        let n = header_values(head, name).len();
        if n > 1 {
            problems.push(format!("{n} {name} headers"));
        }
    }
    if header_values(head, "host").is_empty() {
        problems.push("no Host header".into());
    }
    if !header_values(head, "content-length").is_empty() && !header_values(head, "transfer-encoding").is_empty() {
        problems.push("both Content-Length and Transfer-Encoding".into());
    }
    problems
}

fn header_lines(head: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(head).unwrap_or_default().split("\r\n").skip(1).filter(|l| !l.is_empty())
}

fn header_values(head: &[u8], name: &str) -> Vec<String> {
    header_lines(head)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Reads a chunked body strictly: hex sizes, no extensions, CRLF everywhere,
/// no trailers.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
    payload: &mut Vec<u8>,
) -> Result<(), String> {
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !fill(stream, buf).await {
                return Err("chunked body ended early".into());
            }
        };
        let line: Vec<u8> = buf.drain(..line_end + 2).collect();
        body.extend_from_slice(&line);
        let size = std::str::from_utf8(&line[..line_end])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size line {:?}", String::from_utf8_lossy(&line)))?;
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return Err("chunk ended early".into());
            }
        }
        let chunk: Vec<u8> = buf.drain(..size + 2).collect();
        body.extend_from_slice(&chunk);
        if &chunk[size..] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        payload.extend_from_slice(&chunk[..size]);
        if size == 0 {
            return Ok(());
        }
    }
}

/// Reads more bytes; false on end of stream, error or 5 s of silence.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_heads_pass_and_ambiguous_ones_are_flagged() {
        assert!(head_problems(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_empty());
        let flagged = |head: &[u8]| !head_problems(head).is_empty();
        assert!(flagged(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), "bare LF");
        assert!(flagged(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), "obs-fold");
        assert!(flagged(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), "two Hosts");
        assert!(flagged(b"GET / HTTP/1.1\r\nX: \x00\r\nHost: a\r\n\r\n"), "NUL");
        assert!(flagged(b"GET / HTTP/1.1\r\n\r\n"), "no Host");
        assert!(flagged(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    }
}
