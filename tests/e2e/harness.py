"""Helpers for nextup's end-to-end tests: processes, ports, a raw HTTP client.

Everything listens on 127.0.0.1 (or in network namespaces a test creates).
Every process is stopped by PID; every socket operation has a timeout.
"""

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


def free_port():
    """A port on 127.0.0.1 nothing listens on right now (bind to 0, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def base_env():
    """The caller's environment without any NEXTUP_* variable (tests are hermetic)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NEXTUP_")}


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

    def __init__(self, name=None, port=0, host="127.0.0.1"):
        self.host = host
        self.name = name
        self.stderr = tempfile.NamedTemporaryFile(prefix="nextup-backend-", suffix=".err", delete=False)
        cmd = [sys.executable, BACKEND_PY, "--port", str(port), "--host", host]
        if name:
            cmd += ["--name", name]
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

    def __init__(self, upstreams, env=None, workers=2, wait_ready=True):
        last = None
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
        self.bin = nextup_bin()
        if not os.access(self.bin, os.X_OK):
            raise AssertionError("nextup binary %s is missing or not executable "
                                 "(build it: make build/nextup)" % self.bin)
        self.proc = subprocess.Popen([self.bin], env=e, stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr)
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

    def start_backend(self, name=None, port=0):
        b = Backend(name=name, port=port)
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

    def start_nextup(self, upstreams, env=None, workers=2, wait_ready=True):
        if isinstance(upstreams, Backend):
            upstreams = [upstreams]
        if isinstance(upstreams, (list, tuple)):
            upstreams = ",".join(u.addr if isinstance(u, Backend) else u for u in upstreams)
        nx = Nextup(upstreams, env=env, workers=workers, wait_ready=wait_ready)
        self.addCleanup(self._nextup_cleanup, nx)
        return nx

    def _ok(self):
        outcome = getattr(self, "_outcome", None)
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
