//! A request's body as the upstream sends it, the copy of it that mirrors
//! get ([`Tee`]), and the error that says the client, not the backend,
//! broke it. A body can be kept in memory up to a limit
//! ([`RequestBody::keep`]), so that a retry can send it again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// A request's body: the one hyper read from the client, that body copied
/// on its way for mirrors, a body held in memory (a mirror's copy, a body
/// kept for retries), or none (a request read by Agimo's own HTTP/1.1
/// server, [`crate::http1::server`], which takes only requests without a
/// body).
#[derive(Default)]
pub enum RequestBody {
    Incoming(Incoming),
    Teed(Box<Tee>),
    /// A body held whole in memory, sent from there: its data, then its
    /// trailers (each `None` once sent).
    Kept(Option<Bytes>, Option<http::HeaderMap>),
    /// The start of a body read into memory, then the rest as it comes: a
    /// body longer than the limit [`RequestBody::keep`] was given.
    Prefixed(Option<Bytes>, Box<RequestBody>),
    #[default]
    Empty,
}

impl RequestBody {
    /// A body held whole; an empty one is no body.
    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() { RequestBody::Empty } else { RequestBody::Kept(Some(bytes), None) }
    }

    /// Reads the body into memory if it ends within `limit` bytes:
    /// `Ok(kept)`; else `Err(body)`, a body that sends what was read, then
    /// the rest as it comes. A body that breaks on the way is the client's
    /// error.
    pub async fn keep(mut self, limit: usize) -> Result<Result<KeptBody, RequestBody>, RequestBodyError> {
        match self {
            RequestBody::Kept(data, trailers) => {
                return Ok(Ok(KeptBody { data: data.unwrap_or_default(), trailers }));
            }
            RequestBody::Empty => return Ok(Ok(KeptBody::default())),
            RequestBody::Prefixed(..) => return Ok(Err(self)),
            RequestBody::Incoming(_) | RequestBody::Teed(_) => {}
        }
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut self).await {
            match frame?.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > limit {
                        return Ok(Err(RequestBody::Prefixed(Some(data.freeze()), Box::new(self))));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.get_or_insert_with(http::HeaderMap::new).extend(t);
                    }
                }
            }
        }
        Ok(Ok(KeptBody { data: data.freeze(), trailers }))
    }
}

/// A body read whole by [`RequestBody::keep`]: what a retry sends again.
#[derive(Clone, Debug, Default)]
pub struct KeptBody {
    pub data: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl KeptBody {
    /// A body that sends this one again.
    pub fn body(&self) -> RequestBody {
        if self.data.is_empty() && self.trailers.is_none() {
            return RequestBody::Empty;
        }
        RequestBody::Kept((!self.data.is_empty()).then(|| self.data.clone()), self.trailers.clone())
    }
}

/// A [`Tee`]'s body was longer than its copy may be. (A body never read to
/// its end gives no copy either: its receiver sees the sender dropped.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTooLarge;

/// The client's body on its way to the backend, copied as it passes, up to
/// a limit. The copy is delivered once the body has been read to its end;
/// a body longer than the limit stops the copying at once and delivers
/// [`BodyTooLarge`]. The primary request never waits for the copy.
pub struct Tee {
    inner: Incoming,
    copy: BytesMut,
    limit: usize,
    done: Option<oneshot::Sender<Result<Bytes, BodyTooLarge>>>,
}

impl Tee {
    /// Tees `inner`; the receiver gets the copy, or why there is none
    /// (a dropped sender: the body was not read to its end).
    pub fn new(inner: Incoming, limit: usize) -> (Tee, oneshot::Receiver<Result<Bytes, BodyTooLarge>>) {
        let (done, copy) = oneshot::channel();
        (Tee { inner, copy: BytesMut::new(), limit, done: Some(done) }, copy)
    }

    fn copy(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.copy.len() + data.len() > self.limit {
            self.copy = BytesMut::new();
            if let Some(done) = self.done.take() {
                let _ = done.send(Err(BodyTooLarge));
            }
            return;
        }
        self.copy.extend_from_slice(data);
    }

    /// Delivers the copy.
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(std::mem::take(&mut self.copy).freeze()));
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.copy(data);
                }
                // The reader may stop as soon as the body says it has
                // ended (a known length read whole), without a last poll.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            // A chunked body ends here, and may not say so before.
            Poll::Ready(None) => this.finish(),
            // A broken body: the sender drops with the tee.
            Poll::Ready(Some(Err(_))) => this.done = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
            RequestBody::Teed(body) => Pin::new(&mut **body).poll_frame(cx).map_err(RequestBodyError),
            RequestBody::Kept(data, trailers) => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            RequestBody::Prefixed(prefix, rest) => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(&mut **rest).poll_frame(cx),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(body) => body.is_end_stream(),
            RequestBody::Teed(body) => body.is_end_stream(),
            RequestBody::Kept(data, trailers) => data.is_none() && trailers.is_none(),
            RequestBody::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(body) => body.size_hint(),
            RequestBody::Teed(body) => body.size_hint(),
            RequestBody::Kept(data, _) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Prefixed(prefix, rest) => {
                let prefix = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + prefix);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
