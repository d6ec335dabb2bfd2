//! The dataplane's settings.

use std::time::Duration;

use agimo_shared::path::EscapedSlashes;

/// Dataplane settings; the defaults are safe for an edge proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Time allowed to send a complete HTTP/1.1 request head, counted from
    /// the connection's start or the end of the previous response (so it
    /// also closes idle keep-alive connections), and again from the first
    /// byte of a parked connection. Zero turns it off.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 gets a GOAWAY). Zero turns it off.
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers) accepted.
    pub max_request_header_bytes: usize,
    /// The most request headers accepted (HTTP/1.1).
    pub max_request_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// A connection whose client takes no response bytes for this long (a
    /// slow or stalled reader) is closed. Zero turns it off.
    pub send_timeout: Duration,
    /// Open client connections (websockets included) beyond which new ones
    /// are refused.
    pub max_connections: usize,
    /// What `%2F` and `%5C` in a request path do (the rest of the path is
    /// always normalised: [`agimo_shared::path`]).
    pub escaped_slashes: EscapedSlashes,
    pub tls_handshake_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// An HTTP/1.1 connection with nothing in flight and nothing sent for
    /// this long is parked: its server state and buffers are freed, and
    /// only its socket is kept until the client sends again. Zero never
    /// parks.
    pub park_idle_after: Duration,
    /// RequestMirror copies in flight at most, over all mirrors; a copy
    /// made when this many are in flight is dropped (and counted).
    pub mirror_max_in_flight: usize,
    /// The largest request body a mirror gets a copy of: the copy is kept
    /// (as references to the body's chunks) until the body has been read
    /// whole, then sent; a longer body is not mirrored.
    pub mirror_max_body_bytes: usize,
    /// A mirror that has not answered (and sent its whole response) in this
    /// long is given up, so a slow mirror cannot hold its slot forever.
    pub mirror_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            http2_max_concurrent_streams: 100,
            send_timeout: Duration::from_secs(60),
            max_connections: 50_000,
            escaped_slashes: EscapedSlashes::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
            park_idle_after: Duration::from_secs(1),
            mirror_max_in_flight: 1024,
            mirror_max_body_bytes: 64 * 1024,
            mirror_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// How long an HTTP/1.1 connection with nothing in flight and nothing
    /// read stays served before it is parked; `None` never parks.
    pub(crate) fn park_after(&self) -> Option<Duration> {
        Some(self.park_idle_after).filter(|t| !t.is_zero())
    }
}
