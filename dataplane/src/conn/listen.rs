//! Accepting connections, for the proxy's listeners and the admin socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket.
pub(crate) trait Listener {
    type Io;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// The next connection, or `None` once `stop` fires. An accept that fails
/// (out of file descriptors, most often) is logged and tried again after
/// [`ACCEPT_BACKOFF`]: the pending connection stays queued, and accepting
/// again at once would fail again at once, a busy loop.
pub(crate) async fn next<L: Listener>(
    listener: &L,
    stop: &CancellationToken,
    what: &str,
) -> Option<(L::Io, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed: pausing");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A listener out of file descriptors: every accept fails at once. It
    /// stops its caller after ten tries.
    struct Exhausted {
        tries: AtomicUsize,
        stop: CancellationToken,
    }

    impl Listener for Exhausted {
        type Io = ();
        fn accept(&self) -> impl Future<Output = io::Result<((), SocketAddr)>> + Send {
            if self.tries.fetch_add(1, Ordering::Relaxed) + 1 == 10 {
                self.stop.cancel();
            }
            std::future::ready(Err(io::Error::from_raw_os_error(24)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_retried_after_a_pause_not_in_a_busy_loop() {
        let stop = CancellationToken::new();
        let listener = Exhausted { tries: AtomicUsize::new(0), stop: stop.clone() };
        let started = tokio::time::Instant::now();
        assert!(next(&listener, &stop, "test").await.is_none(), "stopped");
        assert_eq!(listener.tries.load(Ordering::Relaxed), 10);
        // Nine pauses between ten tries (the clock is paused: exact).
        assert_eq!(started.elapsed(), ACCEPT_BACKOFF * 9);
    }
}
