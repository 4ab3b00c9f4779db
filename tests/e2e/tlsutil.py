"""TLS helpers for nextup's end-to-end tests: certificates made at test time with the
`openssl` command (nothing secret is committed), nginx TLS replicas, a strict Python TLS
replica, and a TLS client connection with the harness's HTTP reader.

Everything lives in a temporary directory and listens on 127.0.0.1; every process is
stopped by PID; every socket operation has a timeout.

Run on its own (`python3 tests/e2e/tlsutil.py selftest`) it makes the certificates,
checks them with `openssl verify`, and asks an nginx TLS replica for a response over a
verified Python TLS connection.

`python3 tlsutil.py serve ...` is the strict replica (see StrictReplica): a TLS server
that, unlike nginx, aborts the handshake when a required client certificate is missing.
"""

import argparse
import hashlib
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# A start date safely in the past for certificates that should be valid now (clock skew
# between certificate generation and use is then no issue), and an expired window.
VALID_START = "20200101000000Z"
EXPIRED_START = "20200101000000Z"
EXPIRED_END = "20210101000000Z"


def openssl_version():
    p = subprocess.run([OPENSSL, "version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    return p.stdout.decode().strip()


def run_openssl(args, cwd=None, input=None):
    p = subprocess.run([OPENSSL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       cwd=cwd, input=input, timeout=30)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed (%d): %s" % (" ".join(args), p.returncode,
                                                              p.stderr.decode("utf-8", "replace").strip()))
    return p.stdout.decode("utf-8", "replace")


def fingerprint(pem_path):
    """SHA-256 of the DER form of the (first) certificate in <pem_path>."""
    with open(pem_path) as f:
        text = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    if not m:
        raise AssertionError("no certificate in %s" % pem_path)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest()


class Cert:
    """A certificate and its key on disk."""

    def __init__(self, name, cert, key, serial):
        self.name = name
        self.cert = cert
        self.key = key
        self.serial = serial  # int

    @property
    def fingerprint(self):
        return fingerprint(self.cert)

    def __repr__(self):
        return "<Cert %s serial %#x %s>" % (self.name, self.serial, self.cert)


class CertFactory:
    """A test CA in a temp dir (an `openssl ca` database, so serials and validity dates are
    chosen by the test) and the certificates the TLS tests need:

      ca          the CA (ca.crt is the bundle nextup and the clients verify with)
      server      replicas: SAN DNS:localhost, DNS:replica.test, IP:127.0.0.1 (serverAuth)
      listener    nextup's listener: SAN DNS:localhost, IP:127.0.0.1 (serverAuth)
      client      a client certificate (clientAuth) for mTLS both ways
      expired     like server, valid 2020-01-01 .. 2021-01-01
      wrongname   SAN DNS:other.test only, no IP
      rogue       a client certificate from another, self-signed CA (not trusted)

    More with leaf(); keys are EC P-256 (fast to make)."""

    def __init__(self, directory=None):
        self.dir = directory or tempfile.mkdtemp(prefix="nextup-tls-")
        self.db = os.path.join(self.dir, "ca-db")
        os.makedirs(os.path.join(self.db, "newcerts"), exist_ok=True)
        open(os.path.join(self.db, "index.txt"), "w").close()
        with open(os.path.join(self.db, "index.txt.attr"), "w") as f:
            f.write("unique_subject = no\n")
        self.cnf = os.path.join(self.db, "ca.cnf")
        with open(self.cnf, "w") as f:
            f.write("""\
[ ca ]
default_ca = test_ca

[ test_ca ]
dir = {db}
database = {db}/index.txt
new_certs_dir = {db}/newcerts
serial = {db}/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no

[ policy_any ]
commonName = supplied
organizationName = optional

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
""".format(db=self.db))
        self._serial = 0x1000
        self.ca = self._make_ca("ca", "nextup e2e test CA")
        self.rogue_ca = self._make_ca("rogue-ca", "nextup e2e rogue CA")
        self.server = self.leaf("server", "replica", ["DNS:localhost", "DNS:replica.test", "IP:127.0.0.1"])
        self.listener = self.leaf("listener", "localhost", ["DNS:localhost", "IP:127.0.0.1"])
        self.client = self.leaf("client", "nextup-test-client", [], usage="client")
        self.expired = self.leaf("expired", "replica", ["DNS:localhost", "DNS:replica.test", "IP:127.0.0.1"],
                                 start=EXPIRED_START, end=EXPIRED_END)
        self.wrongname = self.leaf("wrongname", "other.test", ["DNS:other.test"])
        self.rogue = self._self_signed_client("rogue", "nextup-rogue-client")

    def path(self, name):
        return os.path.join(self.dir, name)

    def new_key(self, name):
        key = self.path(name + ".key")
        run_openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        os.chmod(key, 0o600)
        return key

    def _make_ca(self, name, cn):
        key = self.new_key(name)
        crt = self.path(name + ".crt")
        run_openssl(["req", "-config", self.cnf, "-new", "-x509", "-key", key, "-out", crt, "-subj", "/CN=" + cn,
                     "-days", "3650", "-sha256", "-extensions", "v3_ca", "-set_serial", "1"])
        return Cert(name, crt, key, 1)

    def _self_signed_client(self, name, cn):
        """A client certificate signed by the rogue CA (not the test CA)."""
        key = self.new_key(name)
        csr = self.path(name + ".csr")
        crt = self.path(name + ".crt")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                    "extendedKeyUsage = clientAuth\n")
        run_openssl(["req", "-config", self.cnf, "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn])
        run_openssl(["x509", "-req", "-in", csr, "-CA", self.rogue_ca.cert, "-CAkey", self.rogue_ca.key,
                     "-set_serial", "77", "-days", "30", "-sha256", "-extfile", ext, "-out", crt])
        return Cert(name, crt, key, 77)

    def leaf(self, name, cn, sans, usage="server", serial=None, start=VALID_START, end=None, days=3650,
             key=None):
        """A certificate signed by the test CA with `openssl ca` (explicit serial, -startdate,
        -enddate or -days). <key>: reuse an existing key file instead of making one."""
        if serial is None:
            self._serial += 1
            serial = self._serial
        key = key or self.new_key(name)
        csr = self.path(name + ".csr")
        crt = self.path(name + ".crt")
        ext = self.path(name + ".ext")
        lines = ["[ leaf ]", "basicConstraints = critical, CA:FALSE",
                 "keyUsage = critical, digitalSignature, keyEncipherment",
                 "extendedKeyUsage = %s" % ("serverAuth" if usage == "server" else
                                            "clientAuth" if usage == "client" else "serverAuth, clientAuth"),
                 "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
        if sans:
            lines.append("subjectAltName = " + ", ".join(sans))
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(self.db, "serial"), "w") as f:
            f.write("%X\n" % serial if len("%X" % serial) % 2 == 0 else "0%X\n" % serial)
        run_openssl(["req", "-config", self.cnf, "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn])
        args = ["ca", "-batch", "-config", self.cnf, "-in", csr, "-out", crt, "-cert", self.ca.cert,
                "-keyfile", self.ca.key, "-notext", "-extfile", ext, "-extensions", "leaf", "-startdate", start]
        args += ["-enddate", end] if end else ["-days", str(days)]
        run_openssl(args)
        return Cert(name, crt, key, serial)

    def verify(self, cert, purpose=None, name=None, ip=None, ca=None):
        """(ok, output) of `openssl verify -CAfile ca [-purpose] [-verify_hostname|-verify_ip] cert`."""
        args = ["verify", "-CAfile", (ca or self.ca).cert]
        if purpose:
            args += ["-purpose", purpose]
        if name:
            args += ["-verify_hostname", name]
        if ip:
            args += ["-verify_ip", ip]
        p = subprocess.run([OPENSSL] + args + [cert.cert], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        return p.returncode == 0, p.stdout.decode("utf-8", "replace").strip()

    def serial_of(self, cert):
        out = run_openssl(["x509", "-in", cert.cert, "-noout", "-serial"])
        return int(out.strip().split("=", 1)[1], 16)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# client side


def client_context(ca=None, cert=None, verify=True, min_version=None, max_version=None, seclevel0=False):
    """An ssl.SSLContext for a test client: verifies with <ca> (a Cert or a path) and checks the
    host name when <verify>; presents <cert> (a Cert) when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile=ca.cert if isinstance(ca, Cert) else ca)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLSVersion.TLSv1_1 is deprecated: tests use it on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    return ctx


class TLSConn(H.RawConn):
    """RawConn over TLS: the harness's response reader on an ssl.SSLSocket. The handshake
    runs in the constructor (errors raise ssl.SSLError / OSError)."""

    def __init__(self, port, ctx, server_hostname="localhost", host="127.0.0.1", timeout=H.SOCK_TIMEOUT):
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            raw.settimeout(timeout)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.eof = False
        # Kept after close(): the certificate and version this handshake got.
        self._der = self.sock.getpeercert(binary_form=True)
        info = self.sock.getpeercert() if ctx.verify_mode != ssl.CERT_NONE else None
        self._serial = int(info["serialNumber"], 16) if info and "serialNumber" in info else None
        self._version = self.sock.version()
        self.session_reused = self.sock.session_reused

    def _fill(self, n=65536):
        try:
            return super()._fill(n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
            return False

    def peer_der(self):
        return self._der

    def peer_fingerprint(self):
        return hashlib.sha256(self._der).hexdigest() if self._der else None

    def peer_serial(self):
        """The peer certificate's serial (int); None without a verifying context."""
        return self._serial

    def version(self):
        return self._version


# --------------------------------------------------------------------------
# nginx TLS replica


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format tls '$remote_addr conn=$connection n=$connection_requests proto=$ssl_protocol '
                   'reused=$ssl_session_reused alpn="$ssl_alpn_protocol" sni="$ssl_server_name" '
                   'client_verify=$ssl_client_verify client_serial=$ssl_client_serial '
                   '"$request" $status';
    access_log {dir}/access.log tls;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    keepalive_timeout {keepalive};
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        ssl_session_cache shared:tls_{port}:1m;
        ssl_session_tickets on;
{client_verify}
        client_max_body_size 0;
        location = /big {{
            default_type application/octet-stream;
            add_header X-Backend {name} always;
            alias {dir}/big.bin;
        }}
        location / {{
            default_type text/plain;
            add_header X-Backend {name} always;
            return {status} "{name}\\n";
        }}
    }}
}}
"""


class NginxTLSReplica:
    """nginx serving TLS on 127.0.0.1:<port> with <cert> (a Cert); every request answers
    <status> (200) "<name>\\n" with X-Backend: <name>. <client_ca>: ssl_verify_client on with that CA
    (nginx then answers 400 to a client without a valid certificate; it does not fail the
    handshake). GET /big serves <big_bytes> random bytes; request bodies of any size are accepted. The access log records, per request, the connection serial, the protocol,
    whether the session was resumed, ALPN, SNI and the client certificate's verdict.
    Runs in the foreground (daemon off) so that the Popen PID is the master; stopped by PID."""

    def __init__(self, name, cert, client_ca=None, protocols="TLSv1.2 TLSv1.3", port=0, keepalive="60s",
                 big_bytes=0, status=200):
        if not os.access(NGINX, os.X_OK):
            raise unittest_skip("nginx is not installed (%s)" % NGINX)
        self.name = name
        self.cert = cert
        self.dir = tempfile.mkdtemp(prefix="nextup-nginx-%s-" % name)
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody when started by root: /big, body temp files
        self.access_log = os.path.join(self.dir, "access.log")
        self.error_log = os.path.join(self.dir, "error.log")
        self.proc = None
        # GET /big serves <big_bytes> random bytes (sha256 in .big_sha256) from a file.
        self.big_sha256 = None
        if big_bytes:
            data = os.urandom(big_bytes)
            with open(os.path.join(self.dir, "big.bin"), "wb") as f:
                f.write(data)
            self.big_sha256 = hashlib.sha256(data).hexdigest()
        last = None
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = port or H.free_port()
            conf = os.path.join(self.dir, "nginx.conf")
            cv = ""
            if client_ca is not None:
                cv = "        ssl_verify_client on;\n        ssl_client_certificate %s;\n" % (
                    client_ca.cert if isinstance(client_ca, Cert) else client_ca)
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(dir=self.dir, port=self.port, cert=cert.cert, key=cert.key,
                                          protocols=protocols, client_verify=cv, name=name,
                                          keepalive=keepalive, status=int(status)))
            self.stderr = open(os.path.join(self.dir, "stderr"), "wb")
            self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-e", self.error_log, "-c", conf],
                                         stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
            self.stderr.close()
            try:
                self._wait_listening()
                return
            except AssertionError as e:
                last = e
                text = self.log_text()
                self.stop()
                if "in use" in text and not port:
                    continue
                self._rmdir()
                raise
        self._rmdir()
        raise last

    def _wait_listening(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx %s exited with %s: %s" % (self.name, self.proc.returncode,
                                                                     self.log_text()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx %s not listening on %d within %.0f s: %s"
                             % (self.name, self.port, timeout, self.log_text()))

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def log_text(self):
        out = []
        for p in (os.path.join(self.dir, "stderr"), self.error_log):
            try:
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(out)

    def access_entries(self):
        """The access log as dicts: conn, n, proto, reused, alpn, sni, client_verify,
        client_serial, request, status (ints where numeric)."""
        out = []
        try:
            with open(self.access_log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        pat = re.compile(r'(\S+) conn=(\d+) n=(\d+) proto=(\S*) reused=(\S*) alpn="([^"]*)" sni="([^"]*)" '
                         r'client_verify=(\S*) client_serial=(\S*) "([^"]*)" (\d+)')
        for line in lines:
            m = pat.match(line)
            if not m:
                continue
            out.append({"client": m.group(1), "conn": int(m.group(2)), "n": int(m.group(3)),
                        "proto": m.group(4), "reused": m.group(5), "alpn": m.group(6), "sni": m.group(7),
                        "client_verify": m.group(8), "client_serial": m.group(9), "request": m.group(10),
                        "status": int(m.group(11))})
        return out

    def wait_entries(self, n, timeout=3.0, pred=None):
        """access_entries() once at least <n> entries (matching <pred>) are there, or after
        <timeout> s: nginx writes a request's log line after sending its response."""
        deadline = time.monotonic() + timeout
        while True:
            es = self.access_entries()
            if len([e for e in es if pred is None or pred(e)]) >= n or time.monotonic() >= deadline:
                return es
            time.sleep(0.02)

    def stop(self):
        if self.proc is not None:
            H.stop_pid(self.proc, wait=5.0)  # SIGTERM: fast shutdown, the master stops its worker

    def _rmdir(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup(self):
        self.stop()
        self._rmdir()


def unittest_skip(reason):
    import unittest
    sys.stderr.write("\n*** SKIPPED: %s ***\n" % reason)
    return unittest.SkipTest(reason)


# --------------------------------------------------------------------------
# strict Python TLS replica (a subprocess running this file with "serve")


class StrictReplica:
    """A Python TLS replica in a subprocess: HTTP/1.1 keep-alive, 200 "<name>\\n" with
    X-Backend; a request with a body is read whole first and answered "<name> <bytes> <sha256>\\n". With <client_ca>, a client certificate is required (CERT_REQUIRED: the
    handshake is aborted when none or a bad one is sent). <max_tls>/<min_tls>: "1.1",
    "1.2", "1.3" bound the versions it accepts (TLS 1.1 needs @SECLEVEL=0, which is set).
    Counts requests and handshakes; stats() reads them from its stdout-free counter file."""

    def __init__(self, name, cert, client_ca=None, min_tls=None, max_tls=None):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="nextup-strict-%s-" % name)
        self.stats_path = os.path.join(self.dir, "stats")
        self.err_path = os.path.join(self.dir, "stderr")
        cmd = [sys.executable, os.path.abspath(__file__), "serve", "--name", name, "--cert", cert.cert,
               "--key", cert.key, "--stats", self.stats_path]
        if client_ca is not None:
            cmd += ["--client-ca", client_ca.cert if isinstance(client_ca, Cert) else client_ca]
        if min_tls:
            cmd += ["--min-tls", min_tls]
        if max_tls:
            cmd += ["--max-tls", max_tls]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                         env=H.base_env())
        line = b""
        deadline = time.monotonic() + 10
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            b = os.read(self.proc.stdout.fileno(), 1) if r else b""
            if not b:
                self.cleanup()
                raise AssertionError("strict replica %s did not print 'ready <port>': %s" % (name, self.err_text()))
            line += b
        m = re.match(rb"ready (\d+)", line)
        if not m:
            self.cleanup()
            raise AssertionError("strict replica printed %r" % line)
        self.port = int(m.group(1))

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def err_text(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stats(self):
        """{'handshakes': n, 'handshake_failures': n, 'requests': n, 'failure_reasons': [...]}"""
        out = {"handshakes": 0, "handshake_failures": 0, "requests": 0, "failure_reasons": []}
        try:
            with open(self.stats_path) as f:
                for line in f:
                    k, _, v = line.rstrip("\n").partition(" ")
                    if k == "fail":
                        out["handshake_failures"] += 1
                        out["failure_reasons"].append(v)
                    elif k == "hs":
                        out["handshakes"] += 1
                    elif k == "req":
                        out["requests"] += 1
        except FileNotFoundError:
            pass
        return out

    def stop(self):
        if self.proc.stdout:
            self.proc.stdout.close()
            self.proc.stdout = None
        H.stop_pid(self.proc, wait=5.0)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


TLS_VERSIONS = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _serve(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        ctx.load_verify_locations(cafile=args.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if args.min_tls == "1.1" or args.max_tls == "1.1":
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLSVersion.TLSv1_1 is deprecated: that is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        if args.min_tls:
            ctx.minimum_version = TLS_VERSIONS[args.min_tls]
        if args.max_tls:
            ctx.maximum_version = TLS_VERSIONS[args.max_tls]
    ctx.set_alpn_protocols(["http/1.1"])
    lock = threading.Lock()
    stats = open(args.stats, "a", buffering=1)

    def note(line):
        with lock:
            stats.write(line + "\n")

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(128)

    def handle(raw):
        raw.settimeout(30)
        try:
            try:
                s = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as e:
                note("fail %s" % (getattr(e, "reason", None) or e))
                return
            note("hs %s" % s.version())
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                reqbody, buf = buf[:need], buf[need:]
                note("req")
                body = (args.name + "\n").encode() if not need else (
                    "%s %d %s\n" % (args.name, need, hashlib.sha256(reqbody).hexdigest())).encode()
                close = re.search(rb"(?im)^connection:\s*close", head) is not None
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: " + args.name.encode() +
                          b"\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"")
                          + body)
                if close:
                    return
        except (ssl.SSLError, OSError):
            return
        finally:
            try:
                raw.close()
            except OSError:
                pass

    sys.stdout.write("ready %d\n" % ls.getsockname()[1])
    sys.stdout.flush()
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


# --------------------------------------------------------------------------
# Kubernetes-style Secret volume: files are symlinks into ..data, replaced atomically


class SecretDir:
    """A directory laid out as the kubelet lays out a Secret volume:
        tls.crt -> ..data/tls.crt, tls.key -> ..data/tls.key, ..data -> ..<timestamp>/
    update() writes a new timestamped directory, points ..data_tmp at it and renames
    ..data_tmp over ..data (one atomic rename), then removes the old directory."""

    def __init__(self, parent, name="secret"):
        self.dir = os.path.join(parent, name)
        os.makedirs(self.dir, exist_ok=True)
        self.cert = os.path.join(self.dir, "tls.crt")
        self.key = os.path.join(self.dir, "tls.key")
        self.current = None
        self.gen = 0

    def update(self, cert_file, key_file):
        self.gen += 1
        ts = "..%s_%06d" % (time.strftime("%Y_%m_%d_%H_%M_%S"), self.gen)
        d = os.path.join(self.dir, ts)
        os.makedirs(d)
        shutil.copyfile(cert_file, os.path.join(d, "tls.crt"))
        shutil.copyfile(key_file, os.path.join(d, "tls.key"))
        os.chmod(os.path.join(d, "tls.key"), 0o600)
        tmp = os.path.join(self.dir, "..data_tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(ts, tmp)
        os.rename(tmp, os.path.join(self.dir, "..data"))
        for f in ("tls.crt", "tls.key"):
            link = os.path.join(self.dir, f)
            if not os.path.lexists(link):
                os.symlink(os.path.join("..data", f), link)
        if self.current:
            shutil.rmtree(os.path.join(self.dir, self.current), ignore_errors=True)
        self.current = ts


# --------------------------------------------------------------------------
# self test


def selftest():
    print(openssl_version())
    f = CertFactory()
    try:
        checks = [
            ("server", f.server, "sslserver", "localhost", None, True),
            ("server replica.test", f.server, "sslserver", "replica.test", None, True),
            ("server IP", f.server, "sslserver", None, "127.0.0.1", True),
            ("listener", f.listener, "sslserver", "localhost", None, True),
            ("listener IP", f.listener, "sslserver", None, "127.0.0.1", True),
            ("client", f.client, "sslclient", None, None, True),
            ("expired", f.expired, "sslserver", "localhost", None, False),
            ("wrongname as localhost", f.wrongname, "sslserver", "localhost", None, False),
            ("wrongname as 127.0.0.1", f.wrongname, "sslserver", None, "127.0.0.1", False),
            ("wrongname as other.test", f.wrongname, "sslserver", "other.test", None, True),
            ("rogue client", f.rogue, "sslclient", None, None, False),
        ]
        bad = []
        for label, cert, purpose, name, ip, want in checks:
            ok, out = f.verify(cert, purpose=purpose, name=name, ip=ip)
            print("  openssl verify %-24s -> %-5s %s" % (label, ok, out.splitlines()[-1] if out else ""))
            if ok != want:
                bad.append(label)
        for c in (f.server, f.listener, f.client, f.expired, f.wrongname):
            if f.serial_of(c) != c.serial:
                bad.append("serial of %s" % c.name)
        print("  expired:", run_openssl(["x509", "-in", f.expired.cert, "-noout", "-dates"]).replace("\n", " "))
        r = NginxTLSReplica("selftest", f.server)
        rm = NginxTLSReplica("selftest-mtls", f.server, client_ca=f.ca)
        s = StrictReplica("strict", f.server, client_ca=f.ca)
        try:
            for rep in (r, s):
                c = TLSConn(rep.port, client_context(ca=f.ca, cert=f.client), server_hostname="replica.test")
                c.send(H.request_bytes("GET", "/"))
                resp = c.read_response()
                print("  %s: %s %s %r %s serial %#x" % (rep.__class__.__name__, c.version(), resp.status,
                                                        resp.body, resp.get("x-backend"), c.peer_serial()))
                if resp.status != 200 or c.peer_serial() != f.server.serial:
                    bad.append("replica %s answer" % rep.__class__.__name__)
                c.close()
            c = TLSConn(rm.port, client_context(ca=f.ca, cert=f.client), server_hostname="localhost")
            c.send(H.request_bytes("GET", "/"))
            resp = c.read_response()
            c.close()
            c = TLSConn(rm.port, client_context(ca=f.ca), server_hostname="localhost")
            c.send(H.request_bytes("GET", "/"))
            resp2 = c.read_response()
            c.close()
            print("  nginx mTLS with client cert %d, without %d %r" % (resp.status, resp2.status, resp2.body[:60]))
            print("  nginx access log:", rm.access_entries())
            if resp.status != 200 or resp2.status != 400:
                bad.append("nginx mTLS")
            try:
                c = TLSConn(s.port, client_context(ca=f.ca), server_hostname="localhost", timeout=5)
                c.send(H.request_bytes("GET", "/"))
                resp3 = c.read_response()
                bad.append("strict replica answered %d without a client certificate" % resp3.status)
            except (ssl.SSLError, OSError, H.ConnectionClosed) as e:
                print("  strict replica without client cert: %r" % e)
            print("  strict stats:", s.stats())
        finally:
            r.cleanup()
            rm.cleanup()
            s.cleanup()
        if bad:
            print("SELFTEST FAILED:", bad)
            return 1
        print("selftest ok")
        return 0
    finally:
        f.cleanup()


def main(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest")
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--client-ca")
    s.add_argument("--min-tls", choices=sorted(TLS_VERSIONS))
    s.add_argument("--max-tls", choices=sorted(TLS_VERSIONS))
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--stats", required=True)
    a = p.parse_args(argv)
    if a.cmd == "selftest":
        return selftest()
    _serve(a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
