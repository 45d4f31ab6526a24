#!/usr/bin/env bash
# Compares redis-benchmark direct to Redis, through funnel and through
# twemproxy (nutcracker, server_connections: 1) in one run on this machine.
# Rounds are interleaved so drift on a shared machine hits every target
# alike; the table shows the median of the rounds and each target's ratio to
# direct. Everything listens on 127.0.0.1 and stops when the script ends.
#
#   bench/redis-benchmark.sh            # ROUNDS=3 N=100000 by default
#   ROUNDS=5 N=200000 bench/redis-benchmark.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-100000}
FUNNEL=${FUNNEL:-bin/funnel}
for tool in redis-server redis-benchmark nutcracker; do
  command -v "$tool" >/dev/null || { echo "need $tool (Debian: redis-server, redis-tools, nutcracker)" >&2; exit 1; }
done
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

redis_port=$(free_port); funnel_port=$(free_port); twem_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pids+=($!)
"$FUNNEL" --listen "127.0.0.1:$funnel_port" --upstream "redis://127.0.0.1:$redis_port" --metrics-listen '' --log-level warn >"$dir/funnel.log" 2>&1 &
pids+=($!)
cat >"$dir/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$twem_port
  redis: true
  server_connections: 1
  servers:
   - 127.0.0.1:$redis_port:1
YML
nutcracker -c "$dir/nutcracker.yml" -o "$dir/nutcracker.log" -p "$dir/nutcracker.pid" &
pids+=($!)
for port in "$redis_port" "$funnel_port" "$twem_port"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

declare -A port=([direct]=$redis_port [funnel]=$funnel_port [twemproxy]=$twem_port)
configs=("-c 50 -P 1" "-c 50 -P 16" "-c 500 -P 1")
results="$dir/results"
: >"$results"
for round in $(seq "$ROUNDS"); do
  for cfg in "${configs[@]}"; do
    for target in direct funnel twemproxy; do
      # shellcheck disable=SC2086
      timeout 300 redis-benchmark -p "${port[$target]}" -t get,set -n "$N" $cfg -q --csv 2>/dev/null |
        tr -d '"' | awk -F, -v t="$target" -v c="$cfg" '$1=="GET"||$1=="SET" {print c "|" $1 "|" t "|" $2}' >>"$results"
    done
  done
  echo "round $round of $ROUNDS done" >&2
done

echo
echo "redis-benchmark, requests per second (median of $ROUNDS interleaved rounds, -n $N), $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
printf '%-16s %-4s %12s %12s %12s %10s %10s\n' config test direct funnel twemproxy funnel/dir twem/dir
for cfg in "${configs[@]}"; do
  for test in GET SET; do
    med() { grep -F -- "$cfg|$test|$1|" "$results" | cut -d'|' -f4 | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
    d=$(med direct); f=$(med funnel); w=$(med twemproxy)
    awk -v c="$cfg" -v t="$test" -v d="$d" -v f="$f" -v w="$w" \
      'BEGIN {printf "%-16s %-4s %12.0f %12.0f %12.0f %9.2fx %9.2fx\n", c, t, d, f, w, f/d, w/d}'
  done
done
