"""The access log: one JSON line per request on stdout, with the retries made;
NEXTUP_ACCESS_LOG=off turns it off. (nextup's stdout and stderr share one file
in the harness; access lines are the ones that parse as JSON objects.)"""
import json
import time
import unittest

from harness import NextupCase, RawConn, free_port, request_bytes


def access_lines(nx, want, timeout=3.0):
    """The access log lines so far, waiting up to <timeout> for <want> of them (flushed every 200 ms)."""
    deadline = time.time() + timeout
    while True:
        lines = []
        for line in nx.stderr_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        if len(lines) >= want or time.time() > deadline:
            return lines
        time.sleep(0.05)


class AccessLogTest(NextupCase):
    def test_lines_for_success_retry_and_bad_request(self):
        good = self.start_backend(name="good")
        bad = self.start_backend(name="bad", mode="503")
        dead = "127.0.0.1:%d" % free_port()
        nx = self.start_nextup([good, bad, dead], env={"NEXTUP_EJECT_GATEWAY_ERRORS": "0",
                                                       "NEXTUP_EJECT_CONNECT_FAILURES": "0",
                                                       "NEXTUP_BPF": "off"})
        for i in range(12):
            c = RawConn(nx.listen_port)
            self.addCleanup(c.close)
            c.send(request_bytes("GET", "/item/%d?x=\"q\"" % i))
            self.assertEqual(c.read_response().status, 200)
        c = RawConn(nx.listen_port)
        self.addCleanup(c.close)
        c.send(b"GET /bad\x01 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(c.read_response().status, 400)
        lines = access_lines(nx, 13)
        self.assertEqual(len(lines), 13, lines)
        gets = [l for l in lines if l["method"] == "GET" and l["path"].startswith("/item/")]
        self.assertEqual(len(gets), 12)
        for l in gets:
            for key in ("time", "client", "method", "path", "status", "bytes", "duration_ms", "upstream",
                        "attempts", "retries"):
                self.assertIn(key, l)
            self.assertEqual(l["status"], 200)
            self.assertEqual(l["upstream"], good.addr)
            self.assertEqual(l["bytes"], len("good\n"))
            self.assertEqual(l["attempts"], 1 + len(l["retries"]))
            self.assertTrue(l["time"].endswith("Z"))
            for reason in l["retries"]:
                self.assertIn(reason, ("status_503", "refused"))
        # With three peers and two of them failing, some requests must have been retried.
        self.assertTrue(any(l["retries"] for l in gets), gets)
        self.assertTrue(any("status_503" in l["retries"] for l in gets), gets)
        bad_line = [l for l in lines if l["status"] == 400]
        self.assertEqual(len(bad_line), 1, lines)
        self.assertEqual(bad_line[0]["attempts"], 0)
        self.assertEqual(bad_line[0]["upstream"], "")

    def test_off(self):
        good = self.start_backend(name="good")
        nx = self.start_nextup([good], env={"NEXTUP_ACCESS_LOG": "off"})
        c = RawConn(nx.listen_port)
        self.addCleanup(c.close)
        for _ in range(5):
            c.send(request_bytes("GET", "/"))
            self.assertEqual(c.read_response().status, 200)
        time.sleep(0.5)
        self.assertEqual(access_lines(nx, 1, timeout=0.3), [])

    def test_bad_value(self):
        import os
        import subprocess
        r = subprocess.run([os.environ["NEXTUP_BIN"]], env={"NEXTUP_UPSTREAMS": "127.0.0.1:1",
                                                            "NEXTUP_ACCESS_LOG": "yes"},
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1)
        self.assertIn('NEXTUP_ACCESS_LOG="yes"', r.stderr)


if __name__ == "__main__":
    unittest.main()
