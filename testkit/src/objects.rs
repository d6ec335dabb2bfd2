//! Gateway API objects as YAML, for tests that load them (standalone mode,
//! the compiler) or apply them (the local cluster): one builder instead of a
//! copy of the same text in every test.

use std::fmt::Write;

/// An HTTPRoute: `HttpRoute::new("r").hostname("app.example").backend("app").yaml()`.
/// Defaults: namespace `default`, parentRef Gateway `gw`, one rule without
/// matches; every backendRef on port 80.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    name: String,
    namespace: String,
    gateway: String,
    hostnames: Vec<String>,
    annotations: Vec<(String, String)>,
    path_prefix: Option<String>,
    backends: Vec<(String, Option<u32>)>,
}

impl HttpRoute {
    pub fn new(name: &str) -> HttpRoute {
        HttpRoute {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            gateway: "gw".to_owned(),
            hostnames: Vec::new(),
            annotations: Vec::new(),
            path_prefix: None,
            backends: Vec::new(),
        }
    }

    /// The route's namespace (written quoted, so a placeholder such as
    /// `{ns}` stays text).
    pub fn namespace(mut self, namespace: &str) -> HttpRoute {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// The Gateway of its parentRef.
    pub fn parent(mut self, gateway: &str) -> HttpRoute {
        gateway.clone_into(&mut self.gateway);
        self
    }

    pub fn hostname(mut self, hostname: &str) -> HttpRoute {
        self.hostnames.push(hostname.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> HttpRoute {
        self.annotations.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The rule matches this PathPrefix.
    pub fn path_prefix(mut self, path: &str) -> HttpRoute {
        self.path_prefix = Some(path.to_owned());
        self
    }

    /// A backendRef to Service `service`, port 80.
    pub fn backend(mut self, service: &str) -> HttpRoute {
        self.backends.push((service.to_owned(), None));
        self
    }

    /// A backendRef to Service `service`, port 80, with this weight.
    pub fn weighted(mut self, service: &str, weight: u32) -> HttpRoute {
        self.backends.push((service.to_owned(), Some(weight)));
        self
    }

    /// The route as a YAML document (starting with `---`).
    pub fn yaml(&self) -> String {
        let mut out = format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {}\n  namespace: '{}'\n",
            self.name, self.namespace
        );
        if !self.annotations.is_empty() {
            let annotations: Vec<String> = self.annotations.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
            let _ = writeln!(out, "  annotations: {{{}}}", annotations.join(", "));
        }
        let _ = writeln!(out, "spec:\n  parentRefs: [{{name: {}}}]", self.gateway);
        if !self.hostnames.is_empty() {
            let hostnames: Vec<String> = self.hostnames.iter().map(|h| format!("'{h}'")).collect();
            let _ = writeln!(out, "  hostnames: [{}]", hostnames.join(", "));
        }
        out.push_str("  rules:\n  - ");
        if let Some(path) = &self.path_prefix {
            let _ = write!(out, "matches: [{{path: {{type: PathPrefix, value: '{path}'}}}}]\n    ");
        }
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(name, weight)| match weight {
                Some(weight) => format!("{{name: {name}, port: 80, weight: {weight}}}"),
                None => format!("{{name: {name}, port: 80}}"),
            })
            .collect();
        let _ = writeln!(out, "backendRefs: [{}]", backends.join(", "));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_part_the_builder_was_given() {
        let yaml = HttpRoute::new("r")
            .namespace("{ns}")
            .parent("gw2")
            .hostname("*.example")
            .annotation("agimo.dev/scale-to-zero", "true")
            .path_prefix("/app")
            .weighted("v1", 90)
            .backend("v2")
            .yaml();
        assert_eq!(
            yaml,
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r
  namespace: '{ns}'
  annotations: {agimo.dev/scale-to-zero: 'true'}
spec:
  parentRefs: [{name: gw2}]
  hostnames: ['*.example']
  rules:
  - matches: [{path: {type: PathPrefix, value: '/app'}}]
    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 80}]
"
        );
    }
}
