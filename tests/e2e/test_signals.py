"""Signals as nginx users send them: SIGHUP and SIGUSR1 reopen the logs (log rotation),
SIGUSR2 is ignored (no binary upgrade here), SIGQUIT drains like SIGTERM. None of them
may cost a request."""

import os
import shutil
import signal
import tempfile
import threading
import time
import unittest

import harness as H

SLOW_MS = 40          # the keep-alive load: each request waits this long at the backend
FINAL_MS = 1500       # the requests in flight when SIGQUIT comes
DRAIN_MS = 5000


class KeepAliveLoad:
    """<threads> clients, each on one keep-alive connection, sending GET /slow/SLOW_MS back to
    back until final() is called; then each sends one GET /slow/FINAL_MS, reads its answer and
    stops. A thread that sees a close or an error records it and stops (nothing is retried).
    Bounded: at most <max_per_thread> requests and <max_seconds> per thread."""

    def __init__(self, port, threads=4, max_per_thread=2000, max_seconds=30.0):
        self.port = port
        self.records = []           # (thread, path, status or None, error or None, t_sent, t_done)
        self.lock = threading.Lock()
        self._final = threading.Event()
        self.sent_final = [threading.Event() for _ in range(threads)]
        self.max_per_thread = max_per_thread
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def final(self):
        self._final.set()

    def _one(self, conn, tid, path):
        t_sent = time.monotonic()
        status = err = None
        try:
            conn.send(H.request_bytes("GET", path, host="127.0.0.1:%d" % self.port))
            if path.endswith("/%d" % FINAL_MS):
                self.sent_final[tid].set()
            r = conn.read_response()
            status = r.status
            if r.status == 200 and r.body != b"slow %s\n" % path.rsplit("/", 1)[1].encode():
                err = "200 with body %r" % r.body[:80]
        except (H.ConnectionClosed, OSError, AssertionError) as e:
            err = "%s: %s" % (type(e).__name__, e)
        with self.lock:
            self.records.append((tid, path, status, err, t_sent, time.monotonic()))
        return status == 200 and err is None

    def _run(self, tid):
        conn = None
        try:
            conn = H.RawConn(self.port, timeout=10)
            for _ in range(self.max_per_thread):
                if time.monotonic() > self.deadline:
                    break
                if self._final.is_set():
                    self._one(conn, tid, "/slow/%d" % FINAL_MS)
                    break
                if not self._one(conn, tid, "/slow/%d" % SLOW_MS):
                    break
        except OSError as e:
            with self.lock:
                self.records.append((tid, "connect", None, "%s: %s" % (type(e).__name__, e), 0, 0))
        finally:
            self.sent_final[tid].set()  # never leave the main thread waiting on a dead client
            if conn is not None:
                conn.close()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        return [t for t in self.threads if t.is_alive()]

    def count(self):
        with self.lock:
            return len(self.records)

    def failures(self):
        with self.lock:
            return [r for r in self.records if r[2] != 200 or r[3] is not None]


def log_lines(nx, needle):
    return [l for l in nx.stderr_text().splitlines() if needle in l]


def wait_for(pred, timeout, step=0.05):
    """pred() until true or <timeout> s: the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class SignalsTest(H.NextupCase):

    def test_hup_usr1_usr2_under_load_then_quit_drains(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_DRAIN_TIMEOUT_MS": str(DRAIN_MS), "NEXTUP_LOG_LEVEL": "info",
                                       "NEXTUP_ACCESS_LOG": "off"})
        load = KeepAliveLoad(nx.listen_port).start()
        self.addCleanup(load.join, 5)
        self.addCleanup(load.final)
        time.sleep(0.4)
        seen = {}
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            before = load.count()
            os.kill(nx.pid, sig)
            time.sleep(0.4)
            self.assertIsNone(nx.proc.poll(), "nextup exited with status %s on %s"
                              % (nx.proc.returncode, sig.name))
            seen[sig.name] = load.count() - before
            self.assertFalse(load.failures(), "requests failed around %s: %r" % (sig.name, load.failures()[:5]))
        # Every client is still busy: no connection was dropped by a signal.
        self.assertTrue(all(t.is_alive() for t in load.threads), "a client stopped: %r" % load.failures()[:5])
        for name, n in seen.items():
            self.assertGreater(n, 4, "only %d requests completed in the 0.4 s after %s" % (n, name))
        for name, want in (("SIGHUP", "reopen"), ("SIGUSR1", "reopen"), ("SIGUSR2", "ignored")):
            lines = log_lines(nx, name)
            self.assertEqual(len(lines), 1, "want one log line about %s, got %r" % (name, lines))
            self.assertIn(want, lines[0], lines[0])

        # SIGQUIT with one slow request in flight per client: all of them complete, then exit 0.
        load.final()
        for i, ev in enumerate(load.sent_final):
            self.assertTrue(ev.wait(3), "client %d did not send its last request" % i)
        time.sleep(0.3)  # let nextup read and forward them: they are in flight, not in a socket buffer
        nx.expect_exit = True
        t_sig = time.monotonic()
        os.kill(nx.pid, signal.SIGQUIT)
        alive = load.join(FINAL_MS / 1000.0 + 5)
        self.assertFalse(alive, "%d clients still waiting %.1f s after SIGQUIT" % (len(alive), time.monotonic() - t_sig))
        finals = [r for r in load.records if r[1] == "/slow/%d" % FINAL_MS]
        self.assertEqual(len(finals), len(load.threads), "in-flight requests at SIGQUIT: %r" % finals)
        self.assertFalse(load.failures(), "requests failed: %r" % load.failures()[:5])
        done = max(r[5] for r in finals) - t_sig
        try:
            rc = nx.proc.wait(timeout=DRAIN_MS / 1000.0 + 2)
        except Exception:
            self.fail("nextup still running %.1f s after SIGQUIT" % (time.monotonic() - t_sig))
        took = time.monotonic() - t_sig
        self.assertEqual(rc, 0, "exit status after SIGQUIT: %s" % rc)
        self.assertLess(took, DRAIN_MS / 1000.0, "exit %.2f s after SIGQUIT (drain timeout %d ms)" % (took, DRAIN_MS))
        self.assertEqual(len(log_lines(nx, "SIGQUIT: draining")), 1, nx.stderr_text()[-2000:])
        print("\n  %d requests, all 200; completed in the 0.4 s after each signal: %s; SIGQUIT: %d in flight, "
              "done %.2f s and exit 0 %.2f s after it" % (len(load.records), seen, len(finals), done, took))

    def test_hup_and_usr1_reopen_the_access_log(self):
        b = self.start_backend("alpha")
        d = tempfile.mkdtemp(prefix="nextup-signals-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "info"}, stdout_path=path)

        def get(target):
            r = self.roundtrip(nx, "GET", target)
            self.assertEqual(r.status, 200, "GET %s: %r" % (target, r))

        def text(p):
            try:
                with open(p) as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        get("/before-rotation")
        self.assertTrue(wait_for(lambda: "/before-rotation" in text(path), 3), "no access line in %s" % path)
        rotated = []
        for n, sig in enumerate((signal.SIGHUP, signal.SIGUSR1), 1):
            old = "%s.%d" % (path, n)
            os.rename(path, old)
            rotated.append(old)
            t0 = time.monotonic()
            os.kill(nx.pid, sig)
            line = wait_for(lambda: log_lines(nx, sig.name), 3)
            self.assertTrue(line, "no log line about %s within 3 s; nextup %s" % (
                sig.name, "exited %s" % nx.proc.returncode if nx.proc.poll() is not None else "runs"))
            self.assertIn("reopened", line[0])
            self.assertIn(path, line[0])
            self.assertTrue(os.path.exists(path), "%s not there again after %s" % (path, sig.name))
            target = "/after-%s" % sig.name.lower()
            get(target)
            self.assertTrue(wait_for(lambda: target in text(path), 3),
                            "%s: the line of %s is not in the new %s: %r" % (sig.name, target, path, text(path)))
            self.assertNotIn(target, text(old), "%s: the line of %s went to the rotated file" % (sig.name, target))
            print("\n  %s: new %s in use %.2f s after the signal" % (sig.name, path, time.monotonic() - t0))
        self.assertIn("/before-rotation", text(rotated[0]))

    def test_hup_with_stdout_not_a_file(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "info"}, stdout_path=os.devnull)
        os.kill(nx.pid, signal.SIGHUP)
        line = wait_for(lambda: log_lines(nx, "SIGHUP"), 3)
        self.assertIsNone(nx.proc.poll(), "nextup exited with status %s on SIGHUP" % nx.proc.returncode)
        self.assertTrue(line, "no log line about SIGHUP: %s" % nx.stderr_text()[-1000:])
        # stderr is the harness's file, stdout is /dev/null (not a file): only stderr is reopened.
        self.assertIn("stdout is not a regular file", line[0])
        self.assertEqual(self.roundtrip(nx, "GET", "/after").status, 200)


if __name__ == "__main__":
    unittest.main()
