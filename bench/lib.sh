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

show_logs() {              # show_logs FILE...: the last lines of each non-empty file, on stderr
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "--- $f (last 20 lines):" >&2
    tail -n 20 "$f" >&2
  done
}

# note_load: the load average now into LOAD_START, with a warning when the machine is already busy.
note_load() {
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    say "warning: the machine is busy (load average $LOAD_START on $(nproc) CPUs): expect noisy numbers"
  fi
}

# print_table FILE: a tab-separated table as aligned text, first column left-aligned, the others
# right-aligned, a dashed rule under the header row.
print_table() {
  awk -F'\t' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
    END { for (r = 1; r <= n; r++) { line = ""
            for (i = 1; i <= nf; i++) line = line (i == 1 ? sprintf("%-" w[i] "s", c[r, i]) : sprintf("  %" w[i] "s", c[r, i]))
            print line
            if (r == 1) { line = ""; for (i = 1; i <= nf; i++) { d = sprintf("%" w[i] "s", ""); gsub(/ /, "-", d); line = line (i == 1 ? d : "  " d) } print line } } }' \
    "$1"
}

# strace_calls FILE: the table of `strace -c` in FILE as "syscall calls" lines, one per system
# call, the "total" line left out. The rows sit between the two dashed rules; a row is
# "% time, seconds, usecs/call, calls, [errors], syscall" (errors blank when there were none).
strace_calls() {
  awk '/^-+ -+/ { rule++; next }
       rule == 1 && NF >= 5 && $4 ~ /^[0-9]+$/ { print $NF, $4 }' "$1"
}

# cpu_ns PID...: CPU time in ns used so far by every thread of the given processes (first field
# of /proc/PID/task/TID/schedstat, summed). Threads that have exited are not counted.
cpu_ns() {
  local p f sum=0 ns
  for p in "$@"; do
    for f in /proc/"$p"/task/*/schedstat; do
      [ -r "$f" ] || continue
      read -r ns _ <"$f" 2>/dev/null || continue
      sum=$(( sum + ns ))
    done
  done
  echo "$sum"
}

# start_backend DIR LISTEN BODY CONNS: the benchmarks' backend, nginx with one worker serving BODY on
# LISTEN (host:port) with keep-alive, CONNS connections, its config and logs in DIR; needs $NGINX.
# Sets BACKEND_PID (the caller stops it); dies when it does not come up within 10 s.
start_backend() {
  local dir=$1 listen=$2 body=$3 conns=$4 port=${2##*:}
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $((conns * 2));
events { worker_connections $conns; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {
        listen $listen reuseport backlog=4096;
        default_type text/plain;
        location / { return 200 "$body"; }
    }
}
EOF
  "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    || die "backend nginx config rejected (see above)"
  "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    </dev/null >"$dir/stdout.log" 2>&1 &
  BACKEND_PID=$!
  for _ in $(seq 100); do
    kill -0 "$BACKEND_PID" 2>/dev/null || { show_logs "$dir/stdout.log" "$dir/error.log"; die "backend exited during startup"; }
    port_free "$port" || break
    sleep 0.1
  done
  if port_free "$port"; then die "backend is not listening on $listen after 10 s"; fi
}
