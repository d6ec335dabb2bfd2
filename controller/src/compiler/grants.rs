//! ReferenceGrants and namespace label selectors.

use std::collections::BTreeMap;

use crate::api::{GATEWAY_GROUP, NamespaceSelector};
use crate::world::World;

/// Who refers: a Gateway (to a Secret) or an HTTPRoute (to a Service).
#[derive(Clone, Copy, Debug)]
pub struct From<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// What is referred to.
#[derive(Clone, Copy, Debug)]
pub struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether a reference is allowed: same-namespace references always are;
/// cross-namespace ones need a ReferenceGrant in the target namespace whose
/// `from` and `to` both admit it ("entries MUST be combined using OR").
pub fn allows(world: &World, from: From<'_>, to: To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    world.reference_grants.iter().filter(|(key, _)| key.namespace == to.namespace).any(|(_, grant)| {
        grant.spec.from.iter().any(|f| f.group == GATEWAY_GROUP && f.kind == from.kind && f.namespace == from.namespace)
            && grant
                .spec
                .to
                .iter()
                .any(|t| t.group == to.group && t.kind == to.kind && t.name.as_deref().is_none_or(|n| n == to.name))
    })
}

/// A compiled Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Clone, Debug)]
pub struct LabelSelector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Clone, Debug)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    pub fn compile(selector: &NamespaceSelector) -> Result<Self, String> {
        let mut expressions = Vec::new();
        for e in selector.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            expressions.push(match e.operator.as_str() {
                "In" if !values.is_empty() => Expression::In(e.key.clone(), values),
                "NotIn" if !values.is_empty() => Expression::NotIn(e.key.clone(), values),
                "Exists" if values.is_empty() => Expression::Exists(e.key.clone()),
                "DoesNotExist" if values.is_empty() => Expression::DoesNotExist(e.key.clone()),
                op => {
                    return Err(format!("invalid label selector expression: {} {op} {:?}", e.key, values));
                }
            });
        }
        Ok(LabelSelector { labels: selector.match_labels.clone().unwrap_or_default(), expressions })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_expressions() {
        let selector = NamespaceSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            match_expressions: Some(vec![
                serde_json::from_value(serde_json::json!({"key": "env", "operator": "In", "values": ["prod", "dev"]}))
                    .unwrap(),
                serde_json::from_value(serde_json::json!({"key": "legacy", "operator": "DoesNotExist"})).unwrap(),
            ]),
        };
        let s = LabelSelector::compile(&selector).unwrap();
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(s.matches(&labels(&[("team", "a"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "qa")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "dev"), ("legacy", "1")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
    }

    #[test]
    fn invalid_operator_is_an_error() {
        let selector = NamespaceSelector {
            match_labels: None,
            match_expressions: Some(vec![
                serde_json::from_value(serde_json::json!({"key": "env", "operator": "Like", "values": ["x"]})).unwrap(),
            ]),
        };
        assert!(LabelSelector::compile(&selector).unwrap_err().contains("Like"));
    }
}
