//! What the compiler hands out: the statuses, and what one compile carries
//! over to the next; with the snapshot, a [`Compiled`].

use std::collections::BTreeMap;

use agimo_shared::Snapshot;
use agimo_shared::snapshot::ObjectRef;
use serde::Serialize;

use crate::api::{GatewayClassStatus, GatewayStatus, ListenerSetStatus, PolicyAncestorStatus, RouteParentStatus};

/// What the compiler says about each resource we own, in the Gateway API's
/// own status types. Routes list only the `parents` entries for our
/// controller; the status writer merges them with other controllers' entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Statuses {
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    pub gateways: BTreeMap<ObjectRef, GatewayStatus>,
    /// The ListenerSets whose parentRef is one of our Gateways.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listener_sets: BTreeMap<ObjectRef, ListenerSetStatus>,
    #[serde(rename = "httpRoutes")]
    pub http_routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
    /// As `http_routes` (a GRPCRoute's `parents` entries have the same
    /// schema).
    #[serde(rename = "grpcRoutes", skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
    /// As `http_routes`, for TLSRoutes.
    #[serde(rename = "tlsRoutes", skip_serializing_if = "BTreeMap::is_empty")]
    pub tls_routes: BTreeMap<ObjectRef, Vec<RouteParentStatus>>,
    /// Our `status.ancestors` entries of each BackendTLSPolicy (the
    /// Gateways whose routes send to a Service it targets).
    #[serde(rename = "backendTLSPolicies", skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_tls_policies: BTreeMap<ObjectRef, Vec<PolicyAncestorStatus>>,
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

    /// The value of an annotation that was in force.
    pub(super) fn last_good(&self, key: &AnnotationKey) -> Option<&String> {
        self.annotations_in_force.get(key)
    }

    /// Records the value of an annotation in force, for the next compile.
    pub(super) fn keep(&mut self, key: AnnotationKey, value: String) {
        self.annotations_in_force.insert(key, value);
    }
}

/// Which annotation of which object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AnnotationKey {
    /// `"HTTPRoute ns/name"` or `"Gateway ns/name"`.
    pub object: String,
    pub annotation: &'static str,
}

/// What a compile produces.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub statuses: Statuses,
    /// For the next compile.
    pub carryover: Carryover,
}
