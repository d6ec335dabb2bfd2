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

pub mod filters;
pub mod hostname;
pub mod matching;
pub mod path;
mod ser;
pub mod snapshot;

pub use snapshot::Snapshot;
