//! Per-host request metrics, named as KEDA's prometheus scaler reads them.
//!
//! The `host` label is the hostname of the route bucket that matched (the
//! hostname as written on the HTTPRoute or listener, `*` for routes without
//! hostnames), or [`UNMATCHED`] when nothing matched, so clients cannot
//! create label values at will.
//!
//! A request updates the series of its host in one place, [`HostStats`]:
//! counter, gauges and histogram side by side in memory, found with one hash
//! of the label per request. Kept as separate `prometheus` metrics (an
//! allocation each, several for a histogram, looked up per update), they were
//! a third of the cache misses a request takes with 10k routes loaded. They
//! are exported through a [`Collector`] of ours, in the same text format.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::sync::watch;

/// The `host` label value of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Upper bounds of the `request_duration_seconds` buckets, in seconds.
const DURATION_BOUNDS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The same bounds in nanoseconds, to place an observation without floats.
const DURATION_BOUNDS_NS: [u64; 16] = {
    let mut ns = [0; 16];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (DURATION_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// The series of one `host` label. Aligned to a cache line: the label and
/// the counters a request touches share the first line, the histogram's
/// buckets take the next two.
#[repr(align(64))]
pub struct HostStats {
    label: Arc<str>,
    requests: AtomicU64,
    pending: AtomicI64,
    active: AtomicI64,
    /// Sum of observed durations, in nanoseconds.
    duration_sum: AtomicU64,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    duration_buckets: [AtomicU64; DURATION_BOUNDS.len() + 1],
}

impl HostStats {
    fn new(label: Arc<str>) -> Self {
        HostStats {
            label,
            requests: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            active: AtomicI64::new(0),
            duration_sum: AtomicU64::new(0),
            duration_buckets: Default::default(),
        }
    }

    /// The `host` label value.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_NS.iter().position(|&bound| ns <= bound).unwrap_or(DURATION_BOUNDS.len());
        self.duration_buckets[bucket].fetch_add(1, Relaxed);
        self.duration_sum.fetch_add(ns, Relaxed);
    }

    /// Counts a forwarded request as active until the guard drops.
    pub fn active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Relaxed);
        Active(self.clone())
    }

    /// Counts a held request (scale-to-zero) as pending until the guard
    /// drops, unless `max` are held for this host already: the gauge is
    /// also the `max-pending` count.
    pub fn hold(self: &Arc<Self>, max: usize) -> Option<Pending> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.pending.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Pending(self.clone()))
    }

    /// Requests received so far (`requests_total`).
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Requests held right now (`pending_requests_total`).
    pub fn pending(&self) -> u64 {
        u64::try_from(self.pending.load(Relaxed)).unwrap_or(0)
    }

    /// Requests forwarded and not finished (`active_requests_total`).
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.active.load(Relaxed)).unwrap_or(0)
    }
}

/// A request counted in `active_requests_total` until dropped.
pub struct Active(Arc<HostStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A request counted in `pending_requests_total` until dropped.
pub struct Pending(Arc<HostStats>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// Every host's series since start, by label: hosts a swap removed keep
/// their counts, as Prometheus expects of a counter.
type AllHosts = Arc<Mutex<BTreeMap<Arc<str>, Arc<HostStats>>>>;

/// The hosts of the current snapshot, keyed by the snapshot's own label
/// strings, so that comparing a request's label reads memory the request
/// has just read.
type HostTable = HashMap<Arc<str>, Arc<HostStats>, foldhash::fast::RandomState>;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    refused: IntCounter,
    parked: IntGauge,
    mirrors: IntCounterVec,
    mirrors_dropped: IntCounterVec,
    all: AllHosts,
    hosts: Arc<ArcSwap<HostTable>>,
    unmatched: Arc<HostStats>,
    /// Bumped each time a request starts being held: wakes whoever pushes
    /// activity (the KEDA scaler) at once, without polling.
    held: Arc<watch::Sender<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
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
        let mirrors = IntCounterVec::new(
            Opts::new("mirror_requests_total", "RequestMirror copies sent, by whether the mirror answered."),
            &["outcome"],
        )
        .expect("valid metric");
        let mirrors_dropped = IntCounterVec::new(
            Opts::new(
                "mirror_requests_dropped_total",
                "RequestMirror copies not sent: too many in flight, body too large or not read whole, no ready endpoint.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let all = AllHosts::default();
        let unmatched = Arc::new(HostStats::new(UNMATCHED.into()));
        all.lock().expect("not poisoned yet").insert(unmatched.label.clone(), unmatched.clone());
        for collector in [
            Box::new(refused.clone()) as Box<dyn Collector>,
            Box::new(parked.clone()),
            Box::new(mirrors.clone()),
            Box::new(mirrors_dropped.clone()),
            Box::new(HostCollector::new(all.clone())),
            // The standard process_* series (resident memory, CPU seconds,
            // open and maximum file descriptors, start time).
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector).expect("metrics register once");
        }
        let held = Arc::new(watch::Sender::new(0));
        Metrics { registry, refused, parked, mirrors, mirrors_dropped, all, hosts: Default::default(), unmatched, held }
    }

    /// Makes `hosts` (the labels of a new snapshot) the ones requests find
    /// fastest, creating their series at 0 so that queries (KEDA's) see them
    /// before the first request. Call before the snapshot is served.
    pub fn declare_hosts(&self, hosts: impl IntoIterator<Item = Arc<str>>) {
        let mut table = HostTable::default();
        for host in hosts {
            if let Entry::Vacant(entry) = table.entry(host) {
                let stats = self.stats(entry.key());
                entry.insert(stats);
            }
        }
        self.hosts.store(Arc::new(table));
    }

    /// The series of a host: from the current table, or (a label of a
    /// snapshot not declared yet) from all hosts, created if new.
    pub fn host(&self, label: &str) -> Arc<HostStats> {
        match self.hosts.load().get(label) {
            Some(stats) => stats.clone(),
            None => self.stats(label),
        }
    }

    /// The series of requests that matched no route.
    pub fn unmatched(&self) -> &HostStats {
        &self.unmatched
    }

    fn stats(&self, label: &str) -> Arc<HostStats> {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = all.get(label) {
            return stats.clone();
        }
        let label: Arc<str> = Arc::from(label);
        let stats = Arc::new(HostStats::new(label.clone()));
        all.insert(label, stats.clone());
        stats
    }

    /// Says that a request of some host has just been held.
    pub fn request_held(&self) {
        self.held.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes each time a request starts being held, on any host.
    pub fn watch_held(&self) -> watch::Receiver<u64> {
        self.held.subscribe()
    }

    pub fn refused_connection(&self) {
        self.refused.inc();
    }

    /// Counts a mirror copy that was sent: `answered` or `failed`.
    pub fn mirror_sent(&self, outcome: &str) {
        self.mirrors.with_label_values(&[outcome]).inc();
    }

    /// Counts a mirror copy that was dropped before it was sent, and why.
    pub fn mirror_dropped(&self, reason: &str) {
        self.mirrors_dropped.with_label_values(&[reason]).inc();
    }

    /// Counts a parked connection until the guard drops.
    pub fn parked(&self) -> GaugeGuard {
        self.parked.inc();
        GaugeGuard(self.parked.clone())
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

/// Decrements a gauge (`parked_connections`) when dropped.
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Exports every host's [`HostStats`] as four metric families.
struct HostCollector {
    descs: [Desc; 4],
    all: AllHosts,
}

const REQUESTS: (&str, &str) = ("requests_total", "Requests received, by matched host.");
const PENDING: (&str, &str) =
    ("pending_requests_total", "Requests held right now waiting for a ready backend replica, by host.");
const ACTIVE: (&str, &str) = (
    "active_requests_total",
    "Requests forwarded to a backend and not finished (open websockets and streams included), by host.",
);
const DURATION: (&str, &str) =
    ("request_duration_seconds", "Time from receiving a request to sending its response headers, by host.");

impl HostCollector {
    fn new(all: AllHosts) -> Self {
        let desc = |(name, help): (&str, &str)| {
            Desc::new(name.to_owned(), help.to_owned(), vec!["host".to_owned()], HashMap::new()).expect("valid metric")
        };
        HostCollector { descs: [desc(REQUESTS), desc(PENDING), desc(ACTIVE), desc(DURATION)], all }
    }
}

impl Collector for HostCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let hosts: Vec<Arc<HostStats>> = self.all.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let family = |(name, help): (&str, &str), kind, value: &dyn Fn(&HostStats, &mut proto::Metric)| {
            let mut family = MetricFamily::default();
            family.set_name(name.to_owned());
            family.set_help(help.to_owned());
            family.set_field_type(kind);
            family.set_metric(
                hosts
                    .iter()
                    .map(|stats| {
                        let mut label = proto::LabelPair::default();
                        label.set_name("host".to_owned());
                        label.set_value(stats.label.to_string());
                        let mut metric = proto::Metric::from_label(vec![label]);
                        value(stats, &mut metric);
                        metric
                    })
                    .collect(),
            );
            family
        };
        let counter = |v: u64| {
            let mut c = proto::Counter::default();
            c.set_value(v as f64);
            c
        };
        let gauge = |v: i64| {
            let mut g = proto::Gauge::default();
            g.set_value(v as f64);
            g
        };
        vec![
            family(REQUESTS, MetricType::COUNTER, &|s, m| m.set_counter(counter(s.requests.load(Relaxed)))),
            family(PENDING, MetricType::GAUGE, &|s, m| m.set_gauge(gauge(s.pending.load(Relaxed)))),
            family(ACTIVE, MetricType::GAUGE, &|s, m| m.set_gauge(gauge(s.active.load(Relaxed)))),
            family(DURATION, MetricType::HISTOGRAM, &|s, m| m.set_histogram(histogram(s))),
        ]
    }
}

/// A histogram read from its buckets: the count is their total, so the
/// count and the `+Inf` bucket always agree.
fn histogram(stats: &HostStats) -> proto::Histogram {
    let mut cumulative = 0;
    let buckets = DURATION_BOUNDS
        .iter()
        .zip(&stats.duration_buckets)
        .map(|(&bound, n)| {
            cumulative += n.load(Relaxed);
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    cumulative += stats.duration_buckets[DURATION_BOUNDS.len()].load(Relaxed);
    let mut h = proto::Histogram::default();
    h.set_sample_count(cumulative);
    h.set_sample_sum(stats.duration_sum.load(Relaxed) as f64 / 1e9);
    h.set_bucket(buckets);
    h
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
        metrics.declare_hosts([Arc::from("a.example")]);
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("0"));
        metrics.host("a.example").request();
        metrics.host("b.example").request();
        let active = metrics.host("b.example").active();
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("1"));
        assert_eq!(value(&metrics, "requests_total{host=\"b.example\"}").as_deref(), Some("1"));
        assert_eq!(value(&metrics, "active_requests_total{host=\"b.example\"}").as_deref(), Some("1"));
        drop(active);
        assert_eq!(value(&metrics, "active_requests_total{host=\"b.example\"}").as_deref(), Some("0"));
        // A later swap keeps the counts of hosts it still has, and of those
        // it dropped.
        metrics.declare_hosts([Arc::from("a.example")]);
        metrics.host("a.example").request();
        assert_eq!(value(&metrics, "requests_total{host=\"a.example\"}").as_deref(), Some("2"));
        assert_eq!(value(&metrics, "requests_total{host=\"b.example\"}").as_deref(), Some("1"));
        let b = metrics.host("b.example");
        let held = [b.hold(2), b.hold(2)];
        assert!(held.iter().all(Option::is_some));
        assert!(b.hold(2).is_none(), "a third held request is over max-pending");
        assert_eq!(value(&metrics, "pending_requests_total{host=\"b.example\"}").as_deref(), Some("2"));
        drop(held);
        assert_eq!(value(&metrics, "pending_requests_total{host=\"b.example\"}").as_deref(), Some("0"));
        assert!(b.hold(2).is_some(), "room again once they are released");
    }

    #[test]
    fn durations_render_as_a_prometheus_histogram() {
        let metrics = Metrics::new();
        let unmatched = metrics.unmatched();
        unmatched.observe_duration(Duration::from_micros(300));
        unmatched.observe_duration(Duration::from_millis(3));
        unmatched.observe_duration(Duration::from_millis(5));
        unmatched.observe_duration(Duration::from_secs(90));
        let text = metrics.render();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("request_duration_seconds")).collect();
        assert_eq!(series.len(), 19, "{text}");
        for (le, count) in [("0.0005", 1), ("0.001", 1), ("0.0025", 1), ("0.005", 3), ("60", 3), ("+Inf", 4)] {
            assert_eq!(
                value(&metrics, &format!("request_duration_seconds_bucket{{host=\"unmatched\",le=\"{le}\"}}")),
                Some(count.to_string()),
                "{text}"
            );
        }
        assert_eq!(value(&metrics, "request_duration_seconds_count{host=\"unmatched\"}").as_deref(), Some("4"));
        assert_eq!(value(&metrics, "request_duration_seconds_sum{host=\"unmatched\"}").as_deref(), Some("90.0083"));
        assert!(text.contains("# TYPE request_duration_seconds histogram"), "{text}");
        assert!(text.contains("# TYPE requests_total counter"), "{text}");
    }
}
