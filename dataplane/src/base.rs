//! The bottom of the crate: small types every layer uses.

use std::sync::{Mutex, MutexGuard};

/// Any error, as hyper and the body types pass them on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Locks `mutex`, going on past a panic of another holder: the data guarded
/// here (idle connections, counters) stays consistent at every step.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What opens an HTTP/2 connection (RFC 9113, 3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
