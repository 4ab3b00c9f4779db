#!/usr/bin/env bash
# bench/churn.sh — what the BPF programs cost under connection churn: NEXTUP_BPF=on vs off.
#
# usage: bench/churn.sh path/to/nextup          (needs root: NEXTUP_BPF=on loads BPF programs)
#        CHURN_PODS="1 10 30" bench/churn.sh path/to/nextup [path/to/old/nextup]
#                                               (the cost per connection with N pods: churn_pods.sh)
#
# Not part of `make test` or `make bench`. One fast backend (nginx, 1 worker, a fixed 100-byte
# body) and nextup (2 workers) in front of it; wrk sends GETs with "Connection: close", so every
# request is a new client connection (a connect, an accept, a close: inet_sock_set_state fires on
# both ends). Four configurations:
#   off        NEXTUP_BPF=off, upstream keep-alive (NEXTUP_POOL_MAX_IDLE default)
#   on         NEXTUP_BPF=on,  the same
#   off/pool0  NEXTUP_BPF=off, NEXTUP_POOL_MAX_IDLE=0: every request also opens a new upstream
#              connection (every upstream connect passes the tp_btf hooks and makes a map update)
#   on/pool0   NEXTUP_BPF=on,  the same
# nextup is started afresh for every run and stopped after it: while a NEXTUP_BPF=on nextup lives,
# its programs run for every TCP socket of the host, so an "off" run must not overlap one. Runs are
# interleaved (round r: each configuration once, the off/on order flipped every other round) so
# that drift hits both alike. The programs of OTHER processes (another nextup, a test suite) would
# run in the "off" runs too: they are counted before every run and reported.
#
# Printed, and written to bench/results/churn.md: per configuration the median req/s, p50 and p99
# over the runs, every run's req/s, and for each pool setting the on/off ratio and how much slower
# "on" is (goal: under 3 %). For "on" runs also the upstream connects the kernel counted (read back
# from /debug/peers), proving the hooks were on the path.
#
# Environment (defaults in brackets):
#   CHURN_DURATION     seconds per wrk run          [10]
#   CHURN_CONNECTIONS  wrk connections              [32]
#   CHURN_THREADS      wrk threads                  [2]
#   CHURN_RUNS         runs per configuration       [5]
#   CHURN_WARMUP       seconds of warm-up per run   [1]
#   CHURN_BPF_STATS    1: after the timed runs, one more run of "on" and "on/pool0" with
#                      kernel.bpf_stats_enabled=1 (restored afterwards) to measure the CPU time the
#                      programs themselves take per request; 0: skip it      [1]
# The timed runs compare throughput, which on a small shared machine is noisy (several % run to
# run); the bpf_stats run measures the programs' own cost directly (run_time_ns of nextup's
# programs, found by the pinned map they use), so the two together bound the overhead.
#
# Everything started here is stopped by PID; the temp dir and the pin dirs are removed; bpffs is
# mounted at /sys/fs/bpf if it is not, and unmounted at the end only if this script mounted it and
# it is empty again.
set -euo pipefail

# CHURN_PODS="1 10 30": instead, the BPF time per connection with that many pods running nextup on
# the node (bench/churn_pods.sh; a second argument: an older nextup to compare with, same run).
if [ -n "${CHURN_PODS:-}" ]; then
  exec "$(dirname "${BASH_SOURCE[0]}")/churn_pods.sh" "$@"
fi

LIB_NAME=churn
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nextup_bin_arg "$@"
[ "$(id -u)" -eq 0 ] || die "needs root: NEXTUP_BPF=on loads BPF programs and pins maps on bpffs"
[ -r /sys/kernel/btf/vmlinux ] || die "the kernel has no BTF (/sys/kernel/btf/vmlinux): NEXTUP_BPF=on cannot load"

NGINX=/usr/sbin/nginx
WRK=/usr/bin/wrk
for b in "$NGINX" "$WRK"; do
  [ -x "$b" ] || die "$b not found (install with: scripts/deps.sh bench)"
done
command -v curl >/dev/null || die "curl not found"
command -v bpftool >/dev/null || die "bpftool not found (scripts/deps.sh build)"

DURATION=${CHURN_DURATION:-10}
CONNS=${CHURN_CONNECTIONS:-32}
THREADS=${CHURN_THREADS:-2}
RUNS=${CHURN_RUNS:-5}
WARMUP=${CHURN_WARMUP:-1}
BPF_STATS=${CHURN_BPF_STATS:-1}
for v in DURATION CONNS THREADS RUNS WARMUP BPF_STATS; do
  is_uint "${!v}" || die "CHURN_${v} must be a non-negative integer, got '${!v}'"
done
if [ "$DURATION" -lt 1 ] || [ "$CONNS" -lt 1 ] || [ "$THREADS" -lt 1 ] || [ "$RUNS" -lt 1 ]; then
  die "CHURN_DURATION, CHURN_CONNECTIONS, CHURN_THREADS and CHURN_RUNS must be >= 1"
fi
[ "$THREADS" -le "$CONNS" ] || THREADS=$CONNS

REPO=$(cd "$(dirname "$0")/.." && pwd)
RESULTS_DIR="$REPO/bench/results"
BPFFS=/sys/fs/bpf
CONFIGS="off on off/pool0 on/pool0"

# ---------------------------------------------------------------- cleanup
WORK=""
BACKEND_PID=""
NEXTUP_PID=""
PIN_DIR=""
MOUNTED_BPFFS=""
STATS_RESTORE=""          # kernel.bpf_stats_enabled to put back

remove_pins() {            # remove_pins DIR: the pinned maps and the directory
  [ -n "$1" ] && [ -d "$1" ] || return 0
  rm -f "$1"/peer_stats "$1"/peer_stats_meta
  rmdir "$1" 2>/dev/null || echo "churn: warning: could not remove $1 (not empty?)" >&2
}

cleanup() {
  local rc=$? left
  trap - EXIT INT TERM
  [ -n "$NEXTUP_PID" ] && { stop_pid "$NEXTUP_PID" nextup || true; }
  [ -n "$BACKEND_PID" ] && { stop_pid "$BACKEND_PID" backend || true; }
  remove_pins "$PIN_DIR"
  [ -n "$STATS_RESTORE" ] && sysctl -qw kernel.bpf_stats_enabled="$STATS_RESTORE"
  if [ -n "$MOUNTED_BPFFS" ]; then
    left=$(find "$BPFFS" -mindepth 1 -maxdepth 1 ! -name maps.debug ! -name progs.debug -printf '%f ')
    if [ -z "$left" ]; then umount "$BPFFS" || true
    else echo "churn: note: leaving $BPFFS mounted (mounted here): it holds $left" >&2; fi
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/nextup-churn.XXXXXX)
chmod 755 "$WORK"          # nginx workers run as nobody when started by root

if ! awk -v m="$BPFFS" '$2 == m { t = $3 } END { exit !(t == "bpf") }' /proc/self/mounts; then
  mount -t bpf bpf "$BPFFS" || die "bpffs is not mounted at $BPFFS and mounting it failed"
  MOUNTED_BPFFS=1
fi

# ---------------------------------------------------------------- ports
USED_PORTS=" "
pick_port() {              # pick_port VAR: a free port below the ephemeral range, into VAR
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if port_free "$p"; then USED_PORTS="$USED_PORTS$p "; printf -v "$1" '%s' "$p"; return 0; fi
  done
  die "no free loopback port found"
}
pick_port BACKEND_PORT
pick_port NEXTUP_PORT
pick_port ADMIN_PORT
BACKEND="127.0.0.1:$BACKEND_PORT"

n_runs=$(( RUNS * 4 ))
est=$(( n_runs * (DURATION + WARMUP + 2) + 5 ))
say "churn bench: $RUNS run(s) x 4 configurations x ${DURATION}s, wrk -t$THREADS -c$CONNS -H 'Connection: close'"
note_load
say "estimated total run time: ~${est}s"

# ---------------------------------------------------------------- backend
BODY=$(printf 'nextup-churn-%087d' 0)    # 13 + 87 = 100 bytes
[ ${#BODY} -eq 100 ] || die "internal: body is ${#BODY} bytes"
start_backend "$WORK/backend" "$BACKEND" "$BODY" 8192
say "backend: nginx (1 worker) on $BACKEND"

# ---------------------------------------------------------------- one run
admin() { curl -sS --max-time 2 "http://127.0.0.1:$ADMIN_PORT$1"; }
metric() {                 # metric NAME: its value in /metrics (0 if absent)
  admin /metrics | awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'
}
# peer_stats programs attached right now (bpftool here does not tell whose: callers subtract their own).
set_state_progs() { bpftool prog show 2>/dev/null | grep -c 'name handle_set_state' || true; }

start_nextup() {           # start_nextup MODE POOL
  local mode=$1 pool=$2 code ready=""
  local -a env=(NEXTUP_LISTEN="127.0.0.1:$NEXTUP_PORT" NEXTUP_ADMIN="127.0.0.1:$ADMIN_PORT"
                NEXTUP_UPSTREAMS="$BACKEND" NEXTUP_WORKERS=2 NEXTUP_LOG_LEVEL=error NEXTUP_BPF="$mode")
  [ -n "$pool" ] && env+=(NEXTUP_POOL_MAX_IDLE="$pool")
  if [ "$mode" = on ]; then
    PIN_DIR="$BPFFS/nextup-churn-$$"
    remove_pins "$PIN_DIR"
    env+=(NEXTUP_BPF_PIN_DIR="$PIN_DIR")
  fi
  env -i PATH="$PATH" "${env[@]}" "$NEXTUP_BIN" </dev/null >"$WORK/nextup.log" 2>&1 &
  NEXTUP_PID=$!
  for _ in $(seq 100); do
    kill -0 "$NEXTUP_PID" 2>/dev/null || { show_logs "$WORK/nextup.log"; die "nextup ($mode) exited during startup"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" || true)
    [ "$code" = 200 ] && { ready=1; break; }
    sleep 0.1
  done
  [ -n "$ready" ] || { show_logs "$WORK/nextup.log"; die "nextup ($mode): /readyz not 200 after 10 s"; }
  code=$(curl -sS -o "$WORK/check.body" -w '%{http_code}' --max-time 5 -H 'Connection: close' \
    "http://127.0.0.1:$NEXTUP_PORT/" || true)
  if [ "$code" != 200 ] || [ "$(cat "$WORK/check.body")" != "$BODY" ]; then
    die "nextup ($mode) answered '$code' to the check GET"
  fi
  local loaded
  loaded=$(metric nextup_bpf_loaded)
  if [ "$mode" = on ] && [ "$loaded" != 1 ]; then die "NEXTUP_BPF=on but nextup_bpf_loaded is '$loaded'"; fi
  if [ "$mode" = off ] && [ "$loaded" != 0 ]; then die "NEXTUP_BPF=off but nextup_bpf_loaded is '$loaded'"; fi
}

stop_nextup() {
  local st=0
  stop_pid "$NEXTUP_PID" nextup
  st=$STOP_STATUS
  NEXTUP_PID=""
  [ "$st" = 0 ] || { show_logs "$WORK/nextup.log"; die "nextup exited with status $st after SIGTERM"; }
  remove_pins "$PIN_DIR"
  PIN_DIR=""
}


run_wrk() {                # run_wrk SECONDS OUTFILE
  "$WRK" -t"$THREADS" -c"$CONNS" -d"${1}s" --latency -H 'Connection: close' \
    "http://127.0.0.1:$NEXTUP_PORT/" >"$2" 2>&1 || { cat "$2" >&2; die "wrk failed"; }
  kill -0 "$NEXTUP_PID" 2>/dev/null || { show_logs "$WORK/nextup.log"; die "nextup died during the run"; }
}

declare -A RPS=() P50=() P99=() ERRS=() UPC=() KUPC=() FOREIGN=()
for c in $CONFIGS; do RPS[$c]=""; P50[$c]=""; P99[$c]=""; ERRS[$c]=0; UPC[$c]=""; KUPC[$c]=""; FOREIGN[$c]=0; done

one_run() {                # one_run CONFIG ROUND
  local c=$1 r=$2 mode pool out rps p50 p99 errs up0 up1 kup foreign n
  mode=${c%%/*}
  pool=""
  [ "$c" != "${c%/pool0}" ] && pool=0
  foreign=$(set_state_progs)                 # before ours: all of them are someone else's
  start_nextup "$mode" "$pool"
  [ "$WARMUP" -gt 0 ] && run_wrk "$WARMUP" "$WORK/warmup.txt"
  up0=$(metric nextup_upstream_connects_total)
  out="$WORK/wrk.$r.${c//\//_}.txt"
  run_wrk "$DURATION" "$out"
  up1=$(metric nextup_upstream_connects_total)
  n=$(set_state_progs)                      # at the end of the run, ours taken out
  [ "$mode" = on ] && n=$(( n - 1 ))
  [ "$n" -gt "$foreign" ] && foreign=$n
  FOREIGN[$c]=$(( ${FOREIGN[$c]} + foreign ))
  [ "$foreign" -gt 0 ] && say "warning: $foreign peer_stats program(s) of other processes were attached during this run"
  kup="-"
  if [ "$mode" = on ]; then
    sleep 0.4   # one health interval (250 ms): /debug/peers shows the map's latest counts
    kup=$(admin /debug/peers | grep -o '"connects_established": [0-9]*' | head -1 | awk '{ print $2 }')
    kup=${kup:-0}
  fi
  stop_nextup
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(awk '$1 == "50%" { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then cat "$out" >&2; die "could not parse wrk's output ($c)"; fi
  p50=$(to_ms "$p50"); p99=$(to_ms "$p99")
  errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
              /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
              END { print n + 0 }' "$out")
  RPS[$c]="${RPS[$c]} $rps"; P50[$c]="${P50[$c]} $p50"; P99[$c]="${P99[$c]} $p99"
  ERRS[$c]=$(( ${ERRS[$c]} + errs ))
  UPC[$c]="${UPC[$c]} $(( ${up1%.*} - ${up0%.*} ))"
  KUPC[$c]="${KUPC[$c]} $kup"
  say "round $r/$RUNS  $(printf '%-9s %9.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s   upstream connects %s   kernel-counted upstream connects (total) %s' \
    "$c" "$rps" "$p50" "$p99" "$errs" "$(( ${up1%.*} - ${up0%.*} ))" "$kup")"
}

for r in $(seq "$RUNS"); do
  if [ $(( r % 2 )) -eq 1 ]; then order="off on off/pool0 on/pool0"; else order="on off on/pool0 off/pool0"; fi
  for c in $order; do one_run "$c" "$r"; done
done

# ---------------------------------------------------------------- the programs' own cost
# Sum of run_time_ns and run_cnt over the programs that use map <id> (nextup's own, not another
# process's peer_stats programs).
prog_stats() {
  bpftool prog show 2>/dev/null | awk -v m="$1" '
    /^[0-9]+:/ { rt = 0; rc = 0; for (i = 1; i < NF; i++) { if ($i == "run_time_ns") rt = $(i + 1); if ($i == "run_cnt") rc = $(i + 1) } }
    /map_ids/ { for (i = 1; i < NF; i++) if ($i == "map_ids") { n = split($(i + 1), ids, ","); for (j = 1; j <= n; j++) if (ids[j] == m) { t += rt; c += rc } } }
    END { printf "%.0f %.0f\n", t, c }'
}
declare -A SNS=() SINV=() SCPU=()
if [ "$BPF_STATS" -gt 0 ]; then
  STATS_RESTORE=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1 || die "cannot enable kernel.bpf_stats_enabled"
  for c in on on/pool0; do
    pool=""; [ "$c" = on/pool0 ] && pool=0
    start_nextup on "$pool"
    mapid=$(bpftool map show pinned "$PIN_DIR/peer_stats" | awk -F: 'NR == 1 { print $1 }')
    [ -n "$mapid" ] || die "cannot find the id of the pinned map in $PIN_DIR"
    [ "$WARMUP" -gt 0 ] && run_wrk "$WARMUP" "$WORK/warmup.txt"
    read -r t0 n0 < <(prog_stats "$mapid")
    out="$WORK/wrk.stats.${c//\//_}.txt"
    run_wrk "$DURATION" "$out"
    read -r t1 n1 < <(prog_stats "$mapid")
    stop_nextup
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    if [ -z "$reqs" ] || [ "$reqs" -le 0 ]; then cat "$out" >&2; die "could not parse wrk's request count ($c, bpf_stats run)"; fi
    SNS[$c]=$(awk -v t=$(( t1 - t0 )) -v r="$reqs" 'BEGIN { printf "%.0f", t / r }')
    SINV[$c]=$(awk -v n=$(( n1 - n0 )) -v r="$reqs" 'BEGIN { printf "%.1f", n / r }')
    SCPU[$c]=$(awk -v t=$(( t1 - t0 )) -v d="$DURATION" -v p="$(nproc)" 'BEGIN { printf "%.2f", t / (d * p * 1e9) * 100 }')
    say "bpf_stats run  $(printf '%-9s %9d requests   programs: %s ns and %s invocations per request, %s %% of the CPUs' \
      "$c" "$reqs" "${SNS[$c]}" "${SINV[$c]}" "${SCPU[$c]}")"
  done
  sysctl -qw kernel.bpf_stats_enabled="$STATS_RESTORE"
  STATS_RESTORE=""
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
declare -A MRPS=() MP50=() MP99=()
for c in $CONFIGS; do
  # shellcheck disable=SC2086
  { MRPS[$c]=$(median ${RPS[$c]}); MP50[$c]=$(median ${P50[$c]}); MP99[$c]=$(median ${P99[$c]}); }
done
cmp() {                    # cmp ON OFF -> "ratio<TAB>slower %"
  awk -v a="${MRPS[$1]}" -v b="${MRPS[$2]}" 'BEGIN { printf "%.3f\t%+.1f %%", a / b, (b - a) / b * 100 }'
}
{
  echo $'configuration\treq/s (median)\tp50 ms\tp99 ms\treq/s per run\tspread\ton/off\tslower\terrors\tupstream connects per run\tforeign BPF progs'
  for c in $CONFIGS; do
    # shellcheck disable=SC2086
    runs=$(printf '%s\n' ${RPS[$c]} | awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $1 }')
    # shellcheck disable=SC2086
    ups=$(printf '%s\n' ${UPC[$c]} | awk '{ printf "%s%s", (NR > 1 ? " / " : ""), $1 }')
    case "$c" in
      on) rel=$(cmp on off) ;;
      on/pool0) rel=$(cmp on/pool0 off/pool0) ;;
      *) rel=$'1.000\t-' ;;
    esac
    # shellcheck disable=SC2086
    spread=$(printf '%s\n' ${RPS[$c]} | awk -v m="${MRPS[$c]}" 'NR == 1 { lo = hi = $1 } { if ($1 < lo) lo = $1; if ($1 > hi) hi = $1 }
      END { printf "%.1f %%", (hi - lo) / m * 100 }')
    printf '%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "${MRPS[$c]}" "${MP50[$c]}" "${MP99[$c]}" "$runs" "$spread" "$rel" \
      "${ERRS[$c]}" "$ups" "${FOREIGN[$c]}"
  done
} >"$WORK/table.tsv"

params="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency -H 'Connection: close' (a new client connection per request), $RUNS interleaved run(s) per configuration, warm-up ${WARMUP}s per run, 100-byte body"
machine="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), load average $LOAD_START at the start, $LOAD_END at the end"
versions="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||'), wrk $( { "$WRK" --version 2>&1 || true; } | awk 'NR == 1 { print $2 }'); nextup $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may differ)"
if [ "$BPF_STATS" -gt 0 ]; then
  stats_note="programs' own cost (one extra run each with kernel.bpf_stats_enabled=1, run_time_ns of nextup's programs): on: ${SNS[on]} ns and ${SINV[on]} invocations per request, ${SCPU[on]} % of the CPUs; on/pool0: ${SNS[on/pool0]} ns and ${SINV[on/pool0]} invocations per request, ${SCPU[on/pool0]} % of the CPUs"
else
  stats_note="programs' own cost: not measured (CHURN_BPF_STATS=0)"
fi
kernel_note="kernel-counted upstream connects (NEXTUP_BPF=on, total in the map at the end of each run, warm-up and check included): on: ${KUPC[on]# }; on/pool0: ${KUPC[on/pool0]# }"

echo
echo "== nextup churn bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $params"
echo "   $machine"
echo "   $versions"
echo
print_table "$WORK/table.tsv"
echo
echo "   $kernel_note"
echo "   $stats_note"
echo "   spread: (max - min) / median of the runs' req/s; an on/off difference below it is not resolved."
echo "   on/off: ratio of median req/s with the programs attached to without (same pool setting);"
echo "   slower: (off - on) / off; goal: under 3 %. foreign BPF progs: peer_stats programs of other"
echo "   processes attached during that configuration's runs (summed); they tax every run they overlap."

mkdir -p "$RESULTS_DIR"
{
  echo "# nextup churn bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- $params"
  echo "- $machine"
  echo "- $versions"
  echo "- nextup: 2 workers, 1 upstream (nginx, 1 worker); a fresh nextup per run; NEXTUP_BPF=on runs with"
  echo "  their own pin dir (removed after the run); pool0 = NEXTUP_POOL_MAX_IDLE=0 (a new upstream connection per request)"
  echo
  awk -F'\t' 'NR == 1 { s = "|"; d = "|"; for (i = 1; i <= NF; i++) { s = s " " $i " |"; d = d (i == 1 ? "---|" : "---:|") }
                        print s; print d; next }
              { s = "|"; for (i = 1; i <= NF; i++) s = s " " $i " |"; print s }' "$WORK/table.tsv"
  echo
  echo "Medians over $RUNS run(s). *spread*: (max - min) / median of the runs' req/s: an on/off difference smaller"
  echo "than the spread is not resolved by this run."
  echo "*on/off*: ratio of median req/s with the BPF programs attached to without, same"
  echo "pool setting; *slower*: (off - on) / off, goal under 3 %. *upstream connects*: nextup_upstream_connects_total"
  echo "during the measured run. *foreign BPF progs*: peer_stats programs of other processes attached during that"
  echo "configuration's runs (summed over runs; 0 means the off runs ran without any program attached)."
  echo "$kernel_note."
  echo
  echo "${stats_note^}. The CPU share is the programs' time over all CPUs' time during the run: it bounds the"
  echo "slowdown they can cause when the machine is CPU-bound, independent of run-to-run noise (see *spread*)."
  echo "wrk, nextup and the backend share the machine's CPUs."
} >"$RESULTS_DIR/churn.md"
echo "   written: bench/results/churn.md"
say "done"
