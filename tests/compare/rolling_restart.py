#!/usr/bin/env python3
"""The rolling-restart scenario of tests/e2e/test_response_retry.py against nextup,
nginx and HAProxy, side by side.

usage: tests/compare/rolling_restart.py [--proxy nextup|nginx|haproxy|all] [--runs N] [--overlap] [--json FILE]

Per run: three fresh backend.py replicas (r0..r2, one shared delivery log), one
proxy in front of them on 127.0.0.1, a steady client load (6 threads, keep-alive,
40 requests/s each; half GET, half POST /echo with a random body, half of the POSTs
with Idempotency-Key; a unique X-Request-Id each), and the schedule: after 1 s,
each replica in turn is put in mode 503 for 1.5 s, stopped (refusing) for 1.5 s,
started again in mode ok, then 1 s before the next; the load ends 0.5 s after the
last restart. With --overlap: replica i comes back at the moment replica i+1 starts
draining (2 s of 503 with Connection: close, its idle connections closed, then 2 s
refused). Then the client's records are matched with the replicas' log.

Proxies (each started on its own, stopped by PID after its run):
  nextup         $NEXTUP_BIN or build/nextup, NEXTUP_WORKERS=2,
                 NEXTUP_RETRY_ON=connect-failure,refused,reset,gateway-error (as the e2e test)
  nextup-defaults  the same with every NEXTUP_* default (NEXTUP_RETRY_ON without reset)
  nginx          /usr/sbin/nginx, 2 workers, upstream keepalive 32,
                 proxy_next_upstream error timeout http_502 http_503 http_504;
                 proxy_next_upstream_tries 3; in two variants:
                   nginx-default  max_fails=1 fail_timeout=10s (nginx's defaults)
                   nginx-ft1s     max_fails=1 fail_timeout=1s
  haproxy        /usr/sbin/haproxy, nbthread 2, retry-on all-retryable-errors,
                 option redispatch, retries 2, http-reuse safe, no health checks
Columns: requests; client-visible errors (any non-200 or a broken connection) for
GET, POST, POST+key; of the POST errors, how many were not the replica's own 503
passed on unchanged (made up by the proxy); POSTs (no key) delivered to two
replicas; delivered bodies whose sha256 differs from what the client sent; run
duration. With --runs N > 1 every cell is the median of the N runs.

Standard library only. Not part of `make test`.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
import harness as H  # noqa: E402

NGINX = "/usr/sbin/nginx"
READY_PROBE_ID = "ready-probe"  # the readiness GETs; left out of the delivery count
HAPROXY = "/usr/sbin/haproxy"
VARIANTS = {
    "nextup": ["nextup", "nextup-defaults"],
    "nginx": ["nginx-default", "nginx-ft1s"],
    "haproxy": ["haproxy"],
    "all": ["nextup", "nextup-defaults", "nginx-default", "nginx-ft1s", "haproxy"],
}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Proxy:
    """A proxy process on 127.0.0.1:<port>; stop() by PID."""

    def __init__(self, name, cmd, port, workdir, env=None, stderr_path=None):
        self.name = name
        self.port = port
        self.workdir = workdir
        self.stderr_path = stderr_path or os.path.join(workdir, "stderr")
        self.errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.errf, stderr=self.errf,
                                     env=env or H.base_env(), cwd=workdir)

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s: %s" % (self.name, self.proc.returncode, self.stderr_text()))
            try:
                c = H.RawConn(self.port, timeout=1.0)
                try:
                    c.send(H.request_bytes("GET", "/ready", host="127.0.0.1:%d" % self.port,
                                           headers=[("X-Request-Id", READY_PROBE_ID)]))
                    r = c.read_response()
                finally:
                    c.close()
                if r.status == 200:
                    return
                last = "status %d" % r.status
            except (OSError, H.ConnectionClosed) as e:
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError("%s not answering 200 within %.0f s (last: %s): %s"
                           % (self.name, timeout, last, self.stderr_text()))

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        rc = H.stop_pid(self.proc, signal.SIGTERM, wait=5.0)
        self.errf.close()
        return rc


def start_nextup(variant, rs, port, workdir):
    env = {"NEXTUP_RETRY_ON": H.ROLLING_RETRY_ON} if variant == "nextup" else None
    nx = H.Nextup(rs.addrs, workers=2, env=env)
    nx.port = nx.listen_port
    nx.name = variant
    return nx


def start_nginx(variant, rs, port, workdir):
    fail_timeout = "10s" if variant == "nginx-default" else "1s"
    servers = "\n".join("        server %s max_fails=1 fail_timeout=%s;" % (a, fail_timeout) for a in rs.addrs)
    conf = """
worker_processes 2;
daemon off;
master_process on;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(dir)s/client_body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    upstream replicas {
%(servers)s
        keepalive 32;
    }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
        }
    }
}
""" % {"dir": workdir, "servers": servers, "port": port}
    path = os.path.join(workdir, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    check = subprocess.run([NGINX, "-t", "-c", path, "-p", workdir], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10)
    if check.returncode != 0:
        raise RuntimeError("nginx -t failed:\n%s" % check.stdout.decode("utf-8", "replace"))
    p = Proxy(variant, [NGINX, "-c", path, "-p", workdir], port, workdir)
    p.wait_ready()
    return p


def start_haproxy(variant, rs, port, workdir):
    servers = "\n".join("    server r%d %s" % (i, a) for i, a in enumerate(rs.addrs))
    conf = """
global
    maxconn 4096
    nbthread 2
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    retries 2
    option redispatch
    retry-on all-retryable-errors
    http-reuse safe
listen fe
    bind 127.0.0.1:%(port)d
    balance roundrobin
%(servers)s
""" % {"port": port, "servers": servers}
    path = os.path.join(workdir, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    check = subprocess.run([HAPROXY, "-c", "-f", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=10)
    if check.returncode != 0:
        raise RuntimeError("haproxy -c failed:\n%s" % check.stdout.decode("utf-8", "replace"))
    p = Proxy(variant, [HAPROXY, "-db", "-f", path], port, workdir)
    p.wait_ready()
    return p


STARTERS = {"nextup": start_nextup, "nextup-defaults": start_nextup,
            "nginx-default": start_nginx, "nginx-ft1s": start_nginx, "haproxy": start_haproxy}


def available(variant):
    if variant.startswith("nextup"):
        b = H.nextup_bin()
        return None if os.access(b, os.X_OK) else "%s missing (make build/nextup)" % b
    if variant.startswith("nginx"):
        return None if os.access(NGINX, os.X_OK) else "%s missing (apt-get install nginx-light)" % NGINX
    return None if os.access(HAPROXY, os.X_OK) else "%s missing (apt-get install haproxy)" % HAPROXY


def one_run(variant, args):
    """One rolling restart through <variant>; a dict of the table's numbers."""
    rs = H.ReplicaSet(3)
    workdir = tempfile.mkdtemp(prefix="nextup-compare-%s-" % variant)
    os.chmod(workdir, 0o755)  # nginx workers run as nobody
    proxy = None
    try:
        port = H.free_port()
        proxy = STARTERS[variant](variant, rs, port, workdir)
        port = proxy.port
        load = H.MixedLoad(port, threads=args.threads, rate=args.rate, max_per_thread=3000,
                           max_seconds=120.0, tag=variant)
        load.start()
        try:
            time.sleep(args.lead)
            restart = H.rolling_restart_overlap if args.overlap else H.rolling_restart
            events = restart(rs, phase_503=args.phase_503, phase_down=args.phase_down, settle=args.settle)
            time.sleep(args.tail)
        finally:
            records = load.stop()
        res = H.analyze_load(records, rs.entries(), ignore_ids={READY_PROBE_ID})
        retries = H.retry_counts(H.metrics(proxy)) if variant.startswith("nextup") else None
        if args.verbose:
            log(H.format_load(res, variant, retries, load.duration))
            log("  schedule: " + "; ".join("%.1f s %s" % ev for ev in events))
            odd = [r for r in records if r["status"] != 200][:8]
            for r in odd:
                log("    e.g. %s %s -> %s X-Backend=%s body=%r" % (
                    r["kind"], r["id"], r["status"] if r["status"] is not None else r["error"],
                    r["backend"], (r["body"] or b"")[:60]))
        row = {
            "requests": res["requests"],
            "err_get": res["errors"][H.KIND_GET],
            "err_post": res["errors"][H.KIND_POST],
            "err_post_key": res["errors"][H.KIND_POST_KEY],
            "post_made_up": len(res["not_replica_503"][H.KIND_POST]),
            "post_made_up_unread": len(res["not_replica_503_never_delivered"][H.KIND_POST]),
            "post_two_replicas": len(res["delivered_to_two_replicas"][H.KIND_POST]),
            "post_dup": len(res["delivered_more_than_once"][H.KIND_POST]),
            "key_two_replicas": len(res["delivered_to_two_replicas"][H.KIND_POST_KEY]),
            "body_mismatch": len(res["body_mismatch"]) + len(res["echo_mismatch"]),
            "duration": round(load.duration, 1),
            "statuses": res["statuses"],
        }
        if retries:
            row["nextup_retries"] = retries
        return row
    finally:
        if proxy is not None:
            proxy.stop()
            if variant.startswith("nextup"):
                try:
                    os.unlink(proxy.stderr.name)
                except OSError:
                    pass
        rs.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


COLUMNS = [
    ("requests", "requests"),
    ("err_get", "GET errors"),
    ("err_post", "POST errors"),
    ("err_post_key", "POST+key errors"),
    ("post_made_up", "POST errors not the replica's 503"),
    ("post_made_up_unread", "... of which no replica read"),
    ("post_two_replicas", "POSTs at two replicas"),
    ("body_mismatch", "bodies mismatched"),
    ("duration", "duration s"),
]


def median_row(rows):
    out = {}
    for key, _ in COLUMNS:
        vals = [r[key] for r in rows]
        out[key] = statistics.median(vals)
        out[key + "_all"] = vals
    return out


def fmt(v):
    if isinstance(v, float) and not v.is_integer():
        return "%.1f" % v
    return "%d" % v


def table(results, runs):
    variants = list(results)
    lines = []
    head = "| %-34s | " % ("median of %d runs" % runs if runs > 1 else "1 run") + \
        " | ".join("%-19s" % v for v in variants) + " |"
    lines.append(head)
    lines.append("|" + "-" * 36 + "|" + "|".join("-" * 21 for _ in variants) + "|")
    for key, label in COLUMNS:
        cells = []
        for v in variants:
            row = results[v]
            if row is None:
                cells.append("%-19s" % "n/a")
                continue
            cell = fmt(row[key])
            if runs > 1 and key != "requests" and key != "duration":
                cell += " (%s)" % ",".join(fmt(x) for x in row[key + "_all"])
            cells.append("%-19s" % cell)
        lines.append("| %-34s | " % label + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", choices=sorted(VARIANTS), default="all")
    ap.add_argument("--runs", type=int, default=1, help="runs per proxy (the table shows medians)")
    ap.add_argument("--threads", type=int, default=6)
    ap.add_argument("--rate", type=float, default=40.0, help="requests/s per client thread")
    ap.add_argument("--lead", type=float, default=1.0)
    ap.add_argument("--phase-503", type=float, default=1.5)
    ap.add_argument("--phase-down", type=float, default=1.5)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--tail", type=float, default=0.5)
    ap.add_argument("--overlap", action="store_true",
                    help="replica i comes back as replica i+1 starts draining (2 s of 503, 2 s refused)")
    ap.add_argument("--json", help="write every run's numbers to this file")
    ap.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    args = ap.parse_args()
    if args.overlap and args.phase_503 == 1.5 and args.phase_down == 1.5:
        args.phase_503 = args.phase_down = 2.0
    if not 1 <= args.runs <= 20:
        ap.error("--runs: 1..20")

    results, raw = {}, {}
    for variant in VARIANTS[args.proxy]:
        why = available(variant)
        if why:
            log("*** %s skipped: %s ***" % (variant, why))
            results[variant] = None
            continue
        rows = []
        for i in range(args.runs):
            log("== %s, run %d/%d" % (variant, i + 1, args.runs))
            rows.append(one_run(variant, args))
        raw[variant] = rows
        results[variant] = median_row(rows)
    print(table(results, args.runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
