//! Standalone mode's source: multi-document YAML files (one file, or every
//! `*.yaml`/`*.yml`/`*.json` file under a directory) loaded into a [`World`].
//!
//! Loading is all or nothing: any error rejects the whole load, so the caller
//! keeps serving the last good world and reports every error found.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::world::{Resource, World};

/// Where a document came from: file and 1-based document index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.path.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML: {source}")]
    Yaml {
        origin: Origin,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{origin}: {message}")]
    Malformed { origin: Origin, message: String },
    #[error(
        "{origin}: unsupported kind {kind} ({api_version}); standalone mode reads GatewayClass, Gateway, HTTPRoute, ListenerSet, \
         ReferenceGrant, BackendTLSPolicy (gateway.networking.k8s.io), Service, Secret, ConfigMap, Namespace (v1) and EndpointSlice (discovery.k8s.io/v1)"
    )]
    UnsupportedKind { origin: Origin, api_version: String, kind: String },
    #[error("{origin}: {kind} {name}: unknown field {}; check the spelling", fields.join(", "))]
    UnknownFields { origin: Origin, kind: String, name: String, fields: Vec<String> },
    #[error("{origin}: {kind} {name}: {message}")]
    Rejected { origin: Origin, kind: &'static str, name: String, message: String },
    #[error("{origin}: {kind} {name}: {source}")]
    Invalid {
        origin: Origin,
        kind: String,
        name: String,
        #[source]
        source: serde_path_to_error::Error<serde_yaml_ng::Error>,
    },
    #[error("{origin}: {kind} {name} is already defined in {first}")]
    Duplicate { origin: Origin, kind: &'static str, name: String, first: Origin },
}

/// Every error of one load attempt.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Loads a file or a directory of YAML files into a world.
pub fn load(path: &Path) -> Result<World, LoadErrors> {
    let files = config_files(path).map_err(|e| LoadErrors(vec![e]))?;
    let mut loader = Loader::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.add_text(&file, &text),
            Err(source) => loader.errors.push(LoadError::Io { path: file, source }),
        }
    }
    loader.finish()
}

/// Loads YAML text as if it were one file; for tests and tools.
pub fn load_str(name: &str, text: &str) -> Result<World, LoadErrors> {
    let mut loader = Loader::default();
    loader.add_text(Path::new(name), text);
    loader.finish()
}

/// The files a config path names, in a stable order.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let p = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if entry.file_type().map_err(io)?.is_dir() {
                dirs.push(p);
            } else if is_config_file(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

pub fn is_config_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

#[derive(Default)]
struct Loader {
    world: World,
    origins: std::collections::HashMap<(&'static str, String), Origin>,
    errors: Vec<LoadError>,
}

impl Loader {
    fn add_text(&mut self, path: &Path, text: &str) {
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let origin = Origin { path: path.to_owned(), document: i + 1 };
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => self.add_value(origin, value),
                Err(source) => {
                    self.errors.push(LoadError::Yaml { origin, source });
                    // The parser cannot resynchronise after a syntax error.
                    return;
                }
            }
        }
    }

    fn add_value(&mut self, origin: Origin, value: Value) {
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            self.errors
                .push(LoadError::Malformed { origin, message: "every document needs `apiVersion` and `kind`".into() });
            return;
        };
        if kind == "List" && api_version == "v1" {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in items {
                self.add_value(origin.clone(), item);
            }
            return;
        }
        let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_owned);
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            self.errors.push(LoadError::Malformed { origin, message: format!("{kind} without `metadata.name`") });
            return;
        };
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let version = api_version.rsplit_once('/').map_or(api_version.as_str(), |(_, v)| v);
        let mut unknown = Vec::new();
        let parsed = match (group, version, kind.as_str()) {
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "GatewayClass") => {
                parse(value, &mut unknown).map(Resource::GatewayClass)
            }
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "Gateway") => {
                parse(value, &mut unknown).map(Resource::Gateway)
            }
            ("gateway.networking.k8s.io", "v1" | "v1beta1", "HTTPRoute") => {
                parse(value, &mut unknown).map(Resource::HttpRoute)
            }
            ("gateway.networking.k8s.io", "v1", "GRPCRoute") => parse(value, &mut unknown).map(Resource::GrpcRoute),
            ("gateway.networking.k8s.io", "v1", "TLSRoute") => parse(value, &mut unknown).map(Resource::TlsRoute),
            ("gateway.networking.k8s.io", "v1", "ListenerSet") => parse(value, &mut unknown).map(Resource::ListenerSet),
            ("gateway.networking.k8s.io", "v1" | "v1beta1" | "v1alpha2", "ReferenceGrant") => {
                parse(value, &mut unknown).map(Resource::ReferenceGrant)
            }
            ("", "v1", "Service") => parse(value, &mut unknown).map(Resource::Service),
            ("", "v1", "Secret") => parse(value, &mut unknown).map(Resource::Secret),
            ("", "v1", "ConfigMap") => parse(value, &mut unknown).map(Resource::ConfigMap),
            ("gateway.networking.k8s.io", "v1", "BackendTLSPolicy") => {
                parse(value, &mut unknown).map(Resource::BackendTlsPolicy)
            }
            ("", "v1", "Namespace") => parse(value, &mut unknown).map(Resource::Namespace),
            ("discovery.k8s.io", "v1", "EndpointSlice") => parse(value, &mut unknown).map(Resource::EndpointSlice),
            _ => {
                self.errors.push(LoadError::UnsupportedKind { origin, api_version, kind });
                return;
            }
        };
        let mut resource = match parsed {
            Ok(r) => r,
            Err(source) => {
                self.errors.push(LoadError::Invalid { origin, kind, name, source });
                return;
            }
        };
        // As `kubectl apply` with strict validation: a misspelt field is an
        // error, not something silently ignored.
        if !unknown.is_empty() {
            self.errors.push(LoadError::UnknownFields { origin, kind, name, fields: unknown });
            return;
        }
        if let Err(message) = validate(&resource) {
            self.errors.push(LoadError::Rejected { origin, kind: resource.kind(), name, message });
            return;
        }
        if resource.is_namespaced() {
            resource.metadata_mut().namespace.get_or_insert_with(|| "default".to_owned());
        } else {
            resource.metadata_mut().namespace = None;
        }
        let display_name = match &resource.metadata().namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };
        let kind = resource.kind();
        if !self.world.insert(resource) {
            let first = self.origins[&(kind, display_name.clone())].clone();
            self.errors.push(LoadError::Duplicate { origin, kind, name: display_name, first });
            return;
        }
        self.origins.insert((kind, display_name), origin);
    }

    fn finish(self) -> Result<World, LoadErrors> {
        if self.errors.is_empty() { Ok(self.world) } else { Err(LoadErrors(self.errors)) }
    }
}

/// Deserializes one resource, with the path of a bad field in the error and
/// every field the type does not know collected in `unknown`.
fn parse<T: serde::de::DeserializeOwned>(
    value: Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_path_to_error::Error<serde_yaml_ng::Error>> {
    let mut record = |path: serde_ignored::Path<'_>| {
        // `?` marks an Option in the path; apiVersion and kind are read
        // before the type is chosen.
        let path = path.to_string().split('.').filter(|s| *s != "?").collect::<Vec<_>>().join(".");
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut record);
    serde_path_to_error::deserialize(ignored)
}

/// Checks the API server would make (CRD validation rules) that the types
/// cannot express, where a violation makes the compiler's output ambiguous.
fn validate(resource: &Resource) -> Result<(), String> {
    if let Resource::Gateway(gw) = resource {
        let mut names = std::collections::BTreeSet::new();
        for l in &gw.spec.listeners {
            if !names.insert(l.name.as_str()) {
                return Err(format!("listener name {} is used more than once; listener names must be unique", l.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_every_kind_and_defaults_the_namespace() {
        let world = load_str(
            "t.yaml",
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: agimo}
spec: {controllerName: agimo.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: agimo
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
# an empty document is skipped
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: svc, namespace: apps}
  spec: {ports: [{port: 80}]}
"#,
        )
        .unwrap();
        assert_eq!(world.gateway_classes.len(), 1);
        let gw = world.gateways.keys().next().unwrap();
        assert_eq!(gw.to_string(), "default/gw");
        assert_eq!(world.services.keys().next().unwrap().to_string(), "apps/svc");
    }

    #[test]
    fn reports_every_error_with_its_place() {
        let err = load_str(
            "bad.yaml",
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - matches:
    - path: {type: Prefix, value: /}
---
kind: Service
---
apiVersion: v1
kind: Service
metadata: {name: s}
---
apiVersion: v1
kind: Service
metadata: {name: s}
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.yaml (document 1): unsupported kind Deployment (apps/v1)"), "{text}");
        assert!(text.contains("bad.yaml (document 2): HTTPRoute r: spec.rules[0].matches[0].path.type"), "{text}");
        assert!(text.contains("unknown variant `Prefix`"), "{text}");
        assert!(text.contains("bad.yaml (document 3): every document needs `apiVersion` and `kind`"), "{text}");
        assert!(
            text.contains("bad.yaml (document 5): Service default/s is already defined in bad.yaml (document 4)"),
            "{text}"
        );
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn misspelt_fields_and_duplicate_listener_names_are_rejected() {
        let err = load_str(
            "typo.yaml",
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRef: [{name: gw}]
  rules: [{backendRefs: [{name: s, port: 80, wieght: 1}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: agimo
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: http, port: 8080, protocol: HTTP}
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "HTTPRoute r: unknown field spec.parentRef, spec.rules.0.backendRefs.0.wieght; check the spelling"
            ),
            "{text}"
        );
        assert!(text.contains("Gateway gw: listener name http is used more than once"), "{text}");
    }

    #[test]
    fn reports_yaml_syntax_errors_with_a_line() {
        let err = load_str("broken.yaml", "apiVersion: v1\nkind: [unclosed\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("broken.yaml (document 1): invalid YAML:"), "{text}");
        assert!(text.contains("line"), "{text}");
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let err = load(Path::new("/nonexistent/agimo.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agimo.yaml: cannot read"), "{err}");
    }
}
