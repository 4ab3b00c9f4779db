#!/usr/bin/env bash
# bench/run.sh — throughput, latency, memory, CPU time and system calls per request of nextup
# next to nginx and HAProxy.
#
# usage: bench/run.sh path/to/nextup          (what `make bench` runs)
#
# One fast backend (nginx, 1 worker, a fixed 100-byte body, keep-alive) and, in front of it,
# each proxy once per worker count in BENCH_WORKERS (default "1 2"), each on its own loopback
# port, all with upstream keep-alive: nextup (NEXTUP_WORKERS=N), nginx (worker_processes N,
# proxy_pass + upstream keepalive) and HAProxy (nbthread N, http-reuse always). A target is
# named KIND/N (nextup/1, nginx/2, ...). wrk sends small keep-alive GETs to the backend directly
# and to each proxy, in interleaved rounds (round 1: every target, round 2: every target, ...)
# so that drift on the machine hits every target alike.
#
# TLS (BENCH_TLS=1, the default): the same backend nginx also listens with `ssl` on
# a second loopback port, with a CA and a server certificate (SAN DNS:localhost,
# IP:127.0.0.1) made with `openssl` in the temp dir at run time, and two more
# kinds join the same rounds, per worker count: nextup-tls (NEXTUP_UPSTREAM_TLS=on,
# verified against that CA, the upstream given as 127.0.0.1:<port> so the IP SAN is
# checked) and nginx-tls (proxy_pass https:// to an upstream with keepalive 64,
# proxy_ssl_verify on against that CA, proxy_ssl_name localhost,
# proxy_ssl_session_reuse on). wrk still speaks plain HTTP to both: only the proxy ->
# backend leg is TLS. Their "vs nginx" cell is like for like (nextup-tls against
# nginx-tls), "vs direct" is against the plain backend, and there is no HAProxy
# TLS target ("vs haproxy": -). BENCH_TLS=0 leaves the TLS part out entirely.
#
# Printed, and written to bench/results/latest.md:
# - per target: the median req/s, median p50 and p99 latency (ms) over the runs, every run's
#   req/s, each proxy's median req/s relative to direct, to the nginx proxy and to HAProxy with
#   the same worker count, errors seen by wrk, each proxy's peak RSS (VmRSS sampled during the
#   runs; nginx: master plus workers summed), and two counts that hold still where req/s does not:
# - CPU us/req: the first field of /proc/PID/task/*/schedstat (ns on CPU), summed over every
#   thread of the proxy's processes (nextup, HAProxy: the one process; nginx: master and
#   workers), read right before and right after each timed wrk run, the difference divided by
#   the requests that run completed ("N requests in" of wrk's output); median over the rounds.
# - syscalls/req: after the timed rounds (strace slows a process down, so never during them),
#   one more wrk run per proxy, -t1 -c$BENCH_STRACE_CONNECTIONS -d$BENCH_STRACE_DURATION, with
#   `strace -c` attached to the proxy's workers only: nginx's worker processes (-f), HAProxy's
#   process (-f: its nbthread threads), nextup's threads but the main one (the main thread runs
#   the admin listener, health checks and signals; each -p TID alone, no -f). The run starts
#   once every traced thread names strace as its TracerPid; strace gets SIGINT after it, detaches
#   and writes its table. The sum of the table's rows divided by the requests wrk completed in
#   that run; also per call (readv, writev, read, write, recvfrom, sendto, epoll_wait, epoll_ctl,
#   ioctl, any other at 0.05 a request or more; the rest as "other"). The count includes the
#   idle moment around the run and the connections' accept and close, a share of 32 connections
#   over all the run's requests.
# - issue 11's goals per worker count, met or not: nextup's system calls per request (<= 4.2)
#   and its ratio to nginx's (<= 0.85), CPU per request against nginx (<= 0.85), req/s against
#   nginx (>= 1.20), p99 against nginx (<= 1.00), nextup-tls req/s against nginx-tls (>= 1.00).
#
# Environment (defaults in brackets):
#   BENCH_DURATION     seconds per wrk run                      [10]
#   BENCH_CONNECTIONS  wrk connections                          [50]
#   BENCH_THREADS      wrk threads                              [2]
#   BENCH_RUNS         rounds                                   [3]
#   BENCH_WARMUP       seconds of warm-up per target, 0 = none  [2]
#   BENCH_TLS          1 = add nextup-tls and nginx-tls, 0 = no [1]
#   BENCH_WORKERS      worker counts, one set of proxies each   [1 2]
#   BENCH_STRACE       1 = the system-call runs, 0 = none       [1]
#   BENCH_STRACE_DURATION     seconds of each strace run        [5]
#   BENCH_STRACE_CONNECTIONS  wrk connections in it (1 thread)  [32]
#
# Everything started here (backend, proxies, the RSS sampler, strace) is stopped by PID when
# the script exits, strace first so the proxies run on untraced; the temp dir is removed. Any
# target that does not answer 200 before the runs, dies during them, or fails to start is a
# loud failure (non-zero exit), and so is strace not attaching within 5 s or counting nothing.
# Access logs are off in all three proxies (nginx `access_log off`, HAProxy without
# `log`, NEXTUP_ACCESS_LOG=off): like for like, the proxying work alone.
# Note: on a small machine wrk, the proxy and the backend share the CPUs; the
# numbers compare the proxies with each other under the same constraint, they are
# not absolute capacity figures.
set -euo pipefail

LIB_NAME=bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nextup_bin_arg "$@"

NGINX=/usr/sbin/nginx
HAPROXY=/usr/sbin/haproxy
WRK=/usr/bin/wrk
for b in "$NGINX" "$HAPROXY" "$WRK"; do
  [ -x "$b" ] || die "$b not found (install with: scripts/deps.sh bench)"
done
command -v curl >/dev/null || die "curl not found"

case "${BENCH_TLS:-1}" in
  1|on|yes|true)   TLS=1 ;;
  0|off|no|false)  TLS=0 ;;
  *) die "BENCH_TLS must be 1 or 0, got '${BENCH_TLS}'" ;;
esac
if [ "$TLS" = 1 ]; then
  command -v openssl >/dev/null || die "openssl not found (needed for the TLS targets; BENCH_TLS=0 skips them)"
fi

DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-2}
RUNS=${BENCH_RUNS:-3}
WARMUP=${BENCH_WARMUP:-2}
WORKERS=${BENCH_WORKERS:-1 2}
STRACE_DURATION=${BENCH_STRACE_DURATION:-5}
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
  STRACE=$(command -v strace) || die "strace not found (install with: scripts/deps.sh bench; BENCH_STRACE=0 skips the system-call runs)"
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
RESULTS_DIR="$REPO/bench/results"

# A target is "direct" (the backend) or KIND/WORKERS, KIND one of nextup nginx haproxy
# nextup-tls nginx-tls: one running proxy per kind and worker count, all started at once.
KINDS="nextup nginx haproxy"
[ "$TLS" = 1 ] && KINDS="$KINDS nextup-tls nginx-tls"
PROXIES=""
for w in $WORKERS; do
  for k in $KINDS; do PROXIES="$PROXIES $k/$w"; done
done
PROXIES=${PROXIES# }
TARGETS="direct $PROXIES"
N_TARGETS=$(wc -w <<<"$TARGETS")
N_PROXIES=$(wc -w <<<"$PROXIES")
kind_of() { echo "${1%/*}"; }
workers_of() { echo "${1#*/}"; }
fname() { echo "${1//\//.}"; }        # a target as a file-name part: nextup/2 -> nextup.2

# ---------------------------------------------------------------- cleanup
WORK=""
declare -A PID=()          # target -> main pid
SAMPLER_PID=""
STRACE_PID=""
declare -A NEXTUP_EXIT=()  # nextup/N, nextup-tls/N -> exit status after SIGTERM

cleanup() {
  local rc=$? t st
  trap - EXIT INT TERM
  # strace first: SIGTERM makes it detach from the proxy's threads, which then run on untraced
  [ -n "$STRACE_PID" ] && stop_pid "$STRACE_PID" strace
  [ -n "$SAMPLER_PID" ] && stop_pid "$SAMPLER_PID" sampler
  for t in $PROXIES direct; do   # the backend last
    [ -n "${PID[$t]:-}" ] || continue
    stop_pid "${PID[$t]}" "$t"
    st=0; wait "${PID[$t]}" 2>/dev/null || st=$?
    case "$t" in nextup/*|nextup-tls/*) NEXTUP_EXIT[$t]=$st ;; esac
  done
  for t in "${!NEXTUP_EXIT[@]}"; do
    st=${NEXTUP_EXIT[$t]}
    if [ "$st" != 0 ]; then
      echo "bench: note: $t exited with status $st after SIGTERM (expected 0)" >&2
      [ -n "$WORK" ] && show_logs "$WORK/$(fname "$t").log"
    fi
  done
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/nextup-bench.XXXXXX)
chmod 755 "$WORK"          # nginx workers run as nobody when started by root

# ---------------------------------------------------------------- ports
# A port is taken as free when nothing accepts a connection on it; ports come from
# 20000-31999, below the kernel's usual ephemeral range, so wrk's and the proxies'
# own outgoing connections do not take them.
USED_PORTS=" "
pick_port() {              # pick_port VAR: a free port not handed out before, into VAR
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 12000 ))   # below the usual ephemeral range (32768-)
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if port_free "$p"; then USED_PORTS="$USED_PORTS$p "; printf -v "$1" '%s' "$p"; return 0; fi
  done
  die "no free loopback port found"
}
declare -A PORT=() ADMIN=()
for t in $TARGETS; do pick_port "PORT[$t]"; done
for t in $PROXIES; do
  case "$t" in nextup/*|nextup-tls/*) pick_port "ADMIN[$t]" ;; esac
done
BACKEND="127.0.0.1:${PORT[direct]}"
if [ "$TLS" = 1 ]; then
  pick_port TLS_BACKEND_PORT          # the backend's `ssl` listener
  TLS_BACKEND="127.0.0.1:$TLS_BACKEND_PORT"
fi

# ---------------------------------------------------------------- estimate
n_runs=$(( RUNS * N_TARGETS ))
est=$(( N_TARGETS * (WARMUP + 1) + n_runs * (DURATION + 1) + 10 ))
[ "$STRACE_ON" = 1 ] && est=$(( est + N_PROXIES * (STRACE_DURATION + 2) ))
say "nextup bench: $RUNS round(s) x $N_TARGETS targets x ${DURATION}s, wrk -t$THREADS -c$CONNS, warm-up ${WARMUP}s per target, workers: $WORKERS"
if [ "$STRACE_ON" = 1 ]; then
  say "then one system-call run per proxy: strace -c, wrk -t1 -c$STRACE_CONNS -d${STRACE_DURATION}s"
fi
note_load
say "estimated total run time: ~${est}s ($(( est / 60 ))m$(( est % 60 ))s)"

# ---------------------------------------------------------------- configs
BODY=$(printf 'nextup-bench-%087d' 0)    # 13 + 87 = 100 bytes
[ ${#BODY} -eq 100 ] || die "internal: body is ${#BODY} bytes"

nginx_common() {           # nginx_common DIR WORKERS
  cat <<EOF
worker_processes $2;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
EOF
}

# TLS material, made here for this run only: a CA (EC P-256) and a server certificate it
# signs, SAN DNS:localhost + IP:127.0.0.1. CA_FILE is what both TLS proxies trust.
if [ "$TLS" = 1 ]; then
  mkdir -p "$WORK/tls"
  (
    set -e
    cd "$WORK/tls"
    printf '%s\n' 'basicConstraints = critical, CA:TRUE' \
      'keyUsage = critical, keyCertSign, cRLSign' 'subjectKeyIdentifier = hash' >ca.ext
    printf '%s\n' 'basicConstraints = critical, CA:FALSE' \
      'keyUsage = critical, digitalSignature, keyEncipherment' 'extendedKeyUsage = serverAuth' \
      'subjectAltName = DNS:localhost, IP:127.0.0.1' 'subjectKeyIdentifier = hash' \
      'authorityKeyIdentifier = keyid' >server.ext
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    openssl req -new -key ca.key -subj '/CN=nextup bench CA' -out ca.csr
    openssl x509 -req -in ca.csr -signkey ca.key -days 2 -sha256 -extfile ca.ext -out ca.crt
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
    openssl req -new -key server.key -subj '/CN=localhost' -out server.csr
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 2 -sha256 \
      -extfile server.ext -out server.crt
    openssl verify -CAfile ca.crt server.crt
  ) >"$WORK/tls/openssl.log" 2>&1 || { show_logs "$WORK/tls/openssl.log"; die "openssl: making the test CA and server certificate failed"; }
  CA_FILE="$WORK/tls/ca.crt"
fi

backend_tls_server() {     # the backend's `ssl` listener (same body), only with BENCH_TLS=1
  [ "$TLS" = 1 ] || return 0
  cat <<EOF
    server {
        listen $TLS_BACKEND ssl reuseport backlog=4096;
        ssl_certificate $WORK/tls/server.crt;
        ssl_certificate_key $WORK/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench_ssl:10m;
        ssl_session_timeout 1h;
        keepalive_requests 1000000;
        default_type text/plain;
        location / { return 200 "$BODY"; }
    }
EOF
}

mkdir -p "$WORK/backend"
{ nginx_common "$WORK/backend" 1; cat <<EOC
    server {
        listen $BACKEND reuseport backlog=4096;
        default_type text/plain;
        location / { return 200 "$BODY"; }
    }
EOC
backend_tls_server; echo "}"
} >"$WORK/backend/nginx.conf"

nginx_proxy_conf() {       # nginx_proxy_conf TARGET: the nginx or nginx-tls proxy's config on stdout
  local t=$1
  nginx_common "$WORK/$(fname "$t")" "$(workers_of "$t")"
  if [ "$(kind_of "$t")" = nginx ]; then cat <<EOC
    upstream backend {
        server $BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[$t]} backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOC
  else cat <<EOC
    upstream tls_backend {
        server $TLS_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[$t]} backlog=4096;
        location / {
            proxy_pass https://tls_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $CA_FILE;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }
    }
}
EOC
  fi
}

haproxy_conf() {           # haproxy_conf TARGET
  cat <<EOC
global
    nbthread $(workers_of "$1")
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client  30s
    timeout server  30s
    http-reuse always
frontend bench
    bind 127.0.0.1:${PORT[$1]}
    default_backend backend
backend backend
    server backend1 $BACKEND
EOC
}

"$NGINX" -t -q -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" \
  || die "backend nginx config rejected (see above)"
for t in $PROXIES; do
  d="$WORK/$(fname "$t")"
  case "$t" in
    nginx/*|nginx-tls/*)
      mkdir -p "$d"
      nginx_proxy_conf "$t" >"$d/nginx.conf"
      "$NGINX" -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "$t: nginx config rejected (see above)" ;;
    haproxy/*)
      mkdir -p "$d"
      haproxy_conf "$t" >"$d/haproxy.cfg"
      "$HAPROXY" -c -q -f "$d/haproxy.cfg" || die "$t: haproxy config rejected (see above)" ;;
  esac
done

# ---------------------------------------------------------------- start
wait_port() {              # wait_port NAME PORT PID LOG...: until it accepts, 10 s max
  local name=$1 port=$2 pid=$3
  shift 3
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { show_logs "$@"; die "$name exited during startup"; }
    port_free "$port" || return 0
    sleep 0.1
  done
  show_logs "$@"
  die "$name is not listening on 127.0.0.1:$port after 10 s"
}

logs_of() {
  local d
  d="$WORK/$(fname "$1")"
  case "$1" in
    direct)    echo "$WORK/backend/stdout.log $WORK/backend/error.log" ;;
    nextup/*|nextup-tls/*) echo "$d.log" ;;
    nginx/*|nginx-tls/*)   echo "$d/stdout.log $d/error.log" ;;
    haproxy/*) echo "$d/stdout.log" ;;
  esac
}

say "backend: nginx (1 worker) on $BACKEND${TLS_BACKEND:+, TLS on $TLS_BACKEND}"
"$NGINX" -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" \
  </dev/null >"$WORK/backend/stdout.log" 2>&1 &
PID[direct]=$!
wait_port backend "${PORT[direct]}" "${PID[direct]}" "$WORK/backend/stdout.log" "$WORK/backend/error.log"
if [ "$TLS" = 1 ]; then
  wait_port "backend (TLS)" "$TLS_BACKEND_PORT" "${PID[direct]}" "$WORK/backend/stdout.log" "$WORK/backend/error.log"
  # the TLS backend itself, verified against the CA under both names the proxies use
  for u in "https://localhost:$TLS_BACKEND_PORT/" "https://$TLS_BACKEND/"; do
    code=$(curl -sS -o "$WORK/check.body" -w '%{http_code}' --max-time 5 --cacert "$CA_FILE" \
             --resolve "localhost:$TLS_BACKEND_PORT:127.0.0.1" "$u" 2>"$WORK/check.err" || true)
    if [ "$code" != 200 ] || [ "$(cat "$WORK/check.body")" != "$BODY" ]; then
      cat "$WORK/check.err" >&2
      show_logs "$WORK/backend/error.log"
      die "TLS backend ($u, CA $CA_FILE) answered '${code:-nothing}', expected 200 with the 100-byte body"
    fi
  done
fi

for t in $PROXIES; do
  w=$(workers_of "$t"); d="$WORK/$(fname "$t")"
  case "$t" in
    nextup/*)
      say "$t: nextup ($w worker(s)) on 127.0.0.1:${PORT[$t]}, admin 127.0.0.1:${ADMIN[$t]}"
      NEXTUP_LISTEN="127.0.0.1:${PORT[$t]}" \
      NEXTUP_ADMIN="127.0.0.1:${ADMIN[$t]}" \
      NEXTUP_UPSTREAMS="$BACKEND" \
      NEXTUP_WORKERS=$w \
      NEXTUP_LOG_LEVEL=error \
      NEXTUP_ACCESS_LOG=off \
        "$NEXTUP_BIN" </dev/null >"$d.log" 2>&1 &
      PID[$t]=$! ;;
    nextup-tls/*)
      say "$t: nextup ($w worker(s), upstream TLS to $TLS_BACKEND) on 127.0.0.1:${PORT[$t]}, admin 127.0.0.1:${ADMIN[$t]}"
      NEXTUP_LISTEN="127.0.0.1:${PORT[$t]}" \
      NEXTUP_ADMIN="127.0.0.1:${ADMIN[$t]}" \
      NEXTUP_UPSTREAMS="$TLS_BACKEND" \
      NEXTUP_UPSTREAM_TLS=on \
      NEXTUP_UPSTREAM_CA_FILE="$CA_FILE" \
      NEXTUP_WORKERS=$w \
      NEXTUP_LOG_LEVEL=error \
      NEXTUP_ACCESS_LOG=off \
        "$NEXTUP_BIN" </dev/null >"$d.log" 2>&1 &
      PID[$t]=$! ;;
    nginx/*|nginx-tls/*)
      if [ "$(kind_of "$t")" = nginx ]; then what="upstream keepalive 64"
      else what="upstream keepalive 64, proxy_pass https, verified"; fi
      say "$t: nginx proxy ($w worker(s), $what) on 127.0.0.1:${PORT[$t]}"
      "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" </dev/null >"$d/stdout.log" 2>&1 &
      PID[$t]=$! ;;
    haproxy/*)
      say "$t: haproxy (nbthread $w, http-reuse always) on 127.0.0.1:${PORT[$t]}"
      "$HAPROXY" -db -f "$d/haproxy.cfg" </dev/null >"$d/stdout.log" 2>&1 &
      PID[$t]=$! ;;
  esac
done

wait_ready() {             # wait_ready TARGET: until nextup's GET /readyz is 200, 10 s max
  local t=$1 code
  for _ in $(seq 100); do
    # shellcheck disable=SC2046
    kill -0 "${PID[$t]}" 2>/dev/null || { show_logs $(logs_of "$t"); die "$t exited during startup"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:${ADMIN[$t]}/readyz" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2046
  show_logs $(logs_of "$t")
  die "$t: GET /readyz on 127.0.0.1:${ADMIN[$t]} not 200 after 10 s"
}
for t in $PROXIES; do
  case "$t" in
    nextup/*|nextup-tls/*) wait_ready "$t" ;;
    *) # shellcheck disable=SC2046
       wait_port "$t" "${PORT[$t]}" "${PID[$t]}" $(logs_of "$t") ;;
  esac
done

# ---------------------------------------------------------------- check
for t in $TARGETS; do
  url="http://127.0.0.1:${PORT[$t]}/"
  code=$(curl -sS -o "$WORK/check.body" -w '%{http_code}' --max-time 5 "$url" 2>"$WORK/check.err" || true)
  if [ "$code" != 200 ]; then
    cat "$WORK/check.err" >&2
    # shellcheck disable=SC2046
    show_logs $(logs_of "$t")
    die "$t ($url) answered '${code:-nothing}', expected 200"
  fi
  [ "$(cat "$WORK/check.body")" = "$BODY" ] || die "$t ($url) answered 200 with an unexpected body: $(head -c 200 "$WORK/check.body")"
done
say "all $N_TARGETS targets answer 200 with the 100-byte body"

# ---------------------------------------------------------------- processes
# pids_of TARGET: the processes whose VmRSS and CPU time count for it (nginx: master + workers;
# nextup and HAProxy: the one process, all its threads).
pids_of() {
  case "$1" in
    nginx/*|nginx-tls/*) echo "${PID[$1]} $(pgrep -P "${PID[$1]}" | tr '\n' ' ')" ;;
    *) echo "${PID[$1]}" ;;
  esac
}
# traced_of TARGET: what strace attaches to, the proxy's workers only, as "-p ID" arguments:
# nginx: each worker process (children of the master); HAProxy: its process with -f, so all
# nbthread threads; nextup: each thread but the main one (the main thread runs the admin
# listener, health checks and signals; the NEXTUP_WORKERS threads carry the requests).
traced_tasks() {           # traced_tasks TARGET: the /proc/PID/task/TID directories traced
  local t=$1 p task
  case "$t" in
    nginx/*|nginx-tls/*) for p in $(pgrep -P "${PID[$t]}"); do ls -d /proc/"$p"/task/*; done ;;
    haproxy/*) ls -d /proc/"${PID[$t]}"/task/* ;;
    *) for task in /proc/"${PID[$t]}"/task/*; do [ "${task##*/}" = "${PID[$t]}" ] || echo "$task"; done ;;
  esac
}
traced_of() {
  local t=$1 p task
  case "$t" in
    nginx/*|nginx-tls/*) printf -- '-f'; for p in $(pgrep -P "${PID[$t]}"); do printf -- ' -p %s' "$p"; done ;;
    haproxy/*) printf -- '-f -p %s' "${PID[$t]}" ;;
    *) for task in $(traced_tasks "$t"); do printf -- ' -p %s' "${task##*/}"; done ;;
  esac
}

# ---------------------------------------------------------------- RSS sampler
sampler() {                # writes peak KiB per proxy to $WORK/rss.<target>
  local t p k v sum
  declare -A peak=() pids=()
  for t in $PROXIES; do peak[$t]=0; pids[$t]=$(pids_of "$t"); done
  while :; do
    for t in $PROXIES; do
      sum=0
      for p in ${pids[$t]}; do
        [ -r "/proc/$p/status" ] || continue
        while read -r k v _; do
          [ "$k" = "VmRSS:" ] && { sum=$(( sum + v )); break; }
        done <"/proc/$p/status" || true
      done
      if [ "$sum" -gt "${peak[$t]}" ]; then peak[$t]=$sum; echo "$sum" >"$WORK/rss.$(fname "$t")"; fi
    done
    sleep 0.25
  done
}
sampler &
SAMPLER_PID=$!

# ---------------------------------------------------------------- runs

run_wrk() {                # run_wrk TARGET SECONDS OUTFILE [THREADS CONNECTIONS]
  local t=$1
  "$WRK" -t"${4:-$THREADS}" -c"${5:-$CONNS}" -d"${2}s" --latency "http://127.0.0.1:${PORT[$t]}/" >"$3" 2>&1 \
    || { cat "$3" >&2; die "wrk against $t failed"; }
  # shellcheck disable=SC2046
  kill -0 "${PID[$t]}" 2>/dev/null || { show_logs $(logs_of "$t"); die "$t (pid ${PID[$t]}) died during the benchmark"; }
}
wrk_requests() { awk '/ requests in / { print $1; exit }' "$1"; }   # requests wrk completed

declare -A RPS=() P50=() P99=() ERRS=() CPU=()
NAME_W=$(for t in $TARGETS; do echo "${#t}"; done | sort -n | tail -1)
for t in $TARGETS; do RPS[$t]=""; P50[$t]=""; P99[$t]=""; ERRS[$t]=0; CPU[$t]=""; done

if [ "$WARMUP" -gt 0 ]; then
  for t in $TARGETS; do
    say "warm-up: $t (${WARMUP}s)"
    run_wrk "$t" "$WARMUP" "$WORK/warmup.$(fname "$t").txt"
  done
fi

for r in $(seq "$RUNS"); do
  for t in $TARGETS; do
    out="$WORK/wrk.$r.$(fname "$t").txt"
    # CPU time of the proxy (every thread of every process) across exactly this run
    # shellcheck disable=SC2086
    [ "$t" = direct ] || { cpu_pids=$(pids_of "$t"); cpu0=$(cpu_ns $cpu_pids); }
    run_wrk "$t" "$DURATION" "$out"
    # shellcheck disable=SC2086
    [ "$t" = direct ] || cpu1=$(cpu_ns $cpu_pids)
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    nreq=$(wrk_requests "$out")
    if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ] || [ -z "$nreq" ]; then cat "$out" >&2; die "could not parse wrk's output for $t"; fi
    p50=$(to_ms "$p50"); p99=$(to_ms "$p99")
    # errors: non-2xx/3xx answers plus socket errors (connect, read, write, timeout)
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                END { print n + 0 }' "$out")
    RPS[$t]="${RPS[$t]} $rps"; P50[$t]="${P50[$t]} $p50"; P99[$t]="${P99[$t]} $p99"
    ERRS[$t]=$(( ${ERRS[$t]} + errs ))
    cpu_txt=""
    if [ "$t" != direct ] && [ "$nreq" -gt 0 ]; then
      us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$nreq" 'BEGIN { printf "%.2f", (b - a) / 1000 / n }')
      CPU[$t]="${CPU[$t]} $us"; cpu_txt="   cpu $us us/req"
    fi
    say "round $r/$RUNS  $(printf "%-${NAME_W}s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s" "$t" "$rps" "$p50" "$p99" "$errs")$cpu_txt"
  done
done

stop_pid "$SAMPLER_PID" sampler
SAMPLER_PID=""

# ---------------------------------------------------------------- system calls
# One more run per proxy, after the timed rounds and never counted in them: strace -c attached
# to the proxy's workers (traced_of) over a wrk run of its own, then detached. The count is the
# sum of strace's rows (every system call the workers made while attached: the run plus the
# moment before and after it, when they are idle) divided by the requests wrk completed.
declare -A SYS=() SYS_REQ=()
if [ "$STRACE_ON" = 1 ]; then
  for t in $PROXIES; do
    f=$(fname "$t")
    # shellcheck disable=SC2046
    "$STRACE" -c -o "$WORK/strace.$f.txt" $(traced_of "$t") 2>"$WORK/strace.$f.err" &
    STRACE_PID=$!
    # attached when each thread of the workers names strace as its tracer (5 s max)
    attached=0
    for _ in $(seq 50); do
      kill -0 "$STRACE_PID" 2>/dev/null || { cat "$WORK/strace.$f.err" >&2; die "strace on $t exited at once"; }
      n_tr=0; n_all=0
      for task in $(traced_tasks "$t"); do
        n_all=$(( n_all + 1 ))
        [ "$(awk '/^TracerPid:/ { print $2 }' "$task/status" 2>/dev/null)" = "$STRACE_PID" ] && n_tr=$(( n_tr + 1 ))
      done
      [ "$n_all" -gt 0 ] && [ "$n_tr" = "$n_all" ] && { attached=1; break; }
      sleep 0.1
    done
    [ "$attached" = 1 ] || { cat "$WORK/strace.$f.err" >&2; die "strace did not attach to every worker of $t in 5 s"; }
    run_wrk "$t" "$STRACE_DURATION" "$WORK/wrk.strace.$f.txt" 1 "$STRACE_CONNS"
    kill -INT "$STRACE_PID" 2>/dev/null || true   # detach and write the table
    for _ in $(seq 50); do kill -0 "$STRACE_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$STRACE_PID" strace
    STRACE_PID=""
    nreq=$(wrk_requests "$WORK/wrk.strace.$f.txt")
    strace_calls "$WORK/strace.$f.txt" >"$WORK/calls.$f.txt"
    total=$(awk '{ n += $2 } END { print n + 0 }' "$WORK/calls.$f.txt")
    if [ -z "$nreq" ] || [ "$nreq" -eq 0 ] || [ "$total" -eq 0 ]; then
      cat "$WORK/strace.$f.txt" "$WORK/strace.$f.err" >&2
      die "system-call run on $t: ${nreq:-no} requests, $total system calls counted"
    fi
    SYS_REQ[$t]=$nreq
    SYS[$t]=$(awk -v a="$total" -v n="$nreq" 'BEGIN { printf "%.2f", a / n }')
    say "system calls: $(printf "%-${NAME_W}s %7.2f per request (%s calls, %s requests under strace)" "$t" "${SYS[$t]}" "$total" "$nreq")"
  done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && a != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }

declare -A MRPS=() MP50=() MP99=() MCPU=() RSS=()
for t in $TARGETS; do
  # shellcheck disable=SC2086
  { MRPS[$t]=$(median ${RPS[$t]}); MP50[$t]=$(median ${P50[$t]}); MP99[$t]=$(median ${P99[$t]}); }
  MCPU[$t]="-"
  # shellcheck disable=SC2086
  [ -n "${CPU[$t]}" ] && MCPU[$t]=$(median ${CPU[$t]} | awk '{ printf "%.2f", $1 }')
done
for t in $PROXIES; do
  kib=$(cat "$WORK/rss.$(fname "$t")" 2>/dev/null || echo 0)
  RSS[$t]=$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')
done

label() {
  case "$1" in
    direct)       echo "direct (nginx backend)" ;;
    nextup/*)     echo "nextup" ;;
    nginx/*)      echo "nginx proxy" ;;
    haproxy/*)    echo "haproxy" ;;
    nextup-tls/*) echo "nextup-tls (TLS upstream)" ;;
    nginx-tls/*)  echo "nginx-tls (TLS upstream)" ;;
  esac
}
versions="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||'), haproxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }'), wrk $( { "$WRK" --version 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
[ "$STRACE_ON" = 1 ] && versions="$versions, strace $("$STRACE" -V | awk 'NR == 1 { print $4 }')"
machine="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), load average $LOAD_START at the start, $LOAD_END at the end"
[ "$TLS" = 1 ] && versions="$versions, $(openssl version | awk '{ print "openssl " $2 }') (CLI; certificates)"
params="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $RUNS interleaved round(s), warm-up ${WARMUP}s per target, 100-byte body, keep-alive GET; proxies with ${WORKERS// / and } worker(s)"
sys_params="system calls: one run per proxy under strace -c (workers only), wrk -t1 -c$STRACE_CONNS -d${STRACE_DURATION}s"

row_values() {             # row_values TARGET -> tab-separated cells
  local t=$1 w runs vd vn vh rss sys
  # shellcheck disable=SC2086
  runs=$(printf '%s\n' ${RPS[$t]} | awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $1 }')
  w=$(workers_of "$t"); sys=${SYS[$t]:--}
  if [ "$t" = direct ]; then w=1; vd="1.00"; vn="-"; vh="-"; rss="-"; sys="-"
  elif [ "$(kind_of "$t")" = nextup-tls ] || [ "$(kind_of "$t")" = nginx-tls ]; then
    # like for like: the TLS rows compare with nginx-tls; there is no HAProxy TLS target
    vd=$(ratio "${MRPS[$t]}" "${MRPS[direct]}")
    vn=$(ratio "${MRPS[$t]}" "${MRPS[nginx-tls/$w]}")
    vh="-"
    rss="${RSS[$t]}"
  else
    vd=$(ratio "${MRPS[$t]}" "${MRPS[direct]}")
    vn=$(ratio "${MRPS[$t]}" "${MRPS[nginx/$w]}")
    vh=$(ratio "${MRPS[$t]}" "${MRPS[haproxy/$w]}")
    rss="${RSS[$t]}"
  fi
  printf '%s\t%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(label "$t")" "$w" "${MRPS[$t]}" "${MP50[$t]}" \
    "${MP99[$t]}" "${MCPU[$t]}" "$sys" "$runs" "$vd" "$vn" "$vh" "$rss" "${ERRS[$t]}"
}
{
  printf '%s\n' $'target\tworkers\treq/s (median)\tp50 ms\tp99 ms\tCPU us/req\tsyscalls/req\treq/s per run\tvs direct\tvs nginx\tvs haproxy\tpeak RSS MiB\terrors'
  for t in $TARGETS; do row_values "$t"; done
} >"$WORK/table.tsv"

# Per-call breakdown: a column for each call that is 0.05 a request or more in some target,
# the usual hot-path calls first, then "other" (the rest, summed).
HOT="readv writev read write recvfrom sendto recvmsg sendmsg epoll_wait epoll_ctl ioctl"
if [ "$STRACE_ON" = 1 ]; then
  for t in $PROXIES; do
    awk -v n="${SYS_REQ[$t]}" '{ printf "%s %.4f\n", $1, $2 / n }' "$WORK/calls.$(fname "$t").txt" >"$WORK/perreq.$(fname "$t").txt"
  done
  COLS=""
  for c in $HOT $(cat "$WORK"/perreq.*.txt | awk '$2 >= 0.05 { print $1 }' | sort -u); do
    case " $COLS " in *" $c "*) continue ;; esac
    if cat "$WORK"/perreq.*.txt | awk -v c="$c" '$1 == c && $2 >= 0.05 { f = 1 } END { exit !f }'; then COLS="$COLS $c"; fi
  done
  COLS=${COLS# }
  {
    printf 'target\tworkers\tsyscalls/req\trequests'
    for c in $COLS; do printf '\t%s' "$c"; done
    printf '\tother\n'
    for t in $PROXIES; do
      printf '%s\t%s\t%s\t%s' "$(label "$t")" "$(workers_of "$t")" "${SYS[$t]}" "${SYS_REQ[$t]}"
      awk -v cols="$COLS" 'BEGIN { n = split(cols, c, " ") }
        { v[$1] = $2; all += $2 }
        END { for (i = 1; i <= n; i++) { printf "\t%.2f", v[c[i]]; all -= v[c[i]] } printf "\t%.2f\n", (all < 0 ? 0 : all) }' \
        "$WORK/perreq.$(fname "$t").txt"
    done
  } >"$WORK/syscalls.tsv"
fi

# The issue's "done means", per worker count: nextup against nginx (plain), nextup-tls against nginx-tls.
verdict() {                # verdict VALUE OP LIMIT -> "VALUE (met)" / "VALUE (not met)" / "-"
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { if (v == "" || v == "-") { print "-"; exit }
    ok = (op == "le") ? (v + 0 <= l + 0) : (v + 0 >= l + 0); printf "%s (%s)", v, ok ? "met" : "not met" }'
}
{
  printf 'check'; for w in $WORKERS; do printf '\t%s worker(s)' "$w"; done; printf '\ttarget\n'
  if [ "$STRACE_ON" = 1 ]; then
    printf 'nextup system calls / request'
    for w in $WORKERS; do printf '\t%s' "$(verdict "${SYS[nextup/$w]}" le 4.2)"; done; printf '\t<= 4.2\n'
    printf 'nextup / nginx, system calls per request'
    for w in $WORKERS; do printf '\t%s' "$(verdict "$(ratio "${SYS[nextup/$w]}" "${SYS[nginx/$w]}")" le 0.85)"; done; printf '\t<= 0.85\n'
  fi
  printf 'nextup / nginx, CPU per request'
  for w in $WORKERS; do printf '\t%s' "$(verdict "$(ratio "${MCPU[nextup/$w]}" "${MCPU[nginx/$w]}")" le 0.85)"; done; printf '\t<= 0.85\n'
  printf 'nextup / nginx, req/s'
  for w in $WORKERS; do printf '\t%s' "$(verdict "$(ratio "${MRPS[nextup/$w]}" "${MRPS[nginx/$w]}")" ge 1.2)"; done; printf '\t>= 1.20\n'
  printf 'nextup / nginx, p99'
  for w in $WORKERS; do printf '\t%s' "$(verdict "$(ratio "${MP99[nextup/$w]}" "${MP99[nginx/$w]}")" le 1.0)"; done; printf '\t<= 1.00\n'
  if [ "$TLS" = 1 ]; then
    printf 'nextup-tls / nginx-tls, req/s'
    for w in $WORKERS; do printf '\t%s' "$(verdict "$(ratio "${MRPS[nextup-tls/$w]}" "${MRPS[nginx-tls/$w]}")" ge 1.0)"; done; printf '\t>= 1.00\n'
  fi
} >"$WORK/goals.tsv"

echo
echo "== nextup bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $params"
[ "$STRACE_ON" = 1 ] && echo "   $sys_params"
echo "   $machine; $versions"
echo
print_table "$WORK/table.tsv"
echo
echo "   medians over $RUNS run(s); vs = ratio of median req/s, against the proxies with the same worker count;"
echo "   CPU us/req = CPU time of all the proxy's threads (nginx: master + workers) over a run / requests, median;"
echo "   syscalls/req = system calls of the workers under strace -c / requests of that separate run;"
echo "   peak RSS = max VmRSS sampled every 0.25 s (nginx: master + workers summed);"
echo "   errors = non-2xx + socket errors reported by wrk, all runs"
if [ "$TLS" = 1 ]; then
  echo "   TLS rows: plain HTTP from wrk, verified TLS from the proxy to the backend's ssl listener (same nginx);"
  echo "   their \"vs nginx\" is against nginx-tls (like for like), \"vs direct\" against the plain backend"
fi
if [ "$STRACE_ON" = 1 ]; then
  echo
  echo "   system calls per request, by call (workers only, one run under strace -c each):"
  print_table "$WORK/syscalls.tsv" | sed 's/^/   /'
fi
echo
echo "   issue 11, done means (nextup against nginx with the same worker count):"
print_table "$WORK/goals.tsv" | sed 's/^/   /'

md_table() {
  awk -F'\t' 'NR == 1 { s = "|"; d = "|"; for (i = 1; i <= NF; i++) { s = s " " $i " |"; d = d (i == 1 ? "---|" : "---:|") }
                        print s; print d; next }
              { s = "|"; for (i = 1; i <= NF; i++) s = s " " $i " |"; print s }' "$1"
}
mkdir -p "$RESULTS_DIR"
{
  echo "# nextup bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- $params"
  [ "$STRACE_ON" = 1 ] && echo "- $sys_params"
  echo "- $machine"
  echo "- $versions; nextup $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may differ)"
  echo "- each proxy: ${WORKERS// / or } worker(s)/thread(s), upstream keep-alive, access logs off, to the same nginx backend (1 worker)"
  if [ "$TLS" = 1 ]; then
    echo "- TLS rows: wrk speaks plain HTTP to the proxy, the proxy verified TLS (CA made at run time, SAN"
    echo "  DNS:localhost + IP:127.0.0.1) to the same backend's \`ssl\` listener; nextup-tls: \`NEXTUP_UPSTREAM_TLS=on\`,"
    echo "  upstream \`127.0.0.1:port\` (IP SAN checked); nginx-tls: \`proxy_pass https://\`, keepalive 64,"
    echo "  \`proxy_ssl_verify on\`, \`proxy_ssl_name localhost\`, \`proxy_ssl_session_reuse on\`"
  fi
  echo
  md_table "$WORK/table.tsv"
  echo
  echo "Medians over $RUNS run(s). *vs* columns: ratio of median req/s, against the proxies with the same worker count."
  echo "CPU us/req: CPU time of all the proxy's threads (\`/proc/PID/task/*/schedstat\`, first field; nginx: master +"
  echo "workers) across each run, divided by the requests wrk completed, median. Syscalls/req: system calls of the"
  echo "proxy's workers counted by \`strace -c\` in a separate run, divided by that run's requests. Peak RSS: max VmRSS"
  echo "sampled every 0.25 s during the runs (nginx proxy: master + workers summed). Errors: non-2xx plus socket errors"
  echo "reported by wrk. wrk, the proxy and the backend share the machine's CPUs, so these numbers compare the proxies"
  echo "with each other."
  if [ "$TLS" = 1 ]; then
    echo
    echo "TLS rows: *vs nginx* is against nginx-tls (like for like), *vs direct* against the plain backend; no HAProxy"
    echo "TLS target."
  fi
  if [ "$STRACE_ON" = 1 ]; then
    echo
    echo "System calls per request, by call (workers only; other = every call not in a column):"
    echo
    md_table "$WORK/syscalls.tsv"
  fi
  echo
  echo "Issue 11, done means (nextup against nginx with the same worker count):"
  echo
  md_table "$WORK/goals.tsv"
} >"$RESULTS_DIR/latest.md"
echo
echo "   written: bench/results/latest.md"
say "done"
