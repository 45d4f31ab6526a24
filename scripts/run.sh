#!/usr/bin/env bash
# Starts funnel. With no upstream configured (--upstream, FUNNEL_UPSTREAM or
# REDIS_URL) it first starts a throwaway redis-server on a free port, with no
# persistence, in a temporary directory, and stops it when funnel exits.
set -euo pipefail
bin=$1; shift
if [ -n "${FUNNEL_UPSTREAM:-}${REDIS_URL:-}" ] || [[ " $* " == *" --upstream"* ]]; then
  exec "$bin" "$@"
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6399)
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --daemonize no --loglevel warning &
redis_pid=$!
cleanup() { kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "funnel: no upstream configured; using a throwaway redis-server on 127.0.0.1:$port (data is lost on exit). Set FUNNEL_UPSTREAM or REDIS_URL to use your own." >&2
"$bin" --upstream "redis://127.0.0.1:$port" "$@" &
funnel_pid=$!
trap 'kill -TERM $funnel_pid 2>/dev/null || true' INT TERM
wait "$funnel_pid" || true
wait "$funnel_pid" 2>/dev/null || true
