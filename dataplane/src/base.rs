//! The bottom of the crate: small types every layer uses.

/// Any error, as hyper and the body types pass them on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) use agimo_shared::lock;

/// What opens an HTTP/2 connection (RFC 9113, 3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
