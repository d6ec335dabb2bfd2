//! A request's body as the upstream sends it, and the error that says the
//! client, not the backend, broke it. A body can be kept in memory up to a
//! limit ([`RequestBody::keep`]), so that a retry can send it again.

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
    /// A body read whole into memory ([`RequestBody::keep`]), sent from
    /// there: its data, then its trailers.
    Kept(Option<Bytes>, Option<http::HeaderMap>),
    /// The start of a body read into memory, then the rest as it comes: a
    /// body longer than the limit [`RequestBody::keep`] was given.
    Prefixed(Option<Bytes>, Incoming),
    #[default]
    Empty,
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

impl RequestBody {
    /// Reads the body into memory if it ends within `limit` bytes:
    /// `Ok(kept)`; else `Err(body)`, a body that sends what was read, then
    /// the rest as it comes. A body that breaks on the way is the client's
    /// error.
    pub async fn keep(self, limit: usize) -> Result<Result<KeptBody, RequestBody>, RequestBodyError> {
        let mut incoming = match self {
            RequestBody::Incoming(incoming) => incoming,
            RequestBody::Kept(data, trailers) => return Ok(Ok(KeptBody { data: data.unwrap_or_default(), trailers })),
            RequestBody::Empty => return Ok(Ok(KeptBody::default())),
            prefixed @ RequestBody::Prefixed(..) => return Ok(Err(prefixed)),
        };
        let mut data = bytes::BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut incoming).await {
            let frame = frame.map_err(RequestBodyError)?;
            match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > limit {
                        return Ok(Err(RequestBody::Prefixed(Some(data.freeze()), incoming)));
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
            RequestBody::Kept(data, trailers) => match data.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            RequestBody::Prefixed(prefix, rest) => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(rest).poll_frame(cx).map_err(RequestBodyError),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(body) => body.is_end_stream(),
            RequestBody::Kept(data, trailers) => data.is_none() && trailers.is_none(),
            RequestBody::Prefixed(..) => false,
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(body) => body.size_hint(),
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
