//! The compiler: a pure function from the whole [`World`] (and what the
//! previous compile carried over) to a routing [`Snapshot`], the [`Statuses`]
//! the Gateway API asks us to publish, and what to carry over to the next.
//!
//! ```text
//! World ─► gatewayclasses (ours, Accepted?)
//!       ─► listenersets (by Gateway, in order of precedence; allowedListeners)
//!       ─► gateways   ─► listeners (protocol, hostname, allowedRoutes, TLS, conflicts),
//!                        their own, then their ListenerSets'
//!       ─► httproutes ─► rules (matches, filters, backendRefs ─► Services/EndpointSlices)
//!                     ─► attachment to listeners (parentRefs, allowedRoutes, hostnames)
//!       ─► Snapshot (binds ─► listeners ─► route tables) + Statuses (ListenerSets' too)
//! Carryover ─► scale-to-zero annotations (last good values) ─► Carryover
//! ```
//!
//! Nothing here reads a clock, the network or the file system: the same world
//! and [`Carryover`] always compile to the same snapshot, statuses and
//! carryover.

mod backend_tls;
mod backends;
mod compiled;
mod conditions;
mod duration;
mod gateways;
mod grants;
mod grpc;
mod kinds;
mod listener_sets;
mod routes;
mod scale_to_zero;
mod tls;
mod tls_routes;

use crate::world::World;
use scale_to_zero::Annotations;

pub use compiled::{Carryover, Compiled, Statuses};
pub use conditions::{condition, types as condition_types};
pub use gateways::{INFRASTRUCTURE_FEATURE, SUPPORTED_FEATURES, supported_features};

/// Compiles the world into a snapshot and statuses; `previous` is what the
/// previous compile carried over.
pub fn compile(world: &World, previous: &Carryover) -> Compiled {
    let mut statuses = Statuses::default();
    let mut carryover = Carryover::default();
    let mut annotations = Annotations { previous, next: &mut carryover };
    let classes = gateways::accepted_classes(world, &mut statuses);
    let listener_sets = listener_sets::inputs(world);
    let mut gateways = gateways::build(world, &listener_sets, &classes, &mut annotations);
    gateways::resolve_bind_conflicts(&mut gateways);
    routes::attach_all(world, &mut gateways, &mut annotations, &mut statuses);
    let snapshot = gateways::into_snapshot(&mut gateways, &mut statuses);
    listener_sets::statuses(&gateways, &mut statuses);
    Compiled { snapshot, statuses, carryover }
}

#[cfg(test)]
mod tests;
