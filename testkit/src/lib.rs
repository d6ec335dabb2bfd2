//! Helpers for Agimo's tests and examples: an echo backend, small HTTP
//! clients, and generated certificates. Not part of the product.
//!
//! ```text
//!   test ──client──► agimo (dataplane) ──► echo backend (reports what it got)
//! ```

pub mod client;
pub mod echo;
pub mod tls;
