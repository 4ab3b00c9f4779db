#!/usr/bin/env bash
# bench/churn_pods.sh — what the BPF programs cost per TCP connection with 1, 10, 30 ... pods running
# nextup on one node (issue 14). Run through bench/churn.sh with CHURN_PODS set, or directly:
#
# usage: CHURN_PODS="1 10 30" bench/churn.sh path/to/nextup [path/to/old/nextup]     (root)
#
# Each pod is a network namespace made here (ip netns) with a nextup of its own (own
# NEXTUP_BPF_PIN_DIR, one NEXTUP_BPF_NODE_DIR for all, made here), started with nsenter. Each nextup gets
# traffic (CHURN_POD_GETS requests through it to an upstream port that refuses: upstream connects its
# map counts, checked with bpftool). Then, with kernel.bpf_stats_enabled=1, a connection-churn loop runs
# in the first pod's namespace (CHURN_POD_CONNS loopback connect/accept/close cycles, one Python
# process) and the BPF time of nextup's programs over the loop is divided by the connections: median
# of CHURN_POD_RUNS loops. Nextup's programs are those using the node set's netns_maps (or, for an old
# nextup with one set per pod, any pod's pinned peer_stats): programs of other processes on the host
# are not counted, though their load shows in the spread. Also reported: how many nextup programs are
# loaded (attached), and that every pod's map counted its own traffic.
#
# With a second binary (an older nextup, one program set per pod), the same runs are made with it,
# interleaved per pod count, for a same-run comparison.
#
# Environment (defaults in brackets):
#   CHURN_PODS        pod counts                      ["1 10 30"]
#   CHURN_POD_CONNS   connections per churn loop      [3000]
#   CHURN_POD_RUNS    churn loops per pod count       [5]
#   CHURN_POD_GETS    requests through each nextup    [5]
# Written to bench/results/churn-pods.md too. Everything started here is stopped by PID; the namespaces,
# pin dirs and node dir are removed; kernel.bpf_stats_enabled is put back.
set -euo pipefail

LIB_NAME=churn-pods
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nextup_bin_arg "${1:-}"
OLD_BIN=${2:-}
[ -z "$OLD_BIN" ] || [ -x "$OLD_BIN" ] || die "old nextup $OLD_BIN is not executable"
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, BPF)"
for t in bpftool ip nsenter curl python3; do command -v "$t" >/dev/null || die "$t not found"; done

PODS=${CHURN_PODS:-"1 10 30"}
CONNS=${CHURN_POD_CONNS:-3000}
RUNS=${CHURN_POD_RUNS:-5}
GETS=${CHURN_POD_GETS:-5}
for v in CONNS RUNS GETS; do is_uint "${!v}" || die "CHURN_POD_$v must be a non-negative integer"; done
MAXPODS=0
for n in $PODS; do is_uint "$n" && [ "$n" -ge 1 ] || die "CHURN_PODS: '$n' is no pod count"; [ "$n" -gt "$MAXPODS" ] && MAXPODS=$n; done

REPO=$(cd "$(dirname "$0")/.." && pwd)
BPFFS=/sys/fs/bpf
NODE_DIR="$BPFFS/nextup-churn-node-$$"
NS_PREFIX="nxc$$-"
LISTEN=18080 ADMIN=18081 DEAD=18090
WORK=$(mktemp -d /tmp/nextup-churn-pods.XXXXXX)
PIDS=()
STATS_RESTORE=""

stop_all() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p" nextup >/dev/null 2>&1 || true; done
  PIDS=()
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  stop_all
  for i in $(seq "$MAXPODS"); do
    ip netns del "$NS_PREFIX$i" 2>/dev/null || true
    rm -rf "$BPFFS/nextup-churn-$$-$i"
  done
  rm -rf "$NODE_DIR"
  [ -n "$STATS_RESTORE" ] && sysctl -qw kernel.bpf_stats_enabled="$STATS_RESTORE"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

awk -v m="$BPFFS" '$2 == m { t = $3 } END { exit !(t == "bpf") }' /proc/self/mounts \
  || mount -t bpf bpf "$BPFFS" || die "bpffs is not mounted at $BPFFS"
for i in $(seq "$MAXPODS"); do
  ip netns del "$NS_PREFIX$i" 2>/dev/null || true
  ip netns add "$NS_PREFIX$i"
  ip -n "$NS_PREFIX$i" link set lo up
done
in_ns() { local i=$1; shift; nsenter --net="/var/run/netns/$NS_PREFIX$i" "$@"; }

cat >"$WORK/churn.py" <<'EOF'
import socket, sys
n = int(sys.argv[1])
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(128)
addr = l.getsockname()
for _ in range(n):
    c = socket.create_connection(addr)
    s, _ = l.accept()
    c.close()
    s.close()
EOF
cat >"$WORK/progs.py" <<'EOF'
# progs.py MAPID...: run_time_ns, run_cnt and count of the programs using any of the maps
import json, subprocess, sys
want = {int(a) for a in sys.argv[1:]}
progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True).stdout)
mine = [p for p in progs if want & set(p.get("map_ids", []))]
print(sum(p.get("run_time_ns", 0) for p in mine), sum(p.get("run_cnt", 0) for p in mine), len(mine))
EOF

start_pods() {             # start_pods BIN N: N nextups, pod i in namespace i; MAP_IDS: ours
  local bin=$1 n=$2 i code ok
  MAP_IDS=""
  for i in $(seq "$n"); do
    rm -rf "$BPFFS/nextup-churn-$$-$i"
    # nsenter execs env, env execs nextup: $! is nextup's PID.
    nsenter --net="/var/run/netns/$NS_PREFIX$i" env -i PATH="$PATH" NEXTUP_LISTEN="127.0.0.1:$LISTEN" NEXTUP_ADMIN="127.0.0.1:$ADMIN" \
      NEXTUP_UPSTREAMS="127.0.0.1:$DEAD" NEXTUP_WORKERS=1 NEXTUP_LOG_LEVEL=error NEXTUP_BPF=on \
      NEXTUP_EJECT_CONNECT_FAILURES=0 NEXTUP_EJECT_KERNEL_FAILURES=0 NEXTUP_MAX_RETRIES=0 \
      NEXTUP_BPF_PIN_DIR="$BPFFS/nextup-churn-$$-$i" NEXTUP_BPF_NODE_DIR="$NODE_DIR" \
      "$bin" </dev/null >"$WORK/nextup.$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in $(seq "$n"); do
    ok=""
    for _ in $(seq 100); do
      code=$(in_ns "$i" curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$ADMIN/readyz" || true)
      [ "$code" = 200 ] && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] || { show_logs "$WORK/nextup.$i.log"; die "pod $i: nextup not ready after 10 s"; }
    # Traffic: GETs through nextup, each an upstream connect the kernel refuses.
    for _ in $(seq "$GETS"); do in_ns "$i" curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$LISTEN/"; done
  done
  for i in $(seq "$n"); do
    local refused
    refused=$(bpftool -j map dump pinned "$BPFFS/nextup-churn-$$-$i/peer_stats" | python3 -c "
import json, sys
print(sum(e['formatted']['value']['refused'] for e in json.load(sys.stdin) if e['formatted']['key']['port'] == $DEAD))")
    [ "$refused" -ge "$GETS" ] || die "pod $i: its map counted $refused refused upstream connects, want >= $GETS"
    [ "$refused" -le $(( GETS * 2 )) ] || die "pod $i: its map counted $refused refused connects: another pod's?"
  done
  if [ -d "$NODE_DIR" ] && ls -d "$NODE_DIR"/v* >/dev/null 2>&1; then
    # One set for the node: its netns_maps.
    MAP_IDS=$(for s in "$NODE_DIR"/v*; do bpftool -j map show pinned "$s/netns_maps" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; done)
    SETS=$(ls -d "$NODE_DIR"/v* | wc -l)
  else
    # One set per pod (an old nextup): each pod's map.
    MAP_IDS=$(for i in $(seq "$n"); do bpftool -j map show pinned "$BPFFS/nextup-churn-$$-$i/peer_stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; done)
    SETS=$n
  fi
}

declare -A NS=() PROGS=() CNT=()
measure() {                # measure LABEL BIN N
  local label=$1 bin=$2 n=$3 r t0 c0 t1 c1 np vals="" cnts=""
  start_pods "$bin" "$n"
  # shellcheck disable=SC2086
  for r in $(seq "$RUNS"); do
    read -r t0 c0 np < <(python3 "$WORK/progs.py" $MAP_IDS)
    in_ns 1 python3 "$WORK/churn.py" "$CONNS"
    read -r t1 c1 np < <(python3 "$WORK/progs.py" $MAP_IDS)
    vals="$vals $(awk -v t=$(( t1 - t0 )) -v n="$CONNS" 'BEGIN { printf "%.0f", t / n }')"
    cnts="$cnts $(awk -v c=$(( c1 - c0 )) -v n="$CONNS" 'BEGIN { printf "%.1f", c / n }')"
  done
  # shellcheck disable=SC2086
  NS[$label/$n]=$(median $vals); CNT[$label/$n]=$(median $cnts); PROGS[$label/$n]=$np
  say "$(printf '%-4s %3d pod(s): %6s ns BPF time per connection (runs:%s), %s program runs per connection, %d nextup programs loaded, %d set(s)' \
    "$label" "$n" "${NS[$label/$n]}" "$vals" "${CNT[$label/$n]}" "$np" "$SETS")"
  stop_all
  if [ "$label" = new ]; then
    for _ in $(seq 50); do [ -z "$(ls -A "$NODE_DIR" 2>/dev/null)" ] && break; sleep 0.1; done
    [ -z "$(ls -A "$NODE_DIR" 2>/dev/null)" ] || die "the node dir still holds $(ls "$NODE_DIR") 5 s after the last nextup stopped"
  fi
}

STATS_RESTORE=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
say "pods: $PODS; $RUNS churn loop(s) of $CONNS connections per pod count, in pod 1's namespace; $GETS GETs per nextup"
note_load
for n in $PODS; do
  measure new "$NEXTUP_BIN" "$n"
  [ -z "$OLD_BIN" ] || measure old "$OLD_BIN" "$n"
done
sysctl -qw kernel.bpf_stats_enabled="$STATS_RESTORE"
STATS_RESTORE=""

first=${PODS%% *}
{
  echo "# nextup churn bench, pods on one node — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- $RUNS loop(s) of $CONNS loopback connect/accept/close cycles in pod 1's namespace, per pod count (median);"
  echo "  every pod's nextup had $GETS requests through it (upstream connects refused, counted in its own map)"
  echo "- $(nproc) CPUs, Linux $(uname -r); nextup $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -n "$OLD_BIN" ] && echo "; old: $OLD_BIN")"
  echo
  echo "| design | pods | BPF ns per connection | vs 1 pod | program runs per connection | nextup programs loaded |"
  echo "|---|---:|---:|---:|---:|---:|"
  for label in new old; do
    [ "$label" = old ] && [ -z "$OLD_BIN" ] && continue
    for n in $PODS; do
      echo "| $([ "$label" = new ] && echo 'one set per node' || echo 'one set per pod (old)') | $n | ${NS[$label/$n]} | $(awk -v a="${NS[$label/$n]}" -v b="${NS[$label/$first]}" 'BEGIN { printf "%.2fx", a / b }') | ${CNT[$label/$n]} | ${PROGS[$label/$n]} |"
    done
  done
} >"$WORK/table.md"
mkdir -p "$REPO/bench/results"
cp "$WORK/table.md" "$REPO/bench/results/churn-pods.md"
echo
cat "$WORK/table.md"
echo "   written: bench/results/churn-pods.md"
