"""TLS on both sides: verified upstream TLS to nginx replicas (names, IPs, SNI, ALPN, pooling,
session resumption), bad replica certificates retried elsewhere, mTLS upstream, TLS termination
on the listener with and without client certificates, plain HTTP on the TLS listener, startup
errors, and certificate rotation on disk under load.

Certificates are made at test time (tlsutil.CertFactory); replicas are nginx (Debian's
nginx-light) or tlsutil's strict Python replica where nginx cannot play the part (nginx never
fails a handshake for a missing client certificate: it answers 400 instead)."""

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness as H
import tlsutil as T

CERTS = None
TLS_VARS = ["NEXTUP_UPSTREAM_TLS", "NEXTUP_UPSTREAM_CA_FILE", "NEXTUP_UPSTREAM_SNI", "NEXTUP_UPSTREAM_TLS_VERIFY",
            "NEXTUP_UPSTREAM_CERT_FILE", "NEXTUP_UPSTREAM_KEY_FILE", "NEXTUP_TLS_CERT_FILE", "NEXTUP_TLS_KEY_FILE",
            "NEXTUP_TLS_CLIENT_CA_FILE", "NEXTUP_TLS_RELOAD_MS"]
TLS_FAILURES = "nextup_upstream_tls_failures_total"


def setUpModule():
    global CERTS
    if not os.access(T.NGINX, os.X_OK):
        raise unittest.SkipTest("nginx is not installed (%s): no TLS replicas" % T.NGINX)
    CERTS = T.CertFactory()


def tearDownModule():
    if CERTS is not None:
        CERTS.cleanup()


def tls_failures(m):
    """{reason: n} of nextup_upstream_tls_failures_total from parsed /metrics."""
    out = {}
    for k, v in m.items():
        mm = re.match(r'%s\{reason="([^"]*)"\}$' % TLS_FAILURES, k)
        if mm:
            out[mm.group(1)] = int(v)
    return out


def upstream_env(ca=True, **extra):
    env = {"NEXTUP_UPSTREAM_TLS": "on", "NEXTUP_LOG_LEVEL": "info"}
    if ca:
        env["NEXTUP_UPSTREAM_CA_FILE"] = CERTS.ca.cert
    env.update(extra)
    return env


def listener_env(cert=None, **extra):
    cert = cert or CERTS.listener
    env = {"NEXTUP_TLS_CERT_FILE": cert.cert, "NEXTUP_TLS_KEY_FILE": cert.key, "NEXTUP_LOG_LEVEL": "info"}
    env.update(extra)
    return env


class TLSCase(H.NextupCase):

    def nginx(self, name, cert, client_ca=None, protocols="TLSv1.2 TLSv1.3", keepalive="60s", big_bytes=0,
              status=200):
        r = T.NginxTLSReplica(name, cert, client_ca=client_ca, protocols=protocols, keepalive=keepalive,
                              big_bytes=big_bytes, status=status)
        self.addCleanup(self._nginx_cleanup, r)
        return r

    def _nginx_cleanup(self, r):
        r.stop()
        if not self._ok():
            sys.stderr.write("\n----- nginx %s (%s) access log -----\n" % (r.name, r.cert.name))
            for e in r.access_entries()[-30:]:
                sys.stderr.write("%r\n" % e)
            text = r.log_text().strip()
            if text:
                sys.stderr.write("----- nginx %s error log (tail) -----\n%s\n" % (r.name, text[-3000:]))
        r.cleanup()

    def strict(self, name, cert, client_ca=None, min_tls=None, max_tls=None):
        r = T.StrictReplica(name, cert, client_ca=client_ca, min_tls=min_tls, max_tls=max_tls)
        self.addCleanup(self._strict_cleanup, r)
        return r

    def _strict_cleanup(self, r):
        r.stop()
        if not self._ok():
            sys.stderr.write("\n----- strict replica %s stats %r; stderr -----\n%s\n" % (r.name, r.stats(),
                                                                                      r.err_text()[-2000:]))
        r.cleanup()

    def tls_conn(self, nx, ctx=None, server_hostname="localhost", timeout=H.SOCK_TIMEOUT):
        c = T.TLSConn(nx.listen_port, ctx or T.client_context(ca=CERTS.ca), server_hostname=server_hostname,
                      timeout=timeout)
        self.addCleanup(c.close)
        return c

    def tls_get(self, nx, target="/", ctx=None, server_hostname="localhost", timeout=H.SOCK_TIMEOUT):
        """One GET on a fresh TLS connection to nextup's listener: (Response, TLSConn closed)."""
        c = self.tls_conn(nx, ctx, server_hostname, timeout)
        c.send(H.request_bytes("GET", target, host="localhost:%d" % nx.listen_port))
        r = c.read_response()
        c.close()
        return r, c

    def tls_attempt(self, nx, ctx, server_hostname="localhost", timeout=5.0):
        """A GET over TLS that may be refused: ('ok', Response) or ('refused', why). With TLS 1.3
        a refused client certificate shows on the first read, after the client's handshake."""
        try:
            c = T.TLSConn(nx.listen_port, ctx, server_hostname=server_hostname, timeout=timeout)
        except socket.timeout as e:
            return "hung", "handshake did not finish within %.0f s: %r" % (timeout, e)
        except (ssl.SSLError, OSError) as e:
            return "refused", "handshake: %r" % e
        try:
            c.send(H.request_bytes("GET", "/", host="localhost:%d" % nx.listen_port))
            return "ok", c.read_response()
        except socket.timeout as e:
            return "hung", "no answer and no close within %.0f s: %r" % (timeout, e)
        except (ssl.SSLError, OSError, H.ConnectionClosed) as e:
            return "refused", "after the handshake: %r" % e
        finally:
            c.close()

    def stop_nextup(self, nx):
        """Stops <nx> now (its cleanup then finds it gone, as expected)."""
        nx.expect_exit = True
        nx.stop()

    def wait_log(self, nx, pred, timeout, since=0):
        """Polls nextup's stderr (from offset <since>) until pred(text) is true; the text, or None."""
        deadline = time.monotonic() + timeout
        while True:
            text = nx.stderr_text()[since:]
            if pred(text):
                return text
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def get_many(self, nx, n, pause=0.0, keepalive=False):
        """n GETs through nextup (plain listener): fresh connections, or one keep-alive one."""
        out = []
        c = self.connect(nx) if keepalive else None
        for i in range(n):
            if keepalive:
                c.send(H.request_bytes("GET", "/g/%d" % i))
                out.append(c.read_response())
            else:
                out.append(self.roundtrip(nx, "GET", "/g/%d" % i))
            if pause:
                time.sleep(pause)
        return out


# --------------------------------------------------------------------------
# upstream TLS


class UpstreamTLSTest(TLSCase):

    def test_help_lists_tls_variables(self):
        p = subprocess.run([H.nextup_bin(), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                           env=H.base_env())
        text = (p.stdout + p.stderr).decode("utf-8", "replace")
        missing = [v for v in TLS_VARS if v not in text]
        self.assertEqual(missing, [], "nextup --help does not mention %s (no TLS support built?)" % missing)

    def test_verified_by_host_name_pooled(self):
        r1 = self.nginx("tls1", CERTS.server)
        r2 = self.nginx("tls2", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % r1.port, "localhost:%d" % r2.port], env=upstream_env())
        resps = self.get_many(nx, 20)
        for i, r in enumerate(resps):
            self.assertEqual(r.status, 200, "GET %d: %r %r" % (i, r, r.body[:200]))
            self.assertIn(r.get("x-backend"), ("tls1", "tls2"))
            self.assertEqual(r.body, (r.get("x-backend") + "\n").encode())
        deadline = time.monotonic() + 3
        while len(r1.access_entries()) + len(r2.access_entries()) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)  # nginx logs a request after sending its response
        entries = {"tls1": r1.access_entries(), "tls2": r2.access_entries()}
        self.assertEqual(sum(len(e) for e in entries.values()), 20, "requests at the replicas: %r" % entries)
        conns = set()
        for name, es in entries.items():
            for e in es:
                conns.add((name, e["conn"]))
                self.assertIn(e["proto"], ("TLSv1.2", "TLSv1.3"), "%s: %r" % (name, e))
                self.assertEqual(e["sni"], "localhost", "SNI should be the entry's host name: %r" % e)
                self.assertEqual(e["alpn"], "http/1.1", "ALPN http/1.1 should be offered and chosen: %r" % e)
        m = H.metrics(nx)
        connects = H.metric(m, "nextup_upstream_connects_total")
        reused = H.metric(m, "nextup_upstream_reused_total")
        print("\n  20 GETs over upstream TLS: %d TLS connections at the replicas, nextup connects %d, reused %d"
              % (len(conns), connects, reused))
        # 2 workers x 2 replicas: a handful of connections, not one per request.
        self.assertLessEqual(len(conns), 6, "TLS connections not pooled: %d connections for 20 requests" % len(conns))
        self.assertLessEqual(connects, 6, "nextup_upstream_connects_total %d for 20 requests" % connects)
        self.assertGreaterEqual(reused, 14)
        self.assertEqual(sum(tls_failures(m).values()), 0, "TLS failures: %r" % tls_failures(m))

    def test_pooled_tls_connection_closed_by_replica(self):
        # nginx closes idle keep-alive connections after 1 s (close_notify, FIN): requests after
        # that, GET and POST, must not fail on the dead pooled TLS connection.
        r = self.nginx("short-ka", CERTS.server, keepalive="1s")
        nx = self.start_nextup(["localhost:%d" % r.port], workers=1, env=upstream_env())
        for round_ in range(3):
            resp = self.roundtrip(nx, "GET", "/warm/%d" % round_)
            self.assertEqual(resp.status, 200, "warm-up %d: %r" % (round_, resp))
            time.sleep(1.4)
            method, body = ("GET", None) if round_ % 2 == 0 else ("POST", b"payload %d" % round_)
            resp = self.roundtrip(nx, method, "/after-idle/%d" % round_, body=body)
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "short-ka"),
                             "%s after the replica closed the pooled TLS connection: %r %r"
                             % (method, resp, resp.body[:200]))

    def test_large_bodies_through_tls_on_both_sides(self):
        # Downloads from nginx; uploads to the strict replica, which reads the whole body before it
        # answers with its digest (nginx's `return` answers before the body arrives).
        r = self.nginx("big", CERTS.server, big_bytes=6 * H.MIB)
        up = self.strict("upload", CERTS.server)
        env = dict(upstream_env(), **listener_env())
        nx = self.start_nextup(["localhost:%d" % r.port], env=env)
        c = self.tls_conn(nx)
        for i in range(2):
            c.send(H.request_bytes("GET", "/big", host="localhost"))
            resp = c.read_response()
            self.assertEqual((resp.status, len(resp.body)), (200, 6 * H.MIB), "GET /big %d: %r" % (i, resp))
            self.assertEqual(H.sha256(resp.body), r.big_sha256, "GET /big %d: body differs" % i)
        nx2 = self.start_nextup(["localhost:%d" % up.port], env=env)
        c = self.tls_conn(nx2)
        for size in (1000, 3 * H.MIB, 200000):
            body = os.urandom(size)
            c.send(H.request_bytes("POST", "/upload", host="localhost", body=body))
            resp = c.read_response()
            self.assertEqual((resp.status, resp.body), (200, b"upload %d %s\n" % (size, H.sha256(body).encode())),
                             "POST %d bytes: %r" % (size, resp))

    def test_concurrent_clients_tls_both_sides(self):
        r1 = self.nginx("c1", CERTS.server)
        r2 = self.nginx("c2", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % r1.port, "localhost:%d" % r2.port],
                               env=dict(upstream_env(NEXTUP_LOG_LEVEL="warn"), **listener_env(NEXTUP_LOG_LEVEL="warn")))
        results = []
        lock = threading.Lock()
        deadline = time.monotonic() + 30

        def client(tid):
            ctx = T.client_context(ca=CERTS.ca)
            c = None
            for i in range(25):
                if time.monotonic() > deadline:
                    break
                try:
                    if c is None or i % 5 == 0:  # a new TLS connection now and then, keep-alive otherwise
                        if c is not None:
                            c.close()
                        c = T.TLSConn(nx.listen_port, ctx, timeout=10)
                    c.send(H.request_bytes("GET", "/t/%d/%d" % (tid, i), host="localhost"))
                    resp = c.read_response()
                    out = (resp.status, resp.get("x-backend"))
                except (ssl.SSLError, OSError, H.ConnectionClosed, AssertionError) as e:
                    out = ("error", "/t/%d/%d: %r" % (tid, i, e))
                    if c is not None:
                        c.close()
                    c = None
                with lock:
                    results.append(out)
            if c is not None:
                c.close()

        running = H.run_threads(client, [(t,) for t in range(8)], timeout=40)
        self.assertEqual(running, [], "clients still running after 40 s")
        bad = [x for x in results if x[0] != 200]
        print("\n  8 TLS clients x 25 requests over upstream TLS: %d answers, %d not 200" % (len(results), len(bad)))
        self.assertEqual(len(results), 200, "clients did not finish in time")
        if bad:
            # Which replica, if any, answered the requests that failed (nginx access logs)?
            seen = []
            for x in bad:
                path = x[1].split(":")[0] if x[0] == "error" else None
                for r in (r1, r2):
                    seen += ["%s: %r" % (r.name, e) for e in r.access_entries()
                             if path and e["request"].startswith("GET %s " % path)]
            self.fail("%d of 200 requests failed: %r; the replicas logged them: %s"
                      % (len(bad), bad[:5], seen or "no"))
        self.assertEqual({x[1] for x in results}, {"c1", "c2"})

    def test_concurrent_first_requests_on_fresh_upstream_tls(self):
        # A fresh nextup (empty pool, no session yet) and 8 clients at once: 8 TLS connections to
        # 2 replicas are made concurrently (TLS 1.3: tickets after the handshake). Ten rounds.
        # This caught a stale write callback: libevent's OpenSSL bufferevent defers it, so the one
        # from a pooled connection's previous request ran after the next request was queued and
        # turned writing off with that request unsent.
        r1 = self.nginx("f1", CERTS.server)
        r2 = self.nginx("f2", CERTS.server)
        failed_rounds = []
        for rnd in range(10):
            nx = self.start_nextup(["localhost:%d" % r1.port, "localhost:%d" % r2.port],
                                   env=upstream_env(NEXTUP_LOG_LEVEL="warn"))
            bad = []
            lock = threading.Lock()

            def client(tid):
                c = None
                try:
                    c = H.RawConn(nx.listen_port, timeout=5)
                    for i in range(2):
                        c.send(H.request_bytes("GET", "/r%d/t%d/%d" % (rnd, tid, i)))
                        resp = c.read_response()
                        if resp.status != 200:
                            with lock:
                                bad.append("/r%d/t%d/%d: %d %r" % (rnd, tid, i, resp.status, resp.body[:100]))
                except (OSError, H.ConnectionClosed, AssertionError) as e:
                    with lock:
                        bad.append("/r%d/t%d: %r" % (rnd, tid, e))
                finally:
                    if c is not None:
                        c.close()

            if H.run_threads(client, [(t,) for t in range(8)], timeout=15):
                bad.append("round %d: clients still running after 15 s" % rnd)
            if bad:
                failed_rounds.append((rnd, bad))
            self.stop_nextup(nx)
        self.assertEqual(failed_rounds, [], "%d of 10 rounds had failed or hung requests (first requests over "
                         "concurrently made upstream TLS connections): %r" % (len(failed_rounds), failed_rounds[:3]))

    def test_replica_503_over_tls_retried_and_never_pooled(self):
        # The response hook over TLS: a replica answering 503 has its response aborted before any
        # byte goes downstream and the GET retried on the other replica; the aborted TLS
        # connection is closed, not pooled. A POST without Idempotency-Key is not replayed: the
        # client gets the replica's own 503, unchanged. (Gateway errors do not eject here, so that
        # the 503 replica keeps being picked.)
        bad = self.nginx("down", CERTS.server, status=503)
        good = self.nginx("up", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % bad.port, "localhost:%d" % good.port],
                               env=upstream_env(NEXTUP_BPF="off", NEXTUP_EJECT_GATEWAY_ERRORS="0"), workers=1)
        m0 = H.metrics(nx)
        for i, r in enumerate(self.get_many(nx, 20, keepalive=True)):
            self.assertEqual((r.status, r.get("x-backend"), r.body), (200, "up", b"up\n"), "GET %d: %r" % (i, r))
        m1 = H.metrics(nx)
        status_retries = H.retry_counts(m1)["retries"]["status"] - H.retry_counts(m0)["retries"]["status"]
        at_bad = len(bad.wait_entries(status_retries)) if status_retries else 0
        print("\n  20 GETs, one replica answering 503 over TLS: %d retried on status, %d requests at it"
              % (status_retries, at_bad))
        self.assertGreater(status_retries, 0, "no GET went to the 503 replica: the test proved nothing")
        self.assertEqual(at_bad, status_retries, "every request the 503 replica saw should have been retried")
        # Each aborted response closed its TLS connection: one new connection per 503 answer.
        conns = {e["conn"] for e in bad.access_entries()}
        self.assertEqual(len(conns), at_bad, "an aborted TLS connection was reused: %r" % bad.access_entries())
        # A POST that lands on the 503 replica is not replayed: its 503 comes back unchanged.
        seen_503 = None
        for i in range(12):
            r = self.roundtrip(nx, "POST", "/p/%d" % i, body=b"x" * 10)
            if r.status == 503:
                seen_503 = r
                break
            self.assertEqual((r.status, r.get("x-backend")), (200, "up"))
        self.assertIsNotNone(seen_503, "12 POSTs never reached the 503 replica")
        self.assertEqual((seen_503.get("x-backend"), seen_503.body), ("down", b"down\n"),
                         "the replica's 503 was not passed on unchanged: %r %r" % (seen_503, seen_503.body))

    def test_ip_entry_with_sni(self):
        r = self.nginx("sni", CERTS.server)
        nx = self.start_nextup([r.addr], env=upstream_env(NEXTUP_UPSTREAM_SNI="replica.test"))
        for i, resp in enumerate(self.get_many(nx, 5)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "sni"), "GET %d: %r %r" % (i, resp, resp.body))
        for e in r.wait_entries(5):
            self.assertEqual(e["sni"], "replica.test", "NEXTUP_UPSTREAM_SNI not sent: %r" % e)

    def test_ip_entry_without_sni_checks_ip_san(self):
        r = self.nginx("ip", CERTS.server)
        nx = self.start_nextup([r.addr], env=upstream_env())
        for i, resp in enumerate(self.get_many(nx, 5)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "ip"), "GET %d: %r %r" % (i, resp, resp.body))
        for e in r.wait_entries(5):
            self.assertIn(e["sni"], ("", "-"), "an IP entry should send no SNI: %r" % e)

    def test_sni_name_not_in_certificate_refused(self):
        # The certificate has replica.test and localhost, not elsewhere.test: verification fails.
        r = self.nginx("sni-bad", CERTS.server)
        nx = self.start_nextup([r.addr], env=upstream_env(NEXTUP_UPSTREAM_SNI="elsewhere.test"))
        resp = self.roundtrip(nx, "GET", "/")
        self.assertPlainError(resp, 502)
        self.assertEqual(r.access_entries(), [], "the request reached a replica whose name did not verify")
        self.assertGreater(tls_failures(H.metrics(nx)).get("verify", 0), 0)

    def test_session_resumption(self):
        # No pool: every request is a new TLS connection; all but the first should resume the
        # session, with TLS 1.3 (tickets come after the handshake) as with TLS 1.2.
        for protocols in ("TLSv1.2 TLSv1.3", "TLSv1.2"):
            with self.subTest(replica_protocols=protocols):
                r = self.nginx("resume", CERTS.server, protocols=protocols)
                nx = self.start_nextup(["localhost:%d" % r.port], workers=1,
                                       env=upstream_env(NEXTUP_POOL_MAX_IDLE="0"))
                for i, resp in enumerate(self.get_many(nx, 8, pause=0.02)):
                    self.assertEqual(resp.status, 200, "GET %d: %r" % (i, resp))
                es = r.wait_entries(8)
                first = {}
                for e in es:
                    first.setdefault(e["conn"], e)
                conns = sorted(first)
                resumed = [c for c in conns if first[c]["reused"] == "r"]
                print("\n  pool off, replica %s: %d TLS connections, %d resumed (%s)"
                      % (protocols, len(conns), len(resumed),
                         " ".join("%s:%s" % (first[c]["proto"], first[c]["reused"]) for c in conns)))
                self.assertGreaterEqual(len(conns), 4, "with NEXTUP_POOL_MAX_IDLE=0 each request should use a "
                                        "new connection: %d connections for 8 requests" % len(conns))
                self.assertGreaterEqual(len(resumed), len(conns) - 2, "TLS sessions not resumed (replica %s): "
                                        "%d of %d connections" % (protocols, len(resumed), len(conns)))
                self.stop_nextup(nx)

    def test_wrong_name_and_expired_retried_on_good(self):
        wrong = self.nginx("wrongname", CERTS.wrongname)
        expired = self.nginx("expired", CERTS.expired)
        good = self.nginx("good", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % r.port for r in (wrong, expired, good)], env=upstream_env())
        for i, resp in enumerate(self.get_many(nx, 40, pause=0.02)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "good"),
                             "GET %d: %r %r" % (i, resp, resp.body[:200]))
        self.assertEqual(wrong.access_entries(), [], "a request reached the wrong-name replica")
        self.assertEqual(expired.access_entries(), [], "a request reached the expired replica")
        fails = tls_failures(H.metrics(nx))
        print("\n  wrong name + expired + good: TLS failures %r" % fails)
        self.assertGreater(fails.get("verify", 0), 0, "%s{reason=\"verify\"}: %r" % (TLS_FAILURES, fails))
        text = self.wait_log(nx, lambda t: "expired" in t.lower() and "mismatch" in t.lower(), 2.0)
        self.assertIsNotNone(text, "nextup's log should name OpenSSL's reasons ('certificate has expired', "
                             "'hostname mismatch'); it has:\n%s" % nx.stderr_text()[-3000:])

    def test_all_replicas_bad_502_says_why(self):
        wrong = self.nginx("wrongname", CERTS.wrongname)
        expired = self.nginx("expired", CERTS.expired)
        nx = self.start_nextup(["localhost:%d" % r.port for r in (wrong, expired)], env=upstream_env())
        for i in range(3):
            t0 = time.monotonic()
            resp = self.roundtrip(nx, "GET", "/bad/%d" % i)
            took = time.monotonic() - t0
            self.assertPlainError(resp, 502)
            self.assertLess(took, 3.0, "502 after %.2f s" % took)
            text = resp.body.decode("utf-8", "replace").lower()
            self.assertTrue(any(w in text for w in ("tls", "certificate", "verif", "handshake", "ssl")),
                            "the 502 should say the TLS handshake/verification failed, got %r" % resp.body)
        self.assertEqual(wrong.access_entries() + expired.access_entries(), [])
        self.assertGreater(tls_failures(H.metrics(nx)).get("verify", 0), 0)

    def test_without_ca_file_system_store_refuses_test_ca(self):
        r = self.nginx("untrusted", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % r.port], env=upstream_env(ca=False))
        resp = self.roundtrip(nx, "GET", "/")
        self.assertPlainError(resp, 502)
        self.assertEqual(r.access_entries(), [], "the test CA is not in the system store: nothing should pass")
        self.assertGreater(tls_failures(H.metrics(nx)).get("verify", 0), 0)

    def test_verify_off_accepts_wrong_name_with_warning(self):
        wrong = self.nginx("wrongname", CERTS.wrongname)
        expired = self.nginx("expired", CERTS.expired)
        # The harness's log level (warn): the warning must be a warning, not info.
        nx = self.start_nextup(["localhost:%d" % r.port for r in (wrong, expired)],
                               env=upstream_env(NEXTUP_UPSTREAM_TLS_VERIFY="off", NEXTUP_LOG_LEVEL="warn"))
        at_start = nx.stderr_text()
        self.assertTrue(re.search(r"(?i)verif", at_start),
                        "NEXTUP_UPSTREAM_TLS_VERIFY=off should log a warning at start; stderr: %r" % at_start)
        names = set()
        for i, resp in enumerate(self.get_many(nx, 20)):
            self.assertEqual(resp.status, 200, "GET %d: %r %r" % (i, resp, resp.body[:200]))
            names.add(resp.get("x-backend"))
        self.assertEqual(names, {"wrongname", "expired"}, "both unverifiable replicas should serve")
        self.assertEqual(sum(tls_failures(H.metrics(nx)).values()), 0)

    def test_tls11_only_replica_refused(self):
        old = self.strict("tls11", CERTS.server, min_tls="1.1", max_tls="1.1")
        good = self.nginx("good", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % old.port, "localhost:%d" % good.port], env=upstream_env())
        for i, resp in enumerate(self.get_many(nx, 20, pause=0.02)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "good"), "GET %d: %r" % (i, resp))
        st = old.stats()
        fails = tls_failures(H.metrics(nx))
        print("\n  TLS 1.1 replica: %r; nextup TLS failures %r" % (st, fails))
        self.assertEqual(st["handshakes"], 0, "nextup completed a TLS 1.1 handshake: %r" % st)
        self.assertGreater(st["handshake_failures"], 0, "nextup never tried the TLS 1.1 replica: %r" % st)
        self.assertGreater(sum(fails.values()), 0, "TLS failures not counted: %r" % fails)

    def test_silent_replica_handshake_times_out_retried(self):
        # A replica whose kernel accepts the connection but that never answers the ClientHello:
        # the handshake is bounded by NEXTUP_CONNECT_TIMEOUT_MS and another peer is tried.
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        good = self.nginx("good", CERTS.server)
        nx = self.start_nextup(["localhost:%d" % silent.getsockname()[1], "localhost:%d" % good.port],
                               env=upstream_env(NEXTUP_CONNECT_TIMEOUT_MS="300"))
        slowest = 0.0
        for i in range(10):
            t0 = time.monotonic()
            c = self.connect(nx, timeout=5)
            c.send(H.request_bytes("GET", "/s/%d" % i))
            try:
                resp = c.read_response()
            except socket.timeout:
                self.fail("GET %d: no response within 5 s: the TLS handshake with a silent replica is not bounded "
                          "by NEXTUP_CONNECT_TIMEOUT_MS (300 ms) and the request was not retried" % i)
            finally:
                c.close()
            slowest = max(slowest, time.monotonic() - t0)
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "good"), "GET %d: %r %r" % (i, resp, resp.body))
        print("\n  silent replica + good: slowest of 10 GETs %.3f s" % slowest)
        self.assertLess(slowest, 2.0, "a silent TLS replica held a request %.2f s (connect timeout 300 ms)" % slowest)

    def test_mtls_nginx_replica(self):
        r = self.nginx("mtls", CERTS.server, client_ca=CERTS.ca)
        # Without a client certificate: nginx completes the handshake and answers 400 ("No required SSL
        # certificate was sent"); a proxy that fails the handshake itself would answer 502. Never a 200.
        nx = self.start_nextup(["localhost:%d" % r.port], env=upstream_env())
        resp = self.roundtrip(nx, "GET", "/")
        self.assertIn(resp.status, (400, 502), "without NEXTUP_UPSTREAM_CERT_FILE: %r %r" % (resp, resp.body[:200]))
        self.assertTrue(all(e["client_verify"] != "SUCCESS" for e in r.access_entries()))
        self.stop_nextup(nx)
        nx2 = self.start_nextup(["localhost:%d" % r.port],
                                env=upstream_env(NEXTUP_UPSTREAM_CERT_FILE=CERTS.client.cert,
                                                 NEXTUP_UPSTREAM_KEY_FILE=CERTS.client.key))
        for i, resp in enumerate(self.get_many(nx2, 5)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "mtls"), "GET %d: %r %r" % (i, resp, resp.body))
        es = [e for e in r.wait_entries(5, pred=lambda e: e["status"] == 200) if e["status"] == 200]
        self.assertEqual(len(es), 5)
        for e in es:
            self.assertEqual(e["client_verify"], "SUCCESS", e)
            self.assertEqual(int(e["client_serial"], 16), CERTS.client.serial, e)

    def test_mtls_required_handshake_fails_retried_elsewhere(self):
        # The strict replica aborts the handshake without a client certificate (TLS 1.2 here,
        # so the failure is inside the handshake as nextup sees it).
        strict = self.strict("strict", CERTS.server, client_ca=CERTS.ca, max_tls="1.2")
        good = self.nginx("good", CERTS.server)
        ups = ["localhost:%d" % strict.port, "localhost:%d" % good.port]
        nx = self.start_nextup(ups, env=upstream_env())
        for i, resp in enumerate(self.get_many(nx, 20, pause=0.02)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "good"), "GET %d: %r" % (i, resp))
        st = strict.stats()
        fails = tls_failures(H.metrics(nx))
        print("\n  mTLS replica without client cert: %r; nextup TLS failures %r" % (st, fails))
        self.assertEqual(st["requests"], 0)
        self.assertGreater(st["handshake_failures"], 0, "nextup never tried the mTLS replica")
        self.assertGreater(sum(fails.values()), 0, "TLS failures not counted: %r" % fails)
        self.stop_nextup(nx)
        nx2 = self.start_nextup(ups, env=upstream_env(NEXTUP_UPSTREAM_CERT_FILE=CERTS.client.cert,
                                                      NEXTUP_UPSTREAM_KEY_FILE=CERTS.client.key))
        names = {}
        for i, resp in enumerate(self.get_many(nx2, 30, pause=0.01)):
            self.assertEqual(resp.status, 200, "GET %d: %r" % (i, resp))
            names[resp.get("x-backend")] = names.get(resp.get("x-backend"), 0) + 1
        self.assertGreater(names.get("strict", 0), 0, "with a client certificate the mTLS replica should serve: %r"
                           % names)

    def test_mtls_required_tls13_alone(self):
        # TLS 1.3: the replica's refusal arrives after nextup's side of the handshake is done.
        strict = self.strict("strict13", CERTS.server, client_ca=CERTS.ca, min_tls="1.3")
        nx = self.start_nextup(["localhost:%d" % strict.port], env=upstream_env())
        t0 = time.monotonic()
        resp = self.roundtrip(nx, "GET", "/")
        self.assertPlainError(resp, 502)
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertEqual(strict.stats()["requests"], 0)
        self.stop_nextup(nx)
        nx2 = self.start_nextup(["localhost:%d" % strict.port],
                                env=upstream_env(NEXTUP_UPSTREAM_CERT_FILE=CERTS.client.cert,
                                                 NEXTUP_UPSTREAM_KEY_FILE=CERTS.client.key))
        for i, resp in enumerate(self.get_many(nx2, 5)):
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "strict13"), "GET %d: %r" % (i, resp))


# --------------------------------------------------------------------------
# downstream TLS (termination on the listener)


class DownstreamTLSTest(TLSCase):

    def test_termination(self):
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env())
        resp, c = self.tls_get(nx)
        self.assertEqual((resp.status, resp.get("x-backend")), (200, "plain"), "%r %r" % (resp, resp.body[:200]))
        self.assertEqual(c.peer_serial(), CERTS.listener.serial)
        self.assertIn(c.version(), ("TLSv1.2", "TLSv1.3"))
        # Verified by IP (no SNI) too, each version allowed, and keep-alive over one TLS connection.
        resp, _ = self.tls_get(nx, server_hostname="127.0.0.1")
        self.assertEqual(resp.status, 200)
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = T.client_context(ca=CERTS.ca, min_version=v, max_version=v)
            resp, c = self.tls_get(nx, ctx=ctx)
            self.assertEqual((resp.status, c.version()), (200, v.name.replace("_", ".")), "TLS %s" % v.name)
        c = self.tls_conn(nx)
        for i in range(10):
            c.send(H.request_bytes("GET", "/ka/%d" % i, host="localhost"))
            resp = c.read_response()
            self.assertEqual(resp.status, 200, "keep-alive request %d over TLS: %r" % (i, resp))
        # A POST body through the TLS listener.
        body = os.urandom(200000)
        c.send(H.request_bytes("POST", "/echo", host="localhost", body=body))
        resp = c.read_response()
        self.assertEqual((resp.status, resp.body == body), (200, True), "POST over TLS: %r" % resp)
        # A client offering h2 first must not get h2 (nextup speaks HTTP/1.1 only).
        ctx = T.client_context(ca=CERTS.ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        c = self.tls_conn(nx, ctx=ctx)
        self.assertIn(c.sock.selected_alpn_protocol(), (None, "http/1.1"), "ALPN chose %r"
                      % c.sock.selected_alpn_protocol())
        c.send(H.request_bytes("GET", "/alpn", host="localhost"))
        self.assertEqual(c.read_response().status, 200)

    def test_forwarded_proto_https(self):
        b = self.start_backend("hdr")
        nx = self.start_nextup(b, env=listener_env())
        resp, _ = self.tls_get(nx, "/headers")
        self.assertEqual(resp.status, 200)
        m = re.search(rb"(?im)^x-forwarded-proto:\s*(\S+)", resp.body)
        self.assertIsNotNone(m, "no X-Forwarded-Proto in %r" % resp.body)
        self.assertEqual(m.group(1).lower(), b"https", "X-Forwarded-Proto on a TLS listener: %r" % m.group(1))

    def test_tls11_client_refused(self):
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env())
        ctx11 = T.client_context(ca=CERTS.ca, min_version=ssl.TLSVersion.TLSv1_1,
                                 max_version=ssl.TLSVersion.TLSv1_1, seclevel0=True)
        # Can this OpenSSL make a TLS 1.1 client at all? Ask a replica that accepts only TLS 1.1.
        old = self.strict("tls11-probe", CERTS.server, min_tls="1.1", max_tls="1.1")
        try:
            probe = T.TLSConn(old.port, ctx11, server_hostname="localhost", timeout=5)
            probe.close()
        except (ssl.SSLError, OSError) as e:
            H.skip_loudly(self, "this OpenSSL cannot make a TLS 1.1 client (%r): TLS 1.1 refusal untested" % e)
        how, why = self.tls_attempt(nx, ctx11)
        self.assertEqual(how, "refused", "a TLS 1.1 client got through: %r" % (why,))
        print("\n  TLS 1.1 client: %s" % why)
        resp, c = self.tls_get(nx)
        self.assertEqual(resp.status, 200, "a TLS 1.2+ client after the refused TLS 1.1 one")

    def test_client_certificate_required(self):
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env(NEXTUP_TLS_CLIENT_CA_FILE=CERTS.ca.cert))
        for label, cert in (("no client certificate", None), ("a certificate from another CA", CERTS.rogue)):
            for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = T.client_context(ca=CERTS.ca, cert=cert, min_version=v, max_version=v)
                how, why = self.tls_attempt(nx, ctx)
                self.assertEqual(how, "refused", "%s over %s: %r" % (label, v.name, why))
        ctx = T.client_context(ca=CERTS.ca, cert=CERTS.client)
        for i in range(3):
            resp, c = self.tls_get(nx, ctx=ctx)
            self.assertEqual((resp.status, resp.get("x-backend")), (200, "plain"), "with a client certificate: %r" % resp)
        self.assertIsNone(nx.proc.poll())

    def test_silent_client_does_not_hold_a_handshake_forever(self):
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env(NEXTUP_HEADER_TIMEOUT_MS="500", NEXTUP_IDLE_TIMEOUT_MS="1000"))
        silent = self.connect(nx, timeout=5)  # TCP only: no ClientHello
        partial = self.connect(nx, timeout=5)
        partial.send(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello record, then nothing
        resp, _ = self.tls_get(nx)  # others are served meanwhile
        self.assertEqual(resp.status, 200)
        t0 = time.monotonic()
        self.assertTrue(silent.wait_closed(5.0), "a client that sent nothing was kept open 5 s")
        self.assertTrue(partial.wait_closed(5.0), "a client that sent half a ClientHello was kept open 5 s")
        print("\n  silent TLS clients closed after %.2f s" % (time.monotonic() - t0))
        resp, _ = self.tls_get(nx)
        self.assertEqual(resp.status, 200)

    def test_completed_handshakes_not_logged_as_failures(self):
        # Clients that completed the handshake (and a request, or not) and then close the TCP
        # connection without close_notify (Python, many HTTP clients) had no handshake failure.
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env())
        mark = len(nx.stderr_text())
        for i in range(6):
            c = self.tls_conn(nx)
            if i % 2 == 0:
                c.send(H.request_bytes("GET", "/x/%d" % i, host="localhost"))
                self.assertEqual(c.read_response().status, 200)
            c.close()
        time.sleep(0.5)
        text = nx.stderr_text()[mark:]
        wrong = [l for l in text.splitlines() if re.search(r"(?i)handshake fail|not a TLS client", l)]
        self.assertEqual(wrong, [], "clients whose TLS handshake succeeded were logged as handshake failures")
        m = H.metrics(nx)
        if "nextup_downstream_tls_failures_total" in m:
            self.assertEqual(m["nextup_downstream_tls_failures_total"], 0,
                             "nextup_downstream_tls_failures_total counts clients that closed after a good handshake")

    def test_plain_http_on_tls_listener(self):
        b = self.start_backend("plain")
        nx = self.start_nextup(b, env=listener_env())
        resp, _ = self.tls_get(nx)
        self.assertEqual(resp.status, 200)
        mark = len(nx.stderr_text())
        t0 = time.monotonic()
        c = self.connect(nx, timeout=5)
        c.send(H.request_bytes("GET", "/plain"))
        closed = c.wait_closed(5.0)
        took = time.monotonic() - t0
        self.assertTrue(closed, "a plain HTTP request on the TLS listener: the connection stayed open 5 s "
                        "(got %r)" % bytes(c.buf[:200]))
        self.assertFalse(bytes(c.buf).startswith(b"HTTP/1.1 200"), "plain HTTP was served on the TLS listener")
        print("\n  plain HTTP on the TLS listener: closed after %.3f s, %d bytes back" % (took, len(c.buf)))
        c.close()
        # More of them, then TLS clients are still served.
        for i in range(10):
            c = self.connect(nx, timeout=5)
            c.send(b"GET / HTTP/1.0\r\n\r\n" if i % 2 else b"\x00garbage\r\n\r\n")
            self.assertTrue(c.wait_closed(5.0), "plain client %d not closed" % i)
            c.close()
        for i in range(5):
            resp, _ = self.tls_get(nx)
            self.assertEqual(resp.status, 200, "TLS client %d after plain ones: %r" % (i, resp))
        text = self.wait_log(nx, lambda t: re.search(r"(?i)tls|ssl|handshake", t) is not None, 2.0, since=mark)
        self.assertIsNotNone(text, "no log line about the failed handshake; new stderr: %r"
                             % nx.stderr_text()[mark:][-2000:])
        self.assertIsNone(nx.proc.poll())
        self.assertEqual(nx.admin_get("/readyz")[0], 200)


# --------------------------------------------------------------------------
# startup errors


def spawn_nextup(extra):
    env = H.base_env()
    env.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
                "NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(), "NEXTUP_WORKERS": "1",
                "NEXTUP_LOG_LEVEL": "warn"})
    env.update(extra)
    return subprocess.Popen([H.nextup_bin()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class StartupErrorTest(TLSCase):

    def test_bad_tls_files_exit_2_naming_the_variable(self):
        d = tempfile.mkdtemp(prefix="nextup-tls-bad-")
        self.addCleanup(shutil.rmtree, d, True)
        garbage = os.path.join(d, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("this is not a PEM file\n")
        missing = os.path.join(d, "missing.pem")
        other_key = CERTS.new_key("startup-other")
        L, C, CA = CERTS.listener, CERTS.client, CERTS.ca.cert
        up = {"NEXTUP_UPSTREAM_TLS": "on", "NEXTUP_UPSTREAM_CA_FILE": CA}
        cases = [
            # (what, env, variable(s) the line must name, words the line must hold or None). For a
            # missing file, OpenSSL's own reason is the errno text ("No such file or directory") it queues
            # before its generic "system lib".
            ("listener cert missing", {"NEXTUP_TLS_CERT_FILE": missing, "NEXTUP_TLS_KEY_FILE": L.key},
             ["NEXTUP_TLS_CERT_FILE"], "no such file"),
            ("listener key missing", {"NEXTUP_TLS_CERT_FILE": L.cert, "NEXTUP_TLS_KEY_FILE": missing},
             ["NEXTUP_TLS_KEY_FILE"], "no such file"),
            ("listener cert not PEM", {"NEXTUP_TLS_CERT_FILE": garbage, "NEXTUP_TLS_KEY_FILE": L.key},
             ["NEXTUP_TLS_CERT_FILE"], None),
            ("listener key not matching", {"NEXTUP_TLS_CERT_FILE": L.cert, "NEXTUP_TLS_KEY_FILE": other_key},
             ["NEXTUP_TLS_KEY_FILE", "NEXTUP_TLS_CERT_FILE"], "mismatch"),
            ("listener cert without key", {"NEXTUP_TLS_CERT_FILE": L.cert},
             ["NEXTUP_TLS_KEY_FILE", "NEXTUP_TLS_CERT_FILE"], None),
            ("client CA missing", {"NEXTUP_TLS_CERT_FILE": L.cert, "NEXTUP_TLS_KEY_FILE": L.key,
                                   "NEXTUP_TLS_CLIENT_CA_FILE": missing}, ["NEXTUP_TLS_CLIENT_CA_FILE"], "no such file"),
            ("client CA not PEM", {"NEXTUP_TLS_CERT_FILE": L.cert, "NEXTUP_TLS_KEY_FILE": L.key,
                                   "NEXTUP_TLS_CLIENT_CA_FILE": garbage}, ["NEXTUP_TLS_CLIENT_CA_FILE"], None),
            ("upstream CA missing", dict(up, NEXTUP_UPSTREAM_CA_FILE=missing), ["NEXTUP_UPSTREAM_CA_FILE"],
             "no such file"),
            ("upstream CA unreadable (not PEM)", dict(up, NEXTUP_UPSTREAM_CA_FILE=garbage),
             ["NEXTUP_UPSTREAM_CA_FILE"], None),
            ("upstream CA is a directory", dict(up, NEXTUP_UPSTREAM_CA_FILE=d), ["NEXTUP_UPSTREAM_CA_FILE"], None),
            ("upstream client key not matching", dict(up, NEXTUP_UPSTREAM_CERT_FILE=C.cert,
                                                      NEXTUP_UPSTREAM_KEY_FILE=other_key),
             ["NEXTUP_UPSTREAM_KEY_FILE", "NEXTUP_UPSTREAM_CERT_FILE"], "mismatch"),
            ("upstream client cert missing", dict(up, NEXTUP_UPSTREAM_CERT_FILE=missing,
                                                  NEXTUP_UPSTREAM_KEY_FILE=C.key), ["NEXTUP_UPSTREAM_CERT_FILE"],
             "no such file"),
            ("NEXTUP_UPSTREAM_TLS=maybe", {"NEXTUP_UPSTREAM_TLS": "maybe"}, ["NEXTUP_UPSTREAM_TLS"], "maybe"),
            ("NEXTUP_UPSTREAM_TLS_VERIFY=maybe", dict(up, NEXTUP_UPSTREAM_TLS_VERIFY="maybe"),
             ["NEXTUP_UPSTREAM_TLS_VERIFY"], "maybe"),
            ("NEXTUP_TLS_RELOAD_MS=soon", {"NEXTUP_TLS_RELOAD_MS": "soon"}, ["NEXTUP_TLS_RELOAD_MS"], "soon"),
        ]
        if os.geteuid() != 0:
            unreadable = os.path.join(d, "unreadable.key")
            shutil.copyfile(L.key, unreadable)
            os.chmod(unreadable, 0)
            cases.append(("listener key unreadable", {"NEXTUP_TLS_CERT_FILE": L.cert, "NEXTUP_TLS_KEY_FILE": unreadable},
                          ["NEXTUP_TLS_KEY_FILE"], None))
        procs = []
        try:
            for what, env, names, word in cases:
                procs.append((what, env, names, word, spawn_nextup(env)))
            deadline = time.monotonic() + 5.0
            results = []
            for what, env, names, word, p in procs:
                try:
                    out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
                    status = p.returncode
                except subprocess.TimeoutExpired:
                    H.stop_pid(p, wait=2)
                    out, err = p.communicate(timeout=5)
                    status = None
                results.append((what, names, word, status, err.decode("utf-8", "replace")))
        finally:
            for p in procs:
                H.stop_pid(p[-1], wait=2)
        for what, names, word, status, err in results:
            with self.subTest(what):
                self.assertEqual(status, 2, "%s: exit status %r (None: still running after 5 s); stderr %r"
                                 % (what, status, err[-600:]))
                lines = err.splitlines()
                self.assertEqual(len(lines), 1, "%s: want one stderr line, got %r" % (what, lines))
                self.assertTrue(any(n in lines[0] for n in names), "%s: the line should name %s: %r"
                                % (what, " or ".join(names), lines[0]))
                if word:
                    self.assertIn(word, lines[0].lower(), "%s: the line should say %r: %r" % (what, word, lines[0]))
            print("  %-36s -> %s: %s" % (what, status, err.strip()[:160]))


# --------------------------------------------------------------------------
# rotation


class Load:
    """<threads> clients making GETs on new TLS connections (a handshake each) until stop() or
    <max_seconds>; records (ok, serial, error)."""

    def __init__(self, port, threads=2, max_seconds=10.0):
        self.port = port
        self.records = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def _run(self, tid):
        ctx = T.client_context(ca=CERTS.ca)
        i = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            rec = {"t": time.monotonic(), "ok": False, "serial": None, "error": None}
            c = None
            try:
                c = T.TLSConn(self.port, ctx, server_hostname="localhost", timeout=5)
                rec["serial"] = c.peer_serial()
                c.send(H.request_bytes("GET", "/load/%d/%d" % (tid, i), host="localhost"))
                r = c.read_response()
                rec["ok"] = r.status == 200
                if not rec["ok"]:
                    rec["error"] = "status %d %r" % (r.status, r.body[:100])
            except (ssl.SSLError, OSError, H.ConnectionClosed, AssertionError) as e:
                rec["error"] = repr(e)
            finally:
                if c is not None:
                    c.close()
            with self.lock:
                self.records.append(rec)
            i += 1
            time.sleep(0.005)

    def failures(self):
        return [r for r in self.records if not r["ok"]]


class RotationTest(TLSCase):
    RELOAD_MS = 500

    def make_pairs(self):
        sans = ["DNS:localhost", "IP:127.0.0.1"]
        tag = "%d" % time.monotonic_ns()
        # Serials come from the CA's counter: unique, and known to the test (Cert.serial).
        return tuple(CERTS.leaf("rot%s-%s" % (x, tag), "localhost", sans) for x in "ABCD")

    def handshake_serial(self, nx):
        c = T.TLSConn(nx.listen_port, T.client_context(ca=CERTS.ca), server_hostname="localhost", timeout=5)
        try:
            return c.peer_serial()
        finally:
            c.close()

    def wait_serial(self, nx, want, timeout):
        """Handshakes until one presents <want>: seconds it took, or None; (serials seen)."""
        t0 = time.monotonic()
        seen = []
        while time.monotonic() - t0 < timeout:
            s = self.handshake_serial(nx)
            seen.append(s)
            if s == want:
                return time.monotonic() - t0, seen
            time.sleep(0.03)
        return None, seen

    def test_rotation_kubernetes_secret_under_load(self):
        a, b, c, d = self.make_pairs()
        tmp = tempfile.mkdtemp(prefix="nextup-rotation-")
        self.addCleanup(shutil.rmtree, tmp, True)
        secret = T.SecretDir(tmp)
        secret.update(a.cert, a.key)
        backend = self.start_backend("plain")
        nx = self.start_nextup(backend, env=listener_env(
            NEXTUP_TLS_CERT_FILE=secret.cert, NEXTUP_TLS_KEY_FILE=secret.key,
            NEXTUP_TLS_RELOAD_MS=str(self.RELOAD_MS)))
        limit = 3 * self.RELOAD_MS / 1000.0
        self.assertEqual(self.handshake_serial(nx), a.serial)
        ka = self.tls_conn(nx)
        ka.send(H.request_bytes("GET", "/ka/0", host="localhost"))
        self.assertEqual(ka.read_response().status, 200)
        self.assertEqual(ka.peer_serial(), a.serial)

        load = Load(nx.listen_port, threads=2, max_seconds=12.0).start()
        self.addCleanup(load.stop)
        time.sleep(0.3)
        secret.update(b.cert, b.key)
        took_b, seen = self.wait_serial(nx, b.serial, limit)
        self.assertIsNotNone(took_b, "cert B not presented within %.1f s of the rename (serials seen: %s)"
                             % (limit, sorted({hex(s) for s in seen if s})))
        # The keep-alive connection opened with cert A keeps working.
        for i in range(1, 4):
            ka.send(H.request_bytes("GET", "/ka/%d" % i, host="localhost"))
            self.assertEqual(ka.read_response().status, 200, "keep-alive TLS connection after rotation")

        # A broken pair (certificate C with A's key): refused, B stays.
        mark = len(nx.stderr_text())
        secret.update(c.cert, a.key)
        t0 = time.monotonic()
        serials = set()
        while time.monotonic() - t0 < limit + 2 * self.RELOAD_MS / 1000.0:
            serials.add(self.handshake_serial(nx))
            time.sleep(0.05)
        self.assertEqual(serials, {b.serial}, "after a broken pair, handshakes presented %s (want only B %#x)"
                         % (sorted(hex(s) for s in serials if s), b.serial))
        refusal = re.compile(r"(?i)refus|reject|mismatch|invalid")
        logged = self.wait_log(nx, lambda t: refusal.search(t) is not None, 1.0, since=mark)
        self.assertIsNotNone(logged, "no log line saying the new pair was refused; new stderr: %r"
                             % nx.stderr_text()[mark:][-2000:])
        refused_line = [l for l in logged.splitlines() if refusal.search(l)]

        # A good pair again (D): taken.
        secret.update(d.cert, d.key)
        took_d, seen = self.wait_serial(nx, d.serial, limit)
        self.assertIsNotNone(took_d, "cert D not presented within %.1f s after the broken pair (seen %s)"
                             % (limit, sorted({hex(s) for s in seen if s})))
        time.sleep(0.2)
        load.stop()
        ka.send(H.request_bytes("GET", "/ka/last", host="localhost"))
        self.assertEqual(ka.read_response().status, 200, "keep-alive TLS connection after three rotations")
        self.assertEqual(ka.peer_serial(), a.serial)

        fails = load.failures()
        by_serial = {}
        for r in load.records:
            by_serial[r["serial"]] = by_serial.get(r["serial"], 0) + 1
        print("\n  rotation: B after %.2f s, D after %.2f s; load %d requests, %d failed; by serial %s; "
              "refusal logged: %r" % (took_b, took_d, len(load.records), len(fails),
                                      {hex(k) if k else k: v for k, v in by_serial.items()}, refused_line[:1]))
        self.assertGreater(len(load.records), 20, "the load made too few requests")
        self.assertEqual(fails, [], "requests failed during rotation: %r" % fails[:5])
        self.assertTrue({a.serial, b.serial, d.serial} >= set(by_serial), "unexpected certificates: %r" % by_serial)
        self.assertNotIn(c.serial, by_serial)
        m = H.metrics(nx)
        for name, least in (("nextup_tls_reloads_total", 2), ("nextup_tls_reload_failures_total", 1)):
            if name in m:
                self.assertGreaterEqual(m[name], least, "%s = %d" % (name, m[name]))

    def test_rotation_by_renaming_each_file(self):
        # Files replaced one by one (cert, then key): in between, the pair does not match; it must be
        # refused (or not seen), never break handshakes, and B must be taken once both are in place.
        a, b, _, _ = self.make_pairs()
        tmp = tempfile.mkdtemp(prefix="nextup-rotation-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        shutil.copyfile(a.cert, cert)
        shutil.copyfile(a.key, key)
        backend = self.start_backend("plain")
        nx = self.start_nextup(backend, env=listener_env(
            NEXTUP_TLS_CERT_FILE=cert, NEXTUP_TLS_KEY_FILE=key, NEXTUP_TLS_RELOAD_MS=str(self.RELOAD_MS)))
        limit = 3 * self.RELOAD_MS / 1000.0
        self.assertEqual(self.handshake_serial(nx), a.serial)
        load = Load(nx.listen_port, threads=2, max_seconds=8.0).start()
        self.addCleanup(load.stop)
        time.sleep(0.2)
        shutil.copyfile(b.cert, cert + ".tmp")
        os.rename(cert + ".tmp", cert)
        time.sleep(self.RELOAD_MS / 1000.0 * 1.5)  # at least one poll sees the mismatched pair
        shutil.copyfile(b.key, key + ".tmp")
        os.rename(key + ".tmp", key)
        took, seen = self.wait_serial(nx, b.serial, limit)
        time.sleep(0.2)
        load.stop()
        self.assertIsNotNone(took, "cert B not presented within %.1f s of the key's rename (seen %s)"
                             % (limit, sorted({hex(s) for s in seen if s})))
        fails = load.failures()
        print("\n  rename rotation: B after %.2f s; load %d requests, %d failed" % (took, len(load.records), len(fails)))
        self.assertEqual(fails, [], "requests failed during rotation: %r" % fails[:5])
        self.assertGreater(len(load.records), 20)


    def test_upstream_client_certificate_rotation(self):
        # The mTLS client certificate nextup presents is rotated on disk; new upstream connections
        # (pool off: one per request) present the new one, resumed sessions included.
        c1 = CERTS.leaf("upclient1-%d" % time.monotonic_ns(), "nextup-client-1", [], usage="client")
        c2 = CERTS.leaf("upclient2-%d" % time.monotonic_ns(), "nextup-client-2", [], usage="client")
        tmp = tempfile.mkdtemp(prefix="nextup-rotation-")
        self.addCleanup(shutil.rmtree, tmp, True)
        secret = T.SecretDir(tmp, "client")
        secret.update(c1.cert, c1.key)
        r = self.nginx("mtls", CERTS.server, client_ca=CERTS.ca)
        nx = self.start_nextup(["localhost:%d" % r.port], workers=1, env=upstream_env(
            NEXTUP_UPSTREAM_CERT_FILE=secret.cert, NEXTUP_UPSTREAM_KEY_FILE=secret.key,
            NEXTUP_POOL_MAX_IDLE="0", NEXTUP_TLS_RELOAD_MS=str(self.RELOAD_MS)))
        for i in range(3):
            resp = self.roundtrip(nx, "GET", "/c1/%d" % i)
            self.assertEqual(resp.status, 200, "%r %r" % (resp, resp.body[:200]))
        secret.update(c2.cert, c2.key)
        t0 = time.monotonic()
        limit = 3 * self.RELOAD_MS / 1000.0
        took = None
        while time.monotonic() - t0 < limit:
            resp = self.roundtrip(nx, "GET", "/c2")
            self.assertEqual(resp.status, 200, "during client certificate rotation: %r %r" % (resp, resp.body[:200]))
            es = r.wait_entries(1, pred=lambda e: e["request"].startswith("GET /c2 "))
            if es and es[-1]["client_serial"] != "-" and int(es[-1]["client_serial"], 16) == c2.serial:
                took = time.monotonic() - t0
                break
            time.sleep(0.05)
        self.assertIsNotNone(took, "the replica did not see the new client certificate within %.1f s: last entries %r"
                             % (limit, r.access_entries()[-3:]))
        for i in range(5):
            resp = self.roundtrip(nx, "GET", "/after/%d" % i)
            self.assertEqual(resp.status, 200)
        is_after = lambda e: e["request"].startswith("GET /after/")  # noqa: E731
        last = [e for e in r.wait_entries(5, pred=is_after) if is_after(e)]
        self.assertEqual(len(last), 5, "the replica logged %d of the 5 requests after the rotation" % len(last))
        self.assertEqual({int(e["client_serial"], 16) for e in last}, {c2.serial},
                         "after the rotation every new connection should present the new certificate "
                         "(a resumed session keeps the old identity): %r" % last)
        print("\n  upstream client certificate rotated: new one seen after %.2f s" % took)

if __name__ == "__main__":
    unittest.main()
