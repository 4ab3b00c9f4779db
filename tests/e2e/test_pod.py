"""The pod, built the way Kubernetes would on one machine: the application and
nextup share one network namespace (the pod); three replicas live in namespaces
of their own, joined to the pod by veth pairs; nextup finds them by a short
Service name served by a DNS server inside the pod's namespace, through search
domains. The replicas are rolled one by one, as a Deployment update does:
endpoint removed from DNS, process stopped, started again, endpoint back.
The application must see only 200s."""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import harness as H
from dnsserver import DnsServer

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

APP = r'''
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
statuses, by_replica, errors = {}, {}, []
conn = None
deadline = time.time() + seconds
n = 0
while time.time() < deadline and n < 20000:
    n += 1
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/orders/%d" % n)
        r = conn.getresponse()
        body = r.read().decode()
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        if r.status == 200:
            by_replica[body.strip()] = by_replica.get(body.strip(), 0) + 1
        elif len(errors) < 5:
            errors.append("%d %s" % (r.status, body[:80]))
        if r.getheader("Connection", "").lower() == "close":
            conn.close(); conn = None
    except Exception as e:
        statuses["exception"] = statuses.get("exception", 0) + 1
        if len(errors) < 5:
            errors.append(repr(e))
        conn = None
    time.sleep(0.002)
print(json.dumps({"requests": n, "statuses": statuses, "by_replica": by_replica, "errors": errors}))
'''


def ip(*args, check=True):
    p = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), p.stderr.strip()))
    return p.stdout


class in_netns:
    """Moves this thread into network namespace <name> for the block: sockets
    made inside belong to it for good."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open("/var/run/netns/%s" % self.name, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into %s" % self.name)
        finally:
            os.close(target)

    def __exit__(self, *exc):
        _libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


class PodTest(H.NextupCase):
    def setUp(self):
        if os.geteuid() != 0 or not shutil.which("ip"):
            H.skip_loudly(self, "the pod test needs root and iproute2 (network namespaces)")
        pid = os.getpid() % 100000
        self.pod = "nxpod-%d" % pid
        ip("netns", "del", self.pod, check=False)
        ip("netns", "add", self.pod)
        self.addCleanup(ip, "netns", "del", self.pod, check=False)
        ip("-n", self.pod, "link", "set", "lo", "up")
        base = 30 + pid % 150
        self.replica_ips = []
        for i in range(3):
            ns = "nxrep%d-%d" % (i, pid)
            ip("netns", "del", ns, check=False)
            ip("netns", "add", ns)
            self.addCleanup(ip, "netns", "del", ns, check=False)
            a, b = "nxp%d-%d" % (i, pid), "nxr%d-%d" % (i, pid)
            ip("link", "add", a, "netns", self.pod, "type", "veth", "peer", "name", b, "netns", ns)
            net = "10.215.%d" % (base + i)
            ip("-n", self.pod, "addr", "add", net + ".1/24", "dev", a)
            ip("-n", self.pod, "link", "set", a, "up")
            ip("-n", ns, "addr", "add", net + ".2/24", "dev", b)
            ip("-n", ns, "link", "set", b, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self.replica_ips.append((ns, net + ".2"))
        self.port = 8080
        self.replicas = [None, None, None]
        for i in range(3):
            self.start_replica(i)
        # The cluster DNS, reachable from inside the pod.
        with in_netns(self.pod):
            self.dns = DnsServer(host="127.0.0.77", port=53)
        self.addCleanup(self.dns.stop)
        self.fqdn = "orders-headless.shop.svc.cluster.local"
        self.dns.set(self.fqdn, [addr for _, addr in self.replica_ips])
        fd, self.resolv = tempfile.mkstemp(prefix="nextup-pod-resolv-")
        with os.fdopen(fd, "w") as f:
            f.write("nameserver 127.0.0.77\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5 timeout:1 attempts:1\n")
        self.addCleanup(os.unlink, self.resolv)

    def start_replica(self, i):
        ns, addr = self.replica_ips[i]
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, H.BACKEND_PY, "--port", str(self.port),
                              "--host", addr, "--name", "replica-%d" % i],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(H.stop_pid, p)
        line = p.stdout.readline()
        self.assertTrue(line.startswith("ready"), "replica %d did not start: %r" % (i, line))
        self.replicas[i] = p

    def admin(self, path):
        with in_netns(self.pod):
            s = socket.create_connection(("127.0.0.1", self.admin_port), timeout=3)
        try:
            s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def test_rolling_update_behind_a_headless_service(self):
        self.listen_port, self.admin_port = 15001, 15000
        env = dict(H.base_env())
        env.update({"NEXTUP_UPSTREAMS": "orders-headless:%d" % self.port, "NEXTUP_LISTEN": "127.0.0.1:15001",
                    "NEXTUP_ADMIN": "127.0.0.1:15000", "NEXTUP_DNS_REFRESH_MS": "200",
                    "NEXTUP_RESOLV_CONF": self.resolv, "NEXTUP_BPF": "off", "NEXTUP_LOG_LEVEL": "info",
                    "NEXTUP_WORKERS": "2", "NEXTUP_ACCESS_LOG": "off",
                    # The crashing replica may die with GETs it had already acknowledged: `reset`.
                    "NEXTUP_RETRY_ON": "connect-failure,refused,reset,gateway-error"})
        env.update(json.loads(os.environ.get("NEXTUP_POD_TEST_ENV", "{}")))  # to show the test can fail
        err = tempfile.NamedTemporaryFile(prefix="nextup-pod-", suffix=".err", delete=False)
        self.addCleanup(os.unlink, err.name)
        self.addCleanup(err.close)
        nx = subprocess.Popen(["ip", "netns", "exec", self.pod, H.nextup_bin()], env=env,
                              stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        self.addCleanup(H.stop_pid, nx)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.admin("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            with open(err.name) as f:
                self.fail("nextup in the pod never became ready:\n" + f.read())
        peers = json.loads(self.admin("/debug/peers")[1])["peers"]
        self.assertEqual(sorted(p["address"] for p in peers if p["verdict"] == "healthy"),
                         sorted("%s:%d" % (a, self.port) for _, a in self.replica_ips))

        app = subprocess.Popen(["ip", "netns", "exec", self.pod, sys.executable, "-c", APP, "15001", "9"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(H.stop_pid, app)
        time.sleep(1.0)
        all_ips = [a for _, a in self.replica_ips]
        for i in range(3):
            # A Deployment update: the endpoint leaves the Service, the old pod stops, the new one starts
            # and becomes ready, the endpoint comes back. Replica 1 crashes instead: it is gone before its
            # endpoint leaves, so only nextup's retries keep the application from seeing it.
            if i == 1:
                H.stop_pid(self.replicas[i])
            self.dns.set(self.fqdn, [a for j, a in enumerate(all_ips) if j != i])
            time.sleep(0.5)
            if i != 1:
                H.stop_pid(self.replicas[i])
            time.sleep(0.8)
            self.start_replica(i)
            self.dns.set(self.fqdn, all_ips)
            time.sleep(0.8)
        out, errtext = app.communicate(timeout=30)
        self.assertEqual(app.returncode, 0, errtext)
        res = json.loads(out)
        sys.stderr.write("\n  pod app saw: %s\n" % json.dumps(res))
        self.assertGreater(res["requests"], 200)
        self.assertEqual(res["statuses"], {"200": res["requests"]},
                         "the application saw errors during the rolling update: %s" % res["errors"])
        self.assertEqual(set(res["by_replica"]), {"replica-0", "replica-1", "replica-2"})
        with open(err.name) as f:
            log = f.read()
        self.assertIn("is gone; it takes no new requests", log)
        self.assertIn("is new; it takes requests now", log)


if __name__ == "__main__":
    unittest.main()
