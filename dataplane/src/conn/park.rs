//! A client connection between its requests. An HTTP/1.1 connection being
//! served holds read and write buffers (8 KiB each with hyper, a read
//! buffer and the response being written with [`crate::http1::server`]). So, as
//! nginx does for its keep-alive connections, a connection idle for a while
//! is *parked*: its buffers and server state are dropped, and the task keeps
//! only the socket until the client sends again, when serving resumes with
//! the bytes already read (for hyper, put back in front: [`Session`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
use crate::base::H2_PREFACE as PREFACE;

/// What a client opened its connection with.
pub(crate) enum Opening {
    Http1(Bytes),
    /// Prior-knowledge HTTP/2: the bytes read are the preface.
    Http2(Bytes),
}

/// Waits for a new connection's first bytes and tells HTTP/2 (its preface)
/// from HTTP/1.1, reading no further than the first byte that differs from
/// the preface. `None` if the client closed, or sent nothing until
/// `deadline` or `stop`.
pub(crate) async fn opening<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: tokio::time::Instant,
    stop: &CancellationToken,
) -> Option<Opening> {
    let mut seen = [0u8; PREFACE.len()];
    let mut have = 0;
    while have < seen.len() {
        let n = first_read(io, &mut seen[have..], deadline, stop).await?;
        let end = have + n;
        if seen[have..end] != PREFACE[have..end] {
            return Some(Opening::Http1(Bytes::copy_from_slice(&seen[..end])));
        }
        have = end;
    }
    Some(Opening::Http2(Bytes::copy_from_slice(&seen)))
}

/// Waits, holding nothing but the socket, until a parked connection's
/// client sends again; returns the bytes read. `None` if the client closed,
/// or sent nothing until `deadline` or `stop`.
pub(crate) async fn unpark<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: tokio::time::Instant,
    stop: &CancellationToken,
) -> Option<Bytes> {
    // Small: the rest of the request is read by hyper, into its own buffer.
    let mut first = [0u8; 64];
    let n = first_read(io, &mut first, deadline, stop).await?;
    Some(Bytes::copy_from_slice(&first[..n]))
}

async fn first_read<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    stop: &CancellationToken,
) -> Option<usize> {
    tokio::select! {
        _ = stop.cancelled() => None,
        _ = tokio::time::sleep_until(deadline) => None,
        read = io.read(buf) => match read {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
    }
}

/// The client socket as hyper sees it: bytes already read (the opening, or
/// those a parked connection woke with) are served first. While the
/// connection is being parked, a shutdown leaves the socket open.
pub(crate) struct Session<S> {
    io: S,
    replay: Bytes,
    activity: std::sync::Arc<Activity>,
}

impl<S> Session<S> {
    pub(crate) fn new(io: S, replay: Bytes, activity: std::sync::Arc<Activity>) -> Self {
        Session { io, replay, activity }
    }

    /// The socket back, with the bytes read from it that nobody has taken:
    /// what is left of the replay, then `unread` (a view into hyper's read
    /// buffer, copied out so that the buffer itself is freed).
    pub(crate) fn into_parts(self, unread: Bytes) -> (S, Bytes) {
        let rest = if unread.is_empty() {
            self.replay
        } else {
            let mut joined = Vec::with_capacity(self.replay.len() + unread.len());
            joined.extend_from_slice(&self.replay);
            joined.extend_from_slice(&unread);
            joined.into()
        };
        (self.io, rest)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Session<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            self.activity.bytes_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Session<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.is_parking() {
            // hyper ends its side of a connection being parked with a
            // shutdown: the client must not see one.
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(10)
    }

    /// What a connection opening with `sent` is read as, if HTTP/1.1.
    async fn http1_opening(sent: &[u8]) -> Bytes {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        let Some(Opening::Http1(bytes)) = opening(&mut server, far(), &CancellationToken::new()).await else {
            panic!("not read as HTTP/1.1");
        };
        bytes
    }

    #[tokio::test]
    async fn an_http1_request_is_told_by_its_first_byte() {
        let bytes = http1_opening(b"GET / HTTP/1.1\r\n").await;
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&bytes));
    }

    #[tokio::test]
    async fn the_preface_is_read_whole_even_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for piece in PREFACE.chunks(5) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let Some(Opening::Http2(bytes)) = opening(&mut server, far(), &CancellationToken::new()).await else {
            panic!("not read as HTTP/2");
        };
        assert_eq!(&bytes[..], PREFACE);
        drop(writer.await);
    }

    #[tokio::test]
    async fn a_near_preface_is_http1_with_every_byte_kept() {
        assert_eq!(&http1_opening(b"PRI * HTTP/1.1\r\n").await[..], b"PRI * HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn silence_until_the_deadline_or_a_close_is_none() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(opening(&mut server, soon, &CancellationToken::new()).await.is_none());
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert!(unpark(&mut server, far(), &CancellationToken::new()).await.is_none());
    }

    #[tokio::test]
    async fn the_replay_comes_first_and_the_rest_is_returned() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b" world").await.unwrap();
        let mut session = Session::new(server, Bytes::from_static(b"hello"), Arc::new(Activity::new()));
        let mut got = [0u8; 3];
        session.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hel");
        let (_, rest) = session.into_parts(Bytes::from_static(b"!"));
        assert_eq!(&rest[..], b"lo!");
    }
}
