#!/usr/bin/env bash
# Runs Agimo in standalone mode with this example configuration, plus the two
# echo backends its routes point at (127.0.0.1:3001 and :3002).
#
#   ./config/example/run.sh            # then, in another terminal:
#   curl -H 'Host: app.example.com' localhost:8080/
#
# Ctrl-C stops everything. Edit the YAML files here while it runs: changes
# apply within a second; a broken file is reported and the last good
# configuration keeps serving.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --bin agimo --bin agimo-echo
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

./target/release/agimo-echo --name app-v1 --listen 127.0.0.1:3001 & pids+=($!)
./target/release/agimo-echo --name app-v2 --listen 127.0.0.1:3002 & pids+=($!)
./target/release/agimo standalone --config config/example \
  --bind-address 127.0.0.1 --metrics-address 127.0.0.1:9090 --admin-address 127.0.0.1:9901 \
  --keda-scaler-address 127.0.0.1:9091 "$@"
