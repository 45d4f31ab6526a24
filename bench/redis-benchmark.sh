#!/usr/bin/env bash
# Compares redis-benchmark direct to Redis, through funnel, through twemproxy
# (nutcracker, server_connections: 1) and, when given, through predixy
# (WorkerThreads 1) in one run on this machine. Rounds are interleaved so
# drift on a shared machine hits every target alike; every table shows the
# median of the rounds. Everything listens on 127.0.0.1 and stops when the
# script ends.
#
# Rows (redis-benchmark -t get,set, or TESTS; each run does N SETs then N GETs):
#   -c 1 -P 1 (N1 requests), -c 50 -P 1, -c 50 -P 16 (N16 requests), -c 500 -P 1,
#   -c 50 -P 1 -r 100000 -d 512 (random keys, 512-byte values: coalescing
#   cannot help).
# Tables: requests/s and the ratio to direct; p50/p99 latency in µs (from
# redis-benchmark --csv) and the µs each target adds over direct; CPU µs per
# request of the target process (utime+stime from /proc/<pid>/stat around each
# run, divided by the requests of the run; for direct that is redis-server itself),
# and the part of it in user space (utime: the rest is the kernel's); context
# switches per request of the target process (voluntary and involuntary, all
# its threads, from /proc/<pid>/task/*/status); CPU µs per request of
# redis-benchmark itself (the shell's `times` for the run) and of
# redis-server behind a proxy, the whole chain's (benchmark + target +
# redis-server), and the cores the chain kept busy (its CPU / the run's
# wall time): near the machine's core count, the chain's CPU sets the rate.
#
#   make build && bench/redis-benchmark.sh          # ROUNDS=3 N=100000 N1=20000 N16=1000000
#   ROUNDS=1 N=20000 N1=5000 N16=100000 bench/redis-benchmark.sh
#   PREDIXY=/work/predixy-bin/predixy bench/redis-benchmark.sh
#   PREDIXY_SRC=/path/to/predixy-checkout bench/redis-benchmark.sh   # builds it first
#   TARGETS="direct funnel" FUNNEL_FLAGS="--pool-size 4" bench/redis-benchmark.sh
#   TARGETS="direct baseline funnel" BASELINE=/tmp/funnel-old bench/redis-benchmark.sh  # A/B two builds
#   TESTS=set bench/redis-benchmark.sh   # SETs only: at -P 16 a GET run of one key is partly
#                                        # a measure of how many GETs happened to coalesce
#
# Environment:
#   TESTS (get,set: what redis-benchmark -t runs, get and/or set), ROUNDS (3), N (100000), N1 (20000, the -c 1 row), N16 (10*N, the -P 16 row:
#   at 0.7M requests/s, N alone is over in a seventh of a second, too short
#   to tell targets apart), FUNNEL (bin/funnel),
#   FUNNEL_FLAGS (extra funnel flags, split on spaces), TARGETS (default
#   "direct funnel twemproxy", plus predixy when PREDIXY or PREDIXY_SRC gives
#   one), BASELINE (a second funnel binary, the "baseline" target, run with
#   the same flags), PREDIXY (a predixy binary), PREDIXY_SRC (a predixy source tree, built
#   with make in a scratch copy), LIMIT (1500: deadline in seconds for the whole
#   script; runs are cut to fit and the script ends itself after it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-100000}
N1=${N1:-20000}
N16=${N16:-$((10 * N))}
TESTS=${TESTS:-get,set}
read -ra tests <<<"$(tr ',' ' ' <<<"${TESTS^^}" | tr ' ' '\n' | sort -r | tr '\n' ' ')" # SET before GET
for test in "${tests[@]}"; do
  case $test in SET | GET) ;; *) echo "unknown test $test in TESTS=$TESTS (get, set)" >&2; exit 1 ;; esac
done
FUNNEL=${FUNNEL:-bin/funnel}
FUNNEL_FLAGS=${FUNNEL_FLAGS:-}
LIMIT=${LIMIT:-1500}
PREDIXY=${PREDIXY:-}
PREDIXY_SRC=${PREDIXY_SRC:-}
for tool in redis-server redis-benchmark redis-cli nutcracker python3 timeout; do
  command -v "$tool" >/dev/null || { echo "need $tool (Debian: redis-server, redis-tools, nutcracker)" >&2; exit 1; }
done
[ -x "$FUNNEL" ] || { echo "build funnel first: make build" >&2; exit 1; }

# The deadline: every run's timeout is cut to what is left, and a watchdog
# ends the script at LIMIT (the EXIT trap still cleans up) if something overruns.
# Runs stop 20 s before it, to leave time for the tables.
deadline=$((SECONDS + LIMIT - 20))
left() { local l=$((deadline - SECONDS)); [ "$l" -gt 0 ] && echo "$l" || echo 0; }
# cap SECONDS: SECONDS, or what is left if less; never 0 (timeout 0 would mean no limit).
cap() { local l; l=$(left); [ "$l" -ge 1 ] || l=1; [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }

# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'echo "stopped: LIMIT=${LIMIT}s reached or signal" >&2; exit 124' TERM INT
main=$$
(
  sleep "$LIMIT" &
  s=$!
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  wait "$s"
  kill -TERM "$main" 2>/dev/null
) &
pids+=($!)

# predixy: a binary, or a source tree to build; otherwise skipped.
predixy_note=
predixy_skip() {
  predixy_note="predixy skipped ($1): set PREDIXY=/path/to/predixy or PREDIXY_SRC=/path/to/source; the issue's predixy figures are the comparison"
  echo "$predixy_note" >&2
  PREDIXY=
}
if [ -n "$PREDIXY" ]; then
  [ -x "$PREDIXY" ] || predixy_skip "PREDIXY=$PREDIXY is not an executable"
elif [ -n "$PREDIXY_SRC" ]; then
  if [ -f "$PREDIXY_SRC/src/Makefile" ]; then
    echo "building predixy from $PREDIXY_SRC (log: $dir/predixy-build.log)" >&2
    cp -r "$PREDIXY_SRC" "$dir/predixy-src"
    rm -f "$dir"/predixy-src/src/*.o "$dir/predixy-src/src/predixy"
    # -include ctime: predixy's String.h uses localtime_r/strftime without
    # including <ctime>, which newer g++ rejects.
    if timeout "$(cap 600)" make -C "$dir/predixy-src" -j"$(nproc)" LVL='-O3 -include ctime' >"$dir/predixy-build.log" 2>&1 &&
      [ -x "$dir/predixy-src/src/predixy" ]; then
      PREDIXY=$dir/predixy-src/src/predixy
    else
      tail -5 "$dir/predixy-build.log" >&2
      predixy_skip "build of $PREDIXY_SRC failed"
    fi
  else
    predixy_skip "PREDIXY_SRC=$PREDIXY_SRC has no src/Makefile"
  fi
else
  predixy_skip "neither PREDIXY nor PREDIXY_SRC is set"
fi
if [ -n "${TARGETS:-}" ]; then
  read -ra targets <<<"$TARGETS"
else
  targets=(direct funnel twemproxy)
  [ -n "$PREDIXY" ] && targets+=(predixy)
fi
have() { local t; for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
if have predixy && [ -z "$PREDIXY" ]; then
  kept=(); for t in "${targets[@]}"; do [ "$t" = predixy ] || kept+=("$t"); done; targets=("${kept[@]}")
fi
for t in "${targets[@]}"; do
  case $t in direct | funnel | baseline | twemproxy | predixy) ;; *) echo "unknown target $t (direct funnel baseline twemproxy predixy)" >&2; exit 1 ;; esac
done

declare -A port pid
port[direct]=$(free_port)
redis-server --port "${port[direct]}" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no --loglevel warning >"$dir/redis.log" 2>&1 &
pid[direct]=$!; pids+=($!)
read -ra fflags <<<"$FUNNEL_FLAGS"
for t in funnel baseline; do
  have "$t" || continue
  bin=$FUNNEL
  if [ "$t" = baseline ]; then
    bin=${BASELINE:?"the baseline target needs BASELINE=<funnel binary>"}
  fi
  port[$t]=$(free_port)
  "$bin" --listen "127.0.0.1:${port[$t]}" --upstream "redis://127.0.0.1:${port[direct]}" --metrics-listen '' --log-level warn \
    ${fflags[@]+"${fflags[@]}"} >"$dir/$t.log" 2>&1 &
  pid[$t]=$!; pids+=($!)
done
if have twemproxy; then
  port[twemproxy]=$(free_port)
  cat >"$dir/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:${port[twemproxy]}
  redis: true
  server_connections: 1
  servers:
   - 127.0.0.1:${port[direct]}:1
YML
  nutcracker -c "$dir/nutcracker.yml" -o "$dir/nutcracker.log" -p "$dir/nutcracker.pid" &
  pid[twemproxy]=$!; pids+=($!)
fi
if have predixy; then
  port[predixy]=$(free_port)
  # Minimal config after predixy's conf/predixy.conf and conf/standalone.conf:
  # one worker thread, one fixed server, no per-connection log lines.
  cat >"$dir/predixy.conf" <<CONF
Name bench
Bind 127.0.0.1:${port[predixy]}
WorkerThreads 1
ClientTimeout 0
LogVerbSample 0
LogDebugSample 0
LogInfoSample 0
LogNoticeSample 0
LogWarnSample 1
LogErrorSample 1
StandaloneServerPool {
    Databases 1
    Hash crc16
    Distribution modula
    MasterReadPriority 100
    RefreshMethod fixed
    Group shard001 {
        + 127.0.0.1:${port[direct]}
    }
}
CONF
  "$PREDIXY" "$dir/predixy.conf" >"$dir/predixy.log" 2>&1 &
  pid[predixy]=$!; pids+=($!)
fi
for t in direct "${targets[@]}"; do
  ok=
  for _ in $(seq 100); do redis-cli -p "${port[$t]}" ping >/dev/null 2>&1 && { ok=1; break; }; sleep 0.05; done
  [ -n "$ok" ] || { echo "$t does not answer on ${port[$t]}:" >&2; cat "$dir"/*.log >&2 || true; exit 1; }
done

# utime and stime of a process (all its threads), in clock ticks.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
hz=$(getconf CLK_TCK)
# Context switches of a process so far, all its threads, voluntary or not
# (each is a thread going to sleep or being put off the CPU).
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }

configs=("-c 1 -P 1" "-c 50 -P 1" "-c 50 -P 16" "-c 500 -P 1" "-c 50 -P 1 -r 100000 -d 512")
nreq() {
  case $1 in
  "-c 1 -P 1") echo "$N1" ;;
  "-c 50 -P 16") echo "$N16" ;;
  *) echo "$N" ;;
  esac
}
results="$dir/results" # cfg|test|target|rps|p50_us|p99_us
cpu="$dir/cpu"         # cfg|target|cpu_us_per_request|switches_per_request|user_us_per_request|bench_us|redis_us|chain_us|cores
: >"$results"; : >"$cpu"
rounds_done=0
for round in $(seq "$ROUNDS"); do
  for cfg in "${configs[@]}"; do
    n=$(nreq "$cfg")
    for t in "${targets[@]}"; do
      [ "$(left)" -gt 1 ] || { echo "LIMIT=${LIMIT}s: no time left for more runs; tables from what ran" >&2; break 3; }
      lines=$(wc -l <"$results")
      read -r ub sb_ < <(ticks "${pid[$t]}")
      read -r rub rsb < <(ticks "${pid[direct]}")
      sw_before=$(switches "${pid[$t]}")
      t0=$(date +%s%N)
      # The subshell's `times` (its second line: the CPU of the children it
      # waited for) is the benchmark client's own CPU. Not in a pipeline,
      # which would run it in a fork with no children.
      # shellcheck disable=SC2086 # $cfg is a list of flags
      bench_cpu=$(
        timeout "$(cap 300)" redis-benchmark -p "${port[$t]}" -t "$TESTS" -n "$n" $cfg -q --csv 2>/dev/null >"$dir/run.csv" || true
        times
      )
      t1=$(date +%s%N)
      read -r ua sa_ < <(ticks "${pid[$t]}")
      read -r rua rsa < <(ticks "${pid[direct]}")
      sw_after=$(switches "${pid[$t]}")
      bench_s=$(awk 'NR==2 {for (i=1;i<=2;i++) {split($i, p, "m"); s += p[1]*60 + p[2]}} END {print s + 0}' <<<"$bench_cpu")
      # Columns by the CSV header ("test","rps",...,"p50_latency_ms",...,"p99_latency_ms",...).
      tr -d '"' <"$dir/run.csv" | awk -F, -v t="$t" -v c="$cfg" '
        $1=="test" {for (i=1;i<=NF;i++) col[$i]=i; next}
        ($1=="GET"||$1=="SET") && col["rps"] {printf "%s|%s|%s|%.0f|%.0f|%.0f\n", c, $1, t, $(col["rps"]), $(col["p50_latency_ms"])*1000, $(col["p99_latency_ms"])*1000}' >>"$results"
      if [ "$(wc -l <"$results")" -eq $((lines + ${#tests[@]})) ]; then
        awk -v ub="$ub" -v ua="$ua" -v b="$((ub + sb_))" -v a="$((ua + sa_))" -v sb="$sw_before" -v sa="$sw_after" -v hz="$hz" -v n="$n" -v k="${#tests[@]}" -v c="$cfg" -v t="$t" \
          -v rb="$((rub + rsb))" -v ra="$((rua + rsa))" -v bs="$bench_s" -v wall="$(((t1 - t0) / 1000))" -v direct="$([ "$t" = direct ] && echo 1 || echo 0)" \
          'BEGIN {
            req = k*n; target = (a-b)/hz; redis = direct ? 0 : (ra-rb)/hz; all = bs + target + redis
            printf "%s|%s|%.2f|%.3f|%.2f|%.2f|%.2f|%.2f|%.2f\n", c, t, target*1e6/req, (sa-sb)/req, (ua-ub)/hz*1e6/req,
              bs*1e6/req, redis*1e6/req, all*1e6/req, all/(wall/1e6)}' >>"$cpu"
      else
        echo "round $round: $cfg against $t gave no result (timeout or error)" >&2
      fi
    done
  done
  echo "round $round of $ROUNDS done" >&2
  rounds_done=$round
done

# med FILE KEYPREFIX COLUMN: median of the column over the lines starting with KEYPREFIX; empty if none.
med() { { grep -F -- "$2" "$1" || true; } | awk -F'|' -v k="$2" 'index($0,k)==1' | cut -d'|' -f"$3" | sort -n |
  awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
others=(); for t in "${targets[@]}"; do [ "$t" = direct ] || others+=("$t"); done
short() { case $1 in twemproxy) echo twem ;; predixy) echo predx ;; baseline) echo base ;; *) echo "$1" ;; esac; }
cfgn() { echo "$1 -n $(nreq "$1")"; }

echo
[ -z "$predixy_note" ] || echo "$predixy_note"
[ -z "$PREDIXY" ] || ! have predixy || echo "predixy: $PREDIXY"
echo "redis-benchmark -t $TESTS, median of $rounds_done interleaved rounds (of ROUNDS=$ROUNDS), $(nproc) cores, redis $(redis-server --version | cut -d' ' -f3 | cut -d= -f2)"
echo
echo "requests per second (ratio to direct)"
printf '%-40s %-4s' config test
for t in "${targets[@]}"; do printf ' %10s' "$(short "$t")"; done
for t in "${others[@]}"; do printf ' %10s' "$(short "$t")/dir"; done
echo
for cfg in "${configs[@]}"; do
  for test in "${tests[@]}"; do
    printf '%-40s %-4s' "$(cfgn "$cfg")" "$test"
    d=$(med "$results" "$cfg|$test|direct|" 4)
    for t in "${targets[@]}"; do v=$(med "$results" "$cfg|$test|$t|" 4); printf ' %10s' "${v:--}"; done
    for t in "${others[@]}"; do
      v=$(med "$results" "$cfg|$test|$t|" 4)
      awk -v d="$d" -v v="$v" 'BEGIN {if (d!="" && v!="" && d>0) printf " %9.2fx", v/d; else printf " %10s", "-"}'
    done
    echo
  done
done

echo
echo "latency µs: p50/p99 per target; +p50/+p99 = added over direct"
printf '%-40s %-4s' config test
for t in "${targets[@]}"; do printf ' %15s' "$(short "$t") p50/p99"; done
for t in "${others[@]}"; do printf ' %15s' "$(short "$t") +50/+99"; done
echo
for cfg in "${configs[@]}"; do
  for test in "${tests[@]}"; do
    printf '%-40s %-4s' "$(cfgn "$cfg")" "$test"
    d50=$(med "$results" "$cfg|$test|direct|" 5); d99=$(med "$results" "$cfg|$test|direct|" 6)
    for t in "${targets[@]}"; do
      a=$(med "$results" "$cfg|$test|$t|" 5); b=$(med "$results" "$cfg|$test|$t|" 6)
      printf ' %15s' "${a:--}/${b:--}"
    done
    for t in "${others[@]}"; do
      a=$(med "$results" "$cfg|$test|$t|" 5); b=$(med "$results" "$cfg|$test|$t|" 6)
      awk -v d50="$d50" -v d99="$d99" -v a="$a" -v b="$b" \
        'BEGIN {if (d50!="" && a!="") printf " %15s", sprintf("%+d/%+d", a-d50, b-d99); else printf " %15s", "-"}'
    done
    echo
  done
done

# per_target TITLE COLUMN: a table of one column of $cpu, a row per
# config and a column per target.
per_target() {
  echo
  echo "$1"
  printf '%-40s' config
  for t in "${targets[@]}"; do printf ' %10s' "$(short "$t")"; done
  echo
  for cfg in "${configs[@]}"; do
    printf '%-40s' "$(cfgn "$cfg")"
    for t in "${targets[@]}"; do v=$(med "$cpu" "$cfg|$t|" "$2"); printf ' %10s' "${v:--}"; done
    echo
  done
}
per_target "CPU µs per request of the target process (utime+stime / requests, $hz ticks/s; direct = redis-server)" 3
per_target "of which in user space (utime / requests; the rest is the kernel's, mostly system calls)" 5
per_target "context switches per request of the target process (all threads; direct = redis-server)" 4
per_target "CPU µs per request of redis-benchmark itself (the client: times(1) of the run)" 6
per_target "CPU µs per request of redis-server behind the proxy (direct: the target table's)" 7
per_target "CPU µs per request of the whole chain: redis-benchmark + target + redis-server behind it" 8
per_target "cores busy: the whole chain's CPU / the run's wall time (this machine has $(nproc); near it, a target's own CPU is what limits the rate)" 9
