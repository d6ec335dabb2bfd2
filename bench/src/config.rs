//! Agimo's standalone configuration for the benchmark: a Gateway with one
//! HTTP listener, the backend and echo Services with their EndpointSlices,
//! and either the basic routes or a generated table of `n` HTTPRoutes.

use std::fmt::Write;
use std::fs;
use std::path::Path;

use anyhow::Result;

use crate::peers::{BACKEND_PORT, ECHO_PORT};

/// Writes the Gateway (its listener on `port`), Services and EndpointSlices
/// into `dir` (created).
pub fn write_base(dir: &Path, port: u16) -> Result<()> {
    fs::create_dir_all(dir)?;
    let gateway = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: agimo}}
spec: {{controllerName: agimo.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: agimo
  listeners:
  - {{name: http, protocol: HTTP, port: {port}, allowedRoutes: {{namespaces: {{from: All}}}}}}
"#
    );
    fs::write(dir.join("gateway.yaml"), gateway)?;
    let mut backends = String::new();
    for (name, port) in [("backend", BACKEND_PORT), ("echo", ECHO_PORT)] {
        write!(
            backends,
            r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
---
"#
        )?;
    }
    fs::write(dir.join("backends.yaml"), backends)?;
    Ok(())
}

/// A Gateway for gRPC (cleartext HTTP/2 on `port`) and a GRPCRoute sending
/// every call to the echo backend, into `dir`.
pub fn write_grpc(dir: &Path, port: u16) -> Result<()> {
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench-grpc, namespace: default}}
spec:
  gatewayClassName: agimo
  listeners:
  - {{name: grpc, protocol: HTTP, port: {port}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench-grpc}}]
  rules:
  - matches: [{{method: {{service: bench.Echo}}}}]
    backendRefs: [{{name: echo, port: 80}}]
"#
    );
    fs::write(dir.join("grpc.yaml"), yaml)?;
    Ok(())
}

/// A Gateway with a TLS listener in mode Passthrough on `port`, and a
/// TLSRoute sending [`crate::peers::TLS_HOST`] to the backend's TLS port.
pub fn write_tls(dir: &Path, port: u16) -> Result<()> {
    let (host, backend) = (crate::peers::TLS_HOST, crate::peers::BACKEND_TLS_PORT);
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench-tls, namespace: default}}
spec:
  gatewayClassName: agimo
  listeners:
  - {{name: tls, protocol: TLS, port: {port}, tls: {{mode: Passthrough}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench-tls}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: backend-tls, port: 443}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend-tls, namespace: default}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-tls, namespace: default, labels: {{kubernetes.io/service-name: backend-tls}}}}
addressType: IPv4
ports: [{{name: tls, port: {backend}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
"#
    );
    fs::write(dir.join("tls.yaml"), yaml)?;
    Ok(())
}

/// The basic route: `/ws` and `/upload` to the echo backend, everything else to the
/// backend. `generation` goes into a response header so that each value is
/// a different snapshot (the swap test).
pub fn basic_routes(generation: u64) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /ws}}}}, {{path: {{type: Exact, value: /upload}}}}]
    backendRefs: [{{name: echo, port: 80}}]
  - backendRefs: [{{name: backend, port: 80}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-generation, value: "{generation}"}}]
"#
    )
}

/// One request that a generated route answers: host, path and headers.
pub struct Probe {
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// A table of `n` HTTPRoutes as a large cluster has them: four routes per
/// hostname, one in ten hostnames a wildcard, rules matching a path prefix,
/// a path prefix and a header, or an exact path, each route with a second
/// rule. Returns the YAML and a probe for every route.
pub fn route_table(n: usize) -> (String, Vec<Probe>) {
    let mut yaml = String::with_capacity(n * 600);
    let mut probes = Vec::with_capacity(n);
    for i in 0..n {
        let group = i / 4;
        let (hostname, host) = if group % 10 == 9 {
            (format!("\"*.w{group}.bench.example\""), format!("a{i}.w{group}.bench.example"))
        } else {
            (format!("svc-{group}.bench.example"), format!("svc-{group}.bench.example"))
        };
        let (matches, path, headers) = match i % 3 {
            0 => (format!("[{{path: {{type: PathPrefix, value: /api/v{i}}}}}]"), format!("/api/v{i}/items"), vec![]),
            1 => (
                format!("[{{path: {{type: PathPrefix, value: /r{i}}}, headers: [{{name: x-tenant, value: t{i}}}]}}]"),
                format!("/r{i}/x"),
                vec![("x-tenant".to_owned(), format!("t{i}"))],
            ),
            _ => (format!("[{{path: {{type: Exact, value: /e{i}/status}}}}]"), format!("/e{i}/status"), vec![]),
        };
        write!(
            yaml,
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [{hostname}]
  rules:
  - matches: {matches}
    backendRefs: [{{name: backend, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /static{i}}}}}]
    backendRefs: [{{name: backend, port: 80}}]
---
"#
        )
        .expect("writing to a String");
        probes.push(Probe { host, path, headers });
    }
    (yaml, probes)
}

/// A wrk script that cycles through `probes` (pre-formatted requests).
pub fn wrk_script(probes: &[&Probe]) -> String {
    let mut lua = String::from("local reqs = {}\ninit = function(args)\n");
    for p in probes {
        let mut headers = format!("[\"Host\"] = \"{}\"", p.host);
        for (k, v) in &p.headers {
            write!(headers, ", [\"{k}\"] = \"{v}\"").expect("writing to a String");
        }
        writeln!(lua, "  reqs[#reqs + 1] = wrk.format(\"GET\", \"{}\", {{{headers}}})", p.path)
            .expect("writing to a String");
    }
    lua.push_str("end\nlocal i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n");
    lua
}

/// A wrk script that uploads 1 MiB per request.
pub fn upload_script() -> String {
    format!("wrk.method = \"POST\"\nwrk.body = string.rep(\"u\", {})\n", crate::peers::LARGE)
}

/// A Service with no endpoint (a workload scaled to zero) and one
/// scale-to-zero HTTPRoute per host `held-<i>.bench`, each holding at most
/// `per_host` requests.
pub fn held_routes(hosts: usize, per_host: usize) -> String {
    let mut yaml = String::from(
        r#"apiVersion: v1
kind: Service
metadata: {name: asleep, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: asleep, namespace: default, labels: {kubernetes.io/service-name: asleep}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: []
"#,
    );
    for i in 0..hosts {
        write!(
            yaml,
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: held-{i}
  namespace: default
  annotations: {{agimo.dev/scale-to-zero: "true", agimo.dev/wait-timeout: 5m, agimo.dev/max-pending: "{per_host}"}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [held-{i}.bench]
  rules: [{{backendRefs: [{{name: asleep, port: 80}}]}}]
"#
        )
        .expect("writing to a String");
    }
    yaml
}
