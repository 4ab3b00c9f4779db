#!/usr/bin/env bash
# bench/ab.sh — two nextup binaries against the same backend in the same run: what a change costs.
#
# usage: bench/ab.sh path/to/base/nextup path/to/new/nextup
#
# Not part of `make test` or `make bench` (a benchmark, not a test). Written for issue 12 ("routing costs
# nothing measurable on the single-service path"): base = a build from before services, new = one with them.
# One fast backend (nginx, 1 worker, a fixed 100-byte body, keep-alive) and, in front of it, for each worker
# count in BENCH_WORKERS (default "1 2"), three nextups, each on its own loopback port:
#   base/N   the base binary, NEXTUP_UPSTREAMS=backend
#   new/N    the new binary, the same environment (its single "default" service)
#   svc3/N   the new binary, NEXTUP_SERVICES=orders,payments,inventory, each with the backend as its one
#            upstream, and wrk sending "Host: payments": the route by authority on every request
# All with NEXTUP_WORKERS=N, NEXTUP_BPF=off (a BPF-on nextup's programs run for every TCP socket of the host,
# so each target would pay for the others' too), NEXTUP_ACCESS_LOG=off, NEXTUP_LOG_LEVEL=error.
#
# wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d$BENCH_DURATION --latency against each target, in interleaved
# rounds (round r: every target once, starting one target later than round r-1, so that no target always
# runs first or right after the same one); drift on the machine hits every target alike. Per run: req/s,
# p99, errors, and CPU us/req: the first field of /proc/PID/task/*/schedstat summed over nextup's threads
# (bench/lib.sh cpu_ns), read right before and after the run, divided by the requests wrk completed.
# After the timed rounds, one system-call run per target (as bench/run.sh does): strace -c attached to
# nextup's threads but the main one, wrk -t1 -c$BENCH_STRACE_CONNECTIONS -d$BENCH_STRACE_DURATION, the calls
# counted (bench/lib.sh strace_calls) divided by the requests of that run.
#
# Printed: per target the median req/s and its range over the rounds, median p99, median CPU us/req and its
# range, syscalls/req, errors; then for each worker count new and svc3 against base, and svc3 against new:
# the ratio of the medians, and the same ratio taken per round (the two runs of one round are under a minute apart,
# so they share the machine's state): its median, its middle half (quartiles) and its range over the rounds.
# A difference inside the middle half is not measurable on this machine.
#
# Environment (defaults in brackets):
#   BENCH_DURATION     seconds per wrk run                      [5]
#   BENCH_CONNECTIONS  wrk connections                          [50]
#   BENCH_THREADS      wrk threads                              [2]
#   BENCH_RUNS         rounds                                   [5]
#   BENCH_WARMUP       seconds of warm-up per target, 0 = none  [2]
#   BENCH_WORKERS      worker counts, one set of targets each   [1 2]
#   BENCH_STRACE       1 = the system-call runs, 0 = none       [1]
#   BENCH_STRACE_DURATION     seconds of each strace run        [4]
#   BENCH_STRACE_CONNECTIONS  wrk connections in it (1 thread)  [32]
#
# Everything started here (backend, nextups, strace) is stopped by PID when the script exits, strace
# first; the temp dir is removed. A target that does not answer 200 with the body before the runs, or
# dies during them, is a loud failure (non-zero exit).
set -euo pipefail

LIB_NAME=ab
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 2 ] || die "usage: $0 path/to/base/nextup path/to/new/nextup"
declare -A BIN=()
nextup_bin_arg "$1"; BIN[base]=$NEXTUP_BIN
nextup_bin_arg "$2"; BIN[new]=$NEXTUP_BIN; BIN[svc3]=$NEXTUP_BIN

NGINX=/usr/sbin/nginx
WRK=/usr/bin/wrk
for b in "$NGINX" "$WRK"; do
  [ -x "$b" ] || die "$b not found (install with: scripts/deps.sh bench)"
done
command -v curl >/dev/null || die "curl not found"

DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-2}
RUNS=${BENCH_RUNS:-5}
WARMUP=${BENCH_WARMUP:-2}
WORKERS=${BENCH_WORKERS:-1 2}
STRACE_DURATION=${BENCH_STRACE_DURATION:-4}
STRACE_CONNS=${BENCH_STRACE_CONNECTIONS:-32}
for v in DURATION CONNS THREADS RUNS WARMUP STRACE_DURATION STRACE_CONNS; do
  is_uint "${!v}" || die "BENCH_${v} must be a non-negative integer, got '${!v}'"
done
if [ "$DURATION" -lt 1 ] || [ "$CONNS" -lt 1 ] || [ "$THREADS" -lt 1 ] || [ "$RUNS" -lt 1 ] ||
   [ "$STRACE_DURATION" -lt 1 ] || [ "$STRACE_CONNS" -lt 1 ]; then
  die "BENCH_DURATION, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_RUNS, BENCH_STRACE_DURATION and BENCH_STRACE_CONNECTIONS must be >= 1"
fi
[ "$THREADS" -le "$CONNS" ] || THREADS=$CONNS
[ -n "${WORKERS// /}" ] || die "BENCH_WORKERS is empty"
for w in $WORKERS; do
  { is_uint "$w" && [ "$w" -ge 1 ] && [ "$w" -le 64 ]; } || die "BENCH_WORKERS must list worker counts 1-64, got '$WORKERS'"
done
case "${BENCH_STRACE:-1}" in
  1|on|yes|true)   STRACE_ON=1 ;;
  0|off|no|false)  STRACE_ON=0 ;;
  *) die "BENCH_STRACE must be 1 or 0, got '${BENCH_STRACE}'" ;;
esac
STRACE=""
if [ "$STRACE_ON" = 1 ]; then
  STRACE=$(command -v strace) || die "strace not found (install with: scripts/deps.sh bench; BENCH_STRACE=0 skips it)"
fi

KINDS="base new svc3"
TARGETS=""
for w in $WORKERS; do
  for k in $KINDS; do TARGETS="$TARGETS $k/$w"; done
done
TARGETS=${TARGETS# }
N_TARGETS=$(wc -w <<<"$TARGETS")
kind_of() { echo "${1%/*}"; }
workers_of() { echo "${1#*/}"; }
fname() { echo "${1//\//.}"; }

# ---------------------------------------------------------------- cleanup
WORK=""
BACKEND_PID=""
STRACE_PID=""
declare -A PID=()

cleanup() {
  local rc=$? t
  trap - EXIT INT TERM
  [ -n "$STRACE_PID" ] && stop_pid "$STRACE_PID" strace
  for t in $TARGETS; do
    [ -n "${PID[$t]:-}" ] || continue
    stop_pid "${PID[$t]}" "$t"
    [ "$STOP_STATUS" = 0 ] || echo "ab: note: $t exited with status $STOP_STATUS after SIGTERM (expected 0)" >&2
  done
  [ -n "$BACKEND_PID" ] && stop_pid "$BACKEND_PID" backend
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/nextup-ab.XXXXXX)
chmod 755 "$WORK"          # nginx workers run as nobody when started by root

# ---------------------------------------------------------------- ports (as bench/run.sh picks them)
USED_PORTS=" "
pick_port() {              # pick_port VAR: a free port in 20000-31999 not handed out before, into VAR
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if port_free "$p"; then USED_PORTS="$USED_PORTS$p "; printf -v "$1" '%s' "$p"; return 0; fi
  done
  die "no free loopback port found"
}
declare -A PORT=() ADMIN=()
pick_port BACKEND_PORT
BACKEND="127.0.0.1:$BACKEND_PORT"
for t in $TARGETS; do pick_port "PORT[$t]"; pick_port "ADMIN[$t]"; done

n_runs=$(( RUNS * N_TARGETS ))
est=$(( N_TARGETS * (WARMUP + 1) + n_runs * (DURATION + 1) + 10 ))
[ "$STRACE_ON" = 1 ] && est=$(( est + N_TARGETS * (STRACE_DURATION + 2) ))
say "nextup A/B: $RUNS round(s) x $N_TARGETS targets x ${DURATION}s, wrk -t$THREADS -c$CONNS, warm-up ${WARMUP}s per target, workers: $WORKERS"
say "base: ${BIN[base]}"
say "new:  ${BIN[new]}"
note_load
say "estimated total run time: ~${est}s"

# ---------------------------------------------------------------- backend
BODY=$(printf 'nextup-bench-%087d' 0)    # 13 + 87 = 100 bytes, as bench/run.sh
start_backend "$WORK/backend" "$BACKEND" "$BODY" 4096
say "backend: nginx (1 worker) on $BACKEND"

# ---------------------------------------------------------------- nextups
host_of() {                # host_of TARGET: the Host wrk sends ("" = wrk's own, 127.0.0.1:port)
  [ "$(kind_of "$1")" = svc3 ] && echo payments || echo ""
}
for t in $TARGETS; do
  w=$(workers_of "$t"); log="$WORK/$(fname "$t").log"
  common=(NEXTUP_LISTEN="127.0.0.1:${PORT[$t]}" NEXTUP_ADMIN="127.0.0.1:${ADMIN[$t]}" NEXTUP_WORKERS="$w"
          NEXTUP_BPF=off NEXTUP_LOG_LEVEL=error NEXTUP_ACCESS_LOG=off)
  if [ "$(kind_of "$t")" = svc3 ]; then
    env "${common[@]}" NEXTUP_SERVICES=orders,payments,inventory NEXTUP_SERVICE_ORDERS_UPSTREAMS="$BACKEND" \
      NEXTUP_SERVICE_PAYMENTS_UPSTREAMS="$BACKEND" NEXTUP_SERVICE_INVENTORY_UPSTREAMS="$BACKEND" \
      "${BIN[$(kind_of "$t")]}" </dev/null >"$log" 2>&1 &
  else
    env "${common[@]}" NEXTUP_UPSTREAMS="$BACKEND" "${BIN[$(kind_of "$t")]}" </dev/null >"$log" 2>&1 &
  fi
  PID[$t]=$!
  h=$(host_of "$t")
  say "$t: ${BIN[$(kind_of "$t")]} ($w worker(s)) on 127.0.0.1:${PORT[$t]}, pid ${PID[$t]}${h:+, wrk sends Host: $h}"
done
for t in $TARGETS; do
  ok=0
  for _ in $(seq 100); do
    kill -0 "${PID[$t]}" 2>/dev/null || { show_logs "$WORK/$(fname "$t").log"; die "$t exited during startup"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:${ADMIN[$t]}/readyz" || true)
    [ "$code" = 200 ] && { ok=1; break; }
    sleep 0.1
  done
  [ "$ok" = 1 ] || { show_logs "$WORK/$(fname "$t").log"; die "$t: GET /readyz not 200 after 10 s"; }
  h=$(host_of "$t")
  code=$(curl -sS -o "$WORK/check.body" -w '%{http_code}' --max-time 5 ${h:+-H "Host: $h"} \
           "http://127.0.0.1:${PORT[$t]}/" 2>"$WORK/check.err" || true)
  if [ "$code" != 200 ] || [ "$(cat "$WORK/check.body")" != "$BODY" ]; then
    cat "$WORK/check.err" >&2
    show_logs "$WORK/$(fname "$t").log"
    die "$t answered '${code:-nothing}' (Host: ${h:-default}), expected 200 with the 100-byte body"
  fi
done
say "all $N_TARGETS targets answer 200 with the 100-byte body"

# ---------------------------------------------------------------- runs
run_wrk() {                # run_wrk TARGET SECONDS OUTFILE [THREADS CONNECTIONS]
  local t=$1 h
  h=$(host_of "$t")
  "$WRK" -t"${4:-$THREADS}" -c"${5:-$CONNS}" -d"${2}s" --latency ${h:+-H "Host: $h"} \
    "http://127.0.0.1:${PORT[$t]}/" >"$3" 2>&1 || { cat "$3" >&2; die "wrk against $t failed"; }
  kill -0 "${PID[$t]}" 2>/dev/null || { show_logs "$WORK/$(fname "$t").log"; die "$t (pid ${PID[$t]}) died during the benchmark"; }
}
wrk_requests() { awk '/ requests in / { print $1; exit }' "$1"; }

declare -A RPS=() P99=() CPU=() ERRS=()
for t in $TARGETS; do RPS[$t]=""; P99[$t]=""; CPU[$t]=""; ERRS[$t]=0; done
NAME_W=$(for t in $TARGETS; do echo "${#t}"; done | sort -n | tail -1)

if [ "$WARMUP" -gt 0 ]; then
  for t in $TARGETS; do run_wrk "$t" "$WARMUP" "$WORK/warmup.txt"; done
  say "warm-up done (${WARMUP}s per target)"
fi

read -r -a TLIST <<<"$TARGETS"
for r in $(seq "$RUNS"); do
  for i in $(seq 0 $(( N_TARGETS - 1 ))); do
    t=${TLIST[$(( (i + r - 1) % N_TARGETS ))]}
    out="$WORK/wrk.$r.$(fname "$t").txt"
    cpu0=$(cpu_ns "${PID[$t]}")
    run_wrk "$t" "$DURATION" "$out"
    cpu1=$(cpu_ns "${PID[$t]}")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    nreq=$(wrk_requests "$out")
    if [ -z "$rps" ] || [ -z "$p99" ] || [ -z "$nreq" ] || [ "$nreq" -eq 0 ]; then cat "$out" >&2; die "could not parse wrk's output for $t"; fi
    p99=$(to_ms "$p99")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                END { print n + 0 }' "$out")
    us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$nreq" 'BEGIN { printf "%.3f", (b - a) / 1000 / n }')
    RPS[$t]="${RPS[$t]} $rps"; P99[$t]="${P99[$t]} $p99"; CPU[$t]="${CPU[$t]} $us"
    ERRS[$t]=$(( ${ERRS[$t]} + errs ))
    say "round $r/$RUNS  $(printf "%-${NAME_W}s %9.0f req/s   p99 %7.3f ms   cpu %6.3f us/req   errors %s" "$t" "$rps" "$p99" "$us" "$errs")"
  done
done

# ---------------------------------------------------------------- system calls
declare -A SYS=()
for t in $TARGETS; do SYS[$t]="-"; done
if [ "$STRACE_ON" = 1 ]; then
  for t in $TARGETS; do
    f=$(fname "$t")
    tasks=""
    for task in /proc/"${PID[$t]}"/task/*; do [ "${task##*/}" = "${PID[$t]}" ] || tasks="$tasks $task"; done
    args=()
    for task in $tasks; do args+=(-p "${task##*/}"); done
    "$STRACE" -c -o "$WORK/strace.$f.txt" "${args[@]}" 2>"$WORK/strace.$f.err" &
    STRACE_PID=$!
    attached=0
    for _ in $(seq 50); do
      kill -0 "$STRACE_PID" 2>/dev/null || { cat "$WORK/strace.$f.err" >&2; die "strace on $t exited at once"; }
      n_tr=0; n_all=0
      for task in $tasks; do
        n_all=$(( n_all + 1 ))
        [ "$(awk '/^TracerPid:/ { print $2 }' "$task/status" 2>/dev/null)" = "$STRACE_PID" ] && n_tr=$(( n_tr + 1 ))
      done
      [ "$n_all" -gt 0 ] && [ "$n_tr" = "$n_all" ] && { attached=1; break; }
      sleep 0.1
    done
    [ "$attached" = 1 ] || { cat "$WORK/strace.$f.err" >&2; die "strace did not attach to every worker of $t in 5 s"; }
    run_wrk "$t" "$STRACE_DURATION" "$WORK/wrk.strace.$f.txt" 1 "$STRACE_CONNS"
    kill -INT "$STRACE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$STRACE_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$STRACE_PID" strace
    STRACE_PID=""
    nreq=$(wrk_requests "$WORK/wrk.strace.$f.txt")
    total=$(strace_calls "$WORK/strace.$f.txt" | awk '{ n += $2 } END { print n + 0 }')
    if [ -z "$nreq" ] || [ "$nreq" -eq 0 ] || [ "$total" -eq 0 ]; then
      cat "$WORK/strace.$f.txt" "$WORK/strace.$f.err" >&2
      die "system-call run on $t: ${nreq:-no} requests, $total system calls counted"
    fi
    SYS[$t]=$(awk -v a="$total" -v n="$nreq" 'BEGIN { printf "%.2f", a / n }')
    say "system calls: $(printf "%-${NAME_W}s %6.2f per request (%s calls, %s requests under strace)" "$t" "${SYS[$t]}" "$total" "$nreq")"
  done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
fmt_range() {              # fmt_range FORMAT VALUE...: "lo-hi" with each end in FORMAT
  printf '%s\n' "${@:2}" | sort -g | awk -v f="$1" 'NR == 1 { lo = $1 } { hi = $1 } END { printf f "-" f, lo, hi }'
}
fmt_quartiles() {          # fmt_quartiles FORMAT VALUE...: "q1-q3" (nearest rank): the middle half of the values
  printf '%s\n' "${@:2}" | sort -g | awk -v f="$1" '{ v[NR] = $1 }
    END { a = int((NR + 3) / 4); b = int((3 * NR + 3) / 4); printf f "-" f, v[a], v[b] }'
}
{
  printf 'target\treq/s (median)\treq/s range\tp99 ms (median)\tCPU us/req (median)\tCPU range\tsyscalls/req\terrors\n'
  for t in $TARGETS; do
    # shellcheck disable=SC2086
    printf '%s\t%.0f\t%s\t%.3f\t%.3f\t%s\t%s\t%s\n' "$t" "$(median ${RPS[$t]})" "$(fmt_range %.0f ${RPS[$t]})" \
      "$(median ${P99[$t]})" "$(median ${CPU[$t]})" "$(fmt_range %.3f ${CPU[$t]})" "${SYS[$t]}" "${ERRS[$t]}"
  done
} >"$WORK/table.tsv"

# per_round A B SERIES: the ratio B/A of each round's values, one a line (rounds pair up by position)
per_round() {
  local -n sa=$3
  # shellcheck disable=SC2086  # the series are space-separated lists
  paste <(printf '%s\n' ${sa[$1]}) <(printf '%s\n' ${sa[$2]}) | awk '{ printf "%.4f\n", $2 / $1 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b / a }'; }
{
  printf 'comparison\treq/s: ratio of medians\tper round: median\tmiddle half\trange\tCPU/req: ratio of medians\tper round: median\tmiddle half\trange\tsyscalls/req ratio\n'
  for w in $WORKERS; do
    for pair in "base new" "base svc3" "new svc3"; do
      a="${pair% *}/$w"; b="${pair#* }/$w"
      # shellcheck disable=SC2046,SC2086
      printf '%s vs %s\t%s\t%.3f\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n' "$b" "$a" \
        "$(ratio "$(median ${RPS[$a]})" "$(median ${RPS[$b]})")" "$(median $(per_round "$a" "$b" RPS))" \
        "$(fmt_quartiles %.3f $(per_round "$a" "$b" RPS))" "$(fmt_range %.3f $(per_round "$a" "$b" RPS))" \
        "$(ratio "$(median ${CPU[$a]})" "$(median ${CPU[$b]})")" "$(median $(per_round "$a" "$b" CPU))" \
        "$(fmt_quartiles %.3f $(per_round "$a" "$b" CPU))" "$(fmt_range %.3f $(per_round "$a" "$b" CPU))" \
        "$(if [ "${SYS[$a]}" = - ]; then echo -; else ratio "${SYS[$a]}" "${SYS[$b]}"; fi)"
    done
  done
} >"$WORK/compare.tsv"

echo
echo "== nextup A/B — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   wrk -t$THREADS -c$CONNS -d${DURATION}s, $RUNS interleaved round(s), warm-up ${WARMUP}s per target, 100-byte body, keep-alive GET"
[ "$STRACE_ON" = 1 ] && echo "   system calls: one run per target under strace -c (workers only), wrk -t1 -c$STRACE_CONNS -d${STRACE_DURATION}s"
echo "   base: ${BIN[base]}"
echo "   new:  ${BIN[new]}  (svc3: the same binary, 3 services, Host: payments)"
echo "   $(nproc) CPUs, Linux $(uname -r), load average $LOAD_START at the start, $LOAD_END at the end"
echo
print_table "$WORK/table.tsv"
echo
print_table "$WORK/compare.tsv"
echo
echo "   ratios are B/A (\"new/1 vs base/1\": new over base; req/s above 1 and CPU below 1 favour new);"
echo "   per round: the ratio of the two runs of the same round; its middle half (quartiles) and range are what"
echo "   this machine's noise allows (a round disturbed by other work widens the range); a difference inside"
echo "   the middle half is not measurable here"
say "done"
