#!/usr/bin/env bash
# A bounded load test of the web demo on loopback (not part of CI): wrk over
# TLS 1.3 against the authenticated CareConnect page (session lookup, policy
# check, decrypting the record and prescriptions) and a static asset, and
# nginx serving the same stylesheet and a 2 KB file over TLS 1.3 with the
# same certificate, measured in the same run. Prints requests/s, latency
# percentiles and the ratios; fails on any error or non-2xx response.
#
#   scripts/load-web.sh                 # 20 s per run, wrk -t2 -c32
#   DURATION=60s CONNECTIONS=64 scripts/load-web.sh
#   BASELINE=/path/to/older/web-demo scripts/load-web.sh
#                                       # also that binary's CareConnect page,
#                                       # A B A B, and the ratio of the two
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18443}
ISSUER_PORT=${ISSUER_PORT:-18444}
NGINX_PORT=${NGINX_PORT:-18445}

sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
missing=()
for t in wrk nginx curl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian (once)" >&2
  $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
fi

cargo build -q --release -p careconnect-web-demo
tmp=$(mktemp -d)
demo_pids=(); nginx_started=""
cleanup() {
  for pid in "${demo_pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  [ -n "$nginx_started" ] && nginx -c "$tmp/nginx.conf" -p "$tmp" -s stop 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_demo BIN PORT ISSUER_PORT DIR: starts a demo, signs Alice in through
# the development issuer as a browser would, and leaves her cookie in $session.
start_demo() {
  local bin=$1 port=$2 issuer=$3 dir=$4
  local url="https://127.0.0.1:$port"
  mkdir -p "$dir"
  CARECONNECT_LOG=warn "$bin" --data-dir "$dir/data" \
    --listen "127.0.0.1:$port" --dev-issuer "127.0.0.1:$issuer" >"$dir/demo.log" 2>&1 &
  local pid=$!
  demo_pids+=("$pid")
  for _ in $(seq 1 300); do
    curl -sf --cacert "$dir/data/tls/ca.pem" "$url/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/demo.log" >&2; exit 1; }
    sleep 0.2
  done
  local ca="$dir/data/tls/ca.pem" jar="$dir/cookies" authorize callback code
  authorize=$(curl -sf --cacert "$ca" -c "$jar" -b "$jar" -o /dev/null -w '%{redirect_url}' "$url/login")
  callback=$(curl -sf -o /dev/null -w '%{redirect_url}' -X POST "${authorize%%\?*}" \
    --data "${authorize#*\?}&user=patient-alice")
  curl -sf --cacert "$ca" -c "$jar" -b "$jar" -o /dev/null "$callback"
  session=$(awk '$6 == "__Host-cc_session" { print $7 }' "$jar")
  [ -n "$session" ] || { echo "sign-in failed" >&2; exit 1; }
  code=$(curl -s --cacert "$ca" -o /dev/null -w '%{http_code}' -H "Cookie: __Host-cc_session=$session" "$url/careconnect")
  [ "$code" = 200 ] || { echo "CareConnect answered $code" >&2; exit 1; }
}

base="https://127.0.0.1:$PORT"
start_demo target/release/web-demo "$PORT" "$ISSUER_PORT" "$tmp"
ca="$tmp/data/tls/ca.pem"
if [ -n "${BASELINE:-}" ]; then
  mine=$session
  start_demo "$BASELINE" $((PORT + 10)) $((ISSUER_PORT + 10)) "$tmp/baseline"
  baseline_session=$session
  session=$mine
fi

# nginx alone, TLS 1.3 only, the same certificate, the same stylesheet and a 2 KB file.
mkdir -p "$tmp/www/static" "$tmp/logs"
chmod 755 "$tmp" "$tmp/www" "$tmp/www/static"  # nginx workers run unprivileged
cp examples/web-demo/static/style.css "$tmp/www/static/style.css"
head -c 2048 /dev/urandom | base64 -w 0 | head -c 2048 >"$tmp/www/static/2k.txt"
chmod 644 "$tmp/www/static/"*
workers=$(nproc)
cat >"$tmp/nginx.conf" <<EOF
worker_processes $workers;
pid $tmp/nginx.pid;
error_log $tmp/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp/body; proxy_temp_path $tmp/proxy; fastcgi_temp_path $tmp/fcgi;
  uwsgi_temp_path $tmp/uwsgi; scgi_temp_path $tmp/scgi;
  types { text/css css; text/plain txt; }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate $tmp/data/tls/server.pem;
    ssl_certificate_key $tmp/data/tls/server.key;
    root $tmp/www;
  }
}
EOF
nginx -c "$tmp/nginx.conf" -p "$tmp" && nginx_started=1
sleep 0.5

# wrk prints one summary line per run (requests/s, p50, p99, errors).
cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.2f %.2f %.2f %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, errors))
end
EOF
run() { # NAME URL [HEADER]
  local name=$1 url=$2; shift 2
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$tmp/report.lua" "$@" "$url")
  local line; line=$(grep '^RESULT' <<<"$out")
  read -r _ rps p50 p99 max errors <<<"$line"
  printf '%-34s %9s req/s   p50 %7s ms   p99 %7s ms   max %7s ms   errors %s\n' "$name" "$rps" "$p50" "$p99" "$max" "$errors"
  [ "$errors" = 0 ] || { echo "$out" >&2; echo "errors in $name" >&2; exit 1; }
  echo "$rps" >"$tmp/rps-$name"
}
tls=$(echo | openssl s_client -connect "127.0.0.1:$PORT" -CAfile "$ca" 2>/dev/null | grep -E '^(New|Protocol)' | head -2 | tr '\n' ' ')
echo "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) threads; wrk -t$THREADS -c$CONNECTIONS -d$DURATION over $tls"
run careconnect "$base/careconnect" -H "Cookie: __Host-cc_session=$session"
if [ -n "${BASELINE:-}" ]; then
  # A B A B: the baseline binary's CareConnect page beside this build's.
  run baseline-careconnect "https://127.0.0.1:$((PORT + 10))/careconnect" -H "Cookie: __Host-cc_session=$baseline_session"
  run careconnect-again "$base/careconnect" -H "Cookie: __Host-cc_session=$session"
  run baseline-again "https://127.0.0.1:$((PORT + 10))/careconnect" -H "Cookie: __Host-cc_session=$baseline_session"
  python3 - "$tmp" <<'EOF'
import sys
d = sys.argv[1]
r = lambda n: float(open(f"{d}/rps-{n}").read())
print(f"CareConnect page: this build / baseline = {(r('careconnect') + r('careconnect-again')) / (r('baseline-careconnect') + r('baseline-again')):.2f}x (A B A B)")
EOF
fi
[ -n "${HOME_TOO:-}" ] && run home-signed-in "$base/" -H "Cookie: __Host-cc_session=$session"
run demo-style.css "$base/static/style.css"
run nginx-style.css "https://127.0.0.1:$NGINX_PORT/static/style.css"
run nginx-2k.txt "https://127.0.0.1:$NGINX_PORT/static/2k.txt"
python3 - "$tmp" <<'EOF'
import sys
d = sys.argv[1]
r = {n: float(open(f"{d}/rps-{n}").read()) for n in ["careconnect", "demo-style.css", "nginx-style.css", "nginx-2k.txt"]}
print(f"static: demo / nginx (same stylesheet) = {r['demo-style.css'] / r['nginx-style.css']:.2f}x;"
      f" demo / nginx (2 KB file) = {r['demo-style.css'] / r['nginx-2k.txt']:.2f}x")
print(f"CareConnect page / nginx 2 KB file = {r['careconnect'] / r['nginx-2k.txt']:.2f}x")
EOF
