"""Drain-aware health: a replica that is leaving (503 with Connection: close) or
refusing stops getting requests at its first signal, neither takes room under
NEXTUP_MAX_EJECTION_PERCENT, and replicas that merely close connections as a
habit are never taken for draining."""

import os
import threading
import time
import unittest

import harness as H


class Replica(H.ThreadedRawServer):
    """Keep-alive HTTP/1.1 replica. mode: "ok" (200, body = its name and the
    request's X-Tag), "drain" (503 with Connection: close, then close),
    "close-each" (200 with Connection: close, HTTP/1.0 style). idle_close: close
    a keep-alive connection that idles this long (s). Counts requests by method."""

    def __init__(self, name, mode="ok", idle_close=None):
        self.name = name.encode()
        self.mode = mode
        self.idle_close = idle_close
        self.lock = threading.Lock()
        self.seen = {}
        super().__init__()

    def count(self, method):
        with self.lock:
            self.seen[method] = self.seen.get(method, 0) + 1

    def total(self):
        with self.lock:
            return sum(self.seen.values())

    def handle(self, conn):
        buf = b""
        conn.settimeout(self.idle_close or 10)
        while True:
            got = H.read_keepalive_request(conn, buf)
            if got is None:
                return
            head, _, buf = got
            method = head.split(b" ", 1)[0].decode()
            self.count(method)
            try:
                if self.mode == "drain":
                    body = b"draining\n"
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    return
                body = self.name
                close = self.mode == "close-each"
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Backend: %s\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (self.name, len(body), b"Connection: close\r\n" if close else b"", body))
                if close:
                    return
            except OSError:
                return


def states(nx):
    """{address: state} from /debug/peers."""
    st, body = nx.admin_get("/debug/peers")
    assert st == 200, st
    import json
    return {p["address"]: p.get("state", "(no state: %s)" % p.get("verdict")) for p in json.loads(body)["peers"]}


class DrainTest(H.NextupCase):

    def start(self, *replicas, dead=0, env=None):
        for r in replicas:
            self.addCleanup(r.stop)
        addrs = [r.addr for r in replicas] + ["127.0.0.1:%d" % H.free_port() for _ in range(dead)]
        e = {"NEXTUP_BPF": "off", "NEXTUP_EJECT_BASE_MS": "5000"}
        e.update(env or {})
        return self.start_nextup(addrs, env=e), addrs

    def load(self, nx, n, method_of, workers=4):
        """<n> requests over <workers> threads; method_of(i) picks GET or POST. [(method, status, backend)]"""
        out = []
        lock = threading.Lock()

        def run(k):
            c = self.connect(nx, timeout=5)
            for i in range(k, n, workers):
                method = method_of(i)
                body = os.urandom(300) if method == "POST" else None
                c.send(H.request_bytes(method, "/r/%d" % i, body=body))
                try:
                    r = c.read_response(method=method)
                except (H.ConnectionClosed, OSError) as e:
                    with lock:
                        out.append((method, repr(e), None))
                    c.close()
                    c = self.connect(nx, timeout=5)
                    continue
                with lock:
                    out.append((method, r.status, r.get("x-backend")))
                if r.get("connection", "").lower() == "close":
                    c.close()
                    c = self.connect(nx, timeout=5)
            c.close()

        self.assertEqual(H.run_threads(run, [(k,) for k in range(workers)], timeout=60), [])
        return out

    def test_refusing_and_draining_at_once(self):
        # Three peers: A serves, B drains (503 + close), C refuses. Both B and C go
        # out at their first signal; neither holds the cap against the other.
        a, b = Replica("a"), Replica("b", mode="drain")
        nx, addrs = self.start(a, b, dead=1)
        # Two clients, one always GET and one always POST: one POST in flight at a time.
        out = self.load(nx, 300, lambda i: "POST" if i % 2 else "GET", workers=2)
        get_err = [o for o in out if o[0] == "GET" and o[1] != 200]
        post_err = [o for o in out if o[0] == "POST" and o[1] != 200]
        st = states(nx)
        print("\n  A serves, B drains, C refuses: 300 requests, GET errors %d, POST errors %d, B got %d; states %s"
              % (len(get_err), len(post_err), b.total(), st), end=" ")
        self.assertEqual(get_err, [])
        self.assertLessEqual(len(post_err), 1, post_err[:5])
        self.assertEqual(st[addrs[1]], "draining")
        self.assertEqual(st[addrs[2]], "down")
        self.assertEqual(st[addrs[0]], "healthy")
        self.assertLessEqual(b.total(), 4, "the draining replica kept getting requests")

    def test_drained_replica_comes_back_through_one_trial(self):
        a, b = Replica("a"), Replica("b", mode="drain")
        nx, addrs = self.start(a, b, env={"NEXTUP_EJECT_BASE_MS": "300"})
        self.load(nx, 40, lambda i: "GET", workers=1)
        self.assertEqual(states(nx)[addrs[1]], "draining")
        b.mode = "ok"
        time.sleep(0.35)
        self.assertEqual(states(nx)[addrs[1]], "trial")
        before = b.total()
        out = self.load(nx, 60, lambda i: "GET", workers=1)
        self.assertEqual([o for o in out if o[1] != 200], [])
        self.assertEqual(states(nx)[addrs[1]], "healthy")
        self.assertGreater(b.total() - before, 10, "back to healthy but given no share of the load")

    def test_a_burst_of_closes_is_a_drain(self):
        # A replica that served keep-alive and starts closing every connection after its
        # response (as nginx does while it shuts down gracefully) is leaving: a change
        # from its own habit, seen within a health interval or two.
        a, b = Replica("a"), Replica("b")
        nx, addrs = self.start(a, b, env={"NEXTUP_HEALTH_INTERVAL_MS": "100"})
        self.load(nx, 200, lambda i: "GET")
        self.assertEqual(states(nx)[addrs[1]], "healthy")
        b.mode = "close-each"
        before = b.total()
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 3 and seen is None:
            self.load(nx, 40, lambda i: "GET")
            if states(nx)[addrs[1]] == "draining":
                seen = time.monotonic() - t0
        print("\n  keep-alive replica turned to closing every connection: draining after %s s, %d requests "
              "reached it meanwhile" % ("%.2f" % seen if seen is not None else "NEVER", b.total() - before), end=" ")
        self.assertIsNotNone(seen, "a replica that started closing every connection was not taken for draining")

    def test_closing_habits_are_not_a_drain(self):
        # One replica closes after every response, one closes keep-alive connections idle
        # for 300 ms: both serve normally, so neither is taken out and the split stays even.
        a = Replica("a")
        b = Replica("b", mode="close-each")
        c = Replica("c", idle_close=0.3)
        nx, addrs = self.start(a, b, c)
        out = []
        for burst in range(3):
            out += self.load(nx, 90, lambda i: "POST" if i % 3 == 0 else "GET")
            time.sleep(0.4)   # longer than c's idle timeout: its pooled connections close
        errors = [o for o in out if o[1] != 200]
        split = {r.name.decode(): r.total() for r in (a, b, c)}
        st = states(nx)
        print("\n  close-each and idle-close replicas: %d requests, errors %d, split %s, states %s"
              % (len(out), len(errors), split, st), end=" ")
        self.assertEqual(errors, [])
        self.assertEqual(set(st.values()), {"healthy"})
        for name, n in split.items():
            self.assertGreater(n, len(out) * 0.2, "replica %s got %d of %d: skewed" % (name, n, len(out)))


class ProbePathTest(H.NextupCase):

    def test_trial_by_http_probe(self):
        # With NEXTUP_PROBE_PATH, a replica whose time out is up is judged by a GET of
        # that path on a fresh connection, not by a client's request.
        a, b = Replica("a"), Replica("b", mode="drain")
        for r in (a, b):
            self.addCleanup(r.stop)
        nx = self.start_nextup([a.addr, b.addr], env={"NEXTUP_BPF": "off", "NEXTUP_EJECT_BASE_MS": "300",
                                                      "NEXTUP_HEALTH_INTERVAL_MS": "50",
                                                      "NEXTUP_PROBE_PATH": "/healthz"})
        c = self.connect(nx, timeout=5)
        self.addCleanup(c.close)

        def get(n):
            codes = []
            for i in range(n):
                c.send(H.request_bytes("GET", "/c/%d" % i))
                r = c.read_response()
                codes.append((r.status, r.get("x-backend")))
                time.sleep(0.01)
            return codes

        get(20)
        self.assertEqual(states(nx)[b.addr], "draining")
        client_before = b.total()
        # Still draining when its time is up: the probe fails, no client request meets it.
        codes = get(60)
        self.assertEqual([x for x in codes if x[0] != 200], [])
        probes_failed = b.total() - client_before
        self.assertGreaterEqual(probes_failed, 1, "no probe reached the replica")
        self.assertTrue(all(x[1] == "a" for x in codes), "a client request was used as the trial")
        # Serving again: the next probe brings it back, and clients reach it.
        b.mode = "ok"
        deadline = time.monotonic() + 5
        while states(nx)[b.addr] != "healthy" and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(states(nx)[b.addr], "healthy")
        codes = get(40)
        print("\n  probe path: %d failed probes while draining, then healthy; %d of 40 to b after"
              % (probes_failed, sum(1 for x in codes if x[1] == "b")), end=" ")
        self.assertGreater(sum(1 for x in codes if x[1] == "b"), 5)


class IdleTimeoutLearnedTest(H.NextupCase):

    def test_pool_stays_below_the_replicas_idle_timeout(self):
        # A replica that closes keep-alive connections idle for 300 ms. Once nextup has
        # seen it do so, it closes its own pooled connections to it first, so it never
        # meets (or races) the replica's close.
        import random
        rep = Replica("r", idle_close=0.3)
        self.addCleanup(rep.stop)
        nx = self.start_nextup([rep.addr], workers=1, env={"NEXTUP_BPF": "off"})
        c = self.connect(nx, timeout=5)
        self.addCleanup(c.close)
        rnd = random.Random(7)

        def run(n):
            long_gaps = 0
            for i in range(n):
                c.send(H.request_bytes("GET", "/i/%d" % i))
                self.assertEqual(c.read_response().status, 200)
                gap = rnd.uniform(0.2, 0.45)
                long_gaps += gap > 0.3
                time.sleep(gap)
            return long_gaps

        def closed_by_peer():
            return H.metric(H.metrics(nx), "nextup_upstream_pool_closed_by_peer_total")

        run(4)                      # the replica shows its habit
        learned0 = closed_by_peer()
        long_gaps = run(24)
        closed = closed_by_peer() - learned0
        m = H.metrics(nx)
        print("\n  300 ms idle replica: %d peer closes while learning, then %d of %d gaps over 300 ms met a "
              "close by the replica; races resent %d" % (learned0, closed, long_gaps,
                                                        H.metric(m, "nextup_keepalive_race_resends_total")), end=" ")
        self.assertGreaterEqual(learned0, 1, "the replica never closed an idle connection: nothing to learn from")
        self.assertGreaterEqual(long_gaps, 8)
        self.assertLessEqual(closed, long_gaps // 10, "pooled connections kept past the replica's idle timeout")


if __name__ == "__main__":
    unittest.main()
