//! HTTPRoutes and GRPCRoutes (compiled to HTTPRoutes, [`grpc`]): rules
//! compiled once per route, then attached to the listeners their parentRefs
//! select, with route parent statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use agimo_shared::cors::{Allowed, Cors, OriginPattern};
use agimo_shared::filters::{Fraction, HeaderModifier, PathModifier, Redirect, UrlRewrite};
use agimo_shared::hostname::Hostname;
use agimo_shared::matching::{
    FullRegex, GrpcRank, HeaderMatch, MatchOrigin, PathMatch, QueryParamMatch, RequestMatch, ValueMatch,
};
use agimo_shared::snapshot::{
    Action, BackendTarget, Backends, Filters, Mirror, ObjectRef, Rejection, Retry, RouteEntry, Rule, Timeouts,
    WeightedBackend,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::backend_tls::ClientCertificate;
use super::backends::{BackendRefSpec, BackendResolver};
use super::compiled::Statuses;
use super::conditions::{Problem, Reason, condition, types};
use super::duration;
use super::gateways::{GatewayModel, ListenerModel};
use super::kinds::RouteKind;
use super::scale_to_zero::{self, GateAnnotations};
use super::{grpc, tls_routes};
use crate::api::{
    self, Condition, GATEWAY_GROUP, HeaderMatchType, HttpRoute, MatchMethod, ParentReference, PathMatchType,
    QueryParamMatchType, RedirectPathType, RedirectScheme, RouteMatch, RouteParentStatus,
};
use crate::world::World;

/// One route to attach: an HTTPRoute, or a GRPCRoute compiled to one.
struct RouteInput<'w> {
    kind: RouteKind,
    key: &'w ObjectRef,
    route: std::borrow::Cow<'w, HttpRoute>,
    /// A GRPCRoute's matches' ranks, per rule.
    grpc_ranks: Option<Vec<Vec<GrpcRank>>>,
    /// Rules that can never match, by index, with why.
    invalid_rules: BTreeMap<usize, String>,
}

impl RouteInput<'_> {
    fn created(&self) -> i64 {
        self.route.metadata.creation_timestamp.as_ref().map_or(i64::MAX, |t| t.0.as_second())
    }
}

/// The routes of every kind, oldest first, then by namespace and name: the
/// order in which a listener's hostnames are claimed by HTTPRoutes or
/// GRPCRoutes. A GRPCRoute that cannot be read as an HTTPRoute is skipped
/// with a warning (its schema is the same, so this is not expected).
fn route_inputs(world: &World) -> Vec<RouteInput<'_>> {
    let mut inputs: Vec<RouteInput<'_>> = world
        .http_routes
        .iter()
        .map(|(key, route)| RouteInput {
            kind: RouteKind::Http,
            key,
            route: std::borrow::Cow::Borrowed(route.as_ref()),
            grpc_ranks: None,
            invalid_rules: BTreeMap::new(),
        })
        .collect();
    for (key, route) in &world.grpc_routes {
        match grpc::as_http_route(route) {
            Ok(converted) => inputs.push(RouteInput {
                kind: RouteKind::Grpc,
                key,
                route: std::borrow::Cow::Owned(converted.route),
                grpc_ranks: Some(converted.ranks),
                invalid_rules: converted.invalid_rules,
            }),
            Err(e) => tracing::warn!(route = %key, error = %e, "cannot compile a GRPCRoute"),
        }
    }
    for (key, route) in &world.tls_routes {
        match tls_routes::as_http_route(route) {
            Ok(route) => inputs.push(RouteInput {
                kind: RouteKind::Tls,
                key,
                route: std::borrow::Cow::Owned(route),
                grpc_ranks: None,
                invalid_rules: BTreeMap::new(),
            }),
            Err(e) => tracing::warn!(route = %key, error = %e, "cannot compile a TLSRoute"),
        }
    }
    inputs.sort_by(|a, b| a.created().cmp(&b.created()).then_with(|| a.key.cmp(b.key)).then(a.kind.cmp(&b.kind)));
    inputs
}

/// The hostnames the routes of each kind serve on a listener: the other
/// kind may not serve any of them there. By kind, so that a route looks only
/// at the other kind's claims (none, on most listeners).
type Claims = BTreeMap<(usize, usize), BTreeMap<RouteKind, Vec<(ObjectRef, Vec<Option<Hostname>>)>>>;

/// Attaches every HTTPRoute and GRPCRoute that names one of our Gateways,
/// filling the listeners' route tables and the routes' statuses.
pub fn attach_all(
    world: &World,
    gateways: &mut [GatewayModel<'_>],
    in_force: &mut scale_to_zero::Annotations<'_>,
    statuses: &mut Statuses,
) {
    let mut resolver = BackendResolver::new(world);
    let mut claims = Claims::new();
    for input in route_inputs(world) {
        let (kind, key, route) = (input.kind, input.key, input.route.as_ref());
        let parents = parents_of_ours(key, route, gateways);
        if parents.is_empty() {
            continue;
        }
        // Compiled once per backend client certificate among its Gateways
        // (usually one): what a backend's TLS presents depends on it.
        let mut by_client: BTreeMap<Option<ObjectRef>, CompiledRoute> = BTreeMap::new();
        for &(_, g, _) in &parents {
            let client = gateways[g].backend_client.as_ref().and_then(|c| c.as_ref().ok());
            if let std::collections::btree_map::Entry::Vacant(slot) = by_client.entry(client.map(|c| c.secret.clone()))
            {
                slot.insert(compile_route(&input, &mut resolver, client));
            }
            for service in resolver.take_services() {
                resolver.policies.used_by(&service, &gateways[g].key);
            }
        }
        let compiled_for = |g: &GatewayModel<'_>| {
            let client = g.backend_client.as_ref().and_then(|c| c.as_ref().ok()).map(|c| c.secret.clone());
            &by_client[&client]
        };
        let gate = scale_to_zero::parse(&format!("{kind} {key}"), route.metadata.annotations.as_ref(), in_force);
        // Gateway → the listeners the route attaches to.
        let mut attached: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut parent_statuses = Vec::with_capacity(parents.len());
        for (parent, g, set) in parents {
            let compiled = compiled_for(&gateways[g]);
            let outcome = attach(world, (&gateways[g], set.as_ref()), (kind, key), compiled, parent)
                .and_then(|listeners| claim(&mut claims, (kind, key), (g, &gateways[g]), compiled, listeners));
            if let Ok(listeners) = &outcome {
                attached.entry(g).or_default().extend(listeners);
            }
            let (gw, generation) = (&gateways[g], route.metadata.generation);
            let outcome = outcome.map(drop);
            parent_statuses.push(parent_status(
                world,
                (gw, set.as_ref()),
                parent,
                compiled,
                &gate,
                outcome,
                generation,
            ));
        }
        for (g, listeners) in attached {
            let compiled = compiled_for(&gateways[g]);
            let rules = gated_rules(compiled, &gate, &gateways[g].gate);
            for l in listeners {
                insert_routes(&mut gateways[g].listeners[l], key, compiled, &rules);
            }
        }
        match kind {
            RouteKind::Http => statuses.http_routes.insert(key.clone(), parent_statuses),
            RouteKind::Grpc => statuses.grpc_routes.insert(key.clone(), parent_statuses),
            RouteKind::Tls => statuses.tls_routes.insert(key.clone(), parent_statuses),
        };
    }
    statuses.backend_tls_policies = resolver.policies.statuses(&world.controller_name);
}

/// Keeps the listeners where no route of the other kind serves one of the
/// route's hostnames, and claims the route's hostnames there. From
/// `GRPCRouteSpec.hostnames`: "If a Route (A) of type HTTPRoute or GRPCRoute
/// is attached to a Listener and that listener already has another Route (B)
/// of the other type attached and the intersection of the hostnames of A and
/// B is non-empty, then the implementation MUST accept exactly one of these
/// two routes, determined by the following criteria, in order: The oldest
/// Route based on creation timestamp. The Route appearing first in
/// alphabetical order by "{namespace}/{name}"." Routes come oldest first, so
/// the route claiming later is the one refused.
fn claim(
    claims: &mut Claims,
    (kind, key): (RouteKind, &ObjectRef),
    (g, gw): (usize, &GatewayModel<'_>),
    compiled: &CompiledRoute,
    listeners: Vec<usize>,
) -> Result<Vec<usize>, Problem> {
    let overlap = |a: &[Option<Hostname>], b: &[Option<Hostname>]| {
        a.iter().any(|x| {
            b.iter().any(|y| match (x, y) {
                (None, _) | (_, None) => true,
                (Some(x), Some(y)) => Hostname::intersect(Some(x), y).is_some(),
            })
        })
    };
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for l in listeners {
        let listener = &gw.listeners[l];
        let hostnames = effective_hostnames(listener.hostname.as_ref(), &compiled.hostnames);
        let holder =
            claims.get(&(g, l)).into_iter().flatten().filter(|(other, _)| **other != kind).find_map(|(other, held)| {
                held.iter().find(|(_, theirs)| overlap(&hostnames, theirs)).map(|(holder, _)| (other, holder))
            });
        match holder {
            Some((other, holder)) => refused.push(format!("listener {} serves {other} {holder}", listener.spec.name)),
            None => {
                claims.entry((g, l)).or_default().entry(kind).or_default().push((key.clone(), hostnames));
                kept.push(l);
            }
        }
    }
    if kept.is_empty() && !refused.is_empty() {
        let message = format!(
            "{}, older, for the same hostnames: a listener serves a hostname with HTTPRoutes or GRPCRoutes, not both",
            refused.join("; ")
        );
        return Err(Problem::new(Reason::HostnameConflict, message));
    }
    Ok(kept)
}

/// The parentRefs of a route that name one of our Gateways or a ListenerSet
/// of one, each with the index of its Gateway's model and the ListenerSet.
fn parents_of_ours<'r>(
    key: &ObjectRef,
    route: &'r HttpRoute,
    gateways: &[GatewayModel<'_>],
) -> Vec<(&'r api::ParentRef, usize, Option<ObjectRef>)> {
    let gateway_of = |p: &api::ParentRef| {
        let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group != GATEWAY_GROUP {
            return None;
        }
        let target =
            ObjectRef { namespace: p.namespace.clone().unwrap_or(key.namespace.clone()), name: p.name.clone() };
        match p.kind.as_deref().unwrap_or("Gateway") {
            "Gateway" => gateways.iter().position(|g| g.key == target).map(|g| (g, None)),
            "ListenerSet" => {
                gateways.iter().position(|g| g.listener_sets.iter().any(|s| s.key == target)).map(|g| (g, Some(target)))
            }
            _ => None,
        }
    };
    route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter_map(|p| {
            let (g, set) = gateway_of(p)?;
            Some((p, g, set))
        })
        .collect()
}

/// A route's status on one parentRef: whether it attached (`attached`),
/// whether its references resolve, whether some rules are dropped, and (if
/// scale-to-zero is in play) whether requests are held.
fn parent_status(
    world: &World,
    (gw, set): (&GatewayModel<'_>, Option<&ObjectRef>),
    parent: &api::ParentRef,
    compiled: &CompiledRoute,
    gate: &GateAnnotations,
    attached: Result<(), Problem>,
    generation: Option<i64>,
) -> RouteParentStatus {
    let mut conditions = vec![
        match attached {
            Ok(()) => condition(types::ACCEPTED, true, Reason::Accepted, "the route is attached", generation),
            Err(problem) => problem.condition(types::ACCEPTED, false, generation),
        },
        compiled.resolved_refs(generation),
    ];
    if compiled.partially_invalid() {
        let message = format!("Dropped Rule: {}", compiled.invalid_rules.join("; "));
        conditions.push(condition(types::PARTIALLY_INVALID, true, Reason::UnsupportedValue, message, generation));
    }
    if gate.present() || gw.gate.enabled.is_some() {
        conditions.push(scale_to_zero::condition(Some(gate), &gw.gate, generation));
    }
    RouteParentStatus {
        conditions,
        controller_name: world.controller_name.clone(),
        parent_ref: ParentReference {
            group: Some(GATEWAY_GROUP.to_owned()),
            kind: Some(if set.is_some() { "ListenerSet" } else { "Gateway" }.to_owned()),
            name: parent.name.clone(),
            namespace: Some(set.map_or(&gw.key.namespace, |s| &s.namespace).clone()),
            port: parent.port,
            section_name: parent.section_name.clone(),
        },
    }
}

/// A route's rules as they serve one Gateway: with the gate of the route's
/// annotations over the Gateway's (its default), so a route on two Gateways
/// may get two variants.
fn gated_rules(compiled: &CompiledRoute, route: &GateAnnotations, gateway: &GateAnnotations) -> Vec<Arc<Rule>> {
    let gate = scale_to_zero::effective(route, gateway);
    compiled
        .rules
        .iter()
        .map(|(rule, _)| match &gate {
            None => rule.clone(),
            Some(_) => Arc::new(Rule { gate: gate.clone(), ..(**rule).clone() }),
        })
        .collect()
}

/// Adds a route's `rules` (in the order of `compiled.rules`) to a listener's
/// route table, under each hostname the route and the listener share.
fn insert_routes(listener: &mut ListenerModel<'_>, key: &ObjectRef, compiled: &CompiledRoute, rules: &[Arc<Rule>]) {
    listener.attached_routes += 1;
    for hostname in effective_hostnames(listener.hostname.as_ref(), &compiled.hostnames) {
        for ((_, matches), rule) in compiled.rules.iter().zip(rules) {
            for (match_index, m) in matches.iter().enumerate() {
                let origin = MatchOrigin {
                    route_created: compiled.created,
                    route_namespace: key.namespace.clone(),
                    route_name: key.name.clone(),
                    rule_index: rule.index,
                    match_index,
                };
                listener
                    .routes
                    .insert(hostname.as_ref(), RouteEntry { matcher: m.clone(), origin, rule: rule.clone() });
            }
        }
    }
}

/// The effective hostnames of a route on a listener (`None`: any host).
fn effective_hostnames(listener: Option<&Hostname>, route: &[Hostname]) -> Vec<Option<Hostname>> {
    if route.is_empty() {
        return vec![listener.cloned()];
    }
    let mut out: Vec<_> = route.iter().filter_map(|h| Hostname::intersect(listener, h)).map(Some).collect();
    out.sort();
    out.dedup();
    out
}

/// Decides which listeners of one Gateway a parentRef attaches the route to,
/// or why it cannot attach (an Accepted=False reason and message).
fn attach(
    world: &World,
    (gw, set): (&GatewayModel<'_>, Option<&ObjectRef>),
    (kind, route): (RouteKind, &ObjectRef),
    compiled: &CompiledRoute,
    parent: &api::ParentRef,
) -> Result<Vec<usize>, Problem> {
    if let Err(why) = &gw.accepted {
        let message = format!("Gateway {} is not accepted: {}", gw.key, why.message);
        return Err(Problem::new(Reason::GatewayNotAccepted, message));
    }
    let parent_name = match set {
        None => format!("Gateway {}", gw.key),
        Some(set) => format!("ListenerSet {set}"),
    };
    if let Some(set) = set.and_then(|s| gw.listener_sets.iter().find(|m| m.key == *s))
        && !set.attached(gw)
    {
        let why = set.not_allowed.as_ref().map_or("none of its listeners is valid", |p| p.message.as_str());
        return Err(Problem::new(Reason::NoMatchingParent, format!("{parent_name} is not attached: {why}")));
    }
    let selected: Vec<usize> = gw
        .listeners
        .iter()
        .enumerate()
        // A Gateway parentRef selects the Gateway's own listeners; a
        // ListenerSet parentRef, that ListenerSet's.
        .filter(|(_, l)| l.set.as_ref() == set)
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.spec.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.spec.port))
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        let mut what = Vec::new();
        if let Some(s) = &parent.section_name {
            what.push(format!("sectionName {s}"));
        }
        if let Some(p) = parent.port {
            what.push(format!("port {p}"));
        }
        return Err(Problem::new(
            Reason::NoMatchingParent,
            format!("{parent_name} has no listener with {}", what.join(" and ")),
        ));
    }
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.route_kinds.contains(&kind) && l.allows_namespace(world, &route.namespace)
        })
        .collect();
    if allowed.is_empty() {
        return Err(Problem::new(
            Reason::NotAllowedByListeners,
            format!("no listener of {parent_name} allows {kind}s from namespace {}", route.namespace),
        ));
    }
    let matching: Vec<usize> = allowed
        .into_iter()
        .filter(|&i| {
            let l = &gw.listeners[i];
            compiled.hostnames.is_empty()
                || compiled.hostnames.iter().any(|h| Hostname::intersect(l.hostname.as_ref(), h).is_some())
        })
        .collect();
    if matching.is_empty() {
        return Err(Problem::new(
            Reason::NoMatchingListenerHostname,
            format!("no listener of {parent_name} has a hostname that matches the route's hostnames"),
        ));
    }
    if let Some(problem) = &compiled.invalid {
        return Err(problem.clone());
    }
    Ok(matching)
}

/// An HTTPRoute's rules, compiled once for every listener it attaches to.
struct CompiledRoute {
    created: Option<i64>,
    hostnames: Vec<Hostname>,
    rules: Vec<(Arc<Rule>, Vec<RequestMatch>)>,
    /// Messages for rules that answer 500 because they are invalid.
    invalid_rules: Vec<String>,
    /// Why the whole route is invalid, if it is.
    invalid: Option<Problem>,
    /// Why backendRefs cannot be used (ResolvedRefs is False).
    backend_errors: Vec<Problem>,
}

impl CompiledRoute {
    fn partially_invalid(&self) -> bool {
        self.invalid.is_none() && !self.invalid_rules.is_empty()
    }

    /// The ResolvedRefs condition: the first unresolved backendRef's reason,
    /// with every one's message.
    fn resolved_refs(&self, generation: Option<i64>) -> Condition {
        match self.backend_errors.first() {
            None => {
                condition(types::RESOLVED_REFS, true, Reason::ResolvedRefs, "all references are resolved", generation)
            }
            Some(first) => {
                let messages: Vec<&str> = self.backend_errors.iter().map(|e| e.message.as_str()).collect();
                condition(types::RESOLVED_REFS, false, first.reason, messages.join("; "), generation)
            }
        }
    }
}

fn compile_route(
    input: &RouteInput<'_>,
    resolver: &mut BackendResolver<'_>,
    client: Option<&ClientCertificate>,
) -> CompiledRoute {
    let (kind, key, route) = (input.kind, input.key, input.route.as_ref());
    let mut compiled = CompiledRoute {
        created: route.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        hostnames: Vec::new(),
        rules: Vec::new(),
        invalid_rules: Vec::new(),
        invalid: None,
        backend_errors: Vec::new(),
    };
    for h in route.spec.hostnames.iter().flatten() {
        match Hostname::parse(h) {
            Ok(h) => compiled.hostnames.push(h),
            Err(e) => compiled.invalid = Some(Problem::new(Reason::UnsupportedValue, e.to_string())),
        }
    }
    let default_rule = [api::Rule::default()];
    let rules = match route.spec.rules.as_deref() {
        None | Some([]) => &default_rule[..],
        Some(rules) => rules,
    };
    for (index, spec) in rules.iter().enumerate() {
        let compiled_matches = match input.invalid_rules.get(&index) {
            Some(why) => Err(why.clone()),
            None => compile_matches(spec.matches.as_deref()),
        };
        let mut matches = match compiled_matches {
            Ok(m) => m,
            Err(why) => {
                // A rule whose matches cannot be compiled can never match.
                compiled.invalid_rules.push(format!("rule {index} (never matches): {why}"));
                continue;
            }
        };
        if let Some(ranks) = input.grpc_ranks.as_ref().and_then(|r| r.get(index)) {
            for (m, rank) in matches.iter_mut().zip(ranks) {
                m.grpc = Some(*rank);
            }
        }
        let RuleAction { filters, timeouts, retry, action } =
            match compile_action((kind, key), spec, &matches, resolver, client, &mut compiled.backend_errors) {
                Ok(action) => action,
                Err(why) => {
                    compiled.invalid_rules.push(format!("rule {index} (answers 500): {why}"));
                    RuleAction {
                        filters: Filters::default(),
                        timeouts: Timeouts::default(),
                        retry: None,
                        action: Action::Reject(Rejection {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            reason: format!("{kind} {key} rule {index} is invalid: {why}"),
                        }),
                    }
                }
            };
        let rule = Arc::new(Rule {
            route: key.clone(),
            index,
            name: spec.name.clone(),
            filters,
            timeouts,
            retry,
            gate: None,
            action,
        });
        compiled.rules.push((rule, matches));
    }
    if compiled.invalid.is_none() && compiled.invalid_rules.len() == rules.len() {
        let message = format!("every rule is invalid: {}", compiled.invalid_rules.join("; "));
        compiled.invalid = Some(Problem::new(Reason::UnsupportedValue, message));
    }
    compiled
}

/// A rule's filters, timeouts, retry, and what it does.
struct RuleAction {
    filters: Filters,
    timeouts: Timeouts,
    retry: Option<Retry>,
    action: Action,
}

fn compile_action(
    (kind, key): (RouteKind, &ObjectRef),
    spec: &api::Rule,
    matches: &[RequestMatch],
    resolver: &mut BackendResolver<'_>,
    client: Option<&ClientCertificate>,
    backend_errors: &mut Vec<Problem>,
) -> Result<RuleAction, String> {
    let timeouts = compile_timeouts(spec.timeouts.as_ref())?;
    let retry = spec.retry.as_ref().map(compile_retry).transpose()?;
    let CompiledFilters { mut filters, redirect, mirrors } =
        compile_filters(spec.filters.as_deref().unwrap_or_default(), matches)?;
    filters.mirrors = resolve_mirrors((kind, key), mirrors, resolver, client, backend_errors);
    if let Some(redirect) = redirect {
        return Ok(RuleAction { filters, timeouts, retry: None, action: Action::Redirect(redirect) });
    }
    let refs = spec.backend_refs.as_deref().unwrap_or_default();
    let mut backends = Vec::with_capacity(refs.len());
    for r in refs {
        // backendRef filters have their own generated type with the same
        // schema as rule filters: convert through JSON to compile them once.
        let backend_filters: Vec<api::Filter> = r
            .filters
            .iter()
            .flatten()
            .map(|f| serde_json::to_value(f).and_then(serde_json::from_value))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("backendRef {} filters: {e}", r.name))?;
        let CompiledFilters { filters: backend_filters, redirect, mirrors } =
            compile_filters(&backend_filters, matches)?;
        if redirect.is_some() {
            return Err(format!("backendRef {}: RequestRedirect is not supported on a backendRef", r.name));
        }
        if backend_filters.cors.is_some() {
            return Err(format!("backendRef {}: CORS is supported on a rule's filters only", r.name));
        }
        if !mirrors.is_empty() {
            return Err(format!("backendRef {}: RequestMirror is supported on a rule, not on a backendRef", r.name));
        }
        let target = match resolver.resolve(
            &key.namespace,
            &BackendRefSpec {
                route_kind: kind,
                group: r.group.as_deref(),
                kind: r.kind.as_deref(),
                name: &r.name,
                namespace: r.namespace.as_deref(),
                port: r.port,
            },
            client,
        ) {
            Ok(backend) => BackendTarget::Service(backend),
            Err(e) => {
                let target = BackendTarget::Invalid(e.message.clone());
                backend_errors.push(e);
                target
            }
        };
        backends.push(WeightedBackend {
            weight: u32::try_from(r.weight.unwrap_or(1)).unwrap_or(0),
            target,
            filters: backend_filters,
        });
    }
    let action = match Backends::new(backends) {
        Some(backends) => Action::Forward(backends),
        None => Action::Reject(Rejection {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: if refs.is_empty() {
                format!("{kind} {key} rule has no backendRefs")
            } else {
                format!("{kind} {key} rule has no backendRef with a weight above 0")
            },
        }),
    };
    Ok(RuleAction { filters, timeouts, retry, action })
}

/// The mirrors of a rule whose backendRefs resolve; the others are dropped
/// and counted in ResolvedRefs, as the spec asks of RequestMirror: "If the
/// referent cannot be found, this BackendRef is invalid and must be dropped
/// from the Gateway. The controller must ensure the "ResolvedRefs" condition
/// on the Route status is set to `status: False` and not configure this
/// backend in the underlying implementation."
fn resolve_mirrors(
    (kind, key): (RouteKind, &ObjectRef),
    mirrors: Vec<(&api::MirrorBackendRef, Fraction)>,
    resolver: &mut BackendResolver<'_>,
    client: Option<&ClientCertificate>,
    backend_errors: &mut Vec<Problem>,
) -> Box<[Mirror]> {
    let mut out = Vec::with_capacity(mirrors.len());
    for (r, fraction) in mirrors {
        let spec = BackendRefSpec {
            route_kind: kind,
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            port: r.port,
        };
        match resolver.resolve(&key.namespace, &spec, client) {
            Ok(backend) => out.push(Mirror { backend, fraction }),
            Err(mut e) => {
                e.message = format!("RequestMirror: {}", e.message);
                backend_errors.push(e);
            }
        }
    }
    out.into_boxed_slice()
}

/// A RequestMirror's share of requests: `percent`, or `fraction`
/// (denominator 100 by default), or all.
fn mirror_fraction(m: &api::RequestMirror) -> Result<Fraction, String> {
    let (numerator, denominator) = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => return Err("RequestMirror: only one of percent and fraction may be set".into()),
        (Some(p), None) => (p, 100),
        (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
        (None, None) => return Ok(Fraction::ALL),
    };
    let fraction =
        u32::try_from(numerator).ok().zip(u32::try_from(denominator).ok()).and_then(|(n, d)| Fraction::new(n, d));
    fraction.ok_or_else(|| format!("RequestMirror: {numerator}/{denominator} is not a fraction between 0 and 1"))
}

/// A rule's or a backendRef's compiled filters, its RequestRedirect if any,
/// and its RequestMirrors' backendRefs, resolved by the caller.
struct CompiledFilters<'a> {
    filters: Filters,
    redirect: Option<Redirect>,
    mirrors: Vec<(&'a api::MirrorBackendRef, Fraction)>,
}

/// The filters of a rule or a backendRef. "Specifying the same filter
/// multiple times is not supported unless explicitly indicated" (as
/// RequestMirror is); RequestRedirect and URLRewrite exclude each other.
fn compile_filters<'a>(filters: &'a [api::Filter], matches: &[RequestMatch]) -> Result<CompiledFilters<'a>, String> {
    use api::FilterType as T;
    let mut out = Filters::default();
    let mut redirect = None;
    let mut mirrors = Vec::new();
    let once = |present: bool, name: &str| {
        if present { Err(format!("{name} may appear once per rule or backendRef")) } else { Ok(()) }
    };
    for filter in filters {
        match filter.r#type {
            T::RequestHeaderModifier => {
                let m = filter.request_header_modifier.as_ref().ok_or("RequestHeaderModifier without its settings")?;
                once(out.request_headers.is_some(), "RequestHeaderModifier")?;
                let set = m.set.as_ref().map(|v| v.iter().map(|h| (h.name.clone(), h.value.clone())).collect());
                let add = m.add.as_ref().map(|v| v.iter().map(|h| (h.name.clone(), h.value.clone())).collect());
                out.request_headers = Some(Box::new(header_modifier_pairs(set, add, &m.remove)?));
            }
            T::ResponseHeaderModifier => {
                let m =
                    filter.response_header_modifier.as_ref().ok_or("ResponseHeaderModifier without its settings")?;
                once(out.response_headers.is_some(), "ResponseHeaderModifier")?;
                let set = m.set.as_ref().map(|v| v.iter().map(|h| (h.name.clone(), h.value.clone())).collect());
                let add = m.add.as_ref().map(|v| v.iter().map(|h| (h.name.clone(), h.value.clone())).collect());
                out.response_headers = Some(Box::new(header_modifier_pairs(set, add, &m.remove)?));
            }
            T::RequestRedirect => {
                let r = filter.request_redirect.as_ref().ok_or("RequestRedirect without its settings")?;
                once(redirect.is_some(), "RequestRedirect")?;
                redirect = Some(compile_redirect(r, matches)?);
            }
            T::UrlRewrite => {
                let r = filter.url_rewrite.as_ref().ok_or("URLRewrite without its settings")?;
                once(out.rewrite.is_some(), "URLRewrite")?;
                out.rewrite = Some(Box::new(compile_rewrite(r, matches)?));
            }
            T::Cors => {
                let c = filter.cors.as_ref().ok_or("CORS without its settings")?;
                once(out.cors.is_some(), "CORS")?;
                out.cors = Some(Box::new(compile_cors(c)?));
            }
            T::RequestMirror => {
                let m = filter.request_mirror.as_ref().ok_or("RequestMirror without its settings")?;
                mirrors.push((&m.backend_ref, mirror_fraction(m)?));
            }
            ref other => {
                let name = serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_owned));
                return Err(format!("filter type {} is not supported", name.unwrap_or_default()));
            }
        }
    }
    if redirect.is_some() && out.rewrite.is_some() {
        return Err("RequestRedirect and URLRewrite cannot be used together".into());
    }
    Ok(CompiledFilters { filters: out, redirect, mirrors })
}

/// An `HTTPCORSFilter`: origins compiled to matchers, methods and header
/// names parsed; `*` only alone in a list, as the CRD validates.
fn compile_cors(c: &api::CorsFilter) -> Result<Cors, String> {
    fn allowed<T>(
        field: &str,
        values: Option<&Vec<String>>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Allowed<T>, String> {
        let values = values.map(Vec::as_slice).unwrap_or_default();
        if values.iter().any(|v| v == "*") {
            return if values.len() == 1 { Ok(Allowed::Any) } else { Err(format!("cors.{field}: '*' must be alone")) };
        }
        values
            .iter()
            .map(|v| parse(v).map_err(|e| format!("cors.{field}: {e}")))
            .collect::<Result<_, _>>()
            .map(Allowed::Only)
    }
    let header = |v: &str| HeaderName::try_from(v).map_err(|_| format!("{v:?} is not a header name"));
    let max_age = c.max_age.unwrap_or(5);
    Ok(Cors {
        allow_origins: allowed("allowOrigins", c.allow_origins.as_ref(), |v| {
            OriginPattern::parse(v).map_err(|e| e.to_string())
        })?,
        allow_methods: allowed("allowMethods", c.allow_methods.as_ref(), |v| {
            Method::from_bytes(v.as_bytes()).map_err(|_| format!("{v:?} is not an HTTP method"))
        })?,
        allow_headers: allowed("allowHeaders", c.allow_headers.as_ref(), header)?,
        expose_headers: allowed("exposeHeaders", c.expose_headers.as_ref(), header)?,
        max_age_seconds: u32::try_from(max_age).map_err(|_| format!("cors.maxAge {max_age} is negative"))?,
        allow_credentials: c.allow_credentials.unwrap_or(false),
    })
}

/// A rule's timeouts, Gateway API durations; zero means no limit.
fn compile_timeouts(t: Option<&api::Timeouts>) -> Result<Timeouts, String> {
    let parse = |field: &str, v: Option<&String>| -> Result<Option<Duration>, String> {
        let Some(v) = v else { return Ok(None) };
        let d = duration::parse(v).map_err(|e| format!("timeouts.{field} {v:?} is not a Gateway API duration: {e}"))?;
        Ok((!d.is_zero()).then_some(d))
    };
    let Some(t) = t else { return Ok(Timeouts::default()) };
    let timeouts = Timeouts {
        request: parse("request", t.request.as_ref())?,
        backend_request: parse("backendRequest", t.backend_request.as_ref())?,
    };
    // "backendRequest ... MUST be less than or equal to request."
    if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
        && backend > request
    {
        return Err(format!("timeouts.backendRequest ({backend:?}) is longer than timeouts.request ({request:?})"));
    }
    Ok(timeouts)
}

/// Retries after the first attempt when `retry.attempts` is not given
/// ("implementation-specific").
const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
/// The least wait between attempts when `retry.backoff` is not given.
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// A rule's `retry`: status codes 400 to 599 (the CRD's range), `attempts`
/// at least 1, `backoff` a Gateway API duration.
fn compile_retry(r: &api::Retry) -> Result<Retry, String> {
    let mut codes = Vec::new();
    for &code in r.codes.iter().flatten() {
        let status = u16::try_from(code)
            .ok()
            .filter(|c| (400..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("retry.codes: {code} is not a status code from 400 to 599"))?;
        if !codes.contains(&status) {
            codes.push(status);
        }
    }
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("retry.attempts {n} is not a count from 1 to {}", u32::MAX))?,
    };
    let backoff = match &r.backoff {
        None => DEFAULT_RETRY_BACKOFF,
        Some(v) => duration::parse(v).map_err(|e| format!("retry.backoff {v:?} is not a Gateway API duration: {e}"))?,
    };
    Ok(Retry { codes, attempts, backoff })
}

fn compile_matches(matches: Option<&[RouteMatch]>) -> Result<Vec<RequestMatch>, String> {
    let Some(matches) = matches.filter(|m| !m.is_empty()) else {
        return Ok(vec![RequestMatch::any()]);
    };
    matches.iter().map(compile_match).collect()
}

fn compile_match(m: &RouteMatch) -> Result<RequestMatch, String> {
    let path = match &m.path {
        None => PathMatch::Prefix(String::new()),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p.r#type.as_ref().unwrap_or(&PathMatchType::PathPrefix) {
                PathMatchType::Exact => PathMatch::Exact(absolute_path(value)?.to_owned()),
                PathMatchType::PathPrefix => PathMatch::prefix(absolute_path(value)?),
                PathMatchType::RegularExpression => {
                    PathMatch::RegularExpression(FullRegex::new(value).map_err(|e| format!("path match: {e}"))?)
                }
            }
        }
    };
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = HeaderName::try_from(h.name.as_str()).map_err(|_| format!("invalid header name {:?}", h.name))?;
        // "If multiple entries specify equivalent header names, only the
        // first entry with an equivalent name MUST be considered."
        if headers.iter().any(|existing| existing.name == name) {
            continue;
        }
        let value = match h.r#type.as_ref().unwrap_or(&HeaderMatchType::Exact) {
            HeaderMatchType::Exact => ValueMatch::Exact(h.value.clone()),
            HeaderMatchType::RegularExpression => ValueMatch::RegularExpression(
                FullRegex::new(&h.value).map_err(|e| format!("header {} match: {e}", h.name))?,
            ),
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query_params: Vec<QueryParamMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if query_params.iter().any(|existing| existing.name == q.name) {
            continue;
        }
        let value = match q.r#type.as_ref().unwrap_or(&QueryParamMatchType::Exact) {
            QueryParamMatchType::Exact => ValueMatch::Exact(q.value.clone()),
            QueryParamMatchType::RegularExpression => ValueMatch::RegularExpression(
                FullRegex::new(&q.value).map_err(|e| format!("query param {} match: {e}", q.name))?,
            ),
        };
        query_params.push(QueryParamMatch { name: q.name.clone(), value });
    }
    Ok(RequestMatch { path, method: m.method.as_ref().map(method), headers, query_params, grpc: None })
}

fn absolute_path(value: &str) -> Result<&str, String> {
    if !value.starts_with('/') || value.contains(['?', '#']) {
        return Err(format!("path {value:?} must be an absolute path without query or fragment"));
    }
    Ok(value)
}

fn method(m: &MatchMethod) -> Method {
    match m {
        MatchMethod::Get => Method::GET,
        MatchMethod::Head => Method::HEAD,
        MatchMethod::Post => Method::POST,
        MatchMethod::Put => Method::PUT,
        MatchMethod::Delete => Method::DELETE,
        MatchMethod::Connect => Method::CONNECT,
        MatchMethod::Options => Method::OPTIONS,
        MatchMethod::Trace => Method::TRACE,
        MatchMethod::Patch => Method::PATCH,
    }
}

fn header_modifier_pairs(
    set: Option<Vec<(String, String)>>,
    add: Option<Vec<(String, String)>>,
    remove: &Option<Vec<String>>,
) -> Result<HeaderModifier, String> {
    let pair = |(name, value): (String, String)| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::try_from(name.as_str()).map_err(|_| format!("invalid header name {name:?}"))?,
            HeaderValue::try_from(value.as_str()).map_err(|_| format!("invalid value for header {name}"))?,
        ))
    };
    Ok(HeaderModifier {
        set: set.into_iter().flatten().map(pair).collect::<Result<_, _>>()?,
        add: add.into_iter().flatten().map(pair).collect::<Result<_, _>>()?,
        remove: remove
            .iter()
            .flatten()
            .map(|n| HeaderName::try_from(n.as_str()).map_err(|_| format!("invalid header name {n:?}")))
            .collect::<Result<_, _>>()?,
    })
}

/// The PathPrefix of a rule's single match, which ReplacePrefixMatch needs
/// ("exactly one PathPrefix match must be specified").
fn single_prefix(matches: &[RequestMatch]) -> Result<String, String> {
    match matches {
        [RequestMatch { path: PathMatch::Prefix(prefix), .. }] => Ok(prefix.clone()),
        _ => Err("ReplacePrefixMatch needs exactly one PathPrefix match in the rule".into()),
    }
}

fn compile_rewrite(r: &api::UrlRewrite, matches: &[RequestMatch]) -> Result<UrlRewrite, String> {
    let hostname = match r.hostname.as_deref() {
        None => None,
        Some(h) => match Hostname::parse(h) {
            Ok(Hostname::Exact(h)) => Some(HeaderValue::try_from(h).map_err(|e| e.to_string())?),
            _ => return Err(format!("URLRewrite hostname {h:?} is not a valid hostname")),
        },
    };
    let path = match &r.path {
        None => None,
        Some(p) => Some(match p.r#type {
            api::RewritePathType::ReplaceFullPath => PathModifier::ReplaceFullPath(
                p.replace_full_path.clone().ok_or("URLRewrite path type ReplaceFullPath needs replaceFullPath")?,
            ),
            api::RewritePathType::ReplacePrefixMatch => PathModifier::ReplacePrefixMatch {
                prefix: single_prefix(matches)?,
                replacement: p
                    .replace_prefix_match
                    .clone()
                    .ok_or("URLRewrite path type ReplacePrefixMatch needs replacePrefixMatch")?,
            },
        }),
    };
    Ok(UrlRewrite { hostname, path })
}

fn compile_redirect(r: &api::RequestRedirect, matches: &[RequestMatch]) -> Result<Redirect, String> {
    let status = match r.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(code as u16).expect("valid redirect status"),
        other => return Err(format!("redirect statusCode {other} is not supported")),
    };
    let port = match r.port {
        None => None,
        Some(p) => Some(u16::try_from(p).ok().filter(|p| *p > 0).ok_or(format!("redirect port {p} is out of range"))?),
    };
    let hostname = match r.hostname.as_deref() {
        None => None,
        Some(h) => match Hostname::parse(h) {
            Ok(Hostname::Exact(h)) => Some(h),
            _ => return Err(format!("redirect hostname {h:?} is not a valid hostname")),
        },
    };
    let path = match &r.path {
        None => None,
        Some(p) => Some(match p.r#type {
            RedirectPathType::ReplaceFullPath => PathModifier::ReplaceFullPath(
                p.replace_full_path.clone().ok_or("redirect path type ReplaceFullPath needs replaceFullPath")?,
            ),
            RedirectPathType::ReplacePrefixMatch => {
                let replacement = p
                    .replace_prefix_match
                    .clone()
                    .ok_or("redirect path type ReplacePrefixMatch needs replacePrefixMatch")?;
                PathModifier::ReplacePrefixMatch { prefix: single_prefix(matches)?, replacement }
            }
        }),
    };
    Ok(Redirect {
        scheme: r.scheme.as_ref().map(|s| {
            match s {
                RedirectScheme::Http => "http",
                RedirectScheme::Https => "https",
            }
            .to_owned()
        }),
        hostname,
        port,
        path,
        status,
    })
}
