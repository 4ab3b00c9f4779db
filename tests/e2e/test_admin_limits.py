"""The admin listener in a hostile network: the manifests bind it to 0.0.0.0:15000 for
the kubelet, under a 128 MiB limit. A body, an endless head, a slow client or a crowd
of connections must cost nextup neither memory nor CPU; /debug/* answers only on
loopback unless NEXTUP_ADMIN_DEBUG_FROM=any."""

import ctypes
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness as H

ADMIN_MAX_CONNECTIONS = 64      # sidecar/admin.c
ADMIN_TIMEOUT_S = 10            # sidecar/admin.c: a whole request within this, and no longer idle
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def cpu_seconds(pid):
    """utime + stime of <pid> (all its threads), from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def admin_metric(nx, name):
    st, body = nx.admin_get("/metrics")
    if st != 200:
        raise AssertionError("/metrics answered %d" % st)
    return H.metric(H.parse_metrics(body.decode()), name)


def wait_metric(nx, name, want, timeout=3.0, refused_polls=None):
    """Polls /metrics until <name> == <want> (the poll's own connection counts as one).
    Closes are seen by nextup a moment after the client makes them: until then a poll
    can itself be over the cap and closed, which is retried (and counted in <refused_polls>)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = admin_metric(nx, name)
        except (OSError, http.client.HTTPException) as e:
            v = "poll refused (%s)" % type(e).__name__
            if refused_polls is not None:
                refused_polls.append(v)
        if v == want or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


class Streamer(threading.Thread):
    """Sends <head>, then <piece> again and again on <conn> until the peer stops taking
    bytes (an error), <limit> bytes were sent or <seconds> passed."""

    def __init__(self, conn, head, piece, limit, seconds):
        super().__init__(daemon=True)
        self.conn, self.head, self.piece, self.limit, self.seconds = conn, head, piece, limit, seconds
        self.sent = 0
        self.error = None
        self.t_end = None

    def run(self):
        t0 = time.monotonic()
        try:
            self.conn.send(self.head)
            while self.sent < self.limit and time.monotonic() - t0 < self.seconds:
                self.conn.send(self.piece)
                self.sent += len(self.piece)
        except OSError as e:  # refused: reset or broken pipe (a timeout, too, is an error here)
            self.error = "%s: %s" % (type(e).__name__, e)
        self.t_end = time.monotonic()


def read_status(conn, timeout):
    """The status of the one response <conn> gets within <timeout> s, or how it ended."""
    conn.settimeout(timeout)
    try:
        return conn.read_response().status
    except H.ConnectionClosed:
        return "closed"
    except ConnectionError as e:
        return "closed (%s)" % type(e).__name__
    except socket.timeout:
        return "no answer"


class AdminLimitsTest(H.NextupCase):

    def setUp(self):
        self.b = self.start_backend("alpha")
        self.nx = self.start_nextup(self.b, workers=1, env={"NEXTUP_BPF": "off"})

    def raw(self, timeout=5.0):
        c = H.RawConn(self.nx.admin_port, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def test_big_bodies_refused_without_memory(self):
        nx = self.nx
        for _ in range(3):
            self.assertEqual(nx.admin_get("/metrics")[0], 200)
        sanitized = H.is_sanitized(nx.bin)
        limit_kib = (8 if sanitized else 2) * 1024
        total = 50 * H.MIB
        piece = b"x" * 65536
        chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
        report = []
        for kind, head, p in (
                ("Content-Length", b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total, piece),
                ("chunked", b"POST /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", chunk)):
            rss0 = H.read_rss_kib(nx.pid)
            sampler = H.RssSampler(nx.pid, interval=0.02).start()
            c = self.raw(timeout=3)
            t0 = time.monotonic()
            s = Streamer(c, head, p, total, 10)
            s.start()
            status = read_status(c, 5)
            s.join(12)
            sampler.stop()
            self.assertFalse(s.is_alive(), "%s: the sender is still running" % kind)
            grew = sampler.max_kib - rss0
            took = s.t_end - t0
            report.append("%s: %s, sender stopped after %.1f MiB in %.2f s (%s), RSS +%d KiB"
                          % (kind, status, s.sent / H.MIB, took, s.error, grew))
            self.assertIn(status, (413, "closed", "closed (ConnectionResetError)"),
                          "%s: a 50 MiB POST to /metrics got %r" % (kind, status))
            self.assertIsNotNone(s.error, "%s: nextup took the whole 50 MiB body (%s)" % (kind, report[-1]))
            self.assertLess(took, 3.0, "%s: refused only after %.2f s" % (kind, took))
            self.assertLess(grew, limit_kib, "%s: nextup's RSS grew by %d KiB (from %d KiB)" % (kind, grew, rss0))
        self.assertEqual(nx.admin_get("/healthz")[0], 200)
        print("\n  " + "\n  ".join(report))

    def test_methods_and_small_bodies(self):
        c = self.raw()
        c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(read_status(c, 3), 413, "GET /healthz with a 5-byte body")
        for method in ("POST", "PUT", "DELETE"):
            c = self.raw()
            c.send(b"%s /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % method.encode())
            st = read_status(c, 3)
            self.assertIn(st, (405, 501), "%s /healthz answered %r" % (method, st))
        c = self.raw()
        c.send(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(c.read_response("HEAD").status, 200)

    def test_endless_head_cut_off_cheaply(self):
        nx = self.nx
        c = self.raw(timeout=0.5)
        cpu0, t0 = cpu_seconds(nx.pid), time.monotonic()
        s = Streamer(c, b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Endless: ", b"a" * 16384, 1 << 40, 3.0)
        s.start()
        s.join(5)
        self.assertFalse(s.is_alive())
        rest = 3.0 - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)  # the whole 3 s window is measured, cut off or not
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(nx.pid) - cpu0) / elapsed * 100
        cut = s.t_end - t0
        print("\n  endless head: cut off after %.2f s and %d KiB (%s); nextup CPU %.1f%% of a core over %.1f s"
              % (cut, s.sent // 1024, s.error, cpu, elapsed))
        self.assertIsNotNone(s.error, "an endless head was still taken after 3 s (%d MiB)" % (s.sent // H.MIB))
        self.assertLess(cut, 2.0, "cut off only after %.2f s" % cut)
        self.assertLess(cpu, 20.0, "nextup used %.1f%% of a core while a client streamed a head" % cpu)
        self.assertEqual(nx.admin_get("/healthz")[0], 200)

    def test_slowloris_closed_within_the_timeout(self):
        nx = self.nx
        c = self.raw()
        cpu0, t0 = cpu_seconds(nx.pid), time.monotonic()
        c.send(b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        closed_at = None
        sent = 0
        for i in range(ADMIN_TIMEOUT_S + 4):  # one byte a second
            try:
                c.send(b"a")
                sent += 1
            except OSError:
                closed_at = time.monotonic() - t0
                break
            if c.wait_closed(max(0.0, t0 + i + 1 - time.monotonic())):
                closed_at = time.monotonic() - t0
                break
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(nx.pid) - cpu0) / elapsed * 100
        print("\n  slowloris: %s after %d bytes; nextup CPU %.2f%% of a core over %.1f s"
              % ("closed %.1f s after connecting" % closed_at if closed_at else "still open", sent, cpu, elapsed))
        self.assertIsNotNone(closed_at, "a client sending one header byte a second still held its admin "
                                        "connection after %.0f s" % elapsed)
        self.assertLess(closed_at, ADMIN_TIMEOUT_S + 1.5, "closed only %.1f s after connecting" % closed_at)
        self.assertLess(cpu, 5.0, "nextup used %.1f%% of a core on a slowloris" % cpu)
        self.assertEqual(wait_metric(nx, "nextup_admin_connections", 1), 1)

    def test_connections_above_the_cap_refused(self):
        nx = self.nx

        def fill():
            held = [self.raw() for _ in range(ADMIN_MAX_CONNECTIONS)]
            time.sleep(0.2)
            for i, c in enumerate(held):
                self.assertFalse(c.wait_closed(0), "held connection %d was closed" % i)
            return held

        def over_cap():
            extra = self.raw(timeout=2)
            try:
                extra.send(H.request_bytes("GET", "/healthz"))
            except OSError:
                return "closed"
            return read_status(extra, 2)

        held = fill()
        for _ in range(3):
            st = over_cap()
            self.assertNotEqual(st, 200, "connection %d over the cap of %d answered 200"
                                % (ADMIN_MAX_CONNECTIONS + 1, ADMIN_MAX_CONNECTIONS))
            self.assertTrue(str(st).startswith("closed"), "over the cap: %r, want a close" % st)
        # The ones inside keep working, on keep-alive.
        for c in held[:3] + held[-3:]:
            for path in ("/healthz", "/metrics"):
                c.send(H.request_bytes("GET", path))
                self.assertEqual(c.read_response().status, 200)
        # One closed: one new comes in.
        held.pop().close()
        time.sleep(0.2)
        c = self.raw()
        c.send(H.request_bytes("GET", "/healthz"))
        self.assertEqual(c.read_response().status, 200, "a slot freed by a close was not reused")
        self.assertNotEqual(over_cap(), 200)
        for x in held + [c]:
            x.close()
        polls = []
        self.assertEqual(wait_metric(nx, "nextup_admin_connections", 1, refused_polls=polls), 1,
                         "connections not counted down")
        refused = admin_metric(nx, "nextup_admin_connections_refused_total")
        self.assertEqual(refused, 4 + len(polls), "refused connections counted: %s (4 over the cap, %d polls "
                         "made before the closes were seen)" % (refused, len(polls)))

        # Every way a connection ends gives its slot back: then the cap holds exactly again.
        for i in range(2 * ADMIN_MAX_CONNECTIONS):
            c = H.RawConn(nx.admin_port, timeout=3)
            try:
                kind = i % 4
                if kind == 0:
                    c.send(H.request_bytes("GET", "/healthz", headers=[("Connection", "close")]))
                    self.assertEqual(c.read_response().status, 200)
                elif kind == 1:
                    c.send(b"GARBAGE\r\n\r\n")
                    self.assertEqual(read_status(c, 3), 400)
                elif kind == 2:
                    c.send(b"GET /heal")  # half a head, then gone
                else:
                    c.send(b"GET /metrics HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
                    self.assertEqual(read_status(c, 3), 413)
            finally:
                c.close()
        self.assertEqual(wait_metric(nx, "nextup_admin_connections", 1), 1, "connections not counted down")
        held = fill()
        self.assertNotEqual(over_cap(), 200)
        for c in held:
            c.close()
        print("\n  cap %d: the %dth connection closed at once, the ones inside answered; "
              "count back to 1 after %d connections ended in 4 ways"
              % (ADMIN_MAX_CONNECTIONS, ADMIN_MAX_CONNECTIONS + 1, 2 * ADMIN_MAX_CONNECTIONS))

    def test_bad_debug_from_value(self):
        env = H.base_env()
        env.update({"NEXTUP_UPSTREAMS": "127.0.0.1:1", "NEXTUP_ADMIN_DEBUG_FROM": "everyone"})
        r = subprocess.run([self.nx.bin], env=env, capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('NEXTUP_ADMIN_DEBUG_FROM="everyone"', lines[0])
        self.assertIn("loopback", lines[0])


def _in_netns(ns, fn):
    """fn() run in a thread that joined network namespace <ns> (sockets made there stay there)."""
    out = {}

    def run():
        try:
            fd = os.open("/var/run/netns/%s" % ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into %s" % ns)
            finally:
                os.close(fd)
            out["v"] = fn()
        except Exception as e:  # re-raised in the caller
            out["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(15)
    if t.is_alive():
        raise AssertionError("a thread in netns %s did not finish in 15 s" % ns)
    if "e" in out:
        raise out["e"]
    return out["v"]


def get_from(ns, host, port, path, timeout=3.0, method="GET"):
    """(status, body) of <method> <path> to host:port, from inside <ns>."""
    def go():
        s = socket.create_connection((host, port), timeout=timeout)
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.sock = s
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()
    return _in_netns(ns, go)


class AdminDebugFromTest(H.NextupCase):
    """nextup in a namespace of its own with NEXTUP_ADMIN=0.0.0.0:15000 as the manifests
    set it; the "kubelet" in a second namespace, joined by a veth pair (10.217.1.1 and .2).
    Nothing of it touches the host's network."""

    PORT = 15000

    def setUp(self):
        pid = os.getpid() % 100000
        self.srv, self.cli = "nxadm-s-%d" % pid, "nxadm-c-%d" % pid
        for ns in (self.srv, self.cli):
            H.ip("netns", "del", ns, check=False)
            H.ip("netns", "add", ns)
            self.addCleanup(H.ip, "netns", "del", ns, check=False)
            H.ip("-n", ns, "link", "set", "lo", "up")
        a, b = "nxas%d" % pid, "nxac%d" % pid
        H.ip("link", "add", a, "netns", self.srv, "type", "veth", "peer", "name", b, "netns", self.cli)
        H.ip("-n", self.srv, "addr", "add", "10.217.1.1/24", "dev", a)
        H.ip("-n", self.srv, "link", "set", a, "up")
        H.ip("-n", self.cli, "addr", "add", "10.217.1.2/24", "dev", b)
        H.ip("-n", self.cli, "link", "set", b, "up")

    def start_in_ns(self, extra_env):
        env = H.base_env()
        env.update({"NEXTUP_LISTEN": "127.0.0.1:15001", "NEXTUP_ADMIN": "0.0.0.0:%d" % self.PORT,
                    "NEXTUP_UPSTREAMS": "127.0.0.1:8080", "NEXTUP_BPF": "off", "NEXTUP_WORKERS": "1",
                    "NEXTUP_LOG_LEVEL": "warn", "NEXTUP_DRAIN_TIMEOUT_MS": "1000"})
        env.update(extra_env)
        err = tempfile.NamedTemporaryFile(prefix="nextup-adminns-", suffix=".err", delete=False)
        self.addCleanup(os.unlink, err.name)
        # `ip netns exec` execs nextup: the PID is nextup's.
        p = subprocess.Popen(["ip", "netns", "exec", self.srv, H.nextup_bin()], env=env, stdin=subprocess.DEVNULL,
                             stdout=err, stderr=err)
        err.close()
        self.addCleanup(self._stop, p, err.name)
        deadline = time.monotonic() + 10
        while True:
            try:
                if get_from(self.srv, "127.0.0.1", self.PORT, "/healthz", timeout=1)[0] == 200:
                    return p
            except OSError:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                with open(err.name) as f:
                    raise AssertionError("nextup in %s not up (status %s): %s" % (self.srv, p.poll(), f.read()))
            time.sleep(0.05)

    def _stop(self, p, errname):
        rc = H.stop_pid(p)
        with open(errname, errors="replace") as f:
            text = f.read()
        if not self._ok() or any(m in text for m in H.SANITIZER_MARKERS):
            sys.stderr.write("\n----- nextup stderr (pid %d, exit %s) -----\n%s\n" % (p.pid, rc, text))
        for m in H.SANITIZER_MARKERS:
            self.assertNotIn(m, text)

    def test_debug_only_from_loopback(self):
        self.start_in_ns({})
        remote = {path: get_from(self.cli, "10.217.1.1", self.PORT, path)
                  for path in ("/healthz", "/readyz", "/metrics", "/debug/peers", "/debug/other")}
        self.assertEqual(remote["/healthz"][0], 200)
        self.assertIn(remote["/readyz"][0], (200, 503))
        self.assertEqual(remote["/metrics"][0], 200)
        self.assertIn(b"nextup_downstream_requests_total", remote["/metrics"][1])
        for path in ("/debug/peers", "/debug/other"):
            st, body = remote[path]
            self.assertEqual(st, 403, "%s from 10.217.1.2 answered %d: %r" % (path, st, body[:200]))
            self.assertEqual(body.count(b"\n"), 1, "want a one-line reason, got %r" % body)
            self.assertIn(b"loopback", body)
            self.assertIn(b"NEXTUP_ADMIN_DEBUG_FROM", body)
        st, body = get_from(self.srv, "127.0.0.1", self.PORT, "/debug/peers")
        self.assertEqual(st, 200, "/debug/peers from loopback: %d %r" % (st, body[:200]))
        self.assertIn("127.0.0.1:8080", json.dumps(json.loads(body)))
        print("\n  from 10.217.1.2: %s; from 127.0.0.1: /debug/peers 200"
              % ", ".join("%s %d" % (p, v[0]) for p, v in remote.items()))

    def test_logging_only_from_loopback(self):
        # Changing the log level is not for the pod network (the kubelet reaches the admin port).
        self.start_in_ns({})
        for method, path in (("POST", "/logging?level=debug"), ("GET", "/logging")):
            st, body = get_from(self.cli, "10.217.1.1", self.PORT, path, method=method)
            self.assertEqual(st, 403, "%s %s from 10.217.1.2 answered %d: %r" % (method, path, st, body[:200]))
            self.assertIn(b"loopback", body)
        self.assertEqual(get_from(self.srv, "127.0.0.1", self.PORT, "/logging"), (200, b"level=warn\n"))
        self.assertEqual(get_from(self.srv, "127.0.0.1", self.PORT, "/logging?level=info", method="POST"),
                         (200, b"level=info\n"))

    def test_debug_from_any(self):
        self.start_in_ns({"NEXTUP_ADMIN_DEBUG_FROM": "any"})
        st, body = get_from(self.cli, "10.217.1.1", self.PORT, "/debug/peers")
        self.assertEqual(st, 200, "/debug/peers with NEXTUP_ADMIN_DEBUG_FROM=any: %d %r" % (st, body[:200]))
        json.loads(body)


if __name__ == "__main__":
    unittest.main()
