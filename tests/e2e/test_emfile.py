"""Out of file descriptors (issue 10): with RLIMIT_NOFILE at 64 and 150 clients, accept()
fails with EMFILE while the kernel still holds connections in the backlog. nextup must
stop asking for a moment instead of spinning on a level-triggered listener (both workers
at ~150% CPU, 8 MB/s of libevent warnings on stderr), keep serving the connections it
already has, and serve fully again once the clients leave."""

import http.client
import os
import resource
import signal
import socket
import subprocess
import time
import unittest

import harness as H

NOFILE = 64
CLIENTS = 150
HOLD_S = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of every thread of <pid> so far, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class OutOfDescriptorsTest(H.NextupCase):

    def saturate(self, nx):
        """Lowers nextup's RLIMIT_NOFILE and connects CLIENTS clients (closed at cleanup);
        returns once nextup holds every descriptor it may."""
        # Lowered on the running process (prlimit(2)): the harness starts nextup itself,
        # and it needs only ~20 descriptors of its own before the first client.
        resource.prlimit(nx.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        self.assertEqual(resource.prlimit(nx.pid, resource.RLIMIT_NOFILE), (NOFILE, NOFILE))
        clients = []

        def close_clients():
            while clients:
                clients.pop().close()
        self.addCleanup(close_clients)
        deadline = time.monotonic() + 5
        connect_errors = []
        for _ in range(CLIENTS):
            if time.monotonic() > deadline:
                break
            try:
                clients.append(socket.create_connection(("127.0.0.1", nx.listen_port), timeout=2))
            except OSError as e:
                connect_errors.append(repr(e))
        # Connects complete in the kernel backlog whether or not nextup accepts them.
        self.assertEqual(len(clients), CLIENTS, "only %d of %d clients connected (%s)"
                         % (len(clients), CLIENTS, connect_errors[:3]))
        deadline = time.monotonic() + 3
        while open_fds(nx.pid) < NOFILE and time.monotonic() < deadline:
            time.sleep(0.05)
        fds = open_fds(nx.pid)
        self.assertGreaterEqual(fds, NOFILE - 2, "nextup holds only %d descriptors: not saturated" % fds)
        return close_clients

    def test_accept_backs_off_when_out_of_descriptors(self):
        b = self.start_backend("alpha")
        # The access log (stdout, which the harness puts in the same file as stderr) would add a
        # line per keep-alive request: what is measured here is what nextup says about accept().
        nx = self.start_nextup(b, workers=2, env={"NEXTUP_ACCESS_LOG": "off"})
        # Opened before the saturation; its pooled upstream connection serves it throughout.
        ka = self.connect(nx, timeout=3)
        ka.send(H.request_bytes("GET", "/ka/0"))
        self.assertEqual(ka.read_response().status, 200)

        close_clients = self.saturate(nx)

        err_path = nx.stderr.name
        t0, cpu0, err0 = time.monotonic(), cpu_seconds(nx.pid), os.path.getsize(err_path)
        ka_statuses = []
        i = 0
        while time.monotonic() - t0 < HOLD_S and i < 100:
            i += 1
            try:
                ka.send(H.request_bytes("GET", "/ka/%d" % i))
                ka_statuses.append(ka.read_response().status)
            except (OSError, H.ConnectionClosed) as e:
                ka_statuses.append(repr(e))
                break
            time.sleep(0.1)
        t1, cpu1, err1 = time.monotonic(), cpu_seconds(nx.pid), os.path.getsize(err_path)
        elapsed = t1 - t0
        cpu_pct = 100.0 * (cpu1 - cpu0) / elapsed
        err_rate = (err1 - err0) / elapsed
        print("\n  %d clients, RLIMIT_NOFILE %d, saturated for %.1f s: nextup CPU %.1f%% of one core, "
              "stderr %.0f B/s, %d keep-alive requests during it"
              % (CLIENTS, NOFILE, elapsed, cpu_pct, err_rate, len(ka_statuses)))

        self.assertLess(cpu_pct, 5.0, "nextup used %.1f%% of a core while out of descriptors" % cpu_pct)
        self.assertLess(err_rate, 1024, "nextup wrote %.0f B/s to stderr while out of descriptors" % err_rate)
        self.assertGreaterEqual(len(ka_statuses), 10)
        self.assertEqual(ka_statuses, [200] * len(ka_statuses),
                         "the keep-alive connection opened before the saturation was not served during it")
        self.assertTrue("Too many open files" in nx.stderr_text(), "the accept failure was not logged")

        close_clients()
        # The backlog drains (accept, EOF, close) once the clients are gone.
        deadline = time.monotonic() + 5
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.roundtrip(nx, "GET", "/settle").status
                if last == 200:
                    break
            except (OSError, H.ConnectionClosed) as e:
                last = repr(e)
            time.sleep(0.1)
        self.assertEqual(last, 200, "no service within 5 s of the clients leaving")
        statuses = []
        for i in range(50):
            try:
                statuses.append(self.roundtrip(nx, "GET", "/after/%d" % i).status)
            except (OSError, H.ConnectionClosed) as e:
                statuses.append(repr(e))
        self.assertEqual(statuses, [200] * 50, "requests after the saturation")

        errors = H.metric(H.metrics(nx), "nextup_downstream_accept_errors_total")
        self.assertGreater(errors, 0, "accept failures not counted")

    def test_admin_accept_backs_off_when_out_of_descriptors(self):
        # The admin listener is evhttp's own evconnlistener on the main thread: one connection
        # waiting in its backlog sent the old binary to ~100% of a core and ~10 MB/s of
        # libevent's "Error from accept() call", the worker listeners being paused meanwhile.
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, workers=2, env={"NEXTUP_ACCESS_LOG": "off"})
        close_clients = self.saturate(nx)
        # Completes in the kernel backlog; its request waits in the socket buffer until nextup
        # can accept it.
        probe = socket.create_connection(("127.0.0.1", nx.admin_port), timeout=2)
        self.addCleanup(probe.close)
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        time.sleep(0.2)

        err_path = nx.stderr.name
        t0, cpu0, err0 = time.monotonic(), cpu_seconds(nx.pid), os.path.getsize(err_path)
        time.sleep(2.5)
        t1, cpu1, err1 = time.monotonic(), cpu_seconds(nx.pid), os.path.getsize(err_path)
        elapsed = t1 - t0
        cpu_pct = 100.0 * (cpu1 - cpu0) / elapsed
        err_rate = (err1 - err0) / elapsed
        print("\n  %d clients, RLIMIT_NOFILE %d, one admin connection pending for %.1f s: nextup CPU %.1f%% "
              "of one core, stderr %.0f B/s" % (CLIENTS, NOFILE, elapsed, cpu_pct, err_rate))
        self.assertLess(cpu_pct, 5.0, "nextup used %.1f%% of a core with an admin connection pending" % cpu_pct)
        self.assertLess(err_rate, 1024, "nextup wrote %.0f B/s to stderr with an admin connection pending"
                        % err_rate)
        # assertTrue, not assertIn: the old binary's stderr is megabytes of warnings.
        self.assertTrue("(admin): not accepting for" in nx.stderr_text(), "no admin accept pause logged")

        close_clients()
        # The pending connection is accepted once descriptors are free again, and answered.
        probe.settimeout(5)
        reply = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(reply) < 65536:
            try:
                chunk = probe.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), "pending admin request got %r" % reply[:80])
        last = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                last = nx.admin_get("/healthz", timeout=1.0)[0]
                if last == 200:
                    break
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.1)
        self.assertEqual(last, 200, "/healthz on the admin port after the clients left")

    def test_drain_while_accepting_is_paused(self):
        # SIGTERM frees the listeners while their resume timers are pending: the timer
        # must not touch a freed listener (the ASan build tells), and the drain ends.
        # The admin listener's timer too: one connection waits in its backlog.
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, workers=2, env={"NEXTUP_ACCESS_LOG": "off"})
        self.saturate(nx)
        probe = socket.create_connection(("127.0.0.1", nx.admin_port), timeout=2)
        self.addCleanup(probe.close)
        time.sleep(0.5)
        # assertTrue, not assertIn: the old binary's stderr is megabytes of warnings.
        self.assertTrue("not accepting for" in nx.stderr_text(), "no accept pause logged")
        nx.expect_exit = True
        t0 = time.monotonic()
        os.kill(nx.pid, signal.SIGTERM)
        try:
            rc = nx.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.fail("nextup still running 8 s after SIGTERM while out of descriptors")
        self.assertEqual(rc, 0, "exit status after the drain")
        self.assertLess(time.monotonic() - t0, 5, "drain took longer than NEXTUP_DRAIN_TIMEOUT_MS (3 s)")


if __name__ == "__main__":
    unittest.main()
