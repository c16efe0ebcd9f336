#!/usr/bin/env bash
# An S3-compatible server (moto) on loopback for the blob tests.
# `scripts/moto.sh start` prints the endpoint URL; it reuses a server already
# answering on 127.0.0.1:${MOTO_PORT:-5555}, else starts one from the
# project's own virtualenv (created and filled with pip on first use).
# `scripts/moto.sh stop` stops the server this script started.
set -euo pipefail
PORT=${MOTO_PORT:-5555}
VENV=${CARECONNECT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/careconnect/moto-venv}
PIDFILE=${TMPDIR:-/tmp}/careconnect-moto-$PORT.pid
url="http://127.0.0.1:$PORT"
up() { curl -fsS -o /dev/null "$url/moto-api/" 2>/dev/null; }

case "${1:-start}" in
start)
  if up; then echo "$url"; exit 0; fi
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto[server] into $VENV (about a minute, once)" >&2
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
      $sudo_ apt-get install -y -q python3-venv python3-pip >/dev/null
      python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q 'moto[server]' >&2
  fi
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" > "${PIDFILE%.pid}.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 100); do up && { echo "$url"; exit 0; }; sleep 0.1; done
  echo "moto did not start; see ${PIDFILE%.pid}.log" >&2; exit 1
  ;;
stop)
  if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  ;;
esac
