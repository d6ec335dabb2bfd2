//! The response body type: an upstream stream or a small local body, with a
//! guard that ends the request's accounting when the body is done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// Accounting that ends with the request: when its response body has been
/// sent in full, or dropped (client gone, connection closed).
#[derive(Default)]
pub struct RequestGuard {
    pub active: Option<crate::metrics::ActiveGuard>,
    pub connection: Option<crate::server::InFlight>,
}

pub struct Body {
    kind: Kind,
    guard: Option<RequestGuard>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
}

impl Body {
    pub fn empty() -> Self {
        Body { kind: Kind::Empty, guard: None }
    }

    pub fn full(bytes: Bytes) -> Self {
        Body { kind: Kind::Full(Some(bytes)), guard: None }
    }

    pub fn upstream(body: Incoming) -> Self {
        Body { kind: Kind::Upstream(body), guard: None }
    }

    /// Attaches a guard, dropped when the body ends or is dropped.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        self
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}
