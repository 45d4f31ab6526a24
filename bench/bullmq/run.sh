#!/usr/bin/env bash
# The BullMQ bill, direct and through funnel --preset bullmq, in three modes:
# newconn (every status poll opens a new connection, the app as it was),
# shared (one connection for the polls) and idle (2 workers and a
# QueueEvents listener, no jobs). Each run starts a fresh funnel and counts
# the bill two ways, scaled to a day:
#   wire    top-level commands sent upstream, as a per-command bill counts
#           them: funnel's funnel_upstream_commands, cross-checked against
#           the upstream (INFO commandstats minus the commands scripts ran,
#           which MONITOR shows as "lua" lines, and MONITOR's own count);
#   server  INFO commandstats, which counts the commands scripts run too.
# It shows where every wire command went, per command and per role, and
# exits non-zero if any run had a client error, a poll that saw a state its
# job did not have within 2 s, a job that did not complete, or a wire count
# that the upstream does not confirm.
#
#   bench/bullmq/run.sh                       # every run below
#   RUNS="newconn-funnel idle-funnel" bench/bullmq/run.sh
#   SECONDS_PER_RUN=90 IDLE_SECONDS=120 TABS=10 WORKERS=2 JOBS_PER_MIN=6 RECENT=1
#   KEEP=/tmp/bullmq bench/bullmq/run.sh      # keeps each run's MONITOR capture
#
# Runs: {newconn,shared,idle}-{direct,funnel}, and the BullMQ settings that
# cut what funnel cannot save, through funnel: newconn-skipmetas (tabs'
# queues with skipMetasUpdate), newconn-drain30 and idle-drain30 (workers
# with drainDelay 30 s), shared-tuned (both, with one shared Queue).
set -euo pipefail
cd "$(dirname "$0")"
RUN=${SECONDS_PER_RUN:-90}
IDLE=${IDLE_SECONDS:-120}
TABS=${TABS:-10}
WORKERS=${WORKERS:-2}
JOBS=${JOBS_PER_MIN:-6}
RECENT=${RECENT:-1}
RUNS=${RUNS:-newconn-direct newconn-funnel shared-direct shared-funnel idle-direct idle-funnel newconn-skipmetas newconn-drain30 idle-drain30 shared-tuned}
FUNNEL=${FUNNEL:-../../bin/funnel}
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }
command -v jq >/dev/null || { echo "run.sh needs jq (apt-get install jq)" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() { for _ in $(seq 200); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.05; done; echo "port $1 never answered" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pids+=($!)
wait_ping "$redis_port"

# commandstats: calls plus rejected calls of every command but this
# script's own (CONFIG RESETSTAT, MONITOR).
server_total() {
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ && $1 !~ /^cmdstat_(config[|]resetstat|monitor)$/ {s += $3 + $9} END {print s+0}'
}
per_day() { awk -v n="$1" -v s="$2" 'BEGIN {printf "%.0f", n/s*86400}'; }

echo "BullMQ workload: $TABS tabs polling every 2 s, $WORKERS workers, $JOBS jobs/min, ${RUN}s per run (idle ${IDLE}s)"
echo "funnel: $FUNNEL --preset bullmq"
failed=0
summary=()
for run in $RUNS; do
  mode=${run%%-*} variant=${run#*-} extra=() seconds=$RUN through=funnel
  case $variant in
    direct) through=direct ;;
    funnel) ;;
    skipmetas) extra=(--skip-metas 1) ;;
    drain30) extra=(--drain-delay 30) ;;
    tuned) extra=(--skip-metas 1 --drain-delay 30) ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  [ "$mode" = idle ] && seconds=$IDLE
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
  redis-cli -p "$redis_port" MONITOR >"$dir/monitor" &
  monitor=$!
  sleep 0.5
  port=$redis_port
  if [ "$through" = funnel ]; then
    port=$(free_port)
    # The preset and nothing else: login, pool and INFO are all on the bill.
    "$FUNNEL" --listen "127.0.0.1:$port" --upstream "redis://127.0.0.1:$redis_port" --metrics-listen '' \
      --preset bullmq --log-level warn >"$dir/funnel.log" 2>&1 &
    funnel=$!
    wait_ping "$port"
  fi
  status=0
  result=$(node workload.js --url "redis://127.0.0.1:$port" --seconds "$seconds" --tabs "$TABS" --workers "$WORKERS" \
    --jobs-per-min "$JOBS" --recent "$RECENT" --mode "$mode" --stale-ms 2000 "${extra[@]}") || status=$?
  wire=
  if [ "$through" = funnel ]; then
    wire=$(redis-cli -p "$port" INFO funnel | tr -d '\r' | awk -F: '$1 == "funnel_upstream_commands" {print $2}')
    kill "$funnel"; wait "$funnel" 2>/dev/null || true
  fi
  sleep 0.5
  kill "$monitor"; wait "$monitor" 2>/dev/null || true
  server=$(server_total)
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$dir/monitor" "$KEEP/$run.monitor"; }
  report=$(node report.js "$dir/monitor")
  top=$(jq -r .top <<<"$report") lua=$(jq -r .lua <<<"$report")
  upstream=$((server - lua))
  [ -n "$wire" ] || wire=$upstream

  echo
  echo "== $run: $result"
  echo "   wire $(per_day "$wire" "$seconds")/day ($wire in ${seconds}s); upstream confirms: commandstats - lua = $upstream, MONITOR = $top"
  echo "   server (commandstats, with what scripts ran) $(per_day "$server" "$seconds")/day ($server)"
  echo "   per role (wire/day):"
  jq -r '.perRole | to_entries | sort_by(-.value)[] | "\(.value) \(.key)"' <<<"$report" |
    while read -r n role; do printf '     %10s  %s\n' "$(per_day "$n" "$seconds")" "$role"; done
  echo "   per command (wire/day):"
  jq -r '.perCommand | to_entries | sort_by(-.value)[] | "\(.value) \(.key)"' <<<"$report" |
    while read -r n name; do printf '     %10s  %s\n' "$(per_day "$n" "$seconds")" "$name"; done

  problems=$(jq -r 'select(.errors > 0 or .wrongStates > 0 or .completed < .added) | "errors \(.errors), wrong states \(.wrongStates), completed \(.completed) of \(.added)"' <<<"$result" || echo "no result")
  [ "$status" -eq 0 ] || problems="workload exited $status; $problems"
  [ "$wire" -eq "$upstream" ] || problems="funnel counted $wire upstream commands, the upstream ran $upstream; $problems"
  if [ -n "$problems" ]; then
    echo "   FAIL: $problems"
    failed=1
  fi
  summary+=("$(printf '%-18s wire %9s/day   server %9s/day' "$run" "$(per_day "$wire" "$seconds")" "$(per_day "$server" "$seconds")")")
done
echo
printf '%s\n' "${summary[@]}"
exit "$failed"
