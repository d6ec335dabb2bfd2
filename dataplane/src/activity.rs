//! What a client connection is doing: requests in flight, idle time,
//! stalled writes, parking. The HTTP/1.1 server and the connection layer
//! read it for their timeouts; a response body ends its request's part.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;

/// Requests in flight on one connection and when the last one ended, for
/// the idle timeout; since when a write to the client has been waiting, for
/// the send timeout; whether the client has sent anything since, and
/// whether the connection is being parked, for parking.
pub(crate) struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Milliseconds after `start`, plus one, since when the client socket has
    /// not taken a write; 0 while writes go through.
    write_blocked_since: AtomicU64,
    /// Bytes have come from the client since the last request ended (the
    /// start of the next request, or of a slow one).
    read_since_idle: AtomicBool,
    parking: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            read_since_idle: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }

    pub(crate) fn bytes_read(&self) {
        if !self.read_since_idle.load(Ordering::Relaxed) {
            self.read_since_idle.store(true, Ordering::Relaxed);
        }
    }

    /// Nothing in flight or begun, nothing waiting to be sent, for `after`.
    pub(crate) fn may_park(&self, after: Duration) -> bool {
        !self.read_since_idle.load(Ordering::Relaxed)
            && self.write_blocked_since.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.idle_for() >= after
    }

    /// Nothing in flight, and nothing read since the last request ended.
    pub(crate) fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.read_since_idle.load(Ordering::Relaxed)
    }

    pub(crate) fn parking(&self) {
        self.parking.store(true, Ordering::Relaxed);
    }

    pub(crate) fn parked(&self) {
        self.parking.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// When a connection with nothing in flight, waiting for a request, is
    /// closed: the idle timeout or the header read timeout, whichever comes
    /// first, after the connection's start or its last request.
    pub(crate) fn quiet_deadline(&self, config: &Config) -> tokio::time::Instant {
        let since = self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        let quiet = [config.idle_timeout, config.header_read_timeout].into_iter().filter(|t| !t.is_zero()).min();
        // Far enough for "never", near enough not to overflow.
        let quiet = quiet.unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600));
        tokio::time::Instant::from_std(since + quiet)
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(since)
    }

    fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            let now = self.start.elapsed().as_millis() as u64 + 1;
            self.write_blocked_since.store(now, Ordering::Relaxed);
        }
    }

    fn write_went_through(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn write_blocked_for(&self) -> Duration {
        match self.write_blocked_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => self.start.elapsed().saturating_sub(Duration::from_millis(since - 1)),
        }
    }
}

/// A client socket that tells its [`Activity`] when writes stall.
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S> Watched<S> {
    fn watch<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_went_through(),
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request in flight on a connection; ends when dropped.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Relaxed);
        self.0.read_since_idle.store(false, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open client connection until dropped.
pub struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnection {
    pub fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
