//! Agimo's controller: it fills a [`World`] from a source, compiles it into a
//! routing snapshot and statuses, and hands the snapshot to the dataplane.
//!
//! ```text
//!   sources::files (YAML) ──┐
//!   sources::kube (watches) ┴─► World ──► compiler::compile ──► Snapshot ──► dataplane
//!                                              ▲       │
//!                                              │       ├────► Statuses ──► /status, logs, status writer
//!                                              └───────┘ Carryover (to the next compile)
//! ```
//!
//! Modules depend one way, along that path: `api` ← `world` ← `sources`,
//! `compiler`, `address_pool`, `gateway_services`, `leader` ← `status` ← `runtime` ←
//! `standalone`, `kubernetes` ← `main`.
#![forbid(unsafe_code)]

pub mod address_pool;
pub mod api;
pub mod compiler;
pub mod gateway_services;
pub mod kubernetes;
pub mod leader;
pub mod runtime;
pub mod sources;
pub mod standalone;
pub mod status;
pub mod world;

pub use compiler::{Carryover, Compiled, Statuses, compile};
pub use world::World;
