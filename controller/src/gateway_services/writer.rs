//! Writes the planned Gateway Services while this replica holds the Lease:
//! applies (server-side, field manager `agimo`) each one that is missing or
//! differs from the plan in what Agimo sets, and deletes the Services it
//! manages that no Gateway wants any more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::is_managed;
use crate::api::Service;
use crate::sources::kube::Stores;

/// How often the Services are checked again without a change, to repair
/// ones someone else edited or deleted.
const RESYNC: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "agimo";

pub fn spawn(
    client: Client,
    stores: Stores,
    namespace: String,
    controller_name: String,
    mut desired: watch::Receiver<Arc<BTreeMap<String, Service>>>,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let api: Api<Service> = Api::namespaced(client, &namespace);
        loop {
            if *leading.borrow_and_update() {
                let want = desired.borrow_and_update().clone();
                write_all(&api, &stores, (&namespace, &controller_name), &want).await;
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

/// `owner`: the namespace of the Services and the controller name they carry.
async fn write_all(api: &Api<Service>, stores: &Stores, owner: (&str, &str), desired: &BTreeMap<String, Service>) {
    let (namespace, controller_name) = owner;
    let current: BTreeMap<String, Arc<Service>> = stores
        .services()
        .into_iter()
        .filter(|(key, service)| key.namespace == namespace && is_managed(service, controller_name))
        .map(|(key, service)| (key.name, service))
        .collect();
    for (name, want) in desired {
        if current.get(name).is_some_and(|have| up_to_date(have, want)) {
            continue;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(name, &params, &Patch::Apply(want)).await {
            Ok(_) => tracing::info!(service = %format!("{namespace}/{name}"), "Gateway Service applied"),
            Err(e) => {
                tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot apply Gateway Service")
            }
        }
    }
    for name in current.keys().filter(|name| !desired.contains_key(*name)) {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(service = %format!("{namespace}/{name}"), "Gateway Service deleted: no Gateway wants it")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot delete Gateway Service")
            }
        }
    }
}

/// Whether `have` already carries everything `want` sets (others may add
/// labels, annotations and defaults such as node ports and cluster IPs).
fn up_to_date(have: &Service, want: &Service) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    if !contains(&have.metadata.labels, &want.metadata.labels)
        || !contains(&have.metadata.annotations, &want.metadata.annotations)
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
