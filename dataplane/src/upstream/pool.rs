//! hyper's HTTP/1.1 client connections, idle by endpoint, and the handle
//! that lends one to a response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::client::conn::http1;

use super::request::RequestBody;
use crate::base::lock;

pub(super) type IdleMap = Mutex<HashMap<SocketAddr, Vec<(http1::SendRequest<RequestBody>, Instant)>>>;
pub(super) type Idle = Arc<IdleMap>;

/// An HTTP/1.1 connection lent to one response. [`Pooled::release`] gives
/// it back once the response body has been read to its end; dropped without
/// that (client gone mid-body, protocol upgrade), the connection is not
/// reused.
pub struct Pooled {
    pub(super) idle: Idle,
    pub(super) endpoint: SocketAddr,
    pub(super) sender: Option<http1::SendRequest<RequestBody>>,
}

impl Pooled {
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take().filter(|s| !s.is_closed()) {
            // Stale and closed connections are skipped when taken and
            // dropped by the reaper: no scan of the list here, on every
            // response.
            lock(&self.idle).entry(self.endpoint).or_default().push((sender, Instant::now()));
        }
    }
}
