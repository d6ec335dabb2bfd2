//! A budget for the HTTP/2 frames a client can send that cost Agimo work
//! without being requests: PING and SETTINGS (each needs an answer),
//! PRIORITY, and empty DATA, HEADERS or CONTINUATION frames that end
//! nothing. The h2 crate answers every one of them, so a client that reads
//! the answers could keep a core busy on one connection (the SETTINGS and
//! PING floods of CVE-2019-9512/9515, the empty-frame flood of 9518). Past
//! the budget the connection is closed.
//!
//! The guard reads the bytes hyper reads, after TLS: it recognises the
//! HTTP/2 preface and then walks frame headers, skipping payloads, so it
//! costs a comparison per frame and nothing on HTTP/1.1 connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::H2_PREFACE as PREFACE;

/// Frames a client may send in a burst, and per second after that.
pub const BURST: u32 = 1000;
pub const PER_SECOND: u32 = 100;

/// Where the reader is in the byte stream.
#[derive(Debug)]
enum Framing {
    /// Matching the preface; this many bytes so far.
    Preface(u8),
    /// In HTTP/2 frames: a frame header being read, or a payload skipped.
    Frames { header: [u8; 9], have: u8, skip: u32 },
    /// Not HTTP/2 (or the budget no longer applies).
    Off,
}

/// The budget: a token bucket refilled as time passes.
#[derive(Debug)]
struct Budget {
    tokens: u32,
    refilled: Option<Instant>,
}

impl Budget {
    fn spend(&mut self) -> bool {
        if self.tokens == 0 {
            let now = Instant::now();
            let since = self.refilled.map_or(1.0, |t| now.duration_since(t).as_secs_f64());
            let earned = (since * f64::from(PER_SECOND)) as u32;
            if earned == 0 {
                return false;
            }
            self.tokens = earned.min(BURST);
            self.refilled = Some(now);
        } else if self.refilled.is_none() {
            self.refilled = Some(Instant::now());
        }
        self.tokens -= 1;
        true
    }
}

/// Whether a frame costs from the budget.
fn costs(kind: u8, flags: u8, len: u32) -> bool {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const PRIORITY: u8 = 0x2;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const CONTINUATION: u8 = 0x9;
    const ACK: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    match kind {
        SETTINGS | PING => flags & ACK == 0,
        PRIORITY => true,
        DATA => len == 0 && flags & END_STREAM == 0,
        HEADERS | CONTINUATION => len == 0 && flags & (END_STREAM | END_HEADERS) == 0,
        _ => false,
    }
}

/// Wraps a client connection (after TLS) with the budget.
pub struct H2Guard<I> {
    inner: I,
    framing: Framing,
    budget: Budget,
}

impl<I> H2Guard<I> {
    pub fn new(inner: I) -> Self {
        H2Guard { inner, framing: Framing::Preface(0), budget: Budget { tokens: BURST, refilled: None } }
    }

    /// Follows the frames in bytes just read; false when the budget is spent.
    fn observe(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.framing {
                Framing::Off => return true,
                Framing::Preface(n) => {
                    let matched = *n as usize;
                    let take = bytes.len().min(PREFACE.len() - matched);
                    if bytes[..take] != PREFACE[matched..matched + take] {
                        self.framing = Framing::Off;
                        return true;
                    }
                    bytes = &bytes[take..];
                    *n += take as u8;
                    if usize::from(*n) == PREFACE.len() {
                        self.framing = Framing::Frames { header: [0; 9], have: 0, skip: 0 };
                    }
                }
                Framing::Frames { header, have, skip } => {
                    if *skip > 0 {
                        let n = bytes.len().min(*skip as usize);
                        bytes = &bytes[n..];
                        *skip -= n as u32;
                        continue;
                    }
                    let n = bytes.len().min(9 - usize::from(*have));
                    header[usize::from(*have)..usize::from(*have) + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    *have += n as u8;
                    if *have == 9 {
                        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let (kind, flags) = (header[3], header[4]);
                        *have = 0;
                        *skip = len;
                        if costs(kind, flags, len) && !self.budget.spend() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for H2Guard<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !matches!(self.framing, Framing::Off)
            && !self.observe(&buf.filled()[before..])
        {
            tracing::debug!("HTTP/2 client over its budget of control frames: closing the connection");
            return Poll::Ready(Err(io::Error::other("too many HTTP/2 control frames")));
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for H2Guard<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        out.extend_from_slice(payload);
        out
    }

    fn guard() -> H2Guard<()> {
        H2Guard::new(())
    }

    /// Feeds `bytes` in pieces of `chunk`; the number of pieces accepted.
    fn feed(g: &mut H2Guard<()>, bytes: &[u8], chunk: usize) -> Option<usize> {
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            if !g.observe(piece) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn http1_is_left_alone() {
        let mut g = guard();
        let pings: Vec<u8> = (0..5000).flat_map(|_| frame(0x6, 0, &[0; 8])).collect();
        assert_eq!(feed(&mut g, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 3), None);
        assert_eq!(feed(&mut g, &pings, 4096), None);
        assert!(matches!(g.framing, Framing::Off));
    }

    #[test]
    fn a_ping_flood_is_stopped_whatever_the_read_sizes() {
        for chunk in [1, 7, 9, 17, 4096] {
            let mut g = guard();
            let mut bytes = PREFACE.to_vec();
            bytes.extend(frame(0x4, 0, &[]));
            bytes.extend((0..(BURST as usize + 10)).flat_map(|_| frame(0x6, 0, &[0; 8])));
            assert!(feed(&mut g, &bytes, chunk).is_some(), "chunk {chunk}");
        }
    }

    #[test]
    fn requests_data_and_acknowledgements_cost_nothing() {
        let mut g = guard();
        let mut bytes = PREFACE.to_vec();
        for _ in 0..5000 {
            bytes.extend(frame(0x1, 0x4 | 0x1, b"\x82\x86\x84"));
            bytes.extend(frame(0x0, 0, &[b'x'; 100]));
            bytes.extend(frame(0x0, 0x1, &[]));
            bytes.extend(frame(0x4, 0x1, &[]));
            bytes.extend(frame(0x6, 0x1, &[0; 8]));
            bytes.extend(frame(0x8, 0, &[0, 0, 1, 0]));
        }
        assert_eq!(feed(&mut g, &bytes, 1000), None);
    }

    #[test]
    fn the_budget_refills_with_time() {
        let mut b = Budget { tokens: 0, refilled: Some(Instant::now() - std::time::Duration::from_secs(2)) };
        assert!(b.spend());
        assert_eq!(b.tokens, 2 * PER_SECOND - 1);
        let mut empty = Budget { tokens: 0, refilled: Some(Instant::now()) };
        assert!(!empty.spend());
    }
}
