"""The log level changes while nextup runs: POST /logging?level=... on the admin listener
(loopback only, like /debug/*; test_admin_limits checks a client from the pod network gets
403), GET /logging shows it. Diagnostics as JSON with NEXTUP_LOG_FORMAT=json."""
import http.client
import json
import time
import unittest

import harness as H


def admin(nx, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", nx.admin_port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def bad_request(nx):
    """A request nextup answers 400 itself: it logs one line at info about it."""
    c = H.RawConn(nx.listen_port)
    try:
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        return c.read_response().status
    finally:
        c.close()


def lines_with(nx, word, timeout=2.0, want=1):
    deadline = time.monotonic() + timeout
    while True:
        found = [l for l in nx.stderr_text().splitlines() if word in l]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class LoggingTest(H.NextupCase):
    def test_post_changes_level_at_run_time(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "warn", "NEXTUP_ACCESS_LOG": "off", "NEXTUP_BPF": "off"})
        self.assertEqual(admin(nx, "GET", "/logging"), (200, "level=warn\n"))
        self.assertEqual(bad_request(nx), 400)
        time.sleep(0.3)
        self.assertEqual(lines_with(nx, " info ", timeout=0.1), [], "an info line at level warn")

        self.assertEqual(admin(nx, "POST", "/logging?level=info"), (200, "level=info\n"))
        self.assertEqual(admin(nx, "GET", "/logging"), (200, "level=info\n"))
        self.assertEqual(bad_request(nx), 400)
        self.assertEqual(len(lines_with(nx, " 400 ")), 1, nx.stderr_text()[-2000:])

        # curl -X POST sends no Content-Length at all; http.client sends "Content-Length: 0".
        c = H.RawConn(nx.admin_port)
        try:
            c.send(b"POST /logging?level=error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            r = c.read_response()
        finally:
            c.close()
        self.assertEqual((r.status, r.body), (200, b"level=error\n"))
        self.assertEqual(admin(nx, "POST", "/logging?level=debug", body=b""), (200, "level=debug\n"))
        self.assertEqual(admin(nx, "GET", "/logging"), (200, "level=debug\n"))
        # warn->info and error->debug; info->error is logged at warn, so not shown at error.
        changes = lines_with(nx, "set through POST /logging", want=2)
        self.assertEqual(len(changes), 2, changes)

    def test_bad_requests_change_nothing(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "warn", "NEXTUP_BPF": "off"})
        for path in ("/logging?level=loud", "/logging", "/logging?level=", "/logging?level=debug&x=1",
                     "/logging?lvl=debug"):
            st, text = admin(nx, "POST", path)
            self.assertEqual(st, 400, (path, st, text))
            self.assertEqual(text.count("\n"), 1, text)
        st, text = admin(nx, "POST", "/logging?level=debug", body=b"x")
        self.assertEqual(st, 413, "a body is still refused: %d %r" % (st, text))
        # GET never changes the level; POST elsewhere is 405; other methods stay 501.
        self.assertEqual(admin(nx, "GET", "/logging?level=debug")[0], 200)
        st, text = admin(nx, "POST", "/metrics")
        self.assertEqual(st, 405, text)
        self.assertEqual(admin(nx, "PUT", "/logging?level=debug")[0], 501)
        self.assertEqual(admin(nx, "GET", "/logging"), (200, "level=warn\n"))

    def test_json_diagnostics(self):
        b = self.start_backend("a", mode="503")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "info", "NEXTUP_LOG_FORMAT": "json",
                                       "NEXTUP_ACCESS_LOG": "off", "NEXTUP_BPF": "off"})
        c = H.RawConn(nx.listen_port)
        try:
            # A POST answered 503 is not retried: one line at info naming the path, which holds
            # a quote, a backslash and bytes that are not UTF-8.
            c.send(b"POST /\"q\\\xff\xfe HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            self.assertEqual(c.read_response().status, 503)
        finally:
            c.close()
        self.assertEqual(admin(nx, "POST", "/logging?level=debug")[0], 200)
        nx.expect_exit = True
        nx.stop()
        raw = open(nx.stderr.name, "rb").read()
        lines = [l for l in raw.split(b"\n") if l]
        self.assertGreater(len(lines), 2, raw)
        for l in lines:
            l.decode("utf-8")   # valid UTF-8
            obj = json.loads(l)
            self.assertEqual(sorted(obj), ["level", "msg", "time"], obj)
            self.assertIn(obj["level"], ("error", "warn", "info", "debug"))
            self.assertTrue(obj["time"].endswith("Z"))
        msgs = [json.loads(l)["msg"] for l in lines]
        self.assertTrue(any(m.startswith("nextup ") and "listening on" in m for m in msgs), msgs)
        self.assertTrue(any("set through POST /logging" in m for m in msgs), msgs)
        self.assertTrue(any('/"q\\\ufffd\ufffd' in m for m in msgs), msgs)


if __name__ == "__main__":
    unittest.main()
