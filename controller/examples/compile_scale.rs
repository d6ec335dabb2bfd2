//! What one compile costs as the world grows: a Gateway with one HTTP
//! listener and N HTTPRoutes spread over namespaces, each with its own
//! hostname, two path rules and a Service with three endpoints. Prints the
//! median and the fastest of several compiles of the same world (with what
//! the previous one carried over, as the controller compiles).
//!
//! ```sh
//! cargo run --release -p agimo-controller --example compile_scale -- [--routes 5000] [--namespaces 50] [--rounds 15]
//! ```
//!
//! Profile it with `perf record -g target/release/examples/compile_scale`.

use std::time::{Duration, Instant};

use agimo_controller::sources::files;

/// The allocator of the `agimo` binary: what allocation costs there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use agimo_controller::{Carryover, World, compile};

fn world(routes: usize, namespaces: usize) -> World {
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: agimo}
spec: {controllerName: agimo.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: agimo
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners: [{name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
",
    );
    for i in 0..routes {
        let ns = format!("ns-{}", i % namespaces);
        let third = i % 250;
        yaml += &format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{i}-x, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 3000}}]
endpoints: [{{addresses: [10.1.{third}.1]}}, {{addresses: [10.1.{third}.2]}}, {{addresses: [10.1.{third}.3]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route-{i}, namespace: {ns}, generation: 1}}
spec:
  parentRefs: [{{name: gw, namespace: infra}}]
  hostnames: [app-{i}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: svc-{i}, port: 80}}]
  - backendRefs: [{{name: svc-{i}, port: 80}}]
"
        );
    }
    files::load_str("generated", &yaml).unwrap_or_else(|e| panic!("{e:?}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let (mut routes, mut namespaces, mut rounds) = (5000, 50, 15);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--routes", Some(v)) => routes = v,
            ("--namespaces", Some(v)) => namespaces = v,
            ("--rounds", Some(v)) => rounds = v,
            _ => panic!("usage: compile_scale [--routes N] [--namespaces N] [--rounds N]"),
        }
    }
    let world = world(routes, namespaces.max(1));
    let mut carryover = Carryover::default();
    let mut times = Vec::with_capacity(rounds);
    let mut served = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let compiled = compile(&world, &carryover);
        times.push(started.elapsed());
        served = compiled.snapshot.host_labels().len();
        carryover = compiled.carryover;
    }
    times.sort();
    println!(
        "routes={routes} namespaces={namespaces} host buckets served={served}: compile median {:.2} ms, fastest {:.2} ms, \
         {:.2} µs per route",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() / 2]) * 1000.0 / routes.max(1) as f64
    );
}
