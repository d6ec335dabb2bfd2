//! The routing snapshot: everything the dataplane needs to serve requests,
//! compiled once from the whole world and swapped as one value.
//!
//! ```text
//! Snapshot
//!  └─ Bind (address, port, protocol)        one listening socket
//!      └─ Listener (Gateway listener)        chosen by hostname / SNI
//!          ├─ tls_mode                       TLS only: Passthrough or Terminate
//!          ├─ certificates                   HTTPS, and TLS in mode Terminate
//!          ├─ client_validation              HTTPS with tls.frontend (same on every listener of a bind)
//!          └─ RouteTable                     host bucket → entries in precedence order
//!              └─ RouteEntry (match)  ──►  Rule (filters + action)
//!                                            └─ Action: Forward(backends) | Redirect | Reject
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use serde::{Serialize, Serializer};

use crate::cors::Cors;
use crate::filters::{Fraction, HeaderModifier, Redirect, UrlRewrite};
use crate::hostname::Hostname;
use crate::matching::{MatchOrigin, PathIndex, RequestMatch, RequestView, precedence};

/// Everything the dataplane serves, compiled from one consistent world.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Sorted by key; one entry per listening socket.
    pub binds: Vec<Bind>,
    /// Every backend of every rule, by [`Backend::id`]: where a request held
    /// at the gate looks for ready endpoints after a swap.
    #[serde(skip)]
    pub backends: HashMap<String, Arc<Backend>>,
}

impl Snapshot {
    pub fn new(mut binds: Vec<Bind>) -> Self {
        binds.sort_by_key(|b| b.address);
        let mut backends = HashMap::new();
        for listener in binds.iter().flat_map(|b| &b.listeners) {
            for entry in listener.routes.buckets().flat_map(|b| &b.entries) {
                if let Action::Forward(forward) = &entry.rule.action {
                    for weighted in &forward.backends {
                        if let BackendTarget::Service(backend) = &weighted.target {
                            backends.entry(backend.id.clone()).or_insert_with(|| backend.clone());
                        }
                    }
                }
            }
        }
        Snapshot { binds, backends }
    }

    /// Every `host` label requests can carry (one per route host bucket).
    pub fn host_labels(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.binds.iter().flat_map(|b| &b.listeners).flat_map(|l| l.routes.buckets()).map(|b| b.label.clone()).collect()
    }

    /// The `host` labels of the buckets holding rules of `route`: where
    /// its requests are counted. Empty when no listener serves the route.
    pub fn route_host_labels(&self, route: &ObjectRef) -> std::collections::BTreeSet<Arc<str>> {
        self.binds
            .iter()
            .flat_map(|b| &b.listeners)
            .flat_map(|l| l.routes.buckets())
            .filter(|b| b.entries.iter().any(|e| e.rule.route == *route))
            .map(|b| b.label.clone())
            .collect()
    }

    /// The bind of the socket listening at `address`.
    pub fn bind(&self, address: SocketAddr) -> Option<&Bind> {
        self.binds.binary_search_by_key(&address, |b| b.address).ok().map(|i| &self.binds[i])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
    /// TLS connections routed by their SNI to TLSRoutes, each listener
    /// passing them through or terminating them ([`TlsMode`]).
    #[serde(rename = "TLS")]
    Tls,
}

/// What a TLS listener does with a connection its SNI chose it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TlsMode {
    /// The ClientHello and every byte after it go to the backend: the
    /// backend terminates TLS.
    Passthrough,
    /// The listener's certificate answers the handshake; the backend gets
    /// the plaintext stream.
    Terminate,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
        })
    }
}

impl Protocol {
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https | Protocol::Tls => "https",
        }
    }
}

/// One listening socket and the Gateway listeners that share it.
#[derive(Debug, Serialize)]
pub struct Bind {
    #[serde(serialize_with = "crate::ser::display")]
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// In hostname precedence: exact, then wildcards (most labels first),
    /// then the listener without a hostname.
    pub listeners: Vec<Arc<Listener>>,
}

impl Bind {
    pub fn new(address: SocketAddr, protocol: Protocol, mut listeners: Vec<Arc<Listener>>) -> Self {
        listeners.sort_by_key(|l| hostname_rank(l.hostname.as_ref()));
        Bind { address, protocol, listeners }
    }

    /// "Exact matches MUST be processed before wildcard matches, and wildcard
    /// matches MUST be processed before fallback (empty Hostname value)
    /// matches."
    pub fn listener_for_host(&self, host: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.hostname.as_ref().is_none_or(|h| h.matches(host)))
    }

    /// The client certificate validation of this socket's handshakes (the
    /// same on all its listeners).
    pub fn client_validation(&self) -> Option<&Arc<ClientValidation>> {
        self.listeners.first().and_then(|l| l.client_validation.as_ref())
    }

    /// The listener whose certificate answers a TLS handshake. Without SNI
    /// (clients connecting by IP address send none), the listener without a
    /// hostname answers if there is one, else the first listener by name.
    pub fn listener_for_sni(&self, sni: Option<&str>) -> Option<&Arc<Listener>> {
        match sni {
            Some(name) => self.listener_for_host(&crate::hostname::normalize_host(name)),
            None => self
                .listeners
                .iter()
                .find(|l| l.hostname.is_none())
                .or_else(|| self.listeners.iter().min_by(|a, b| a.id().cmp(&b.id()))),
        }
    }
}

/// Sort key for hostname precedence: exact names first (longest first), then
/// wildcards with the most characters after the `*`, then no hostname.
fn hostname_rank(h: Option<&Hostname>) -> (u8, std::cmp::Reverse<usize>, String) {
    match h {
        Some(Hostname::Exact(n)) => (0, std::cmp::Reverse(n.len()), n.clone()),
        Some(Hostname::Wildcard(s)) => (1, std::cmp::Reverse(s.len()), s.clone()),
        None => (2, std::cmp::Reverse(0), String::new()),
    }
}

/// Identifies a Kubernetes object in messages and labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for ObjectRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A Gateway listener, as programmed.
#[derive(Debug, Serialize)]
pub struct Listener {
    pub gateway: ObjectRef,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    pub port: u16,
    pub protocol: Protocol,
    /// A TLS listener's mode; `None` on HTTP and HTTPS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<TlsMode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
    /// Client certificate validation (the Gateway's `tls.frontend` for this
    /// port); `None` asks no client certificate. The compiler makes every
    /// listener of one bind agree, so the handshake, which happens before the
    /// request names a host, needs no choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<Arc<ClientValidation>>,
    pub routes: RouteTable,
}

impl Listener {
    pub fn id(&self) -> String {
        format!("{}/{}", self.gateway, self.name)
    }
}

/// A TLS certificate and key from a `kubernetes.io/tls` Secret.
#[derive(Clone)]
pub struct Certificate {
    pub secret: ObjectRef,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate").field("secret", &self.secret).finish()
    }
}

impl Serialize for Certificate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("secret {}", self.secret))
    }
}

/// How an HTTPS listener validates client certificates (mutual TLS).
#[derive(Clone)]
pub struct ClientValidation {
    /// The objects the CA certificates came from, as `ConfigMap ns/name`.
    pub sources: Vec<String>,
    /// The CA certificates (trust anchors), DER.
    pub roots: Vec<CertificateDer<'static>>,
    /// Verifies that a client certificate chains to `roots`; requires one.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// `AllowInsecureFallback`: a client certificate is asked for, but a
    /// client without one, or with one that fails validation, is let through.
    pub insecure_fallback: bool,
}

/// Two validations are the same when they trust the same CAs in the same mode.
impl PartialEq for ClientValidation {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots && self.insecure_fallback == other.insecure_fallback
    }
}

impl fmt::Debug for ClientValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientValidation")
            .field("sources", &self.sources)
            .field("roots", &self.roots.len())
            .field("insecure_fallback", &self.insecure_fallback)
            .finish()
    }
}

impl Serialize for ClientValidation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mode = if self.insecure_fallback { "AllowInsecureFallback" } else { "AllowValidOnly" };
        s.collect_str(&format_args!("{mode}, {} CA certificate(s) from {}", self.roots.len(), self.sources.join(", ")))
    }
}

/// The routes attached to one listener, bucketed by effective hostname.
///
/// Hostname precedence comes first in the Gateway API ("precedence must be
/// given to rules from the HTTPRoute with the largest number of: Characters in
/// a matching non-wildcard hostname. Characters in a matching hostname."), so
/// a lookup tries the exact bucket, then wildcard buckets from the longest
/// suffix, then the bucket for routes without hostnames; within a bucket,
/// entries are already sorted by match precedence and the first match wins.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    wildcard: HashMap<String, HostRoutes>,
    any: Option<HostRoutes>,
}

/// The entries for one effective hostname, and the `host` label its requests
/// carry in metrics (the hostname as written, so a wildcard cannot create
/// unbounded label values).
#[derive(Debug, Serialize)]
pub struct HostRoutes {
    pub label: Arc<str>,
    pub entries: Vec<RouteEntry>,
    /// The entries' paths, packed for the lookup ([`RouteTable::finish`]).
    #[serde(skip)]
    paths: PathIndex,
}

impl HostRoutes {
    fn new(label: Arc<str>) -> Self {
        HostRoutes { label, entries: Vec::new(), paths: PathIndex::default() }
    }

    /// The first entry, in precedence order, that `req` matches.
    fn first_match(&self, req: &RequestView<'_>) -> Option<&RouteEntry> {
        if self.paths.len() == self.entries.len() {
            self.paths.find(req, |i| &self.entries[i].matcher).map(|i| &self.entries[i])
        } else {
            // Not indexed yet (entries added since `finish`).
            self.entries.iter().find(|e| e.matcher.matches(req))
        }
    }
}

/// One `HTTPRouteMatch` of one rule: what a request is tested against.
#[derive(Debug, Serialize)]
pub struct RouteEntry {
    #[serde(rename = "match")]
    pub matcher: RequestMatch,
    #[serde(flatten)]
    pub origin: MatchOrigin,
    pub rule: Arc<Rule>,
}

impl RouteTable {
    /// Adds an entry under an effective hostname (`None`: all hostnames).
    pub fn insert(&mut self, hostname: Option<&Hostname>, entry: RouteEntry) {
        let (bucket, label) = match hostname {
            Some(Hostname::Exact(name)) => (self.exact.entry(name.clone()), name.clone()),
            Some(h @ Hostname::Wildcard(suffix)) => (self.wildcard.entry(suffix.clone()), h.to_string()),
            None => {
                self.any.get_or_insert_with(|| HostRoutes::new(Arc::from("*"))).entries.push(entry);
                return;
            }
        };
        bucket.or_insert_with(|| HostRoutes::new(Arc::from(label))).entries.push(entry);
    }

    /// Sorts every bucket by match precedence and indexes its paths. Call
    /// once after inserting.
    pub fn finish(&mut self) {
        let buckets = self.exact.values_mut().chain(self.wildcard.values_mut()).chain(self.any.as_mut());
        for bucket in buckets {
            bucket.entries.sort_by(|a, b| precedence((&a.matcher, &a.origin), (&b.matcher, &b.origin)));
            bucket.paths = PathIndex::new(bucket.entries.iter().map(|e| &e.matcher));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// Finds the entry that serves a request; `host` is normalised.
    pub fn find(&self, host: &str, req: &RequestView<'_>) -> Option<(&HostRoutes, &RouteEntry)> {
        if let Some(bucket) = self.exact.get(host)
            && let Some(entry) = bucket.first_match(req)
        {
            return Some((bucket, entry));
        }
        if !self.wildcard.is_empty() {
            // Suffixes from the longest: for a.b.example.com try .b.example.com,
            // then .example.com, then .com.
            for (i, _) in host.match_indices('.') {
                if i == 0 {
                    continue;
                }
                if let Some(bucket) = self.wildcard.get(&host[i..])
                    && let Some(entry) = bucket.first_match(req)
                {
                    return Some((bucket, entry));
                }
            }
        }
        let bucket = self.any.as_ref()?;
        bucket.first_match(req).map(|entry| (bucket, entry))
    }

    /// The number of entries, for logs.
    pub fn len(&self) -> usize {
        self.buckets().map(|b| b.entries.len()).sum()
    }

    pub fn buckets(&self) -> impl Iterator<Item = &HostRoutes> {
        self.exact.values().chain(self.wildcard.values()).chain(self.any.as_ref())
    }
}

impl Serialize for RouteTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<(u8, &str), &Vec<RouteEntry>> = self
            .exact
            .values()
            .map(|b| ((0, &*b.label), &b.entries))
            .chain(self.wildcard.values().map(|b| ((1, &*b.label), &b.entries)))
            .chain(self.any.iter().map(|b| ((2, &*b.label), &b.entries)))
            .collect();
        s.collect_map(sorted.into_iter().map(|((_, label), entries)| (label, entries)))
    }
}

/// What a matched rule does: its filters, its timeouts, then its action.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    pub route: ObjectRef,
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    #[serde(skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The rule's `retry`: when a failed backend request is sent again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Scale-to-zero: hold requests while no backend has a ready endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    pub action: Action,
}

/// How long and how many requests a rule holds while its backends have no
/// ready endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gate {
    #[serde(serialize_with = "crate::ser::duration")]
    pub wait_timeout: Duration,
    /// Held requests per `host` label at most.
    pub max_pending: usize,
}

/// The filters that modify a forwarded request and its response, on a rule
/// or on one backendRef. (RequestRedirect is an [`Action`].) Boxed: most
/// rules and backends have none, and every rule and backend carries one.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Filters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderModifier>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderModifier>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<UrlRewrite>>,
    /// The CORS filter: on a rule only, answers preflights itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<Cors>>,
    /// RequestMirror filters (a rule's only), in order: each sends a copy of
    /// the request, as the rule's other filters leave it, to its backend,
    /// and ignores the answer. Those whose backendRef did not resolve are
    /// not here (the route's status says why).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub mirrors: Box<[Mirror]>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_none()
            && self.response_headers.is_none()
            && self.rewrite.is_none()
            && self.cors.is_none()
            && self.mirrors.is_empty()
    }
}

/// A RequestMirror filter: where copies go, and of which share of requests.
#[derive(Clone, Debug, Serialize)]
pub struct Mirror {
    pub backend: Arc<Backend>,
    pub fraction: Fraction,
}

/// HTTPRoute `timeouts`, parsed; `None` is no limit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeouts {
    /// From receiving the request to sending the response headers.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_duration")]
    pub request: Option<Duration>,
    /// From sending the request to a backend to its response headers.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::ser::opt_duration")]
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.backend_request.is_none()
    }
}

/// A rule's `retry` (GEP-1731): a backend request that fails is sent again,
/// to another endpoint where the backend has one, when the response's status
/// is one of `codes`, or when the backend could not be reached, broke the
/// connection, or did not answer within the `backendRequest` timeout; at most
/// `attempts` times after the first, at least `backoff` apart, and never past
/// the rule's `request` timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retry {
    #[serde(serialize_with = "crate::ser::status_codes")]
    pub codes: Vec<StatusCode>,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The least wait before a retry; later retries wait longer.
    #[serde(serialize_with = "crate::ser::duration")]
    pub backoff: Duration,
}

impl Retry {
    /// Whether a response with `status` is retried.
    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.codes.contains(&status)
    }
}

#[derive(Clone, Debug, Serialize)]
pub enum Action {
    /// Proxy to one of the backends, chosen by weight.
    Forward(Backends),
    /// Answer with a redirect (the RequestRedirect filter).
    Redirect(Redirect),
    /// Answer with an error because the rule is invalid; the route's status
    /// says the same.
    Reject(Rejection),
}

#[derive(Clone, Debug, Serialize)]
pub struct Rejection {
    #[serde(serialize_with = "crate::ser::display")]
    pub status: StatusCode,
    pub reason: String,
}

/// The backendRefs of a rule. Invalid ones keep their weight: "requests that
/// would have been sent to that backend" get a 500, per the spec.
#[derive(Clone, Debug, Serialize)]
pub struct Backends {
    #[serde(skip)]
    total_weight: u64,
    pub backends: Vec<WeightedBackend>,
}

impl Backends {
    /// `None` when no backend has a positive weight.
    pub fn new(backends: Vec<WeightedBackend>) -> Option<Self> {
        let backends: Vec<_> = backends.into_iter().filter(|b| b.weight > 0).collect();
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        (total_weight > 0).then_some(Backends { total_weight, backends })
    }

    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Chooses by weight; `roll` is uniform in `0..total_weight()`.
    pub fn pick(&self, roll: u64) -> &WeightedBackend {
        let mut acc = 0;
        for backend in &self.backends {
            acc += u64::from(backend.weight);
            if roll < acc {
                return backend;
            }
        }
        self.backends.last().expect("Backends is never empty")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WeightedBackend {
    pub weight: u32,
    pub target: BackendTarget,
    /// The backendRef's own filters, applied after the rule's.
    #[serde(skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
}

#[derive(Clone, Debug, Serialize)]
pub enum BackendTarget {
    Service(Arc<Backend>),
    /// A backendRef that cannot be resolved: requests that pick it get a 500
    /// with this reason.
    Invalid(String),
}

/// A resolved Service port and its ready endpoints.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// Stable across snapshots: `namespace/service:port`.
    pub id: String,
    pub endpoints: Vec<SocketAddr>,
    pub protocol: BackendProtocol,
    /// TLS to the backend, from the BackendTLSPolicy that targets its
    /// Service port; `None`: plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

impl Backend {
    /// The TLS to speak to it, when its policy is valid.
    pub fn origination(&self) -> Option<&TlsOrigination> {
        match &self.tls {
            Some(BackendTls::Origination(tls)) => Some(tls),
            _ => None,
        }
    }
}

/// How Agimo speaks TLS to a backend, from a BackendTLSPolicy.
#[derive(Clone, Debug, Serialize)]
pub enum BackendTls {
    /// Verified TLS, as the policy says.
    Origination(Arc<TlsOrigination>),
    /// The policy cannot be used (its CA certificates cannot be resolved):
    /// requests that pick this backend get a 500 with this reason, and
    /// nothing goes to it in plain text.
    Invalid(String),
}

/// A compiled BackendTLSPolicy for one backend: what to verify, and the
/// rustls client configuration that verifies it.
#[derive(Debug, Serialize)]
pub struct TlsOrigination {
    pub policy: ObjectRef,
    /// The SNI sent, and the name the certificate must hold when no
    /// subjectAltNames are given.
    pub hostname: String,
    /// The policy's subjectAltNames (`Hostname:` or `URI:`), one of which
    /// the certificate must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Where the trusted CA certificates come from (ConfigMaps, or the
    /// system's).
    pub trust: String,
    /// The Secret of the certificate presented to the backend, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ObjectRef>,
    /// Identifies this configuration: connections made with one are never
    /// pooled with another's, nor with plain ones.
    #[serde(skip)]
    pub key: u64,
    /// Verifies as above, sends `hostname` as SNI, offers ALPN per the
    /// backend's protocol.
    #[serde(skip)]
    pub config: Arc<rustls::ClientConfig>,
    #[serde(skip)]
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// How to speak to a backend, from the Service port's `appProtocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum BackendProtocol {
    /// HTTP/1.1 (websocket upgrades included).
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (`kubernetes.io/h2c`).
    H2c,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::PathMatch;
    use http::{HeaderMap, Method};

    fn rule(name: &str) -> Arc<Rule> {
        Arc::new(Rule {
            route: ObjectRef { namespace: "ns".into(), name: name.into() },
            index: 0,
            name: None,
            filters: Filters::default(),
            timeouts: Timeouts::default(),
            retry: None,
            gate: None,
            action: Action::Reject(Rejection { status: StatusCode::INTERNAL_SERVER_ERROR, reason: name.into() }),
        })
    }

    fn entry(route: &str, path: PathMatch) -> RouteEntry {
        RouteEntry {
            matcher: RequestMatch { path, ..RequestMatch::any() },
            origin: MatchOrigin {
                route_created: None,
                route_namespace: "ns".into(),
                route_name: route.into(),
                rule_index: 0,
                match_index: 0,
            },
            rule: rule(route),
        }
    }

    fn found(table: &RouteTable, host: &str, path: &str) -> Option<(String, String)> {
        let headers = HeaderMap::new();
        let req = RequestView::new(&Method::GET, path, None, &headers);
        table.find(host, &req).map(|(b, e)| (b.label.to_string(), e.rule.route.name.clone()))
    }

    #[test]
    fn host_buckets_are_tried_from_most_specific() {
        let mut t = RouteTable::default();
        let exact = Hostname::parse("a.example.com").unwrap();
        let wild = Hostname::parse("*.example.com").unwrap();
        t.insert(Some(&exact), entry("exact", PathMatch::prefix("/only")));
        t.insert(Some(&wild), entry("wild", PathMatch::prefix("/")));
        t.insert(None, entry("any", PathMatch::prefix("/")));
        t.finish();
        assert_eq!(found(&t, "a.example.com", "/only/x"), Some(("a.example.com".into(), "exact".into())));
        // The exact bucket has no match for this path: the wildcard serves it.
        assert_eq!(found(&t, "a.example.com", "/other"), Some(("*.example.com".into(), "wild".into())));
        assert_eq!(found(&t, "b.c.example.com", "/"), Some(("*.example.com".into(), "wild".into())));
        assert_eq!(found(&t, "example.com", "/"), Some(("*".into(), "any".into())));
    }

    #[test]
    fn weighted_pick_covers_the_range() {
        let b = |w| WeightedBackend {
            weight: w,
            target: BackendTarget::Invalid(w.to_string()),
            filters: Filters::default(),
        };
        let backends = Backends::new(vec![b(1), b(0), b(3)]).unwrap();
        assert_eq!(backends.total_weight(), 4);
        let picked: Vec<_> = (0..4).map(|r| backends.pick(r).weight).collect();
        assert_eq!(picked, vec![1, 3, 3, 3]);
        assert!(Backends::new(vec![b(0)]).is_none());
    }
}
