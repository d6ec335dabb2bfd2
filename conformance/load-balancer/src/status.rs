//! Writes `status.loadBalancer.ingress` through the status subresource.

use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::ServiceRef;

/// The field manager of our status writes.
pub const FIELD_MANAGER: &str = "agimo-load-balancer";

/// Sets the Service's `status.loadBalancer.ingress` to `ingress` (removes it
/// if empty), retrying with backoff until it is written or the Service is
/// gone. A JSON merge patch replaces the list as a whole and leaves the
/// rest of the status alone.
pub async fn write(client: Client, service: ServiceRef, ingress: Vec<LoadBalancerIngress>) -> ServiceRef {
    let api: Api<Service> = Api::namespaced(client, &service.namespace);
    let value = if ingress.is_empty() { Value::Null } else { json!(ingress) };
    let patch = json!({"status": {"loadBalancer": {"ingress": value}}});
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
    let mut backoff = Duration::from_millis(250);
    loop {
        match api.patch_status(&service.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::debug!(%service, ingress = %value, "status written");
                return service;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => return service,
            Err(e) => {
                tracing::warn!(%service, error = %e, "cannot write the status; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
