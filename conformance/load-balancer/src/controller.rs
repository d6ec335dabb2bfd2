//! Wiring: two reflectors (Services; EndpointSlices that name a Service)
//! and one loop that, after any change, plans again and applies the
//! difference: logs and Events for addresses, status writes, listeners.
//!
//! ```text
//!   watch Services ───────▶ Store<Service> ───────┐
//!   watch EndpointSlices ─▶ Store<EndpointSlice> ─┴─▶ (both listed) plan ──▶ held addresses (next plan's input)
//!                                                        ├──▶ status::write, one task per Service, newest wins
//!                                                        └──▶ Listeners::update
//! ```
//!
//! Events are coalesced: the loop drains every event that is ready before it
//! plans, so a burst of changes costs one plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::{WatchStreamExt, reflector::reflector};
use kube::{Client, Resource};
use tokio::task::{AbortHandle, JoinSet};

use crate::forward::Listeners;
use crate::plan::{self, Conflict, SERVICE_NAME_LABEL};
use crate::pool::Refusal;
use crate::{Config, ServiceRef, status};

/// Runs the load balancer until `shutdown` resolves. Listeners stop with
/// it; published addresses stay (and are kept by the next run).
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) {
    // Typed watches: Services and EndpointSlices are core kinds the API
    // server validates, served in the version k8s-openapi was built for.
    let (services, writer) = reflector::store::<Service>();
    let mut service_events = reflector(
        writer,
        watcher::watcher(Api::<Service>::all(client.clone()), watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|s: &mut Service| s.metadata.managed_fields = None),
    )
    .boxed();
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let slice_config = watcher::Config::default().any_semantic().labels(SERVICE_NAME_LABEL);
    let mut slice_events = reflector(
        writer,
        watcher::watcher(Api::<EndpointSlice>::all(client.clone()), slice_config)
            .default_backoff()
            .modify(|s: &mut EndpointSlice| s.metadata.managed_fields = None),
    )
    .boxed();

    let reporter = Reporter { controller: status::FIELD_MANAGER.to_owned(), instance: None };
    let mut state = State {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        listeners: Listeners::new(config.connect_timeout),
        config,
        held: BTreeMap::new(),
        refused: BTreeMap::new(),
        conflicts: BTreeSet::new(),
        writes: HashMap::new(),
        write_tasks: JoinSet::new(),
    };
    let (mut services_listed, mut slices_listed, mut dirty) = (false, false, false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(event) = service_events.next() => {
                services_listed |= listed("Service", event);
                dirty = true;
            }
            Some(event) = slice_events.next() => {
                slices_listed |= listed("EndpointSlice", event);
                dirty = true;
            }
            Some(_) = state.write_tasks.join_next() => {
                state.writes.retain(|_, (_, task)| !task.is_finished());
            }
            // Only once nothing else is ready, and both kinds are listed
            // (planning with a partial list could give away addresses).
            () = std::future::ready(()), if dirty && services_listed && slices_listed => {
                dirty = false;
                state.reconcile(&services, &slices);
            }
        }
    }
    tracing::info!(listeners = state.listeners.addrs().count(), "stopping the listeners");
}

/// Whether `event` completes a (re)list; warns on errors.
fn listed<K>(kind: &str, event: Result<WatchEvent<K>, watcher::Error>) -> bool {
    match event {
        Ok(WatchEvent::InitDone) => {
            tracing::debug!(kind, "listed");
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
            false
        }
    }
}

/// What the loop keeps between plans.
struct State {
    client: Client,
    config: Config,
    recorder: Recorder,
    listeners: Listeners,
    /// The addresses of the last plan.
    held: BTreeMap<ServiceRef, IpAddr>,
    /// Why Services got no address in the last plan.
    refused: BTreeMap<ServiceRef, Refusal>,
    conflicts: BTreeSet<Conflict>,
    /// Status writes under way: what each writes.
    writes: HashMap<ServiceRef, (Vec<LoadBalancerIngress>, AbortHandle)>,
    write_tasks: JoinSet<ServiceRef>,
}

impl State {
    fn reconcile(&mut self, services: &Store<Service>, slices: &Store<EndpointSlice>) {
        let services = services.state();
        let plan = plan::plan(&self.config, &services, &slices.state(), &self.held);
        let by_ref: BTreeMap<ServiceRef, &Arc<Service>> = services.iter().map(|s| (plan::service_ref(s), s)).collect();

        for (service, ip) in &plan.allocation.assigned {
            if self.held.get(service) == Some(ip) {
                continue;
            }
            tracing::info!(%service, %ip, "address assigned");
            // Not again for an address a restart kept.
            let object = by_ref.get(service).copied();
            let published = object.and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref());
            if !published.into_iter().flatten().any(|i| i.ip.as_deref() == Some(ip.to_string().as_str())) {
                self.publish(object, EventType::Normal, "IPAllocated", format!("Assigned IP {ip}"));
            }
        }
        for (service, ip) in &self.held {
            if !plan.allocation.assigned.contains_key(service) {
                tracing::info!(%service, %ip, "address released");
            }
        }
        for (service, refusal) in &plan.allocation.refused {
            if self.refused.get(service) != Some(refusal) {
                tracing::warn!(%service, reason = %refusal, "no load balancer address");
                self.publish(by_ref.get(service).copied(), EventType::Warning, "AllocationFailed", refusal.to_string());
            }
        }
        for conflict in plan.conflicts.difference(&self.conflicts) {
            tracing::warn!(addr = %conflict.addr, service = %conflict.service, owner = %conflict.owner,
                "address and port already served for an older Service; not listening for this one");
        }
        self.held = plan.allocation.assigned;
        self.refused = plan.allocation.refused;
        self.conflicts = plan.conflicts;

        // A write under way that is no longer needed (the status is right,
        // or the Service gone) stops; one with another value is replaced.
        self.writes.retain(|service, (_, task)| {
            let keep = plan.statuses.contains_key(service);
            if !keep {
                task.abort();
            }
            keep
        });
        for (service, ingress) in plan.statuses {
            if let Some((pending, task)) = self.writes.get(&service) {
                if *pending == ingress && !task.is_finished() {
                    continue;
                }
                task.abort();
            }
            let task = self.write_tasks.spawn(status::write(self.client.clone(), service.clone(), ingress.clone()));
            self.writes.insert(service, (ingress, task));
        }

        self.listeners.update(&plan.listeners);
    }

    fn publish(&self, service: Option<&Arc<Service>>, type_: EventType, reason: &str, note: String) {
        let Some(service) = service else { return };
        let reference = service.object_ref(&());
        let recorder = self.recorder.clone();
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Allocate".to_owned(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "cannot publish an event");
            }
        });
    }
}
