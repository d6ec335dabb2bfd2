//! The response body type: an upstream stream or a small local body, with a
//! guard that ends the request's accounting when the body is done. (The
//! request body is [`super::request`]'s.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Pooled;
pub use super::request::{BodyTooLarge, KeptBody, RequestBody, RequestBodyError, Tee};
use crate::activity::InFlight;
use crate::base::BoxError;
use crate::http1::client as h1;
use crate::metrics::Active;

/// Accounting that ends with the request: when its response body has been
/// sent in full, or dropped (client gone, connection closed).
#[derive(Default)]
pub struct RequestGuard {
    pub active: Option<Active>,
    pub connection: Option<InFlight>,
}

pub struct Body {
    kind: Kind,
    guard: Option<RequestGuard>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// The backend's response body, and its HTTP/1.1 connection, given back
    /// to the pool when the body ends.
    Upstream(Incoming, Option<Pooled>),
    /// The backend's response body read by [`h1`], which gives its
    /// connection back itself.
    H1(h1::ResponseBody),
}

impl Body {
    pub fn empty() -> Self {
        Body { kind: Kind::Empty, guard: None }
    }

    pub fn full(bytes: Bytes) -> Self {
        Body { kind: Kind::Full(Some(bytes)), guard: None }
    }

    pub fn upstream(body: Incoming, connection: Option<Pooled>) -> Self {
        let mut body = Body { kind: Kind::Upstream(body, connection), guard: None };
        body.release_if_done();
        body
    }

    pub fn h1(body: h1::ResponseBody) -> Self {
        Body { kind: Kind::H1(body), guard: None }
    }

    /// Gives the backend connection back once its response has been read
    /// whole (hyper may stop polling a body that says it has ended).
    fn release_if_done(&mut self) {
        if let Kind::Upstream(body, connection) = &mut self.kind
            && http_body::Body::is_end_stream(body)
            && let Some(connection) = connection.take()
        {
            connection.release();
        }
    }

    /// Attaches a guard, dropped when the body ends or is dropped.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        self
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body, _) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::H1(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => {
                this.release_if_done();
                this.guard = None;
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body, _) => body.is_end_stream(),
            Kind::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body, _) => body.size_hint(),
            Kind::H1(body) => body.size_hint(),
        }
    }
}
