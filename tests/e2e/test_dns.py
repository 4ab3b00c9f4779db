"""Replicas from DNS, kept live: a host name in NEXTUP_UPSTREAMS is resolved
again every NEXTUP_DNS_REFRESH_MS through the resolver NEXTUP_RESOLV_CONF names
(here a DNS server the test runs on loopback, whose answers it changes), with
the search domains a pod has; every A record is a peer."""
import json
import os
import socket
import tempfile
import threading
import time
import unittest
import urllib.request

from dnsserver import DnsServer
from harness import Backend, ConnectionClosed, NextupCase, RawConn, free_port, metric, metrics, request_bytes

FQDN = "orders-headless.shop.svc.cluster.local"


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.77", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(port, path, timeout=3.0):
    """(status, body) of GET <path> on 127.0.0.1:<port>; status 0 when no answer."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait_for(pred, timeout=5.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class DnsDiscoveryTest(NextupCase):
    def setUp(self):
        self.dns = DnsServer(port=free_udp_port())
        self.addCleanup(self.dns.stop)
        fd, self.resolv = tempfile.mkstemp(prefix="nextup-resolv-")
        with os.fdopen(fd, "w") as f:
            # A pod's resolver: the short Service name works through the search list (ndots 5).
            f.write("nameserver %s:%d\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5 timeout:1 attempts:1\n" % self.dns.addr)
        self.addCleanup(os.unlink, self.resolv)
        self.port = free_port()
        # Three replicas on the same port, on three loopback addresses, like pod IPs.
        self.replicas = {}
        for i in (1, 2, 3):
            b = Backend(name="r%d" % i, port=self.port, host="127.0.0.%d" % (30 + i))
            self.addCleanup(self._backend_cleanup, b)
            self.replicas["r%d" % i] = "127.0.0.%d" % (30 + i)

    def start(self, refresh_ms=200, extra=None):
        env = {"NEXTUP_DNS_REFRESH_MS": str(refresh_ms), "NEXTUP_RESOLV_CONF": self.resolv, "NEXTUP_BPF": "off",
               "NEXTUP_LOG_LEVEL": "info"}
        env.update(extra or {})
        return self.start_nextup("orders-headless:%d" % self.port, env=env, wait_ready=False)

    def answered_by(self, nx, n=12):
        seen = set()
        for _ in range(n):
            status, body = http_get(nx.listen_port, "/")
            self.assertEqual(status, 200, body)
            seen.add(body.strip())
        return seen

    def peers(self, nx):
        status, body = http_get(nx.admin_port, "/debug/peers")
        self.assertEqual(status, 200)
        return {p["address"]: p["verdict"] for p in json.loads(body)["peers"]}

    def test_follows_the_records(self):
        self.dns.set(FQDN, [self.replicas["r1"], self.replicas["r2"]])
        nx = self.start()
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200), "never ready")
        self.assertEqual(self.answered_by(nx, 20), {"r1", "r2"})
        # r1 goes, r3 comes: used within a couple of refreshes, r1 no longer.
        self.dns.set(FQDN, [self.replicas["r2"], self.replicas["r3"]])
        self.assertTrue(wait_for(lambda: self.answered_by(nx, 20) == {"r2", "r3"}, timeout=3),
                        "peers did not follow the records: %s" % self.peers(nx))
        v = self.peers(nx)
        self.assertEqual(v["%s:%d" % (self.replicas["r1"], self.port)], "removed")
        self.assertEqual(v["%s:%d" % (self.replicas["r3"], self.port)], "healthy")
        self.assertGreater(self.dns.queries, 2)

    def test_removed_peer_series_gone_within_one_refresh(self):
        # After a rollout the old pods' series must end, not stay at 0 and fire alerts.
        self.dns.set(FQDN, [self.replicas["r1"], self.replicas["r2"]])
        nx = self.start(refresh_ms=300)
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200), "never ready")
        self.assertEqual(self.answered_by(nx, 20), {"r1", "r2"})
        gone = "%s:%d" % (self.replicas["r1"], self.port)
        peer_lines = lambda: [l for l in http_get(nx.admin_port, "/metrics")[1].splitlines()
                              if l.startswith("nextup_peer") and 'peer="%s"' % gone in l]
        self.assertTrue(any(l.startswith("nextup_peer_responses_total") for l in peer_lines()), peer_lines())
        self.assertTrue(any(l.startswith("nextup_peer_healthy") for l in peer_lines()), peer_lines())
        self.dns.set(FQDN, [self.replicas["r2"]])
        t0 = time.monotonic()
        self.assertTrue(wait_for(lambda: not peer_lines(), timeout=2.0),
                        "series of the removed peer still there after 2 s (refresh 300 ms): %s" % peer_lines())
        took = time.monotonic() - t0
        # one refresh, plus the scrape loop's step and a loaded machine
        self.assertLess(took, 1.5, "gone only after %.2f s" % took)
        self.assertEqual(self.peers(nx)[gone], "removed")
        print("\n  removed peer's series gone %.2f s after the DNS change (refresh 300 ms)" % took)

    def test_in_flight_request_to_a_removed_peer_finishes(self):
        self.dns.set(FQDN, [self.replicas["r1"]])
        nx = self.start()
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200))
        result = {}
        t = threading.Thread(target=lambda: result.update(r=http_get(nx.listen_port, "/slow/1500", timeout=5)))
        t.start()
        time.sleep(0.3)
        self.dns.set(FQDN, [self.replicas["r2"]])
        self.assertTrue(wait_for(lambda: self.answered_by(nx, 6) == {"r2"}, timeout=3))
        t.join(timeout=5)
        self.assertEqual(result["r"][0], 200, "the request in flight to the removed peer was cut")

    def test_swapped_set_never_looks_empty(self):
        # Each answer replaces the only address (r1 <-> r2) while clients keep sending: a request
        # must never find no peer between the old address going and the new one coming.
        self.dns.set(FQDN, [self.replicas["r1"]])
        nx = self.start(refresh_ms=10)
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200))
        stop = threading.Event()
        statuses = {}
        lock = threading.Lock()

        def client():
            c = None
            for _ in range(20000):  # bounded; <stop> ends it first
                if stop.is_set():
                    break
                try:
                    if c is None:
                        c = RawConn(nx.listen_port, timeout=3)
                    c.send(request_bytes("GET", "/"))
                    st = c.read_response().status
                except (OSError, ConnectionClosed) as e:
                    st = "error %r" % e
                    if c is not None:
                        c.close()
                    c = None
                with lock:
                    statuses[st] = statuses.get(st, 0) + 1
            if c is not None:
                c.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        swaps = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            swaps += 1
            self.dns.set(FQDN, [self.replicas["r2" if swaps % 2 else "r1"]])
            time.sleep(0.015)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        changes = nx.stderr_text().count("is new; it takes requests now")
        print("\n  %d answers swapped, %d peer changes applied, statuses %r" % (swaps, changes, statuses))
        self.assertGreater(changes, 20, "the set hardly changed: the test proved nothing")
        self.assertEqual(set(statuses), {200}, "requests failed while the set was swapped: %r" % statuses)

    def test_failing_resolver_keeps_the_last_good_set(self):
        self.dns.set(FQDN, [self.replicas["r1"], self.replicas["r2"]])
        nx = self.start()
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200))
        self.dns.mode = "servfail"
        self.assertTrue(wait_for(lambda: metric(metrics(nx), "nextup_dns_failures_total") >= 2, timeout=5))
        self.assertEqual(self.answered_by(nx, 12), {"r1", "r2"})
        self.dns.mode = "silent"    # no answer at all: evdns times out (1 s)
        time.sleep(1.5)
        self.assertEqual(self.answered_by(nx, 12), {"r1", "r2"})
        self.assertEqual(http_get(nx.admin_port, "/readyz/upstreams")[0], 200)
        self.assertIn("keeping the last good set", nx.stderr_text())

    def test_empty_answer_is_trusted_only_when_it_repeats(self):
        self.dns.set(FQDN, [self.replicas["r1"]])
        nx = self.start(refresh_ms=400)
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200))
        self.dns.records.clear()    # NXDOMAIN from now on
        self.assertTrue(wait_for(lambda: metric(metrics(nx), "nextup_dns_empty_answers_total") >= 1, timeout=3))
        m = metric(metrics(nx), "nextup_dns_empty_answers_total")
        if m < 2:
            # After one empty answer the set is kept.
            self.assertEqual(http_get(nx.listen_port, "/")[0], 200)
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 503, timeout=3),
                        "repeated empty answers did not remove the peers")
        # nextup itself stays ready: its readiness is the pod's, whatever the replicas do.
        self.assertEqual(http_get(nx.admin_port, "/readyz")[0], 200)
        self.assertEqual(http_get(nx.listen_port, "/")[0], 502)
        # The name comes back: so do the peers.
        self.dns.set(FQDN, [self.replicas["r3"]])
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200, timeout=3))
        self.assertEqual(self.answered_by(nx, 4), {"r3"})

    def test_name_without_records_at_start(self):
        # A headless Service with no ready replica yet: nextup starts and is ready (its readiness is the
        # pod's); /readyz/upstreams says 503 until a replica appears, then it serves.
        nx = self.start()
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/healthz")[0] == 200))
        self.assertEqual(http_get(nx.admin_port, "/readyz/upstreams")[0], 503)
        self.assertEqual(http_get(nx.admin_port, "/readyz")[0], 200)
        self.dns.set(FQDN, [self.replicas["r2"]])
        self.assertTrue(wait_for(lambda: http_get(nx.admin_port, "/readyz/upstreams")[0] == 200, timeout=3))
        self.assertEqual(self.answered_by(nx, 4), {"r2"})

    def test_unresolvable_name_without_refresh_is_a_startup_error(self):
        import subprocess
        r = subprocess.run([os.environ["NEXTUP_BIN"]], env={"NEXTUP_UPSTREAMS": "nosuch.invalid:80",
                                                            "NEXTUP_DNS_REFRESH_MS": "0"},
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("NEXTUP_UPSTREAMS", r.stderr)


if __name__ == "__main__":
    unittest.main()
