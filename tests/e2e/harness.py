"""Helpers for nextup's end-to-end tests: processes, ports, a raw HTTP client.

Everything listens on 127.0.0.1 (or in network namespaces a test creates).
Every process is stopped by PID; every socket operation has a timeout.
"""

import atexit
import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BACKEND_PY = os.path.join(HERE, "backend.py")
DEFAULT_BIN = os.path.join(REPO, "build", "nextup")

sys.path.insert(0, HERE)
import backend as backend_mod  # noqa: E402  (PATTERN, pattern_sha256, ws_frame)

SOCK_TIMEOUT = 10.0
MIB = 1024 * 1024

ALL_VARS = [
    "NEXTUP_LISTEN", "NEXTUP_ADMIN", "NEXTUP_UPSTREAMS", "NEXTUP_WORKERS",
    "NEXTUP_CONNECT_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", "NEXTUP_IDLE_TIMEOUT_MS",
    "NEXTUP_HEADER_TIMEOUT_MS", "NEXTUP_MAX_HEADER_BYTES", "NEXTUP_MAX_CONNECTIONS",
    "NEXTUP_MAX_RETRIES", "NEXTUP_DRAIN_TIMEOUT_MS", "NEXTUP_LOG_LEVEL",
    "NEXTUP_POOL_MAX_IDLE", "NEXTUP_RETRY_BUFFER_BYTES",
]

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")


def nextup_bin():
    return os.environ.get("NEXTUP_BIN") or DEFAULT_BIN


def is_sanitized(path):
    """True when the binary was built with ASan (memory figures mean less then)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


_recent_ports = []


def free_port():
    """A port on 127.0.0.1 nothing listens on right now (bind to 0, close), and not one of the
    last ports handed out: the kernel may give a port just closed again, and two of one
    nextup's ports (listener, admin) must differ."""
    for _ in range(64):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _recent_ports:
            _recent_ports.append(port)
            del _recent_ports[:-64]
            return port
    return port


# The node-wide BPF program set (NEXTUP_BPF_NODE_DIR) of this test process: never the node's real one
# (/sys/fs/bpf/nextup-node), which running pods or another test run may use. Removed at exit.
BPF_NODE_DIR = "/sys/fs/bpf/nextup-e2e-node-%d" % os.getpid()


def remove_bpf_tree(path):
    """Unlinks the pins under <path> and its directories (bpffs holds nothing else)."""
    if not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


atexit.register(lambda: remove_bpf_tree(BPF_NODE_DIR))


def base_env():
    """The caller's environment without any NEXTUP_* variable (tests are hermetic), and this test
    process's own NEXTUP_BPF_NODE_DIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTUP_")}
    env["NEXTUP_BPF_NODE_DIR"] = BPF_NODE_DIR
    return env


def stop_pid(proc, sig=signal.SIGTERM, wait=5.0):
    """Signals <proc> (a Popen) by PID, waits <wait> s, then SIGKILLs. Returns its status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    return proc.returncode


def read_rss_kib(pid):
    """VmRSS of <pid> in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


class RssSampler:
    """Samples VmRSS of a PID every <interval> s in a thread; .max_kib after stop()."""

    def __init__(self, pid, interval=0.1):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(read_rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)

    @property
    def max_kib(self):
        return max(self.samples) if self.samples else 0


# --------------------------------------------------------------------------
# processes


class Backend:
    """One backend.py process."""

    def __init__(self, name=None, port=0, host="127.0.0.1", log=None, mode=None):
        self.host = host
        self.name = name
        self.log = log
        self.stderr = tempfile.NamedTemporaryFile(prefix="nextup-backend-", suffix=".err", delete=False)
        cmd = [sys.executable, BACKEND_PY, "--port", str(port), "--host", host]
        if name:
            cmd += ["--name", name]
        if log:  # backend.py --log: one JSON line per request read whole
            cmd += ["--log", log]
        if mode:  # backend.py --mode: ok|503|503bare|reset|slow
            cmd += ["--mode", mode]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL, env=base_env())
        line = b""
        deadline = time.monotonic() + 10
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                self.stop()
                raise AssertionError("backend %s did not print 'ready' within 10 s: %s" % (name, self.stderr_text()))
            b = os.read(self.proc.stdout.fileno(), 1)
            if not b:
                self.stop()
                raise AssertionError("backend %s exited before 'ready': %s" % (name, self.stderr_text()))
            line += b
        m = re.match(rb"ready (\d+)", line)
        if not m:
            self.stop()
            raise AssertionError("backend printed %r instead of 'ready <port>'" % line)
        self.port = int(m.group(1))
        if not self.name:
            self.name = "backend-%d" % self.port

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def stderr_text(self):
        try:
            with open(self.stderr.name, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stats(self):
        """{"requests": N, "heads": H, "connections": M} straight from the backend."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=SOCK_TIMEOUT)
        try:
            c.request("GET", "/stats")
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def requests(self):
        """Requests read whole (body included), not counting /stats."""
        return self.stats()["requests"]

    def heads(self):
        """Request heads that reached the backend at all, not counting /stats."""
        return self.stats()["heads"]

    def stop(self):
        if self.proc.stdout:
            self.proc.stdout.close()
            self.proc.stdout = None
        rc = stop_pid(self.proc)
        return rc

    def cleanup(self):
        self.stop()
        try:
            os.unlink(self.stderr.name)
        except OSError:
            pass


class Nextup:
    """One nextup process: listen/admin on free 127.0.0.1 ports, stderr in a file."""

    def __init__(self, upstreams, env=None, workers=2, wait_ready=True, binary=None, stdout_path=None):
        last = None
        self.binary = binary  # None: nextup_bin(); else another program run like nextup (examples/embedded)
        self.stdout_path = stdout_path  # None: stdout shares the stderr file; else stdout appends to this path
        for _ in range(3):  # a free port can be taken between probe and bind
            self._start(upstreams, env, workers)
            if not wait_ready:
                return
            try:
                self.wait_ready()
                return
            except AssertionError as e:
                last = e
                if self.proc.poll() is not None and "in use" in self.stderr_text().lower():
                    continue
                self.stop()
                raise
        raise last

    def _start(self, upstreams, env, workers):
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.expect_exit = False
        e = base_env()
        e.update({
            "NEXTUP_LISTEN": "127.0.0.1:%d" % self.listen_port,
            "NEXTUP_ADMIN": "127.0.0.1:%d" % self.admin_port,
            "NEXTUP_WORKERS": str(workers),
            "NEXTUP_LOG_LEVEL": "warn",
            # Tests close their clients before stopping nextup; a short drain keeps teardown fast.
            "NEXTUP_DRAIN_TIMEOUT_MS": "3000",
        })
        if upstreams is not None:
            e["NEXTUP_UPSTREAMS"] = upstreams if isinstance(upstreams, str) else ",".join(upstreams)
        if env:
            for k, v in env.items():
                if v is None:
                    e.pop(k, None)
                else:
                    e[k] = str(v)
        self.env = e
        self.stderr = tempfile.NamedTemporaryFile(prefix="nextup-", suffix=".err", delete=False)
        self.bin = self.binary or nextup_bin()
        if not os.access(self.bin, os.X_OK):
            raise AssertionError("nextup binary %s is missing or not executable "
                                 "(build it: make build/nextup)" % self.bin)
        out = self.stderr
        if self.stdout_path:
            out = open(self.stdout_path, "ab")
        try:
            self.proc = subprocess.Popen([self.bin], env=e, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=self.stderr)
        finally:
            if out is not self.stderr:
                out.close()
        self.pid = self.proc.pid

    def admin_get(self, path, timeout=2.0):
        """(status, body) of GET <path> on the admin listener; raises OSError if unreachable."""
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nextup exited with status %s during startup; stderr:\n%s"
                                     % (self.proc.returncode, self.stderr_text()))
            try:
                st, _ = self.admin_get("/readyz", timeout=1.0)
                if st == 200:
                    return
                last = "status %d" % st
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        raise AssertionError("nextup /readyz not 200 within %.0f s (last: %s); stderr:\n%s"
                             % (timeout, last, self.stderr_text()))

    def stderr_text(self):
        try:
            with open(self.stderr.name, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, wait=5.0):
        return stop_pid(self.proc, sig, wait)

    def connect(self, timeout=SOCK_TIMEOUT):
        return RawConn(self.listen_port, timeout=timeout)

    def http(self, timeout=SOCK_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.listen_port, timeout=timeout)


# --------------------------------------------------------------------------
# raw HTTP client


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection before a whole response arrived."""


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name-lowercase, value)], in order
        self.raw_head = raw_head
        self.body = b""
        self.close_delimited = False
        self.interim = []  # 1xx responses that came before this one

    def get(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def has(self, name):
        return any(k == name.lower() for k, _ in self.headers)

    def __repr__(self):
        return "<Response %s %d %r, %d body bytes>" % (self.version, self.status, self.headers, len(self.body))


class RawConn:
    """A client socket with a read buffer; every operation times out."""

    def __init__(self, port, host="127.0.0.1", timeout=SOCK_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def _fill(self, n=65536):
        """Reads more bytes into the buffer; False on EOF or reset."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(n)
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)
            if not self._fill():
                raise ConnectionClosed("EOF while reading a line; have %r" % bytes(self.buf[:200]))

    def _read_exact(self, n, sink=None):
        out = [] if sink is None else None
        while n:
            if not self.buf and not self._fill(min(max(n, 65536), MIB)):
                raise ConnectionClosed("EOF with %d body bytes missing" % n)
            k = min(n, len(self.buf))
            piece = self._take(k)
            n -= k
            if sink is None:
                out.append(piece)
            else:
                sink(piece)
        return b"".join(out) if out is not None else b""

    def read_head(self):
        """Reads one response head (possibly 1xx)."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                raw = self._take(i + 4)
                break
            if len(self.buf) > 1024 * 1024:
                raise AssertionError("response head over 1 MiB")
            if not self._fill():
                if self.buf:
                    raise ConnectionClosed("EOF inside a response head: %r" % bytes(self.buf[:300]))
                raise ConnectionClosed("connection closed before any response byte")
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if not sep:
                raise AssertionError("bad response header line %r" % line)
            headers.append((k.decode("latin-1").strip().lower(), v.strip().decode("latin-1")))
        return Response(m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"),
                        headers, raw)

    def read_response(self, method="GET", sink=None, keep_interim=False):
        """Reads one final response (1xx heads before it go to .interim, or are returned
        themselves when keep_interim). The body is stored in .body, or fed to sink()."""
        interim = []
        while True:
            r = self.read_head()
            if 100 <= r.status < 200 and r.status != 101:
                if keep_interim:
                    return r
                interim.append(r)
                continue
            break
        r.interim = interim
        if method == "HEAD" or r.status in (204, 304) or r.status == 101:
            return r
        te = ",".join(r.get_all("transfer-encoding")).lower()
        if te and te.split(",")[-1].strip() == "chunked":
            r.body = self._read_chunked(sink)
        elif r.has("content-length"):
            r.body = self._read_exact(int(r.get("content-length")), sink)
        else:
            r.close_delimited = True
            r.body = self.read_until_close(sink)
        return r

    def _read_chunked(self, sink):
        out = []
        while True:
            line = self._read_line()
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise AssertionError("bad chunk size line from nextup: %r" % line)
            if size == 0:
                while self._read_line() != b"\r\n":
                    pass
                break
            piece = self._read_exact(size, sink)
            if sink is None:
                out.append(piece)
            if self._read_exact(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
        return b"".join(out)

    def read_until_close(self, sink=None):
        out = []
        while True:
            if self.buf:
                piece = self._take(len(self.buf))
                if sink is None:
                    out.append(piece)
                else:
                    sink(piece)
            if not self._fill(MIB):
                break
        return b"".join(out)

    def wait_closed(self, timeout):
        """True if the peer closes (EOF/RST) within <timeout> s with no further bytes;
        False if it stays open. Bytes that do arrive are kept in the buffer."""
        old = self.sock.gettimeout()
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                try:
                    if not self._fill():
                        return True
                except socket.timeout:
                    return False
        finally:
            self.sock.settimeout(old)

    def pending(self, wait=0.2):
        """Bytes that arrive within <wait> s without asking (stray data)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            while self._fill():
                pass
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(old)
        return bytes(self.buf)


def request_bytes(method, target, host="127.0.0.1", headers=(), body=None, version="1.1"):
    """A request head (+ body with Content-Length when given) as bytes."""
    lines = ["%s %s HTTP/%s" % (method, target, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data + (body or b"")


def chunked(pieces):
    """Chunked encoding of the byte strings in <pieces>, with the last chunk."""
    out = b""
    for p in pieces:
        if p:
            out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


# --------------------------------------------------------------------------
# the test base class


class NextupCase(unittest.TestCase):
    """Starts backends and nextup for one test, stops them by PID afterwards,
    prints nextup's stderr when the test failed, and fails the test when nextup
    crashed or a sanitizer reported something."""

    def start_backend(self, name=None, port=0, log=None, mode=None):
        b = Backend(name=name, port=port, log=log, mode=mode)
        self.addCleanup(self._backend_cleanup, b)
        return b

    def _backend_cleanup(self, b):
        b.stop()
        text = b.stderr_text()
        if text.strip() and not self._ok():
            sys.stderr.write("\n----- backend %s stderr -----\n%s\n" % (b.name, text))
        try:
            os.unlink(b.stderr.name)
        except OSError:
            pass

    def start_nextup(self, upstreams, env=None, workers=2, wait_ready=True, binary=None, stdout_path=None):
        if isinstance(upstreams, Backend):
            upstreams = [upstreams]
        if isinstance(upstreams, (list, tuple)):
            upstreams = ",".join(u.addr if isinstance(u, Backend) else u for u in upstreams)
        nx = Nextup(upstreams, env=env, workers=workers, wait_ready=wait_ready, binary=binary,
                    stdout_path=stdout_path)
        self.addCleanup(self._nextup_cleanup, nx)
        return nx

    def _replicas_cleanup(self, rs):
        """Cleanup for a ReplicaSet: stops it, showing its stderr when the test failed."""
        if not self._ok():
            text = rs.stderr_text()
            if text:
                sys.stderr.write("\n----- replica stderr -----\n%s\n" % text)
        rs.cleanup()

    def _ok(self):
        # _outcome.success is reset to True while each cleanup runs (Python 3.11+):
        # the result's failures and errors, recorded as they happen, tell the truth.
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        for test, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
            if test is self:
                return False
        return bool(outcome is None or getattr(outcome, "success", True))

    def _nextup_cleanup(self, nx):
        died = nx.proc.poll()
        rc = nx.stop()
        text = nx.stderr_text()
        problems = []
        if died is not None and not nx.expect_exit:
            problems.append("nextup (pid %d) exited by itself during the test with status %s"
                            % (nx.pid, died))
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append("sanitizer report in nextup stderr (%s)" % marker)
                break
        if problems or not self._ok():
            sys.stderr.write("\n----- nextup stderr (pid %d, exit %s) -----\n%s\n-----\n" % (nx.pid, rc, text))
        try:
            os.unlink(nx.stderr.name)
        except OSError:
            pass
        if problems:
            self.fail("; ".join(problems))

    def connect(self, nx_or_port, timeout=SOCK_TIMEOUT):
        port = nx_or_port.listen_port if isinstance(nx_or_port, Nextup) else nx_or_port
        c = RawConn(port, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def roundtrip(self, nx, method, target, headers=(), body=None, version="1.1", host="default"):
        """One request on a fresh connection; returns the Response."""
        c = self.connect(nx)
        if host == "default":
            host = "127.0.0.1:%d" % nx.listen_port
        c.send(request_bytes(method, target, host=host, headers=headers, body=body, version=version))
        r = c.read_response(method)
        c.close()
        return r

    def assertPlainError(self, r, status):
        """nextup's own error: <status>, Content-Type text/plain, a short non-empty body."""
        self.assertEqual(r.status, status, "expected %d, got %r body=%r" % (status, r, r.body[:200]))
        self.assertFalse(r.has("x-backend"), "the %d came from backend %r, not from nextup: the request was "
                         "forwarded (body %r)" % (status, r.get("x-backend"), r.body[:200]))
        ctype = (r.get("content-type") or "").lower()
        self.assertTrue(ctype.startswith("text/plain"), "error %d Content-Type is %r, want text/plain"
                        % (status, r.get("content-type")))
        self.assertTrue(0 < len(r.body) <= 1024, "error body should be short and non-empty, got %d bytes: %r"
                        % (len(r.body), r.body[:200]))


def skip_loudly(case, reason):
    sys.stderr.write("\n*** SKIPPED %s: %s ***\n" % (case.id(), reason))
    sys.stderr.flush()
    case.skipTest(reason)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# response-driven retries: replica modes, backend logs, /metrics, mixed load,
# rolling restart (used by test_response_retry.py and tests/compare/)


def replica_post(b, path, timeout=SOCK_TIMEOUT):
    """(status, body) of POST <path> sent straight to backend <b> (not through nextup)."""
    c = http.client.HTTPConnection(b.host, b.port, timeout=timeout)
    try:
        c.request("POST", path, body=b"")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def set_mode(b, mode):
    """Switches backend <b> to <mode> (ok|503|503bare|reset|slow) with POST /_control/mode/<mode>."""
    st, body = replica_post(b, "/_control/mode/" + mode)
    if st != 200:
        raise AssertionError("backend %s refused mode %r: %d %r" % (b.name, mode, st, body))


def vanish(b):
    """Makes every open connection of backend <b> disappear without FIN or RST (TCP_REPAIR).
    Returns how many; raises unittest.SkipTest (loudly) if the kernel refuses TCP_REPAIR."""
    st, body = replica_post(b, "/_control/vanish")
    if st == 501:
        msg = "backend cannot drop connections silently: %s" % body.decode("utf-8", "replace").strip()
        sys.stderr.write("\n*** SKIPPED: %s ***\n" % msg)
        raise unittest.SkipTest(msg)
    if st != 200:
        raise AssertionError("backend %s /_control/vanish: %d %r" % (b.name, st, body))
    return int(body.split()[-1])


def read_log(path):
    """The JSON lines a backend --log file holds (one per request read whole)."""
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def parse_metrics(text):
    """Prometheus text -> {'name' or 'name{label="v",...}': float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def run_threads(target, argsets, timeout):
    """Runs target(*args) for every args in <argsets>, each in a daemon thread, all started
    together, and waits up to <timeout> s in all: the threads still running (the caller
    fails on them)."""
    threads = [threading.Thread(target=target, args=tuple(a), daemon=True) for a in argsets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


def freeze(pid, timeout=5.0):
    """SIGSTOP <pid> and wait until every thread of it is stopped: the signal is
    asynchronous, and on a busy machine a thread can run on for a while after kill()."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass
        if states and all(st in ("T", "t") for st in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError("pid %d not stopped %.0f s after SIGSTOP (thread states %r)" % (pid, timeout, states))
        time.sleep(0.002)


def metrics(nx):
    """nextup's /metrics, parsed (see parse_metrics)."""
    st, body = nx.admin_get("/metrics")
    if st != 200:
        raise AssertionError("/metrics answered %d: %r" % (st, body[:200]))
    return parse_metrics(body.decode("utf-8", "replace"))


def metric(m, name, **labels):
    """One value from parse_metrics() output; a missing series is an AssertionError. Labels left out
    (the per-peer series' service="...") may be anything as long as one series alone matches."""
    key = name
    if labels:
        key += "{" + ",".join('%s="%s"' % kv for kv in sorted(labels.items())) + "}"
    if key in m:
        return m[key]
    want = set('%s="%s"' % kv for kv in labels.items())
    found = [k for k in m if k.startswith(name + "{") and want <= set(re.findall(r'\w+="[^"]*"', k))]
    if len(found) != 1:
        raise AssertionError("metric %s %s in /metrics (have: %s)"
                             % (key, "ambiguous" if found else "not", ", ".join(sorted(k for k in m if k.startswith(name)))))
    return m[found[0]]


RETRY_REASONS = ("refused", "connect_failure", "reset", "timeout", "status")
REFUSAL_REASONS = ("policy", "exhausted", "method", "buffer", "budget")


def retry_counts(m):
    """{'retries': {reason: n}, 'refused': {reason: n}} from parsed /metrics."""
    return {"retries": {r: int(metric(m, "nextup_retries_total", reason=r)) for r in RETRY_REASONS},
            "refused": {r: int(metric(m, "nextup_retries_refused_total", reason=r)) for r in REFUSAL_REASONS}}


def unavailable_body(name):
    """The body backend.py sends in mode 503 / 503bare."""
    return ("replica %s unavailable\n" % name).encode()


def replica_503_problem(r, retry_after="1"):
    """None if Response <r> is a backend.py mode-503 answer passed on unchanged
    (status, X-Backend, Retry-After, body), else what differs."""
    if r.status != 503:
        return "status %d, not 503" % r.status
    name = r.get("x-backend")
    if not name:
        return "no X-Backend: a 503 made by the proxy, not the replica's (body %r)" % r.body[:200]
    if r.body != unavailable_body(name):
        return "body %r, not the replica's %r" % (r.body[:200], unavailable_body(name))
    if r.get("retry-after") != retry_after:
        return "Retry-After %r, want %r" % (r.get("retry-after"), retry_after)
    return None


class ReplicaSet:
    """N backend.py replicas named r0..r(N-1) sharing one --log file in a temp dir;
    each can be switched (mode), stopped and started again on its port."""

    def __init__(self, n=3, mode="ok", prefix="r"):
        self.dir = tempfile.mkdtemp(prefix="nextup-replicas-")
        self.log = os.path.join(self.dir, "deliveries.jsonl")
        self.names = ["%s%d" % (prefix, i) for i in range(n)]
        self.backends = []
        self.ports = []
        self.retired = []  # stopped Backend objects (stderr kept for the report)
        try:
            for name in self.names:
                b = Backend(name=name, log=self.log, mode=mode)
                self.backends.append(b)
                self.ports.append(b.port)
        except BaseException:
            self.cleanup()
            raise

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return self.backends[i]

    @property
    def addrs(self):
        return ["127.0.0.1:%d" % p for p in self.ports]

    def set_mode(self, i, mode):
        set_mode(self.backends[i], mode)

    def stop(self, i):
        b = self.backends[i]
        if b is not None:
            b.stop()
            self.retired.append(b)
            self.backends[i] = None

    def start(self, i, mode="ok"):
        if self.backends[i] is not None:
            raise AssertionError("replica %s is running" % self.names[i])
        self.backends[i] = Backend(name=self.names[i], port=self.ports[i], log=self.log, mode=mode)

    def entries(self):
        return read_log(self.log)

    def stderr_text(self):
        out = []
        for b in self.retired + [b for b in self.backends if b is not None]:
            t = b.stderr_text().strip()
            if t:
                out.append("%s: %s" % (b.name, t))
        return "\n".join(out)

    def cleanup(self):
        for i in range(len(self.backends)):
            if self.backends[i] is not None:
                self.stop(i)
        for b in self.retired:
            try:
                os.unlink(b.stderr.name)
            except OSError:
                pass
        self.retired = []
        try:
            os.unlink(self.log)
        except OSError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def _timeline(say=None):
    """([(seconds since now, event)], a function that records an event there, and says it)."""
    t0 = time.monotonic()
    events = []

    def ev(text):
        events.append((time.monotonic() - t0, text))
        if say:
            say("  %6.2f s  %s" % (time.monotonic() - t0, text))

    return events, ev


def rolling_restart(rs, phase_503=1.5, phase_down=1.5, settle=1.0, say=None):
    """Each replica of ReplicaSet <rs> in turn: mode 503 for <phase_503> s, stopped
    (connections refused) for <phase_down> s, started again in mode ok, <settle> s pause.
    Returns [(seconds since start, event)]."""
    events, ev = _timeline(say)

    for i, name in enumerate(rs.names):
        rs.set_mode(i, "503")
        ev("%s: mode 503" % name)
        time.sleep(phase_503)
        rs.stop(i)
        ev("%s: stopped" % name)
        time.sleep(phase_down)
        rs.start(i, "ok")
        ev("%s: started (ok)" % name)
        time.sleep(settle)
    return events


def rolling_restart_overlap(rs, phase_503=2.0, phase_down=2.0, settle=1.0, say=None):
    """The harder schedule: replica i comes back at the moment replica i+1 starts to
    drain. Draining is mode 503 (503 with Connection: close) and, as a server's
    graceful shutdown does, its idle keep-alive connections closed at once; then
    stopped (refused) for <phase_down> s; then started again in mode ok, and the next
    one drains. Returns [(seconds since start, event)]."""
    events, ev = _timeline(say)

    def drain(i):
        rs.set_mode(i, "503")
        try:
            replica_post(rs[i], "/_control/close-idle", timeout=2)
        except OSError:
            pass
        ev("%s: draining (503 + close, idle connections closed)" % rs.names[i])

    drain(0)
    for i, name in enumerate(rs.names):
        time.sleep(phase_503)
        rs.stop(i)
        ev("%s: stopped" % name)
        time.sleep(phase_down)
        rs.start(i, "ok")
        ev("%s: started (ok)" % name)
        if i + 1 < len(rs.names):
            drain(i + 1)
    time.sleep(settle)
    return events


# nextup's NEXTUP_RETRY_ON for the rolling restart: the default plus `reset` (a replica
# stopped with requests unread in its accept queue resets them after its kernel
# acknowledged them; nginx's `error` and HAProxy's all-retryable-errors retry those too).
ROLLING_RETRY_ON = "connect-failure,refused,reset,gateway-error"

KIND_GET, KIND_POST, KIND_POST_KEY = "GET", "POST", "POST+key"
KINDS = (KIND_GET, KIND_POST, KIND_POST_KEY)
_KIND_CYCLE = (KIND_GET, KIND_POST, KIND_GET, KIND_POST_KEY)  # half GETs, half POSTs (half of them keyed)


class MixedLoad:
    """<threads> client threads against 127.0.0.1:<port>, each on one keep-alive connection
    (opened again after a close or an error), paced at <rate> requests/s per thread, bounded
    by <max_per_thread> requests and <max_seconds>. Half GET /item/<id>, half POST /echo
    with a random body (half of them with Idempotency-Key); every request has a unique
    X-Request-Id. .records: one dict per request (see _one)."""

    def __init__(self, port, threads=6, rate=40.0, max_per_thread=3000, max_seconds=60.0,
                 body_max=8192, timeout=5.0, tag="load", seed=None):
        self.port = port
        self.threads = threads
        self.rate = rate
        self.max_per_thread = max_per_thread
        self.max_seconds = max_seconds
        self.body_max = body_max
        self.timeout = timeout
        self.tag = tag
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.records = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self.t0 = self.t1 = None

    def start(self):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.max_seconds
        for tid in range(self.threads):
            t = threading.Thread(target=self._run, args=(tid,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout * 2 + 5)
        alive = [t for t in self._threads if t.is_alive()]
        self.t1 = time.monotonic()
        if alive:
            raise AssertionError("%d load threads still running after stop" % len(alive))
        return self.records

    @property
    def duration(self):
        return (self.t1 or time.monotonic()) - self.t0

    def _one(self, conn, tid, i, rng):
        kind = _KIND_CYCLE[(i + tid) % len(_KIND_CYCLE)]
        rid = "%s-%d-%d-%08x" % (self.tag, tid, i, rng.getrandbits(32))
        headers = [("X-Request-Id", rid)]
        if kind == KIND_GET:
            method, target, body = "GET", "/item/" + rid, None
        else:
            method, target = "POST", "/echo"
            body = rng.randbytes(rng.randint(1, self.body_max))
            if kind == KIND_POST_KEY:
                headers.append(("Idempotency-Key", rid))
        rec = {"id": rid, "kind": kind, "method": method, "bytes": len(body or b""),
               "sha256": hashlib.sha256(body or b"").hexdigest(), "status": None, "error": None,
               "backend": None, "retry_after": None, "body": None, "echo_ok": None,
               "t": time.monotonic() - self.t0}
        t_start = time.monotonic()
        try:
            if conn is None:
                conn = RawConn(self.port, timeout=self.timeout)
            conn.send(request_bytes(method, target, host="127.0.0.1:%d" % self.port, headers=headers, body=body))
            r = conn.read_response(method)
            rec.update(status=r.status, backend=r.get("x-backend"), retry_after=r.get("retry-after"),
                       ctype=r.get("content-type"))
            if r.status != 200:
                rec["body"] = r.body[:512]
            elif body is not None:
                rec["echo_ok"] = r.body == body
            rec["response"] = r if r.status != 200 else None
            conn_tokens = ",".join(r.get_all("connection")).lower()
            if "close" in conn_tokens or r.version == "HTTP/1.0" or r.close_delimited:
                conn.close()
                conn = None
        except (ConnectionClosed, OSError, AssertionError) as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            if conn is not None:
                conn.close()
            conn = None
        rec["dt"] = time.monotonic() - t_start
        with self.lock:
            self.records.append(rec)
        return conn

    def _run(self, tid):
        import random
        rng = random.Random(self.seed * 1000 + tid)
        interval = 1.0 / self.rate
        state = {"conn": None}

        def step(i):
            state["conn"] = self._one(state["conn"], tid, i, rng)
        try:
            paced_loop(step, interval, time.monotonic() + rng.random() * interval, self._stop, self.deadline,
                       self.max_per_thread)
        finally:
            if state["conn"] is not None:
                state["conn"].close()


def paced_loop(step, interval, first_at, stop, deadline, max_calls):
    """Calls step(i) every <interval> s from <first_at> until <stop> (a threading.Event) is set, the
    monotonic <deadline> passes or <max_calls> were made. A loop that fell behind does not burst to
    catch up. Returns the number of calls."""
    next_t = first_at
    i = 0
    while not stop.is_set() and i < max_calls and time.monotonic() < deadline:
        delay = next_t - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        step(i)
        i += 1
        next_t += interval
        now = time.monotonic()
        if next_t < now - 0.5:
            next_t = now
    return i


def analyze_load(records, entries, ignore_ids=()):
    """Client records (MixedLoad) against the replicas' delivery log: statuses by kind,
    client-visible errors, made-up errors, duplicates, body mismatches. Deliveries
    with an X-Request-Id in <ignore_ids> (probes) are left out."""
    by_id = {r["id"]: r for r in records}
    deliveries = {}
    unknown = 0
    for e in entries:
        if e.get("id") in by_id:
            deliveries.setdefault(e["id"], []).append(e)
        elif e.get("id") not in ignore_ids:
            unknown += 1
    res = {"requests": len(records), "unknown_deliveries": unknown}
    statuses = {k: {} for k in KINDS}
    errors = {k: 0 for k in KINDS}
    visible_5xx = {k: 0 for k in KINDS}
    made_up = {k: [] for k in KINDS}
    for r in records:
        k = r["kind"]
        label = str(r["status"]) if r["status"] is not None else "conn-error"
        statuses[k][label] = statuses[k].get(label, 0) + 1
        if r["status"] != 200:
            errors[k] += 1
            if r["status"] in (502, 503, 504) or r["status"] is None:
                visible_5xx[k] += 1
            problem = replica_503_problem(r["response"]) if r.get("response") is not None else r["error"]
            if problem:
                made_up[k].append((r["id"], label, problem))
    res["statuses"] = statuses
    res["errors"] = errors
    res["visible_5xx"] = visible_5xx
    res["not_replica_503"] = made_up
    # Of those, the ones whose request no replica read: an error made by the proxy is then
    # the only answer there is (e.g. the replica died with the request acknowledged by its
    # kernel but unread); the others replaced or hid something a replica did.
    res["not_replica_503_never_delivered"] = {k: [m for m in v if m[0] not in deliveries] for k, v in made_up.items()}
    dup = {k: [] for k in KINDS}
    dup_replicas = {k: [] for k in KINDS}
    mismatched = []
    for rid, es in deliveries.items():
        r = by_id[rid]
        if len(es) > 1:
            dup[r["kind"]].append(rid)
        if len({e["name"] for e in es}) > 1:
            dup_replicas[r["kind"]].append(rid)
        for e in es:
            if e["sha256"] != r["sha256"] or e["bytes"] != r["bytes"] or e["method"] != r["method"]:
                mismatched.append((rid, e["name"], e["bytes"], r["bytes"]))
    res["delivered_more_than_once"] = dup
    res["delivered_to_two_replicas"] = dup_replicas
    res["body_mismatch"] = mismatched
    # A 200 must come from a replica that logged this request; an echo must be the body sent.
    res["ok_without_delivery"] = [r["id"] for r in records if r["status"] == 200 and
                                  r["backend"] not in {e["name"] for e in deliveries.get(r["id"], [])}]
    res["echo_mismatch"] = [r["id"] for r in records if r["echo_ok"] is False]
    res["never_delivered"] = sum(1 for r in records if r["id"] not in deliveries)
    return res


def format_load(res, title="", retries=None, duration=None):
    """A few printable lines from analyze_load() output (+ retry metrics)."""
    lines = ["%s: %d requests%s, %d deliveries with unknown ids" % (
        title or "load", res["requests"], "" if duration is None else " in %.1f s" % duration,
        res["unknown_deliveries"])]
    for k in KINDS:
        st = res["statuses"][k]
        lines.append("  %-9s %5d requests; statuses %s; client-visible errors %d (not a replica's own 503: %d, "
                     "of which never read by a replica: %d); delivered >1: %d (to 2 replicas: %d)"
                     % (k, sum(st.values()), " ".join("%s:%d" % kv for kv in sorted(st.items())),
                        res["errors"][k], len(res["not_replica_503"][k]),
                        len(res["not_replica_503_never_delivered"][k]),
                        len(res["delivered_more_than_once"][k]), len(res["delivered_to_two_replicas"][k])))
    lines.append("  bodies mismatched %d, echo mismatched %d, 200 without a delivery at that replica %d, "
                 "never delivered %d" % (len(res["body_mismatch"]), len(res["echo_mismatch"]),
                                         len(res["ok_without_delivery"]), res["never_delivered"]))
    if retries:
        lines.append("  nextup retries %s; refused %s" % (
            " ".join("%s:%d" % kv for kv in retries["retries"].items()),
            " ".join("%s:%d" % kv for kv in retries["refused"].items())))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# network namespaces


def ip(*args, check=True):
    p = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    if check and p.returncode != 0:
        raise AssertionError("ip %s failed: %s" % (" ".join(args), p.stderr.decode().strip()))
    return p.stdout.decode()


class Blackhole:
    """A netns + veth pair; 10.<net>.X.2 has a permanent neighbour entry pointing at the
    namespace's MAC, but nobody owns .2 and the namespace does not forward: SYNs to it
    vanish (no RST, no ICMP). .4 is a second blackholed address. <net> and <tag> keep
    the subnets and names of different test files apart."""

    def __init__(self, case, net=213, tag="bh"):
        pid = os.getpid()
        # A /24 nobody on this host uses yet (another run may hold one concurrently).
        for i in range(200):
            self.x = 20 + (pid + i) % 200
            if not ip("route", "show", "10.%d.%d.0/24" % (net, self.x), check=False).strip():
                break
        else:
            raise AssertionError("no free 10.%d.X.0/24 for the blackhole namespace" % net)
        self.ns = "nx-%s-%d" % (tag, pid)
        self.host_if = "nx%s%da" % (tag[:2], pid % 10000000)
        self.ns_if = "nx%s%db" % (tag[:2], pid % 10000000)
        # Leftovers from an earlier run that was killed hard.
        ip("link", "del", self.host_if, check=False)
        ip("netns", "del", self.ns, check=False)
        ip("netns", "add", self.ns)
        case.addCleanup(ip, "netns", "del", self.ns, check=False)
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns)
        case.addCleanup(ip, "link", "del", self.host_if, check=False)
        ip("addr", "add", "10.%d.%d.1/24" % (net, self.x), "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("-n", self.ns, "addr", "add", "10.%d.%d.3/24" % (net, self.x), "dev", self.ns_if)
        ip("-n", self.ns, "link", "set", self.ns_if, "up")
        ip("-n", self.ns, "link", "set", "lo", "up")
        mac = json.loads(ip("-n", self.ns, "-j", "link", "show", self.ns_if))[0]["address"]
        for host in (2, 4):
            ip("neigh", "replace", "10.%d.%d.%d" % (net, self.x, host), "lladdr", mac, "dev", self.host_if,
               "nud", "permanent")
        self.addr = "10.%d.%d.2" % (net, self.x)
        self.addr2 = "10.%d.%d.4" % (net, self.x)
        # Prove the blackhole: a connect must time out, not be refused.
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((self.addr, 8080))
            raise AssertionError("blackhole setup broken: %s:8080 accepted a connection" % self.addr)
        except socket.timeout:
            pass
        except OSError as e:
            raise AssertionError("blackhole setup broken: connect to %s:8080 gave %r, want a timeout"
                                 % (self.addr, e))
        finally:
            s.close()


# --------------------------------------------------------------------------
# raw TCP servers for what backend.py will not do (garbage, resets, stalls)


class RawServer:
    """A listening socket on 127.0.0.1 whose connections a thread hands, one at a
    time, to handle(conn); the connection is closed afterwards. stop() ends it.
    .accepted counts connections; an exception in handle() is kept in .error."""

    def __init__(self, port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.error = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def handle(self, conn):
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted += 1
            self._dispatch(conn)
        self._finish()

    def _dispatch(self, conn):
        """Handles one accepted connection (here: at once, in the accept thread)."""
        self._serve(conn)

    def _finish(self):
        pass

    def _serve(self, conn):
        try:
            self.handle(conn)
        except Exception as e:  # the test reads .error
            if not self._stop.is_set():
                self.error = repr(e)
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)
        if self._t.is_alive():
            raise AssertionError("%s thread did not stop" % type(self).__name__)
        self.sock.close()


def read_request_head(conn, timeout=2.0):
    """Bytes up to and including the blank line ending a request head (and what came
    with it), or what arrived before the peer closed."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    return data


class ThreadedRawServer(RawServer):
    """A RawServer whose connections are handled side by side, each in its own
    thread (for upstreams that keep connections open while others come)."""

    def _dispatch(self, conn):
        self._threads = [t for t in getattr(self, "_threads", []) if t.is_alive()]
        t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
        t.start()
        self._threads.append(t)

    def _finish(self):
        for t in getattr(self, "_threads", []):
            t.join(timeout=2)


def read_keepalive_request(conn, buf):
    """The next request on a keep-alive connection: (head, body, rest) with <buf> the
    bytes already read; None when the peer closes (or resets) first. The body is
    read by Content-Length (none otherwise)."""
    def more():
        try:
            return conn.recv(65536)
        except OSError:
            return b""

    while b"\r\n\r\n" not in buf:
        piece = more()
        if not piece:
            return None
        buf += piece
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(buf) < length:
        piece = more()
        if not piece:
            return None
        buf += piece
    return head, buf[:length], buf[length:]


def open_fds(pid):
    """How many file descriptors <pid> has open."""
    return len(os.listdir("/proc/%d/fd" % pid))


def access_lines(nx):
    """nextup's access log lines so far (the JSON objects in its stdout/stderr file)."""
    out = []
    for line in nx.stderr_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out
