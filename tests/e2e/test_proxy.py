"""Plain proxying: keep-alive, pipelining, framing, interim responses, upgrades, headers."""

import base64
import hashlib
import json
import os
import struct
import time
import unittest

import harness as H
from backend import pattern_bytes, pattern_sha256, ws_frame


class ProxyTest(H.NextupCase):

    def setUp(self):
        self.b = self.start_backend("alpha")
        self.nx = self.start_nextup(self.b)
        self.host = "127.0.0.1:%d" % self.nx.listen_port

    def req(self, method, target, headers=(), body=None, version="1.1", host="default"):
        return H.request_bytes(method, target, host=self.host if host == "default" else host,
                               headers=headers, body=body, version=version)

    # ---- basics and keep-alive ----------------------------------------

    def test_get(self):
        r = self.roundtrip(self.nx, "GET", "/hello?x=1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"alpha\n")
        self.assertEqual(r.get("x-backend"), "alpha")

    def test_keepalive_many_requests_one_connection(self):
        before = self.b.stats()
        c = self.connect(self.nx)
        n = 20
        for i in range(n):
            c.send(self.req("GET", "/k/%d" % i))
            r = c.read_response()
            self.assertEqual(r.status, 200, "request %d on one connection: %r" % (i, r))
            self.assertEqual(r.body, b"alpha\n")
            self.assertFalse(r.close_delimited, "response %d was close-delimited on a keep-alive connection" % i)
        after = self.b.stats()
        self.assertEqual(after["requests"] - before["requests"], n,
                         "backend saw %d requests, want %d" % (after["requests"] - before["requests"], n))
        # Keep-alive on the upstream side too: 20 sequential requests must not need 20 connections.
        new_conns = after["connections"] - before["connections"] - 1  # -1: the /stats connection
        self.assertLessEqual(new_conns, 4, "20 sequential requests used %d upstream connections: "
                             "no upstream keep-alive?" % new_conns)

    def test_pool_max_idle_zero_still_works(self):
        # NEXTUP_POOL_MAX_IDLE=0: no idle upstream connection is kept, so every request
        # opens a new one, and all of them still work.
        nx = self.start_nextup(self.b, env={"NEXTUP_POOL_MAX_IDLE": "0"})
        before = self.b.stats()
        c = self.connect(nx)
        for i in range(10):
            c.send(self.req("GET", "/nopool/%d" % i))
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"alpha\n"), "request %d" % i)
        after = self.b.stats()
        self.assertEqual(after["requests"] - before["requests"], 10)
        self.assertGreaterEqual(after["connections"] - before["connections"] - 1, 10,
                                "NEXTUP_POOL_MAX_IDLE=0 but upstream connections were reused")

    def test_pipelined_requests_answered_in_order(self):
        c = self.connect(self.nx)
        c.send(self.req("GET", "/slow/300") + self.req("GET", "/status/201") + self.req("GET", "/status/404"))
        got = []
        for _ in range(3):
            r = c.read_response()
            got.append((r.status, r.body))
        self.assertEqual(got, [(200, b"slow 300\n"), (201, b"status 201\n"), (404, b"status 404\n")])

    def test_post_content_length_echo(self):
        body = os.urandom(50000)
        r = self.roundtrip(self.nx, "POST", "/echo", body=body)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, body)

    def test_chunked_request_body_reframed(self):
        pieces = [os.urandom(n) for n in (1, 4096, 100000, 7, 65536, 300000)]
        whole = b"".join(pieces)
        c = self.connect(self.nx)
        c.send(self.req("POST", "/count", headers=[("Transfer-Encoding", "chunked")]))
        for p in pieces:  # separate writes, so nextup sees the body arrive over time
            c.send(H.chunked([p])[:-5])
            time.sleep(0.01)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(json.loads(r.body), {"bytes": len(whole), "sha256": H.sha256(whole)})
        # And the same connection still works (body framing fully consumed).
        c.send(self.req("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]) + H.chunked([b"abc", b"defg"]))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"abcdefg"))

    def test_chunked_request_forwarded_with_one_framing(self):
        # What reaches the upstream must carry exactly one framing (no CL+TE).
        r = self.roundtrip(self.nx, "GET", "/headers")  # warm-up; harmless
        c = self.connect(self.nx)
        c.send(self.req("POST", "/headers", headers=[("Transfer-Encoding", "chunked")]) + H.chunked([b"x" * 10]))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        names = [l.split(b":")[0].strip().lower() for l in r.body.split(b"\r\n")[1:] if b":" in l]
        self.assertFalse(b"content-length" in names and b"transfer-encoding" in names,
                         "upstream request has both Content-Length and Transfer-Encoding: %r" % r.body)
        self.assertTrue(b"content-length" in names or b"transfer-encoding" in names,
                        "upstream request with a body has no framing header: %r" % r.body)

    # ---- response framing ---------------------------------------------

    def _download(self, kind, n, version="1.1"):
        c = self.connect(self.nx)
        c.send(self.req("GET", "/%s/%d" % (kind, n), version=version))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), n, "%s/%d: got %d bytes" % (kind, n, len(r.body)))
        self.assertEqual(H.sha256(r.body), pattern_sha256(n), "%s/%d: body differs from the pattern" % (kind, n))
        return r, c

    def test_content_length_response(self):
        r, _ = self._download("bytes", 3 * H.MIB + 123)
        self.assertEqual(r.get("content-length"), str(3 * H.MIB + 123))

    def test_chunked_response(self):
        for n in (0, 1, 3 * H.MIB + 123):
            with self.subTest(n=n):
                self._download("chunked", n)

    def test_close_delimited_response(self):
        self._download("close", 3 * H.MIB + 7)
        self._download("close", 0)

    def test_keepalive_after_each_framing(self):
        c = self.connect(self.nx)
        for kind in ("bytes", "chunked", "bytes", "chunked"):
            c.send(self.req("GET", "/%s/%d" % (kind, 100001)))
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, pattern_bytes(100001), kind)

    def test_http10_client(self):
        c = self.connect(self.nx)
        c.send(self.req("GET", "/x", version="1.0"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"alpha\n"))
        self.assertTrue(c.wait_closed(3), "HTTP/1.0 request without keep-alive: connection not closed")

    def test_http10_without_host(self):
        c = self.connect(self.nx)
        c.send(self.req("GET", "/x", version="1.0", host=None))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"alpha\n"))

    def test_http10_client_gets_no_chunked(self):
        n = 2 * H.MIB + 5
        r, _ = self._download("chunked", n, version="1.0")
        te = ",".join(r.get_all("transfer-encoding")).lower()
        self.assertNotIn("chunked", te, "HTTP/1.0 client got Transfer-Encoding %r" % te)

    def test_head_has_no_body(self):
        c = self.connect(self.nx)
        for target in ("/bytes/1000", "/chunked/1000", "/"):
            c.send(self.req("HEAD", target))
            r = c.read_response("HEAD")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(c.pending(0.3), b"", "HEAD %s: bytes after the head" % target)
        c.send(self.req("GET", "/"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"alpha\n"))

    def test_204_304_have_no_body(self):
        c = self.connect(self.nx)
        for code in (204, 304):
            c.send(self.req("GET", "/status/%d" % code))
            r = c.read_response()
            self.assertEqual(r.status, code)
            self.assertEqual(c.pending(0.3), b"", "%d: bytes after the head" % code)
            te = ",".join(r.get_all("transfer-encoding")).lower()
            self.assertNotIn("chunked", te, "%d response declared chunked" % code)
        c.send(self.req("GET", "/status/200"))
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"status 200\n"))

    def test_error_statuses_forwarded_unchanged(self):
        for code in (400, 404, 500, 503):
            r = self.roundtrip(self.nx, "GET", "/status/%d" % code)
            self.assertEqual((r.status, r.body), (code, b"status %d\n" % code))
            self.assertEqual(r.get("x-backend"), "alpha", "status %d not the upstream's own response" % code)

    # ---- interim responses and Expect ---------------------------------

    def test_103_not_forwarded(self):
        c = self.connect(self.nx)
        c.send(self.req("GET", "/interim"))
        first = c.read_head()
        self.assertEqual(first.status, 200, "first response head was %d %s (103 must not be forwarded)"
                         % (first.status, first.reason))
        body = c._read_exact(int(first.get("content-length")))
        self.assertEqual(body, b"final after 103\n")

    def test_expect_100_continue(self):
        before = self.b.requests()
        c = self.connect(self.nx, timeout=5)
        body = b"body after continue"
        c.send(self.req("POST", "/echo", headers=[("Expect", "100-continue"),
                                                    ("Content-Length", str(len(body)))]))
        try:
            interim = c.read_head()
        except (TimeoutError, OSError) as e:
            self.fail("no '100 Continue' within 5 s after Expect: 100-continue (%r)" % e)
        self.assertEqual(interim.status, 100, "want 100 Continue first, got %r" % interim)
        self.assertTrue(interim.raw_head.startswith(b"HTTP/1.1 100"), interim.raw_head)
        c.send(body)
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, body))
        self.assertEqual(self.b.requests() - before, 1)

    # ---- WebSocket -----------------------------------------------------

    def test_websocket_echo(self):
        c = self.connect(self.nx)
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(self.req("GET", "/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        self.assertEqual(r.status, 101, r)
        want = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.assertEqual(r.get("sec-websocket-accept", "").encode(), want)
        self.assertIn("websocket", (r.get("upgrade") or "").lower())

        def read_frame():
            h = c._read_exact(2)
            n = h[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", c._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", c._read_exact(8))[0]
            self.assertFalse(h[1] & 0x80, "server frame is masked")
            return h[0] & 0x0F, c._read_exact(n)

        for opcode, payload in ((1, b"hello"), (2, os.urandom(300)), (2, os.urandom(70000)), (1, b"again")):
            c.send(ws_frame(opcode, payload, mask=os.urandom(4)))
            self.assertEqual(read_frame(), (opcode, payload))
        c.send(ws_frame(8, struct.pack("!H", 1000), mask=os.urandom(4)))
        self.assertEqual(read_frame()[0], 8, "no close frame back")
        self.assertTrue(c.wait_closed(3), "tunnel not closed after the upstream closed")

    # ---- headers -------------------------------------------------------

    def _forwarded_head(self, headers, host="example.test:8080", target="/headers?q=1"):
        c = self.connect(self.nx)
        c.send(self.req("GET", target, headers=headers, host=host))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        lines = r.body.decode("latin-1").split("\r\n")
        fwd = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                fwd.append((k.strip().lower(), v.strip()))
        return lines[0], fwd

    def test_hop_by_hop_headers_removed(self):
        line, fwd = self._forwarded_head([
            ("Connection", "close, X-Drop"), ("X-Drop", "1"), ("Keep-Alive", "300"), ("TE", "trailers"),
            ("Proxy-Authorization", "x"), ("Proxy-Connection", "keep-alive"), ("X-Keep", "yes"),
        ])
        names = [k for k, _ in fwd]
        for h in ("x-drop", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
            self.assertNotIn(h, names, "hop-by-hop header %r reached the backend: %r" % (h, fwd))
        for k, v in fwd:
            if k == "connection":
                self.assertNotIn("x-drop", v.lower(), "Connection header forwarded with X-Drop: %r" % v)
        self.assertIn(("x-keep", "yes"), fwd, "end-to-end header lost: %r" % fwd)

    def test_forwarded_headers_and_host(self):
        line, fwd = self._forwarded_head([("X-Forwarded-For", "1.2.3.4")])
        self.assertEqual(line, "GET /headers?q=1 HTTP/1.1", "request target changed")
        self.assertEqual([v for k, v in fwd if k == "host"], ["example.test:8080"], "Host not forwarded unchanged")
        self.assertEqual([v for k, v in fwd if k == "x-forwarded-for"], ["1.2.3.4, 127.0.0.1"], fwd)
        self.assertEqual([v for k, v in fwd if k == "x-forwarded-proto"], ["http"], fwd)

    def test_forwarded_for_without_client_value(self):
        _, fwd = self._forwarded_head([])
        self.assertEqual([v for k, v in fwd if k == "x-forwarded-for"], ["127.0.0.1"], fwd)
        self.assertEqual([v for k, v in fwd if k == "x-forwarded-proto"], ["http"], fwd)

    # ---- upstream failures after the request was sent ------------------

    def test_upstream_reset_gives_502(self):
        # The upstream resets every time, so no upstream response exists at all: a made-up 502.
        t0 = time.monotonic()
        r = self.roundtrip(self.nx, "GET", "/reset")
        self.assertPlainError(r, 502)
        self.assertLess(time.monotonic() - t0, 5)


if __name__ == "__main__":
    unittest.main()
