#!/usr/bin/env bash
# Measures the two event-loop prototypes of bench/eventloop (own epoll loop,
# gnet v2) against direct Redis, current funnel and twemproxy (if nutcracker
# is installed): redis-benchmark throughput and p50 latency, proxy CPU per
# request, system calls per request (strace -c, if installed) and RSS with
# 10,000 idle clients. Rounds are interleaved (and each round starts at a
# different target) so drift on a shared machine hits every target alike;
# tables show medians. Everything listens on 127.0.0.1 and stops when the
# script ends (or after LIMIT seconds).
#
#   make build && bench/eventloop/run.sh
#   ROUNDS=5 N=200000 TARGETS="direct funnel epoll gnet-batch" bench/eventloop/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
N=${N:-100000}      # requests per test, -c 50 and -c 500
N1=${N1:-20000}     # requests per test, -c 1
IDLE=${IDLE:-10000} # idle clients for the RSS row
PROCS=${PROCS:-1}   # event loops of the prototypes (funnel's default is --procs 1)
STRACE=${STRACE:-1} # 0 skips the strace pass
LIMIT=${LIMIT:-1500}
FUNNEL=${FUNNEL:-bin/funnel}
TARGETS=${TARGETS:-direct funnel twemproxy epoll epoll-go gnet gnet-batch}
for tool in redis-server redis-benchmark redis-cli python3 go; do
  command -v "$tool" >/dev/null || { echo "need $tool" >&2; exit 1; }
done
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }
if ! command -v nutcracker >/dev/null; then
  echo "nutcracker not installed (apt-get install -y nutcracker): no twemproxy row" >&2
  TARGETS=${TARGETS//twemproxy/}
fi
command -v strace >/dev/null || STRACE=0
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((IDLE + 100)) ] || { echo "ulimit -n $(ulimit -n) is too low for IDLE=$IDLE" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() {
  status=$?
  if [ "$status" != 0 ]; then
    for f in "$dir"/*.log; do [ -s "$f" ] && { echo "== $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo "run.sh: stopped after ${LIMIT}s" >&2; exit 1' USR1
# shellcheck disable=SC2016
bash -c 'sleep "$1" & s=$!; trap "kill \$s; exit" TERM; wait "$s"; kill -USR1 "$2"' _ "$LIMIT" $$ &
pids+=($!)

# The prototypes are a Go module of their own (bench/eventloop/go.mod), so
# that funnel does not depend on gnet.
(cd bench/eventloop && go build -o "$dir/epoll" ./epoll && go build -o "$dir/gnetproxy" ./gnetproxy && go build -o "$dir/idle" ./idle)

# All ports at once, each socket held open until all are bound, so no two
# targets get the same one.
read -ra free < <(python3 -c 'import socket; ss=[socket.socket() for _ in range(16)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
nextport=0
free_port() { port_out=${free[$nextport]}; nextport=$((nextport + 1)); }
declare -A port pid
free_port; redis_port=$port_out
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pid[direct]=$!; port[direct]=$redis_port; pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
up="127.0.0.1:$redis_port"
for t in $TARGETS; do
  [ "$t" = direct ] && continue
  free_port; p=$port_out; port[$t]=$p
  case $t in
    funnel) "$FUNNEL" --listen "127.0.0.1:$p" --upstream "redis://$up" --metrics-listen '' --log-level warn >"$dir/$t.log" 2>&1 & ;;
    twemproxy)
      printf 'bench:\n  listen: 127.0.0.1:%s\n  redis: true\n  server_connections: 1\n  servers:\n   - %s:1\n' "$p" "$up" >"$dir/nutcracker.yml"
      nutcracker -c "$dir/nutcracker.yml" -o "$dir/$t.log" -p "$dir/nutcracker.pid" & ;;
    epoll) "$dir/epoll" -listen "127.0.0.1:$p" -upstream "$up" -procs "$PROCS" >"$dir/$t.log" 2>&1 & ;;
    epoll-go) "$dir/epoll" -wait go -listen "127.0.0.1:$p" -upstream "$up" -procs "$PROCS" >"$dir/$t.log" 2>&1 & ;;
    gnet) "$dir/gnetproxy" -listen "127.0.0.1:$p" -upstream "$up" -procs "$PROCS" >"$dir/$t.log" 2>&1 & ;;
    gnet-batch) "$dir/gnetproxy" -batch -listen "127.0.0.1:$p" -upstream "$up" -procs "$PROCS" >"$dir/$t.log" 2>&1 & ;;
    *) echo "unknown target $t" >&2; exit 1 ;;
  esac
  pid[$t]=$!; pids+=($!)
done
for t in $TARGETS; do
  for _ in $(seq 100); do [ "$(redis-cli -p "${port[$t]}" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
  kill -0 "${pid[$t]}" 2>/dev/null || { echo "$t did not start" >&2; exit 1; }
done
sleep 0.5 # the prototypes' upstream connections

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; } # utime+stime, all threads
kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
read -ra targets <<<"$TARGETS"
configs=("-c 50 -P 1" "-c 50 -P 16" "-c 500 -P 1" "-c 1 -P 1")
results="$dir/results"
: >"$results"
# RSS with IDLE idle clients first, while every process is fresh, so that
# the difference is the clients' and not heap left over from the runs.
for t in "${targets[@]}"; do
  [ "$t" = direct ] && continue
  before=$(kib "${pid[$t]}" VmRSS)
  # idle holds its connections until its stdin closes: a FIFO held open
  # here (a background job's stdin would be /dev/null, closed at once, and
  # the RSS read would catch the clients leaving instead of idle).
  mkfifo "$dir/hold.$t"
  exec 9<>"$dir/hold.$t"
  "$dir/idle" -addr "127.0.0.1:${port[$t]}" -n "$IDLE" -hold 120s <&9 >"$dir/idle.$t" 2>&1 &
  ip=$!
  for _ in $(seq 600); do grep -q ready "$dir/idle.$t" && break; kill -0 "$ip" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  if grep -q ready "$dir/idle.$t"; then
    echo "rss|$t|$before|$(kib "${pid[$t]}" VmRSS)|$IDLE" >>"$results"
  else
    echo "idle clients against $t failed: $(tail -1 "$dir/idle.$t")" >&2
  fi
  exec 9>&-
  kill "$ip" 2>/dev/null || true
  wait "$ip" 2>/dev/null || true
  sleep 1
done

echo "targets: ${targets[*]}; $ROUNDS rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
  for cfg in "${configs[@]}"; do
    n=$N; [ "$cfg" = "-c 1 -P 1" ] && n=$N1
    for i in "${!targets[@]}"; do
      t=${targets[$(((i + round) % ${#targets[@]}))]}
      p0=$(ticks "${pid[$t]}"); r0=$(ticks "${pid[direct]}")
      # shellcheck disable=SC2086
      out=$(timeout 300 redis-benchmark -p "${port[$t]}" -t get,set -n "$n" $cfg --csv 2>/dev/null | tr -d '"') || true
      p1=$(ticks "${pid[$t]}"); r1=$(ticks "${pid[direct]}")
      awk -F, -v t="$t" -v c="$cfg" '$1=="GET"||$1=="SET" {print "rps|" c "|" $1 "|" t "|" $2 "|" $5}' <<<"$out" >>"$results"
      echo "cpu|$cfg|$t|$((p1 - p0))|$((r1 - r0))|$((2 * n))" >>"$results"
    done
  done
  echo "round $round of $ROUNDS done; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

if [ "$STRACE" = 1 ]; then
  for t in "${targets[@]}"; do
    [ "$t" = direct ] && tp=${pid[direct]} || tp=${pid[$t]}
    for cfg in "-c 1 -P 1" "-c 50 -P 1"; do
      n=5000
      strace -c -f -p "$tp" -o "$dir/strace.$t" 2>/dev/null &
      sp=$!
      sleep 0.5
      # shellcheck disable=SC2086
      timeout 120 redis-benchmark -p "${port[$t]}" -t get,set -n "$n" $cfg -q >/dev/null 2>&1 || true
      kill -INT "$sp" 2>/dev/null || true
      wait "$sp" 2>/dev/null || true
      calls=$(awk '$NF=="total" {print $4}' "$dir/strace.$t")
      echo "sys|$cfg|$t|${calls:-0}|$((2 * n))" >>"$results"
    done
  done
fi

echo
echo "$(nproc) cores, redis-server $(redis-server --version | cut -d' ' -f3), $ROUNDS interleaved rounds, -n $N (-c 1: -n $N1), prototypes with -procs $PROCS; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" "$TARGETS" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
targets = sys.argv[2].split()
configs = ["-c 50 -P 1", "-c 50 -P 16", "-c 500 -P 1", "-c 1 -P 1"]
def med(xs): return st.median(xs) if xs else float("nan")
rps = {}; p50 = {}; cpu = {}; rcpu = {}
for r in rows:
    if r[0] == "rps":
        rps.setdefault((r[1], r[2], r[3]), []).append(float(r[4]))
        p50.setdefault((r[1], r[2], r[3]), []).append(float(r[5]) * 1000)
    elif r[0] == "cpu":
        cpu.setdefault((r[1], r[2]), []).append(int(r[3]) * 10000 / int(r[5]))
        rcpu.setdefault((r[1], r[2]), []).append(int(r[4]) * 10000 / int(r[5]))
w = 11
print("\nrequests per second (median) and ratio to direct")
print(f"{'config':<12} {'test':<4} " + "".join(f"{t:>{w}}" for t in targets) + "".join(f"{t[:6]+'/d':>{w}}" for t in targets if t != "direct"))
for c in configs:
    for test in ("GET", "SET"):
        m = {t: med(rps.get((c, test, t), [])) for t in targets}
        d = m.get("direct", float("nan"))
        print(f"{c:<12} {test:<4} " + "".join(f"{m[t]:>{w}.0f}" for t in targets) + "".join(f"{m[t]/d:>{w-1}.2f}x" for t in targets if t != "direct"))
print("\np50 latency, µs (median of rounds); +µs over direct")
print(f"{'config':<12} {'test':<4} " + "".join(f"{t:>{w}}" for t in targets) + "".join(f"{'+'+t[:7]:>{w}}" for t in targets if t != "direct"))
for c in configs:
    for test in ("GET", "SET"):
        m = {t: med(p50.get((c, test, t), [])) for t in targets}
        d = m.get("direct", float("nan"))
        print(f"{c:<12} {test:<4} " + "".join(f"{m[t]:>{w}.0f}" for t in targets) + "".join(f"{m[t]-d:>+{w}.0f}" for t in targets if t != "direct"))
print("\nCPU µs per request (utime+stime, 10 ms ticks; median of rounds): the proxy's own, and redis-server's while it served that target")
print(f"{'config':<12} " + "".join(f"{t:>{w}}" for t in targets) + "   | redis: " + "".join(f"{t:>{w}}" for t in targets))
for c in configs:
    print(f"{c:<12} " + "".join(f"{med(cpu.get((c, t), [])):>{w}.2f}" for t in targets) + "   |        " + "".join(f"{med(rcpu.get((c, t), [])):>{w}.2f}" for t in targets))
sys_rows = [r for r in rows if r[0] == "sys"]
if sys_rows:
    print("\nsystem calls per request (strace -c -f, one pass of 2x5000 requests; direct = redis-server's)")
    print(f"{'config':<12} " + "".join(f"{t:>{w}}" for t in targets))
    for c in ("-c 1 -P 1", "-c 50 -P 1"):
        d = {r[2]: int(r[3]) / int(r[4]) for r in sys_rows if r[1] == c}
        print(f"{c:<12} " + "".join(f"{d.get(t, float('nan')):>{w}.2f}" for t in targets))
rss_rows = [r for r in rows if r[0] == "rss"]
if rss_rows:
    print("\nRSS with idle clients (each sent one PING), measured first, on fresh processes")
    print(f"{'target':<12} {'before KiB':>11} {'with idle':>11} {'MiB':>7} {'B/client':>9}")
    for r in rss_rows:
        b, a, n = int(r[2]), int(r[3]), int(r[4])
        print(f"{r[1]:<12} {b:>11} {a:>11} {a/1024:>7.1f} {(a-b)*1024/n:>9.0f}")
PY
