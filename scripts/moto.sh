#!/usr/bin/env bash
# An S3- and KMS-compatible server (moto) on loopback for the blob and AWS KMS
# tests. `scripts/moto.sh start` prints the endpoint URL (reusing a server
# already answering on 127.0.0.1:${MOTO_PORT:-5555}); `stop` stops the one this
# script started.
set -euo pipefail
NAME=moto PORT=${MOTO_PORT:-5555} HEALTH=/moto-api/ PIP_ARGS="moto[server]"
VENV=${CARECONNECT_VENV:-}
launch() { exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT"; }
. "$(dirname "$0")/py-server.sh"
py_server "${1:-start}"
