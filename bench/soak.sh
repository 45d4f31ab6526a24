#!/usr/bin/env bash
# Connection soak: funnel's resident memory per client connection. Starts
# redis-server and funnel (--metrics-listen '', --max-clients 30000) on
# 127.0.0.1, raises `ulimit -n` to the hard limit, then bench/soak (Go) reads
# funnel's VmRSS and Threads (/proc/<pid>/status): before; with IDLE idle
# connections open (each sent one PING); at the peak during BUSY short
# connections (one SET soak:<i> v or GET each, 64 at a time) while the idle
# ones are held; after those closed; and 2 s after the idle ones closed. The
# table gives KiB, MiB and bytes per connection over "before" (idle phase:
# (rss_idle - rss_before) / IDLE). Exits nonzero if any connection failed.
# Bounded: the whole run is under 3 minutes.
#
#   make build && bench/soak.sh                 # IDLE=10000 BUSY=10000
#   IDLE=2000 BUSY=2000 FUNNEL=/tmp/funnel bench/soak.sh
#
# Environment: IDLE (10000), BUSY (10000), FUNNEL (bin/funnel).
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${IDLE:-10000}
BUSY=${BUSY:-10000}
FUNNEL=${FUNNEL:-bin/funnel}
for tool in redis-server redis-cli go python3 timeout; do
  command -v "$tool" >/dev/null || { echo "need $tool" >&2; exit 1; }
done
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)"
need=$((IDLE + 200))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "ulimit -n is $(ulimit -n) (hard limit); IDLE=$IDLE needs about $need" >&2
  exit 1
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh

timeout 60 go build -o "$dir/soak" ./bench/soak

redis_port=$(free_port); funnel_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pids+=($!)
"$FUNNEL" --listen "127.0.0.1:$funnel_port" --upstream "redis://127.0.0.1:$redis_port" --metrics-listen '' \
  --max-clients 30000 --log-level warn >"$dir/funnel.log" 2>&1 &
funnel_pid=$!
pids+=("$funnel_pid")
for port in "$redis_port" "$funnel_port"; do
  ok=
  for _ in $(seq 100); do timeout 2 redis-cli -p "$port" ping >/dev/null 2>&1 && { ok=1; break; }; sleep 0.05; done
  [ -n "$ok" ] || { echo "nothing answers on $port" >&2; cat "$dir"/*.log >&2 || true; exit 1; }
done
sleep 0.5

echo "$("$FUNNEL" --version 2>/dev/null | head -1 || true), ulimit -n $(ulimit -n), $(nproc) cores"
rc=0
timeout 150 "$dir/soak" -addr "127.0.0.1:$funnel_port" -pid "$funnel_pid" -idle "$IDLE" -busy "$BUSY" -conc 64 || rc=$?
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && echo "soak timed out" >&2
  echo "funnel log (last 20 lines):" >&2
  tail -20 "$dir/funnel.log" >&2 || true
fi
exit "$rc"
