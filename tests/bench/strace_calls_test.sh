#!/usr/bin/env bash
# tests/bench/strace_calls_test.sh — strace_calls (bench/lib.sh) on `strace -c` tables as strace
# 6.1 writes them: rows with and without an errors cell, the total row left out, and strace's own
# messages after the table ignored. usage: tests/bench/strace_calls_test.sh
set -euo pipefail
LIB_NAME=strace_calls_test
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../bench/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
check() {                  # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then passed=$(( passed + 1 ))
  else failed=$(( failed + 1 )); printf 'FAIL %s\n--- expected\n%s\n--- got\n%s\n' "$1" "$2" "$3"; fi
}

cat >"$tmp/a.txt" <<'T'
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 79.31    0.254985          42      6032           writev
 14.50    0.046612           7      6037         4 recvfrom
  6.00    0.019275          22       865           epoll_wait
  0.03    0.000082          10         8           setsockopt
------ ----------- ----------- --------- --------- ----------------
100.00    0.321497          24     12942         4 totalstrace: Process 23868 attached
strace: Process 23868 detached
T
check "rows, errors cell or not" "writev 6032
recvfrom 6037
epoll_wait 865
setsockopt 8" "$(strace_calls "$tmp/a.txt")"
check "sum of rows" 12942 "$(strace_calls "$tmp/a.txt" | awk '{ n += $2 } END { print n }')"

# nothing traced: strace prints the header, the rules and a zero total
cat >"$tmp/b.txt" <<'T'
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
------ ----------- ----------- --------- --------- ----------------
100.00    0.000000           0         0           total
T
check "empty table" "" "$(strace_calls "$tmp/b.txt")"
check "missing file is empty" "" "$(strace_calls "$tmp/none.txt" 2>/dev/null || true)"

# cpu_ns: this shell's own threads have run for more than 0 ns; a gone pid counts 0
check "cpu_ns of a gone pid" 0 "$(cpu_ns 999999999)"
if [ "$(cpu_ns $$)" -gt 0 ]; then passed=$(( passed + 1 )); else failed=$(( failed + 1 )); echo "FAIL cpu_ns of \$\$ is 0"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
