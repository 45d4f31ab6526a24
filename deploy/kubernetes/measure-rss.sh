#!/usr/bin/env bash
# Measures funnel's resident memory (RSS) idle and under redis-benchmark
# load, to size the sidecar's resource requests and limits in
# funnel-sidecar.yaml. Needs bin/funnel (make build), redis-server and
# redis-benchmark (Debian's redis-server and redis-tools).
#   deploy/kubernetes/measure-rss.sh [clients] [requests]
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${1:-200}
requests=${2:-50000}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
dir=$(mktemp -d)
rport=$(free_port); fport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >/dev/null &
rpid=$!
trap 'kill $rpid ${fpid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
bin/funnel --upstream "redis://127.0.0.1:$rport" --listen "127.0.0.1:$fport" --metrics-listen "" --log-level warn &
fpid=$!
for _ in $(seq 50); do redis-cli -p "$fport" ping >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2
echo "idle: RSS $(rss $fpid) KiB"
timeout 600 redis-benchmark -p "$fport" -n "$requests" -c "$clients" -q >"$dir/bench.txt"
echo "after redis-benchmark -n $requests -c $clients (all default tests): peak RSS (VmHWM) $(hwm $fpid) KiB, RSS now $(rss $fpid) KiB"
sleep 5
echo "5 s later: RSS $(rss $fpid) KiB"
tr '\r' '\n' <"$dir/bench.txt" | grep -E '^(SET|GET|LRANGE_600 .*): .*requests per second' | sed 's/^/  /'
