#!/usr/bin/env bash
# Services the tests need: a private redis-server on a free loopback port.
#
#   source .ci/services.sh     # (what .ci/run does) exports KIE_MOCK_TEST_REDIS_URL
#   bash .ci/services.sh       # prints "export KIE_MOCK_TEST_REDIS_URL=..." for eval
#   bash .ci/services.sh stop  # stops the redis-server this script started
#
# Idempotent and fast once installed: a server this script already started for this checkout
# (and that still answers) is reused; the package is installed from Debian only when
# redis-server is missing. Each checkout has its own server (its state directory is named after
# the checkout's path; KIE_MOCK_SERVICES_DIR overrides), so two runs in two clones never share
# a database. The server keeps nothing on disk and listens on 127.0.0.1 only.

_kie_services() {
  local root tag
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tag="$(printf %s "$root" | cksum | cut -d' ' -f1)"
  local state="${KIE_MOCK_SERVICES_DIR:-${TMPDIR:-/tmp}/kie-mock-ci-services-$tag}"
  local pidfile="$state/redis.pid" portfile="$state/redis.port"
  mkdir -p "$state"

  if [ "${1:-}" = "stop" ]; then
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")"
    fi
    rm -f "$pidfile" "$portfile"
    return 0
  fi

  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services: installing redis-server (Debian package)" >&2
    if [ "$(id -u)" != 0 ]; then
      echo "services: redis-server is missing and this is not root: apt-get install redis-server" >&2
      return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi

  # Reuse the server started earlier, if it is still ours and alive.
  if [ -s "$pidfile" ] && [ -s "$portfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null \
      && redis-cli -h 127.0.0.1 -p "$(cat "$portfile")" ping 2>/dev/null | grep -q PONG; then
    export KIE_MOCK_TEST_REDIS_URL="redis://127.0.0.1:$(cat "$portfile")/0"
    return 0
  fi

  local port tries=0
  while :; do
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --save '' --appendonly no \
      --daemonize yes --pidfile "$pidfile" --logfile "$state/redis.log" --dir "$state" \
      --maxclients 1000 >/dev/null
    local i
    for i in $(seq 1 100); do
      if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        echo "$port" >"$portfile"
        export KIE_MOCK_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
        echo "services: redis-server on 127.0.0.1:$port" >&2
        return 0
      fi
      sleep 0.05
    done
    tries=$((tries + 1))
    if [ "$tries" -ge 3 ]; then
      echo "services: redis-server did not start; see $state/redis.log" >&2
      tail -n 20 "$state/redis.log" >&2 || true
      return 1
    fi
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # executed, not sourced
  set -euo pipefail
  _kie_services "$@"
  if [ "${1:-}" != "stop" ]; then
    echo "export KIE_MOCK_TEST_REDIS_URL=$KIE_MOCK_TEST_REDIS_URL"
  fi
else
  _kie_services "$@"
fi
