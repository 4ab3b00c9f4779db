"""Configuration from the environment, --help, and the admin listener."""

import os
import re
import subprocess
import time
import unittest

import harness as H


def nextup_env(env_extra):
    env = H.base_env()
    env.update({
        "NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(),
        "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
        "NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(),
        "NEXTUP_WORKERS": "2",
        "NEXTUP_LOG_LEVEL": "warn",
    })
    for k, v in env_extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def spawn(env_extra, args=()):
    binary = H.nextup_bin()
    if not os.access(binary, os.X_OK):
        raise AssertionError("nextup binary %s is missing (make build/nextup)" % binary)
    return subprocess.Popen([binary] + list(args), env=nextup_env(env_extra), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, deadline):
    """Waits for <proc> until <deadline> (monotonic), then kills it by PID.
    (status, stdout, stderr); status is None when it did not exit by itself."""
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        H.stop_pid(proc, wait=2)
        out, err = proc.communicate(timeout=5)
        status = None
    return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def run_nextup(env_extra, args=(), timeout=5.0):
    return finish(spawn(env_extra, args), time.monotonic() + timeout)


BAD_VALUES = [
    ("NEXTUP_LISTEN", "nonsense"),
    ("NEXTUP_LISTEN", "127.0.0.1:99999"),
    ("NEXTUP_LISTEN", "127.0.0.1"),
    ("NEXTUP_ADMIN", "no-port-here"),
    ("NEXTUP_ADMIN", "127.0.0.1:-1"),
    ("NEXTUP_UPSTREAMS", "127.0.0.1:99999"),
    ("NEXTUP_UPSTREAMS", "127.0.0.1:0"),
    ("NEXTUP_UPSTREAMS", "[::1:8080"),
    ("NEXTUP_UPSTREAMS", "127.0.0.1:"),
    ("NEXTUP_WORKERS", "abc"),
    ("NEXTUP_WORKERS", "0"),
    ("NEXTUP_WORKERS", "2x"),
    ("NEXTUP_PROBE_PATH", "healthz"),
    ("NEXTUP_PROBE_PATH", "/a b"),
    ("NEXTUP_CONNECT_TIMEOUT_MS", "abc"),
    ("NEXTUP_CONNECT_TIMEOUT_MS", "-5"),
    ("NEXTUP_CONNECT_TIMEOUT_MS", "1.5"),
    ("NEXTUP_CONNECT_TIMEOUT_MS", "99999999999999999999"),
    ("NEXTUP_REQUEST_TIMEOUT_MS", "abc"),
    ("NEXTUP_REQUEST_TIMEOUT_MS", "-1"),
    ("NEXTUP_IDLE_TIMEOUT_MS", "soon"),
    ("NEXTUP_HEADER_TIMEOUT_MS", "10s"),
    ("NEXTUP_MAX_HEADER_BYTES", "100"),
    ("NEXTUP_MAX_HEADER_BYTES", "2000000"),
    ("NEXTUP_MAX_HEADER_BYTES", "lots"),
    ("NEXTUP_MAX_CONNECTIONS", "many"),
    ("NEXTUP_MAX_CONNECTIONS", "-1"),
    ("NEXTUP_MAX_RETRIES", "17"),
    ("NEXTUP_MAX_RETRIES", "abc"),
    ("NEXTUP_MAX_RETRIES", "-1"),
    ("NEXTUP_DRAIN_TIMEOUT_MS", "abc"),
    ("NEXTUP_DRAIN_TIMEOUT_MS", "-1"),
    ("NEXTUP_LOG_LEVEL", "loud"),
    ("NEXTUP_POOL_MAX_IDLE", "-1"),
    ("NEXTUP_POOL_MAX_IDLE", "10001"),
    ("NEXTUP_RETRY_BUFFER_BYTES", "-1"),
    ("NEXTUP_RETRY_BUFFER_BYTES", "67108865"),
    ("NEXTUP_RETRY_BUFFER_BYTES", "big"),
]


# A misspelled name, and the known one the error line must offer.
MISSPELLED = [
    ("NEXTUP_WORKER", "4", "NEXTUP_WORKERS"),
    ("NEXTUP_MAX_RETRY", "5", "NEXTUP_MAX_RETRIES"),
    ("NEXTUP_RETRYON", "5xx", "NEXTUP_RETRY_ON"),
    ("NEXTUP_LOGLEVEL", "debug", "NEXTUP_LOG_LEVEL"),
    ("NEXTUP_CONECT_TIMEOUT_MS", "100", "NEXTUP_CONNECT_TIMEOUT_MS"),
    ("NEXTUP_REQEUST_TIMEOUT_MS", "100", "NEXTUP_REQUEST_TIMEOUT_MS"),
    ("NEXTUP_ACCESSLOG", "off", "NEXTUP_ACCESS_LOG"),
]

# Settings that contradict each other: every variable named must be in the error line.
CONTRADICTIONS = [
    ({"NEXTUP_EJECT_BASE_MS": "9000", "NEXTUP_EJECT_MAX_MS": "2000"},
     ["NEXTUP_EJECT_BASE_MS", "NEXTUP_EJECT_MAX_MS"]),
    ({"NEXTUP_EJECT_BASE_MS": "9000"}, ["NEXTUP_EJECT_BASE_MS", "NEXTUP_EJECT_MAX_MS"]),  # above the default max
    ({"NEXTUP_RETRY_BACKOFF_BASE_MS": "500", "NEXTUP_RETRY_BACKOFF_MAX_MS": "100"},
     ["NEXTUP_RETRY_BACKOFF_BASE_MS", "NEXTUP_RETRY_BACKOFF_MAX_MS"]),
    ({"NEXTUP_PER_TRY_TIMEOUT_MS": "5000", "NEXTUP_REQUEST_TIMEOUT_MS": "1000"},
     ["NEXTUP_PER_TRY_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS"]),
    ({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_ADMIN": "SAME"},
     ["NEXTUP_LISTEN", "NEXTUP_ADMIN"]),
    ({"NEXTUP_UPSTREAM_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"},
     ["NEXTUP_UPSTREAM_CA_FILE", "NEXTUP_UPSTREAM_TLS"]),
]


def run_all(cases, timeout=3.0):
    """Starts every env of <cases> at once; [(env, (status, out, err))]."""
    procs = []
    try:
        for env in cases:
            procs.append((env, spawn(env)))
        deadline = time.monotonic() + timeout
        return [(env, finish(p, deadline)) for env, p in procs]
    finally:
        for _, p in procs:
            H.stop_pid(p, wait=2)


class ConfigTest(H.NextupCase):

    def test_misspelled_variable_exits_2_naming_the_nearest(self):
        results = run_all([{name: value} for name, value, _ in MISSPELLED])
        for (name, value, nearest), (_, (status, out, err)) in zip(MISSPELLED, results):
            with self.subTest(name=name):
                self.assertEqual(status, 2, "%s=%s: exit %r (None = still running: the typo was ignored), "
                                 "stderr %r" % (name, value, status, err[-500:]))
                lines = err.splitlines()
                self.assertEqual(len(lines), 1, lines)
                self.assertIn(name + "=", lines[0])
                self.assertIn(nearest, lines[0])

    def test_kubernetes_service_links_are_not_typos(self):
        # A Service named "nextup" in the namespace gives every container these (enableServiceLinks).
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_SERVICE_HOST": "10.96.0.10", "NEXTUP_SERVICE_PORT": "15001",
                                       "NEXTUP_SERVICE_PORT_HTTP": "15001", "NEXTUP_PORT": "tcp://10.96.0.10:15001",
                                       "NEXTUP_PORT_15001_TCP": "tcp://10.96.0.10:15001",
                                       "NEXTUP_PORT_15001_TCP_PROTO": "tcp", "NEXTUP_BPF": "off"})
        self.assertEqual(self.roundtrip(nx, "GET", "/").status, 200)

    def test_contradictory_values_exit_2_naming_both(self):
        cases = []
        for env, _ in CONTRADICTIONS:
            env = dict(env)
            if env.get("NEXTUP_ADMIN") == "SAME":
                env["NEXTUP_ADMIN"] = env["NEXTUP_LISTEN"]
            cases.append(env)
        for env, (status, out, err) in run_all(cases):
            names = [n for e, n in CONTRADICTIONS if set(e) == set(env)][0]
            with self.subTest(env=env):
                self.assertEqual(status, 2, "%r: exit %r (None = started anyway), stderr %r" % (env, status, err[-500:]))
                lines = err.splitlines()
                self.assertEqual(len(lines), 1, lines)
                for n in names:
                    self.assertIn(n, lines[0])

    def test_workers_above_the_most_clamp_with_a_warning(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b, workers=65, env={"NEXTUP_BPF": "off"})
        self.assertEqual(self.roundtrip(nx, "GET", "/").status, 200)
        warn = [l for l in nx.stderr_text().splitlines() if "NEXTUP_WORKERS" in l]
        self.assertEqual(len(warn), 1, nx.stderr_text()[-2000:])
        self.assertIn(" warn ", warn[0])
        self.assertIn("64", warn[0])

    def test_version(self):
        status, out, err = run_nextup({}, args=["--version"])
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"^nextup \d+\.\d+\.\d+ \(libevent [^,]+, OpenSSL [^,]+, libbpf [^)]+\)\n$")
        version = out.split()[1]
        # The first line nextup logs at info once started names the same version.
        b = self.start_backend("a")
        nx = self.start_nextup(b, env={"NEXTUP_LOG_LEVEL": "info", "NEXTUP_BPF": "off"})
        first = [l for l in nx.stderr_text().splitlines() if " info " in l][0]
        self.assertIn(" info nextup %s (" % version, first)
        self.assertIn("listening on", first)
        self.assertTrue(re.search(r"pid %d\b" % nx.pid, first), first)


    def test_help_lists_every_variable(self):
        status, out, err = run_nextup({}, args=["--help"])
        self.assertEqual(status, 0, "nextup --help exit status %r (stderr %r)" % (status, err[-500:]))
        text = out + err
        missing = [v for v in H.ALL_VARS if v not in text]
        self.assertEqual(missing, [], "--help does not mention %s" % missing)

    def test_missing_upstreams_exits_2(self):
        status, out, err = run_nextup({"NEXTUP_UPSTREAMS": None})
        self.assertEqual(status, 2, "missing NEXTUP_UPSTREAMS: exit %r, stderr %r" % (status, err))
        self.assertIn("NEXTUP_UPSTREAMS", err)

    def test_bad_values_exit_2_with_one_line(self):
        # All at once (each should exit at once; one that keeps running costs 3 s, not 3 s each).
        procs = []
        try:
            for var, value in BAD_VALUES:
                procs.append((var, value, spawn({var: value})))
            deadline = time.monotonic() + 3.0
            results = [(var, value, finish(p, deadline)) for var, value, p in procs]
        finally:
            for _, _, p in procs:
                H.stop_pid(p, wait=2)
        for var, value, (status, out, err) in results:
            with self.subTest(var=var, value=value):
                self.assertEqual(status, 2, "%s=%r: exit status %r (None = still running after 3 s), "
                                 "stderr %r" % (var, value, status, err[-500:]))
                lines = err.splitlines()
                self.assertEqual(len(lines), 1, "%s=%r: want exactly one stderr line, got %r"
                                 % (var, value, lines))
                self.assertIn(var, lines[0])
                self.assertIn(value, lines[0])

    def test_admin_healthz_and_readyz(self):
        b = self.start_backend("a")
        nx = self.start_nextup(b)
        self.assertEqual(nx.admin_get("/healthz")[0], 200)
        self.assertEqual(nx.admin_get("/readyz")[0], 200)

    def test_hostname_upstream(self):
        b = self.start_backend("named")
        nx = self.start_nextup("localhost:%d" % b.port)
        for _ in range(5):
            r = self.roundtrip(nx, "GET", "/")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.get("x-backend"), "named")

    def test_ipv6_literal_upstream_accepted(self):
        # Nothing listens on [::1]:dead (servers stay on 127.0.0.0/8): the v6 literal
        # must parse, and requests go to the live v4 peer.
        b = self.start_backend("v4")
        dead = H.free_port()
        nx = self.start_nextup("[::1]:%d,%s" % (dead, b.addr))
        for _ in range(10):
            r = self.roundtrip(nx, "GET", "/")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.get("x-backend"), "v4")


if __name__ == "__main__":
    unittest.main()
