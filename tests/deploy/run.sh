#!/usr/bin/env bash
# Offline validation of deploy/ (Kubernetes manifests and Dockerfile): tests/deploy/deploy.test.js
# with Node's test runner. No cluster, no container engine, no kubectl needed (kubectl kustomize,
# where installed, is compared with the built-in renderer).
#   NEXTUP_BIN   the nextup binary to check the manifests against (default: build/nextup)
# Installs the pinned npm packages (package-lock.json) into tests/deploy/node_modules first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

export NEXTUP_BIN="${NEXTUP_BIN:-build/nextup}"

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "tests/deploy: $tool is not installed (needs Node >= 18 and npm)" >&2; exit 1; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || { echo "tests/deploy: Node $(node --version) is too old (needs >= 18)" >&2; exit 1; }
[ -x "$NEXTUP_BIN" ] || { echo "tests/deploy: $NEXTUP_BIN is missing: run make first, or set NEXTUP_BIN" >&2; exit 1; }

# npm ci only when node_modules is not what the lock file says (npm writes its own copy of the
# lock into node_modules/.package-lock.json on install).
lock="$here/package-lock.json"
installed="$here/node_modules/.package-lock.json"
if [ ! -f "$installed" ] || ! node -e '
  const [a, b] = process.argv.slice(1).map((f) => require(f).packages);
  const strip = (p) => Object.fromEntries(Object.entries(p).filter(([k]) => k !== "").map(([k, v]) => [k, v.version]));
  process.exit(JSON.stringify(strip(a)) === JSON.stringify(strip(b)) ? 0 : 1);' "$lock" "$installed"; then
  echo "tests/deploy: npm ci (kubernetes-models, yaml; pinned by package-lock.json)"
  if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error); then
    echo "tests/deploy: FAILED: npm ci could not install the test's packages." >&2
    echo "tests/deploy: is the npm registry reachable from here? (npm config get registry: $(npm config get registry 2>/dev/null))" >&2
    exit 1
  fi
fi

exec node --test --test-reporter=spec "$here/deploy.test.js"
