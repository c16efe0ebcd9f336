#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
# A server that fails to come up must fail the run, not hang it: every start
# is bounded (generous, as the first run installs packages).
start() { timeout 900 "$@"; }
step() { printf '\n==> %s  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "system tools (openssl, curl: real TLS clients for tests/tls.rs)"
missing=()
for t in openssl curl; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
fi
echo "ok"

cleanup() { scripts/pg.sh stop; scripts/moto.sh stop; scripts/localstack.sh stop; scripts/oidc-provider.sh stop; rm -rf "${tmp:-/nonexistent}"; }
trap cleanup EXIT

step "PostgreSQL for the storage conformance suite"
if [ -z "${CARECONNECT_PG_URL:-}" ]; then
  CARECONNECT_PG_URL=$(start scripts/pg.sh start)
  export CARECONNECT_PG_URL
fi
echo "$CARECONNECT_PG_URL"

step "S3- and KMS-compatible server (moto) for the blob and AWS KMS tests"
if [ -z "${CARECONNECT_S3_ENDPOINT:-}" ]; then
  CARECONNECT_S3_ENDPOINT=$(start scripts/moto.sh start)
  export CARECONNECT_S3_ENDPOINT
fi
export CARECONNECT_MOTO_ENDPOINT="$CARECONNECT_S3_ENDPOINT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
echo "$CARECONNECT_S3_ENDPOINT"

step "LocalStack's KMS (enforces key states) for the AWS KMS tests"
if [ -z "${CARECONNECT_LOCALSTACK_ENDPOINT:-}" ]; then
  CARECONNECT_LOCALSTACK_ENDPOINT=$(start scripts/localstack.sh start)
  export CARECONNECT_LOCALSTACK_ENDPOINT
fi
echo "$CARECONNECT_LOCALSTACK_ENDPOINT"

step "OpenID provider (npm oidc-provider) for the authz login tests"
if [ -z "${CARECONNECT_OIDC_ISSUER:-}" ]; then
  CARECONNECT_OIDC_ISSUER=$(start scripts/oidc-provider.sh start)
  export CARECONNECT_OIDC_ISSUER
fi
echo "$CARECONNECT_OIDC_ISSUER"

step "headless Chromium (Debian) + playwright-core for the HTML page tests"
CARECONNECT_BROWSER_DIR=$(start scripts/browser.sh)
export CARECONNECT_BROWSER_DIR
echo "$CARECONNECT_BROWSER_DIR"

step "format"
cargo fmt --all --check
step "clippy (all features, all targets)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "default features compile (check: the test and quickstart steps build)"
cargo check --workspace
step "tests (all features: both crypto providers)"
cargo test --workspace --all-features
step "benches build (test profile: reuses the test build; clippy already checked them)"
cargo test --workspace --all-features --benches --no-run
step "fuzz smoke"
scripts/fuzz-smoke.sh
step "quickstart"
tmp=$(mktemp -d)
cargo run -q -p careconnect-quickstart -- --data-dir "$tmp" --document-kib 256 >/dev/null
cargo run -q -p careconnect-quickstart -- --data-dir "$tmp" --document-kib 256 | tail -1
echo; echo "all tests passed"
