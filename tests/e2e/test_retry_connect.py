"""Connect-time retries: refused and blackholed peers, and stale pooled connections."""

import json
import os
import shutil
import socket
import subprocess
import time
import unittest

import harness as H


from harness import Blackhole, ip  # noqa: E402  (shared with test_bpf_health.py)


class RefusedPeerTest(H.NextupCase):

    def test_refused_peer_is_retried(self):
        b = self.start_backend("live")
        dead = "127.0.0.1:%d" % H.free_port()
        nx = self.start_nextup([dead, b.addr])
        before = b.requests()
        # Fresh connections and one keep-alive connection, so both workers and the pool are exercised.
        for i in range(25):
            r = self.roundtrip(nx, "GET", "/get/%d" % i)
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"), "GET %d: %r %r" % (i, r, r.body))
        c = self.connect(nx)
        for i in range(25):
            c.send(H.request_bytes("GET", "/ka/%d" % i))
            r = c.read_response()
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"), "keep-alive GET %d: %r" % (i, r))
        for i in range(20):
            body = os.urandom(1000 + i)
            r = self.roundtrip(nx, "POST", "/echo", body=body)
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"), "POST %d: %r" % (i, r))
            self.assertEqual(r.body, body, "POST %d body mangled" % i)
        self.assertEqual(b.requests() - before, 70)

    def test_connect_failure_covers_refused(self):
        # As in Envoy: NEXTUP_RETRY_ON=connect-failure retries a refused connect (any method).
        b = self.start_backend("live")
        dead = "127.0.0.1:%d" % H.free_port()
        nx = self.start_nextup([dead, b.addr], env={"NEXTUP_RETRY_ON": "connect-failure",
                                                    "NEXTUP_EJECT_CONNECT_FAILURES": "0", "NEXTUP_BPF": "off"})
        for i in range(20):
            body = os.urandom(200 + i)
            r = self.roundtrip(nx, "POST", "/echo", body=body)
            self.assertEqual((r.status, r.body), (200, body), "POST %d: %r" % (i, r))
        m = H.metrics(nx)
        self.assertGreater(H.metric(m, "nextup_retries_total", reason="refused"), 0, "the dead peer was never tried")

    def test_refused_peer_large_posts(self):
        # A refused connect consumes no body byte, so even bodies far over the retry
        # buffer (64 KiB by default) can go to the next peer.
        b = self.start_backend("live")
        nx = self.start_nextup(["127.0.0.1:%d" % H.free_port(), b.addr])
        for i in range(6):
            body = os.urandom(H.MIB + i)
            r = self.roundtrip(nx, "POST", "/count", body=body)
            self.assertEqual(r.status, 200, "1 MiB POST %d: %r %r" % (i, r, r.body[:200]))
            self.assertEqual(json.loads(r.body), {"bytes": len(body), "sha256": H.sha256(body)})

    def test_all_refused_502_says_why(self):
        nx = self.start_nextup(["127.0.0.1:%d" % H.free_port(), "127.0.0.1:%d" % H.free_port()])
        t0 = time.monotonic()
        r = self.roundtrip(nx, "GET", "/")
        self.assertPlainError(r, 502)
        self.assertLess(time.monotonic() - t0, 2.0)
        text = r.body.decode("utf-8", "replace").lower()
        self.assertTrue("refus" in text or "connect" in text,
                        "502 body should say why (connection refused), got %r" % r.body)

    def test_no_retries_dead_peers_502_quickly(self):
        nx = self.start_nextup(["127.0.0.1:%d" % H.free_port(), "127.0.0.1:%d" % H.free_port()],
                               env={"NEXTUP_MAX_RETRIES": "0"})
        for method, body in (("GET", None), ("POST", b"data")):
            t0 = time.monotonic()
            r = self.roundtrip(nx, method, "/", body=body)
            took = time.monotonic() - t0
            self.assertPlainError(r, 502)
            self.assertLess(took, 2.0, "%s: 502 took %.2f s" % (method, took))

    def test_stale_pooled_connection_after_backend_restart(self):
        b = self.start_backend("first")
        port = b.port
        # One worker, so the second request meets the pooled connection of the first.
        nx = self.start_nextup(b, workers=1)
        c = self.connect(nx)
        c.send(H.request_bytes("GET", "/warm"))
        self.assertEqual(c.read_response().status, 200)
        for i in range(4):
            b.stop()
            b = self.start_backend("gen%d" % i, port=port)
            time.sleep(0.1)
            method, body = ("GET", None) if i % 2 == 0 else ("POST", b"payload %d" % i)
            target = "/after-restart" if body is None else "/echo"
            c.send(H.request_bytes(method, target, body=body))
            r = c.read_response()
            self.assertEqual(r.status, 200, "%s after backend restart %d: %r %r" % (method, i, r, r.body))
            self.assertEqual(r.get("x-backend"), "gen%d" % i)
            if body:
                self.assertEqual(r.body, body)
            # a new client connection too
            r = self.roundtrip(nx, "GET", "/fresh")
            self.assertEqual(r.status, 200, "fresh connection after restart %d: %r" % (i, r))


class BlackholeTest(H.NextupCase):

    def setUp(self):
        if os.geteuid() != 0:
            H.skip_loudly(self, "needs root to create a network namespace for the blackholed peer")
        if not shutil.which("ip"):
            H.skip_loudly(self, "needs iproute2 ('ip') for the blackholed peer")
        self.bh = Blackhole(self)

    def test_blackholed_peer_is_retried_fast(self):
        b = self.start_backend("live")
        nx = self.start_nextup(["%s:8080" % self.bh.addr, b.addr], env={"NEXTUP_CONNECT_TIMEOUT_MS": "300"})
        slowest = 0.0
        for i in range(20):
            t0 = time.monotonic()
            r = self.roundtrip(nx, "GET", "/bh/%d" % i)
            took = time.monotonic() - t0
            slowest = max(slowest, took)
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"), "GET %d: %r %r" % (i, r, r.body))
            self.assertLess(took, 2.0, "GET %d took %.2f s" % (i, took))
        print("\n  blackhole + live: slowest of 20 GETs %.3f s" % slowest)

    def test_all_blackholed_504(self):
        nx = self.start_nextup(["%s:8080" % self.bh.addr, "%s:8080" % self.bh.addr2],
                               env={"NEXTUP_CONNECT_TIMEOUT_MS": "300"})
        t0 = time.monotonic()
        r = self.roundtrip(nx, "GET", "/")
        took = time.monotonic() - t0
        self.assertPlainError(r, 504)
        self.assertLess(took, 5.0, "504 took %.2f s with 300 ms connect timeouts" % took)

    def test_request_timeout_spans_attempts(self):
        # 3 attempts x 400 ms connect timeout would take 1.2 s; the 500 ms request
        # timeout covers all attempts together, so the 504 comes at about 0.5 s.
        nx = self.start_nextup(["%s:8080" % self.bh.addr, "%s:8080" % self.bh.addr2],
                               env={"NEXTUP_CONNECT_TIMEOUT_MS": "400", "NEXTUP_REQUEST_TIMEOUT_MS": "500",
                                    "NEXTUP_MAX_RETRIES": "2"})
        t0 = time.monotonic()
        r = self.roundtrip(nx, "GET", "/")
        took = time.monotonic() - t0
        self.assertPlainError(r, 504)
        self.assertLess(took, 0.95, "504 after %.2f s: the request timeout (500 ms) did not span the attempts" % took)
        self.assertGreater(took, 0.4, "504 after only %.2f s" % took)


if __name__ == "__main__":
    unittest.main()
