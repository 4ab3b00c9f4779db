"""Bad input from clients (raw sockets) and from upstreams."""

import time
import unittest

import harness as H


class BadClientInputTest(H.NextupCase):

    def setUp(self):
        self.b = self.start_backend("alpha")
        self.nx = self.start_nextup(self.b, env={"NEXTUP_MAX_HEADER_BYTES": "4096",
                                                 "NEXTUP_HEADER_TIMEOUT_MS": "500"})

    def send_raw(self, data, timeout=5):
        c = self.connect(self.nx, timeout=timeout)
        c.send(data)
        return c, c.read_response()

    # must_close: for framing errors (where the next message would start is unknown)
    # the connection has to be closed after the error.
    def assertRejected(self, data, statuses=(400,), must_close=False):
        """<data> gets one of <statuses> as nextup's own plain-text error, the backend
        never sees a request (not even its head), and (for framing errors) the connection is closed."""
        before = self.b.heads()
        try:
            c, r = self.send_raw(data)
        except H.ConnectionClosed as e:
            self.fail("connection closed without a %s response for %r (%s)" % (statuses, data[:120], e))
        self.assertIn(r.status, statuses, "for %r: got %r body=%r" % (data[:160], r, r.body[:200]))
        self.assertPlainError(r, r.status)
        closed = c.wait_closed(2) if must_close else None
        time.sleep(0.1)
        self.assertEqual(self.b.heads(), before, "the backend received a request head for %r" % data[:160])
        if must_close:
            self.assertTrue(closed, "connection still open after %d for %r" % (r.status, data[:120]))
        return r

    def test_malformed_request_line(self):
        # After a request line it cannot parse, nextup has lost the message boundaries: it must close.
        for data in (b"GARBAGE\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/9.x\r\nHost: a\r\n\r\n",
                     b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n"):
            with self.subTest(data=data):
                self.assertRejected(data, must_close=True)

    def test_header_too_large_431(self):
        big = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"a" * 8192 + b"\r\n\r\n"
        self.assertRejected(big, statuses=(431,))

    def test_header_under_limit_ok(self):
        ok = b"GET / HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"a" * 3000 + b"\r\n\r\n"
        _, r = self.send_raw(ok)
        self.assertEqual(r.status, 200, "a 3 KiB head under a 4 KiB limit was refused: %r" % r)

    def test_many_small_headers_over_limit_431(self):
        data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(200)) + b"\r\n"
        self.assertRejected(data, statuses=(431,))

    def test_slow_header_408(self):
        c = self.connect(self.nx, timeout=5)
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        t0 = time.monotonic()
        r = c.read_response()
        took = time.monotonic() - t0
        self.assertPlainError(r, 408)
        self.assertLess(took, 2.0, "408 came after %.2f s with a 500 ms header timeout" % took)
        self.assertTrue(c.wait_closed(2), "connection open after 408")

    def test_trickled_header_408(self):
        # The whole head must arrive within the timeout; a byte every 100 ms does not reset it.
        c = self.connect(self.nx, timeout=5)
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
        t0 = time.monotonic()
        got = None
        for i in range(len(head)):
            if time.monotonic() - t0 > 3:
                break
            try:
                c.send(head[i:i + 1])
            except OSError:
                break
            if c.pending(0.1):
                break
        try:
            got = c.read_response()
        except H.ConnectionClosed as e:
            self.fail("trickled head: connection closed without 408 (%s)" % e)
        took = time.monotonic() - t0
        self.assertPlainError(got, 408)
        self.assertLess(took, 2.0, "408 after %.2f s for a trickled head (timeout 500 ms)" % took)

    def test_content_length_and_transfer_encoding(self):
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        body = H.chunked([smuggled])
        data = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
                % len(body)) + body
        self.assertRejected(data, must_close=True)
        data = (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                + b"0\r\n\r\n" + smuggled)
        self.assertRejected(data, must_close=True)

    def test_two_different_content_lengths(self):
        data = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello"
                + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRejected(data, must_close=True)
        data = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"
        self.assertRejected(data, must_close=True)

    def test_transfer_encoding_not_ending_in_chunked(self):
        for te in (b"gzip", b"chunked, gzip", b"identity"):
            with self.subTest(te=te):
                data = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n" + H.chunked([b"abc"])
                self.assertRejected(data, must_close=True)

    def test_obs_fold(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tfolded\r\n\r\n")

    def test_bare_lf_and_cr_in_header(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nX-B: b\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rX-B: b\r\n\r\n")

    def test_nul_in_header(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-\x00A: ab\r\n\r\n")

    def test_space_before_colon(self):
        # "Host : a" is a classic smuggling vector (RFC 9112 5.1: must be rejected with 400).
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n")

    def test_invalid_chunk_size_in_first_write(self):
        # nextup may stream the head before it meets the bad chunk, so here the check is that
        # the backend never completes a request (not that it never sees the head).
        before = self.b.requests()
        c, r = self.send_raw(b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"zz\r\nhello\r\n0\r\n\r\n")
        self.assertPlainError(r, 400)
        self.assertTrue(c.wait_closed(2), "connection open after a bad chunk size")
        time.sleep(0.3)
        self.assertEqual(self.b.requests(), before, "backend completed a request with a broken chunked body")

    def test_invalid_chunk_size_after_streaming_started(self):
        # The head and a valid chunk first (nextup may already stream them upstream),
        # then a bad chunk size: 400 (no response head has been sent: /count answers only
        # at the end of the body), connection closed, and the backend never completes a request.
        before = self.b.requests()
        c = self.connect(self.nx, timeout=5)
        c.send(b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.3)
        c.send(b"zz\r\nworld\r\n0\r\n\r\n")
        try:
            r = c.read_response()
        except H.ConnectionClosed as e:
            self.fail("bad chunk size mid-body: closed without a 400 (%s)" % e)
        self.assertPlainError(r, 400)
        self.assertTrue(c.wait_closed(2), "connection open after a bad chunk")
        time.sleep(0.3)
        self.assertEqual(self.b.requests(), before, "backend completed a request with a broken chunked body")

    def test_absolute_form_target(self):
        self.assertRejected(b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", must_close=False)

    def test_connect_method(self):
        self.assertRejected(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
                            statuses=(400, 405), must_close=False)

    def test_http11_without_host(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", must_close=False)

    def test_http11_with_two_hosts(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", must_close=False)

    def test_invalid_host(self):
        # RFC 9112 3.2: 400 for an invalid Host value, as nginx answers ("client sent invalid host header").
        for host in (b"a b", b"a\tb", b"exa mple:80", b"host:port", b"[::1", b"a/b", b"a@b", b"", b"a\x01b",
                     b"a:80:80", b"caf\xc3\xa9.example"):
            with self.subTest(host=host):
                self.assertRejected(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n")
        for host in (b"example.com:8080", b"127.0.0.1:15001", b"[::1]:80", b"a-b.c_d"):
            with self.subTest(host=host):
                _, r = self.send_raw(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                self.assertEqual((r.status, r.body), (200, b"alpha\n"), "valid Host %r" % host)

    def test_still_serving_after_bad_input(self):
        self.assertRejected(b"GARBAGE\r\n\r\n", must_close=True)
        _, r = self.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"alpha\n"))


class GarbageServer(H.RawServer):
    """A raw TCP upstream that answers every request with fixed bytes, then closes."""

    def __init__(self, answer):
        self.answer = answer
        super().__init__()

    def handle(self, conn):
        try:
            H.read_request_head(conn)
            conn.sendall(self.answer)
        except OSError:
            pass


class BadUpstreamTest(H.NextupCase):

    def test_garbage_response_502(self):
        for answer in (b"HELLO\r\n\r\n",
                       b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"):
            with self.subTest(answer=answer):
                g = GarbageServer(answer)
                self.addCleanup(g.stop)
                nx = self.start_nextup("127.0.0.1:%d" % g.port)
                t0 = time.monotonic()
                r = self.roundtrip(nx, "GET", "/")
                self.assertPlainError(r, 502)
                self.assertGreaterEqual(g.accepted, 1, "the garbage upstream was never asked")
                self.assertLess(time.monotonic() - t0, 5)

    def test_upstream_too_slow_504(self):
        b = self.start_backend("slow")
        nx = self.start_nextup(b, env={"NEXTUP_REQUEST_TIMEOUT_MS": "500"})
        t0 = time.monotonic()
        r = self.roundtrip(nx, "GET", "/slow/3000")
        took = time.monotonic() - t0
        self.assertPlainError(r, 504)
        self.assertLess(took, 1.5, "504 after %.2f s with a 500 ms request timeout" % took)
        self.assertGreater(took, 0.4, "504 after only %.2f s with a 500 ms request timeout" % took)
        # A fast request on the same nextup still works.
        r = self.roundtrip(nx, "GET", "/slow/10")
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main()
