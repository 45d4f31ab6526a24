#!/usr/bin/env bash
# Measures funnel's resident memory in the scenarios of bench/rss: a client
# that pipelines 1,024 reads of a 2 MiB value and never reads the replies
# (16 MiB output limit), one 400 MB SET, and four clients holding 128 MiB of
# replies against a 16 MiB --max-memory. For each it prints funnel's RSS
# when idle, its peak (VmHWM) and the peak above idle.
#
#   make build && bench/rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/funnel}
[ -x "$BIN" ] || { echo "build funnel first: make build" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/rss" ./bench/rss
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rport=$(port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --loglevel warning \
  --proto-max-bulk-len 1gb --client-output-buffer-limit "normal 0 0 0" &
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
run() { # name, funnel flags...
  local name=$1; shift
  local fport; fport=$(port)
  "$BIN" --upstream "redis://127.0.0.1:$rport" --listen "127.0.0.1:$fport" --metrics-listen '' --log-level error "$@" &
  local pid=$!
  for _ in $(seq 50); do redis-cli -p "$fport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 0.5
  local idle; idle=$(kib "$pid" VmRSS)
  "$work/rss" -addr "127.0.0.1:$fport" -scenario "$name"
  local peak; peak=$(kib "$pid" VmHWM)
  printf '%-11s idle %6d KiB  peak %7d KiB  peak above idle %7d KiB (%d MiB)\n' "$name" "$idle" "$peak" $((peak-idle)) $(((peak-idle)/1024))
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
run slowreader --client-output-limit $((16<<20))
run bigset
run global --max-memory $((16<<20)) --proto-max-bulk-len $((16<<20))
