"""Upstreams that misbehave in ways real servers do: responses that end with the
connection (HTTP/1.0, CGI-style), bytes after a complete response, a body after
a HEAD response. Nothing hangs, nothing leaks, no byte reaches the wrong client."""

import socket
import threading
import time
import unittest

import harness as H


class CloseDelimitedServer(H.ThreadedRawServer):
    """Answers each connection's one request with a body that has no length and
    ends with the close: HTTP/1.1 with Connection: close, or an HTTP/1.0 status line."""

    def __init__(self, version=b"HTTP/1.1"):
        self.version = version
        super().__init__()

    def handle(self, conn):
        head = H.read_request_head(conn, timeout=5)
        if not head:
            return
        target = head.split(b" ", 2)[1]
        extra = b"Connection: close\r\n" if self.version == b"HTTP/1.1" else b""
        conn.sendall(self.version + b" 200 OK\r\nContent-Type: text/plain\r\n" + extra + b"\r\n")
        conn.sendall(b"body of " + target)


class CloseDelimitedTest(H.NextupCase):

    def check_no_leak(self, nx, fds0, rss0):
        """fds back to <fds0> and RSS within 1 MiB of <rss0> once the clients are gone."""
        deadline = time.monotonic() + 3
        while H.open_fds(nx.pid) > fds0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertLessEqual(H.open_fds(nx.pid), fds0, "file descriptors leaked")
        if not H.is_sanitized(nx.bin):
            self.assertLess(H.read_rss_kib(nx.pid) - rss0, 1024, "RSS grew by over 1 MiB")

    def run_case(self, version):
        srv = CloseDelimitedServer(version)
        self.addCleanup(srv.stop)
        nx = self.start_nextup([srv.addr], env={"NEXTUP_BPF": "off"})
        # Warm up both workers' lazily made state before the baseline.
        for i in range(8):
            c = self.connect(nx, timeout=3)
            c.send(H.request_bytes("GET", "/warm/%d" % i, version="1.0"))
            self.assertEqual(c.read_response().body, b"body of /warm/%d" % i)
            c.close()
        time.sleep(0.3)
        fds0, rss0 = H.open_fds(nx.pid), H.read_rss_kib(nx.pid)
        lines0 = len(H.access_lines(nx))

        # A keep-alive HTTP/1.1 client: each response re-framed (chunked), the connection goes on.
        c = self.connect(nx, timeout=3)
        for i in range(100):
            c.send(H.request_bytes("GET", "/ka/%d" % i))
            try:
                r = c.read_response()
            except (H.ConnectionClosed, socket.timeout) as e:
                self.fail("keep-alive request %d after a close-delimited response: %r" % (i, e))
            self.assertEqual((r.status, r.body), (200, b"body of /ka/%d" % i))
            self.assertFalse(r.close_delimited, "a 1.1 client got a close-delimited body")
        c.close()
        # HTTP/1.0 clients: the body ends with nextup's close.
        for i in range(100):
            c = self.connect(nx, timeout=3)
            c.send(H.request_bytes("GET", "/h10/%d" % i, version="1.0"))
            try:
                r = c.read_response()
            except socket.timeout:
                self.fail("HTTP/1.0 request %d: the response never ended" % i)
            self.assertEqual((r.status, r.body), (200, b"body of /h10/%d" % i))
            c.close()
        deadline = time.monotonic() + 3
        while len(H.access_lines(nx)) - lines0 < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = H.access_lines(nx)[lines0:]
        self.assertEqual(len(lines), 200, "access log lines for 200 close-delimited responses")
        self.assertEqual({l["status"] for l in lines}, {200})
        self.check_no_leak(nx, fds0, rss0)
        self.assertIsNone(srv.error)

    def test_http11_connection_close_no_length(self):
        self.run_case(b"HTTP/1.1")

    def test_http10_upstream(self):
        self.run_case(b"HTTP/1.0")


if __name__ == "__main__":
    unittest.main()
