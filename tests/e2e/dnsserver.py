"""A tiny authoritative DNS server for tests: A and AAAA answers from a table
the test changes while it runs; modes to fail (SERVFAIL) or stay silent.
Listens on UDP <host>:<port> in a thread; stop() closes it."""
import socket
import struct
import threading


class DnsServer:
    def __init__(self, host="127.0.0.77", port=53):
        self.records = {}          # "name." lower-case -> list of IP strings (v4 or v6)
        self.mode = "ok"           # ok | servfail | silent
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.addr = (host, port)
        self._stop = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def set(self, name, ips):
        with self._lock:
            self.records[name.lower().rstrip(".") + "."] = list(ips)

    def stop(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()

    def _serve(self):
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except Exception:       # a malformed query gets no answer
                continue
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _answer(self, q):
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        pos, labels = 12, []
        while q[pos]:
            n = q[pos]
            labels.append(q[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        qname_wire = q[12:pos + 1]
        qtype, qclass = struct.unpack("!HH", q[pos + 1:pos + 5])
        question = q[12:pos + 5]
        name = ".".join(labels).lower() + "."
        with self._lock:
            self.queries += 1
            mode = self.mode
            ips = list(self.records.get(name, []))
            known = name in self.records
        if mode == "silent":
            return None
        rd = flags & 0x0100
        if mode == "servfail":
            return struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 2, 1, 0, 0, 0) + question
        answers = b""
        count = 0
        for ip in ips:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            want = 28 if fam == socket.AF_INET6 else 1
            if qtype != want:
                continue
            rdata = socket.inet_pton(fam, ip)
            answers += qname_wire + struct.pack("!HHIH", want, 1, 1, len(rdata)) + rdata
            count += 1
        rcode = 0 if known else 3   # NXDOMAIN for names never set
        return struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | rcode, 1, count, 0, 0) + question + answers
