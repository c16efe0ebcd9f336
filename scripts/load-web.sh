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
demo_pid=""; nginx_started=""
cleanup() {
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
  [ -n "$nginx_started" ] && nginx -c "$tmp/nginx.conf" -p "$tmp" -s stop 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

base="https://127.0.0.1:$PORT"
CARECONNECT_LOG=warn target/release/web-demo --data-dir "$tmp/data" \
  --listen "127.0.0.1:$PORT" --dev-issuer "127.0.0.1:$ISSUER_PORT" >"$tmp/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 300); do
  curl -sf --cacert "$tmp/data/tls/ca.pem" "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$tmp/demo.log" >&2; exit 1; }
  sleep 0.2
done
ca="$tmp/data/tls/ca.pem"

# Sign in as Alice through the development issuer, as a browser would.
jar="$tmp/cookies"
authorize=$(curl -sf --cacert "$ca" -c "$jar" -b "$jar" -o /dev/null -w '%{redirect_url}' "$base/login")
callback=$(curl -sf -o /dev/null -w '%{redirect_url}' -X POST "${authorize%%\?*}" \
  --data "${authorize#*\?}&user=patient-alice")
curl -sf --cacert "$ca" -c "$jar" -b "$jar" -o /dev/null "$callback"
session=$(awk '$6 == "__Host-cc_session" { print $7 }' "$jar")
[ -n "$session" ] || { echo "sign-in failed" >&2; exit 1; }
code=$(curl -s --cacert "$ca" -o /dev/null -w '%{http_code}' -H "Cookie: __Host-cc_session=$session" "$base/careconnect")
[ "$code" = 200 ] || { echo "CareConnect answered $code" >&2; exit 1; }

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
