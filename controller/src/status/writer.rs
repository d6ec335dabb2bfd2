//! Writes the compiler's statuses to the API server, while this replica
//! holds the Lease.
//!
//! For each object it reads the current status, merges in ours (conditions
//! of other types and other controllers' route `parents` entries are kept,
//! unchanged conditions keep their `lastTransitionTime`), and writes only if
//! something other than timestamps changed. The write carries the
//! `resourceVersion` it read; on a conflict it reads again and retries.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::stamp_conditions;
use crate::api::{
    BackendTlsPolicy, BackendTlsPolicyStatus, Condition, Gateway, GatewayClass, GatewayClassStatus, GatewayStatus,
    GrpcRoute, HttpRoute, HttpRouteStatus, ListenerSet, ListenerSetStatus, PolicyAncestorStatus, RouteParentStatus,
    Time, Timestamp, TlsRoute,
};
use crate::compiler::{Statuses, condition_types};
use crate::sources::kube::Stores;

/// How often everything is written again even without changes, to repair
/// statuses someone else overwrote.
const RESYNC: Duration = Duration::from_secs(60);

pub fn spawn(
    client: Client,
    stores: Stores,
    controller_name: String,
    mut statuses: watch::Receiver<Arc<Statuses>>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let writer = Writer { client, controller_name };
        loop {
            if *leading.borrow_and_update() {
                let current = statuses.borrow_and_update().clone();
                writer.write_all(&stores, &current).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = statuses.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    });
}

struct Writer {
    client: Client,
    controller_name: String,
}

/// Status writes in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

/// One status write: 1 if it wrote.
type Write<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>>;

/// Runs `writes`, up to [`WRITES_IN_FLIGHT`] at a time; how many wrote.
async fn concurrently(writes: Vec<Write<'_>>) -> usize {
    use futures_util::StreamExt;
    futures_util::stream::iter(writes).buffer_unordered(WRITES_IN_FLIGHT).fold(0, |n, w| async move { n + w }).await
}

impl Writer {
    async fn write_all(&self, stores: &Stores, statuses: &Statuses) {
        let world = stores.world();
        // Classes, Gateways and ListenerSets first (few), then routes and
        // policies, up to WRITES_IN_FLIGHT at a time: a thousand routes
        // applied at once get their statuses in a second, not in one round
        // trip each after the other.
        let mut first: Vec<Write<'_>> = Vec::new();
        for (name, desired) in &statuses.gateway_classes {
            if let Some(object) = world.gateway_classes.get(name) {
                let api = Api::<GatewayClass>::all(self.client.clone());
                first.push(Box::pin(self.write(api, object, |o| merge_class(o, desired))));
            }
        }
        for (key, desired) in &statuses.gateways {
            if let Some(object) = world.gateways.get(key) {
                let api = Api::<Gateway>::namespaced(self.client.clone(), &key.namespace);
                first.push(Box::pin(self.write(api, object, |o| merge_gateway(o, desired))));
            }
        }
        for (key, desired) in &statuses.listener_sets {
            if let Some(object) = world.listener_sets.get(key) {
                let api = Api::<ListenerSet>::namespaced(self.client.clone(), &key.namespace);
                first.push(Box::pin(self.write(api, object, |o| merge_listener_set(o, desired))));
            }
        }
        let mut written = concurrently(first).await;
        let mut rest: Vec<Write<'_>> = Vec::new();
        // Every route: ours get our parents; others lose stale entries of ours.
        for (key, object) in &world.http_routes {
            let desired = statuses.http_routes.get(key).map(Vec::as_slice).unwrap_or_default();
            let has_ours =
                object.status.iter().flat_map(|s| &s.parents).any(|p| p.controller_name == self.controller_name);
            if desired.is_empty() && !has_ours {
                continue;
            }
            let api = Api::<HttpRoute>::namespaced(self.client.clone(), &key.namespace);
            rest.push(Box::pin(self.write(api, object, move |o| merge_route(o, desired, &self.controller_name))));
        }
        for (key, object) in &world.grpc_routes {
            let desired = statuses.grpc_routes.get(key).map(Vec::as_slice).unwrap_or_default();
            let has_ours =
                object.status.iter().flat_map(|s| &s.parents).any(|p| p.controller_name == self.controller_name);
            if desired.is_empty() && !has_ours {
                continue;
            }
            let api = Api::<GrpcRoute>::namespaced(self.client.clone(), &key.namespace);
            let parents = |o: &GrpcRoute| o.status.as_ref().map(|s| serde_json::to_value(&s.parents));
            rest.push(Box::pin(
                self.write(api, object, move |o| merge_parents_json(parents(o), desired, &self.controller_name)),
            ));
        }
        for (key, object) in &world.tls_routes {
            let desired = statuses.tls_routes.get(key).map(Vec::as_slice).unwrap_or_default();
            let has_ours =
                object.status.iter().flat_map(|s| &s.parents).any(|p| p.controller_name == self.controller_name);
            if desired.is_empty() && !has_ours {
                continue;
            }
            let api = Api::<TlsRoute>::namespaced(self.client.clone(), &key.namespace);
            let parents = |o: &TlsRoute| o.status.as_ref().map(|s| serde_json::to_value(&s.parents));
            rest.push(Box::pin(
                self.write(api, object, move |o| merge_parents_json(parents(o), desired, &self.controller_name)),
            ));
        }
        // Every BackendTLSPolicy: as routes, other controllers' ancestors stay.
        for (key, object) in &world.backend_tls_policies {
            let desired = statuses.backend_tls_policies.get(key).map(Vec::as_slice).unwrap_or_default();
            let has_ours =
                object.status.iter().flat_map(|s| &s.ancestors).any(|a| a.controller_name == self.controller_name);
            if desired.is_empty() && !has_ours {
                continue;
            }
            let api = Api::<BackendTlsPolicy>::namespaced(self.client.clone(), &key.namespace);
            rest.push(Box::pin(self.write(api, object, move |o| merge_policy(o, desired, &self.controller_name))));
        }
        written += concurrently(rest).await;
        if written > 0 {
            tracing::debug!(written, "statuses written");
        }
    }

    /// Writes `merge(object)` as the status of `object` if it differs;
    /// returns 1 if it wrote. On a conflict, reads the object again and
    /// retries a few times.
    async fn write<K, S>(&self, api: Api<K>, cached: &Arc<K>, merge: impl Fn(&K) -> Option<S>) -> usize
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        // Most objects need no write: decided on the cached object, without
        // a copy of it.
        let Some(mut status) = merge(cached) else {
            return 0;
        };
        let name = cached.meta().name.clone().unwrap_or_default();
        let mut object = (**cached).clone();
        for attempt in 0..4 {
            if attempt > 0 {
                let Some(merged) = merge(&object) else {
                    return 0;
                };
                status = merged;
            }
            let patch = json!({
                "metadata": {"resourceVersion": object.meta().resource_version},
                "status": status,
            });
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return 1,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 3 => match api.get_opt(&name).await {
                    Ok(Some(fresh)) => object = fresh,
                    Ok(None) => return 0,
                    Err(e) => {
                        tracing::warn!(object = %name, error = %e, "cannot read for a status retry");
                        return 0;
                    }
                },
                Err(kube::Error::Api(e)) if e.code == 404 => return 0,
                Err(e) => {
                    tracing::warn!(object = %name, error = %e, "status write failed; retrying later");
                    return 0;
                }
            }
        }
        0
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Our conditions, with the times of unchanged ones kept, followed by the
/// current conditions of types we do not set (but not those of ours that no
/// longer apply).
fn merge_conditions(desired: &[Condition], current: &[Condition]) -> Vec<Condition> {
    let mut merged: Vec<Condition> = desired.to_vec();
    stamp_conditions(merged.iter_mut(), current, &now());
    let ours_stale = |c: &Condition| condition_types::SET_WHILE_THEY_APPLY.contains(&c.type_.as_str());
    merged.extend(current.iter().filter(|c| !desired.iter().any(|d| d.type_ == c.type_) && !ours_stale(c)).cloned());
    merged
}

/// Equal but for `lastTransitionTime`.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

fn merge_class(object: &GatewayClass, desired: &GatewayClassStatus) -> Option<GatewayClassStatus> {
    let current = object.status.clone().unwrap_or_default();
    let current_conditions = current.conditions.clone().unwrap_or_default();
    let conditions = merge_conditions(desired.conditions.as_deref().unwrap_or_default(), &current_conditions);
    let unchanged =
        same_conditions(&conditions, &current_conditions) && current.supported_features == desired.supported_features;
    (!unchanged).then(|| GatewayClassStatus {
        conditions: Some(conditions),
        supported_features: desired.supported_features.clone(),
    })
}

/// The status to write, as JSON: a merge patch leaves out what is absent, so
/// addresses the Gateway no longer has are removed with an explicit `null`.
fn merge_gateway(object: &Gateway, desired: &GatewayStatus) -> Option<serde_json::Value> {
    let current = object.status.clone().unwrap_or_default();
    let current_conditions = current.conditions.clone().unwrap_or_default();
    let conditions = merge_conditions(desired.conditions.as_deref().unwrap_or_default(), &current_conditions);
    let mut listeners = desired.listeners.clone().unwrap_or_default();
    let current_listeners = current.listeners.clone().unwrap_or_default();
    for l in &mut listeners {
        let old = current_listeners.iter().find(|c| c.name == l.name).map(|c| c.conditions.as_slice());
        l.conditions = merge_conditions(&l.conditions, old.unwrap_or_default());
    }
    let listeners_unchanged = listeners.len() == current_listeners.len()
        && listeners.iter().zip(&current_listeners).all(|(a, b)| {
            a.name == b.name
                && a.attached_routes == b.attached_routes
                && a.supported_kinds == b.supported_kinds
                && same_conditions(&a.conditions, &b.conditions)
        });
    let unchanged = listeners_unchanged
        && same_conditions(&conditions, &current_conditions)
        && current.attached_listener_sets == desired.attached_listener_sets
        && current.addresses.clone().unwrap_or_default() == desired.addresses.clone().unwrap_or_default();
    if unchanged {
        return None;
    }
    let status = GatewayStatus {
        addresses: desired.addresses.clone(),
        attached_listener_sets: desired.attached_listener_sets,
        conditions: Some(conditions),
        listeners: Some(listeners),
    };
    let mut status = serde_json::to_value(status).expect("a status serializes");
    if desired.addresses.is_none() {
        status["addresses"] = serde_json::Value::Null;
    }
    if desired.attached_listener_sets.is_none() && current.attached_listener_sets.is_some() {
        status["attachedListenerSets"] = serde_json::Value::Null;
    }
    Some(status)
}

/// A ListenerSet's status: ours is all of it (only its Gateway's controller
/// writes it); unchanged conditions keep their times.
fn merge_listener_set(object: &ListenerSet, desired: &ListenerSetStatus) -> Option<ListenerSetStatus> {
    let current = object.status.clone().unwrap_or_default();
    let current_conditions = current.conditions.clone().unwrap_or_default();
    let conditions = merge_conditions(desired.conditions.as_deref().unwrap_or_default(), &current_conditions);
    let mut listeners = desired.listeners.clone().unwrap_or_default();
    let current_listeners = current.listeners.clone().unwrap_or_default();
    for l in &mut listeners {
        let old = current_listeners.iter().find(|c| c.name == l.name).map(|c| c.conditions.as_slice());
        l.conditions = merge_conditions(&l.conditions, old.unwrap_or_default());
    }
    let listeners_unchanged = listeners.len() == current_listeners.len()
        && listeners.iter().zip(&current_listeners).all(|(a, b)| {
            a.name == b.name
                && a.attached_routes == b.attached_routes
                && a.supported_kinds == b.supported_kinds
                && same_conditions(&a.conditions, &b.conditions)
        });
    let unchanged = listeners_unchanged && same_conditions(&conditions, &current_conditions);
    (!unchanged).then_some(ListenerSetStatus { conditions: Some(conditions), listeners: Some(listeners) })
}

/// An entry of a status list that several controllers share: an HTTPRoute's
/// `parents`, a policy's `ancestors`. Each controller owns its entries, one
/// per reference.
trait SharedEntry: Clone {
    type Reference: PartialEq;
    fn controller(&self) -> &str;
    fn reference(&self) -> &Self::Reference;
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
}

impl SharedEntry for RouteParentStatus {
    type Reference = crate::api::ParentReference;
    fn controller(&self) -> &str {
        &self.controller_name
    }
    fn reference(&self) -> &Self::Reference {
        &self.parent_ref
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}

impl SharedEntry for PolicyAncestorStatus {
    type Reference = crate::api::PolicyAncestorRef;
    fn controller(&self) -> &str {
        &self.controller_name
    }
    fn reference(&self) -> &Self::Reference {
        &self.ancestor_ref
    }
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
}

/// Other controllers' entries, untouched, then ours (conditions keep their
/// times where unchanged); `None` when that is what `current` holds already.
fn merge_shared<E: SharedEntry>(current: &[E], desired: &[E], controller: &str) -> Option<Vec<E>> {
    let mut merged: Vec<E> = current.iter().filter(|e| e.controller() != controller).cloned().collect();
    for d in desired {
        let old = current
            .iter()
            .find(|c| c.controller() == controller && c.reference() == d.reference())
            .map(SharedEntry::conditions);
        let mut entry = d.clone();
        entry.set_conditions(merge_conditions(d.conditions(), old.unwrap_or_default()));
        merged.push(entry);
    }
    let unchanged = merged.len() == current.len()
        && merged.iter().zip(current).all(|(a, b)| {
            a.controller() == b.controller()
                && a.reference() == b.reference()
                && same_conditions(a.conditions(), b.conditions())
        });
    (!unchanged).then_some(merged)
}

/// Other controllers' `parents` entries, untouched, then ours.
fn merge_route(object: &HttpRoute, desired: &[RouteParentStatus], controller: &str) -> Option<HttpRouteStatus> {
    let current = object.status.as_ref().map(|s| s.parents.as_slice()).unwrap_or_default();
    merge_shared(current, desired, controller).map(|parents| HttpRouteStatus { parents })
}

/// As [`merge_route`], for GRPCRoutes and TLSRoutes: their `parents` entries
/// have the same schema as an HTTPRoute's, but generated types of their own;
/// `current` is them as JSON.
fn merge_parents_json(
    current: Option<serde_json::Result<serde_json::Value>>,
    desired: &[RouteParentStatus],
    controller: &str,
) -> Option<serde_json::Value> {
    let current: Vec<RouteParentStatus> = match current.map(|v| v.and_then(serde_json::from_value)) {
        None => Vec::new(),
        Some(Ok(parents)) => parents,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot read a route's status parents");
            return None;
        }
    };
    merge_shared(&current, desired, controller).map(|parents| json!({ "parents": parents }))
}

/// Other controllers' `ancestors` entries, untouched, then ours.
fn merge_policy(
    object: &BackendTlsPolicy,
    desired: &[PolicyAncestorStatus],
    controller: &str,
) -> Option<BackendTlsPolicyStatus> {
    let current = object.status.as_ref().map(|s| s.ancestors.as_slice()).unwrap_or_default();
    merge_shared(current, desired, controller).map(|ancestors| BackendTlsPolicyStatus { ancestors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ParentReference;
    use crate::compiler::condition;

    fn parent(controller: &str, name: &str, accepted: bool) -> RouteParentStatus {
        RouteParentStatus {
            conditions: vec![condition("Accepted", accepted, "Accepted", "", Some(1))],
            controller_name: controller.into(),
            parent_ref: ParentReference { name: name.into(), ..ParentReference::default() },
        }
    }

    #[test]
    fn route_merge_keeps_other_controllers_and_skips_no_op_writes() {
        let mut route = HttpRoute::new("r", Default::default());
        route.status = Some(HttpRouteStatus {
            parents: vec![parent("example.com/other", "theirs", true), parent("agimo", "old", true)],
        });
        let desired = vec![parent("agimo", "gw", true)];
        let merged = merge_route(&route, &desired, "agimo").expect("changed");
        let names: Vec<_> =
            merged.parents.iter().map(|p| (p.controller_name.as_str(), p.parent_ref.name.as_str())).collect();
        assert_eq!(names, vec![("example.com/other", "theirs"), ("agimo", "gw")]);
        // Writing the merged status again is a no-op, timestamps aside.
        route.status = Some(merged);
        assert!(merge_route(&route, &desired, "agimo").is_none());
    }

    #[test]
    fn policy_merge_keeps_other_controllers_ancestors() {
        let ancestor = |controller: &str, name: &str| PolicyAncestorStatus {
            ancestor_ref: crate::api::PolicyAncestorRef { name: name.into(), ..Default::default() },
            conditions: vec![condition("Accepted", true, "Accepted", "", Some(1))],
            controller_name: controller.into(),
        };
        let mut policy = BackendTlsPolicy::new("p", Default::default());
        policy.status = Some(BackendTlsPolicyStatus {
            ancestors: vec![ancestor("example.com/other", "theirs"), ancestor("agimo", "gone")],
        });
        let desired = vec![ancestor("agimo", "gw")];
        let merged = merge_policy(&policy, &desired, "agimo").expect("changed");
        let names: Vec<_> =
            merged.ancestors.iter().map(|a| (a.controller_name.as_str(), a.ancestor_ref.name.as_str())).collect();
        assert_eq!(names, vec![("example.com/other", "theirs"), ("agimo", "gw")]);
        policy.status = Some(merged);
        assert!(merge_policy(&policy, &desired, "agimo").is_none());
    }

    #[test]
    fn addresses_a_gateway_no_longer_has_are_removed_by_the_patch() {
        let mut gateway = Gateway::new("gw", Default::default());
        gateway.status = Some(GatewayStatus {
            addresses: Some(vec![crate::api::GatewayStatusAddress {
                r#type: Some("IPAddress".into()),
                value: "10.96.0.7".into(),
            }]),
            ..GatewayStatus::default()
        });
        let desired = GatewayStatus { addresses: None, ..GatewayStatus::default() };
        let patch = merge_gateway(&gateway, &desired).expect("the address must go");
        assert_eq!(patch["addresses"], serde_json::Value::Null);
        assert!(patch.as_object().unwrap().contains_key("addresses"));
    }

    #[test]
    fn conditions_keep_their_transition_time_and_foreign_types() {
        let mut old = condition("Accepted", true, "Accepted", "", Some(1));
        old.last_transition_time = Time(Timestamp::from_second(100).unwrap());
        let foreign = condition("example.com/Custom", true, "X", "", Some(1));
        let merged =
            merge_conditions(&[condition("Accepted", true, "Accepted", "", Some(1))], &[old.clone(), foreign.clone()]);
        assert_eq!(merged[0].last_transition_time, old.last_transition_time);
        assert_eq!(merged[1], foreign);
    }

    #[test]
    fn our_conditions_that_no_longer_apply_are_removed() {
        let insecure = condition("InsecureFrontendValidationMode", true, "ConfigurationChanged", "", Some(1));
        let merged = merge_conditions(&[condition("Accepted", true, "Accepted", "", Some(2))], &[insecure]);
        assert_eq!(merged.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Accepted"]);
    }
}
