//! Agimo's dataplane: it serves the routing snapshot the controller compiles.
//!
//! ```text
//!  controller ──watch channel──► Dataplane::run ──store──► ArcSwap<Snapshot>
//!                                   │ opens/closes sockets        │ load (per request / handshake)
//!                                   ▼                             ▼
//!  client ──TCP──► conn (accept, TLS by SNI, park) ──► http1::server (HTTP/1.1 without a body)
//!                                                        │ or hyper (bodies, upgrades, h2, h2c)
//!                                     proxy::handle ◄────┘  route ─► gate ─► filters ─► forward
//!                                        │                                               │
//!                                        └── metrics (per host)      upstream pools ◄────┘──► endpoint
//! ```
//!
//! Modules depend one way, along the request's path (a test checks it:
//! `tests/layers.rs`): `base`, `config`, `metrics`, `activity` at the bottom
//! ← `http1` (wire code: framing, client, server; no routing) ← `upstream`
//! (pools, h2c, the body type) ← `proxy` (route, gate, forward, errors to
//! responses) ← `conn` (listen, serve, park, TLS, the HTTP/2 guard) ←
//! `control` (the run task) ← `admin`.
//!
//! The run task is the only writer of the `ArcSwap`; requests only load it, so
//! a request in flight finishes on the snapshot it started with and a swap
//! drops no connection.
#![forbid(unsafe_code)]

mod activity;
pub mod admin;
mod base;
mod config;
mod conn;
mod control;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod http1;
pub mod metrics;
mod proxy;
mod upstream;

pub use agimo_shared::path::EscapedSlashes;
pub use config::Config;
pub use conn::{BindError, SocketState};
pub use control::{Dataplane, Readiness};
pub use metrics::Metrics;
pub use proxy::{ProxyError, REASON_HEADER};
