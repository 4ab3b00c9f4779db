#!/usr/bin/env bash
# Installs the Debian packages a make target needs, and only those missing.
# usage: scripts/deps.sh build|test|demo|bench
# dpkg is asked first; apt-get runs only when something is missing, so a
# machine that has everything never touches the network.
set -euo pipefail

build_pkgs="gcc make pkg-config libevent-dev node-llhttp libssl-dev libbpf-dev libelf-dev zlib1g-dev bpftool clang llvm"
# prometheus: its promtool checks a live /metrics (tests/e2e/test_metrics.py).
test_pkgs="$build_pkgs libcmocka-dev libclang-rt-14-dev python3 curl iproute2 procps openssl nginx-light prometheus"
demo_pkgs="$build_pkgs python3 curl"
bench_pkgs="$build_pkgs nginx-light haproxy wrk procps strace curl openssl"

case "${1:-build}" in
  build) want=$build_pkgs ;;
  test)  want=$test_pkgs ;;
  demo)  want=$demo_pkgs ;;
  bench) want=$bench_pkgs ;;
  *) echo "scripts/deps.sh: unknown set '$1' (expected build, test, demo or bench)" >&2; exit 2 ;;
esac

# Node.js runs the offline manifest checks (tests/deploy); the machines have it, Debian's
# package stands in where they do not.
if [ "${1:-build}" = test ] && ! command -v node >/dev/null 2>&1; then
  want="$want nodejs npm"
fi

missing=""
for p in $want; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "scripts/deps.sh: installing:$missing" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
