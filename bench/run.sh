#!/usr/bin/env bash
# bench/run.sh — throughput, latency and memory of nextup next to nginx and HAProxy.
#
# usage: bench/run.sh path/to/nextup          (what `make bench` runs)
#
# One fast backend (nginx, 1 worker, a fixed 100-byte body, keep-alive) and three
# proxies in front of it, each on its own loopback port, each with 2 workers or
# threads and upstream keep-alive: nextup, nginx (proxy_pass + upstream keepalive)
# and HAProxy (nbthread 2, http-reuse always). wrk sends small keep-alive GETs to
# the backend directly and to each proxy, in interleaved rounds (round 1: every
# target, round 2: every target, ...) so that drift on the machine hits every
# target alike.
#
# TLS (BENCH_TLS=1, the default): the same backend nginx also listens with `ssl` on
# a second loopback port, with a CA and a server certificate (SAN DNS:localhost,
# IP:127.0.0.1) made with `openssl` in the temp dir at run time, and two more
# targets join the same rounds: nextup-tls (nextup, 2 workers, NEXTUP_UPSTREAM_TLS=on,
# verified against that CA, the upstream given as 127.0.0.1:<port> so the IP SAN is
# checked) and nginx-tls (nginx, 2 workers, proxy_pass https:// to an upstream
# with keepalive 64, proxy_ssl_verify on against that CA, proxy_ssl_name localhost,
# proxy_ssl_session_reuse on). wrk still speaks plain HTTP to both: only the proxy ->
# backend leg is TLS. Their "vs nginx" cell is like for like (nextup-tls against
# nginx-tls), "vs direct" is against the plain backend, and there is no HAProxy
# TLS target ("vs haproxy": -). BENCH_TLS=0 leaves the TLS part out entirely.
#
# Printed, and written to bench/results/latest.md: per target the median req/s,
# median p50 and p99 latency (ms) over the runs, every run's req/s, each proxy's
# median req/s relative to direct, to the nginx proxy and to HAProxy, errors seen
# by wrk, and each proxy's peak RSS (VmRSS sampled during the runs; nginx: master
# plus workers summed).
#
# Environment (defaults in brackets):
#   BENCH_DURATION     seconds per wrk run                      [10]
#   BENCH_CONNECTIONS  wrk connections                          [50]
#   BENCH_THREADS      wrk threads                              [2]
#   BENCH_RUNS         rounds                                   [3]
#   BENCH_WARMUP       seconds of warm-up per target, 0 = none  [2]
#   BENCH_TLS          1 = add nextup-tls and nginx-tls, 0 = no [1]
#
# Everything started here is stopped by PID when the script exits; the temp dir
# is removed. Any target that does not answer 200 before the runs, dies during
# them, or fails to start is a loud failure (non-zero exit).
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
for v in DURATION CONNS THREADS RUNS WARMUP; do
  is_uint "${!v}" || die "BENCH_${v} must be a non-negative integer, got '${!v}'"
done
if [ "$DURATION" -lt 1 ] || [ "$CONNS" -lt 1 ] || [ "$THREADS" -lt 1 ] || [ "$RUNS" -lt 1 ]; then
  die "BENCH_DURATION, BENCH_CONNECTIONS, BENCH_THREADS and BENCH_RUNS must be >= 1"
fi
[ "$THREADS" -le "$CONNS" ] || THREADS=$CONNS

REPO=$(cd "$(dirname "$0")/.." && pwd)
RESULTS_DIR="$REPO/bench/results"

TARGETS="direct nextup nginx haproxy"
PROXIES="nextup nginx haproxy"
if [ "$TLS" = 1 ]; then
  TARGETS="$TARGETS nextup-tls nginx-tls"
  PROXIES="$PROXIES nextup-tls nginx-tls"
fi
N_TARGETS=$(wc -w <<<"$TARGETS")
case "$N_TARGETS" in 4) N_WORD=four ;; 6) N_WORD=six ;; *) N_WORD=$N_TARGETS ;; esac

# ---------------------------------------------------------------- cleanup
WORK=""
declare -A PID=()          # target -> main pid
SAMPLER_PID=""
declare -A NEXTUP_EXIT=()  # nextup / nextup-tls -> exit status after SIGTERM

cleanup() {
  local rc=$? t st
  trap - EXIT INT TERM
  [ -n "$SAMPLER_PID" ] && stop_pid "$SAMPLER_PID" sampler
  for t in nextup nextup-tls nginx nginx-tls haproxy direct; do   # the backend last
    [ -n "${PID[$t]:-}" ] || continue
    stop_pid "${PID[$t]}" "$t"
    st=0; wait "${PID[$t]}" 2>/dev/null || st=$?
    case "$t" in nextup|nextup-tls) NEXTUP_EXIT[$t]=$st ;; esac
  done
  for t in nextup nextup-tls; do
    st=${NEXTUP_EXIT[$t]:-}
    if [ -n "$st" ] && [ "$st" != 0 ]; then
      echo "bench: note: $t exited with status $st after SIGTERM (expected 0)" >&2
      [ -n "$WORK" ] && show_logs "$WORK/$t.log"
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
declare -A PORT=()
for t in $TARGETS; do pick_port "PORT[$t]"; done
pick_port NEXTUP_ADMIN_PORT
BACKEND="127.0.0.1:${PORT[direct]}"
if [ "$TLS" = 1 ]; then
  pick_port TLS_BACKEND_PORT          # the backend's `ssl` listener
  pick_port NEXTUP_TLS_ADMIN_PORT     # nextup-tls's admin listener
  TLS_BACKEND="127.0.0.1:$TLS_BACKEND_PORT"
fi

# ---------------------------------------------------------------- estimate
n_runs=$(( RUNS * N_TARGETS ))
est=$(( N_TARGETS * (WARMUP + 1) + n_runs * (DURATION + 1) + 10 ))
say "nextup bench: $RUNS round(s) x $N_TARGETS targets x ${DURATION}s, wrk -t$THREADS -c$CONNS, warm-up ${WARMUP}s per target"
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

mkdir -p "$WORK/backend" "$WORK/nginx" "$WORK/haproxy"
{ nginx_common "$WORK/backend" 1; cat <<EOF
    server {
        listen $BACKEND reuseport backlog=4096;
        default_type text/plain;
        location / { return 200 "$BODY"; }
    }
EOF
backend_tls_server; echo "}"
} >"$WORK/backend/nginx.conf"

{ nginx_common "$WORK/nginx" 2; cat <<EOF
    upstream backend {
        server $BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

if [ "$TLS" = 1 ]; then
  mkdir -p "$WORK/nginx-tls"
  { nginx_common "$WORK/nginx-tls" 2; cat <<EOF
    upstream tls_backend {
        server $TLS_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx-tls]} backlog=4096;
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
EOF
  } >"$WORK/nginx-tls/nginx.conf"
fi

cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client  30s
    timeout server  30s
    http-reuse always
frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend backend
backend backend
    server backend1 $BACKEND
EOF

"$NGINX" -t -q -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" \
  || die "backend nginx config rejected (see above)"
"$NGINX" -t -q -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
  || die "nginx proxy config rejected (see above)"
if [ "$TLS" = 1 ]; then
  "$NGINX" -t -q -p "$WORK/nginx-tls" -e "$WORK/nginx-tls/error.log" -c "$WORK/nginx-tls/nginx.conf" \
    || die "nginx-tls proxy config rejected (see above)"
fi
"$HAPROXY" -c -q -f "$WORK/haproxy/haproxy.cfg" || die "haproxy config rejected (see above)"

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

say "nextup (2 workers) on 127.0.0.1:${PORT[nextup]}, admin 127.0.0.1:$NEXTUP_ADMIN_PORT"
NEXTUP_LISTEN="127.0.0.1:${PORT[nextup]}" \
NEXTUP_ADMIN="127.0.0.1:$NEXTUP_ADMIN_PORT" \
NEXTUP_UPSTREAMS="$BACKEND" \
NEXTUP_WORKERS=2 \
NEXTUP_LOG_LEVEL=error \
NEXTUP_ACCESS_LOG=off \
  "$NEXTUP_BIN" </dev/null >"$WORK/nextup.log" 2>&1 &
PID[nextup]=$!

say "nginx proxy (2 workers, upstream keepalive 64) on 127.0.0.1:${PORT[nginx]}"
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
  </dev/null >"$WORK/nginx/stdout.log" 2>&1 &
PID[nginx]=$!

if [ "$TLS" = 1 ]; then
  say "nextup-tls (2 workers, upstream TLS to $TLS_BACKEND) on 127.0.0.1:${PORT[nextup-tls]}, admin 127.0.0.1:$NEXTUP_TLS_ADMIN_PORT"
  NEXTUP_LISTEN="127.0.0.1:${PORT[nextup-tls]}" \
  NEXTUP_ADMIN="127.0.0.1:$NEXTUP_TLS_ADMIN_PORT" \
  NEXTUP_UPSTREAMS="$TLS_BACKEND" \
  NEXTUP_UPSTREAM_TLS=on \
  NEXTUP_UPSTREAM_CA_FILE="$CA_FILE" \
  NEXTUP_WORKERS=2 \
  NEXTUP_LOG_LEVEL=error \
  NEXTUP_ACCESS_LOG=off \
    "$NEXTUP_BIN" </dev/null >"$WORK/nextup-tls.log" 2>&1 &
  PID[nextup-tls]=$!

  say "nginx-tls proxy (2 workers, upstream keepalive 64, proxy_pass https, verified) on 127.0.0.1:${PORT[nginx-tls]}"
  "$NGINX" -p "$WORK/nginx-tls" -e "$WORK/nginx-tls/error.log" -c "$WORK/nginx-tls/nginx.conf" \
    </dev/null >"$WORK/nginx-tls/stdout.log" 2>&1 &
  PID[nginx-tls]=$!
fi

say "haproxy (nbthread 2, http-reuse always) on 127.0.0.1:${PORT[haproxy]}"
"$HAPROXY" -db -f "$WORK/haproxy/haproxy.cfg" </dev/null >"$WORK/haproxy/stdout.log" 2>&1 &
PID[haproxy]=$!

wait_ready() {             # wait_ready NAME ADMIN_PORT: until nextup's GET /readyz is 200, 10 s max
  local name=$1 admin=$2 code
  for _ in $(seq 100); do
    kill -0 "${PID[$name]}" 2>/dev/null || { show_logs "$WORK/$name.log"; die "$name exited during startup"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$admin/readyz" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  show_logs "$WORK/$name.log"
  die "$name: GET /readyz on 127.0.0.1:$admin not 200 after 10 s"
}
wait_ready nextup "$NEXTUP_ADMIN_PORT"
wait_port "nginx proxy" "${PORT[nginx]}" "${PID[nginx]}" "$WORK/nginx/stdout.log" "$WORK/nginx/error.log"
if [ "$TLS" = 1 ]; then
  wait_ready nextup-tls "$NEXTUP_TLS_ADMIN_PORT"
  wait_port "nginx-tls proxy" "${PORT[nginx-tls]}" "${PID[nginx-tls]}" "$WORK/nginx-tls/stdout.log" "$WORK/nginx-tls/error.log"
fi
wait_port haproxy "${PORT[haproxy]}" "${PID[haproxy]}" "$WORK/haproxy/stdout.log"

# ---------------------------------------------------------------- check
logs_of() {
  case "$1" in
    direct)    echo "$WORK/backend/stdout.log $WORK/backend/error.log" ;;
    nextup)    echo "$WORK/nextup.log" ;;
    nginx)     echo "$WORK/nginx/stdout.log $WORK/nginx/error.log" ;;
    haproxy)   echo "$WORK/haproxy/stdout.log" ;;
    nextup-tls) echo "$WORK/nextup-tls.log" ;;
    nginx-tls) echo "$WORK/nginx-tls/stdout.log $WORK/nginx-tls/error.log" ;;
  esac
}
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
say "all $N_WORD targets answer 200 with the 100-byte body"

# ---------------------------------------------------------------- RSS sampler
# pids_of TARGET: the processes whose VmRSS counts for it (nginx: master + workers).
pids_of() {
  local t=$1
  case "$t" in
    nginx|nginx-tls) echo "${PID[$t]} $(pgrep -P "${PID[$t]}" | tr '\n' ' ')" ;;
    *)     echo "${PID[$t]}" ;;
  esac
}
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
      if [ "$sum" -gt "${peak[$t]}" ]; then peak[$t]=$sum; echo "$sum" >"$WORK/rss.$t"; fi
    done
    sleep 0.25
  done
}
sampler &
SAMPLER_PID=$!

# ---------------------------------------------------------------- runs

run_wrk() {                # run_wrk TARGET SECONDS OUTFILE
  local t=$1
  "$WRK" -t"$THREADS" -c"$CONNS" -d"${2}s" --latency "http://127.0.0.1:${PORT[$t]}/" >"$3" 2>&1 \
    || { cat "$3" >&2; die "wrk against $t failed"; }
  # shellcheck disable=SC2046
  kill -0 "${PID[$t]}" 2>/dev/null || { show_logs $(logs_of "$t"); die "$t (pid ${PID[$t]}) died during the benchmark"; }
}

declare -A RPS=() P50=() P99=() ERRS=()
NAME_W=8; [ "$TLS" = 1 ] && NAME_W=10   # width of the target name in the progress lines
for t in $TARGETS; do RPS[$t]=""; P50[$t]=""; P99[$t]=""; ERRS[$t]=0; done

if [ "$WARMUP" -gt 0 ]; then
  for t in $TARGETS; do
    say "warm-up: $t (${WARMUP}s)"
    run_wrk "$t" "$WARMUP" "$WORK/warmup.$t.txt"
  done
fi

for r in $(seq "$RUNS"); do
  for t in $TARGETS; do
    out="$WORK/wrk.$r.$t.txt"
    run_wrk "$t" "$DURATION" "$out"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then cat "$out" >&2; die "could not parse wrk's output for $t"; fi
    p50=$(to_ms "$p50"); p99=$(to_ms "$p99")
    # errors: non-2xx/3xx answers plus socket errors (connect, read, write, timeout)
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
                /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                END { print n + 0 }' "$out")
    RPS[$t]="${RPS[$t]} $rps"; P50[$t]="${P50[$t]} $p50"; P99[$t]="${P99[$t]} $p99"
    ERRS[$t]=$(( ${ERRS[$t]} + errs ))
    say "round $r/$RUNS  $(printf "%-${NAME_W}s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s" "$t" "$rps" "$p50" "$p99" "$errs")"
  done
done

stop_pid "$SAMPLER_PID" sampler
SAMPLER_PID=""
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

declare -A MRPS=() MP50=() MP99=() RSS=()
for t in $TARGETS; do
  # shellcheck disable=SC2086
  { MRPS[$t]=$(median ${RPS[$t]}); MP50[$t]=$(median ${P50[$t]}); MP99[$t]=$(median ${P99[$t]}); }
done
for t in $PROXIES; do
  kib=$(cat "$WORK/rss.$t" 2>/dev/null || echo 0)
  RSS[$t]=$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')
done

label() {
  case "$1" in
    direct)  echo "direct (nginx backend)" ;;
    nextup)  echo "nextup" ;;
    nginx)   echo "nginx proxy" ;;
    haproxy) echo "haproxy" ;;
    nextup-tls) echo "nextup-tls (TLS upstream)" ;;
    nginx-tls)  echo "nginx-tls (TLS upstream)" ;;
  esac
}
versions="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||'), haproxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }'), wrk $( { "$WRK" --version 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
machine="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), load average $LOAD_START at the start, $LOAD_END at the end"
[ "$TLS" = 1 ] && versions="$versions, $(openssl version | awk '{ print "openssl " $2 }') (CLI; certificates)"
params="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $RUNS interleaved round(s), warm-up ${WARMUP}s per target, 100-byte body, keep-alive GET"

row_values() {             # row_values TARGET -> tab-separated cells
  local t=$1 runs vd vn vh rss
  # shellcheck disable=SC2086
  runs=$(printf '%s\n' ${RPS[$t]} | awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $1 }')
  if [ "$t" = direct ]; then vd="1.00"; vn="-"; vh="-"; rss="-"
  elif [ "$t" = nextup-tls ] || [ "$t" = nginx-tls ]; then
    # like for like: the TLS rows compare with nginx-tls; there is no HAProxy TLS target
    vd=$(ratio "${MRPS[$t]}" "${MRPS[direct]}")
    vn=$(ratio "${MRPS[$t]}" "${MRPS[nginx-tls]}")
    vh="-"
    rss="${RSS[$t]}"
  else
    vd=$(ratio "${MRPS[$t]}" "${MRPS[direct]}")
    vn=$(ratio "${MRPS[$t]}" "${MRPS[nginx]}")
    vh=$(ratio "${MRPS[$t]}" "${MRPS[haproxy]}")
    rss="${RSS[$t]}"
  fi
  printf '%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(label "$t")" "${MRPS[$t]}" "${MP50[$t]}" "${MP99[$t]}" \
    "$runs" "$vd" "$vn" "$vh" "$rss" "${ERRS[$t]}"
}
HEAD=$'target\treq/s (median)\tp50 ms\tp99 ms\treq/s per run\tvs direct\tvs nginx\tvs haproxy\tpeak RSS MiB\terrors'

{
  echo "$HEAD"
  for t in $TARGETS; do row_values "$t"; done
} >"$WORK/table.tsv"

echo
echo "== nextup bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "   $params"
echo "   $machine; $versions"
echo
print_table "$WORK/table.tsv"
echo
echo "   medians over $RUNS run(s); vs = ratio of median req/s; peak RSS = max VmRSS sampled every 0.25 s"
echo "   (nginx proxy: master + 2 workers summed); errors = non-2xx + socket errors reported by wrk, all runs"
if [ "$TLS" = 1 ]; then
  TLS_RATIO=$(ratio "${MRPS[nextup-tls]}" "${MRPS[nginx-tls]}")
  echo "   TLS rows: plain HTTP from wrk, verified TLS from the proxy to the backend's ssl listener (same nginx);"
  echo "   their \"vs nginx\" is against nginx-tls (like for like), \"vs direct\" against the plain backend"
  echo "   nextup-tls vs nginx-tls: $TLS_RATIO (median req/s)"
fi

mkdir -p "$RESULTS_DIR"
{
  echo "# nextup bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- $params"
  echo "- $machine"
  echo "- $versions; nextup $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree may differ)"
  echo "- each proxy: 2 workers/threads, upstream keep-alive, access logs off, to the same nginx backend (1 worker)"
  if [ "$TLS" = 1 ]; then
    echo "- TLS rows: wrk speaks plain HTTP to the proxy, the proxy verified TLS (CA made at run time, SAN"
    echo "  DNS:localhost + IP:127.0.0.1) to the same backend's \`ssl\` listener; nextup-tls: \`NEXTUP_UPSTREAM_TLS=on\`,"
    echo "  upstream \`127.0.0.1:port\` (IP SAN checked); nginx-tls: \`proxy_pass https://\`, keepalive 64,"
    echo "  \`proxy_ssl_verify on\`, \`proxy_ssl_name localhost\`, \`proxy_ssl_session_reuse on\`"
  fi
  echo
  awk -F'\t' 'NR == 1 { s = "|"; d = "|"; for (i = 1; i <= NF; i++) { s = s " " $i " |"; d = d (i == 1 ? "---|" : "---:|") }
                        print s; print d; next }
              { s = "|"; for (i = 1; i <= NF; i++) s = s " " $i " |"; print s }' "$WORK/table.tsv"
  echo
  echo "Medians over $RUNS run(s). *vs* columns: ratio of median req/s. Peak RSS: max VmRSS sampled every 0.25 s"
  echo "during the runs (nginx proxy: master + workers summed). Errors: non-2xx plus socket errors reported by wrk."
  echo "wrk, the proxy and the backend share the machine's CPUs, so these numbers compare the proxies with each other."
  if [ "$TLS" = 1 ]; then
    echo
    echo "TLS rows: *vs nginx* is against nginx-tls (like for like), *vs direct* against the plain backend; no HAProxy"
    echo "TLS target. **nextup-tls vs nginx-tls: $TLS_RATIO** (median req/s)."
  fi
} >"$RESULTS_DIR/latest.md"
echo "   written: bench/results/latest.md"
say "done"
