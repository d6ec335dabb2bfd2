#!/usr/bin/env bash
# Runs every test Agimo has: formatting, lints, unit tests, the compiler's
# golden files, in-process and binary tests against loopback backends, and
# Kubernetes mode against a real control plane (etcd, kube-apiserver and
# kube-controller-manager built from Go modules and cached in ~/.cache/agimo,
# and our node agent running pods; see conformance/local-cluster), the Helm
# chart (helm/test), and the official Gateway API conformance suite
# (conformance/run, out of the cluster and installed by the chart). A cluster
# this script starts, it stops.
set -euo pipefail
cd "$(dirname "$0")"

# jemalloc (the allocator, built from C by tikv-jemalloc-sys) needs a C
# compiler and make.
command -v make >/dev/null && command -v cc >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q make gcc >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The scripts' own tests, without a cluster or a build (seconds): every step
# of conformance/run's EXIT trap runs; bench/run leaves no policy-rc.d behind.
conformance/test-run
bench/test-run
# Hostile-client tests run slowhttptest (Debian's package) and open ten
# thousand connections.
command -v slowhttptest >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q slowhttptest >/dev/null
ulimit -n "$(ulimit -Hn)"
# h2spec (a Go module) checks the HTTP/2 listeners.
if [[ ! -x "$HOME/.cache/agimo/tools/bin/h2spec" ]]; then
  GOBIN="$HOME/.cache/agimo/tools/bin" go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible
fi
# The node agent's enter test runs a container image made of a static
# busybox (Debian's busybox-static).
[[ -x /bin/busybox ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
cargo test --workspace --locked
# Agimo's container image, from the Dockerfile, with buildah (no daemon):
# an OCI layout in ~/.cache/agimo/images/agimo, which the local cluster's node
# runs the chart's pods from.
image/build

# Build what runs inside the cluster's network namespace first: there the
# tests need no network.
cargo test --locked -p agimo-controller --features kubernetes-tests --test kubernetes --test scale_to_zero --test api_outage --no-run
cargo test --locked -p agimo-node-agent --features kubernetes-tests --test kubernetes --no-run
cargo test --locked -p agimo-load-balancer --features kubernetes-tests --test kubernetes --no-run
# The scale-to-zero test runs a real Prometheus (Debian's package).
command -v prometheus >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
if ! conformance/local-cluster status 2>/dev/null | grep -q "API server: ready"; then
  trap 'conformance/local-cluster down' EXIT
fi
conformance/local-cluster up
conformance/local-cluster exec -- \
  cargo test --locked --offline -p agimo-controller --features kubernetes-tests --test kubernetes --test scale_to_zero
# The node agent (started by `up`) runs pods: Deployments, Secret volumes, logs, restarts, deletion.
conformance/local-cluster exec -- \
  cargo test --locked --offline -p agimo-node-agent --features kubernetes-tests --test kubernetes
# The load balancer (started by `up`): addresses for Services of type
# LoadBalancer, external IPs, forwarding to ready endpoints.
conformance/local-cluster exec -- \
  cargo test --locked --offline -p agimo-load-balancer --features kubernetes-tests --test kubernetes
# The API server killed for two minutes under traffic, then started again:
# alone, since it takes the API away from everything else.
conformance/local-cluster exec -- \
  cargo test --locked --offline -p agimo-controller --features kubernetes-tests --test api_outage
# The Helm chart: lint, renders, values the schema refuses, and every render
# accepted by the API server (kubectl apply --dry-run=server).
helm/test
# The official Gateway API conformance suite (GATEWAY-HTTP), unmodified; the
# reports go to conformance/reports/: first with Agimo as a process beside the
# cluster, then installed by the chart (two replicas in pods, its RBAC and
# probes, a Service per Gateway), followed by killing the leader under traffic.
conformance/run
conformance/run --chart
