//! The scale-to-zero gate: a request whose backends have no ready endpoint
//! waits, without a thread, until a snapshot swap brings one, then goes to
//! it; and a request on a gated route goes to an endpoint only once it has
//! a connection to it, so a pod that is Ready before it listens (a container
//! without a readiness probe) does not fail it.
//!
//! ```text
//!  request ─► no ready endpoint ─► Held (pending_requests_total +1, per-host cap)
//!     │                              │  waits on: snapshot swaps │ deadline │ client gone
//!     │                              ▼
//!     ├──────────────► a ready endpoint ─► idle connection to it? ──yes──► forward (active)
//!     │                    ▲                   │ no
//!     │                    │                   ▼
//!     │                    │              connect ──ok──► forward on it (active; pending −1 if held)
//!     │                    │                   │ refused, reset, timed out: nothing was sent
//!     │                    └── backoff ◄───────┘ Held if it was not (active −1, pending +1)
//!     └─ deadline (wait-timeout, capped by the request timeout) ─► 504 wait-timeout
//! ```
//!
//! Waiters are woken by swaps (EndpointSlice changes compiled into a new
//! snapshot), never by polling; a connect that failed is tried again after
//! 5 ms, growing by half to 250 ms (each with jitter: half to all of it), against
//! the rule's ready endpoints as the snapshot has them then. The request is
//! prepared for its backendRef and given to the upstream only once it has
//! its connection: nothing of it has been sent when a connect fails, so
//! every request may wait this way, whatever its method and body. The
//! per-host count of held requests lives outside the snapshot, so it
//! survives swaps: it is the host's `pending_requests_total`
//! ([`crate::metrics::HostStats::hold`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agimo_shared::snapshot::{Backend, BackendTarget, Backends, Gate, Rule, WeightedBackend};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{ConnectWaitTimeout, ProxyError};
use super::state::Proxy;
use crate::base::BoxError;
use crate::metrics::{Active, HostStats, Pending};
use crate::upstream::UpstreamError;

/// The wait before the first connect is tried again; it grows by half at
/// each failure, up to [`MAX_RETRY_DELAY`]: a pod that is Ready before
/// it listens usually listens within tens of milliseconds, and each wait
/// past that moment is time its first request loses.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(5);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The backends of a rule that have ready endpoints in the current
/// snapshot, with their weights; the request's rule may come from an older
/// snapshot, so backends are looked up again by id.
pub fn ready_backends(backends: &Backends, current: &HashMap<String, Arc<Backend>>) -> Vec<(usize, u32, Arc<Backend>)> {
    backends
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, wb)| match &wb.target {
            BackendTarget::Service(b) => {
                let now = current.get(&b.id).unwrap_or(b);
                (!now.endpoints.is_empty()).then(|| (i, wb.weight, now.clone()))
            }
            BackendTarget::Invalid(_) => None,
        })
        .collect()
}

/// Chooses among ready backends by weight.
pub fn pick_weighted(ready: &[(usize, u32, Arc<Backend>)]) -> Option<(usize, Arc<Backend>)> {
    let total: u64 = ready.iter().map(|(_, w, _)| u64::from(*w)).sum();
    if total == 0 {
        return ready.first().map(|(i, _, b)| (*i, b.clone()));
    }
    let mut roll = fastrand::u64(0..total);
    for (i, w, b) in ready {
        if roll < u64::from(*w) {
            return Some((*i, b.clone()));
        }
        roll -= u64::from(*w);
    }
    None
}

/// Waits until a backend of `backends` has a ready endpoint; returns its
/// index in the rule and the backend as now. Each snapshot swap wakes every
/// waiter once.
/// Shutdown ends the wait at once ([`ProxyError::ShuttingDown`]).
pub(crate) async fn wait_for_ready(
    gate: &Gate,
    backends: &Backends,
    snapshot: impl Fn() -> Arc<agimo_shared::Snapshot>,
    swaps: &mut watch::Receiver<u64>,
    stopping: &CancellationToken,
    deadline: tokio::time::Instant,
    host: &str,
) -> Result<(usize, Arc<Backend>), ProxyError> {
    loop {
        swaps.borrow_and_update();
        let current = snapshot();
        if let Some(found) = pick_weighted(&ready_backends(backends, &current.backends)) {
            return Ok(found);
        }
        tokio::select! {
            // The sender lives as long as the dataplane: no error while a
            // request waits.
            _ = swaps.changed() => {}
            _ = stopping.cancelled() => return Err(ProxyError::ShuttingDown { host: host.to_owned() }),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ProxyError::WaitTimeout { host: host.to_owned(), waited: gate.wait_timeout });
            }
        }
    }
}

/// A request on a gated route, on its way to an endpoint.
pub(crate) struct Gated<'r> {
    pub proxy: &'r Proxy,
    pub rule: &'r Rule,
    pub gate: &'r Gate,
    pub backends: &'r Backends,
    pub host: &'r Arc<HostStats>,
    /// When the request arrived: the rule's request timeout counts from here.
    pub started: Instant,
    /// Whether the request has a body or an `Upgrade` header: which of the
    /// upstream's pools it would take an idle connection from (the filters
    /// have not run yet: a hint).
    pub hyper: bool,
}

/// Where a request on a gated route goes.
pub(crate) struct Admitted<'r> {
    pub chosen: &'r WeightedBackend,
    pub backend: Arc<Backend>,
    pub endpoint: SocketAddr,
    /// The connection made to `endpoint` for the request; `None` when the
    /// upstream has one open to it already.
    pub connected: Option<TcpStream>,
    /// The request counts as active from here.
    pub active: Active,
}

/// The endpoint a request goes to, and its connection. `next` is the
/// backendRef chosen by weight and one of its endpoints, if it has any
/// ready (the caller found no connection open to it); else another
/// backendRef's ready endpoint, else the request waits for one
/// ([`wait_for_ready`]). A connect that fails is tried again, after a
/// backoff, against the rule's ready endpoints at that time (waiting again
/// if none is), until the deadline: `wait-timeout` from now, capped by the
/// rule's request timeout. From its first failed connect to its connection,
/// a request that was not held counts as held: as pending, and against
/// `max-pending`.
///
/// A retry ([`super::retry`]) comes back with the request's [`Active`]
/// count, which moves to pending if the request is held again (never both),
/// and the endpoint that failed it, which it avoids where there is another.
pub(crate) async fn admit<'r>(
    g: &Gated<'r>,
    mut next: Option<(&'r WeightedBackend, Arc<Backend>, SocketAddr)>,
    retry: Option<(Active, SocketAddr)>,
) -> Result<Admitted<'r>, ProxyError> {
    let mut admission = Admission::new(g);
    if let Some((active, failed)) = retry {
        admission.active = Some(active);
        admission.avoid = Some(failed);
    }
    loop {
        let (chosen, backend, endpoint) = match next.take() {
            Some(next) => next,
            None => match admission.next_endpoint().await? {
                Next::Open(admitted) => return Ok(admitted),
                Next::Connect(chosen, backend, endpoint) => (chosen, backend, endpoint),
            },
        };
        let error = match admission.connect(chosen, &backend, endpoint).await {
            Ok(admitted) => return Ok(admitted),
            Err(error) => error,
        };
        admission.back_off((error, backend, endpoint)).await?;
    }
}

/// A connect that failed: why, and to what.
type Failed = (BoxError, Arc<Backend>, SocketAddr);

/// What the next attempt of an [`Admission`] is.
enum Next<'r> {
    /// The upstream has a connection open to a ready endpoint: no connect.
    Open(Admitted<'r>),
    Connect(&'r WeightedBackend, Arc<Backend>, SocketAddr),
}

/// One request's way through [`admit`]: its deadline, whether it is held
/// (pending) or active, its attempts and backoff, and its last failure.
struct Admission<'g, 'r> {
    g: &'g Gated<'r>,
    reached: Instant,
    deadline: tokio::time::Instant,
    held: Option<Pending>,
    active: Option<Active>,
    swaps: Option<watch::Receiver<u64>>,
    attempts: u32,
    delay: Duration,
    failed: Option<Failed>,
    /// The endpoint a retried request failed on.
    avoid: Option<SocketAddr>,
    first_failure: Option<Instant>,
}

impl<'g, 'r> Admission<'g, 'r> {
    /// `wait-timeout` from now, capped by the rule's request timeout.
    fn new(g: &'g Gated<'r>) -> Self {
        let reached = Instant::now();
        let mut deadline = tokio::time::Instant::from_std(reached + g.gate.wait_timeout);
        if let Some(request) = g.rule.timeouts.request {
            deadline = deadline.min(tokio::time::Instant::from_std(g.started + request));
        }
        Admission {
            g,
            reached,
            deadline,
            held: None,
            active: None,
            swaps: None,
            attempts: 0,
            delay: FIRST_RETRY_DELAY,
            failed: None,
            avoid: None,
            first_failure: None,
        }
    }

    /// After a failed connect, or with no endpoint at first: the rule's
    /// ready endpoints as they are now (the one that failed may have gone,
    /// another may have come), waiting for one if there is none.
    async fn next_endpoint(&mut self) -> Result<Next<'r>, ProxyError> {
        let g = self.g;
        let ready = pick_weighted(&ready_backends(g.backends, &g.proxy.snapshot.load().backends));
        let (chosen, backend) = match ready {
            // Another backendRef of the rule has a ready endpoint: it serves at once.
            Some((i, backend)) => (&g.backends.backends[i], backend),
            None => {
                self.hold()?;
                tracing::debug!(route = %g.rule.route, host = %g.host.label(), "no ready endpoint: holding the request");
                match g.wait(&mut self.swaps, self.deadline).await {
                    Ok(found) => found,
                    Err(e) => return Err(self.failed.take().map_or(e, |failed| self.give_up(failed))),
                }
            }
        };
        let endpoint = pick_endpoint(&backend, self.failed.as_ref().map(|(_, _, endpoint)| *endpoint).or(self.avoid));
        if self.attempts == 0
            && g.proxy.upstream.has_connection(backend.protocol, backend.origination(), g.hyper, endpoint)
        {
            let active = self.active.take().unwrap_or_else(|| g.host.active());
            return Ok(Next::Open(Admitted { chosen, backend, endpoint, connected: None, active }));
        }
        Ok(Next::Connect(chosen, backend, endpoint))
    }

    /// Connects to `endpoint` before the deadline.
    async fn connect(
        &mut self,
        chosen: &'r WeightedBackend,
        backend: &Arc<Backend>,
        endpoint: SocketAddr,
    ) -> Result<Admitted<'r>, BoxError> {
        let g = self.g;
        if self.held.is_none() && self.active.is_none() {
            // A request that was not held counts as active while it
            // connects, as on any route.
            self.active = Some(g.host.active());
        }
        self.attempts += 1;
        // Boxed: a held request waits without room for a connect's state.
        let connect = Box::pin(tokio::time::timeout_at(self.deadline, g.proxy.upstream.connect(endpoint)));
        match connect.await {
            Ok(Ok(stream)) => {
                if let Some(since) = self.first_failure {
                    tracing::info!(
                        route = %g.rule.route,
                        host = %g.host.label(),
                        backend = %backend.id,
                        %endpoint,
                        attempts = self.attempts,
                        retrying_ms = since.elapsed().as_millis() as u64,
                        waited_ms = self.reached.elapsed().as_millis() as u64,
                        "connected after failed attempts"
                    );
                }
                let active = self.active.take().unwrap_or_else(|| g.host.active());
                Ok(Admitted { chosen, backend: backend.clone(), endpoint, connected: Some(stream), active })
            }
            Ok(Err(
                UpstreamError::Connect(e)
                | UpstreamError::Failed(e)
                | UpstreamError::RequestBody(e)
                | UpstreamError::Tls(e),
            )) => Err(e),
            Err(_) => Err("still connecting at the gate's deadline".into()),
        }
    }

    /// After a failed connect: the request counts as held from here; it
    /// waits out a jittered backoff (growing to [`MAX_RETRY_DELAY`]), and
    /// gives up at the deadline, or at once at shutdown.
    async fn back_off(&mut self, failed: Failed) -> Result<(), ProxyError> {
        let g = self.g;
        self.first_failure.get_or_insert_with(Instant::now);
        self.hold()?;
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return Err(self.give_up(failed));
        }
        let retry_in = jittered(self.delay).min(self.deadline - now);
        let (error, backend, endpoint) = &failed;
        tracing::debug!(
            route = %g.rule.route,
            host = %g.host.label(),
            backend = %backend.id,
            %endpoint,
            attempt = self.attempts,
            retry_in_ms = retry_in.as_millis() as u64,
            error = %error,
            "connect failed: trying again"
        );
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = g.proxy.stopping.cancelled() => return Err(ProxyError::ShuttingDown { host: g.host.label().to_string() }),
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Err(self.give_up(failed));
        }
        self.delay = (self.delay * 3 / 2).min(MAX_RETRY_DELAY);
        self.failed = Some(failed);
        Ok(())
    }

    /// Counts the request as held (pending) from here, and no longer as
    /// active: a request is one or the other.
    fn hold(&mut self) -> Result<(), ProxyError> {
        if self.held.is_none() {
            self.held = Some(self.g.hold()?);
            self.active = None;
        }
        Ok(())
    }

    fn give_up(&self, failed: Failed) -> ProxyError {
        self.g.give_up(self.reached, self.attempts, failed)
    }
}

impl<'r> Gated<'r> {
    /// Counts the request as held, within `max-pending`.
    fn hold(&self) -> Result<Pending, ProxyError> {
        let held = self.host.hold(self.gate.max_pending).ok_or_else(|| ProxyError::TooManyPending {
            host: self.host.label().to_string(),
            max: self.gate.max_pending,
        })?;
        self.proxy.metrics.request_held();
        Ok(held)
    }

    /// The error for a request that no endpoint took a connection from by
    /// the deadline, with its last failed connect.
    fn give_up(
        &self,
        reached: Instant,
        attempts: u32,
        (source, backend, endpoint): (BoxError, Arc<Backend>, SocketAddr),
    ) -> ProxyError {
        ProxyError::ConnectWaitTimeout(Box::new(ConnectWaitTimeout {
            host: self.host.label().to_string(),
            waited: Duration::from_millis(reached.elapsed().as_millis() as u64),
            attempts,
            backend: backend.id.clone(),
            endpoint,
            source,
        }))
    }

    /// [`wait_for_ready`], with the backendRef found.
    async fn wait(
        &self,
        swaps: &mut Option<watch::Receiver<u64>>,
        deadline: tokio::time::Instant,
    ) -> Result<(&'r WeightedBackend, Arc<Backend>), ProxyError> {
        let swaps = swaps.get_or_insert_with(|| self.proxy.swaps.subscribe());
        let snapshot = || self.proxy.snapshot.load_full();
        let (i, backend) = wait_for_ready(
            self.gate,
            self.backends,
            snapshot,
            swaps,
            &self.proxy.stopping,
            deadline,
            self.host.label(),
        )
        .await?;
        Ok((&self.backends.backends[i], backend))
    }
}

/// One of `backend`'s endpoints at random; another than `avoid` if it has
/// another.
pub(super) fn pick_endpoint(backend: &Backend, avoid: Option<SocketAddr>) -> SocketAddr {
    let endpoints = &backend.endpoints;
    let i = fastrand::usize(0..endpoints.len());
    if Some(endpoints[i]) == avoid && endpoints.len() > 1 {
        endpoints[(i + 1 + fastrand::usize(0..endpoints.len() - 1)) % endpoints.len()]
    } else {
        endpoints[i]
    }
}

/// Half of `delay` to all of it, at random: requests released together do
/// not try again together.
fn jittered(delay: Duration) -> Duration {
    delay / 2 + delay.mul_f64(fastrand::f64()) / 2
}

#[cfg(test)]
mod tests {
    use agimo_shared::snapshot::{Action, Filters, ObjectRef, Timeouts};

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    /// A retried request comes back to the gate counted as active; held
    /// again (its endpoint refuses connects), it counts as pending instead,
    /// never as both.
    #[tokio::test]
    async fn a_retried_request_held_again_moves_from_active_to_pending() {
        let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = refusing.local_addr().unwrap();
        drop(refusing);
        let proxy = Proxy::new(Config::default(), Metrics::new());
        let backend = Arc::new(Backend {
            id: "default/app:80".into(),
            endpoints: vec![endpoint],
            protocol: Default::default(),
            tls: None,
        });
        let backends = Backends::new(vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Service(backend.clone()),
            filters: Filters::default(),
        }])
        .unwrap();
        let gate = Gate { wait_timeout: Duration::from_millis(300), max_pending: 10 };
        let rule = Rule {
            route: ObjectRef { namespace: "default".into(), name: "r".into() },
            index: 0,
            name: None,
            filters: Filters::default(),
            timeouts: Timeouts::default(),
            retry: None,
            gate: Some(gate.clone()),
            action: Action::Forward(backends.clone()),
        };
        let host = proxy.metrics.host("app.example");
        let g = Gated {
            proxy: &proxy,
            rule: &rule,
            gate: &gate,
            backends: &backends,
            host: &host,
            started: Instant::now(),
            hyper: false,
        };
        let active = host.active();
        assert_eq!((host.in_flight(), host.pending()), (1, 0));
        let check = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (host.in_flight(), host.pending())
        };
        let (admitted, during) = tokio::join!(admit(&g, None, Some((active, endpoint))), check);
        assert_eq!(during, (0, 1), "(active, pending) while held again");
        assert!(matches!(admitted, Err(ProxyError::ConnectWaitTimeout(_))));
        assert_eq!((host.in_flight(), host.pending()), (0, 0));
    }

    fn backend(endpoints: &[&str]) -> Backend {
        Backend {
            id: "default/app:80".into(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            protocol: Default::default(),
            tls: None,
        }
    }

    #[test]
    fn retry_delays_have_jitter_within_half_to_all() {
        let delays: Vec<_> = (0..1000).map(|_| jittered(Duration::from_millis(100))).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(100)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(60))
                && delays.iter().any(|d| *d > Duration::from_millis(90))
        );
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_failed_when_there_is_another() {
        let two = backend(&["10.0.0.1:80", "10.0.0.2:80"]);
        let failed = two.endpoints[0];
        assert!((0..100).all(|_| pick_endpoint(&two, Some(failed)) == two.endpoints[1]));
        let one = backend(&["10.0.0.1:80"]);
        assert_eq!(pick_endpoint(&one, Some(failed)), failed, "the only one is tried again");
        let three = backend(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let picked: std::collections::HashSet<_> = (0..200).map(|_| pick_endpoint(&three, Some(failed))).collect();
        assert_eq!(picked, three.endpoints[1..].iter().copied().collect());
    }
}
