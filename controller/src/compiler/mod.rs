//! The compiler: a pure function from the whole [`World`] to a routing
//! [`Snapshot`] and the [`Statuses`] the Gateway API asks us to publish.
//!
//! ```text
//! World ─► gatewayclasses (ours, Accepted?)
//!       ─► gateways   ─► listeners (protocol, hostname, allowedRoutes, TLS, conflicts)
//!       ─► httproutes ─► rules (matches, filters, backendRefs ─► Services/EndpointSlices)
//!                     ─► attachment to listeners (parentRefs, allowedRoutes, hostnames)
//!       ─► Snapshot (binds ─► listeners ─► route tables) + Statuses
//! ```
//!
//! Nothing here reads a clock, the network or the file system: the same world
//! always compiles to the same snapshot and statuses.

mod backends;
mod conditions;
mod gateways;
mod grants;
mod routes;
pub mod scale_to_zero;
mod tls;

use std::collections::BTreeMap;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::ObjectRef;
use serde::Serialize;

use crate::api::{GatewayClassStatus, GatewayStatus, RouteParentStatus};
use crate::world::World;

pub use conditions::condition;
pub use gateways::SUPPORTED_FEATURES;

/// What the compiler says about each resource we own, in the Gateway API's
/// own status types. Routes list only the `parents` entries for our
/// controller; the status writer merges them with other controllers' entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Statuses {
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    #[serde(rename = "httpRoutes")]
    pub http_routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
    /// The scale-to-zero annotation values in force (the last good one where
    /// an annotation is now invalid); the next compile reads them back from
    /// [`World::gate_annotations_in_force`].
    #[serde(skip)]
    pub gate_annotations_in_force: BTreeMap<scale_to_zero::AnnotationKey, String>,
}

/// Compiles the world into a snapshot and statuses.
pub fn compile(world: &World) -> (Snapshot, Statuses) {
    let mut statuses = Statuses::default();
    let classes = gateways::accepted_classes(world, &mut statuses);
    let mut gateways = gateways::build(world, &classes, &mut statuses.gate_annotations_in_force);
    gateways::resolve_bind_conflicts(&mut gateways);
    routes::attach_all(world, &mut gateways, &mut statuses);
    let snapshot = gateways::into_snapshot(&mut gateways, &mut statuses);
    (snapshot, statuses)
}

#[cfg(test)]
mod tests;
