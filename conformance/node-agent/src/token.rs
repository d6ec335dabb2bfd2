//! Service account tokens for projected volumes (the `kube-api-access-…`
//! volume the API server's ServiceAccount admission adds to every pod), as
//! the kubelet gets them: a TokenRequest for the pod's ServiceAccount with
//! the projection's audience and lifetime, bound to the pod (so the token
//! stops working when the pod is deleted), requested again after 80 % of
//! its lifetime.
//!
//! ```text
//!   pod.spec.volumes[].projected.sources[].serviceAccountToken ─▶ TokenKey (audience, expirationSeconds)
//!   POST serviceaccounts/<name>/token {audiences, expirationSeconds, boundObjectRef: Pod name+uid}
//!        ─▶ Issued { token, expires } ─▶ volumes (file <path>) ─▶ refresh_in(issued, expires)
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// The API's default `expirationSeconds` of a token projection.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The longest a token is used before it is requested again (the kubelet's).
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// What makes two projected tokens of a pod the same token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey {
    /// Empty: the API server's own audiences.
    pub audience: String,
    pub expiration_seconds: i64,
}

impl TokenKey {
    pub fn of(projection: &ServiceAccountTokenProjection) -> TokenKey {
        TokenKey {
            audience: projection.audience.clone().unwrap_or_default(),
            expiration_seconds: projection.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        }
    }
}

/// Every token the pod's projected volumes need.
pub fn keys(pod: &Pod) -> BTreeSet<TokenKey> {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    volumes
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref().map(TokenKey::of))
        .collect()
}

/// A token and when it stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

/// The pod's ServiceAccount (`default` if the spec names none).
pub fn service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The TokenRequest the kubelet sends for `key`, bound to `pod`.
pub fn token_request(pod: &Pod, key: &TokenKey) -> TokenRequest {
    TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(if key.audience.is_empty() { vec![] } else { vec![key.audience.clone()] }),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    }
}

/// Requests a token for `pod`'s ServiceAccount.
pub async fn request(client: &Client, pod: &Pod, key: &TokenKey) -> Result<Issued, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = service_account(pod);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let issued = Timestamp::now();
    let answer = api
        .create_token_request(&name, &PostParams::default(), &token_request(pod, key))
        .await
        .map_err(|e| format!("cannot get a token for ServiceAccount {namespace}/{name}: {e}"))?;
    let status = answer.status.unwrap_or_default();
    let (Some(token), Some(expires)) = (status.token.filter(|t| !t.is_empty()), status.expiration_timestamp) else {
        return Err(format!("the token for ServiceAccount {namespace}/{name} came back empty"));
    };
    Ok(Issued { token, issued, expires: expires.0 })
}

/// How long a token issued at `issued` and expiring at `expires` is used
/// before it is requested again: 80 % of its lifetime, at most
/// [`MAX_REFRESH`], at least a second.
pub fn refresh_in(issued: Timestamp, expires: Timestamp) -> Duration {
    let lifetime = Duration::try_from(expires.duration_since(issued)).unwrap_or_default();
    lifetime.mul_f64(0.8).min(MAX_REFRESH).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "agimo-7d9", "namespace": "agimo-system", "uid": "0c7e-11"},
            "spec": {"serviceAccountName": "agimo", "containers": [], "volumes": [
                {"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
                {"name": "vault", "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "vault", "path": "token"}}]}}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn keys_of_every_projection() {
        let keys: Vec<TokenKey> = keys(&mk_pod()).into_iter().collect();
        assert_eq!(
            keys,
            [
                TokenKey { audience: String::new(), expiration_seconds: 3607 },
                TokenKey { audience: "vault".into(), expiration_seconds: 3600 },
            ]
        );
    }

    #[test]
    fn requests_are_bound_to_the_pod() {
        let pod = mk_pod();
        let request = token_request(&pod, &TokenKey { audience: "vault".into(), expiration_seconds: 600 });
        assert_eq!(
            serde_json::to_value(request.spec.as_ref().unwrap()).unwrap(),
            json!({"audiences": ["vault"], "expirationSeconds": 600,
                   "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "agimo-7d9", "uid": "0c7e-11"}})
        );
        let default = token_request(&pod, &TokenKey { audience: String::new(), expiration_seconds: 3607 });
        assert_eq!(default.spec.unwrap().audiences, Some(vec![]), "the API server's audiences");
        assert_eq!(service_account(&pod), "agimo");
        let bare: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert_eq!(service_account(&bare), "default");
    }

    #[test]
    fn refreshes_at_80_percent_of_the_lifetime() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(refresh_in(t("2026-01-01T00:00:00Z"), t("2026-01-01T01:00:00Z")), Duration::from_secs(2880));
        assert_eq!(refresh_in(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:10:00Z")), Duration::from_secs(480));
        // An extended token (a year): after a day at most.
        assert_eq!(refresh_in(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z")), MAX_REFRESH);
        assert_eq!(refresh_in(t("2026-01-01T00:00:00Z"), t("2025-01-01T00:00:00Z")), Duration::from_secs(1));
    }
}
