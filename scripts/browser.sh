#!/usr/bin/env bash
# Headless Chromium for the HTML pages' tests: installs Debian's chromium when
# missing and playwright-core into ~/.cache/careconnect/browser (once), copies
# the test drivers there, and prints that directory.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DIR=${XDG_CACHE_HOME:-$HOME/.cache}/careconnect/browser
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
missing=()
command -v chromium >/dev/null || missing+=(chromium)
{ command -v node >/dev/null && command -v npm >/dev/null; } || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian (once)" >&2
  $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
fi
mkdir -p "$DIR"
cp "$here"/tests/browser/package.json "$here"/tests/browser/*.mjs "$DIR/"
if [ ! -d "$DIR/node_modules/playwright-core" ]; then
  echo "installing playwright-core into $DIR (once)" >&2
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
echo "$DIR"
