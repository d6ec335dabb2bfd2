//! ListenerSets: listeners for a Gateway defined outside it, in objects that
//! name the Gateway in their `parentRef`.
//!
//! ```text
//! ListenerSet ─parentRef─► Gateway ─allowedListeners─► attached? (NotAllowed)
//!   listeners ─► appended to the Gateway's listeners: its own first, then
//!                each ListenerSet's, oldest first, then by namespace/name;
//!                one that conflicts with a listener before it is Conflicted
//!   statuses  ─► ListenerSet conditions and listeners; the Gateway's
//!                attachedListenerSets
//! ```

use std::collections::BTreeMap;

use agimo_shared::snapshot::ObjectRef;

use super::compiled::Statuses;
use super::conditions::{Problem, Reason, condition, types};
use super::gateways::{self, GatewayModel, ListenerSetInput, ListenerSetInputs};
use super::grants::LabelSelector;
use crate::api::{
    FromListenerNamespaces, Gateway, Listener, ListenerSet, ListenerSetListenerStatus, ListenerSetStatus,
    ListenerSetSupportedKind, NamespaceSelector,
};
use crate::world::{World, listener_set_parent};

/// Every ListenerSet whose parentRef names a Gateway, by Gateway, in the
/// order of precedence: "ListenerSets ordered by creation time (oldest
/// first), then alphabetically by {namespace}/{name}"; with its listeners
/// (the same schema as a Gateway's) and whether the Gateway allows it.
pub fn inputs(world: &World) -> ListenerSetInputs {
    let mut by_gateway: ListenerSetInputs = BTreeMap::new();
    let mut sets: Vec<(&ObjectRef, &ListenerSet)> = world.listener_sets.iter().map(|(k, s)| (k, s.as_ref())).collect();
    let created = |s: &ListenerSet| s.metadata.creation_timestamp.clone().map(|t| t.0);
    sets.sort_by(|(ka, a), (kb, b)| {
        let (ca, cb) = (created(a), created(b));
        ca.is_none().cmp(&cb.is_none()).then(ca.cmp(&cb)).then_with(|| ka.cmp(kb))
    });
    for (key, set) in sets {
        let Some(gateway_key) = listener_set_parent(key, set) else { continue };
        let Some(gateway) = world.gateways.get(&gateway_key) else { continue };
        let listeners = set.spec.listeners.iter().filter_map(|l| {
            let listener = serde_json::to_value(l).and_then(serde_json::from_value::<Listener>);
            if let Err(e) = &listener {
                tracing::warn!(listener_set = %key, listener = %l.name, error = %e, "listener skipped");
            }
            listener.ok()
        });
        by_gateway.entry(gateway_key.clone()).or_default().push(ListenerSetInput {
            key: key.clone(),
            generation: set.metadata.generation,
            not_allowed: allowed(world, &gateway_key, gateway, &key.namespace).err(),
            listeners: listeners.collect(),
        });
    }
    by_gateway
}

/// Whether the Gateway's `allowedListeners` admits ListenerSets from
/// `namespace` ("None" when unset).
fn allowed(world: &World, gateway_key: &ObjectRef, gw: &Gateway, namespace: &str) -> Result<(), Problem> {
    let namespaces = gw.spec.allowed_listeners.as_ref().and_then(|a| a.namespaces.as_ref());
    let refused = |why: &str| Err(Problem::new(Reason::NotAllowed, format!("Gateway {gateway_key} {why}")));
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(FromListenerNamespaces::None) => refused("allows no ListenerSets (spec.allowedListeners)"),
        Some(FromListenerNamespaces::All) => Ok(()),
        Some(FromListenerNamespaces::Same) if namespace == gateway_key.namespace => Ok(()),
        Some(FromListenerNamespaces::Same) => refused("allows ListenerSets from its own namespace only"),
        Some(FromListenerNamespaces::Selector) => {
            let selector = namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| serde_json::from_value::<NamespaceSelector>(v).ok());
            let Some(selector) = selector else {
                return refused("has allowedListeners.namespaces.from Selector but no selector");
            };
            match LabelSelector::compile(&selector) {
                Ok(s) if s.matches(&world.namespace_labels(namespace)) => Ok(()),
                Ok(_) => refused(&format!("does not select namespace {namespace} in allowedListeners")),
                Err(e) => refused(&format!("has an invalid allowedListeners selector: {e}")),
            }
        }
    }
}

/// The statuses of the ListenerSets of our Gateways.
pub fn statuses(gateways: &[GatewayModel<'_>], statuses: &mut Statuses) {
    for (gw, set) in gateways.iter().flat_map(|gw| gw.listener_sets.iter().map(move |s| (gw, s))) {
        let generation = set.generation;
        let listeners = &gw.listeners[set.listeners.clone()];
        let both = |problem: &Problem| {
            vec![
                problem.condition(types::ACCEPTED, false, generation),
                problem.condition(types::PROGRAMMED, false, generation),
            ]
        };
        // Valid: served. A listener whose certificates cannot be used is
        // accepted on a Gateway, but a ListenerSet with only such listeners
        // adds nothing: ListenersNotValid, as the suite expects.
        let invalid: Vec<&str> = listeners.iter().filter(|l| !l.programmable()).map(|l| l.spec.name.as_str()).collect();
        let conditions = if let Some(problem) = &set.not_allowed {
            both(problem)
        } else if let Err(why) = &gw.accepted {
            both(&Problem::new(
                Reason::ParentNotAccepted,
                format!("Gateway {} is not accepted: {}", gw.key, why.message),
            ))
        } else if invalid.len() == listeners.len() {
            both(&Problem::new(Reason::ListenersNotValid, format!("no listener is valid: {}", invalid.join(", "))))
        } else {
            let accepted = if invalid.is_empty() {
                condition(types::ACCEPTED, true, Reason::Accepted, "the ListenerSet is attached", generation)
            } else {
                let message = format!("listeners not valid and not served: {}", invalid.join(", "));
                condition(types::ACCEPTED, true, Reason::ListenersNotValid, message, generation)
            };
            let programmed = match &gw.address_problem {
                None => {
                    condition(types::PROGRAMMED, true, Reason::Programmed, "the ListenerSet is programmed", generation)
                }
                Some(problem) => {
                    condition(types::PROGRAMMED, false, Reason::Pending, problem.message.clone(), generation)
                }
            };
            vec![accepted, programmed]
        };
        let listeners = listeners
            .iter()
            .map(|l| {
                let status = gateways::listener_status(l, gw.accepted.is_ok(), generation);
                ListenerSetListenerStatus {
                    attached_routes: status.attached_routes,
                    conditions: status.conditions,
                    name: status.name,
                    supported_kinds: status.supported_kinds.map(|kinds| {
                        kinds.into_iter().map(|k| ListenerSetSupportedKind { group: k.group, kind: k.kind }).collect()
                    }),
                }
            })
            .collect();
        statuses
            .listener_sets
            .insert(set.key.clone(), ListenerSetStatus { conditions: Some(conditions), listeners: Some(listeners) });
    }
}
