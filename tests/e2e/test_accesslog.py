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


MAX_LINE = 8192   # sidecar/accesslog.h ACCESS_LOG_MAX_LINE
HOSTILE = [b'"', b'\\', b'\x01', b'\x1b[31m', b'\x7f', b'\xff', b'\xc0\xaf', b'\xed\xa0\x80', b'\xe2\x82',
           b'\xf4\x90\x80\x80', b'"}\n{"status":1', b'\\u0000']


def hostile_requests():
    """40 requests, each on its own connection: odd bytes in the path, in header values, in Host,
    in the method, in X-Request-Id and traceparent, and heads of 60 KiB, 70 KiB and 1 MiB."""
    reqs = []
    for i, p in enumerate(HOSTILE):                         # 12: in the path
        reqs.append(b"GET /h%02d/" % i + p + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    for i, p in enumerate(HOSTILE):                         # 12: in a header value
        reqs.append(b"GET /v%02d HTTP/1.1\r\nHost: a\r\nX-Odd: a" % i + p + b"b\r\n\r\n")
    for i, p in enumerate(HOSTILE[:8]):                     # 8: in Host
        reqs.append(b"GET /host%02d HTTP/1.1\r\nHost: a" % i + p + b"\r\n\r\n")
    reqs.append(b"G\"ET /m HTTP/1.1\r\nHost: a\r\n\r\n")
    reqs.append(b"\xffGET /m2 HTTP/1.1\r\nHost: a\r\n\r\n")
    reqs.append(b'GET /rid HTTP/1.1\r\nHost: a\r\nX-Request-Id: "\\\xff\r\n\r\n')
    reqs.append(b"GET /tp HTTP/1.1\r\nHost: a\r\ntraceparent: 00-\xff\x01\"-x\r\n\r\n")
    reqs.append(b"GET /" + b"\xff" * (60 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    reqs.append(b"GET /big-head HTTP/1.1\r\nHost: a\r\nX-Big: " + b"\x01\xfe" * (35 * 1024) + b"\r\n\r\n")
    reqs.append(b"GET /" + b'"\\\xff' * (350 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n")   # a 1 MiB path
    reqs.append(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(reqs) == 40, len(reqs)
    return reqs


class AccessLogTest(NextupCase):
    def test_hostile_requests_give_one_valid_line_each(self):
        import os
        import tempfile
        good = self.start_backend(name="good")
        out = tempfile.NamedTemporaryFile(prefix="nextup-access-", suffix=".log", delete=False)
        out.close()
        self.addCleanup(os.unlink, out.name)
        nx = self.start_nextup([good], env={"NEXTUP_BPF": "off"}, stdout_path=out.name)
        reqs = hostile_requests()
        for raw in reqs:
            c = RawConn(nx.listen_port)
            try:
                try:
                    c.send(raw)
                except OSError:
                    pass   # nextup answered (431, 414) and closed before taking the whole 1 MiB
                try:
                    c.read_response()
                except Exception:
                    pass   # a close is an answer too; the log line is what is checked
            finally:
                c.close()
        deadline = time.time() + 5
        while True:
            with open(out.name, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")[:-1]
            if len(lines) >= len(reqs) or time.time() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)   # and no more lines after that
        with open(out.name, "rb") as f:
            lines = f.read().split(b"\n")[:-1]
        self.assertEqual(len(lines), len(reqs), "want one access line per request, got %d: %r"
                         % (len(lines), [l[:120] for l in lines]))
        for i, line in enumerate(lines):
            with self.subTest(line=i):
                self.assertLess(len(line) + 1, MAX_LINE, "line %d is %d bytes: %r" % (i, len(line), line[:200]))
                text = line.decode("utf-8")          # strict: raises on invalid UTF-8
                obj = json.loads(text)
                self.assertIsInstance(obj, dict)
                self.assertIn("status", obj)
        paths = [json.loads(l)["path"] for l in lines]
        self.assertIn("/last", paths)
        self.assertTrue(any(p.endswith(" bytes]") for p in paths), "the 1 MiB path is capped with a marker")


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
