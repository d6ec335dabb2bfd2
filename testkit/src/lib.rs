//! Helpers for Agimo's tests and examples: an echo backend, small HTTP
//! clients, generated certificates, waiting for a condition (`wait`) and,
//! with feature `kubernetes`, a test namespace and server-side apply for
//! tests against the local cluster. Not part of the product.
//!
//! ```text
//!   test ──client──► agimo (dataplane) ──► echo backend (reports what it got)
//! ```

pub mod client;
pub mod echo;
pub mod grpc;
pub mod h2raw;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod layers;
pub mod objects;
pub mod recorder;
pub mod tls;
pub mod tls_backend;
pub mod wait;
