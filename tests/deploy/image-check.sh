#!/usr/bin/env bash
# Builds deploy/Dockerfile for real and runs the image the way each variant's manifests run the
# nextup container (uid, capabilities, read-only root, no_new_privs, hostPath mounts, env), in a
# network namespace of its own with a stand-in replica: probes, a call through the proxy,
# bpftool in the container, the preStop hook, SIGTERM and the exit code.
#
# Optional, not part of tests/deploy/run.sh: it needs root, podman (+ runc, debootstrap: installed
# with apt-get when missing) and the Debian mirror, and takes a few minutes.
#
# debian:12 and debian:12-slim cannot be pulled where no container registry is reachable, so a
# stand-in base is made with debootstrap (minbase bookworm, this machine's apt sources) and given
# to the build as DEBIAN_IMAGE / DEBIAN_SLIM_IMAGE -- under its own name, never the official ones.
#
# Differences from a real cluster, on purpose: every service's upstreams point at the stand-in replica
# (127.0.0.1) instead of the Service name (tests/deploy/run.sh covers the name with a stand-in
# DNS); podman's default seccomp profile refuses bpf() without CAP_SYS_ADMIN (containerd >= 1.7's
# does not), so the BPF variant runs with seccomp=unconfined and this script says so, after
# showing the refusal.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

BASE_IMAGE=localhost/nextup-check-base:bookworm
IMAGE=localhost/nextup:check
passed=0 failed=0
ok()   { echo "  ok: $*"; passed=$((passed + 1)); }
bad()  { echo "  FAILED: $*" >&2; failed=$((failed + 1)); }
step() { echo "== $*"; }

[ "$(id -u)" -eq 0 ] || { echo "image-check: needs root (podman, network namespaces, bpffs)" >&2; exit 1; }
missing=""
for p in podman runc debootstrap curl python3; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "image-check: installing:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -d "$here/node_modules" ] || (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

work="$(mktemp -d /tmp/nextup-image-check.XXXXXX)"
netns="nextup-check-$$"
cleanup() {
  podman rm -f nextup-check-nobpf nextup-check-bpf >/dev/null 2>&1 || true
  [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
  rm -rf /sys/fs/bpf/nextup-*_shop-frontend-check-$$ "$work"
}
trap cleanup EXIT

# Sandboxes that cannot raise rlimits or run crun with hybrid cgroups: no default ulimits, runc.
printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
RUN=(podman run --runtime runc)

step "base image $BASE_IMAGE"
if ! podman image exists "$BASE_IMAGE"; then
  debootstrap --variant=minbase bookworm "$work/rootfs" >"$work/debootstrap.log" 2>&1 \
    || { tail -5 "$work/debootstrap.log" >&2; exit 1; }
  rm -f "$work/rootfs/etc/apt/sources.list"
  cp -a /etc/apt/sources.list.d "$work/rootfs/etc/apt/" 2>/dev/null || true
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$work/rootfs/etc/apt/"
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/archives/"*.deb
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$work/rootfs"
fi
ok "base image ready"

step "podman build -f deploy/Dockerfile (builder: scripts/deps.sh build + make; runtime: slim)"
if podman build --isolation chroot --network host --pull=never \
    --build-arg DEBIAN_IMAGE="$BASE_IMAGE" --build-arg DEBIAN_SLIM_IMAGE="$BASE_IMAGE" \
    --ignorefile deploy/Dockerfile.dockerignore -f deploy/Dockerfile -t "$IMAGE" . >"$work/build.log" 2>&1; then
  ok "image built ($(podman image inspect "$IMAGE" --format '{{.Size}}') bytes)"
else
  tail -30 "$work/build.log" >&2; bad "podman build"; echo "$passed passed, $failed failed"; exit 1
fi

step "the image: libraries, bpftool, default user"
if "${RUN[@]}" --rm --network none --entrypoint ldd "$IMAGE" /usr/local/bin/nextup >"$work/ldd" 2>&1 && ! grep -q 'not found' "$work/ldd"; then
  ok "ldd /usr/local/bin/nextup: every library found"
else
  cat "$work/ldd" >&2; bad "ldd in the image"
fi
"${RUN[@]}" --rm --network none --entrypoint bpftool "$IMAGE" version >/dev/null 2>&1 && ok "bpftool runs" || bad "bpftool in the image"
u="$("${RUN[@]}" --rm --network none --entrypoint id "$IMAGE" -u 2>&1)"
[ "$u" = 65532 ] && ok "default user 65532" || bad "default user is $u"
"${RUN[@]}" --rm --network none "$IMAGE" --help >/dev/null 2>&1 && ok "ENTRYPOINT nextup --help" || bad "nextup --help"

ip netns add "$netns"
ip netns exec "$netns" ip link set lo up
ip netns exec "$netns" python3 -m http.server 18080 --bind 127.0.0.1 >/dev/null 2>&1 &
echo $! > "$work/backend.pid"
sleep 0.5
nsget() { ip netns exec "$netns" curl -s -o /dev/null -w '%{http_code}' --max-time 3 ${3:+-H "Host: $3"} "http://127.0.0.1:$1$2" || true; }

# One variant: settings from the rendered manifests (tests/deploy/lib/container-settings.js).
check_variant() {
  local variant=$1 dir=$2 name=$3 pod="shop-frontend-check-$$"
  step "$variant: the image run as $dir runs the nextup container"
  local s; s="$(node "$here/lib/container-settings.js" "$dir" "$pod")"
  get() { node -e 'const s=JSON.parse(process.argv[1]); const v=process.argv[2].split(".").reduce((o,k)=>o==null?o:o[k],s); process.stdout.write(Array.isArray(v)?v.join(" "):String(v??""))' "$s" "$1"; }
  local args=(--name "$name" -d --network "ns:/run/netns/$netns" --user "$(get user):$(get group)")
  [ -n "$(get user)" ] || args=(--name "$name" -d --network "ns:/run/netns/$netns")
  for c in $(get capDrop); do args+=(--cap-drop "$c"); done
  for c in $(get capAdd); do args+=(--cap-add "$c"); done
  [ "$(get readOnlyRoot)" = true ] && args+=(--read-only)
  [ "$(get noNewPrivs)" = true ] && args+=(--security-opt no-new-privileges)
  [ "$(get privileged)" = true ] && args+=(--privileged)
  local n i; n=$(node -e 'console.log(JSON.parse(process.argv[1]).mounts.length)' "$s")
  for ((i = 0; i < n; i++)); do
    local ro=""; [ "$(get mounts.$i.readOnly)" = true ] && ro=":ro"
    args+=(-v "$(get mounts.$i.host):$(get mounts.$i.container)$ro")
  done
  while IFS= read -r kv; do args+=(-e "$kv"); done < <(node -e '
    const e = JSON.parse(process.argv[1]).env;
    // The stand-in replica, for the one service of NEXTUP_UPSTREAMS or each of NEXTUP_SERVICES.
    for (const k of Object.keys(e)) if (k === "NEXTUP_UPSTREAMS" || /^NEXTUP_SERVICE_.+_UPSTREAMS$/.test(k)) e[k] = "127.0.0.1:18080";
    for (const [k, v] of Object.entries(e)) console.log(`${k}=${v}`);' "$s")
  local admin listen
  admin="$(get env.NEXTUP_ADMIN)"; admin="${admin##*:}"
  listen="$(get env.NEXTUP_LISTEN)"; listen="${listen##*:}"

  if [ -n "$(get capAdd)" ] && [ "$(get env.NEXTUP_BPF)" = on ]; then
    "${RUN[@]}" "${args[@]}" "$IMAGE" >/dev/null
    sleep 1.5
    if [ "$(podman inspect "$name" --format '{{.State.Running}}')" = false ]; then
      echo "  note: with podman's default seccomp profile nextup stops: $(podman logs "$name" 2>&1 | grep -v '^{' | tail -1)"
      echo "  note: (containerd >= 1.7's RuntimeDefault allows bpf() with CAP_BPF); again with seccomp=unconfined"
    else
      echo "  note: podman's default seccomp profile let nextup load its programs"
    fi
    podman rm -f "$name" >/dev/null
    rm -rf "$(get env.NEXTUP_BPF_PIN_DIR)"
    args+=(--security-opt seccomp=unconfined)
  fi
  "${RUN[@]}" "${args[@]}" "$IMAGE" >/dev/null
  local code=000 t
  for t in $(seq 1 30); do
    code="$(nsget "$admin" /healthz)"; [ "$code" = 200 ] && break; sleep 0.2
  done
  local p path port
  n=$(node -e 'console.log(JSON.parse(process.argv[1]).probes.length)' "$s")
  for ((i = 0; i < n; i++)); do
    path="$(get probes.$i.path)"; port="$(get probes.$i.port)"
    code="$(nsget "$port" "$path")"
    [ "$code" = 200 ] && ok "$(get probes.$i.name) probe GET $path on :$port -> 200" || bad "$(get probes.$i.name) probe GET $path on :$port -> $code"
  done
  # With NEXTUP_SERVICES, a call names its service (Host: the first one); NEXTUP_UPSTREAMS takes any.
  local svc; svc="$(get env.NEXTUP_SERVICES)"; svc="${svc%%,*}"
  code="$(nsget "$listen" / "$svc")"
  [ "$code" = 200 ] && ok "a call through 127.0.0.1:$listen -> 200" || bad "a call through 127.0.0.1:$listen -> $code"
  local caps; caps="$(podman exec "$name" grep CapEff /proc/1/status | awk '{print $2}')"
  echo "  nextup's effective capabilities: $caps"
  local pin; pin="$(get env.NEXTUP_BPF_PIN_DIR)"
  if [ "$(get env.NEXTUP_BPF)" = on ]; then
    if podman exec "$name" bpftool map show pinned "$pin/peer_stats" >"$work/show" 2>&1; then
      ok "in the container: bpftool map show pinned $pin/peer_stats: $(head -1 "$work/show")"
    else
      bad "bpftool map show in the container: $(cat "$work/show")"
    fi
    if podman exec "$name" bpftool map dump pinned "$pin/peer_stats" >"$work/dump" 2>&1; then
      ok "in the container: bpftool map dump works"
    else
      echo "  note: in the container, bpftool map dump: $(tail -1 "$work/dump") (needs CAP_SYS_ADMIN for the map's BTF; see deploy/README.md, Kubernetes, step by step)"
    fi
  fi
  if [ -n "$(get preStop)" ]; then
    local cmd=(); while IFS= read -r a; do cmd+=("$a"); done < <(node -e 'for (const a of JSON.parse(process.argv[1]).preStop) console.log(a)' "$s")
    if podman exec "$name" "${cmd[@]}"; then ok "preStop hook exits 0"; else bad "preStop hook"; fi
    if [ -n "$pin" ] && [ -e "$pin" ]; then bad "preStop left $pin"; elif [ -n "$pin" ]; then ok "preStop removed $pin"; fi
  fi
  podman stop -t "$(get grace)" "$name" >/dev/null
  code="$(podman inspect "$name" --format '{{.State.ExitCode}}')"
  [ "$code" = 0 ] && ok "SIGTERM: nextup drained and exited 0" || { podman logs "$name" 2>&1 | tail -5 >&2; bad "exit code after SIGTERM: $code"; }
  podman rm -f "$name" >/dev/null
}

check_variant no-bpf deploy/kubernetes/overlays/no-bpf nextup-check-nobpf
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] && [ -r /sys/kernel/btf/vmlinux ]; then
  check_variant bpf deploy/kubernetes nextup-check-bpf
else
  echo "== bpf: SKIPPED: this machine has no bpffs at /sys/fs/bpf or no kernel BTF"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
