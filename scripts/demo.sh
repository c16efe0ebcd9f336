#!/usr/bin/env bash
# Runs the main job: today the quickstart (local KMS + keyring under ./data,
# a sealed health record and document, opened again). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
exec cargo run --release -p careconnect-quickstart -- --data-dir "${CARECONNECT_DATA_DIR:-data}" "$@"
