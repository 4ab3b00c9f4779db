"""Response-driven retries: the decision hook (built-in, plugin, in-process), the
replay rules (method, Idempotency-Key, retry buffer, budget), resets with and
without the kernel's proof, per-try timeouts, and a rolling restart under load.

Replicas are tests/e2e/backend.py processes in a mode (ok, 503, 503bare, reset,
slow) that log every request they read whole to a shared JSON-lines file; the
tests count deliveries per X-Request-Id there (a POST at two replicas is a
duplicate) and compare the sha256 of what was delivered with what was sent.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import harness as H

EXAMPLES = os.environ.get("NEXTUP_EXAMPLES") or os.path.join(H.REPO, "build", "examples")
PLUGIN = os.path.join(EXAMPLES, "retry_gateway_plugin.so")
EMBEDDED = os.path.join(EXAMPLES, "embedded")
NO_SYMBOL_SO = "/lib/x86_64-linux-gnu/libz.so.1"

BUDGET_WINDOW_S = 10  # sidecar/retry.h RETRY_BUDGET_WINDOW
# retry_budget_try_take() reads the window and then counts a retry: two workers
# may both pass the check at once, so the budget can be overshot by one per
# other worker at the same instant.
BUDGET_RACE_SLACK = 2
# The default NEXTUP_RETRY_ON plus reset (see harness.ROLLING_RETRY_ON).
ROLLING_RETRY_ON = H.ROLLING_RETRY_ON


def new_id(tag):
    return "%s-%s" % (tag, os.urandom(6).hex())


def need_file(path, what):
    if not os.path.exists(path):
        raise AssertionError("%s %s is missing: build it with `make examples` (NEXTUP_EXAMPLES=%r)"
                             % (what, path, os.environ.get("NEXTUP_EXAMPLES")))


class RetryCase(H.NextupCase):

    def replicas(self, n, modes=()):
        """A ReplicaSet r0..r(n-1); modes[i] for replica i (default ok)."""
        rs = H.ReplicaSet(n)
        self.addCleanup(self._replicas_cleanup, rs)
        for i, m in enumerate(modes):
            if m and m != "ok":
                rs.set_mode(i, m)
        return rs

    def send(self, nx, method, target, body=None, key=None, conn=None, tag="req"):
        """One request with a fresh X-Request-Id (and Idempotency-Key <key>), on <conn>
        or a new connection. (id, Response)."""
        rid = new_id(tag)
        headers = [("X-Request-Id", rid)]
        if key:
            headers.append(("Idempotency-Key", key))
        own = conn is None
        c = self.connect(nx) if own else conn
        c.send(H.request_bytes(method, target, host="127.0.0.1:%d" % nx.listen_port, headers=headers, body=body))
        r = c.read_response(method)
        if own:
            c.close()
        return rid, r

    @staticmethod
    def delivered(rs, rid):
        return [e for e in rs.entries() if e.get("id") == rid]

    def assertReplica503(self, r, what):
        problem = H.replica_503_problem(r)
        self.assertIsNone(problem, "%s: the client should get the replica's 503 unchanged: %s (%r body=%r)"
                          % (what, problem, r, r.body[:200]))

    def assertDeliveredOnce(self, rs, rid, replica, body, what):
        d = self.delivered(rs, rid)
        self.assertEqual([e["name"] for e in d], [replica],
                         "%s: request %s should reach exactly %s once, deliveries: %r" % (what, rid, replica, d))
        self.assertEqual((d[0]["bytes"], d[0]["sha256"]), (len(body or b""), H.sha256(body or b"")),
                         "%s: body delivered to %s differs from the body sent" % (what, replica))


class BuiltinPolicyTest(RetryCase):

    def test_503_from_one_of_three_is_retried_for_gets(self):
        rs = self.replicas(3, ["ok", "503", "ok"])
        nx = self.start_nextup(rs.addrs)
        ka = self.connect(nx)
        sent = 0
        bad_hits = lambda: sum(1 for e in rs.entries() if e["name"] == "r1")  # noqa: E731
        deadline = time.monotonic() + 15
        # At least 40 GETs (fresh and keep-alive connections); go on until r1 was hit twice.
        while (sent < 40 or bad_hits() < 2) and sent < 200 and time.monotonic() < deadline:
            conn = ka if sent % 2 else None
            rid, r = self.send(nx, "GET", "/item/%d" % sent, conn=conn, tag="g")
            sent += 1
            self.assertEqual(r.status, 200, "GET %d (%s): %r body=%r" % (sent, rid, r, r.body[:200]))
            self.assertIn(r.get("x-backend"), ("r0", "r2"), "GET %d answered by %r" % (sent, r.get("x-backend")))
            self.assertEqual(r.body, (r.get("x-backend") + "\n").encode())
            self.assertFalse(r.has("retry-after"), "GET %d: the 503's Retry-After reached the client: %r" % (sent, r))
            if r.get("connection", "").lower() == "close" and conn is ka:
                ka = self.connect(nx)
        hits = [e for e in rs.entries() if e["name"] == "r1"]
        self.assertGreaterEqual(len(hits), 1, "r1 (mode 503) never got a request in %d GETs: nothing was tested"
                                % sent)
        for e in hits:
            later = [d["name"] for d in self.delivered(rs, e["id"]) if d["name"] != "r1"]
            self.assertEqual(len(later), 1, "GET %s got a 503 from r1; its retry should reach one other replica,"
                             " deliveries elsewhere: %r" % (e["id"], later))
        m = H.metrics(nx)
        rc = H.retry_counts(m)
        self.assertEqual(rc["retries"]["status"], len(hits),
                         "every 503 from r1 (%d) should be followed by one retry (reason status): %r" % (len(hits), rc))
        self.assertEqual(sum(rc["refused"].values()), 0, "no retry should have been refused: %r" % rc)
        self.assertEqual(H.metric(m, "nextup_upstream_attempts_total"), sent + len(hits))
        print("\n  %d GETs, %d hit the 503 replica and were retried" % (sent, len(hits)))

    def test_post_503_forwarded_without_key_replayed_with_key(self):
        rs = self.replicas(2, ["503", "ok"])
        # Without Idempotency-Key: the first POST r0 sees comes back as r0's 503, unchanged.
        nx = self.start_nextup(rs.addrs)
        hit = None
        for i in range(40):
            body = os.urandom(1000 + i)
            rid, r = self.send(nx, "POST", "/echo", body=body, tag="p")
            if r.get("x-backend") == "r0":
                hit = (rid, r, body)
                break
            self.assertEqual(r.status, 200, "POST %d (to %r): %r %r" % (i, r.get("x-backend"), r, r.body[:200]))
            self.assertEqual(r.body, body)
            self.assertDeliveredOnce(rs, rid, "r1", body, "POST %d" % i)
        self.assertIsNotNone(hit, "no POST reached r0 in 40 tries: nothing was tested")
        rid, r, body = hit
        self.assertReplica503(r, "POST without Idempotency-Key to a 503 replica")
        self.assertEqual(r.body, b"replica r0 unavailable\n")
        self.assertDeliveredOnce(rs, rid, "r0", body, "POST without Idempotency-Key answered 503")
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["status"], 0, "a POST without Idempotency-Key was retried: %r" % rc)
        self.assertGreaterEqual(rc["refused"]["method"], 1, "the refusal should count as reason method: %r" % rc)

        # With Idempotency-Key (a fresh nextup: fresh health): 200, and the body the good replica got is ours.
        nx = self.start_nextup(rs.addrs)
        retried = None
        for i in range(40):
            body = os.urandom(2000 + i)
            rid, r = self.send(nx, "POST", "/echo", body=body, key="key-%d-%s" % (i, os.urandom(4).hex()), tag="pk")
            self.assertEqual((r.status, r.get("x-backend")), (200, "r1"),
                             "POST with Idempotency-Key %d: %r %r" % (i, r, r.body[:200]))
            self.assertEqual(r.body, body, "POST with Idempotency-Key %d: echo differs" % i)
            if any(e["name"] == "r0" for e in self.delivered(rs, rid)):
                retried = (rid, body)
                break
        self.assertIsNotNone(retried, "no POST with Idempotency-Key reached r0 in 40 tries: nothing was tested")
        rid, body = retried
        d = self.delivered(rs, rid)
        self.assertEqual(sorted(e["name"] for e in d), ["r0", "r1"], "deliveries of the retried POST: %r" % d)
        for e in d:
            self.assertEqual((e["bytes"], e["sha256"]), (len(body), H.sha256(body)),
                             "the replayed POST body at %s differs from the body sent" % e["name"])
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["status"], 1, "one retry, reason status: %r" % rc)

    def test_total_outage_answers_the_replicas_503_within_the_budget(self):
        rs = self.replicas(3, ["503", "503", "503"])
        t_start = time.monotonic()
        nx = self.start_nextup(rs.addrs)
        n_threads, per_thread, seconds = 3, 100, 3.0
        results, errors = [], []
        lock = threading.Lock()

        def client(tid):
            conn = None
            interval = seconds / per_thread
            t0 = time.monotonic()
            try:
                for i in range(per_thread):
                    delay = t0 + i * interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if time.monotonic() - t0 > 20:
                        raise AssertionError("burst thread %d: over 20 s" % tid)
                    if conn is None:
                        conn = H.RawConn(nx.listen_port, timeout=5)
                    conn.send(H.request_bytes("GET", "/outage/%d/%d" % (tid, i),
                                              headers=[("X-Request-Id", "o-%d-%d" % (tid, i))]))
                    r = conn.read_response()
                    with lock:
                        results.append(r)
                    if "close" in r.get("connection", "").lower():
                        conn.close()
                        conn = None
            except Exception as e:  # reported by the main thread
                with lock:
                    errors.append("thread %d: %r" % (tid, e))
            finally:
                if conn is not None:
                    conn.close()

        m0 = H.metrics(nx)
        t_burst = time.monotonic()
        running = H.run_threads(client, [(t,) for t in range(n_threads)], timeout=30)
        took = time.monotonic() - t_burst
        self.assertEqual(running, [], "burst threads still running after 30 s")
        self.assertEqual(errors, [])
        m = H.metrics(nx)
        age = time.monotonic() - t_start
        self.assertLess(age, BUDGET_WINDOW_S - 0.5, "the burst took too long (%.1f s since nextup started) to "
                        "check it against one %d s budget window" % (age, BUDGET_WINDOW_S))
        n = n_threads * per_thread
        self.assertEqual(len(results), n)
        for r in results:
            self.assertReplica503(r, "total outage")
        requests = H.metric(m, "nextup_downstream_requests_total") - H.metric(m0, "nextup_downstream_requests_total")
        attempts = H.metric(m, "nextup_upstream_attempts_total") - H.metric(m0, "nextup_upstream_attempts_total")
        rc = H.retry_counts(m)
        self.assertEqual(requests, n)
        # Every request of the window counts: nextup started less than one window ago.
        total_requests = H.metric(m, "nextup_downstream_requests_total")
        allowed = int(total_requests * 20 // 100) + 10 * BUDGET_WINDOW_S
        connect_retries = rc["retries"]["refused"] + rc["retries"]["connect_failure"]
        print("\n  total outage: %d GETs in %.2f s -> %d upstream attempts; retries %r; refused %r; "
              "budget allows %d retries (+%d connect-time)"
              % (n, took, attempts, rc["retries"], rc["refused"], allowed, connect_retries))
        self.assertEqual(connect_retries, 0)
        self.assertLessEqual(attempts, requests + allowed + connect_retries + BUDGET_RACE_SLACK,
                             "upstream attempts exceed requests + the retry budget (20%% of %d + 10/s x %d s = %d)"
                             % (total_requests, BUDGET_WINDOW_S, allowed))
        self.assertEqual(attempts - requests, sum(rc["retries"].values()))
        self.assertGreater(rc["refused"]["budget"], 0, "the budget never refused a retry: %r" % rc)
        self.assertGreaterEqual(rc["retries"]["status"], 10 * BUDGET_WINDOW_S,
                                "the budget's floor (10/s over the window) should have been granted: %r" % rc)
        # Each request ends with exactly one refusal: retries exhausted, or no budget left.
        self.assertEqual(rc["refused"]["exhausted"] + rc["refused"]["budget"], n, "refusals: %r" % rc)

    def test_body_over_retry_buffer_is_not_replayed(self):
        rs = self.replicas(2, ["503", "ok"])
        # r0 must keep answering 503 (with Connection: close, a drain signal): 5xx never take it out.
        nx = self.start_nextup(rs.addrs, env={"NEXTUP_RETRY_BUFFER_BYTES": "4096", "NEXTUP_EJECT_GATEWAY_ERRORS": "0"})
        hit = None
        big_sent = 0
        for i in range(40):
            body = os.urandom(64 * 1024)
            rid, r = self.send(nx, "PUT", "/echo", body=body, tag="big")
            big_sent += 1
            if r.get("x-backend") == "r0":
                hit = (rid, r, body)
                break
            self.assertEqual(r.status, 200, "64 KiB PUT %d: %r" % (i, r))
            self.assertEqual(r.body, body)
        self.assertIsNotNone(hit, "no 64 KiB PUT reached r0 in 40 tries: nothing was tested")
        rid, r, body = hit
        self.assertReplica503(r, "64 KiB PUT (over NEXTUP_RETRY_BUFFER_BYTES=4096) to a 503 replica")
        self.assertDeliveredOnce(rs, rid, "r0", body, "64 KiB PUT answered 503")
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["refused"]["buffer"], 1, "the refusal should count as reason buffer: %r" % rc)
        self.assertEqual(rc["retries"]["status"], 0, rc)

        # A small PUT fits: replayed to r1 with the same bytes.
        retried = None
        for i in range(40):
            body = os.urandom(1500)
            rid, r = self.send(nx, "PUT", "/echo", body=body, tag="small")
            self.assertEqual((r.status, r.get("x-backend")), (200, "r1"), "small PUT %d: %r %r" % (i, r, r.body[:200]))
            self.assertEqual(r.body, body)
            if any(e["name"] == "r0" for e in self.delivered(rs, rid)):
                retried = (rid, body)
                break
        self.assertIsNotNone(retried, "no small PUT reached r0 in 40 tries: nothing was tested")
        rid, body = retried
        d = self.delivered(rs, rid)
        self.assertEqual(sorted(e["name"] for e in d), ["r0", "r1"], d)
        for e in d:
            self.assertEqual((e["bytes"], e["sha256"]), (len(body), H.sha256(body)),
                             "replayed PUT body at %s differs" % e["name"])
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["status"], 1, rc)

    def test_reset_after_request_read(self):
        rs = self.replicas(3, ["ok", "reset", "ok"])
        env = {}  # the default NEXTUP_RETRY_ON retries resets, under the method rules
        nx = self.start_nextup(rs.addrs, env=env)
        sent = 0
        r1_hits = lambda: sum(1 for e in rs.entries() if e["name"] == "r1")  # noqa: E731
        while (sent < 30 or r1_hits() < 2) and sent < 150:
            rid, r = self.send(nx, "GET", "/item/%d" % sent, tag="rg")
            sent += 1
            self.assertEqual(r.status, 200, "GET %d: %r body=%r" % (sent, r, r.body[:200]))
            self.assertIn(r.get("x-backend"), ("r0", "r2"))
        hits = r1_hits()
        self.assertGreaterEqual(hits, 1, "the resetting replica never got a GET: nothing was tested")
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["reset"], hits, "each reset GET should be retried, reason reset: %r" % rc)
        self.assertEqual(rc["retries"]["connect_failure"], 0,
                         "the replica acknowledged the request: not a connect failure: %r" % rc)

        # POSTs (no Idempotency-Key): the one that reaches r1 is not replayed: a 502 made by nextup.
        nx = self.start_nextup(rs.addrs, env=env)
        hit = None
        for i in range(40):
            body = os.urandom(3000)
            rid, r = self.send(nx, "POST", "/echo", body=body, tag="rp")
            if any(e["name"] == "r1" for e in self.delivered(rs, rid)):
                hit = (rid, r, body)
                break
            self.assertEqual(r.status, 200, "POST %d: %r" % (i, r))
        self.assertIsNotNone(hit, "no POST reached the resetting replica in 40 tries: nothing was tested")
        rid, r, body = hit
        self.assertPlainError(r, 502)
        self.assertDeliveredOnce(rs, rid, "r1", body, "POST reset after it was read")
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["reset"] + rc["retries"]["connect_failure"], 0, rc)
        self.assertGreaterEqual(rc["refused"]["method"], 1, rc)

    def test_reset_on_pooled_connection_is_not_resent_without_reset_in_retry_on(self):
        # A GET on a pooled connection that the replica reads (the kernel acknowledges it)
        # and then resets is `reset`, not the keep-alive race: with the default
        # NEXTUP_RETRY_ON without reset it must not be sent again, to any peer.
        rs = self.replicas(1)
        nx = self.start_nextup(rs.addrs, workers=1, env={"NEXTUP_RETRY_ON": "connect-failure,gateway-error"})
        c = self.connect(nx)
        rid, r = self.send(nx, "GET", "/warm", conn=c, tag="warm")
        self.assertEqual(r.status, 200)
        rs.set_mode(0, "reset")
        m0 = H.metrics(nx)
        rid, r = self.send(nx, "GET", "/item/x", conn=c, tag="pooled-reset")
        m1 = H.metrics(nx)
        self.assertEqual(H.metric(m1, "nextup_upstream_reused_total") - H.metric(m0, "nextup_upstream_reused_total"),
                         1, "the GET did not go out on the pooled connection: the scenario was not set up")
        self.assertPlainError(r, 502)
        d = self.delivered(rs, rid)
        self.assertEqual(len(d), 1, "a GET that the replica acknowledged (and then reset) was delivered %d times "
                         "although NEXTUP_RETRY_ON has no `reset`; keepalive_race_resends +%d, attempts +%d"
                         % (len(d), H.metric(m1, "nextup_keepalive_race_resends_total")
                            - H.metric(m0, "nextup_keepalive_race_resends_total"),
                            H.metric(m1, "nextup_upstream_attempts_total")
                            - H.metric(m0, "nextup_upstream_attempts_total")))

    def test_reset_on_pooled_connection_honours_retry_methods(self):
        # Same, with `reset` in NEXTUP_RETRY_ON but PUT not in NEXTUP_RETRY_METHODS:
        # the PUT reached the replica, so it must not be sent again.
        rs = self.replicas(1)
        nx = self.start_nextup(rs.addrs, workers=1, env={
            "NEXTUP_RETRY_ON": "connect-failure,refused,reset,gateway-error", "NEXTUP_RETRY_METHODS": "GET"})
        c = self.connect(nx)
        rid, r = self.send(nx, "GET", "/warm", conn=c, tag="warm")
        self.assertEqual(r.status, 200)
        rs.set_mode(0, "reset")
        m0 = H.metrics(nx)
        body = os.urandom(1200)
        rid, r = self.send(nx, "PUT", "/echo", body=body, conn=c, tag="pooled-put")
        m1 = H.metrics(nx)
        self.assertEqual(H.metric(m1, "nextup_upstream_reused_total") - H.metric(m0, "nextup_upstream_reused_total"),
                         1, "the PUT did not go out on the pooled connection: the scenario was not set up")
        self.assertPlainError(r, 502)
        d = self.delivered(rs, rid)
        self.assertEqual(len(d), 1, "a PUT (not in NEXTUP_RETRY_METHODS=GET) that the replica acknowledged and then "
                         "reset was delivered %d times; keepalive_race_resends +%d, attempts +%d"
                         % (len(d), H.metric(m1, "nextup_keepalive_race_resends_total")
                            - H.metric(m0, "nextup_keepalive_race_resends_total"),
                            H.metric(m1, "nextup_upstream_attempts_total")
                            - H.metric(m0, "nextup_upstream_attempts_total")))

    def test_backoff_only_once_every_healthy_peer_was_tried(self):
        # A long backoff (400 ms) makes a wrong wait visible.
        env = {"NEXTUP_RETRY_BACKOFF_BASE_MS": "400", "NEXTUP_RETRY_BACKOFF_MAX_MS": "400"}
        rs = self.replicas(3, ["ok", "503", "ok"])
        # Rounds of 12 GETs at once, each round on a fresh nextup (fresh health): a few
        # reach r1 before two 503s eject it; their retry has an untried healthy peer,
        # so it goes out at once. Wrong waits (0..400 ms) would show in a few samples.
        took = {}
        lock = threading.Lock()
        errors = []

        def one(nx, i):
            try:
                t0 = time.monotonic()
                rid, r = self.send(nx, "GET", "/item/%d" % i, tag="bo")
                with lock:
                    took[rid] = (time.monotonic() - t0, r.status)
            except Exception as e:
                with lock:
                    errors.append(repr(e))

        retried = set()
        for rnd in range(8):
            nx = self.start_nextup(rs.addrs, env=env)
            running = H.run_threads(one, [(nx, i) for i in range(12)], timeout=15)
            self.assertEqual(running, [], "GETs still running after 15 s")
            nx.expect_exit = True  # stopped here, by PID, to free the CPU for the next round
            nx.stop()
            retried = {e["id"] for e in rs.entries() if e["name"] == "r1"}
            if len(retried) >= 6:
                break
        self.assertEqual(errors, [])
        self.assertEqual(sorted({st for _, st in took.values()}), [200])
        self.assertGreaterEqual(len(retried), 3, "only %d GETs reached the 503 replica: too few to tell" % len(retried))
        times = sorted(took[rid][0] for rid in retried)
        print("\n  retried with an untried healthy peer left: %d GETs, %s s"
              % (len(times), ", ".join("%.3f" % t for t in times)))
        self.assertLess(max(times), 0.2, "a retry to an untried healthy peer waited (backoff 0..400 ms): %r" % times)

        # Two replicas, both 503: the last retry goes to a peer already tried, after the backoff.
        rs2 = self.replicas(2, ["503", "503"])
        nx = self.start_nextup(rs2.addrs, env=env)
        durations = []
        for i in range(8):
            t0 = time.monotonic()
            rid, r = self.send(nx, "GET", "/item/%d" % i, tag="bo2")
            durations.append(time.monotonic() - t0)
            self.assertReplica503(r, "GET %d, both replicas 503" % i)
            self.assertEqual(len(self.delivered(rs2, rid)), 3)
        mean = sum(durations) / len(durations)
        print("  both replicas 503: 3 attempts each, %s s (mean %.3f)" % (
            ", ".join("%.3f" % d for d in durations), mean))
        self.assertGreater(mean, 0.05, "no backoff before retrying a peer already tried (mean %.3f s)" % mean)
        self.assertLess(max(durations), 1.2, "backoff over its 400 ms cap: %r" % durations)

    def test_replica_dies_with_requests_in_accept_queue(self):
        # r0 is frozen (SIGSTOP): its kernel still completes handshakes and acknowledges
        # the requests, which wait unread in its accept queue; then it dies (SIGKILL) and
        # the kernel resets them. Some bytes were acknowledged, so this is `reset`, not a
        # connect failure: GETs go elsewhere (reset in NEXTUP_RETRY_ON), POSTs without
        # Idempotency-Key get nextup's 502 and are not replayed, keyed POSTs are.
        # r1 is slow (2 s), so that requests pile up on both peers (least outstanding of two
        # choices) and about half of them wait at r0.
        rs = self.replicas(2, ["ok", "slow"])
        nx = self.start_nextup(rs.addrs, workers=1, env={"NEXTUP_RETRY_ON": ROLLING_RETRY_ON})
        frozen = rs[0]
        H.freeze(frozen.proc.pid)
        self.addCleanup(self._kill_frozen, frozen)
        out, errors = {}, []
        lock = threading.Lock()
        kinds = [("GET", None), ("POST", None), ("POST", "key")] * 4

        def one(i, method, key):
            try:
                body = os.urandom(700) if method == "POST" else None
                rid, r = self.send(nx, method, "/echo" if body else "/item/%d" % i, body=body,
                                   key=("k-%d-%s" % (i, os.urandom(4).hex())) if key else None, tag="aq")
                with lock:
                    out[rid] = (method, key, r, body)
            except Exception as e:
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i, m, k), daemon=True) for i, (m, k) in enumerate(kinds)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every request is waiting: at r1 (slow) or in r0's accept queue
        os.kill(frozen.proc.pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=15)
        self.assertEqual(errors, [])
        self.assertEqual(len(out), len(kinds))
        stuck = 0
        for rid, (method, key, r, body) in out.items():
            d = self.delivered(rs, rid)
            self.assertTrue(all(e["name"] == "r1" for e in d), "%s %s reached the frozen replica: %r" % (method, rid, d))
            if method == "POST" and not key and r.status != 200:
                stuck += 1
                self.assertPlainError(r, 502)
                self.assertEqual(d, [], "POST %s got a 502 but was delivered: %r" % (rid, d))
            else:
                self.assertEqual((r.status, r.get("x-backend")), (200, "r1"),
                                 "%s%s %s: %r %r" % (method, " (key)" if key else "", rid, r, r.body[:200]))
                self.assertEqual(len(d), 1)
        rc = H.retry_counts(H.metrics(nx))
        print("\n  replica died with requests unread: retries %r, refused %r, POSTs answered 502: %d"
              % (rc["retries"], rc["refused"], stuck))
        self.assertGreaterEqual(rc["retries"]["reset"] + stuck, 3, "too few requests waited at the frozen replica: "
                                "%r" % rc)
        self.assertGreaterEqual(rc["retries"]["reset"], 1, "no GET or keyed POST waited at the frozen replica: %r" % rc)
        self.assertEqual(rc["retries"]["connect_failure"], 0,
                         "the kernel acknowledged these requests: no 'unsent' proof may be claimed: %r" % rc)
        self.assertEqual(rc["refused"]["method"], stuck)

    @staticmethod
    def _kill_frozen(b):
        try:
            os.kill(b.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def test_per_try_timeout(self):
        rs = self.replicas(2, ["slow", "ok"])
        env = {"NEXTUP_PER_TRY_TIMEOUT_MS": "300",
               "NEXTUP_RETRY_ON": "connect-failure,refused,gateway-error,timeout"}
        nx = self.start_nextup(rs.addrs, env=env)
        sent = 0
        slowest = 0.0
        r0_hits = lambda: sum(1 for e in rs.entries() if e["name"] == "r0")  # noqa: E731
        while (sent < 8 or r0_hits() < 1) and sent < 40:
            t0 = time.monotonic()
            rid, r = self.send(nx, "GET", "/item/%d" % sent, tag="t")
            took = time.monotonic() - t0
            slowest = max(slowest, took)
            sent += 1
            self.assertEqual((r.status, r.get("x-backend")), (200, "r1"), "GET %d: %r %r" % (sent, r, r.body[:200]))
            self.assertLess(took, 1.0, "GET %d took %.2f s with a 300 ms per-try timeout" % (sent, took))
        hits = r0_hits()
        self.assertGreaterEqual(hits, 1, "the slow replica never got a GET: nothing was tested")
        rc = H.retry_counts(H.metrics(nx))
        self.assertEqual(rc["retries"]["timeout"], hits, rc)
        print("\n  per-try timeout: %d GETs, %d timed out on the slow replica, slowest %.3f s" % (sent, hits, slowest))

        # A POST without Idempotency-Key that times out is not replayed: 504 from nextup.
        nx = self.start_nextup(rs.addrs, env=env)
        hit = None
        for i in range(40):
            body = os.urandom(500)
            t0 = time.monotonic()
            rid, r = self.send(nx, "POST", "/echo", body=body, tag="tp")
            took = time.monotonic() - t0
            if any(e["name"] == "r0" for e in self.delivered(rs, rid)):
                hit = (rid, r, body, took)
                break
            self.assertEqual(r.status, 200, "POST %d: %r" % (i, r))
        self.assertIsNotNone(hit, "no POST reached the slow replica in 40 tries: nothing was tested")
        rid, r, body, took = hit
        self.assertPlainError(r, 504)
        self.assertGreater(took, 0.25)
        self.assertLess(took, 1.5, "504 after %.2f s with a 300 ms per-try timeout" % took)
        self.assertDeliveredOnce(rs, rid, "r0", body, "POST that timed out")


class KeepAliveRaceTest(RetryCase):

    def test_post_after_backend_restart_on_same_port(self):
        rs = self.replicas(1)
        nx = self.start_nextup(rs.addrs, workers=1)  # one worker: one pool
        c = self.connect(nx)
        for rnd in range(3):
            body1 = os.urandom(700)
            rid1, r = self.send(nx, "POST", "/echo", body=body1, conn=c, tag="before")
            self.assertEqual((r.status, r.body), (200, body1), "round %d first POST: %r" % (rnd, r))
            rs.stop(0)
            rs.start(0)
            time.sleep(0.1)
            body2 = os.urandom(900)
            rid2, r = self.send(nx, "POST", "/echo", body=body2, conn=c, tag="after")
            self.assertEqual(r.status, 200, "round %d: POST after the replica restarted: %r %r"
                             % (rnd, r, r.body[:200]))
            self.assertEqual(r.body, body2)
            self.assertDeliveredOnce(rs, rid1, "r0", body1, "round %d POST before the restart" % rnd)
            self.assertDeliveredOnce(rs, rid2, "r0", body2, "round %d POST after the restart" % rnd)
        m = H.metrics(nx)
        # Informational: nextup may notice the FIN on the idle pooled connection before the
        # next POST (then no race at all); test_post_meets_a_fin_nextup_has_not_read_yet shows
        # that a FIN already in the kernel's buffer is seen before the write.
        print("\n  3 restarts: keepalive_race_resends %d, unsent_proofs %d, upstream reused %d, connects %d"
              % (H.metric(m, "nextup_keepalive_race_resends_total"), H.metric(m, "nextup_unsent_proofs_total"),
                 H.metric(m, "nextup_upstream_reused_total"), H.metric(m, "nextup_upstream_connects_total")))

    def test_post_meets_a_fin_nextup_has_not_read_yet(self):
        # What used to be the keep-alive race, made deterministic: nextup is frozen
        # (SIGSTOP) while the client's POST arrives and then the replica closes the pooled
        # connection (FIN). Thawed, nextup reads the POST first (it arrived first); before
        # it writes on the pooled connection it asks the kernel whether anything came
        # on it (MSG_PEEK), sees the FIN, and sends the POST on a fresh connection
        # instead: no race, no resend, delivered once.
        rs = self.replicas(1)
        nx = self.start_nextup(rs.addrs, workers=1)  # one worker: one loop, one pool
        c = self.connect(nx)
        rounds = 3
        m_start = H.metrics(nx)
        for rnd in range(rounds):
            body1 = os.urandom(600)
            rid1, r = self.send(nx, "POST", "/echo", body=body1, conn=c, tag="k1")
            self.assertEqual((r.status, r.body), (200, body1))
            m0 = H.metrics(nx)
            rid2 = new_id("k2")
            body2 = os.urandom(800)
            # The client has the response before nextup's worker has put the connection back
            # in its pool (same callback, just after): on a busy machine that can take a moment.
            time.sleep(0.1)
            H.freeze(nx.pid)
            try:
                c.send(H.request_bytes("POST", "/echo", host="127.0.0.1:%d" % nx.listen_port,
                                       headers=[("X-Request-Id", rid2)], body=body2))
                time.sleep(0.05)
                st, out = H.replica_post(rs[0], "/_control/close-idle")
                self.assertEqual((st, out), (200, b"ok closed 1\n"), "the replica had no pooled connection to close")
                time.sleep(0.05)
            finally:
                os.kill(nx.pid, signal.SIGCONT)
            r = c.read_response("POST")
            m1 = H.metrics(nx)
            self.assertEqual(r.status, 200, "round %d: POST in the keep-alive race: %r %r" % (rnd, r, r.body[:200]))
            self.assertEqual(r.body, body2)
            self.assertDeliveredOnce(rs, rid2, "r0", body2, "round %d POST resent after the keep-alive race" % rnd)
            self.assertEqual(H.metric(m1, "nextup_upstream_reused_total") - H.metric(m0, "nextup_upstream_reused_total"),
                             0, "round %d: the POST was written on a pooled connection that had the FIN" % rnd)
            self.assertEqual(H.metric(m1, "nextup_upstream_connects_total")
                             - H.metric(m0, "nextup_upstream_connects_total"), 1, "round %d" % rnd)
            race = (H.metric(m1, "nextup_keepalive_race_resends_total")
                    - H.metric(m0, "nextup_keepalive_race_resends_total"))
            proofs = H.metric(m1, "nextup_unsent_proofs_total") - H.metric(m0, "nextup_unsent_proofs_total")
            self.assertEqual(race + proofs, 0, "round %d: a resend was needed (keepalive_race_resends +%d, "
                             "unsent_proofs +%d)" % (rnd, race, proofs))
        m_end = H.metrics(nx)
        rc = H.retry_counts(m_end)
        self.assertEqual(sum(rc["retries"].values()), 0, "the race resend is not a retry: %r" % rc)
        self.assertEqual(H.metric(m_end, "nextup_downstream_responses_total", code="2xx")
                         - H.metric(m_start, "nextup_downstream_responses_total", code="2xx"), 2 * rounds)

    def test_pooled_connection_gone_without_fin(self):
        # The replica's end of each pooled connection disappears without FIN or RST
        # (TCP_REPAIR): writing the next request brings a bare RST, which proves nothing
        # (its ACK field is not processed), so it is a `reset`. With reset in
        # NEXTUP_RETRY_ON, GETs and keyed POSTs still succeed; a POST without a key gets
        # nextup's 502 and is not delivered, or (were it resent) is delivered once.
        rs = self.replicas(1)
        nx = self.start_nextup(rs.addrs, workers=1, env={"NEXTUP_RETRY_ON": ROLLING_RETRY_ON})
        c = self.connect(nx)
        outcomes = []
        for rnd, (method, key) in enumerate([("GET", None), ("POST", "key"), ("POST", None)] * 2):
            rid, r = self.send(nx, "GET", "/warm/%d" % rnd, conn=c, tag="warm")
            self.assertEqual(r.status, 200)
            if r.get("connection", "").lower() == "close":
                c = self.connect(nx)
            self.assertGreaterEqual(H.vanish(rs[0]), 1, "no upstream connection to drop: nextup did not pool it")
            body = os.urandom(900) if method == "POST" else None
            rid, r = self.send(nx, method, "/echo" if body else "/item/%d" % rnd, body=body,
                               key=("k-%d-%s" % (rnd, os.urandom(4).hex())) if key else None, conn=c, tag="gone")
            d = self.delivered(rs, rid)
            what = "%s%s on a pooled connection gone without FIN" % (method, " (key)" if key else "")
            self.assertLessEqual(len(d), 1, "%s: delivered %d times" % (what, len(d)))
            if method == "POST" and not key and r.status != 200:
                self.assertPlainError(r, 502)
                self.assertEqual(d, [], "%s: nextup answered 502 but the replica read it" % what)
            else:
                self.assertEqual(r.status, 200, "%s: %r %r" % (what, r, r.body[:200]))
                self.assertEqual(len(d), 1)
                if body:
                    self.assertEqual(r.body, body)
            outcomes.append("%s -> %d" % (what.split(" on ")[0], r.status))
            if r.get("connection", "").lower() == "close":
                c = self.connect(nx)
        m = H.metrics(nx)
        print("\n  pooled connection gone without FIN: %s; retries %r, race resends %d"
              % ("; ".join(outcomes), H.retry_counts(m)["retries"], H.metric(m, "nextup_keepalive_race_resends_total")))


class PluginTest(RetryCase):

    def test_plugin_retries_what_the_builtin_would_not(self):
        need_file(PLUGIN, "the example decision plugin")
        rs = self.replicas(3, ["503", "503", "ok"])
        env = {"NEXTUP_RETRY_ON": "connect-failure", "NEXTUP_DECISION_PLUGIN": PLUGIN}
        nx = self.start_nextup(rs.addrs, env=env)
        for i in range(30):
            rid, r = self.send(nx, "GET", "/item/%d" % i, tag="pl")
            self.assertEqual((r.status, r.get("x-backend")), (200, "r2"),
                             "GET %d with the plugin: %r %r" % (i, r, r.body[:200]))
        rc = H.retry_counts(H.metrics(nx))
        hits = sum(1 for e in rs.entries() if e["name"] in ("r0", "r1"))
        self.assertGreaterEqual(hits, 1, "no GET reached a 503 replica: nothing was tested")
        self.assertEqual(rc["retries"]["status"], hits, rc)

        # The same configuration without the plugin forwards the 503 (the control).
        nx = self.start_nextup(rs.addrs, env={"NEXTUP_RETRY_ON": "connect-failure"})
        seen = None
        for i in range(40):
            rid, r = self.send(nx, "GET", "/control/%d" % i, tag="ctl")
            if r.status != 200:
                seen = r
                break
        self.assertIsNotNone(seen, "control: 40 GETs without the plugin never met a 503 replica")
        self.assertReplica503(seen, "control without the plugin")

    def test_plugin_three_attempts_then_the_503(self):
        need_file(PLUGIN, "the example decision plugin")
        rs = self.replicas(3, ["503", "503", "503"])
        nx = self.start_nextup(rs.addrs, env={"NEXTUP_RETRY_ON": "connect-failure", "NEXTUP_DECISION_PLUGIN": PLUGIN})
        m0 = H.metrics(nx)
        n = 15
        ids = []
        for i in range(n):
            rid, r = self.send(nx, "GET", "/item/%d" % i, tag="pl3")
            ids.append(rid)
            self.assertReplica503(r, "GET %d, every replica 503, with the plugin" % i)
        m1 = H.metrics(nx)
        attempts = H.metric(m1, "nextup_upstream_attempts_total") - H.metric(m0, "nextup_upstream_attempts_total")
        self.assertEqual(attempts, 3 * n, "the plugin retries while fewer than 3 responses were seen: want %d "
                         "attempts for %d requests" % (3 * n, n))
        for rid in ids:
            self.assertEqual(len(self.delivered(rs, rid)), 3, "deliveries of %s: %r" % (rid, self.delivered(rs, rid)))
            self.assertEqual(len({e["name"] for e in self.delivered(rs, rid)}), 3,
                             "the 3 attempts of %s should go to 3 different replicas" % rid)

    def _expect_plugin_error(self, path):
        e = H.base_env()
        e.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
                  "NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(), "NEXTUP_WORKERS": "1",
                  "NEXTUP_DECISION_PLUGIN": path})
        proc = subprocess.Popen([H.nextup_bin()], env=e, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            H.stop_pid(proc, wait=2)
            proc.communicate(timeout=5)
            self.fail("nextup with NEXTUP_DECISION_PLUGIN=%s still running after 5 s" % path)
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        self.assertEqual(proc.returncode, 2, "NEXTUP_DECISION_PLUGIN=%s: exit %s, stderr %r" % (path, proc.returncode, err))
        self.assertEqual(len(lines), 1, "NEXTUP_DECISION_PLUGIN=%s: want one stderr line, got %r" % (path, lines))
        self.assertIn("NEXTUP_DECISION_PLUGIN", lines[0])
        return lines[0]

    def test_plugin_missing_file(self):
        line = self._expect_plugin_error("/nonexistent/nextup-plugin-%d.so" % os.getpid())
        print("\n  missing plugin: %s" % line)

    def test_plugin_without_symbol(self):
        if not os.path.exists(NO_SYMBOL_SO):
            H.skip_loudly(self, "%s (a shared object without nextup_plugin_hooks) is not here" % NO_SYMBOL_SO)
        line = self._expect_plugin_error(NO_SYMBOL_SO)
        print("\n  plugin without the symbol: %s" % line)


class EmbeddedTest(RetryCase):

    def test_embedded_hook_retries_503_only_without_retry_after(self):
        need_file(EMBEDDED, "the embedded example")
        rs = self.replicas(2, ["503bare", "ok"])
        # NEXTUP_RETRY_ON without gateway-error: only the in-process hook retries a 503.
        nx = self.start_nextup(rs.addrs, env={"NEXTUP_RETRY_ON": "connect-failure"}, binary=EMBEDDED)
        sent = 0
        r0_hits = lambda: sum(1 for e in rs.entries() if e["name"] == "r0")  # noqa: E731
        while (sent < 10 or r0_hits() < 1) and sent < 40:
            rid, r = self.send(nx, "GET", "/item/%d" % sent, tag="em")
            sent += 1
            self.assertEqual((r.status, r.get("x-backend")), (200, "r1"), "GET %d: %r %r" % (sent, r, r.body[:200]))
        hits = r0_hits()
        self.assertGreaterEqual(hits, 1, "no GET reached the 503 replica: nothing was tested")
        self.assertEqual(H.retry_counts(H.metrics(nx))["retries"]["status"], hits)

        # With Retry-After the hook forwards the 503, although the built-in policy (default
        # NEXTUP_RETRY_ON, gateway-error) would retry it.
        rs.set_mode(0, "503")
        nx = self.start_nextup(rs.addrs, binary=EMBEDDED)
        seen = None
        for i in range(40):
            rid, r = self.send(nx, "GET", "/ra/%d" % i, tag="em2")
            if r.status != 200:
                seen = (rid, r)
                break
            self.assertEqual(r.get("x-backend"), "r1")
        self.assertIsNotNone(seen, "no GET reached the 503 replica in 40 tries: nothing was tested")
        rid, r = seen
        self.assertReplica503(r, "503 with Retry-After through the embedded hook")
        self.assertEqual([e["name"] for e in self.delivered(rs, rid)], ["r0"])
        self.assertEqual(H.retry_counts(H.metrics(nx))["retries"]["status"], 0)


class RollingRestartTest(RetryCase):

    def test_rolling_restart_under_load(self):
        rs = self.replicas(3)
        # `reset` too: a replica stopped with connections still in its accept queue resets
        # them after its kernel acknowledged the requests (see
        # test_replica_dies_with_requests_in_accept_queue); GETs and keyed POSTs can go
        # elsewhere then, as with nginx's `error` and HAProxy's all-retryable-errors.
        nx = self.start_nextup(rs.addrs, env={"NEXTUP_RETRY_ON": ROLLING_RETRY_ON})
        load = MixedLoadForTest(nx.listen_port)
        load.start()
        try:
            time.sleep(1.0)
            events = H.rolling_restart(rs, phase_503=1.5, phase_down=1.5, settle=1.0)
            time.sleep(0.5)
        finally:
            records = load.stop()
        res = H.analyze_load(records, rs.entries())
        rc = H.retry_counts(H.metrics(nx))
        print("\n" + H.format_load(res, "nextup rolling restart", rc, load.duration))
        print("  schedule: " + "; ".join("%.1f s %s" % ev for ev in events))
        self.assertGreaterEqual(res["requests"], 1000, "the load generator made too few requests to mean much")
        self.assertGreater(rc["retries"]["status"], 0, "no 503 was retried: the schedule did not bite")
        # Connect-time retries are not required: a replica that said it was draining (503 with
        # Connection: close) is out before it stops, and may be back before nextup tries it again.
        m = H.metrics(nx)
        drained = sum(v for k, v in m.items() if k.startswith("nextup_peer_ejections_total"))
        self.assertGreaterEqual(drained, 3, "fewer than three replicas taken out during three restarts")
        get_errors = [r for r in records if r["kind"] == H.KIND_GET and r["status"] != 200]
        self.assertEqual(get_errors[:5], [], "client-visible GET errors (%d): %s"
                         % (len(get_errors), describe(get_errors)))
        key_errors = [r for r in records if r["kind"] == H.KIND_POST_KEY and r["status"] != 200]
        self.assertEqual(key_errors[:5], [], "client-visible errors for POSTs with Idempotency-Key (%d): %s"
                         % (len(key_errors), describe(key_errors)))
        # A POST without Idempotency-Key may only fail with the replica's own 503, or -- when no
        # replica read it (its kernel acknowledged it and it was stopped before reading) -- with
        # a 502/504 made by nextup, there being no response at all; never replayed either way.
        undelivered = res["not_replica_503_never_delivered"][H.KIND_POST]
        hidden = [m for m in res["not_replica_503"][H.KIND_POST] if m not in undelivered]
        self.assertEqual(hidden[:5], [], "POSTs without Idempotency-Key that a replica read, answered with "
                         "something else than that replica's 503 (%d)" % len(hidden))
        for rid, label, problem in undelivered:
            self.assertIn(label, ("502", "504"), "POST %s, never read by a replica: %s (%s)" % (rid, label, problem))
        if undelivered:
            sys.stderr.write("\n  NOTE: %d POST(s) without Idempotency-Key got nextup's 502/504: no replica read "
                             "them (stopped with them unread); not replayed, as the kernel had acknowledged "
                             "them: %s\n" % (len(undelivered), undelivered[:3]))
        self.assertEqual(res["delivered_to_two_replicas"][H.KIND_POST][:5], [],
                         "POSTs without Idempotency-Key delivered to two replicas")
        self.assertEqual(res["delivered_more_than_once"][H.KIND_POST][:5], [],
                         "POSTs without Idempotency-Key delivered more than once")
        self.assertEqual(res["body_mismatch"][:5], [], "delivered bodies differ from what the client sent")
        self.assertEqual(res["echo_mismatch"][:5], [], "echoed bodies differ from what the client sent")
        self.assertEqual(res["ok_without_delivery"][:5], [], "200s from a replica that did not log the request")
        self.assertEqual(res["unknown_deliveries"], 0)


def MixedLoadForTest(port):
    # 6 threads x 40 requests/s, bounded: at most 1500 requests per thread and 40 s.
    return H.MixedLoad(port, threads=6, rate=40.0, max_per_thread=1500, max_seconds=40.0, tag="rr")


def describe(recs):
    return "; ".join("%s %s -> %s%s" % (r["kind"], r["id"], r["status"] if r["status"] is not None else r["error"],
                                        "" if r["body"] is None else " %r" % r["body"][:80]) for r in recs[:5])


if __name__ == "__main__":
    unittest.main()
