//! Per-host request metrics, named as KEDA's prometheus scaler reads them.
//!
//! The `host` label is the hostname of the route bucket that matched (the
//! hostname as written on the HTTPRoute or listener, `*` for routes without
//! hostnames), or [`UNMATCHED`] when nothing matched, so clients cannot
//! create label values at will.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `host` label value of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    pending: IntGaugeVec,
    active: IntGaugeVec,
    duration: HistogramVec,
    refused: IntCounter,
    parked: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "Requests received, by matched host."), &["host"])
                .expect("valid metric");
        let pending = IntGaugeVec::new(
            Opts::new(
                "pending_requests_total",
                "Requests held right now waiting for a ready backend replica, by host.",
            ),
            &["host"],
        )
        .expect("valid metric");
        let active = IntGaugeVec::new(
            Opts::new(
                "active_requests_total",
                "Requests forwarded to a backend and not finished (open websockets and streams included), by host.",
            ),
            &["host"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from receiving a request to sending its response headers, by host.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["host"],
        )
        .expect("valid metric");
        let refused = IntCounter::new(
            "refused_connections_total",
            "Client connections refused because the connection cap was reached.",
        )
        .expect("valid metric");
        let parked = IntGauge::new(
            "parked_connections",
            "Idle HTTP/1.1 client connections parked: only their socket is kept until the client sends again.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(parked.clone()),
            Box::new(requests.clone()),
            Box::new(pending.clone()),
            Box::new(active.clone()),
            Box::new(duration.clone()),
        ] {
            registry.register(collector).expect("metrics register once");
        }
        Metrics { registry, requests, pending, active, duration, refused, parked }
    }

    /// Creates the series of these hosts at 0, so queries (KEDA's) see them
    /// before the first request.
    pub fn declare_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        for host in hosts {
            self.requests.with_label_values(&[host]);
            self.pending.with_label_values(&[host]);
            self.active.with_label_values(&[host]);
        }
    }

    pub fn refused_connection(&self) {
        self.refused.inc();
    }

    /// Counts a parked connection until the guard drops.
    pub fn parked(&self) -> GaugeGuard {
        self.parked.inc();
        GaugeGuard(self.parked.clone())
    }

    pub fn request(&self, host: &str) {
        self.requests.with_label_values(&[host]).inc();
    }

    pub fn observe_duration(&self, host: &str, elapsed: Duration) {
        self.duration.with_label_values(&[host]).observe(elapsed.as_secs_f64());
    }

    /// Counts a forwarded request as active until the guard drops.
    pub fn active(&self, host: &str) -> GaugeGuard {
        let gauge = self.active.with_label_values(&[host]);
        gauge.inc();
        GaugeGuard(gauge)
    }

    /// The pending gauge of a host (held requests; scale-to-zero).
    pub fn pending(&self, host: &str) -> IntGauge {
        self.pending.with_label_values(&[host])
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

/// Decrements a gauge (`active_requests_total`, `parked_connections`) when
/// dropped.
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
