"""/metrics as an SRE reads it: latency histograms that move under load, per-peer series
(a replica's 503s on its own series), build and process gauges, and `promtool check metrics`
on a live scrape. (Removed peers' series: test_dns.)"""
import os
import shutil
import subprocess
import time
import unittest

import harness as H

REQ_HIST = "nextup_downstream_request_duration_seconds"


def buckets(m, name, **labels):
    """[(le, cumulative count)] of one histogram series, +Inf last."""
    want = dict(labels)
    out = []
    for key, v in m.items():
        if not key.startswith(name + "_bucket{"):
            continue
        lab = dict(kv.split("=", 1) for kv in key[len(name) + 8:-1].split(","))
        lab = {k: v.strip('"') for k, v in lab.items()}
        if all(lab.get(k) == v for k, v in want.items()):
            out.append((float("inf") if lab["le"] == "+Inf" else float(lab["le"]), v))
    return sorted(out)


def histogram_quantile(q, bs):
    """As Prometheus computes it: linear within the bucket the rank falls in."""
    total = bs[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in bs:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def get(nx, path):
    c = H.RawConn(nx.listen_port)
    try:
        t = time.monotonic()
        c.send(H.request_bytes("GET", path))
        r = c.read_response()
        return r, time.monotonic() - t
    finally:
        c.close()


class MetricsTest(H.NextupCase):
    def test_request_histogram_p99_within_measured_range(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_BPF": "off", "NEXTUP_ACCESS_LOG": "off"})
        before = buckets(H.metrics(nx), REQ_HIST, code="2xx")
        self.assertEqual(len(before), 16, before)   # 15 bounds, 0.5 ms .. 30 s, and +Inf
        self.assertEqual((before[0][0], before[-2][0]), (0.0005, 30.0))
        fast, slow = [], []
        for i in range(100):
            slow_one = i % 10 == 9
            r, dt = get(nx, "/slow/200" if slow_one else "/slow/2")
            self.assertEqual(r.status, 200)
            (slow if slow_one else fast).append(dt)
        after = buckets(H.metrics(nx), REQ_HIST, code="2xx")
        delta = [(le, c - c0) for (le, c), (_, c0) in zip(after, before)]
        self.assertEqual(delta[-1][1], 100, "every request counted once: %r" % delta)
        p99 = histogram_quantile(0.99, delta)
        p50 = histogram_quantile(0.50, delta)
        # The slowest tenth holds the 99th percentile: what nextup measured lies within what
        # the client measured (nextup's time is the client's minus the network), to a bucket.
        self.assertGreater(p99, max(fast), "p99 %.4f s from buckets %r; fast max %.4f" % (p99, delta, max(fast)))
        self.assertGreaterEqual(p99, min(slow) * 0.5, (p99, min(slow), delta))
        self.assertLessEqual(p99, max(slow) * 1.3, (p99, max(slow), delta))
        self.assertLess(p50, min(slow), (p50, delta))
        print("\n  p50 %.4f s, p99 %.4f s from buckets; client: fast %.4f..%.4f s, slow %.4f..%.4f s"
              % (p50, p99, min(fast), max(fast), min(slow), max(slow)))

    def test_a_replicas_503s_show_on_its_own_series(self):
        good = self.start_backend("good")
        bad = self.start_backend("bad", mode="503")
        # No retry on status and no ejection: each 503 reaches the client, and both keep traffic.
        nx = self.start_nextup([good, bad], env={"NEXTUP_BPF": "off", "NEXTUP_RETRY_ON": "connect-failure",
                                                 "NEXTUP_EJECT_GATEWAY_ERRORS": "0", "NEXTUP_ACCESS_LOG": "off"})
        seen = {200: 0, 503: 0}
        for _ in range(40):
            r, _ = get(nx, "/")
            seen[r.status] += 1
        self.assertGreater(seen[503], 0, seen)
        self.assertGreater(seen[200], 0, seen)
        m = H.metrics(nx)
        self.assertEqual(H.metric(m, "nextup_peer_responses_total", peer=bad.addr, code="5xx"), seen[503])
        self.assertEqual(H.metric(m, "nextup_peer_responses_total", peer=bad.addr, code="2xx"), 0)
        self.assertEqual(H.metric(m, "nextup_peer_responses_total", peer=good.addr, code="5xx"), 0)
        self.assertEqual(H.metric(m, "nextup_peer_responses_total", peer=good.addr, code="2xx"), seen[200])
        self.assertEqual(H.metric(m, "nextup_peer_attempts_total", peer=bad.addr)
                         + H.metric(m, "nextup_peer_attempts_total", peer=good.addr), 40)
        self.assertEqual(H.metric(m, "nextup_peer_failures_total", peer=bad.addr, **{"class": "refused"}), 0)
        self.assertEqual(buckets(m, REQ_HIST, code="5xx")[-1][1], seen[503])

    def test_build_and_process_metrics(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_BPF": "off"})
        version = subprocess.run([H.nextup_bin(), "--version"], capture_output=True, text=True, timeout=10,
                                 env={}).stdout.split()[1]
        keep = H.RawConn(nx.listen_port)   # one client connection open while scraping
        self.addCleanup(keep.close)
        keep.send(H.request_bytes("GET", "/"))
        self.assertEqual(keep.read_response().status, 200)
        m = H.metrics(nx)
        info = [k for k in m if k.startswith("nextup_build_info{")]
        self.assertEqual(len(info), 1, info)
        self.assertIn('version="%s"' % version, info[0])
        self.assertEqual(m[info[0]], 1)
        self.assertEqual(H.metric(m, "nextup_downstream_connections_open"), 1)
        self.assertIn("nextup_upstream_connections_open", m)
        fds = len(os.listdir("/proc/%d/fd" % nx.pid))
        self.assertLessEqual(abs(H.metric(m, "process_open_fds") - fds), 3, (m["process_open_fds"], fds))
        self.assertGreaterEqual(H.metric(m, "process_max_fds"), H.metric(m, "process_open_fds"))
        rss = H.read_rss_kib(nx.pid) * 1024
        self.assertLess(abs(H.metric(m, "process_resident_memory_bytes") - rss), rss * 0.5)
        self.assertLess(abs(H.metric(m, "process_start_time_seconds") - time.time()), 60)
        self.assertGreater(H.metric(m, "process_cpu_seconds_total"), 0)

    def test_promtool_check_metrics_on_a_live_scrape(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: scripts/deps.sh test installs Debian's prometheus")
        good = self.start_backend("good")
        bad = self.start_backend("bad", mode="503")
        dead = "127.0.0.1:%d" % H.free_port()
        nx = self.start_nextup([good, bad, dead], env={"NEXTUP_BPF": "off"})
        for _ in range(20):
            get(nx, "/")
        st, body = nx.admin_get("/metrics")
        self.assertEqual(st, 200)
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, "promtool check metrics: %s %s" % (r.stdout.decode(), r.stderr.decode()))
        self.assertEqual((r.stdout + r.stderr).strip(), b"", "promtool lint findings: %r" % (r.stdout + r.stderr))
        m = H.parse_metrics(body.decode())
        self.assertGreaterEqual(H.metric(m, "nextup_peer_failures_total", peer=dead, **{"class": "refused"}), 1)
        self.assertEqual(H.metric(m, "nextup_peer_failures_total", peer=good.addr, **{"class": "refused"}), 0)
        for name in ("nextup_downstream_request_duration_seconds_bucket", "nextup_upstream_response_head_seconds_bucket",
                     "nextup_upstream_connect_seconds_bucket", "nextup_peer_responses_total", "nextup_build_info",
                     "process_cpu_seconds_total"):
            self.assertIn(name.encode(), body)


if __name__ == "__main__":
    unittest.main()
