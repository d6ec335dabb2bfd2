//! Per-host request metrics, named as KEDA's prometheus scaler reads them.
//!
//! The `host` label is the hostname of the route bucket that matched (the
//! hostname as written on the HTTPRoute or listener, `*` for routes without
//! hostnames), or [`UNMATCHED`] when nothing matched, so clients cannot
//! create label values at will.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    /// The series of each host the snapshot has, looked up once per swap:
    /// a request finds them with one hash of its host label, where the
    /// metric vectors would take a lock and a hash for each series (at 10k
    /// routes, 5% of the proxy's CPU).
    hosts: Arc<ArcSwap<HostTable>>,
}

type HostTable = HashMap<Arc<str>, HostSeries, foldhash::fast::RandomState>;

/// The series of one `host` label.
#[derive(Clone)]
struct HostSeries {
    requests: IntCounter,
    pending: IntGauge,
    active: IntGauge,
    duration: Histogram,
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
        Metrics { registry, requests, pending, active, duration, refused, parked, hosts: Default::default() }
    }

    /// Creates the series of these hosts at 0, so queries (KEDA's) see them
    /// before the first request, and makes them the ones requests find
    /// fastest.
    pub fn declare_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let current = self.hosts.load();
        let mut table = HostTable::default();
        for host in hosts.into_iter().chain([UNMATCHED]) {
            if table.contains_key(host) {
                continue;
            }
            let series = match current.get_key_value(host) {
                Some((host, series)) => (host.clone(), series.clone()),
                None => (Arc::from(host), self.series(host)),
            };
            table.insert(series.0, series.1);
        }
        self.hosts.store(Arc::new(table));
    }

    fn series(&self, host: &str) -> HostSeries {
        HostSeries {
            requests: self.requests.with_label_values(&[host]),
            pending: self.pending.with_label_values(&[host]),
            active: self.active.with_label_values(&[host]),
            duration: self.duration.with_label_values(&[host]),
        }
    }

    /// Runs `f` on the series of `host`: those of the table, or (a host
    /// of a snapshot not declared yet) looked up in the metric vectors.
    fn with_host<R>(&self, host: &str, f: impl FnOnce(&HostSeries) -> R) -> R {
        match self.hosts.load().get(host) {
            Some(series) => f(series),
            None => f(&self.series(host)),
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
        self.with_host(host, |s| s.requests.inc());
    }

    pub fn observe_duration(&self, host: &str, elapsed: Duration) {
        self.with_host(host, |s| s.duration.observe(elapsed.as_secs_f64()));
    }

    /// Counts a forwarded request as active until the guard drops.
    pub fn active(&self, host: &str) -> GaugeGuard {
        let gauge = self.with_host(host, |s| s.active.clone());
        gauge.inc();
        GaugeGuard(gauge)
    }

    /// The pending gauge of a host (held requests; scale-to-zero).
    pub fn pending(&self, host: &str) -> IntGauge {
        self.with_host(host, |s| s.pending.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(metrics: &Metrics, series: &str) -> Option<String> {
        let text = metrics.render();
        text.lines().find_map(|l| l.strip_prefix(series)).map(|v| v.trim().to_owned())
    }

    #[test]
    fn declared_and_undeclared_hosts_are_counted_alike() {
        let metrics = Metrics::new();
        metrics.declare_hosts(["a.example"]);
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("0"));
        metrics.request("a.example");
        metrics.request("b.example");
        let active = metrics.active("b.example");
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("1"));
        assert_eq!(value(&metrics, "requests_total{host=\"b.example\"}").as_deref(), Some("1"));
        assert_eq!(value(&metrics, "active_requests_total{host=\"b.example\"}").as_deref(), Some("1"));
        drop(active);
        assert_eq!(value(&metrics, "active_requests_total{host=\"b.example\"}").as_deref(), Some("0"));
        // A later swap keeps the counts of hosts it still has.
        metrics.declare_hosts(["a.example", "b.example"]);
        metrics.request("a.example");
        metrics.observe_duration(UNMATCHED, Duration::from_millis(3));
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("2"));
        assert_eq!(value(&metrics, "request_duration_seconds_count{host=\"unmatched\"}").as_deref(), Some("1"));
    }
}
