#!/usr/bin/env bash
# scripts/make-tls-secrets.sh — the Secrets of deploy/kubernetes/overlays/upstream-mtls, for a
# test cluster: a CA, a server certificate for the orders replicas and a client certificate for
# shop-frontend's nextup, made with the openssl command.
#
# usage: scripts/make-tls-secrets.sh OUTDIR [NAMESPACE]
#
# Writes OUTDIR/orders-tls/{ca.crt,tls.crt,tls.key} and OUTDIR/shop-frontend-upstream-tls/
# {ca.crt,tls.crt,tls.key} (the key names of a kubernetes.io/tls Secret plus ca.crt, as
# cert-manager writes them), OUTDIR/ca.key (keep it or delete it), then prints the kubectl
# commands that create the two Secrets in NAMESPACE (default: shop); with KUBECTL_APPLY=1 it runs
# them. The orders certificate names orders-headless in every form a pod of NAMESPACE may use.
# Certificates last NEXTUP_TLS_DAYS days (default 30). In a real cluster let cert-manager or the
# mesh's CA issue them instead.
set -euo pipefail

die() { echo "make-tls-secrets: $*" >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUTDIR [NAMESPACE]"
out=$1
ns=${2:-shop}
days=${NEXTUP_TLS_DAYS:-30}
[[ "$ns" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "NAMESPACE=\"$ns\": expected a DNS label (a-z, 0-9, -)"
[[ "$days" =~ ^[1-9][0-9]{0,4}$ ]] || die "NEXTUP_TLS_DAYS=\"$days\": expected a number of days from 1 to 99999"
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

mkdir -p "$out/orders-tls" "$out/shop-frontend-upstream-tls"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ossl() { openssl "$@" 2>"$tmp/err" || { cat "$tmp/err" >&2; die "openssl $1 failed"; }; }

ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=nextup example CA" -keyout "$out/ca.key" -out "$tmp/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# issue NAME CN EXTFILE: a P-256 key and a certificate signed by the CA, in $out/NAME.
issue() {
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$out/$1/tls.key" -out "$tmp/$1.csr"
  ossl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -extfile "$3" -out "$out/$1/tls.crt"
  cp "$tmp/ca.crt" "$out/$1/ca.crt"
}

svc=orders-headless
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local" >"$tmp/server.ext"
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" \
  "subjectAltName=URI:spiffe://cluster.local/ns/$ns/sa/shop-frontend" >"$tmp/client.ext"
issue orders-tls "$svc.$ns.svc" "$tmp/server.ext"
issue shop-frontend-upstream-tls "shop-frontend.$ns" "$tmp/client.ext"

cmds=()
for s in orders-tls shop-frontend-upstream-tls; do
  cmds+=("kubectl -n $ns create secret generic $s --from-file=ca.crt=$out/$s/ca.crt --from-file=tls.crt=$out/$s/tls.crt --from-file=tls.key=$out/$s/tls.key")
done
echo "make-tls-secrets: CA, orders and shop-frontend key pairs in $out (valid $days days)"
for c in "${cmds[@]}"; do
  if [ "${KUBECTL_APPLY:-0}" = 1 ]; then
    echo "+ $c"
    $c
  else
    echo "  $c"
  fi
done
