# Shared by the bench scripts (sourced): a scratch directory, processes to
# stop on exit, and free loopback ports.
#
#   . "$(dirname "$0")/lib.sh"    # sets dir, pids, the EXIT trap

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
