#!/usr/bin/env python3
"""A test/demo upstream replica for nextup: a small asyncio HTTP/1.1 server.

usage: backend.py --port P [--host 127.0.0.1] [--name NAME] [--log FILE]
                  [--mode ok|503|503bare|reset|slow]

Prints "ready <port>" on stdout once listening (P may be 0: the chosen port is
printed). Exits 0 on SIGTERM or SIGINT. Standard library only; its own minimal
HTTP/1.1 parser; keep-alive; Content-Length and chunked request bodies; large
bodies are streamed, never held in memory.

Routes (by path prefix, query string ignored); every response carries
"X-Backend: NAME":
  /stats          {"requests": N, "heads": H, "connections": M}: N requests read whole
                  (not counting /stats), H request heads received (any, even malformed;
                  not counting /stats), M connections accepted
  /echo           200, the request body
  /count          200, {"bytes": N, "sha256": "<hex>"} of the request body (streamed)
  /bytes/N        N bytes of PATTERN (64 KiB, repeating), Content-Length
  /chunked/N      the same bytes, Transfer-Encoding: chunked
  /close/N        the same bytes, no Content-Length, Connection: close
  /status/CODE    that status, short body (none for 1xx/204/304)
  /slow/MS        sleeps MS milliseconds, then 200
  /headers        200, body = the request head exactly as received
  /reset          reads the request, then closes with RST (SO_LINGER 0)
  /interim        "103 Early Hints" then a normal 200
  /ws             WebSocket handshake (101), then echoes frames
  anything else   200, body "NAME\\n"
HEAD on any path: the GET headers, no body. "Expect: 100-continue" gets
"100 Continue" before the body is read. A request is counted once its body has
been read completely.

--log FILE: appends one JSON line per request whose body was read completely
(not /stats, not /_control/...), written with one write(2) on an O_APPEND file:
  {"name", "method", "path", "id": X-Request-Id or null, "idem": Idempotency-Key
   or null, "bytes": body length, "sha256": hex of the body, "mode": the mode}
Several replicas (and restarts of one) may share a file.

Modes (--mode at start, or "POST /_control/mode/<m>" sent to the replica itself
at run time; /_control requests are neither counted nor logged). A mode applies
to every request but /stats and /_control/...:
  ok              the routes above
  503             reads the whole request (counted, logged), then answers 503 with
                  "Retry-After: 1", "Connection: close" and the body
                  "replica NAME unavailable\n"
  503bare         the same 503 without Retry-After
  reset           reads the whole request (counted, logged), then closes with RST
  slow            sleeps 2 s after reading the request, then serves the route

Control routes (any method, answered 200 "ok ...\n"):
  /_control/mode/M     switches to mode M (404 for an unknown mode)
  /_control/vanish     every other open connection disappears without a FIN or
                       RST (TCP_REPAIR, needs CAP_NET_ADMIN; 501 if refused): the
                       client side learns of it only when it sends (RST then)
  /_control/close-idle every other open connection is closed (FIN), as a server
                       does with idle keep-alive connections
"""

import argparse
import asyncio
import base64
import hashlib
import http
import json
import os
import signal
import socket
import struct
import sys

PATTERN_LEN = 64 * 1024
MIB = 1024 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MODES = ("ok", "503", "503bare", "reset", "slow")
SLOW_MODE_DELAY = 2.0
TCP_REPAIR = 19  # linux/tcp.h


def make_pattern():
    """The 64 KiB block /bytes, /chunked and /close repeat; not periodic inside."""
    return bytes(((i * 7) ^ (i >> 8) ^ (i >> 13)) & 0xFF for i in range(PATTERN_LEN))


PATTERN = make_pattern()
BLOCK = PATTERN * (MIB // PATTERN_LEN)  # 1 MiB, starts at pattern offset 0


def pattern_bytes(n):
    """The first n bytes of the /bytes/N body (for small n only)."""
    reps = n // PATTERN_LEN + 1
    return (PATTERN * reps)[:n]


def pattern_sha256(n):
    """sha256 hex of the first n bytes of the /bytes/N body, without building it."""
    h = hashlib.sha256()
    full, rest = divmod(n, MIB)
    for _ in range(full):
        h.update(BLOCK)
    h.update(BLOCK[:rest])
    return h.hexdigest()


class BadRequest(Exception):
    pass


class Backend:
    def __init__(self, name, log=None, mode="ok"):
        self.name = name
        self.requests = 0
        self.heads = 0
        self.connections = 0
        self.writers = set()
        self.mode = mode
        self.log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None

    def log_request(self, method, path, hdr, nbytes, digest):
        if self.log_fd is None:
            return
        line = json.dumps({"name": self.name, "method": method, "path": path,
                           "id": hdr.get("x-request-id"), "idem": hdr.get("idempotency-key"),
                           "bytes": nbytes, "sha256": digest, "mode": self.mode}, sort_keys=True)
        os.write(self.log_fd, (line + "\n").encode())

    async def control(self, reader, writer, method, path, headers, keep_alive):
        """/_control/...: run-time switches; not counted, not logged."""
        async for _ in self.body_chunks(reader, headers):
            pass
        what = path[len("/_control/"):]
        if what.startswith("mode/"):
            mode = what[len("mode/"):]
            if mode not in MODES:
                await self.simple(writer, method, 404, ("unknown mode %r\n" % mode).encode(), keep_alive)
                return keep_alive
            self.mode = mode
            await self.simple(writer, method, 200, ("ok mode %s\n" % mode).encode(), keep_alive)
            return keep_alive
        if what == "vanish":
            n = 0
            try:
                for w in list(self.writers):
                    if w is writer:
                        continue
                    w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
                    w.transport.abort()
                    self.writers.discard(w)
                    n += 1
            except OSError as e:
                await self.simple(writer, method, 501, ("TCP_REPAIR refused: %s\n" % e).encode(), keep_alive)
                return keep_alive
            # abort() closes the sockets from a callback of the next loop turns: let those run
            # before answering, so that no request sent after this answer finds one still open.
            for _ in range(3):
                await asyncio.sleep(0)
            await self.simple(writer, method, 200, b"ok vanished %d\n" % n, keep_alive)
            return keep_alive
        if what == "close-idle":
            n = 0
            for w in list(self.writers):
                if w is not writer:
                    w.close()
                    n += 1
            await self.simple(writer, method, 200, b"ok closed %d\n" % n, keep_alive)
            return keep_alive
        await self.simple(writer, method, 404, b"unknown control\n", keep_alive)
        return keep_alive

    # ---- request parsing -------------------------------------------------
    @staticmethod
    def parse_head(head):
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise BadRequest("bad request line")
        method, target, version = (p.decode("latin-1") for p in parts)
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise BadRequest("bad header line")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return method, target, version, headers

    @staticmethod
    async def body_chunks(reader, headers):
        """Yields the request body in pieces of at most 1 MiB."""
        te = [v for k, v in headers if k == "transfer-encoding"]
        cls = [v for k, v in headers if k == "content-length"]
        if te:
            codings = [c.strip().lower() for c in ",".join(te).split(",")]
            if codings[-1] != "chunked":
                raise BadRequest("unsupported transfer-encoding")
            while True:
                line = await reader.readuntil(b"\r\n")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers: discarded
                    return
                while size:
                    data = await reader.read(min(size, MIB))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", size)
                    size -= len(data)
                    yield data
                if await reader.readexactly(2) != b"\r\n":
                    raise BadRequest("bad chunk end")
        elif cls:
            if len(set(cls)) != 1 or not cls[0].isdigit():
                raise BadRequest("bad content-length")
            remaining = int(cls[0])
            while remaining:
                data = await reader.read(min(remaining, MIB))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                yield data

    # ---- response writing ------------------------------------------------
    def head(self, status, headers=(), keep_alive=True, reason=None):
        if reason is None:
            try:
                reason = http.HTTPStatus(status).phrase
            except ValueError:
                reason = "Status"
        out = ["HTTP/1.1 %d %s" % (status, reason)]
        for k, v in headers:
            out.append("%s: %s" % (k, v))
        out.append("X-Backend: %s" % self.name)
        if not keep_alive:
            out.append("Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def simple(self, writer, method, status, body, keep_alive, ctype="text/plain"):
        headers = []
        if status >= 200 and status not in (204, 304):
            headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        else:
            body = b""
        writer.write(self.head(status, headers, keep_alive))
        if method != "HEAD" and body:
            writer.write(body)
        await writer.drain()

    async def pattern_body(self, writer, n, chunked):
        remaining = n
        view = memoryview(BLOCK)
        while remaining:
            k = min(remaining, MIB)
            if chunked:
                writer.write(b"%x\r\n" % k)
            writer.write(view[:k])
            if chunked:
                writer.write(b"\r\n")
            remaining -= k
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    # ---- connection loop -------------------------------------------------
    async def handle(self, reader, writer):
        self.connections += 1
        self.writers.add(writer)
        try:
            while await self.one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except BadRequest as e:
            try:
                await self.simple(writer, "GET", 400, ("bad request: %s\n" % e).encode(), False)
            except ConnectionError:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must be visible in the test output
            print("backend %s: error: %r" % (self.name, e), file=sys.stderr, flush=True)
        finally:
            self.writers.discard(writer)
            try:
                writer.close()
            except Exception:
                pass

    async def one_request(self, reader, writer):
        """Serves one request; True when the connection stays open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        self.heads += 1  # every request head that arrives, even one that is then refused
        method, target, version, headers = self.parse_head(head)
        hdr = {}
        for k, v in headers:
            hdr.setdefault(k, v)
        conn_tokens = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in conn_tokens
        else:
            keep_alive = "close" not in conn_tokens
        path = target.split("?", 1)[0]
        if path.startswith("/stats") or path.startswith("/_control/"):
            self.heads -= 1
        has_body = "transfer-encoding" in hdr or hdr.get("content-length", "0") != "0"
        if hdr.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

        if path.startswith("/_control/"):
            return await self.control(reader, writer, method, path, headers, keep_alive)
        mode = "ok" if path.startswith("/stats") else self.mode

        if mode == "ok" and (path == "/ws" or path.startswith("/ws/")):
            return await self.websocket(reader, writer, hdr)

        # Read (or stream) the body; only then does the request count.
        body = None
        h = hashlib.sha256()
        n = 0
        if path.startswith("/count"):
            async for data in self.body_chunks(reader, headers):
                h.update(data)
                n += len(data)
            result = {"bytes": n, "sha256": h.hexdigest()}
        elif path.startswith("/echo"):
            parts = []
            async for data in self.body_chunks(reader, headers):
                h.update(data)
                n += len(data)
                parts.append(data)
            body = b"".join(parts)
        elif has_body:
            async for data in self.body_chunks(reader, headers):
                h.update(data)
                n += len(data)
        if not path.startswith("/stats"):
            self.requests += 1
            self.log_request(method, path, hdr, n, h.hexdigest())

        if mode in ("503", "503bare"):
            text = ("replica %s unavailable\n" % self.name).encode()
            extra = [("Retry-After", "1")] if mode == "503" else []
            writer.write(self.head(503, [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))]
                                   + extra, keep_alive=False))
            if method != "HEAD":
                writer.write(text)
            await writer.drain()
            return False
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "slow":
            await asyncio.sleep(SLOW_MODE_DELAY)

        if path.startswith("/stats"):
            out = json.dumps({"requests": self.requests, "heads": self.heads,
                              "connections": self.connections}).encode()
            await self.simple(writer, method, 200, out, keep_alive, "application/json")
        elif path.startswith("/count"):
            await self.simple(writer, method, 200, json.dumps(result).encode(), keep_alive,
                              "application/json")
        elif path.startswith("/echo"):
            await self.simple(writer, method, 200, body, keep_alive, "application/octet-stream")
        elif path.startswith(("/bytes/", "/chunked/", "/close/")):
            kind, _, num = path[1:].partition("/")
            try:
                n = int(num)
            except ValueError:
                await self.simple(writer, method, 404, b"bad size\n", keep_alive)
                return keep_alive
            if kind == "chunked" and version == "HTTP/1.0":
                kind = "close"  # a 1.0 peer cannot take chunked
            if kind == "close":
                keep_alive = False
            headers_out = [("Content-Type", "application/octet-stream")]
            if kind == "bytes":
                headers_out.append(("Content-Length", str(n)))
            elif kind == "chunked":
                headers_out.append(("Transfer-Encoding", "chunked"))
            writer.write(self.head(200, headers_out, keep_alive))
            if method != "HEAD":
                await self.pattern_body(writer, n, kind == "chunked")
            else:
                await writer.drain()
        elif path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                code = 400
            await self.simple(writer, method, code, b"status %d\n" % code, keep_alive)
        elif path.startswith("/slow/"):
            try:
                ms = int(path[len("/slow/"):])
            except ValueError:
                ms = 0
            await asyncio.sleep(ms / 1000.0)
            await self.simple(writer, method, 200, b"slow %d\n" % ms, keep_alive)
        elif path.startswith("/headers"):
            await self.simple(writer, method, 200, head, keep_alive)
        elif path.startswith("/reset"):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif path.startswith("/interim"):
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            await self.simple(writer, method, 200, b"final after 103\n", keep_alive)
        else:
            await self.simple(writer, method, 200, self.name.encode() + b"\n", keep_alive)
        return keep_alive

    # ---- WebSocket (RFC 6455) -------------------------------------------
    async def websocket(self, reader, writer, hdr):
        key = hdr.get("sec-websocket-key")
        if "websocket" not in hdr.get("upgrade", "").lower() or not key:
            await self.simple(writer, "GET", 400, b"not a websocket handshake\n", False)
            return False
        self.requests += 1
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        writer.write(self.head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                     ("Sec-WebSocket-Accept", accept)], reason="Switching Protocols"))
        await writer.drain()
        while True:
            b0, b1 = await reader.readexactly(2)
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if masked else None
            payload = await reader.readexactly(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if length < 4096 \
                    else _unmask_fast(payload, mask)
            if opcode == 0x9:  # ping -> pong
                opcode = 0xA
            elif opcode == 0xA:
                continue
            writer.write(ws_frame(opcode, payload, fin=bool(b0 & 0x80)))
            await writer.drain()
            if opcode == 0x8:
                return False


def _unmask_fast(payload, mask):
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def ws_frame(opcode, payload, fin=True, mask=None):
    """One WebSocket frame; masked with <mask> (4 bytes) when given."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask:
        return head + mask + _unmask_fast(payload, mask)
    return head + payload


async def main():
    ap = argparse.ArgumentParser(description="nextup test/demo backend")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default=None)
    ap.add_argument("--log", default=None, help="append one JSON line per request read whole")
    ap.add_argument("--mode", default="ok", choices=MODES)
    args = ap.parse_args()
    backend = Backend(args.name or "backend-%d" % args.port, log=args.log, mode=args.mode)
    server = await asyncio.start_server(backend.handle, args.host, args.port,
                                        limit=4 * MIB, reuse_address=True, backlog=512)
    port = server.sockets[0].getsockname()[1]
    if args.name is None:
        backend.name = "backend-%d" % port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready %d" % port, flush=True)
    await stop.wait()
    server.close()
    for w in list(backend.writers):
        w.transport.abort()
    await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
