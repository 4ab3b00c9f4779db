"""Connection limits and idle timeouts."""

import time
import unittest

import harness as H


class MaxConnectionsTest(H.NextupCase):

    def test_third_connection_refused(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_MAX_CONNECTIONS": "2"})
        held = []
        for i in range(2):
            c = self.connect(nx)
            c.send(H.request_bytes("GET", "/held/%d" % i))
            self.assertEqual(c.read_response().status, 200, "connection %d under the limit" % i)
            held.append(c)
        time.sleep(0.2)

        third_status = None
        try:
            c3 = self.connect(nx, timeout=3)
            c3.send(H.request_bytes("GET", "/third"))
            r = c3.read_response()
            third_status = r.status
            if r.status == 503:
                self.assertPlainError(r, 503)
        except (H.ConnectionClosed, ConnectionError) as e:
            third_status = "closed (%s)" % e.__class__.__name__
        except TimeoutError:
            third_status = "no answer within 3 s"
        self.assertTrue(third_status == 503 or str(third_status).startswith("closed"),
                        "third connection over NEXTUP_MAX_CONNECTIONS=2 got %r, want 503 or a close"
                        % third_status)

        for i, c in enumerate(held):
            c.send(H.request_bytes("GET", "/again/%d" % i))
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"alpha\n"), "held connection %d after the refusal" % i)

        # Once one is closed, a new connection is accepted again.
        held[0].close()
        deadline = time.monotonic() + 3
        last = None
        while time.monotonic() < deadline:
            try:
                c = self.connect(nx, timeout=2)
                c.send(H.request_bytes("GET", "/later"))
                last = c.read_response().status
                if last == 200:
                    break
            except (H.ConnectionClosed, ConnectionError, TimeoutError) as e:
                last = repr(e)
            time.sleep(0.2)
        self.assertEqual(last, 200, "no new connection accepted after one of two was closed")


class IdleTimeoutTest(H.NextupCase):

    def test_idle_client_connection_closed(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_IDLE_TIMEOUT_MS": "500"})
        c = self.connect(nx)
        c.send(H.request_bytes("GET", "/"))
        self.assertEqual(c.read_response().status, 200)
        t0 = time.monotonic()
        self.assertTrue(c.wait_closed(3), "idle keep-alive connection still open 3 s later "
                        "(NEXTUP_IDLE_TIMEOUT_MS=500)")
        took = time.monotonic() - t0
        self.assertGreater(took, 0.3, "idle connection closed after only %.2f s" % took)


class IdleConnectionMemoryTest(H.NextupCase):
    """3,000 idle keep-alive client connections (each served one request): at most
    2 KiB of nextup's RSS each (nginx: ~0.65 KiB; nextup was 11.3 KiB), a second
    burst of 3,000 reuses that memory instead of adding to it, and once they close
    the RSS goes back to within 1 MiB of where it was."""

    N = 3000

    def burst(self, nx):
        conns = []
        try:
            for i in range(self.N):
                c = self.connect(nx, timeout=10)
                conns.append(c)
                c.send(H.request_bytes("GET", "/idle/%d" % i))
                self.assertEqual(c.read_response().status, 200)
            time.sleep(0.5)
            return H.read_rss_kib(nx.pid)
        finally:
            for c in conns:
                c.close()

    def test_idle_connections_are_small(self):
        b = self.start_backend("alpha")
        nx = self.start_nextup(b, env={"NEXTUP_BPF": "off", "NEXTUP_ACCESS_LOG": "off"})
        for i in range(20):
            self.assertEqual(self.roundtrip(nx, "GET", "/warm/%d" % i).status, 200)
        time.sleep(0.3)
        base = H.read_rss_kib(nx.pid)
        first = self.burst(nx)
        time.sleep(1.0)
        second = self.burst(nx)
        # Back to the system once they are gone (the sweep gives memory back once a second).
        deadline = time.monotonic() + 3
        while H.read_rss_kib(nx.pid) > base + 1024 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = H.read_rss_kib(nx.pid)
        per_conn = (first - base) / self.N
        print("\n  %d idle connections: %.2f KiB each (RSS %d -> %d KiB); second burst %d KiB; after it %d KiB"
              % (self.N, per_conn, base, first, second, after), end=" ")
        self.assertEqual(self.roundtrip(nx, "GET", "/after").status, 200)
        if H.is_sanitized(nx.bin):
            return  # ASan's own bookkeeping makes these figures meaningless; the rest was checked
        self.assertLessEqual(per_conn, 2.0, "idle client connections cost %.2f KiB each" % per_conn)
        self.assertLess(second - first, 1024, "a second burst took new memory instead of reusing it")
        self.assertLess(after - base, 1024, "RSS stayed %d KiB above its level before the bursts" % (after - base))


if __name__ == "__main__":
    unittest.main()
