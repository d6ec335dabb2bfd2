//! Client connections: the sockets the snapshot asks for, each connection
//! served within its limits (TLS by SNI, HTTP/1.1 by Agimo's own server or
//! hyper, HTTP/2 behind a frame budget), idle ones parked; on TLS listeners,
//! connections passed through or terminated for TLSRoutes.
//!
//! ```text
//!  sockets (reconcile, accept) ──► serve (TLS, HTTP/1.1 or 2, limits) ──► proxy::handle
//!        │                             ├── park (idle HTTP/1.1: only the socket kept)
//!        │                             └── h2guard (frame budget)
//!        └──► tls_route (ClientHello, SNI; passthrough or terminate) ──► proxy::open_tls_route
//! ```

mod h2guard;
mod listen;
mod park;
mod serve;
mod server;
mod sockets;
mod tls;
mod tls_route;

pub(crate) use self::listen::next as accept;
pub(crate) use self::server::Server;
pub(crate) use self::sockets::Sockets;
pub use self::sockets::{BindError, SocketState};
