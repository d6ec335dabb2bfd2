//! TLSRoutes as HTTPRoutes: a TLSRoute's one rule forwards every connection
//! whose SNI is one of its hostnames; as an HTTPRoute rule without matches,
//! it attaches, resolves its backendRefs and gets its statuses as HTTPRoutes
//! do, and the dataplane looks it up by SNI ([`agimo_shared::snapshot`]).

use serde_json::{Value, json};

use crate::api::{HttpRoute, TlsRoute};

pub fn as_http_route(route: &TlsRoute) -> Result<HttpRoute, String> {
    let mut value = serde_json::to_value(route).map_err(|e| e.to_string())?;
    value["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    value["kind"] = json!("HTTPRoute");
    value["status"] = Value::Null;
    // Nothing of a TLSRoute rule but its name and backendRefs carries over.
    if let Some(rules) = value["spec"]["rules"].as_array_mut() {
        for rule in rules.iter_mut() {
            if let Some(rule) = rule.as_object_mut() {
                rule.retain(|k, _| k == "name" || k == "backendRefs");
            }
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_parents_and_backends_carry_over() {
        let tls: TlsRoute = serde_yaml_ng::from_str(
            "apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: r, namespace: ns, generation: 2}
spec:
  hostnames: [abc.example.com]
  parentRefs: [{name: gw, sectionName: tls}]
  rules: [{name: one, backendRefs: [{name: tls-backend, port: 443, weight: 2}]}]",
        )
        .unwrap();
        let route = as_http_route(&tls).unwrap();
        assert_eq!(route.spec.hostnames.as_deref(), Some(&["abc.example.com".to_owned()][..]));
        assert_eq!(route.spec.parent_refs.as_ref().unwrap()[0].section_name.as_deref(), Some("tls"));
        let rule = &route.spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.name.as_deref(), Some("one"));
        assert!(rule.matches.is_none(), "every connection of the hostnames");
        let backend = &rule.backend_refs.as_ref().unwrap()[0];
        assert_eq!((backend.name.as_str(), backend.port, backend.weight), ("tls-backend", Some(443), Some(2)));
        assert_eq!(route.metadata.generation, Some(2));
    }
}
