//! The admin endpoints: `/metrics`, `/status`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::{Dataplane, Readiness};
use crate::upstream::body::Body;

/// What one admin socket serves.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub metrics: bool,
    pub status: bool,
}

/// Renders the document served at `/status`, at request time.
pub type StatusRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the admin endpoints on a bound listener until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    dataplane: Dataplane,
    status: StatusRender,
    endpoints: Endpoints,
    stop: CancellationToken,
) {
    while let Some((stream, _)) = crate::conn::accept(&listener, &stop, "admin").await {
        let (dataplane, status) = (dataplane.clone(), status.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&dataplane, &status, endpoints, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // Admin clients are scrapers and probes: a slow or idle one is cut off.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

/// Binds an admin address, failing clearly if it is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn respond<B>(dataplane: &Dataplane, status: &StatusRender, endpoints: Endpoints, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned(), "text/plain");
    }
    match req.uri().path() {
        "/metrics" if endpoints.metrics => {
            text(StatusCode::OK, dataplane.metrics().render(), "text/plain; version=0.0.4; charset=utf-8")
        }
        "/status" if endpoints.status => text(StatusCode::OK, status(), "application/yaml"),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" => match dataplane.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".to_owned(), "text/plain"),
            Readiness::Loading => {
                text(StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded yet\n".to_owned(), "text/plain")
            }
            Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_owned(), "text/plain"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned(), "text/plain"),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
