//! Tests against the local cluster (`conformance/local-cluster exec -- cargo
//! test ...`): a namespace of the test's own, and server-side apply of plain
//! JSON objects of any kind (the resource is found by discovery).

use std::time::Duration;

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Client, discovery};
use serde_json::{Value, json};

use crate::wait::eventually_within;

/// A client for the cluster of `KUBECONFIG`, and a namespace `<prefix>-<pid>`
/// created for the test.
pub async fn test_namespace(prefix: &str) -> (Client, String) {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "run inside the local cluster: conformance/local-cluster exec -- cargo test ..."
    );
    let client = Client::try_default().await.expect("kubeconfig");
    let name = format!("{prefix}-{}", std::process::id());
    apply(&client, &name, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}), "agimo-tests")
        .await;
    (client, name)
}

/// The API for objects of `api_version`/`kind` (found by discovery): in
/// `namespace`, unless the kind is cluster-scoped.
pub async fn api(client: &Client, namespace: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    scoped_api(client, namespace, api_version, kind).await.0
}

async fn scoped_api(client: &Client, namespace: &str, api_version: &str, kind: &str) -> (Api<DynamicObject>, bool) {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (resource, capabilities) = discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
        .await
        .unwrap_or_else(|e| panic!("discover {kind}: {e}"));
    match capabilities.scope {
        discovery::Scope::Cluster => (Api::all_with(client.clone(), &resource), false),
        discovery::Scope::Namespaced => (Api::namespaced_with(client.clone(), namespace, &resource), true),
    }
}

/// Server-side applies `object` with field manager `manager`, in namespace
/// `namespace` unless it is cluster-scoped.
pub async fn apply(client: &Client, namespace: &str, mut object: Value, manager: &str) {
    let api_version = object["apiVersion"].as_str().expect("apiVersion").to_owned();
    let kind = object["kind"].as_str().expect("kind").to_owned();
    let name = object["metadata"]["name"].as_str().expect("metadata.name").to_owned();
    let (api, namespaced) = scoped_api(client, namespace, &api_version, &kind).await;
    if namespaced {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let object: DynamicObject = serde_json::from_value(object).expect("an object");
    api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// Deletes a namespace and waits (up to 90 s) until it is gone, its pods
/// with it.
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.delete(name, &Default::default()).await.expect("delete namespace");
    eventually_within(Duration::from_secs(90), &format!("namespace {name} deleted"), || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

/// [`eventually_within`] with the arguments in the order the node agent's
/// and the load balancer's tests use (same loop, same environment limit).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> F,
) -> T {
    eventually_within(limit, what, check).await
}
