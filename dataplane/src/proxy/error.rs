//! The dataplane's one error type and the one function that turns it into
//! the response a client sees.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::grpc::{self, Code};
use crate::base::BoxError;
use crate::upstream::body::Body;

/// The header that carries a short, stable reason code with every error
/// response Agimo generates itself.
pub const REASON_HEADER: &str = "x-agimo-reason";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has no Host header or authority")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the request's host {host:?} is not a hostname or IP address with an optional port")]
    InvalidHost { host: String },
    #[error("{0}")]
    InvalidPath(#[from] agimo_shared::path::PathError),
    #[error("the path has escaped slashes; redirecting to {location}")]
    EscapedSlashRedirect { location: String },
    #[error("method {method} is not supported")]
    MethodNotAllowed { method: http::Method },
    #[error("no listener on this port serves host {host}")]
    NoListener { host: String },
    #[error(
        "host {host} is served by listener {host_listener}, but this TLS connection's SNI {sni} chose listener \
         {sni_listener}: open a connection for {host}"
    )]
    Misdirected { host: String, sni: String, host_listener: String, sni_listener: String },
    #[error("no route rule matches host {host} path {path}")]
    NoRoute { host: String, path: String },
    /// The matched rule is invalid: answered with the status the compiler
    /// chose for it ([`agimo_shared::snapshot::Rejection`]).
    #[error("{reason}")]
    InvalidRule { status: StatusCode, reason: String },
    #[error("{reason}")]
    InvalidBackend { reason: String },
    #[error("backend {backend} has no ready endpoints")]
    NoReadyEndpoints { backend: String },
    #[error("no backend of host {host} had a ready endpoint within {waited:?}")]
    WaitTimeout { host: String, waited: std::time::Duration },
    /// Scale-to-zero: endpoints were ready, but none took a connection
    /// before the gate's deadline.
    #[error(transparent)]
    ConnectWaitTimeout(Box<ConnectWaitTimeout>),
    #[error(
        "Agimo is shutting down: the request for host {host} was held for a ready endpoint and is not served here; retry"
    )]
    ShuttingDown { host: String },
    #[error("{max} requests for host {host} are already waiting for a ready endpoint; retry later")]
    TooManyPending { host: String, max: usize },
    #[error("cannot connect to backend {backend} at {endpoint}: {source}")]
    UpstreamConnect {
        backend: String,
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The backend's TLS (a BackendTLSPolicy) failed: its certificate did
    /// not verify, or the handshake broke.
    #[error("backend {backend} at {endpoint}: {source}")]
    UpstreamTls {
        backend: String,
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("backend {backend} at {endpoint} failed: {source}")]
    UpstreamFailed {
        backend: String,
        endpoint: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// The client's request body broke while it was forwarded: the
    /// client's fault, never counted against the backend.
    #[error("the request body is malformed or was cut short: {source}")]
    InvalidRequestBody {
        #[source]
        source: BoxError,
    },
    #[error("backend {backend} did not answer within the HTTPRoute's {timeout} timeout")]
    Timeout { backend: String, timeout: &'static str },
}

/// The last connect of a request on a gated route that no endpoint took a
/// connection from before the gate's deadline ([`super::gate`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "no endpoint of host {host}'s backends took a connection within {waited:?} ({attempts} attempts); \
     the last, to backend {backend} at {endpoint}, failed: {source}"
)]
pub struct ConnectWaitTimeout {
    pub host: String,
    /// Since the request reached the gate, in whole milliseconds.
    pub waited: std::time::Duration,
    pub attempts: u32,
    pub backend: String,
    pub endpoint: SocketAddr,
    #[source]
    pub source: BoxError,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost { .. }
            | ProxyError::InvalidPath(_)
            | ProxyError::InvalidRequestBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::EscapedSlashRedirect { .. } => StatusCode::TEMPORARY_REDIRECT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoListener { .. } | ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::InvalidRule { status, .. } => *status,
            ProxyError::InvalidBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoReadyEndpoints { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::TooManyPending { .. }
            | ProxyError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::WaitTimeout { .. } | ProxyError::ConnectWaitTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamFailed { .. } | ProxyError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The value of [`REASON_HEADER`].
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing-host",
            ProxyError::DuplicateHost => "duplicate-host",
            ProxyError::InvalidHost { .. } => "invalid-host",
            ProxyError::InvalidPath(_) => "invalid-path",
            ProxyError::EscapedSlashRedirect { .. } => "escaped-slash-redirect",
            ProxyError::MethodNotAllowed { .. } => "method-not-allowed",
            ProxyError::NoListener { .. } => "no-listener",
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::Misdirected { .. } => "misdirected-request",
            ProxyError::InvalidRule { .. } => "invalid-rule",
            ProxyError::InvalidBackend { .. } => "invalid-backend",
            ProxyError::NoReadyEndpoints { .. } => "no-ready-endpoints",
            ProxyError::WaitTimeout { .. } | ProxyError::ConnectWaitTimeout(_) => "wait-timeout",
            ProxyError::TooManyPending { .. } => "too-many-pending",
            ProxyError::ShuttingDown { .. } => "shutting-down",
            ProxyError::UpstreamConnect { .. } => "upstream-connect-failed",
            ProxyError::UpstreamFailed { .. } => "upstream-failed",
            ProxyError::UpstreamTls { .. } => "upstream-tls-failed",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::InvalidRequestBody { .. } => "invalid-request-body",
        }
    }

    /// The gRPC status of this error, for a gRPC request: by the HTTP status
    /// as gRPC's http-grpc-status-mapping.md maps it, but for what the Gateway
    /// API fixes (no listener or route: `UNIMPLEMENTED`; a GRPCRoute's invalid
    /// backends: `UNAVAILABLE`) and the timeouts, which are deadlines.
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::NoListener { .. } | ProxyError::NoRoute { .. } => Code::Unimplemented,
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost { .. }
            | ProxyError::InvalidPath(_)
            | ProxyError::MethodNotAllowed { .. } => Code::InvalidArgument,
            ProxyError::InvalidRequestBody { .. } => Code::Internal,
            ProxyError::WaitTimeout { .. } | ProxyError::ConnectWaitTimeout(_) | ProxyError::Timeout { .. } => {
                Code::DeadlineExceeded
            }
            ProxyError::EscapedSlashRedirect { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::InvalidRule { .. }
            | ProxyError::InvalidBackend { .. }
            | ProxyError::NoReadyEndpoints { .. }
            | ProxyError::TooManyPending { .. }
            | ProxyError::ShuttingDown { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamFailed { .. } => Code::Unavailable,
        }
    }

    /// The response for this error to a gRPC request (`grpc`) or any other.
    pub fn into_response_for(self, grpc: bool) -> Response<Body> {
        if grpc { self.into_grpc_response() } else { self.into_response() }
    }

    /// A trailers-only gRPC error: status 200, no body, `grpc-status` and
    /// `grpc-message`, and the reason header.
    pub fn into_grpc_response(self) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        grpc::error_headers(headers, self.grpc_code(), &self.to_string());
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        response
    }

    /// The response for this error: status, reason header, and the message as
    /// a plain-text body. (The caller logs it, with the route.)
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut response = Response::new(Body::full(Bytes::from(format!("{self}\n"))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        match &self {
            ProxyError::TooManyPending { .. } | ProxyError::ShuttingDown { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::EscapedSlashRedirect { location } => {
                if let Ok(value) = HeaderValue::try_from(location.as_str()) {
                    headers.insert(header::LOCATION, value);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_a_status_reason_and_readable_body() {
        let e = ProxyError::NoRoute { host: "a.example".into(), path: "/x".into() };
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[REASON_HEADER], "no-route");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        let statuses = [
            (ProxyError::MissingHost, 400),
            (ProxyError::InvalidRule { status: StatusCode::INTERNAL_SERVER_ERROR, reason: "r".into() }, 500),
            (ProxyError::InvalidRule { status: StatusCode::SERVICE_UNAVAILABLE, reason: "r".into() }, 503),
            (ProxyError::InvalidRequestBody { source: "bad chunk".into() }, 400),
            (ProxyError::InvalidBackend { reason: "r".into() }, 500),
            (ProxyError::NoReadyEndpoints { backend: "b".into() }, 503),
            (
                ProxyError::UpstreamTls {
                    backend: "b".into(),
                    endpoint: "127.0.0.1:1".parse().unwrap(),
                    source: "bad".into(),
                },
                502,
            ),
        ];
        for (e, status) in statuses {
            assert_eq!(e.status().as_u16(), status, "{e}");
        }
    }

    #[test]
    fn a_grpc_request_gets_a_trailers_only_grpc_error() {
        let e = ProxyError::NoRoute { host: "a.example".into(), path: "/pkg.Svc/Get".into() };
        let response = e.into_response_for(true);
        assert_eq!(response.status(), StatusCode::OK, "gRPC errors travel in trailers");
        assert_eq!(response.headers()["grpc-status"], "12", "UNIMPLEMENTED");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()[REASON_HEADER], "no-route");
        assert!(http_body::Body::is_end_stream(response.body()), "one HEADERS frame with END_STREAM");
        let codes = [
            (ProxyError::InvalidBackend { reason: "r".into() }, Code::Unavailable),
            (ProxyError::NoReadyEndpoints { backend: "b".into() }, Code::Unavailable),
            (
                ProxyError::WaitTimeout { host: "h".into(), waited: std::time::Duration::from_secs(1) },
                Code::DeadlineExceeded,
            ),
            (ProxyError::MissingHost, Code::InvalidArgument),
        ];
        for (e, code) in codes {
            assert_eq!(e.grpc_code(), code, "{e}");
        }
        let plain = ProxyError::NoRoute { host: "a".into(), path: "/".into() }.into_response_for(false);
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);
    }
}
