#!/usr/bin/env bash
# Runs the main job: the web demo of St John's Clinic on embedded defaults
# (SQLite, local KMS, blobs and a development certificate under ./data, the
# built-in development OpenID issuer), demo data seeded on first run.
# Idempotent; Ctrl-C stops it. Pass --config FILE for PostgreSQL, S3, AWS KMS
# and a real OpenID provider (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
exec cargo run --release -p careconnect-web-demo -- --data-dir "${CARECONNECT_DATA_DIR:-data}" "$@"
