"""A bounded soak: keep-alive and new connections, HTTP/1.1 and 1.0 clients,
responses framed by length, chunks and the close, replicas answering 503 or
resetting now and then. Every body reaches its own client, and once the clients
leave, nextup's open fds and RSS are back where they started."""

import random
import socket
import struct
import threading
import time
import unittest

import harness as H


class MixedReplica(H.ThreadedRawServer):
    """Keep-alive replica; the path says how to answer: /cl/T, /chunk/T, /close/T
    (no length, then close), /503/T, /reset/T (read, then RST). The body names T."""

    def handle(self, conn):
        buf = b""
        while True:
            got = H.read_keepalive_request(conn, buf)
            if got is None:
                return
            head, _, buf = got
            kind, _, tag = head.split(b" ", 2)[1].lstrip(b"/").partition(b"/")
            body = b"for " + tag + b" " + b"x" * (len(tag) * 37 % 3000)
            try:
                if kind == b"cl":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                elif kind == b"chunk":
                    half = len(body) // 2
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                                 % (half, body[:half], len(body) - half, body[half:]))
                elif kind == b"close":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                    return
                elif kind == b"503":
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                else:  # reset
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
            except OSError:
                return


class SoakTest(H.NextupCase):

    SECONDS = 15
    CLIENTS = 8

    def load(self, nx, seconds, problems, counts):
        kinds = ["cl"] * 5 + ["chunk"] * 3 + ["close"] * 2 + ["503", "reset"]

        def client(k):
            rnd = random.Random(k)
            deadline = time.monotonic() + seconds
            c = None
            i = 0
            while time.monotonic() < deadline and i < 3000:
                i += 1
                kind = rnd.choice(kinds)
                tag = "c%d-%d" % (k, i)
                version = "1.0" if rnd.random() < 0.15 else "1.1"
                if c is None:
                    c = self.connect(nx, timeout=10)
                c.send(H.request_bytes("GET", "/%s/%s" % (kind, tag), version=version))
                try:
                    r = c.read_response()
                except (H.ConnectionClosed, OSError) as e:
                    problems.append("%s: %r" % (tag, e))
                    c.close()
                    c = None
                    continue
                want = b"for " + tag.encode() + b" "
                if r.status == 200 and not r.body.startswith(want):
                    problems.append("%s got %r" % (tag, r.body[:40]))
                elif r.status in (502, 503) and not (r.body.startswith(want) or r.body.startswith(b"nextup:")):
                    problems.append("%s: %d with %r" % (tag, r.status, r.body[:40]))
                elif r.status not in (200, 502, 503):
                    problems.append("%s: status %d" % (tag, r.status))
                counts[r.status] = counts.get(r.status, 0) + 1
                if version == "1.0" or r.close_delimited or r.get("connection", "").lower() == "close" \
                        or rnd.random() < 0.2:
                    c.close()
                    c = None
            if c:
                c.close()

        left = H.run_threads(client, [(k,) for k in range(self.CLIENTS)], timeout=seconds + 30)
        self.assertEqual(left, [], "clients still running")

    def settle(self, nx):
        time.sleep(1.0)
        return H.open_fds(nx.pid), H.read_rss_kib(nx.pid)

    def test_soak(self):
        replicas = [MixedReplica(), MixedReplica()]
        for r in replicas:
            self.addCleanup(r.stop)
        nx = self.start_nextup([r.addr for r in replicas],
                               env={"NEXTUP_BPF": "off", "NEXTUP_POOL_MAX_IDLE": "4", "NEXTUP_ACCESS_LOG": "off"})
        problems, counts = [], {}
        self.load(nx, 3, problems, counts)          # warm: pools, caches, arenas
        fds0, rss0 = self.settle(nx)
        fd_samples = []
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                fd_samples.append(H.open_fds(nx.pid))
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        self.load(nx, self.SECONDS, problems, counts)
        stop.set()
        t.join(timeout=2)
        fds1, rss1 = self.settle(nx)
        total = sum(counts.values())
        print("\n  soak %d s, %d requests %r: fds %d -> %d (max %d), RSS %d -> %d KiB, problems %d"
              % (self.SECONDS, total, sorted(counts.items()), fds0, fds1, max(fd_samples or [0]), rss0, rss1,
                 len(problems)), end=" ")
        self.assertEqual(problems, [], problems[:5])
        self.assertGreater(total, 1000, "too little load to show anything")
        # Idle pooled connections may differ: at most NEXTUP_POOL_MAX_IDLE per peer per worker.
        self.assertLessEqual(abs(fds1 - fds0), 4 * 2 * 2, "open fds went %d -> %d" % (fds0, fds1))
        if not H.is_sanitized(nx.bin):
            self.assertLessEqual(rss1, rss0 * 1.1 + 1024, "RSS went %d -> %d KiB" % (rss0, rss1))
        self.assertEqual([r.error for r in replicas], [None, None])


if __name__ == "__main__":
    unittest.main()
