"""Issue 12: a rolling restart of one service's replicas while the other two take steady load.

Three services behind one nextup, each with its own backend.py replicas on 127.0.0.1: orders (2),
payments (3), inventory (2). Client threads send paced keep-alive GETs to all three (by Host) for the
whole run, which alternates two kinds of phase: A, nothing happens; B, payments' replicas are restarted
one after the other, as a rolling deploy does: its idle keep-alive connections closed (FIN), SIGTERM
(backend.py closes its listener and aborts the connections still open: refusals, then resets), a moment
down, started again on the same port, and once it serves, the next one. A1 B1 A2 B2 in the same run, so
that the p99 of B is compared with the p99 of A under the same machine, nextup and clients.

What is asserted:
- orders and inventory: no error in any phase (MAX_RETRIES=0 for them, so that no retry can hide one),
  every answer from one of their own replicas, nextup's counters for them untouched (no retry, no
  ejection, no failure, one attempt per request), and p99 in B within P99_FACTOR x or P99_SLACK_MS of A,
  plus the noise of that very run: the same load also goes straight to an orders replica, not through
  nextup ("direct"), and its p99 in B over its p99 in A is latency nextup had no part in; or, if more,
  how far the target's own two quiet phases (A1, A2) are apart. On a quiet machine that term is a few ms;
  on a machine shared with other work (load average 6 on 2 cores was seen) phases' p99s range from 4 to
  260 ms and the check is weaker, but a request held up on the restarted service (a 1 s connect timeout)
  still fails it, and the error and counter checks do not depend on the machine at all;
- payments (RETRY_ON connect-failure,refused,reset, MAX_RETRIES 2): no GET gets an error while another
  of its replicas serves (what the retry rules promise for a request the replica never saw, or a reset of
  an idempotent one), every answer from one of its replicas, the restart seen by nextup (failures or
  retries counted), and every replica serving again in A2, after it was restarted in B1.
Every process is stopped by PID (NextupCase cleanups, ReplicaSet.cleanup).
"""

import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SERVICES = ("orders", "payments", "inventory")
RESTARTED = "payments"
REPLICAS = {"orders": 2, "payments": 3, "inventory": 2}
THREADS_PER_SERVICE = 3
RATE = 40.0             # requests/s per client thread: 480 requests/s in all, DIRECT included
DIRECT = "direct"
WARMUP_S = 1.0
A_S = 5.0               # a quiet phase; each later one lasts as long as the restart before it
DOWN_S = 0.4            # a replica stopped (connections refused) this long before it starts again
SETTLE_S = 1.0          # after a replica serves again, before the next one goes
# p99 of B may exceed A's by this much before it counts as added latency. On a 2-core machine the client
# threads, the seven Python replicas and nextup share the CPUs, and each restart starts a Python interpreter
# (~100 ms of CPU) beside them: a few scheduling stalls of some ms move a p99 of ~1000 samples, and a p99 of
# a few ms can double from one noisy slice. What this test is for, another service's requests waiting on the
# restarted one (a connect timeout, a retry backoff, a worker held up), adds 100 ms or more, well past this.
P99_FACTOR = 1.5
P99_SLACK_MS = 20.0


def p99(values):
    v = sorted(values)
    return v[max(0, -(-len(v) * 99 // 100) - 1)] if v else float("nan")


def p50(values):
    v = sorted(values)
    return v[len(v) // 2] if v else float("nan")


class ServiceLoad:
    """<threads> threads per target, each on one keep-alive connection (opened again after a close or an
    error), GET /item/<id> with the target's Host, paced at <rate> requests/s, bounded by <max_per_thread>
    requests and <max_seconds>. <targets>: {label: (port, host)}. Each record is tagged with the phase
    current when the request was sent. .records: dicts (service: the label, phase, dt in s, status,
    backend, error)."""

    def __init__(self, targets, threads, rate, max_per_thread=2000, max_seconds=38.0, timeout=5.0):
        self.targets = targets
        self.services = list(targets)
        self.threads = threads
        self.rate = rate
        self.max_per_thread = max_per_thread
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.phase = "warmup"
        self.records = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        self.deadline = time.monotonic() + self.max_seconds
        for svc in self.services:
            for tid in range(self.threads):
                t = threading.Thread(target=self._run, args=(svc, tid), daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout * 2 + 5)
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError("%d load threads still running after stop" % len(alive))
        return self.records

    def _one(self, conn, svc, tid, i):
        rid = "%s-%d-%d" % (svc, tid, i)
        rec = {"service": svc, "phase": self.phase, "status": None, "backend": None, "error": None}
        t0 = time.monotonic()
        try:
            port, host = self.targets[svc]
            if conn is None:
                conn = H.RawConn(port, timeout=self.timeout)
            conn.send(H.request_bytes("GET", "/item/" + rid, host=host, headers=[("X-Request-Id", rid)]))
            r = conn.read_response("GET")
            rec.update(status=r.status, backend=r.get("x-backend"))
            if r.status != 200:
                rec["error"] = "status %d: %r" % (r.status, r.body[:120])
            if "close" in ",".join(r.get_all("connection")).lower() or r.close_delimited:
                conn.close()
                conn = None
        except (H.ConnectionClosed, OSError, AssertionError) as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            if conn is not None:
                conn.close()
            conn = None
        rec["dt"] = time.monotonic() - t0
        with self.lock:
            self.records.append(rec)
        return conn

    def _run(self, svc, tid):
        interval = 1.0 / self.rate
        # Threads start spread over one interval, not in step.
        first_at = time.monotonic() + interval * (tid + self.services.index(svc) * self.threads) / (
            self.threads * len(self.services))
        state = {"conn": None}

        def step(i):
            state["conn"] = self._one(state["conn"], svc, tid, i)
        try:
            H.paced_loop(step, interval, first_at, self._stop, self.deadline, self.max_per_thread)
        finally:
            if state["conn"] is not None:
                state["conn"].close()


class RollingRestartOfOneServiceTest(H.NextupCase):

    def replica_set(self, svc):
        rs = H.ReplicaSet(REPLICAS[svc], prefix=svc + "-")
        self.addCleanup(self._replicas_cleanup, rs)
        return rs

    def peer_states(self, nx, svc):
        st, body = nx.admin_get("/debug/peers")
        groups = {s["name"]: s for s in json.loads(body)["services"]}
        return " ".join(p["state"] for p in groups[svc]["peers"])

    def restart_one_by_one(self, nx, rs, ev):
        """Each replica of <rs> in turn: idle connections closed, SIGTERM, DOWN_S refused, started again on
        its port, then once it answers directly, SETTLE_S before the next one."""
        for i, name in enumerate(rs.names):
            try:
                H.replica_post(rs[i], "/_control/close-idle", timeout=2)
            except OSError:
                pass
            time.sleep(0.1)
            rs.stop(i)              # SIGTERM: listener closed, open connections aborted
            ev("%s stopped (states %s)" % (name, self.peer_states(nx, RESTARTED)))
            time.sleep(DOWN_S)
            rs.start(i)             # same port; returns once it listens
            deadline = time.monotonic() + 5
            while True:
                try:
                    rs[i].stats()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError("%s restarted but does not answer" % name)
                    time.sleep(0.02)
            ev("%s serves again" % name)
            time.sleep(SETTLE_S)

    def test_rolling_restart_of_one_service_leaves_the_others_alone(self):
        sets = {svc: self.replica_set(svc) for svc in SERVICES}
        env = {"NEXTUP_SERVICES": ",".join(SERVICES)}
        for svc in SERVICES:
            env["NEXTUP_SERVICE_%s_UPSTREAMS" % svc.upper()] = ",".join(sets[svc].addrs)
            if svc != RESTARTED:
                env["NEXTUP_SERVICE_%s_MAX_RETRIES" % svc.upper()] = "0"
        env["NEXTUP_SERVICE_%s_RETRY_ON" % RESTARTED.upper()] = "connect-failure,refused,reset"
        env["NEXTUP_SERVICE_%s_MAX_RETRIES" % RESTARTED.upper()] = "2"
        env["NEXTUP_ACCESS_LOG"] = "off"
        nx = self.start_nextup(None, env=env)

        t0 = time.monotonic()
        events = []

        def ev(text):
            events.append("%5.2f s %s" % (time.monotonic() - t0, text))

        # "direct": the same load straight to orders' first replica, not through nextup: what the machine
        # alone does to latency while replicas restart (printed, not asserted).
        targets = {svc: (nx.listen_port, svc) for svc in SERVICES}
        targets[DIRECT] = (sets["orders"][0].port, sets["orders"][0].addr)
        load = ServiceLoad(targets, THREADS_PER_SERVICE, RATE).start()
        try:
            time.sleep(WARMUP_S)
            quiet = A_S
            for rnd in (1, 2):
                load.phase = "A%d" % rnd
                ev("phase " + load.phase)
                time.sleep(quiet)
                load.phase = "B%d" % rnd
                ev("phase " + load.phase)
                tb = time.monotonic()
                self.restart_one_by_one(nx, sets[RESTARTED], ev)
                quiet = time.monotonic() - tb
            load.phase = "end"
            ev("end")
        finally:
            records = load.stop()
        elapsed = time.monotonic() - t0
        m = H.metrics(nx)

        def recs(svc, phases):
            return [r for r in records if r["service"] == svc and r["phase"] in phases]

        direct_a = p99([r["dt"] * 1000 for r in recs(DIRECT, ("A1", "A2"))])
        direct_b = p99([r["dt"] * 1000 for r in recs(DIRECT, ("B1", "B2"))])
        machine = max(0.0, direct_b - direct_a)
        with open("/proc/loadavg") as f:
            loadavg = " ".join(f.read().split()[:3])
        lines = ["rolling restart of %s, %d requests in %.1f s (%d threads x %.0f/s per target); p99 limit for B: "
                 "max(%.1f x A, A + %.0f ms) + noise: max(%.2f ms the machine added to direct, |A1 - A2|); "
                 "load average %s"
                 % (RESTARTED, len(records), elapsed, THREADS_PER_SERVICE, RATE, P99_FACTOR, P99_SLACK_MS, machine,
                    loadavg)]
        verdicts = {}
        for svc in SERVICES + (DIRECT,):
            cells = []
            for ph in ("A1", "B1", "A2", "B2"):
                rr = recs(svc, (ph,))
                cells.append("%s %d req %d err p99 %.1f" % (ph, len(rr), sum(1 for r in rr if r["error"]),
                                                           p99([r["dt"] for r in rr]) * 1000))
            a = [r["dt"] * 1000 for r in recs(svc, ("A1", "A2"))]
            b = [r["dt"] * 1000 for r in recs(svc, ("B1", "B2"))]
            # The noise allowed for: what the machine added to direct in B, or how far this target's two
            # quiet phases are apart, whichever is more.
            a1, a2 = ([r["dt"] * 1000 for r in recs(svc, (ph,))] for ph in ("A1", "A2"))
            noise = max(machine, abs(p99(a1) - p99(a2)))
            limit = max(P99_FACTOR * p99(a), p99(a) + P99_SLACK_MS) + noise
            verdicts[svc] = (p99(a), p99(b), limit, noise)
            note = {RESTARTED: "restarted, not held to a limit", DIRECT: "orders-0 straight, not through nextup"}
            lines.append("  %-9s A: p50 %.2f p99 %.2f ms | B: p50 %.2f p99 %.2f ms (%s) | %s"
                         % (svc, p50(a), p99(a), p50(b), p99(b), note.get(svc, "limit %.2f, noise %.2f" % (limit, noise)),
                            "; ".join(cells)))
        for svc in SERVICES:
            lines.append("  nextup %-9s requests %d attempts %d retries %s ejections %d failures %s" % (
                svc, H.metric(m, "nextup_service_requests_total", service=svc),
                H.metric(m, "nextup_service_attempts_total", service=svc),
                " ".join("%s:%d" % (r, H.metric(m, "nextup_service_retries_total", service=svc, reason=r))
                         for r in H.RETRY_REASONS),
                H.metric(m, "nextup_service_ejections_total", service=svc), self.failures(m, svc)))
        lines.append("  schedule: " + "; ".join(events))
        print("\n" + "\n".join(lines))

        for svc in SERVICES:
            rr = recs(svc, ("A1", "B1", "A2", "B2"))
            self.assertGreaterEqual(len(rr), 4 * A_S * THREADS_PER_SERVICE * RATE * 0.6,
                                    "%s: too few requests to mean much (%d)" % (svc, len(rr)))
            errors = [r for r in records if r["service"] == svc and r["error"]]
            self.assertEqual(len(errors), 0, "%s: %d client-visible errors: %s" % (svc, len(errors), errors[:3]))
            strays = [r for r in records if r["service"] == svc and r["status"] == 200
                      and not (r["backend"] or "").startswith(svc + "-")]
            self.assertEqual(len(strays), 0, "%s: %d answers from a replica of another service: %s"
                             % (svc, len(strays), strays[:3]))
        for svc in SERVICES:
            if svc == RESTARTED:
                continue
            a99, b99, limit, noise = verdicts[svc]
            self.assertLessEqual(b99, limit, "%s: p99 %.2f ms during %s's restarts, %.2f ms without (limit "
                                 "%.2f ms, of which %.2f ms noise)" % (svc, b99, RESTARTED, a99, limit, noise))
            # Untouched inside nextup too: one attempt per request, no retry, no failure, no ejection.
            self.assertEqual(H.metric(m, "nextup_service_attempts_total", service=svc),
                             H.metric(m, "nextup_service_requests_total", service=svc), svc)
            self.assertEqual(H.metric(m, "nextup_service_ejections_total", service=svc), 0, svc)
            self.assertEqual(self.failures(m, svc), {}, svc)
        # The restarts bit: nextup saw payments' replicas go (failures, retries or ejections) ...
        seen = (sum(self.failures(m, RESTARTED).values())
                + sum(H.metric(m, "nextup_service_retries_total", service=RESTARTED, reason=r)
                      for r in H.RETRY_REASONS)
                + H.metric(m, "nextup_service_ejections_total", service=RESTARTED))
        self.assertGreater(seen, 0, "nextup never noticed a %s replica going: the schedule did not bite" % RESTARTED)
        # ... and took each back: every replica restarted in B1 answers in A2.
        back = {r["backend"] for r in recs(RESTARTED, ("A2",)) if r["status"] == 200}
        self.assertEqual(back, set(sets[RESTARTED].names), "replicas answering in A2")

    @staticmethod
    def failures(m, svc):
        """{class: n} of the nonzero nextup_peer_failures_total of <svc>'s peers, summed over its peers."""
        out = {}
        for k, v in m.items():
            if k.startswith("nextup_peer_failures_total{") and ('service="%s"' % svc) in k and v:
                cls = k.split('class="', 1)[1].split('"', 1)[0]
                out[cls] = out.get(cls, 0) + int(v)
        return out


if __name__ == "__main__":
    unittest.main()
