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
use std::ops::Range;

use agimo_shared::snapshot::ObjectRef;

use super::compiled::Statuses;
use super::conditions::{Problem, Reason, condition, types};
use super::gateways::{self, GatewayModel, ListenerModel, Owner};
use super::grants::LabelSelector;
use crate::api::{
    FromListenerNamespaces, Gateway, Listener, ListenerSet, ListenerSetListenerStatus, ListenerSetStatus,
    ListenerSetSupportedKind, NamespaceSelector,
};
use crate::world::{World, listener_set_parent};

/// Each ListenerSet's listeners, in the Gateway's listener type.
pub type SetListeners = BTreeMap<ObjectRef, Vec<Listener>>;

/// A ListenerSet whose parentRef is a Gateway of ours.
pub struct ListenerSetModel {
    pub key: ObjectRef,
    pub generation: Option<i64>,
    /// Why the Gateway's `allowedListeners` refuses it.
    pub not_allowed: Option<Problem>,
    /// Its listeners among the Gateway's (empty when not allowed).
    pub listeners: Range<usize>,
}

impl ListenerSetModel {
    /// "A ListenerSet is successfully attached to a Gateway when [it] is
    /// selected by the Gateway's AllowedListeners field, [has] a valid
    /// ParentRef selecting the Gateway, [and] the condition Accepted: true."
    pub fn attached(&self, gw: &GatewayModel<'_>) -> bool {
        gw.accepted.is_ok()
            && self.not_allowed.is_none()
            && gw.listeners[self.listeners.clone()].iter().any(ListenerModel::programmable)
    }
}

/// Whether a listener is accepted (served, or waiting only for its socket).
fn accepted(l: &ListenerModel<'_>) -> bool {
    l.invalid.is_none() && l.conflict.is_none() && l.bind_error.is_none()
}

/// The listeners of every ListenerSet, converted once per compile: a
/// ListenerSet's listener has the same schema as a Gateway's.
pub fn listeners(world: &World) -> SetListeners {
    let mut out = SetListeners::new();
    for (key, set) in &world.listener_sets {
        let converted = set.spec.listeners.iter().filter_map(|l| {
            let listener = serde_json::to_value(l).and_then(serde_json::from_value::<Listener>);
            if let Err(e) = &listener {
                tracing::warn!(listener_set = %key, listener = %l.name, error = %e, "listener skipped");
            }
            listener.ok()
        });
        out.insert(key.clone(), converted.collect());
    }
    out
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

/// Finds the ListenerSets of Gateway `key`, and appends the listeners of
/// those it allows to `listeners` (built by `build`), marking the ones that
/// conflict with a listener that comes before them.
pub fn attach<'w>(
    world: &'w World,
    set_listeners: &'w SetListeners,
    key: &ObjectRef,
    gw: &Gateway,
    listeners: &mut Vec<ListenerModel<'w>>,
    mut build: impl FnMut(Owner<'_>, &'w Listener) -> ListenerModel<'w>,
) -> Vec<ListenerSetModel> {
    let mut sets: Vec<(&ObjectRef, &ListenerSet)> = world
        .listener_sets
        .iter()
        .filter(|(k, s)| listener_set_parent(k, s).as_ref() == Some(key))
        .map(|(k, s)| (k, s.as_ref()))
        .collect();
    // "ListenerSets ordered by creation time (oldest first), then
    // alphabetically by {namespace}/{name}."
    let created = |s: &ListenerSet| s.metadata.creation_timestamp.clone().map(|t| t.0);
    sets.sort_by(|(ka, a), (kb, b)| {
        let (ca, cb) = (created(a), created(b));
        ca.is_none().cmp(&cb.is_none()).then(ca.cmp(&cb)).then_with(|| ka.cmp(kb))
    });
    let mut models = Vec::with_capacity(sets.len());
    for (set_key, set) in sets {
        let first = listeners.len();
        let not_allowed = allowed(world, key, gw, &set_key.namespace).err();
        if not_allowed.is_none() {
            for l in set_listeners.get(set_key).into_iter().flatten() {
                let owner = Owner { kind: "ListenerSet", key: set_key, set: Some(set_key) };
                let mut model = build(owner, l);
                if let Some(conflict) = conflict_with_earlier(listeners, &model) {
                    model.conflict = Some(conflict);
                }
                listeners.push(model);
            }
        }
        models.push(ListenerSetModel {
            key: set_key.clone(),
            generation: set.metadata.generation,
            not_allowed,
            listeners: first..listeners.len(),
        });
    }
    models
}

/// A ListenerSet's listener conflicts with an accepted listener before it
/// on the same port: with another protocol (ProtocolConflict), or the same
/// protocol and hostname (HostnameConflict). Compared as written, so a
/// listener with a protocol Agimo does not serve still conflicts.
fn conflict_with_earlier(earlier: &[ListenerModel<'_>], l: &ListenerModel<'_>) -> Option<Problem> {
    let hostname = |l: &ListenerModel<'_>| l.spec.hostname.clone().filter(|h| !h.is_empty());
    let owner = |l: &ListenerModel<'_>| match &l.set {
        None => "the Gateway".to_owned(),
        Some(set) => format!("ListenerSet {set}"),
    };
    earlier.iter().filter(|e| accepted(e) && e.spec.port == l.spec.port).find_map(|e| {
        if e.spec.protocol != l.spec.protocol {
            let message = format!(
                "port {} is used with protocol {} by listener {} of {}",
                e.spec.port,
                e.spec.protocol,
                e.spec.name,
                owner(e)
            );
            Some(Problem::new(Reason::ProtocolConflict, message))
        } else if hostname(e) == hostname(l) {
            let message = format!(
                "port {} and hostname {} are used by listener {} of {}",
                e.spec.port,
                hostname(e).unwrap_or_else(|| "(none)".to_owned()),
                e.spec.name,
                owner(e)
            );
            Some(Problem::new(Reason::HostnameConflict, message))
        } else {
            None
        }
    })
}

/// The Gateway's `status.attachedListenerSets`: set once a ListenerSet
/// names the Gateway or the Gateway allows some.
pub fn attached_count(gw: &GatewayModel<'_>) -> Option<i32> {
    if gw.listener_sets.is_empty() && gw.gateway.spec.allowed_listeners.is_none() {
        return None;
    }
    let attached = gw.listener_sets.iter().filter(|s| s.attached(gw)).count();
    Some(i32::try_from(attached).unwrap_or(i32::MAX))
}

/// The statuses of a Gateway's ListenerSets.
pub fn statuses(gw: &GatewayModel<'_>, statuses: &mut Statuses) {
    for set in &gw.listener_sets {
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
