//! GRPCRoutes as HTTPRoutes: a gRPC call is an HTTP/2 POST to
//! `/{service}/{method}`, so a GRPCRoute compiles to the HTTPRoute whose
//! path matches say what its method matches say (GEP-1016's table), with
//! each match ranked by its service and method as GRPCRoute precedence
//! requires.
//!
//! ```text
//!  method {service: S, method: M}          Exact: path = /S/M       RegularExpression: path ~ /S/M
//!  method {service: S}                     Exact: prefix /S/        RegularExpression: path ~ /S/[^/]+
//!  method {method: M}                      Exact: path ~ /[^/]+/M   RegularExpression: path ~ /[^/]+/M
//!  no method                               prefix /
//! ```
//!
//! Hostnames, parentRefs, headers matches, filters (RequestHeaderModifier,
//! ResponseHeaderModifier, RequestMirror) and backendRefs share the
//! HTTPRoute's schema and are carried over as they are.

use std::collections::BTreeMap;

use agimo_shared::matching::GrpcRank;
use serde_json::{Value, json};

use crate::api::{GrpcRoute, HttpRoute};

/// A GRPCRoute compiled to an HTTPRoute.
pub struct AsHttpRoute {
    pub route: HttpRoute,
    /// Each rule's matches' ranks, in the order of the HTTPRoute's matches
    /// (one for a rule without matches).
    pub ranks: Vec<Vec<GrpcRank>>,
    /// Rules with a match that cannot be expressed (they never match), by
    /// index, with why.
    pub invalid_rules: BTreeMap<usize, String>,
}

pub fn as_http_route(route: &GrpcRoute) -> Result<AsHttpRoute, String> {
    let mut value = serde_json::to_value(route).map_err(|e| e.to_string())?;
    value["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    value["kind"] = json!("HTTPRoute");
    value["status"] = Value::Null;
    let mut ranks = Vec::new();
    let mut invalid_rules = BTreeMap::new();
    if let Some(rules) = value["spec"]["rules"].as_array_mut() {
        for (index, rule) in rules.iter_mut().enumerate() {
            let mut rule_ranks = Vec::new();
            match rule["matches"].as_array_mut().filter(|m| !m.is_empty()) {
                None => rule_ranks.push(GrpcRank { service: 0, method: 0 }),
                Some(matches) => {
                    for m in matches.iter_mut() {
                        let method = m.as_object_mut().and_then(|o| o.remove("method"));
                        match method.as_ref().map(path_of).transpose() {
                            Ok(Some((path, rank))) => {
                                m["path"] = path;
                                rule_ranks.push(rank);
                            }
                            Ok(None) => rule_ranks.push(GrpcRank { service: 0, method: 0 }),
                            Err(why) => {
                                invalid_rules.insert(index, why);
                                rule_ranks.push(GrpcRank { service: 0, method: 0 });
                            }
                        }
                    }
                }
            }
            ranks.push(rule_ranks);
        }
    }
    let route: HttpRoute = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(AsHttpRoute { route, ranks, invalid_rules })
}

/// The HTTPRoute path match of a GRPCRoute method match, and its rank.
fn path_of(method: &Value) -> Result<(Value, GrpcRank), String> {
    let text = |key: &str| method[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let (service, name) = (text("service"), text("method"));
    let rank =
        GrpcRank { service: service.as_deref().map_or(0, str::len), method: name.as_deref().map_or(0, str::len) };
    let regex = |value: String| json!({"type": "RegularExpression", "value": value});
    let path = match method["type"].as_str().unwrap_or("Exact") {
        "Exact" => {
            for (what, value) in [("service", &service), ("method", &name)] {
                if let Some(v) = value
                    && !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                {
                    return Err(format!("method match: {what} {v:?} is not a gRPC name"));
                }
            }
            match (service, name) {
                (Some(s), Some(m)) => json!({"type": "Exact", "value": format!("/{s}/{m}")}),
                (Some(s), None) => json!({"type": "PathPrefix", "value": format!("/{s}/")}),
                (None, Some(m)) => regex(format!("/[^/]+/{m}")),
                (None, None) => return Err("method match: one of service and method must be set".to_owned()),
            }
        }
        "RegularExpression" => match (service, name) {
            (Some(s), Some(m)) => regex(format!("/{s}/{m}")),
            (Some(s), None) => regex(format!("/{s}/[^/]+")),
            (None, Some(m)) => regex(format!("/[^/]+/{m}")),
            (None, None) => json!({"type": "PathPrefix", "value": "/"}),
        },
        other => return Err(format!("method match: type {other:?} is not supported")),
    };
    Ok((path, rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(matches: &str) -> GrpcRoute {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: r, namespace: ns, generation: 3}}
spec:
  hostnames: [grpc.example]
  parentRefs: [{{name: gw}}]
  rules:
  - matches: {matches}
    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-a, value: b}}]}}}}]
    backendRefs: [{{name: svc, port: 8080, weight: 3}}]
  - backendRefs: [{{name: other, port: 8080}}]"
        ))
        .unwrap()
    }

    fn paths(r: &HttpRoute) -> Vec<String> {
        let rule = &r.spec.rules.as_ref().unwrap()[0];
        rule.matches.iter().flatten().map(|m| serde_json::to_string(&m.path).unwrap()).collect()
    }

    #[test]
    fn method_matches_become_path_matches_ranked_by_service_and_method() {
        let grpc = route(
            "[{method: {service: pkg.Svc, method: Get}, headers: [{name: version, value: two}]},
              {method: {service: pkg.Svc}}, {method: {method: Get}},
              {method: {type: RegularExpression, service: 'pkg\\..*', method: 'Get.*'}}, {headers: [{name: a, value: b}]}]",
        );
        let AsHttpRoute { route, ranks, invalid_rules } = as_http_route(&grpc).unwrap();
        assert!(invalid_rules.is_empty());
        assert_eq!(
            paths(&route),
            vec![
                r#"{"type":"Exact","value":"/pkg.Svc/Get"}"#,
                r#"{"type":"PathPrefix","value":"/pkg.Svc/"}"#,
                r#"{"type":"RegularExpression","value":"/[^/]+/Get"}"#,
                r#"{"type":"RegularExpression","value":"/pkg\\..*/Get.*"}"#,
                "null",
            ]
        );
        let rule = &route.spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.matches.as_ref().unwrap()[0].headers.as_ref().unwrap()[0].value, "two");
        let ranks0: Vec<(usize, usize)> = ranks[0].iter().map(|r| (r.service, r.method)).collect();
        assert_eq!(ranks0, vec![(7, 3), (7, 0), (0, 3), (7, 5), (0, 0)]);
        assert_eq!(ranks[1].len(), 1, "a rule without matches has one");
        // The rest carries over.
        assert_eq!(route.spec.hostnames.as_ref().unwrap(), &vec!["grpc.example".to_owned()]);
        assert_eq!(route.spec.parent_refs.as_ref().unwrap()[0].name, "gw");
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(3));
        assert!(rule.filters.as_ref().unwrap()[0].request_header_modifier.is_some());
        assert_eq!(route.metadata.generation, Some(3));
    }

    #[test]
    fn a_name_that_is_no_grpc_name_makes_its_rule_invalid() {
        let grpc = route("[{method: {service: 'a/b', method: Get}}]");
        let converted = as_http_route(&grpc).unwrap();
        assert!(converted.invalid_rules[&0].contains("not a gRPC name"), "{:?}", converted.invalid_rules);
        assert!(!converted.invalid_rules.contains_key(&1));
    }
}
