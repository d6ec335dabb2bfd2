//! The compiler: a pure function from the whole [`World`] (and what the
//! previous compile carried over) to a routing [`Snapshot`], the [`Statuses`]
//! the Gateway API asks us to publish, and what to carry over to the next.
//!
//! ```text
//! World ─► gatewayclasses (ours, Accepted?)
//!       ─► gateways   ─► listeners (protocol, hostname, allowedRoutes, TLS, conflicts)
//!       ─► httproutes ─► rules (matches, filters, backendRefs ─► Services/EndpointSlices)
//!                     ─► attachment to listeners (parentRefs, allowedRoutes, hostnames)
//!       ─► Snapshot (binds ─► listeners ─► route tables) + Statuses
//! Carryover ─► scale-to-zero annotations (last good values) ─► Carryover
//! ```
//!
//! Nothing here reads a clock, the network or the file system: the same world
//! and [`Carryover`] always compile to the same snapshot, statuses and
//! carryover.

mod backends;
mod conditions;
mod duration;
mod gateways;
mod grants;
mod routes;
mod scale_to_zero;
mod tls;

use std::collections::BTreeMap;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::ObjectRef;
use serde::Serialize;

use crate::api::{GatewayClassStatus, GatewayStatus, RouteParentStatus};
use crate::world::World;
use scale_to_zero::{AnnotationKey, Annotations};

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
}

/// What one compile hands the next: the last good value of each
/// scale-to-zero annotation, so that a bad new value leaves it in force. The
/// first compile starts from `Carryover::default()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Carryover {
    annotations_in_force: BTreeMap<AnnotationKey, String>,
}

impl Carryover {
    /// The value of an annotation in force on an object (`"HTTPRoute ns/name"`).
    pub fn annotation_in_force(&self, object: &str, annotation: &str) -> Option<&str> {
        self.annotations_in_force
            .iter()
            .find(|(key, _)| key.object == object && key.annotation == annotation)
            .map(|(_, value)| value.as_str())
    }
}

/// What a compile produces.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub statuses: Statuses,
    /// For the next compile.
    pub carryover: Carryover,
}

/// Compiles the world into a snapshot and statuses; `previous` is what the
/// previous compile carried over.
pub fn compile(world: &World, previous: &Carryover) -> Compiled {
    let mut statuses = Statuses::default();
    let mut carryover = Carryover::default();
    let mut annotations = Annotations { previous, next: &mut carryover };
    let classes = gateways::accepted_classes(world, &mut statuses);
    let mut gateways = gateways::build(world, &classes, &mut annotations);
    gateways::resolve_bind_conflicts(&mut gateways);
    routes::attach_all(world, &mut gateways, &mut annotations, &mut statuses);
    let snapshot = gateways::into_snapshot(&mut gateways, &mut statuses);
    Compiled { snapshot, statuses, carryover }
}

#[cfg(test)]
mod tests;
