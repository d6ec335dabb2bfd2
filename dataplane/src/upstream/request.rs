//! A request's body as the upstream sends it, and the error that says the
//! client, not the backend, broke it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request's body: the one hyper read from the client, or none (a request
/// read by Agimo's own HTTP/1.1 server, [`crate::http1::server`], which
/// takes only requests without a body).
#[derive(Default)]
pub enum RequestBody {
    Incoming(Incoming),
    #[default]
    Empty,
}

/// The client's request body broke while it was read: a malformed chunk, a
/// body shorter than its length, a reset stream. The client's fault, never
/// the backend's: the upstream code finds it in an error's sources and
/// answers 400 ([`crate::proxy::ProxyError::InvalidRequestBody`]).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is malformed or was cut short: {0}")]
pub struct RequestBodyError(#[source] pub hyper::Error);

impl RequestBodyError {
    /// Whether `error` or one of its sources is a broken request body.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<RequestBodyError>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(RequestBodyError),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
