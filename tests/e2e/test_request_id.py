"""Request ids and the access log's request facts: X-Request-Id passed through, or made
when absent (and sent upstream), replaced when unusable; the line names the id, Host,
protocol, request bytes, upstream time and who produced the status."""
import re
import unittest

from harness import NextupCase, RawConn, free_port, request_bytes
from test_accesslog import access_lines

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def upstream_ids(body):
    """The X-Request-Id values of the head the backend received."""
    out = []
    for line in body.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-request-id":
            out.append(value.strip())
    return out


class RequestIdTest(NextupCase):

    def setUp(self):
        self.b = self.start_backend(name="b")
        self.nx = self.start_nextup([self.b], env={"NEXTUP_BPF": "off"})

    def get(self, path, headers=(), method="GET", body=None):
        c = RawConn(self.nx.listen_port)
        self.addCleanup(c.close)
        c.send(request_bytes(method, path, headers=list(headers), body=body))
        return c.read_response()

    def line_for(self, path, want):
        lines = access_lines(self.nx, want)
        mine = [l for l in lines if l["path"] == path]
        self.assertEqual(len(mine), 1, lines)
        return mine[0]

    def test_made_when_absent_sent_upstream_and_logged(self):
        r = self.get("/headers/a")
        self.assertEqual(r.status, 200)
        ids = upstream_ids(r.body)
        self.assertEqual(len(ids), 1, r.body)
        self.assertRegex(ids[0], UUID4)
        line = self.line_for("/headers/a", 1)
        self.assertEqual(line["request_id"], ids[0])
        self.assertEqual(line["status_source"], "upstream")
        self.assertEqual(line["protocol"], "HTTP/1.1")
        self.assertIn("host", line)
        self.assertGreaterEqual(line["upstream_ms"], 0)
        # Another request, another id.
        r2 = self.get("/headers/b")
        self.assertNotEqual(upstream_ids(r2.body), ids)

    def test_client_id_passed_through(self):
        r = self.get("/headers/c", headers=[("X-Request-Id", "abc-123_XYZ")])
        self.assertEqual(upstream_ids(r.body), ["abc-123_XYZ"])
        self.assertEqual(self.line_for("/headers/c", 1)["request_id"], "abc-123_XYZ")

    def test_two_ids_replaced_by_one_made(self):
        r = self.get("/headers/d", headers=[("X-Request-Id", "one"), ("X-Request-Id", "two")])
        ids = upstream_ids(r.body)
        self.assertEqual(len(ids), 1, r.body)
        self.assertRegex(ids[0], UUID4)
        self.assertEqual(self.line_for("/headers/d", 1)["request_id"], ids[0])

    def test_request_bytes_and_traceparent(self):
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = self.get("/echo/e", method="POST", body=b"x" * 1234, headers=[("traceparent", tp)])
        self.assertEqual(r.status, 200)
        line = self.line_for("/echo/e", 1)
        self.assertEqual(line["request_bytes"], 1234)
        self.assertEqual(line["traceparent"], tp)


class StatusSourceTest(NextupCase):
    """nextup's own 502 and a replica's 503 no longer give the same line."""

    def test_nextup_and_replica_statuses_told_apart(self):
        dead = "127.0.0.1:%d" % free_port()
        nx = self.start_nextup([dead], env={"NEXTUP_BPF": "off"})
        c = RawConn(nx.listen_port)
        self.addCleanup(c.close)
        c.send(request_bytes("GET", "/x"))
        self.assertEqual(c.read_response().status, 502)
        self.assertEqual(access_lines(nx, 1)[0]["status_source"], "nextup:refused")

        bad = self.start_backend(name="bad", mode="503")
        nx2 = self.start_nextup([bad], env={"NEXTUP_BPF": "off", "NEXTUP_MAX_RETRIES": "0"})
        c2 = RawConn(nx2.listen_port)
        self.addCleanup(c2.close)
        c2.send(request_bytes("GET", "/y"))
        self.assertEqual(c2.read_response().status, 503)
        self.assertEqual(access_lines(nx2, 1)[0]["status_source"], "upstream")


if __name__ == "__main__":
    unittest.main()
