"""Graceful shutdown: drain on SIGTERM / SIGINT."""

import http.client
import os
import signal
import socket
import threading
import time
import unittest

import harness as H


class ShutdownTest(H.NextupCase):

    def _inflight(self, nx, target):
        """Starts GET <target> in a thread; returns (thread, result dict)."""
        res = {}
        started = threading.Event()

        def run():
            try:
                c = H.RawConn(nx.listen_port, timeout=15)
                try:
                    c.send(H.request_bytes("GET", target))
                    started.set()
                    r = c.read_response()
                    res["status"], res["body"] = r.status, r.body
                finally:
                    c.close()
            except Exception as e:  # reported by the test
                res["error"] = repr(e)
            finally:
                started.set()
                res["done"] = time.monotonic()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.assertTrue(started.wait(5), "in-flight request not started")
        return t, res

    def _drain(self, sig):
        b = self.start_backend("alpha")
        drain_ms = 5000
        nx = self.start_nextup(b, env={"NEXTUP_DRAIN_TIMEOUT_MS": str(drain_ms)})
        t, res = self._inflight(nx, "/slow/1500")
        time.sleep(0.2)
        nx.expect_exit = True
        t_sig = time.monotonic()
        os.kill(nx.pid, sig)
        time.sleep(0.1)

        # /readyz: 503 (or refused) while draining.
        ready = []
        for _ in range(3):
            try:
                ready.append(nx.admin_get("/readyz", timeout=1)[0])
            except (OSError, http.client.HTTPException) as e:
                ready.append("refused/closed: %s" % e.__class__.__name__)
            time.sleep(0.1)
        self.assertNotIn(200, ready, "/readyz during drain answered %r" % ready)
        self.assertTrue(all(x == 503 or isinstance(x, str) for x in ready), "/readyz during drain: %r" % ready)

        # New connections are refused.
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", nx.listen_port))
            new_conn = "accepted"
            try:
                s.sendall(H.request_bytes("GET", "/new"))
                data = s.recv(100)
                new_conn = "accepted, answered %r" % data[:40] if data else "accepted, then closed"
            except OSError as e:
                new_conn = "accepted, then %s" % e.__class__.__name__
        except ConnectionRefusedError:
            new_conn = "refused"
        except OSError as e:
            new_conn = "error %r" % e
        finally:
            s.close()
        self.assertEqual(new_conn, "refused", "a new connection after the signal was %s" % new_conn)

        # The in-flight request completes.
        t.join(timeout=10)
        self.assertFalse(t.is_alive(), "in-flight request still running 10 s after the signal")
        self.assertNotIn("error", res, "in-flight request failed: %s" % res.get("error"))
        self.assertEqual((res.get("status"), res.get("body")), (200, b"slow 1500\n"))

        # nextup exits 0 within the drain timeout.
        try:
            rc = nx.proc.wait(timeout=drain_ms / 1000.0 + 2)
        except Exception:
            self.fail("nextup still running %.1f s after the signal" % (time.monotonic() - t_sig))
        took = time.monotonic() - t_sig
        self.assertEqual(rc, 0, "exit status after %s: %s" % (signal.Signals(sig).name, rc))
        self.assertLess(took, drain_ms / 1000.0, "exit %.2f s after the signal (drain timeout %d ms)" % (took, drain_ms))
        print("\n  %s: in-flight done %.2f s, exit %.2f s after the signal"
              % (signal.Signals(sig).name, res["done"] - t_sig, took))

    def test_sigterm_drains(self):
        self._drain(signal.SIGTERM)

    def test_sigint_drains(self):
        self._drain(signal.SIGINT)

    def test_drain_timeout_bounds_exit(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_DRAIN_TIMEOUT_MS": "1000"})
        t, res = self._inflight(nx, "/slow/10000")
        time.sleep(0.2)
        nx.expect_exit = True
        t_sig = time.monotonic()
        os.kill(nx.pid, signal.SIGTERM)
        try:
            rc = nx.proc.wait(timeout=4)
        except Exception:
            self.fail("nextup still running 4 s after SIGTERM with NEXTUP_DRAIN_TIMEOUT_MS=1000")
        took = time.monotonic() - t_sig
        self.assertLess(took, 2.0, "exit %.2f s after SIGTERM with a 1000 ms drain timeout" % took)
        t.join(timeout=5)
        self.assertNotEqual(res.get("status"), 200, "a /slow/10000 answer cannot have completed")
        print("\n  drain timeout 1000 ms: exit status %s after %.2f s" % (rc, took))


if __name__ == "__main__":
    unittest.main()
