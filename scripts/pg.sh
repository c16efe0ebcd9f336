#!/usr/bin/env bash
# PostgreSQL for the tests. `scripts/pg.sh start` prints a URL on stdout:
#  - the machine's server on 127.0.0.1:5432 (database `test`) if one answers;
#  - else a throwaway server on 127.0.0.1:${PGPORT:-54329}, data in /tmp, started
#    as the `postgres` OS user (installing Debian's postgresql if needed).
# `scripts/pg.sh stop` stops the throwaway one (never the machine's).
# CARECONNECT_PG_THROWAWAY=1 skips the machine's server (to test this path).
set -euo pipefail
PORT=${PGPORT:-54329}
DIR=${PGDIR:-${TMPDIR:-/tmp}/careconnect-pg-$PORT}
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo

case "${1:-start}" in
start)
  if [ -z "${CARECONNECT_PG_THROWAWAY:-}" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 \
     && psql -h 127.0.0.1 -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; then
    echo "postgres://postgres@127.0.0.1:5432/test"; exit 0
  fi
  if pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"; exit 0
  fi
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    echo "installing postgresql (Debian package)" >&2
    $sudo_ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q postgresql >/dev/null
  fi
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  rm -rf "$DIR"; mkdir -p "$DIR"; $sudo_ chown postgres:postgres "$DIR"
  $sudo_ su postgres -c "$BIN/initdb -D $DIR -U postgres -A trust -E UTF8 --no-sync" >/dev/null
  $sudo_ su postgres -c "$BIN/pg_ctl -D $DIR -l $DIR/server.log -w -o \"-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c fsync=off\" start" >/dev/null
  echo "postgres://postgres@127.0.0.1:$PORT/postgres"
  ;;
stop)
  if [ -d "$DIR" ]; then
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    $sudo_ su postgres -c "$BIN/pg_ctl -D $DIR -m fast stop" >/dev/null 2>&1 || true
    rm -rf "$DIR"
  fi
  ;;
esac
