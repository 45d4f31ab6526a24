#!/usr/bin/env bash
# Runs the BullMQ workload directly against a local redis-server and through
# funnel (with --cache 'bull:*=2s' and BullMQ's getStateV2 script marked
# read-only), in both polling modes, and prints what the upstream executed
# (its INFO commandstats), scaled to commands per day.
#
#   bench/bullmq/run.sh                 # SECONDS_PER_RUN=60 TABS=10 WORKERS=2 JOBS_PER_MIN=6
set -euo pipefail
cd "$(dirname "$0")"
RUN=${SECONDS_PER_RUN:-60}
TABS=${TABS:-10}
WORKERS=${WORKERS:-2}
JOBS=${JOBS_PER_MIN:-6}
FUNNEL=${FUNNEL:-../../bin/funnel}
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

redis_port=$(free_port); funnel_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pids+=($!)
sha=$(node -e "const c=require('bullmq/dist/cjs/scripts/getStateV2-8').getStateV2; process.stdout.write(require('crypto').createHash('sha1').update(c.content).digest('hex'))")
"$FUNNEL" --listen "127.0.0.1:$funnel_port" --upstream "redis://127.0.0.1:$redis_port" --metrics-listen '' \
  --cache 'bull:*=2s' --cache-script "$sha" --log-level warn >"$dir/funnel.log" 2>&1 &
pids+=($!)
for port in "$redis_port" "$funnel_port"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

stats() { redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {sub("cmdstat_","",$1); print $1, $3}'; }

echo "BullMQ workload: $TABS tabs polling every 2 s, $WORKERS workers, $JOBS jobs/min, ${RUN}s per run; getStateV2 sha $sha"
declare -A totals
for mode in newconn shared; do
  for target in direct funnel; do
    port=$redis_port; [ "$target" = funnel ] && port=$funnel_port
    redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
    result=$(node workload.js --url "redis://127.0.0.1:$port" --seconds "$RUN" --tabs "$TABS" --workers "$WORKERS" --jobs-per-min "$JOBS" --mode "$mode" --stale-ms 2000)
    stats | grep -v '^config|resetstat ' >"$dir/$mode-$target.stats"
    total=$(awk '{s+=$2} END {print s+0}' "$dir/$mode-$target.stats")
    totals[$mode-$target]=$total
    echo
    echo "== $mode, $target: $result"
    echo "   upstream commands: $total in ${RUN}s = $(awk -v t="$total" -v r="$RUN" 'BEGIN {printf "%.0f", t/r*86400}') per day; top commands (per day):"
    sort -k2 -n -r "$dir/$mode-$target.stats" | head -12 | awk -v r="$RUN" '{printf "     %-22s %12.0f\n", $1, $2/r*86400}'
  done
done
echo
for mode in newconn shared; do
  d=${totals[$mode-direct]}; f=${totals[$mode-funnel]}
  awk -v m="$mode" -v d="$d" -v f="$f" -v r="$RUN" 'BEGIN {printf "%-8s direct %10.0f/day   funnel %10.0f/day   %.1fx fewer upstream commands\n", m, d/r*86400, f/r*86400, (f > 0 ? d/f : 0)}'
done
