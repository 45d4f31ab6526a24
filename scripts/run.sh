#!/usr/bin/env bash
# Starts funnel, and exits with funnel's own exit status, so `make run`
# fails when funnel does (a port in use, a bad flag). With no upstream
# configured (--upstream, FUNNEL_UPSTREAM, REDIS_URL or a --config file) it
# first starts a throwaway redis-server on a free port, with no persistence,
# in a temporary directory, and stops it when funnel exits.
set -euo pipefail
bin=$1; shift
if [ -n "${FUNNEL_UPSTREAM:-}${REDIS_URL:-}${FUNNEL_CONFIG:-}" ] || [[ " $* " == *" --upstream"* || " $* " == *" --config"* ]]; then
  exec "$bin" "$@"
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6399)
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --daemonize no --loglevel warning &
redis_pid=$!
cleanup() { kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
up=0
for _ in $(seq 50); do
  if redis-cli -p "$port" ping >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [ "$up" -ne 1 ]; then
  echo "funnel: the throwaway redis-server on 127.0.0.1:$port did not start; set FUNNEL_UPSTREAM or REDIS_URL to use your own Redis" >&2
  exit 1
fi
echo "funnel: no upstream configured; using a throwaway redis-server on 127.0.0.1:$port (data is lost on exit). Set FUNNEL_UPSTREAM or REDIS_URL to use your own." >&2
"$bin" --upstream "redis://127.0.0.1:$port" "$@" &
funnel_pid=$!
# Ctrl-C or SIGTERM to this script stops funnel gracefully; SIGHUP is
# passed on, so it reloads funnel's configuration as it would without the
# script.
signalled=0
trap 'signalled=1; kill -TERM "$funnel_pid" 2>/dev/null || true' INT TERM
trap 'signalled=1; kill -HUP "$funnel_pid" 2>/dev/null || true' HUP
# A trapped signal ends wait early, with the signal's status rather than
# funnel's; wait again then. (wait still knows the status of a child that
# has already been reaped.)
while :; do
  signalled=0
  wait "$funnel_pid" && status=0 || status=$?
  [ "$signalled" -eq 1 ] || break
done
if [ "$status" -ne 0 ]; then
  echo "funnel exited with status $status" >&2
fi
exit "$status"
