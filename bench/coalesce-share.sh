#!/usr/bin/env bash
# How many GETs funnel sends upstream per client GET at redis-benchmark's
# pipelined GET of one key: the share coalescing leaves. It moves from run
# to run for the same build (it depends on how long one read stays in
# flight while the others arrive), which is why bench/redis-benchmark.sh's
# GET row at -P 16 moves with it. Runs ROUNDS times for each funnel binary,
# interleaved, each against a fresh redis-server.
#
#   make build && bench/coalesce-share.sh                        # bin/funnel, 4 rounds
#   ROUNDS=6 bench/coalesce-share.sh /tmp/funnel-old bin/funnel  # A/B two builds
#
# Environment: ROUNDS (4), N (1000000 GETs a run), FLAGS (redis-benchmark's,
# "-c 50 -P 16").
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-4}
N=${N:-1000000}
FLAGS=${FLAGS:--c 50 -P 16}
[ $# -gt 0 ] || set -- bin/funnel
for bin in "$@"; do [ -x "$bin" ] || { echo "$bin is not an executable (make build)" >&2; exit 1; }; done
up() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "nothing answers on $1" >&2; exit 1; }
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    rport=$(free_port) fport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >/dev/null 2>&1 &
    rpid=$!; pids+=("$rpid")
    up "$rport"
    "$bin" --listen "127.0.0.1:$fport" --upstream "redis://127.0.0.1:$rport" --metrics-listen '' --log-level warn >/dev/null 2>&1 &
    fpid=$!; pids+=("$fpid")
    up "$fport"
    # shellcheck disable=SC2086 # FLAGS is a list of flags
    timeout 300 redis-benchmark -p "$fport" -t get -n "$N" $FLAGS -q >/dev/null 2>&1 || true
    calls=$(redis-cli -p "$rport" info commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_get:/ {print $2}')
    awk -v r="$round" -v b="$bin" -v c="${calls:-0}" -v n="$N" 'BEGIN {printf "round %d %-32s %8d upstream GETs, %.3f per client GET\n", r, b, c, c/n}'
    kill "$fpid" "$rpid"; wait "$fpid" "$rpid" 2>/dev/null || true
  done
done
