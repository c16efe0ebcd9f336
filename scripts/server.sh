# Sourced by the scripts that start a loopback test server (moto, LocalStack,
# the npm oidc-provider). The caller sets NAME, PORT and HEALTH (a URL path
# that answers once the server is up), defines `install` (idempotent, output
# on stderr) and `launch` (execs the server in the foreground), then calls
# `server start|stop`. `start` prints the base URL, reusing a server already
# answering there; `stop` stops the one `start` launched.

server() {
  local pidfile=${TMPDIR:-/tmp}/careconnect-$NAME-$PORT.pid
  local url="http://127.0.0.1:$PORT"
  up() { curl -fsS -o /dev/null "$url$HEALTH" 2>/dev/null; }
  case "${1:-start}" in
  start)
    if up; then echo "$url"; return 0; fi
    install
    # `launch` execs the server, so $! is the server's own pid; every
    # descriptor is redirected, so nothing keeps the caller's $(...) open
    # (a background job holding stdout made `x=$(... start)` wait forever).
    launch < /dev/null > "${pidfile%.pid}.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 1 600); do up && { echo "$url"; return 0; }; sleep 0.1; done
    echo "$NAME did not start; see ${pidfile%.pid}.log" >&2; return 1
    ;;
  stop)
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    ;;
  esac
}
