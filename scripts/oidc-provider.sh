#!/usr/bin/env bash
# A certified third-party OpenID provider (npm oidc-provider) on loopback for
# the authz tests. `scripts/oidc-provider.sh start` prints the issuer URL,
# reusing one already answering on 127.0.0.1:${OIDC_PORT:-4000}; `stop` stops
# the one this script started. Installs Node.js from Debian when missing and
# the npm package into ~/.cache/careconnect/oidc-provider (once).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
NAME=oidc PORT=${OIDC_PORT:-4000} HEALTH=/.well-known/openid-configuration
DIR=${XDG_CACHE_HOME:-$HOME/.cache}/careconnect/oidc-provider

install() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    local sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q nodejs npm >/dev/null
  fi
  mkdir -p "$DIR"
  cp "$here/tests/oidc-provider/package.json" "$here/tests/oidc-provider/provider.mjs" "$DIR/"
  if [ ! -d "$DIR/node_modules/oidc-provider" ]; then
    echo "installing oidc-provider into $DIR (once)" >&2
    (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error >&2)
  fi
}
launch() { cd "$DIR" && PORT=$PORT exec node provider.mjs; }

. "$here/scripts/server.sh"
server "${1:-start}"
