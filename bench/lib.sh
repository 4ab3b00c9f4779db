# shellcheck shell=bash
# bench/lib.sh — helpers shared by bench/run.sh and bench/churn.sh (sourced, not run).
# The caller sets LIB_NAME (the prefix of its messages) before sourcing, then calls
# nextup_bin_arg "$@" to take its one argument, the nextup binary, into NEXTUP_BIN.

die() { echo "$LIB_NAME: error: $*" >&2; exit 1; }
say() { printf '[%s %5ss] %s\n' "$LIB_NAME" "$(( SECONDS - T0 ))" "$*"; }
T0=$SECONDS

nextup_bin_arg() {
  [ $# -eq 1 ] || die "usage: $0 path/to/nextup"
  NEXTUP_BIN=$1
  [ -x "$NEXTUP_BIN" ] || die "$NEXTUP_BIN is not an executable (build it with: make build/nextup)"
  case "$NEXTUP_BIN" in /*) ;; *) NEXTUP_BIN="$PWD/$NEXTUP_BIN" ;; esac
}

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# stop_pid PID NAME: SIGTERM, wait up to 5 s, then SIGKILL. Returns 0; the process's exit status is in
# STOP_STATUS (run.sh ignores it under set -e, churn.sh checks nextup's).
# shellcheck disable=SC2034  # read by the scripts that source this file
stop_pid() {
  local pid=$1 name=$2
  STOP_STATUS=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "${LIB_NAME:-bench}: $name (pid $pid) still alive 5 s after SIGTERM, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || STOP_STATUS=$?
  return 0
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

to_ms() {                  # wrk latency "245.00us" / "1.20ms" / "2.00s" / "1.00m" -> ms
  awk -v x="$1" 'BEGIN {
    n = x + 0; u = x; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    else if (u == "h") n *= 3600000; else if (u != "ms") { print "NaN"; exit }
    printf "%.3f", n }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
