#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh clone gains nothing from incremental state, and it is large on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A server that fails to come up must fail the run, not hang it: every start
# is bounded (generous, as the first run installs packages).
start() { timeout 900 "$@"; }
# serve VAR CMD...: uses $VAR when the caller set it (a server of their own),
# otherwise starts one with CMD (which prints its address); exports and prints it.
serve() {
  local var=$1 value; shift
  value=${!var:-}
  if [ -z "$value" ]; then value=$(start "$@"); fi
  export "$var=$value"
  echo "$value"
}
step() { printf '\n==> %s  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "system tools (openssl, curl: real TLS clients for tests/tls.rs; strace: salts from the OS; cmake, go: the FIPS build of AWS-LC)"
missing=()
for t in openssl curl strace cmake; do command -v "$t" >/dev/null || missing+=("$t"); done
command -v go >/dev/null || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
fi
echo "ok"

cleanup() { scripts/pg.sh stop; scripts/moto.sh stop; scripts/localstack.sh stop; scripts/oidc-provider.sh stop; rm -rf "${tmp:-/nonexistent}"; }
trap cleanup EXIT

step "PostgreSQL for the storage conformance suite"
serve CARECONNECT_PG_URL scripts/pg.sh start

step "S3- and KMS-compatible server (moto) for the blob and AWS KMS tests"
serve CARECONNECT_S3_ENDPOINT scripts/moto.sh start
export CARECONNECT_MOTO_ENDPOINT="$CARECONNECT_S3_ENDPOINT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"

step "LocalStack's KMS (enforces key states) for the AWS KMS tests"
serve CARECONNECT_LOCALSTACK_ENDPOINT scripts/localstack.sh start

step "OpenID provider (npm oidc-provider) for the authz login tests"
serve CARECONNECT_OIDC_ISSUER scripts/oidc-provider.sh start

step "headless Chromium (Debian) + playwright-core for the HTML page tests"
serve CARECONNECT_BROWSER_DIR scripts/browser.sh

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
