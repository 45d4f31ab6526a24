#!/usr/bin/env bash
# Regenerates command/table_gen.go from a throwaway local redis-server.
set -euo pipefail
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --daemonize no --loglevel warning &
pid=$!
trap 'kill $pid; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
go run ./command/gen -addr "127.0.0.1:$port" -out command/table_gen.go
echo "command/table_gen.go regenerated from $(redis-server --version | cut -d' ' -f3)"
