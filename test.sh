#!/usr/bin/env bash
# Runs every test Agimo has: formatting, lints, unit tests, the compiler's
# golden files, and the in-process and binary tests against loopback backends.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
