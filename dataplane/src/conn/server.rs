//! What every connection reads: the proxy, and hyper's server settings.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::proxy::Proxy;

/// The connection layer's state, shared by every connection.
pub(crate) struct Server {
    pub proxy: Proxy,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl Server {
    pub fn new(proxy: Proxy) -> Self {
        let http1 = http1_builder(&proxy.config);
        let http2 = http2_builder(&proxy.config);
        Server { proxy, http1, http2 }
    }
}

/// The hyper server settings for HTTP/1.1 connections.
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(config.header_read_timeout).filter(|t| !t.is_zero()))
        .max_headers(config.max_request_headers)
        .max_buf_size(config.max_request_header_bytes.max(8192));
    builder
}

/// The hyper server settings for HTTP/2 connections.
fn http2_builder(config: &Config) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_request_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}
