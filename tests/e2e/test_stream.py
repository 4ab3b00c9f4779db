"""Streaming 1 GiB each way through nextup with bounded memory."""

import hashlib
import json
import os
import sys
import time
import unittest

import harness as H
from backend import BLOCK, pattern_sha256

GIB = 1 << 30
MIB = H.MIB
RSS_BOUND_KIB = 64 * 1024
TIME_LIMIT = 120.0


class StallingUpstream(H.RawServer):
    """A raw upstream that accepts, reads the request head, waits <stall> s without
    reading the body, then reads the Content-Length body and answers its size."""

    def __init__(self, stall):
        self.stall = stall
        self.got = None
        super().__init__()

    def handle(self, conn):
        self._serve(conn)

    def _serve(self, conn):
        data = H.read_request_head(conn, timeout=30)
        if b"\r\n\r\n" not in data:
            return
        head, _, rest = data.partition(b"\r\n\r\n")
        cl = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                cl = int(v)
        if cl is None:
            conn.sendall(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self._stop.wait(self.stall)
        n = len(rest)
        buf = bytearray(MIB)
        while n < cl and not self._stop.is_set():
            k = conn.recv_into(buf)
            if not k:
                break
            n += k
        self.got = n
        body = b"%d" % n
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))



class StreamTest(H.NextupCase):

    def start(self, upstream):
        env = {}
        if H.is_sanitized(H.nextup_bin()):
            # ASan's quarantine keeps freed buffers around (256 MiB by default); keep it small
            # so the RSS figure says something about nextup's own buffering.
            env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8").lstrip(":")
        return self.start_nextup(upstream, env=env)

    def measure(self, nx, label):
        time.sleep(0.2)
        base = H.read_rss_kib(nx.pid)
        sampler = H.RssSampler(nx.pid, 0.1).start()
        self.addCleanup(sampler.stop)
        return base, sampler

    def check_rss(self, label, base, sampler, took, nbytes):
        sampler.stop()
        growth = sampler.max_kib - base
        msg = ("\n  %s: %.1f s (%.0f MiB/s), nextup VmRSS before %d KiB, max %d KiB, growth %d KiB (%d samples)"
               % (label, took, nbytes / MIB / max(took, 1e-6), base, sampler.max_kib, growth, len(sampler.samples)))
        print(msg)
        sys.stdout.flush()
        self.assertGreater(len(sampler.samples), 0, "no RSS samples")
        self.assertLess(growth, RSS_BOUND_KIB, "nextup VmRSS grew by %d KiB (> 64 MiB) during %s"
                        % (growth, label))

    def _download(self, kind, n, stall=0.0):
        b = self.start_backend("big")
        nx = self.start(b)
        base, sampler = self.measure(nx, kind)
        c = self.connect(nx, timeout=30)
        t0 = time.monotonic()
        c.send(H.request_bytes("GET", "/%s/%d" % (kind, n)))
        r = c.read_head()
        self.assertEqual(r.status, 200, r)
        if stall:
            time.sleep(stall)  # a client that does not read: nextup must stop reading upstream
        h = hashlib.sha256()
        got = 0
        sink_buf = bytearray(MIB)
        view = memoryview(sink_buf)
        if kind == "bytes":
            self.assertEqual(r.get("content-length"), str(n))
            h.update(c.buf)
            got = len(c.buf)
            c.buf.clear()
            while got < n:
                self.assertLess(time.monotonic() - t0, TIME_LIMIT, "download slower than %d s" % TIME_LIMIT)
                k = c.sock.recv_into(sink_buf, min(MIB, n - got))
                self.assertNotEqual(k, 0, "connection closed after %d of %d bytes" % (got, n))
                h.update(view[:k])
                got += k
        else:
            def sink(piece):
                nonlocal got
                h.update(piece)
                got += len(piece)
                if time.monotonic() - t0 > TIME_LIMIT:
                    raise AssertionError("download slower than %d s" % TIME_LIMIT)
            c.buf[:0] = r.raw_head  # re-read the head through the full response parser
            r = c.read_response(sink=sink)
        took = time.monotonic() - t0
        self.check_rss("download %s %d MiB%s" % (kind, n // MIB, " (client stalled %.0f s)" % stall if stall else ""),
                       base, sampler, took, n)
        self.assertEqual(got, n)
        self.assertEqual(h.hexdigest(), pattern_sha256(n), "downloaded bytes differ from the pattern")

    def test_download_1gib(self):
        self._download("bytes", GIB)

    def test_download_chunked_stalled_client(self):
        self._download("chunked", 256 * MIB, stall=3.0)

    def test_download_stalled_client(self):
        self._download("bytes", 256 * MIB, stall=3.0)

    def _upload(self, chunked):
        b = self.start_backend("sink")
        nx = self.start(b)
        base, sampler = self.measure(nx, "upload")
        c = self.connect(nx, timeout=30)
        t0 = time.monotonic()
        if chunked:
            c.send(H.request_bytes("POST", "/count", headers=[("Transfer-Encoding", "chunked")]))
        else:
            c.send(H.request_bytes("POST", "/count", headers=[("Content-Length", str(GIB))]))

        def blocks():
            for _ in range(GIB // MIB):
                yield BLOCK

        for block in blocks():
            self.assertLess(time.monotonic() - t0, TIME_LIMIT, "upload slower than %d s" % TIME_LIMIT)
            if chunked:
                c.send(b"%x\r\n" % len(block))
                c.send(block)
                c.send(b"\r\n")
            else:
                c.send(block)
        if chunked:
            c.send(b"0\r\n\r\n")
        r = c.read_response()
        took = time.monotonic() - t0
        self.check_rss("upload %s 1024 MiB" % ("chunked" if chunked else "content-length"), base, sampler, took, GIB)
        self.assertEqual(r.status, 200, "%r %r" % (r, r.body[:200]))
        self.assertEqual(json.loads(r.body), {"bytes": GIB, "sha256": pattern_sha256(GIB)})

    def test_upload_1gib_content_length(self):
        self._upload(chunked=False)

    def test_upload_1gib_chunked(self):
        self._upload(chunked=True)

    def test_upload_stalled_upstream(self):
        n = 256 * MIB
        up = StallingUpstream(stall=3.0)
        self.addCleanup(up.stop)
        nx = self.start("127.0.0.1:%d" % up.port)
        base, sampler = self.measure(nx, "upload")
        c = self.connect(nx, timeout=30)
        t0 = time.monotonic()
        c.send(H.request_bytes("POST", "/count", headers=[("Content-Length", str(n))]))
        for _ in range(n // MIB):
            self.assertLess(time.monotonic() - t0, TIME_LIMIT, "upload slower than %d s" % TIME_LIMIT)
            c.send(BLOCK)
        r = c.read_response()
        took = time.monotonic() - t0
        self.check_rss("upload 256 MiB to an upstream that stalls 3 s", base, sampler, took, n)
        self.assertIsNone(up.error, up.error)
        self.assertEqual((r.status, r.body), (200, b"%d" % n), r)


if __name__ == "__main__":
    unittest.main()
