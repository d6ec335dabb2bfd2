//! Agimo's routing snapshot and request matching.
//!
//! The controller compiles the whole world (Gateways, HTTPRoutes, Services,
//! EndpointSlices, Secrets) into one [`Snapshot`]; the dataplane loads it per
//! request and asks it where the request goes. This crate holds only data and
//! pure functions: no Kubernetes types and no I/O.
//!
//! ```text
//!   controller ──compile──► Snapshot ──ArcSwap──► dataplane
//!                             │                     │ per request:
//!                             │                     ├─ Snapshot::bind(socket)
//!                             │                     ├─ Bind::listener_for_host(host)
//!                             │                     └─ RouteTable::find(host, request)
//!                             └─ matching, filters, hostnames (this crate)
//! ```
#![forbid(unsafe_code)]

pub mod cors;
pub mod filters;
pub mod hostname;
pub mod matching;
pub mod path;
mod ser;
pub mod snapshot;

pub use snapshot::Snapshot;

/// Locks `mutex`, going on past a panic of another holder: what Agimo
/// guards with a mutex (idle connections, counters, the status document)
/// stays consistent at every step. (For the crates above this one.)
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
