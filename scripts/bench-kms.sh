#!/usr/bin/env bash
# Documents sealed/opened per second through a KMS, with and without the
# data-key cache: AWS KMS API on moto and LocalStack (started here when not
# running, stopped after), and the embedded LocalKms. About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
started=()
cleanup() { for s in "${started[@]}"; do "scripts/$s.sh" stop; done; }
trap cleanup EXIT
curl -fsS -o /dev/null "http://127.0.0.1:${MOTO_PORT:-5555}/moto-api/" 2>/dev/null || started+=(moto)
curl -fsS -o /dev/null "http://127.0.0.1:${LOCALSTACK_PORT:-4566}/_localstack/health" 2>/dev/null || started+=(localstack)
CARECONNECT_MOTO_ENDPOINT=$(scripts/moto.sh start)
CARECONNECT_LOCALSTACK_ENDPOINT=$(scripts/localstack.sh start)
export CARECONNECT_MOTO_ENDPOINT CARECONNECT_LOCALSTACK_ENDPOINT
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
cargo bench -q --bench kms
