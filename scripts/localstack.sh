#!/usr/bin/env bash
# LocalStack's KMS on loopback: a second, independent KMS API server, used
# because it enforces key states (disabled, pending deletion) where moto does
# not. `scripts/localstack.sh start` prints the endpoint URL (reusing a server
# already answering on 127.0.0.1:${LOCALSTACK_PORT:-4566}); `stop` stops the
# one this script started. Runs in the host's Python (no Docker), KMS only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
NAME=localstack PORT=${LOCALSTACK_PORT:-4566} HEALTH=/_localstack/health
PIP_ARGS="--no-deps -r $here/localstack-requirements.txt"
VENV=
launch() {
  SERVICES=kms GATEWAY_LISTEN="127.0.0.1:$PORT" DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 LOCALSTACK_TELEMETRY_DISABLED=1 \
    exec "$VENV/bin/python" -m localstack.runtime.main
}
. "$here/py-server.sh"
py_server "${1:-start}"
