#!/usr/bin/env bash
# scripts/demo.sh — what nextup does, in under a minute.
#
# usage: scripts/demo.sh path/to/nextup          (what `make demo` runs)
#
# Starts three demo replicas on loopback (tests/e2e/backend.py), nextup in front
# of them (NEXTUP_MAX_RETRIES=2, NEXTUP_CONNECT_TIMEOUT_MS=200), and a bounded
# client load (Python standard library: 4 threads, keep-alive, ~8 s, at most
# 20000 requests, paced over the whole run). In the middle of the load replica-2
# restarts as a replica does: it answers 503 for ~1.5 s (shutting down), is
# stopped (SIGTERM), stays down for ~3 s (refusing), and is started again on the
# same port. Then it prints what the client saw (requests, statuses, which
# replica answered, a per-second timeline), nextup's retry counters from its
# /metrics, access log lines with retries, and a short explanation.
#
# Exit status: 0 when every request the client sent got a 200; non-zero otherwise
# (or when something fails to start).
#
# Environment:
#   NEXTUP_DEMO_SECONDS   length of the client load in seconds, >= 2 [8]
#                         (below 6 s the outage is shortened to 40 % of it)
#   NEXTUP_DEMO_BACKEND   the replica program [tests/e2e/backend.py]
#                         (only for testing this script with a stand-in)
# Everything started here is stopped by PID when the script exits.
set -euo pipefail

die() { echo "demo: error: $*" >&2; exit 1; }
T0=${EPOCHREALTIME/,/.}
now() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%5.1f", b - a }'; }
step() { printf '[%ss] %s\n' "$(now)" "$*"; }

[ $# -eq 1 ] || die "usage: $0 path/to/nextup"
NEXTUP_BIN=$1
[ -x "$NEXTUP_BIN" ] || die "$NEXTUP_BIN is not an executable (build it with: make build/nextup)"
case "$NEXTUP_BIN" in /*) ;; *) NEXTUP_BIN="$PWD/$NEXTUP_BIN" ;; esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
BACKEND_PY=${NEXTUP_DEMO_BACKEND:-$REPO/tests/e2e/backend.py}
[ -f "$BACKEND_PY" ] || die "$BACKEND_PY not found"
command -v python3 >/dev/null || die "python3 not found (scripts/deps.sh demo)"
command -v curl >/dev/null || die "curl not found (scripts/deps.sh demo)"

SECONDS_LOAD=${NEXTUP_DEMO_SECONDS:-8}
awk -v s="$SECONDS_LOAD" 'BEGIN { exit !(s ~ /^[0-9]+(\.[0-9]+)?$/ && s >= 2 && s <= 600) }' \
  || die "NEXTUP_DEMO_SECONDS must be a number of seconds from 2 to 600, got '$SECONDS_LOAD'"
MAX_REQUESTS=20000
CLIENT_THREADS=4
# outage: ~3 s in the middle of the load (40 % of it for short runs)
DOWN_S=$(awk -v s="$SECONDS_LOAD" 'BEGIN { d = (s >= 6 ? 3 : s * 0.4); printf "%.1f", d }')
KILL_AT=$(awk -v s="$SECONDS_LOAD" -v d="$DOWN_S" 'BEGIN { printf "%.1f", (s - d) / 2 }')

# ---------------------------------------------------------------- cleanup
WORK=""
declare -A RPID=()         # replica number -> pid
NEXTUP_PID=""
CLIENT_PID=""
KNEXTUP_PID=""
PIN_DIR=""

stop_pid() {               # stop_pid PID NAME: SIGTERM, wait up to 5 s, then SIGKILL
  local pid=$1 name=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "demo: $name (pid $pid) still alive 5 s after SIGTERM, sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? n
  trap - EXIT INT TERM
  [ -n "$CLIENT_PID" ] && stop_pid "$CLIENT_PID" client
  [ -n "$NEXTUP_PID" ] && stop_pid "$NEXTUP_PID" nextup
  [ -n "$KNEXTUP_PID" ] && stop_pid "$KNEXTUP_PID" nextup
  for n in "${!RPID[@]}"; do stop_pid "${RPID[$n]}" "replica-$n"; done
  wait 2>/dev/null || true
  [ -n "$WORK" ] && rm -rf "$WORK"
  [ -n "$PIN_DIR" ] && rm -rf "$PIN_DIR"   # unpinning the links detaches the programs
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/nextup-demo.XXXXXX)

show_log() {               # show_log FILE: its last lines on stderr
  [ -s "$1" ] || return 0
  echo "--- $1 (last 20 lines):" >&2
  tail -n 20 "$1" >&2
}

# ---------------------------------------------------------------- ports
# eight ports nothing listens on right now (three replicas, nextup, its admin; the second
# nextup of the kernel scene, its admin, and the address nothing listens on), from
# 20000-31999: below the kernel's usual ephemeral range, so that no outgoing
# connection takes replica-2's port while it is down
read -r P1 P2 P3 LISTEN_PORT ADMIN_PORT K_LISTEN K_ADMIN K_DEAD < <(python3 -c '
import random, socket
ports = []
while len(ports) < 8:
    p = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        if p not in ports:
            ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*ports)')
declare -A RPORT=([1]=$P1 [2]=$P2 [3]=$P3)

start_replica() {          # start_replica N: starts replica-N, waits for "ready <port>"
  local n=$1 port=${RPORT[$1]} log="$WORK/replica-$1.log"
  : >"$log"
  python3 "$BACKEND_PY" --port "$port" --name "replica-$n" </dev/null >"$log" 2>&1 &
  RPID[$n]=$!
  for _ in $(seq 100); do
    grep -q "^ready $port\$" "$log" && return 0
    kill -0 "${RPID[$n]}" 2>/dev/null || { show_log "$log"; die "replica-$n exited during startup"; }
    sleep 0.05
  done
  show_log "$log"
  die "replica-$n did not print 'ready $port' within 5 s"
}

# ---------------------------------------------------------------- start
step "nextup demo: 3 replicas, nextup in front, ${SECONDS_LOAD} s of client load, replica-2 restarted in the middle"
for n in 1 2 3; do
  start_replica "$n"
  step "replica-$n listening on 127.0.0.1:${RPORT[$n]} (pid ${RPID[$n]})"
done

NEXTUP_LISTEN="127.0.0.1:$LISTEN_PORT" \
NEXTUP_ADMIN="127.0.0.1:$ADMIN_PORT" \
NEXTUP_UPSTREAMS="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3" \
NEXTUP_MAX_RETRIES=2 \
NEXTUP_CONNECT_TIMEOUT_MS=200 \
NEXTUP_LOG_LEVEL=warn \
  "$NEXTUP_BIN" </dev/null >"$WORK/access.log" 2>"$WORK/nextup.log" &
NEXTUP_PID=$!
ready=""
for _ in $(seq 100); do
  kill -0 "$NEXTUP_PID" 2>/dev/null || { show_log "$WORK/nextup.log"; die "nextup exited during startup"; }
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" || true)
  [ "$code" = 200 ] && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { show_log "$WORK/nextup.log"; die "nextup: GET /readyz not 200 after 10 s"; }
step "nextup listening on 127.0.0.1:$LISTEN_PORT (admin 127.0.0.1:$ADMIN_PORT), upstreams = the 3 replicas,"
step "  NEXTUP_MAX_RETRIES=2 NEXTUP_CONNECT_TIMEOUT_MS=200; GET /readyz -> 200"

curl -s -D "$WORK/first.head" -o "$WORK/first.body" --max-time 5 "http://127.0.0.1:$LISTEN_PORT/" \
  || { show_log "$WORK/nextup.log"; die "the first request through nextup failed"; }
first_status=$(awk 'NR == 1 { print $2 }' "$WORK/first.head" | tr -d '\r')
first_backend=$(awk -F': *' 'tolower($1) == "x-backend" { print $2 }' "$WORK/first.head" | tr -d '\r')
step "one request: curl http://127.0.0.1:$LISTEN_PORT/ -> $first_status, X-Backend: ${first_backend:-?}, body '$(tr -d '\n' <"$WORK/first.body")'"
[ "$first_status" = 200 ] || die "the first request through nextup answered $first_status"

# ---------------------------------------------------------------- load
cat >"$WORK/client.py" <<'PY'
"""Demo client: N threads, one keep-alive connection each, paced GETs, bounded."""
import collections, http.client, json, sys, threading, time

host, port, seconds, max_requests, threads, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
per_thread_rate = max_requests / seconds / threads      # pacing: spread the budget over the run
lock = threading.Lock()
sent = 0
statuses = collections.Counter()       # "200", "502", "error: ConnectionResetError", ...
replicas = collections.Counter()       # X-Backend -> count (200 only)
timeline = collections.defaultdict(collections.Counter)   # second -> {replica or "not 200": n}
answered_at = collections.defaultdict(list)                # replica -> [seconds since start]
start = time.monotonic()

def worker():
    global sent
    conn = None
    k = 0
    while True:
        due = start + k / per_thread_rate
        now = time.monotonic()
        if now - start >= seconds:
            break
        if due > now:
            time.sleep(min(due - now, seconds - (now - start)))
            continue
        with lock:
            if sent >= max_requests:
                break
            sent += 1
        k += 1
        t0 = time.monotonic() - start
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            key, who = str(r.status), r.getheader("X-Backend", "?")
            if r.will_close:
                conn.close(); conn = None
        except (OSError, http.client.HTTPException) as e:
            key, who = "error: " + type(e).__name__, None
            if conn is not None:
                conn.close()
            conn = None
        with lock:
            statuses[key] += 1
            if key == "200":
                replicas[who] += 1
                timeline[int(t0)][who] += 1
                answered_at[who].append(round(t0, 3))
            else:
                timeline[int(t0)]["not 200"] += 1
    if conn is not None:
        conn.close()

ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
for th in ts: th.start()
for th in ts: th.join()
with open(out, "w") as f:
    json.dump({"sent": sent, "elapsed": time.monotonic() - start, "statuses": statuses,
               "replicas": replicas, "timeline": {str(k): v for k, v in sorted(timeline.items())},
               "answered_at": answered_at}, f)
PY

step "client load: $CLIENT_THREADS threads, keep-alive, ${SECONDS_LOAD} s, at most $MAX_REQUESTS requests"
LOAD_T0=${EPOCHREALTIME/,/.}
python3 "$WORK/client.py" 127.0.0.1 "$LISTEN_PORT" "$SECONDS_LOAD" "$MAX_REQUESTS" "$CLIENT_THREADS" \
  "$WORK/client.json" </dev/null >"$WORK/client.log" 2>&1 &
CLIENT_PID=$!
since_load() { awk -v a="$LOAD_T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }

# First the 5xx part of a restart: replica-2 answers 503 for a while, as a replica shutting down does.
BUSY_S=$(awk -v k="$KILL_AT" 'BEGIN { b = (k >= 3 ? 1.5 : k / 2); printf "%.1f", b }')
sleep "$(awk -v k="$KILL_AT" -v b="$BUSY_S" 'BEGIN { printf "%.1f", k - b }')"
step "load t=$(since_load)s: replica-2 starts answering 503 (shutting down) for ${BUSY_S} s"
BUSY_FROM=$(since_load)
curl -sf --max-time 2 -X POST "http://127.0.0.1:$P2/_control/mode/503" >/dev/null \
  || die "could not switch replica-2 to mode 503"
sleep "$BUSY_S"
step "load t=$(since_load)s: stopping replica-2 (SIGTERM to pid ${RPID[2]})"
DOWN_FROM=$(since_load)
stop_pid "${RPID[2]}" replica-2
wait "${RPID[2]}" 2>/dev/null || true
unset 'RPID[2]'
step "load t=$(since_load)s: replica-2 is down; 127.0.0.1:$P2 refuses connections"
sleep "$DOWN_S"
step "load t=$(since_load)s: starting replica-2 again on 127.0.0.1:$P2"
start_replica 2
DOWN_TO=$(since_load)
step "load t=${DOWN_TO}s: replica-2 is back (pid ${RPID[2]})"

client_rc=0
wait "$CLIENT_PID" || client_rc=$?
CLIENT_PID=""
if [ "$client_rc" != 0 ] || [ ! -s "$WORK/client.json" ]; then
  show_log "$WORK/client.log"
  die "the client failed (status $client_rc)"
fi
step "load finished"

curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics.txt" \
  || die "GET /metrics on 127.0.0.1:$ADMIN_PORT failed"
kill -0 "$NEXTUP_PID" 2>/dev/null || { show_log "$WORK/nextup.log"; die "nextup died during the demo"; }
stop_pid "$NEXTUP_PID" nextup
nextup_rc=0
wait "$NEXTUP_PID" 2>/dev/null || nextup_rc=$?
NEXTUP_PID=""
if [ "$nextup_rc" = 0 ]; then
  step "stopped nextup with SIGTERM: exit status 0"
else
  step "note: nextup exited with status $nextup_rc after SIGTERM (expected 0)"
fi

# ---------------------------------------------------------------- report
echo
if python3 - "$WORK/client.json" "$WORK/metrics.txt" "$WORK/nextup.log" "$DOWN_FROM" "$DOWN_TO" \
    "$BUSY_FROM" "$WORK/access.log" <<'PY'
import json, re, sys, textwrap
res = json.load(open(sys.argv[1]))
metrics = open(sys.argv[2]).read().splitlines()
log = open(sys.argv[3], errors="replace").read().splitlines()
down_from, down_to = float(sys.argv[4]), float(sys.argv[5])
busy_from = float(sys.argv[6])
access = open(sys.argv[7], errors="replace").read().splitlines()
sent, statuses, replicas = res["sent"], res["statuses"], res["replicas"]
bad = sent - statuses.get("200", 0)

print("== what the client saw")
print("  requests sent:  %d in %.1f s (%.0f req/s)" % (sent, res["elapsed"], sent / max(res["elapsed"], 1e-9)))
print("  statuses:       " + ", ".join("%s: %d" % kv for kv in sorted(statuses.items())))
print("  answered by:    " + ", ".join("%s: %d" % kv for kv in sorted(replicas.items())))
names = sorted(replicas)
cols = names + (["not 200"] if bad else [])
print()
print("  per second (replica-2 down from t=%.1f s to t=%.1f s):" % (down_from, down_to))
print("    %-6s" % "t" + "".join("%11s" % c for c in cols))
for sec, counts in res["timeline"].items():
    s = int(sec)
    if s >= down_from and s + 1 <= down_to:
        mark = "  <- replica-2 down"
    elif s + 1 > down_from and s < down_to:
        mark = "  <- replica-2 down part of this second"
    else:
        mark = ""
    print("    %-6s" % ("%d-%d" % (s, s + 1)) + "".join("%11d" % counts.get(c, 0) for c in cols) + mark)

print()
print("== nextup's counters (GET /metrics)")
shown = [l for l in metrics if l.startswith(("nextup_retries_total", "nextup_upstream_attempts_total",
                                                 "nextup_downstream_requests_total",
                                                 "nextup_keepalive_race_resends_total"))]
for l in shown:
    print("  " + l)
if not shown:
    print("  (no nextup_retries_total / nextup_upstream_attempts_total lines found)")

def value(line):
    try:
        return float(line.rsplit(None, 1)[1])
    except (IndexError, ValueError):
        return 0.0

retries = {}
for l in metrics:
    m = re.match(r'nextup_retries_total\{(.*)\}\s+(\S+)', l)
    if m:
        reason = re.search(r'reason="([^"]*)"', m.group(1))
        key = reason.group(1) if reason else m.group(1)
        retries[key] = retries.get(key, 0) + value(l)
    elif re.match(r'nextup_retries_total\s', l):
        retries["all"] = retries.get("all", 0) + value(l)
total_retries = int(sum(retries.values()))
attempts = sum(value(l) for l in metrics if re.match(r'nextup_upstream_attempts_total(\{|\s)', l))
downstream = sum(value(l) for l in metrics if re.match(r'nextup_downstream_requests_total(\{|\s)', l))
resends = sum(value(l) for l in metrics if re.match(r'nextup_keepalive_race_resends_total(\{|\s)', l))
by_reason = ", ".join("%s: %d" % (k, v) for k, v in sorted(retries.items()) if v) or "none"

retried_lines = [l for l in access if '"retries":[]' not in l]
print()
print("== nextup's access log (stdout): %d line(s), %d with retries; a few of those:" % (len(access), len(retried_lines)))
for l in retried_lines[:4]:
    print("  " + l)

if log:
    print()
    print("== nextup's log (warnings and errors): %d line(s)%s" % (len(log), ", the first 8:" if len(log) > 8 else ":"))
    for l in log[:8]:
        print("  " + l)

r2 = sorted(res["answered_at"].get("replica-2", []))
r2_before = sum(1 for t in r2 if t < down_from)
r2_after = [t for t in r2 if t > down_to]
refused = int(retries.get("refused", 0))

print()
print("== what happened")
status_retries = int(retries.get("status", 0))
p = ("replica-2 answered 503 from t=%.1f s: nextup aborted %d such response(s) before any byte reached the "
     "client and retried them on another replica (nextup_retries_total{reason=\"status\"}). "
     % (busy_from, status_retries))
p += ("Then replica-2 was down for %.1f s (from t=%.1f s to t=%.1f s of the load). "
      % (down_to - down_from, down_from, down_to))
p += ("nextup's connections to it were refused %d time(s) (nextup_retries_total{reason=\"refused\"}), "
      "and each such request was retried on another replica; in all nextup retried %d attempt(s) "
      "(by reason: %s) and made %d upstream attempts for %d downstream requests (the client's %d "
      "plus the one curl above). " % (refused, total_retries, by_reason, attempts, downstream, sent))
if resends:
    p += ("%d request(s) had been written on a pooled connection that the stopping replica closed; "
          "nextup sent them again on a fresh connection (nextup_keepalive_race_resends_total). " % resends)
if bad == 0:
    p += "The client saw 0 errors: all %d requests got a 200. " % sent
else:
    p += "The client saw %d request(s) that did not get a 200 (%s). " % (
        bad, ", ".join("%s: %d" % kv for kv in sorted(statuses.items()) if kv[0] != "200"))
p += "replica-2 answered %d request(s) before it stopped" % r2_before
if r2_after:
    p += (" and %d after it came back (the first at t=%.1f s, %.1f s after its restart)."
          % (len(r2_after), r2_after[0], r2_after[0] - down_to))
else:
    p += (" and none after it came back: a refused connection takes a peer down until a probe connects "
          "(every NEXTUP_HEALTH_INTERVAL_MS), and a draining one waits for its trial; that had not happened "
          "before the load ended. A longer run shows it return, e.g. NEXTUP_DEMO_SECONDS=15.")
print(textwrap.fill(p, width=100))
sys.exit(1 if bad else 0)
PY
then
  main_ok=1
else
  main_ok=0
fi

# ---------------------------------------------------------------- the kernel's view
# The application's own connections to a replica fail (it refuses them); nextup
# never sent it a request, yet the kernel saw it and nextup's next requests skip it.
echo
step "scene 2: the kernel's view. The application (curl, not through nextup) cannot reach 127.0.0.1:$K_DEAD"
kernel_scene() {
  if [ "$(id -u)" != 0 ]; then
    step "  BPF unavailable: not root (loading the eBPF programs needs CAP_BPF); scene skipped"
    return 0
  fi
  if ! mountpoint -q /sys/fs/bpf; then
    if mount -t bpf bpf /sys/fs/bpf 2>"$WORK/mount.err"; then
      step "  bpffs was not mounted: mounted it at /sys/fs/bpf"
    else
      step "  BPF unavailable: bpffs is not mounted and mounting it failed ($(head -c 200 "$WORK/mount.err")); scene skipped"
      return 0
    fi
  fi
  PIN_DIR=/sys/fs/bpf/nextup-demo-$$
  NEXTUP_LISTEN="127.0.0.1:$K_LISTEN" NEXTUP_ADMIN="127.0.0.1:$K_ADMIN" \
  NEXTUP_UPSTREAMS="127.0.0.1:$P1,127.0.0.1:$P3,127.0.0.1:$K_DEAD" \
  NEXTUP_BPF=on NEXTUP_BPF_PIN_DIR="$PIN_DIR" NEXTUP_HEALTH_INTERVAL_MS=100 NEXTUP_LOG_LEVEL=info \
  NEXTUP_ACCESS_LOG=off NEXTUP_WORKERS=1 \
    "$NEXTUP_BIN" </dev/null >"$WORK/k-nextup.log" 2>&1 &
  KNEXTUP_PID=$!
  for _ in $(seq 100); do
    if ! kill -0 "$KNEXTUP_PID" 2>/dev/null; then
      KNEXTUP_PID=""
      step "  BPF unavailable: $(grep -m1 -i 'bpf' "$WORK/k-nextup.log" || tail -n 1 "$WORK/k-nextup.log"); scene skipped"
      return 0
    fi
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$K_ADMIN/readyz" || true)" = 200 ] && break
    sleep 0.1
  done
  step "  a second nextup with NEXTUP_BPF=on in front of replica-1, replica-3 and 127.0.0.1:$K_DEAD (nothing listens there)"
  for i in 1 2 3; do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$K_DEAD/app/$i" || true; done
  step "  the application's 3 connects to 127.0.0.1:$K_DEAD were refused; nextup's log says:"
  local line=""
  for _ in $(seq 40); do
    line=$(grep -m1 "127.0.0.1:$K_DEAD: healthy -> " "$WORK/k-nextup.log" || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  if [ -z "$line" ]; then
    show_log "$WORK/k-nextup.log"
    step "  no transition line for 127.0.0.1:$K_DEAD within 2 s" >&2
    return 1
  fi
  step "    $line"
  local ok=0 i
  for i in $(seq 20); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$K_LISTEN/after/$i")" = 200 ] && ok=$((ok + 1))
  done
  curl -sf --max-time 5 "http://127.0.0.1:$K_ADMIN/metrics" >"$WORK/k-metrics.txt" || return 1
  local attempts retries
  attempts=$(awk '$1 == "nextup_upstream_attempts_total" { print $2 }' "$WORK/k-metrics.txt")
  retries=$(awk '$1 ~ /^nextup_retries_total/ { s += $2 } END { print s + 0 }' "$WORK/k-metrics.txt")
  step "  then 20 requests through nextup: $ok answered 200, $attempts upstream attempts, $retries retries:"
  step "  none was tried on 127.0.0.1:$K_DEAD, which nextup itself never tried"
  stop_pid "$KNEXTUP_PID" nextup
  KNEXTUP_PID=""
  rm -rf "$PIN_DIR"
  PIN_DIR=""
  [ "$ok" = 20 ] && [ "$attempts" = 20 ]
}
kernel_ok=1
kernel_scene || kernel_ok=0

echo
if [ "$main_ok" = 1 ] && [ "$kernel_ok" = 1 ]; then
  step "demo passed: every request got a 200"
else
  [ "$main_ok" = 1 ] || step "demo FAILED: the client saw requests that did not get a 200" >&2
  [ "$kernel_ok" = 1 ] || step "demo FAILED: the kernel's view scene did not skip the unreachable replica" >&2
  exit 1
fi
