//! A trigger's metadata: what a ScaledObject scales on, parsed and checked
//! at the boundary, with errors that say what to write.

use agimo_shared::snapshot::ObjectRef;
use tonic::Status;

use crate::proto::ScaledObjectRef;

/// Pending plus active requests per replica the HPA aims at, unless the
/// trigger sets `targetValue`.
pub const DEFAULT_TARGET_VALUE: f64 = 100.0;

/// The trigger metadata keys KEDA itself reads for external scalers: passed
/// along with ours, and ignored.
const KEDA_KEYS: [&str; 4] = ["scalerAddress", "enableTLS", "unsafeSsl", "tlsServerName"];

/// The metadata key a replica sets, to its id, when it asks a peer: answer
/// for your own requests only (the asker sums).
pub const REPLICA_ONLY: &str = "agimoReplicaOnly";

/// What a trigger scales on.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Route(ObjectRef),
    Host(String),
}

/// A trigger's metadata, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub target: Target,
    pub target_value: f64,
    /// Asked by the peer replica with this id: this replica's load only.
    pub asked_by: Option<String>,
}

impl Trigger {
    /// Reads the metadata of the ScaledObject `so`.
    pub fn parse(so: &ScaledObjectRef) -> Result<Trigger, Status> {
        let invalid =
            |message: String| Status::invalid_argument(format!("ScaledObject {}/{}: {message}", so.namespace, so.name));
        let meta = &so.scaler_metadata;
        if let Some(key) = meta.keys().find(|k| {
            !matches!(k.as_str(), "httpRoute" | "host" | "targetValue" | REPLICA_ONLY)
                && !KEDA_KEYS.contains(&k.as_str())
        }) {
            return Err(invalid(format!("unknown metadata key {key:?}: Agimo reads httpRoute, host and targetValue")));
        }
        let target = match (meta.get("httpRoute").map(|s| s.trim()), meta.get("host").map(|s| s.trim())) {
            (Some(_), Some(_)) => return Err(invalid("set one of httpRoute and host, not both".into())),
            (None, None) => {
                return Err(invalid(
                    "metadata needs httpRoute (<namespace>/<name> of an HTTPRoute) or host (a hostname of one)".into(),
                ));
            }
            (Some(route), None) => {
                let (namespace, name) = match route.split_once('/') {
                    Some((namespace, name)) => (namespace, name),
                    None => (so.namespace.as_str(), route),
                };
                if namespace.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(invalid(format!("httpRoute {route:?}: expected <namespace>/<name> or <name>")));
                }
                Target::Route(ObjectRef { namespace: namespace.into(), name: name.into() })
            }
            (None, Some(host)) => {
                if host.is_empty() {
                    return Err(invalid("host is empty".into()));
                }
                Target::Host(host.to_ascii_lowercase())
            }
        };
        let target_value = match meta.get("targetValue") {
            None => DEFAULT_TARGET_VALUE,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n > 0.0 => n,
                _ => return Err(invalid(format!("targetValue {v:?}: expected a number above 0"))),
            },
        };
        Ok(Trigger { target, target_value, asked_by: meta.get(REPLICA_ONLY).cloned() })
    }

    /// The metric's name in KEDA and the HPA (KEDA prefixes `s<index>-`).
    pub fn metric_name(&self) -> String {
        let raw = match &self.target {
            Target::Route(r) => format!("agimo-httproute-{}-{}", r.namespace, r.name),
            Target::Host(h) => format!("agimo-host-{h}"),
        };
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn so(meta: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "app".into(),
            namespace: "shop".into(),
            scaler_metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn route(namespace: &str, name: &str) -> Target {
        Target::Route(ObjectRef { namespace: namespace.into(), name: name.into() })
    }

    #[test]
    fn routes_default_to_the_scaled_objects_namespace() {
        let t = Trigger::parse(&so(&[("httpRoute", "web"), ("scalerAddress", "agimo-keda.agimo:9091")])).unwrap();
        assert_eq!(t, Trigger { target: route("shop", "web"), target_value: DEFAULT_TARGET_VALUE, asked_by: None });
        let t = Trigger::parse(&so(&[("httpRoute", "other/web"), ("targetValue", "2.5")])).unwrap();
        assert_eq!(t, Trigger { target: route("other", "web"), target_value: 2.5, asked_by: None });
        let t = Trigger::parse(&so(&[("host", "App.Example.com")])).unwrap();
        assert_eq!(t.target, Target::Host("app.example.com".into()));
        let t = Trigger::parse(&so(&[("host", "a.example"), (REPLICA_ONLY, "7f3a")])).unwrap();
        assert_eq!(t.asked_by.as_deref(), Some("7f3a"), "a peer's question");
    }

    #[test]
    fn bad_metadata_says_what_to_write() {
        let message = |meta: &[(&str, &str)]| {
            let status = Trigger::parse(&so(meta)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            status.message().to_owned()
        };
        assert!(message(&[]).contains("needs httpRoute"), "{}", message(&[]));
        assert!(message(&[("httpRoute", "a"), ("host", "b")]).contains("not both"));
        assert!(message(&[("httpRoute", "a/b/c")]).contains("expected <namespace>/<name>"));
        assert!(message(&[("httpRoute", "/b")]).contains("expected <namespace>/<name>"));
        assert!(message(&[("httproute", "a")]).contains(r#"unknown metadata key "httproute""#));
        assert!(message(&[("host", "a"), ("targetValue", "0")]).contains("above 0"));
        assert!(message(&[("host", "a"), ("targetValue", "many")]).starts_with("ScaledObject shop/app: targetValue"));
    }

    #[test]
    fn metric_names_are_lowercase_words_and_dashes() {
        let t = Trigger { target: route("shop", "web.v2"), target_value: 1.0, asked_by: None };
        assert_eq!(t.metric_name(), "agimo-httproute-shop-web-v2");
        let t = Trigger { target: Target::Host("*.example.com".into()), target_value: 1.0, asked_by: None };
        assert_eq!(t.metric_name(), "agimo-host---example-com");
    }
}
