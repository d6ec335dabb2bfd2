//! Writes the planned Gateway Services and their EndpointSlices while this
//! replica holds the Lease: applies (server-side, field manager `agimo`) each
//! one that is missing or differs from the plan in what Agimo sets, and
//! deletes the ones it manages that no Gateway wants any more (its Services
//! in any namespace, including those earlier versions kept in Agimo's own).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agimo_shared::snapshot::ObjectRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Desired, contains, endpoints, is_managed};
use crate::api::{EndpointSlice, Service};
use crate::sources::kube::Stores;

/// How often the Services are checked again without a change, to repair
/// ones someone else edited or deleted.
const RESYNC: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "agimo";

pub fn spawn(
    client: Client,
    stores: Stores,
    controller_name: String,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            if *leading.borrow_and_update() {
                let want = desired.borrow_and_update().clone();
                write_all(&client, &stores, &controller_name, &want).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = desired.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    });
}

async fn write_all(client: &Client, stores: &Stores, controller_name: &str, desired: &Desired) {
    let managed = |metadata: &kube::api::ObjectMeta| is_managed(metadata, controller_name);
    let services: BTreeMap<ObjectRef, Arc<Service>> =
        stores.services().into_iter().filter(|(_, s)| managed(&s.metadata)).collect();
    let slices: BTreeMap<ObjectRef, Arc<EndpointSlice>> =
        stores.endpoint_slices().into_iter().filter(|(_, s)| managed(&s.metadata)).collect();
    let mut wanted_slices = Vec::new();
    for (key, generated) in desired {
        let have = services.get(key);
        let uid = match have.filter(|have| up_to_date(have, &generated.service)) {
            Some(have) => have.metadata.uid.clone(),
            None => apply(client, key, &generated.service).await.and_then(|s| s.metadata.uid),
        };
        // Without the Service there is nothing for its slices to belong to.
        let Some(uid) = uid else { continue };
        for want in &generated.slices {
            let at =
                ObjectRef { namespace: key.namespace.clone(), name: want.metadata.name.clone().unwrap_or_default() };
            wanted_slices.push(at.clone());
            if slices.get(&at).is_some_and(|have| endpoints::up_to_date(have, want)) {
                continue;
            }
            // Owned by the Service: deleted with it.
            let mut want = want.clone();
            want.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: key.name.clone(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }]);
            apply(client, &at, &want).await;
        }
    }
    for key in slices.keys().filter(|k| !wanted_slices.contains(k)) {
        delete::<EndpointSlice>(client, key).await;
    }
    for key in services.keys().filter(|k| !desired.contains_key(*k)) {
        delete::<Service>(client, key).await;
    }
}

async fn apply<K>(client: &Client, key: &ObjectRef, want: &K) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&key.name, &params, &Patch::Apply(want)).await {
        Ok(written) => {
            tracing::info!(kind = %K::kind(&()), object = %key, "Gateway Service applied");
            Some(written)
        }
        Err(e) => {
            tracing::warn!(kind = %K::kind(&()), object = %key, error = %e, "cannot apply for a Gateway Service");
            None
        }
    }
}

async fn delete<K>(client: &Client, key: &ObjectRef)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    match api.delete(&key.name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(kind = %K::kind(&()), object = %key, "deleted: no Gateway wants it"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(kind = %K::kind(&()), object = %key, error = %e, "cannot delete"),
    }
}

/// Whether `have` already carries everything `want` sets (others may add
/// labels, annotations and defaults such as node ports and cluster IPs).
fn up_to_date(have: &Service, want: &Service) -> bool {
    if !contains(&have.metadata.labels, &want.metadata.labels)
        || !contains(&have.metadata.annotations, &want.metadata.annotations)
        || have.metadata.owner_references != want.metadata.owner_references
    {
        return false;
    }
    let (Some(have), Some(want)) = (&have.spec, &want.spec) else { return false };
    let ports = |spec: &k8s_openapi::api::core::v1::ServiceSpec| {
        spec.ports
            .iter()
            .flatten()
            .map(|p| {
                (p.name.clone(), p.port, p.target_port.clone(), p.protocol.clone().unwrap_or_else(|| "TCP".into()))
            })
            .collect::<Vec<_>>()
    };
    have.type_ == want.type_
        && have.selector == want.selector
        && ports(have) == ports(want)
        && have.external_ips.clone().unwrap_or_default() == want.external_ips.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_foreign_additions_do_not_count_as_differences() {
        let want = service(
            "metadata: {name: s, labels: {app.kubernetes.io/managed-by: agimo}, annotations: {agimo.dev/gateway: ns/a}}
spec: {type: LoadBalancer, selector: {app: agimo}, ports: [{name: port-80, port: 80, targetPort: 20000, protocol: TCP}]}",
        );
        let have = service(
            "metadata: {name: s, labels: {app.kubernetes.io/managed-by: agimo, team: x}, annotations: {agimo.dev/gateway: ns/a, other: y}}
spec: {type: LoadBalancer, clusterIP: 10.96.0.9, selector: {app: agimo},
  ports: [{name: port-80, port: 80, targetPort: 20000, protocol: TCP, nodePort: 31000}]}",
        );
        assert!(up_to_date(&have, &want));
        let moved = service(
            "metadata: {name: s, labels: {app.kubernetes.io/managed-by: agimo}, annotations: {agimo.dev/gateway: ns/a}}
spec: {type: LoadBalancer, selector: {app: agimo}, ports: [{name: port-80, port: 80, targetPort: 20001, protocol: TCP}]}",
        );
        assert!(!up_to_date(&moved, &want));
        let retyped = service(
            "metadata: {name: s, labels: {app.kubernetes.io/managed-by: agimo}, annotations: {agimo.dev/gateway: ns/a}}
spec: {type: ClusterIP, selector: {app: agimo}, ports: [{name: port-80, port: 80, targetPort: 20000, protocol: TCP}]}",
        );
        assert!(!up_to_date(&retyped, &want));
    }
}
