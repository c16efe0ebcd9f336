# Sourced by moto.sh and localstack.sh: a loopback server from a Python
# package in the project's own virtualenv (created and filled with pip on first
# use). The caller sets NAME, PORT, HEALTH, PIP_ARGS (what to install) and
# defines `launch` (execs the server from "$VENV"), then calls
# `py_server start|stop` (see server.sh).

. "$(dirname "${BASH_SOURCE[0]}")/server.sh"

install() {
  if [ ! -f "$VENV/.installed" ]; then
    echo "installing $NAME into $VENV (a minute or two, once)" >&2
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      local sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
      $sudo_ apt-get install -y -q python3-venv python3-pip >/dev/null
      python3 -m venv "$VENV"
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q $PIP_ARGS >&2
    touch "$VENV/.installed"
  fi
}

py_server() {
  VENV=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/careconnect/$NAME-venv}
  server "$@"
}
