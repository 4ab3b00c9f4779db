"""The kernel's health view (NEXTUP_BPF): peers ejected on what the kernel saw of them.

The BPF programs count every TCP socket of the network namespace, not only nextup's: a
failure the application (here: the test process itself) meets on a peer ejects it before
nextup's own requests fail there. Compared, where it matters, with NEXTUP_BPF=off.

Tests: the application's refusals eject a peer before nextup tries it (and with NEXTUP_BPF=off
they do not); NEXTUP_EJECT_KERNEL_FAILURES as a threshold; IPv6 and v4-mapped peers; the ejection
cap holds for kernel verdicts; a replica that starts resetting is ejected (kernel resets or nextup's
gateway errors) and takes traffic again once it recovers; a SYN-dropping peer (netns blackhole) is
ejected on the application's SYN retransmit; NEXTUP_BPF=off and a failed load keep nextup's own
ejections, NEXTUP_BPF=on with a pin dir outside bpffs exits 2; bpftool's dump after known traffic;
a restart reuses the pinned map without ejecting on old history; two nextups on one pin dir at
once (a hand-over) share one set of programs and count each event once; the programs are pinned
node-wide (<NEXTUP_BPF_NODE_DIR>/<set>/link_<program>) and go with the last nextup (nothing counts
while none runs); pins of another network namespace are left alone (auto: one warning and the
user-space signals; on: exit 2 with one line); another build runs beside a running one with a set of
its own, a damaged set is replaced whole, and nothing counts twice. (test_bpf_node.py: several pods.)

Needs root (BPF programs, bpffs, network namespaces) and kernel BTF: without them the tests
that need them skip LOUDLY with the reason on stderr. Each nextup gets its own pin dir
/sys/fs/bpf/nextup-e2e-<pid>-<n>, removed afterwards; the node dir is harness.BPF_NODE_DIR; bpffs
is mounted at /sys/fs/bpf if it is not, and unmounted at the end only if this module mounted it
and it is empty again.
"""

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import unittest

import harness as H

BPFFS = "/sys/fs/bpf"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BPFFS_PRELOADED = {"maps.debug", "progs.debug"}  # what every fresh bpffs mount holds

KERNEL_CONNECT = "kernel: connects refused, timed out or unreachable"
KERNEL_SYN = "kernel: SYN retransmitted with no SYN-ACK"
KERNEL_RESETS = "kernel: connections reset by the peer"
L7_CONNECT = "connect failures seen by nextup"
L7_GATEWAY = "consecutive gateway errors seen by nextup"

_module = {"mounted_bpffs": False, "pins": 0}


# --------------------------------------------------------------------------
# helpers (kept here, not in harness.py)


def say(text):
    sys.stdout.write("\n  " + text)
    sys.stdout.flush()


def bpffs_mounted():
    """True when the last mount at /sys/fs/bpf is a bpffs."""
    kind = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[1] == BPFFS:
                kind = fields[2]
    return kind == "bpf"


def bpf_unavailable():
    """None when BPF tests can run here, else the reason (for a loud skip)."""
    if os.geteuid() != 0:
        return "needs root (loads BPF programs, pins maps on bpffs)"
    if not os.path.exists(VMLINUX_BTF):
        return "the kernel has no BTF (%s missing): the tp_btf programs cannot load" % VMLINUX_BTF
    if not bpffs_mounted():
        p = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        if p.returncode != 0:
            return "bpffs is not mounted at %s and mounting it failed: %s" % (BPFFS, p.stderr.decode().strip())
        _module["mounted_bpffs"] = True
    return None


def tearDownModule():
    if not _module["mounted_bpffs"]:
        return
    left = set(os.listdir(BPFFS)) - BPFFS_PRELOADED
    if left:
        sys.stderr.write("\nnote: leaving %s mounted (this module mounted it): it holds %s\n"
                         % (BPFFS, sorted(left)))
        return
    subprocess.run(["umount", BPFFS], timeout=10)
    _module["mounted_bpffs"] = False


def remove_pin_dir(path):
    """Unlinks the pins in <path> and the directory (nothing else is ever in it)."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def debug_peers(nx):
    st, body = nx.admin_get("/debug/peers")
    if st != 200:
        raise AssertionError("/debug/peers answered %d: %r" % (st, body[:300]))
    return json.loads(body)


def peer_view(nx, address):
    doc = debug_peers(nx)
    for p in doc["peers"]:
        if p["address"] == address:
            return p
    raise AssertionError("/debug/peers has no peer %s: %s" % (address, doc))


def metrics(nx):
    """{name or name{labels}: value} from /metrics (labels as printed)."""
    st, body = nx.admin_get("/metrics")
    if st != 200:
        raise AssertionError("/metrics answered %d" % st)
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def wait_until(fn, timeout, step=0.02):
    """Calls fn() until it returns something true or <timeout> s pass (bounded).
    (value or None, seconds waited)."""
    t0 = time.monotonic()
    while True:
        v = fn()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None, time.monotonic() - t0
        time.sleep(step)


def app_refused_connects(port, n, host="127.0.0.1"):
    """The application's own traffic: <n> blocking connects to host:port that must be refused."""
    refused = 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            refused += 1
        else:
            raise AssertionError("%s:%d accepted a connection: it was meant to be closed" % (host, port))
        finally:
            s.close()
    return refused


def bpftool_dump(pin_dir):
    """`bpftool -j map dump pinned <pin_dir>/peer_stats`: the "formatted" entries (key, value)."""
    p = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", os.path.join(pin_dir, "peer_stats")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    if p.returncode != 0:
        raise AssertionError("bpftool map dump failed (%d): %s" % (p.returncode, p.stderr.decode()))
    entries = json.loads(p.stdout)
    out = []
    for e in entries:
        if "formatted" not in e:
            raise AssertionError("bpftool printed no BTF-formatted entry (the pinned map has no BTF?): %r" % e)
        out.append(e["formatted"])
    return out


def bpftool_map_id(pin_dir):
    p = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(pin_dir, "peer_stats")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    if p.returncode != 0:
        raise AssertionError("bpftool map show failed (%d): %s" % (p.returncode, p.stderr.decode()))
    return json.loads(p.stdout)["id"]


def dump_entry(dump, port, ip="127.0.0.1"):
    """The value for IPv4 peer ip:port (stored as ::ffff:a.b.c.d, family 2), or None."""
    want = [0] * 10 + [255, 255] + [int(x) for x in ip.split(".")]
    for e in dump:
        k = e["key"]
        if k["port"] == port and k["family"] == 2 and list(k["addr"]) == want:
            return e["value"]
    return None


def bpftool_json(*args):
    p = subprocess.run(["bpftool", "-j"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    if p.returncode != 0:
        raise AssertionError("bpftool %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr.decode()))
    return json.loads(p.stdout)


def pinned_links(pin_dir):
    """{pin name: link id} for the link_* pins in <pin_dir>."""
    return {name: bpftool_json("link", "show", "pinned", os.path.join(pin_dir, name))["id"]
            for name in sorted(os.listdir(pin_dir)) if name.startswith("link_")}


def inner_map_id(entry):
    """The inner map id of one entry of `bpftool -j map dump` of a map of maps."""
    v = entry.get("value", entry.get("formatted", {}).get("value"))
    if isinstance(v, list):
        return int.from_bytes(bytes(int(b, 16) for b in v), "little")
    return v


def links_feeding(map_id):
    """How many BPF links on the system run a program that updates map <map_id>, directly or through a
    map of maps holding it (the node set's netns_maps, where a pod's map is registered): the pod's map
    must be fed by exactly one set of programs (PROGS_PER_SET), however many nextups use it, and by none
    once no nextup of its namespace runs."""
    progs = {p["id"]: p for p in bpftool_json("prog", "show")}
    maps = {m["id"]: m for m in bpftool_json("map", "show")}
    reach = {}

    def reaches(mid):
        if mid not in reach:
            reach[mid] = mid == map_id
            if not reach[mid] and maps.get(mid, {}).get("type") == "hash_of_maps":
                try:
                    reach[mid] = map_id in [inner_map_id(e) for e in bpftool_json("map", "dump", "id", str(mid))]
                except AssertionError:
                    reach[mid] = False  # gone meanwhile
        return reach[mid]
    return sum(1 for link in bpftool_json("link", "show")
               if any(reaches(m) for m in progs.get(link.get("prog_id"), {}).get("map_ids", [])))


def links_feeding_settled(map_id, want, timeout=3.0):
    """links_feeding(map_id) once it is <want> (a link unpinned for the last time is released by a
    kernel worker, a moment later), or its value after <timeout> s."""
    n, _ = wait_until(lambda: (lambda k: k if k == want else None)(links_feeding(map_id)), timeout, step=0.05)
    return want if n == want else links_feeding(map_id)


def set_meta_layout(pin_dir, version):
    """Rewrites the layout version in <pin_dir>/peer_stats_meta (what a build of another layout left)."""
    path = os.path.join(pin_dir, "peer_stats_meta")
    value = [int(b, 16) for b in bpftool_json("map", "lookup", "pinned", path, "key", "0", "0", "0", "0")["value"]]
    value[0:4] = list(struct.pack("<I", version))
    p = subprocess.run(["bpftool", "map", "update", "pinned", path, "key", "0", "0", "0", "0", "value"]
                       + [str(b) for b in value], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    if p.returncode != 0:
        raise AssertionError("bpftool map update failed: %s" % p.stderr.decode())


def own_netns_inum():
    return os.stat("/proc/self/ns/net").st_ino


class ResettingServer(H.RawServer):
    """A replica that has gone bad: accepts, reads the request head, then closes with a RST
    (SO_LINGER {1, 0}). Runs in a thread of the test; .accepted counts connections."""

    def handle(self, conn):
        try:
            H.read_request_head(conn)
        except OSError:
            pass
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


ip_cmd = H.ip


class BpfCase(H.NextupCase):
    """Skips loudly without root / BTF / bpffs; hands out pin dirs removed after the test."""

    need_bpf = True

    def setUp(self):
        if self.need_bpf:
            why = bpf_unavailable()
            if why:
                H.skip_loudly(self, why)

    def pin_dir(self):
        _module["pins"] += 1
        path = "%s/nextup-e2e-%d-%d" % (BPFFS, os.getpid(), _module["pins"])
        remove_pin_dir(path)  # a leftover of a run killed hard, same pid
        # Registered before nextup starts: cleanups run last-in first-out, so nextup is stopped first.
        self.addCleanup(remove_pin_dir, path)
        return path

    def bpf_env(self, mode="on", **extra):
        env = {"NEXTUP_BPF": mode, "NEXTUP_HEALTH_INTERVAL_MS": "100"}
        if mode != "off":
            env["NEXTUP_BPF_PIN_DIR"] = self.pin_dir()
        env.update(extra)
        return env


# --------------------------------------------------------------------------
# 1. the application's failures eject a peer before nextup's own requests fail there


class AppFailureEjectsTest(BpfCase):

    need_bpf = False  # the BPF=off half runs anywhere; the BPF=on half checks for itself

    def _sequence(self, mode):
        """Live A and dead B; the test (the application) connects to B 3 times, refused.
        Returns (nextup, A, B address, B's view once ejected or None, seconds to ejection)."""
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        # Ejection of 5 s: the 30 requests below run well inside it.
        nx = self.start_nextup([a, dead], env=self.bpf_env(mode, NEXTUP_EJECT_BASE_MS="5000"))
        doc = debug_peers(nx)
        self.assertEqual(doc["bpf"], mode == "on", "/debug/peers: %s" % doc)
        before = peer_view(nx, dead)
        self.assertEqual(before["verdict"], "healthy", "B before any traffic: %s" % before)
        self.assertEqual(app_refused_connects(dead_port, 3), 3)

        def ejected():
            p = peer_view(nx, dead)
            return p if p["verdict"] == "ejected" else None

        view, took = wait_until(ejected, 2.0)
        return nx, a, dead, view, took

    def _thirty(self, nx):
        statuses = []
        for i in range(30):
            r = self.roundtrip(nx, "GET", "/app/%d" % i)
            statuses.append((r.status, r.get("x-backend")))
        return statuses

    def test_app_refused_connects_eject_with_bpf(self):
        why = bpf_unavailable()
        if why:
            H.skip_loudly(self, why)
        nx, a, dead, view, took = self._sequence("on")
        self.assertIsNotNone(view, "B not ejected within 2 s of the application's 3 refused connects: %s"
                             % peer_view(nx, dead))
        say("BPF on: B ejected %.3f s after the app's 3 refused connects; reason %r; kernel %s"
            % (took, view["reason"], view["kernel"]))
        self.assertLess(took, 0.5, "ejection took %.3f s with NEXTUP_HEALTH_INTERVAL_MS=100" % took)
        self.assertEqual(view["reason"], KERNEL_CONNECT)
        self.assertIsNotNone(view["kernel"])
        self.assertGreaterEqual(view["kernel"]["refused"], 3)
        self.assertEqual(view["l7"]["connect_failures"], 0)
        m0 = metrics(nx)
        self.assertEqual(m0["nextup_bpf_loaded"], 1)
        self.assertEqual(m0['nextup_peer_healthy{peer="%s",service="default"}' % dead], 0)
        self.assertEqual(m0['nextup_peer_ejections_total{peer="%s",service="default"}' % dead], 1)
        self.assertGreaterEqual(m0['nextup_peer_kernel_connect_failures_total{peer="%s",service="default"}' % dead], 3)
        self.assertEqual(m0["nextup_upstream_attempts_total"], 0)

        statuses = self._thirty(nx)
        self.assertEqual(statuses, [(200, "live")] * 30)
        m = metrics(nx)
        say("BPF on: 30 GETs -> attempts %d, refused retries %d"
            % (m["nextup_upstream_attempts_total"], m['nextup_retries_total{reason="refused"}']))
        self.assertEqual(m['nextup_retries_total{reason="refused"}'], 0,
                         "nextup tried B although the kernel had seen it refuse the application")
        self.assertEqual(m["nextup_upstream_attempts_total"], 30)
        after = peer_view(nx, dead)
        self.assertEqual(after["l7"]["connect_failures"], 0)
        self.assertEqual(after["verdict"], "ejected", "B's ejection ended before the 30 GETs did: %s" % after)

    def test_app_refused_connects_do_not_eject_without_bpf(self):
        nx, a, dead, view, took = self._sequence("off")
        self.assertIsNone(view, "B ejected with NEXTUP_BPF=off, before nextup tried it: %s" % view)
        self.assertIsNone(peer_view(nx, dead)["kernel"])
        statuses = self._thirty(nx)
        self.assertEqual(statuses, [(200, "live")] * 30)
        m = metrics(nx)
        say("BPF off: 30 GETs -> attempts %d, refused retries %d"
            % (m["nextup_upstream_attempts_total"], m['nextup_retries_total{reason="refused"}']))
        self.assertGreaterEqual(m['nextup_retries_total{reason="refused"}'], 1,
                                "without the kernel signal nextup should have met B's refusal itself")
        self.assertGreater(m["nextup_upstream_attempts_total"], 30)
        p = peer_view(nx, dead)
        self.assertEqual((p["verdict"], p["reason"]), ("ejected", L7_CONNECT))


class KernelThresholdTest(BpfCase):

    def test_eject_kernel_failures_threshold(self):
        # NEXTUP_EJECT_KERNEL_FAILURES=2: one refusal in an interval is not enough, two are. (The
        # control of test_overlapping_handover_counts_each_event_once: one nextup, one count.)
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        nx = self.start_nextup([a, dead], env=self.bpf_env("on", NEXTUP_EJECT_KERNEL_FAILURES="2"))
        self.assertEqual(app_refused_connects(dead_port, 1), 1)
        time.sleep(0.4)
        p = peer_view(nx, dead)
        self.assertEqual(p["kernel"]["refused"], 1)
        self.assertEqual(p["verdict"], "healthy", "one refusal ejected B with NEXTUP_EJECT_KERNEL_FAILURES=2: %s" % p)
        self.assertEqual(app_refused_connects(dead_port, 2), 2)
        v, took = wait_until(lambda: (lambda q: q if q["verdict"] == "ejected" else None)(peer_view(nx, dead)), 1.0)
        self.assertIsNotNone(v, "two refusals in one interval did not eject B: %s" % peer_view(nx, dead))
        self.assertEqual(v["reason"], KERNEL_CONNECT)
        say("threshold 2: 1 refusal -> healthy; 2 more -> ejected after %.3f s" % took)

    def test_ipv6_and_v4_mapped_app_failures(self):
        # One peer, one key: refusals the application meets on [::1]:P eject the peer [::1]:P, and
        # refusals met through an AF_INET6 socket on ::ffff:127.0.0.1:Q eject the IPv4 peer 127.0.0.1:Q.
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            probe.bind(("::1", 0))
            port6 = probe.getsockname()[1]
        except OSError as e:
            H.skip_loudly(self, "no IPv6 loopback here (%s)" % e)
        finally:
            probe.close()
        port4 = H.free_port()
        a = self.start_backend("live")
        peer6, peer4 = "[::1]:%d" % port6, "127.0.0.1:%d" % port4
        nx = self.start_nextup([a, peer6, peer4], env=self.bpf_env("on", NEXTUP_MAX_EJECTION_PERCENT="100"))
        for addr in (("::1", port6), ("::ffff:127.0.0.1", port4)):
            for _ in range(2):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.settimeout(2.0)
                try:
                    with self.assertRaises(ConnectionRefusedError):
                        s.connect(addr)
                finally:
                    s.close()

        def both():
            v = [peer_view(nx, x) for x in (peer6, peer4)]
            return v if all(x["verdict"] == "ejected" for x in v) else None

        views, took = wait_until(both, 1.0)
        self.assertIsNotNone(views, "not both ejected: %s / %s" % (peer_view(nx, peer6), peer_view(nx, peer4)))
        for v in views:
            self.assertEqual(v["reason"], KERNEL_CONNECT)
            self.assertEqual(v["kernel"]["refused"], 2)
        self.assertEqual(peer_view(nx, a.addr)["verdict"], "healthy")
        say("IPv6 [::1] and v4-mapped ::ffff:127.0.0.1 refusals: both peers ejected after %.3f s" % took)


class KernelEjectionCapTest(BpfCase):

    def test_app_refusals_on_two_of_three_take_both_down(self):
        # NEXTUP_MAX_EJECTION_PERCENT protects capacity, and a peer that refuses connections has
        # none: with B and C both refusing the application, both are down, whatever the cap.
        a = self.start_backend("live")
        ports = [H.free_port(), H.free_port()]
        dead = ["127.0.0.1:%d" % p for p in ports]
        nx = self.start_nextup([a] + dead, env=self.bpf_env("on", NEXTUP_EJECT_BASE_MS="5000"))
        for p in ports:
            self.assertEqual(app_refused_connects(p, 3), 3)

        def both_seen():
            views = [peer_view(nx, d) for d in dead]
            return views if all(v["kernel"] and v["kernel"]["refused"] >= 3 for v in views) else None

        views, _ = wait_until(both_seen, 2.0)
        self.assertIsNotNone(views, "the health view never read both peers' refusals")
        time.sleep(0.3)  # three more polls: a second ejection would have happened by now
        views = [peer_view(nx, d) for d in dead] + [peer_view(nx, a.addr)]
        verdicts = [v["verdict"] for v in views]
        say("cap: states of B, C, A after the app's refusals on B and C: %s (reasons %s)"
            % ([v["state"] for v in views], [v["reason"] for v in views]))
        self.assertEqual([v["state"] for v in views], ["down", "down", "healthy"])
        self.assertEqual(verdicts, ["ejected", "ejected", "healthy"])
        self.assertEqual([v["reason"] for v in views[:2]], [KERNEL_CONNECT, KERNEL_CONNECT])


# --------------------------------------------------------------------------
# 2. a replica that starts resetting connections


class ResettingReplicaTest(BpfCase):
    """Three peers, two good, one that resets every connection after reading the request."""

    def _sequence(self, **extra):
        a = self.start_backend("a")
        c = self.start_backend("c")
        rs = ResettingServer()
        self.addCleanup(rs.stop)
        env = self.bpf_env("on", NEXTUP_RETRY_ON="connect-failure,refused,gateway-error,reset",
                           NEXTUP_EJECT_BASE_MS="300", NEXTUP_EJECT_MAX_MS="2400", **extra)
        pin = env["NEXTUP_BPF_PIN_DIR"]
        nx = self.start_nextup([a, c, rs.addr], env=env)
        statuses, first = [], None
        t0 = time.monotonic()
        # Paced 10 ms apart: the 60 GETs outlast the first ejection (300 ms), so the replica is
        # tried again when it runs out, and ejected again for twice as long.
        for i in range(60):
            r = self.roundtrip(nx, "GET", "/rst/%d" % i)
            statuses.append((r.status, r.get("x-backend")))
            if first is None:
                p = peer_view(nx, rs.addr)
                if p["verdict"] == "ejected":
                    first = (i, time.monotonic() - t0, p)
            time.sleep(0.01)
        took = time.monotonic() - t0
        kernel = dump_entry(bpftool_dump(pin), rs.port)  # the map itself: every connect nextup made to it
        view = peer_view(nx, rs.addr)
        m = metrics(nx)
        retries = {k[len("nextup_retries_total"):]: int(v) for k, v in m.items()
                   if k.startswith("nextup_retries_total")}
        say("resetting replica: 60 GETs in %.3f s; connections it accepted %d; map %s; l7 %s; ejections %d; "
            "first seen ejected after GET #%s (reason %r); retries %s"
            % (took, rs.accepted, kernel and {k: v for k, v in kernel.items() if v and not k.endswith("_ns")},
               view["l7"], view["ejections"], first and first[0], first and first[2]["reason"], retries))
        bad = [(i, s) for i, s in enumerate(statuses) if s[0] != 200 or s[1] not in ("a", "c")]
        self.assertEqual(bad, [], "GETs not answered 200 by a good replica")
        self.assertIsNotNone(first, "the resetting replica was never seen ejected: %s" % view)
        self.assertIsNotNone(kernel, "no map entry for the resetting replica")
        attempts_there = kernel["connect_attempts"]
        self.assertGreaterEqual(attempts_there, 1)
        self.assertLessEqual(attempts_there, 5, "%d connects reached the resetting replica out of 60 GETs"
                             % attempts_there)
        self.assertEqual(rs.accepted, attempts_there)
        self.assertEqual(kernel["resets_received"], attempts_there)
        self.assertEqual(view["l7"]["responses"], 0)
        return nx, rs, first[2]

    def _recovers(self, nx, rs):
        """The replica recovers: a normal one on the same port. Its ejection runs out and it takes traffic."""
        left = peer_view(nx, rs.addr)["ejected_for_ms"]
        rs.stop()
        b = self.start_backend("r-again", port=rs.port)
        self.assertEqual(b.port, rs.port)
        t1 = time.monotonic()
        back, n = None, 0
        while time.monotonic() - t1 < 8.0:
            r = self.roundtrip(nx, "GET", "/back/%d" % n)
            n += 1
            self.assertEqual(r.status, 200, "GET during recovery: %r" % r)
            if r.get("x-backend") == "r-again":
                back = time.monotonic() - t1
                break
            time.sleep(0.05)
        say("recovered replica took traffic again %s s after it came back (ejection left then: %d ms, %d GETs)"
            % ("%.2f" % back if back is not None else "NEVER (8 s)", left, n))
        self.assertIsNotNone(back, "the recovered replica took no traffic within 8 s: %s"
                             % peer_view(nx, rs.addr))
        self.assertLess(back, 5.0)

    def test_resetting_replica_ejected_then_back(self):
        nx, rs, view = self._sequence()
        self.assertIn(view["reason"], (KERNEL_RESETS, L7_GATEWAY))
        self._recovers(nx, rs)

    def test_resetting_replica_kernel_resets_alone(self):
        # nextup's own gateway-error ejection off, the map read every 10 ms: the kernel's count of
        # resets received is what ejects.
        nx, rs, view = self._sequence(NEXTUP_EJECT_GATEWAY_ERRORS="0", NEXTUP_HEALTH_INTERVAL_MS="10")
        self.assertEqual(view["reason"], KERNEL_RESETS)
        self._recovers(nx, rs)


class KernelDrainTest(BpfCase):

    def test_a_burst_of_closes_by_the_replica_is_a_drain(self):
        # The application holds keep-alive connections to B (nextup never asked B for
        # anything). B shuts down gracefully: it closes them all at once, its FIN first.
        # The kernel counts the peer-first closes; against B's habit (none) it is a drain.
        a, b = self.start_backend("a"), self.start_backend("b")
        nx = self.start_nextup([a, b], env=self.bpf_env("on", NEXTUP_HEALTH_INTERVAL_MS="100"))
        conns = []
        for i in range(10):
            c = H.RawConn(b.port, timeout=3)
            self.addCleanup(c.close)
            c.send(H.request_bytes("GET", "/app/%d" % i, host="127.0.0.1:%d" % b.port))
            self.assertEqual(c.read_response().status, 200)
            conns.append(c)
        time.sleep(1.2)   # a dozen intervals: B's habit is no peer-first close
        self.assertEqual(peer_view(nx, b.addr)["state"], "healthy")
        st, out = H.replica_post(b, "/_control/close-idle")
        self.assertEqual(st, 200, out)
        view, took = wait_until(lambda: (lambda v: v if v["state"] == "draining" else None)(peer_view(nx, b.addr)),
                                2.0)
        say("app's 10 keep-alive connections closed by B at once: %s after %s s (%s)"
            % ("draining" if view else "NOT draining", "%.2f" % took if view else "-",
               view and view["reason"]))
        self.assertIsNotNone(view, "B closed every connection at once and was not taken for draining: %s"
                             % peer_view(nx, b.addr))
        self.assertEqual(view["kernel"]["peer_fins"], 10)
        self.assertEqual(peer_view(nx, a.addr)["state"], "healthy")

    def test_closing_after_each_response_is_no_drain(self):
        # A replica that closes every connection after its response (its FIN first, each
        # time), taking a sudden load after a quiet start: as many closes as connections.
        from test_drain import Replica
        a = self.start_backend("a")
        c = Replica("c", mode="close-each")
        self.addCleanup(c.stop)
        nx = self.start_nextup([a.addr, c.addr], env=self.bpf_env("on", NEXTUP_HEALTH_INTERVAL_MS="100"))
        time.sleep(1.2)
        # The application's requests, each on its own connection that the replica closes first.
        for i in range(60):
            conn = H.RawConn(c.port, timeout=3)
            conn.send(H.request_bytes("GET", "/each/%d" % i, host="127.0.0.1:%d" % c.port))
            self.assertEqual(conn.read_response().status, 200)
            self.assertTrue(conn.wait_closed(2))
            conn.close()
        statuses = [self.roundtrip(nx, "GET", "/each/%d" % i).status for i in range(60)]
        time.sleep(0.3)
        view = peer_view(nx, c.addr)
        say("close-each replica under sudden load: 60 app connections + %d requests through nextup, state %s, "
            "kernel peer_fins %s" % (len(statuses), view["state"], view["kernel"] and view["kernel"]["peer_fins"]))
        self.assertEqual(statuses.count(200), 60)
        self.assertGreaterEqual(view["kernel"]["peer_fins"], 60, "the replica's closes were not seen")
        self.assertEqual(view["state"], "healthy")


class AppResetsTest(BpfCase):

    def test_app_resets_keep_nextup_away(self):
        # The application's own connections to B are reset (B accepts, reads, resets);
        # a second later its GETs through nextup never meet B: out on the kernel's word,
        # and back only through a trial (one request, retried elsewhere if it fails).
        a, c = self.start_backend("a"), self.start_backend("c")
        rs = ResettingServer()
        self.addCleanup(rs.stop)
        nx = self.start_nextup([a, c, rs.addr], env=self.bpf_env("on"))
        for i in range(5):
            s = socket.create_connection(("127.0.0.1", rs.port), timeout=2)
            s.sendall(H.request_bytes("GET", "/app/%d" % i))
            try:
                s.recv(100)
            except OSError:
                pass
            s.close()
        time.sleep(1.5)   # longer than the first time out (NEXTUP_EJECT_BASE_MS): only evidence may bring B back
        before = rs.accepted
        statuses = [self.roundtrip(nx, "GET", "/after/%d" % i).status for i in range(30)]
        view = peer_view(nx, rs.addr)
        say("app resets on B, then 30 GETs: %d answered 200, %d reached B; B %s (%s)"
            % (statuses.count(200), rs.accepted - before, view.get("state", view["verdict"]), view["reason"]))
        self.assertEqual(statuses.count(200), 30, statuses)
        self.assertLessEqual(rs.accepted - before, 1, "the resetting replica kept getting requests")
        self.assertNotEqual(view.get("state"), "healthy")


# --------------------------------------------------------------------------
# 3. a peer that drops SYNs: the application's retransmitted SYN ejects it


class SynDroppingPeerTest(BpfCase):

    need_bpf = False

    def setUp(self):
        if os.geteuid() != 0:
            H.skip_loudly(self, "needs root to create a network namespace for the blackholed peer")
        if not shutil.which("ip"):
            H.skip_loudly(self, "needs iproute2 ('ip') for the blackholed peer")
        self.bh = H.Blackhole(self, net=216, tag="bb")

    def _sequence(self, mode):
        a = self.start_backend("live")
        bh_peer = "%s:8080" % self.bh.addr
        # 3 s ejection: from the SYN retransmit at ~1 s it outlasts the requests made at ~1.5 s.
        nx = self.start_nextup([bh_peer, a], env=self.bpf_env(
            mode, NEXTUP_CONNECT_TIMEOUT_MS="2000", NEXTUP_EJECT_BASE_MS="3000"))
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        t0 = time.monotonic()
        err = s.connect_ex((self.bh.addr, 8080))
        try:
            self.assertEqual(err, errno.EINPROGRESS)
            ejected = None
            while time.monotonic() - t0 < 1.5:  # the application holds its connect 1.5 s
                if ejected is None:
                    p = peer_view(nx, bh_peer)
                    if p["verdict"] == "ejected":
                        ejected = (time.monotonic() - t0, p)
                time.sleep(0.025)
        finally:
            s.close()
        timings, statuses = [], []
        for i in range(20):
            t = time.monotonic()
            r = self.roundtrip(nx, "GET", "/syn/%d" % i)
            timings.append(time.monotonic() - t)
            statuses.append((r.status, r.get("x-backend")))
        return nx, bh_peer, ejected, timings, statuses

    def test_syn_retransmits_eject_with_bpf(self):
        why = bpf_unavailable()
        if why:
            H.skip_loudly(self, why)
        nx, peer, ejected, timings, statuses = self._sequence("on")
        m = metrics(nx)
        view = peer_view(nx, peer)
        say("BPF on, SYN-dropping peer: ejected %s s after the app's connect (reason %r); kernel %s; "
            "20 GETs slowest %.3f s; attempts %d; connect_failure retries %d"
            % ("%.3f" % ejected[0] if ejected else "NEVER", ejected and ejected[1]["reason"], view["kernel"],
               max(timings), m["nextup_upstream_attempts_total"], m['nextup_retries_total{reason="connect_failure"}']))
        self.assertIsNotNone(ejected, "the blackholed peer was not ejected while the app's SYN was retransmitted")
        self.assertIn("SYN", ejected[1]["reason"])
        self.assertEqual(ejected[1]["reason"], KERNEL_SYN)
        self.assertGreaterEqual(ejected[0], 0.9, "ejected before the first SYN retransmit (~1 s) could happen")
        self.assertGreaterEqual(view["kernel"]["syn_retransmits"], 1)
        self.assertEqual(view["kernel"]["connects_established"], 0)
        self.assertEqual(statuses, [(200, "live")] * 20)
        self.assertLess(max(timings), 1.0, "a request waited on the blackholed peer: %s" % timings)
        self.assertEqual(m["nextup_upstream_attempts_total"], 20)
        self.assertEqual(m['nextup_retries_total{reason="connect_failure"}'], 0)
        self.assertEqual(m['nextup_retries_total{reason="timeout"}'], 0)

    def test_syn_drops_unseen_without_bpf(self):
        nx, peer, ejected, timings, statuses = self._sequence("off")
        m = metrics(nx)
        say("BPF off, SYN-dropping peer: 20 GETs slowest %.3f s; connect_failure retries %d"
            % (max(timings), m['nextup_retries_total{reason="connect_failure"}']))
        self.assertIsNone(ejected, "ejected with NEXTUP_BPF=off before nextup tried it")
        self.assertEqual(statuses, [(200, "live")] * 20)
        self.assertGreaterEqual(max(timings), 1.9, "no request waited the 2 s connect timeout: %s" % timings)
        self.assertGreaterEqual(m['nextup_retries_total{reason="connect_failure"}'], 1)
        self.assertEqual(peer_view(nx, peer)["reason"], L7_CONNECT)


# --------------------------------------------------------------------------
# 4. without the kernel view: off, and a failed load


class WithoutBpfTest(BpfCase):

    need_bpf = False

    def _own_refused_eject(self, env):
        """Live A, dead B, 20 GETs: nextup's own refused connect must eject B. B's view."""
        a = self.start_backend("live")
        dead = self.dead = "127.0.0.1:%d" % H.free_port()
        env = dict(env, NEXTUP_HEALTH_INTERVAL_MS="100", NEXTUP_EJECT_BASE_MS="5000")
        nx = self.start_nextup([a, dead], env=env)
        early = nx.stderr_text()
        for i in range(20):
            r = self.roundtrip(nx, "GET", "/own/%d" % i)
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"), "GET %d: %r" % (i, r))
        m = metrics(nx)
        view = peer_view(nx, dead)
        self.assertEqual(view["verdict"], "ejected", "nextup's own refused connect did not eject B: %s" % view)
        self.assertGreaterEqual(view["l7"]["connect_failures"], 1)
        # Sequential GETs, a 5 s ejection: B is met exactly once.
        self.assertEqual(m['nextup_retries_total{reason="refused"}'], 1)
        self.assertEqual(m["nextup_upstream_attempts_total"], 21)
        return nx, view, m, early

    def test_off_own_refused_connects_eject(self):
        nx, view, m, _ = self._own_refused_eject({"NEXTUP_BPF": "off"})
        self.assertFalse(debug_peers(nx)["bpf"])
        self.assertEqual(m["nextup_bpf_loaded"], 0)
        self.assertEqual(view["reason"], L7_CONNECT)
        self.assertIsNone(view["kernel"])
        self.assertFalse(any(k.startswith("nextup_peer_kernel_") for k in m))

    def test_auto_load_failure_warns_once_and_still_ejects(self):
        bogus = "/tmp/nextup-e2e-nobpffs-%d/x" % os.getpid()
        self.addCleanup(shutil.rmtree, os.path.dirname(bogus), True)
        nx, view, m, early = self._own_refused_eject({"NEXTUP_BPF": "auto", "NEXTUP_BPF_PIN_DIR": bogus})
        lines = [ln for ln in early.splitlines() if ln.strip()]
        say("NEXTUP_BPF=auto, pin dir %s: stderr at start %r" % (bogus, lines))
        self.assertEqual(len(lines), 1, "want exactly one warning line at start, got %r" % lines)
        self.assertIn("NEXTUP_BPF", lines[0])
        self.assertIn(bogus, lines[0])
        self.assertIn("warn", lines[0])
        self.assertFalse(debug_peers(nx)["bpf"])
        self.assertEqual(m["nextup_bpf_loaded"], 0)
        self.assertEqual(view["reason"], L7_CONNECT)
        self.assertIsNone(view["kernel"])
        self.assertFalse(os.path.exists(bogus), "nextup created %s outside bpffs" % bogus)
        # and only that one warning, after 20 requests too (access lines, JSON on the shared
        # stdout, are flushed every 200 ms and are not diagnostics)
        lines = [ln for ln in nx.stderr_text().splitlines() if ln.strip() and not ln.startswith("{")]
        self.assertEqual(len(lines), 1, "more stderr lines after the requests: %r" % lines)

    def test_on_own_refused_connects_eject_same_verdict(self):
        why = bpf_unavailable()
        if why:
            H.skip_loudly(self, why)
        nx, view, m, _ = self._own_refused_eject(self.bpf_env("on"))
        # The kernel's copy of nextup's refusal shows at the next poll of the map.
        v, _ = wait_until(lambda: (lambda p: p if p["kernel"] else None)(peer_view(nx, self.dead)), 1.0)
        view = v or view
        say("NEXTUP_BPF=on, nextup's own refused connect: verdict %s, reason %r, kernel refused %s"
            % (view["verdict"], view["reason"], view["kernel"] and view["kernel"]["refused"]))
        self.assertTrue(debug_peers(nx)["bpf"])
        self.assertEqual(m["nextup_bpf_loaded"], 1)
        # nextup reports its own failure at once; the kernel's copy of it comes a poll later.
        self.assertIn(view["reason"], (L7_CONNECT, KERNEL_CONNECT))
        self.assertIsNotNone(view["kernel"])
        self.assertGreaterEqual(view["kernel"]["refused"], 1)

    def test_on_with_non_bpffs_pin_dir_exits_2(self):
        bogus = "/tmp/nextup-e2e-nobpffs-on-%d/x" % os.getpid()
        self.addCleanup(shutil.rmtree, os.path.dirname(bogus), True)
        env = H.base_env()
        env.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(),
                    "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
                    "NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(),
                    "NEXTUP_BPF": "on", "NEXTUP_BPF_PIN_DIR": bogus})
        proc = subprocess.Popen([H.nextup_bin()], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            H.stop_pid(proc, signal.SIGKILL)
            proc.communicate(timeout=5)
            raise AssertionError("NEXTUP_BPF=on with pin dir %s did not exit within 10 s" % bogus)
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        say("NEXTUP_BPF=on, pin dir %s: exit %d, stderr %r" % (bogus, proc.returncode, lines[:3]))
        leak = [ln for ln in lines if "LeakSanitizer" in ln or ln.startswith("SUMMARY:")]
        self.assertEqual(proc.returncode, 2, "exit status %d; %s" % (
            proc.returncode, "the sanitizer build reports leaks on this exit path (what nextup_main allocated "
            "before health_bpf_open failed is not freed): %s\n%s" % (leak, "\n".join(lines[:40]))
            if leak else "stderr: %r" % lines))
        self.assertEqual(len(lines), 1, "want one stderr line, got %r" % lines)
        self.assertIn("NEXTUP_BPF", lines[0])
        self.assertEqual(out, b"")
        self.assertFalse(os.path.exists(bogus))


# --------------------------------------------------------------------------
# 5. bpftool's view of the pinned map after known traffic


class BpftoolDumpTest(BpfCase):

    def setUp(self):
        super().setUp()
        if not shutil.which("bpftool"):
            H.skip_loudly(self, "needs bpftool")

    def test_dump_after_known_traffic(self):
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        # Exact counts: one attempt per request (no retries), never ejected (each GET picks A or B at
        # random), no pooling (every request to A is a fresh connect).
        env = self.bpf_env("on", NEXTUP_MAX_RETRIES="0", NEXTUP_POOL_MAX_IDLE="0",
                           NEXTUP_EJECT_CONNECT_FAILURES="0", NEXTUP_EJECT_GATEWAY_ERRORS="0",
                           NEXTUP_EJECT_KERNEL_FAILURES="0")
        pin = env["NEXTUP_BPF_PIN_DIR"]
        nx = self.start_nextup([a, dead], env=env)
        n = 40
        codes = {}
        for i in range(n):
            r = self.roundtrip(nx, "GET", "/dump/%d" % i)
            codes[r.status] = codes.get(r.status, 0) + 1
        self.assertEqual(set(codes) - {200, 502}, set(), "statuses %s" % codes)
        n502, n200 = codes.get(502, 0), codes.get(200, 0)
        self.assertGreaterEqual(n502, 1)
        self.assertGreaterEqual(n200, 1)
        dump = bpftool_dump(pin)
        d = dump_entry(dump, dead_port)
        live = dump_entry(dump, a.port)
        say("bpftool after %d GETs (%d x 200 from A, %d x 502 from B): B %s; A %s" % (n, n200, n502, d, live))
        self.assertIsNotNone(d, "no entry for port %d in bpftool's dump: %s" % (dead_port, dump))
        self.assertIsNotNone(live, "no entry for port %d in bpftool's dump" % a.port)
        self.assertEqual(d["refused"], n502)
        self.assertEqual(d["connect_attempts"], n502)
        self.assertEqual(d["connects_established"], 0)
        self.assertEqual(live["connects_established"], n200)
        self.assertEqual(live["connect_attempts"], n200)
        self.assertEqual(live["refused"] + live["connect_timeouts"] + live["unreachable"], 0)
        # The health view reads the same map (at its next poll).
        view, _ = wait_until(lambda: (lambda p: p if p["kernel"] and p["kernel"]["refused"] == n502 else None)(
            peer_view(nx, dead)), 1.0)
        self.assertIsNotNone(view, "/debug/peers kernel view of B never matched bpftool: %s" % peer_view(nx, dead))
        self.assertEqual(view["verdict"], "healthy")  # NEXTUP_EJECT_*=0: never ejected
        m = metrics(nx)
        self.assertEqual(m["nextup_upstream_attempts_total"], n)
        self.assertEqual(m["nextup_upstream_connects_total"], n)
        self.assertEqual(m['nextup_peer_kernel_connect_failures_total{peer="%s",service="default"}' % dead], n502)
        self.assertEqual(m['nextup_peer_ejections_total{peer="%s",service="default"}' % dead], 0)


# --------------------------------------------------------------------------
# 6. a restart reuses the pinned map, and old history does not eject


class RestartReusesMapTest(BpfCase):

    def setUp(self):
        super().setUp()
        if not shutil.which("bpftool"):
            H.skip_loudly(self, "needs bpftool")

    def test_restart_keeps_counters_and_baseline(self):
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        env = self.bpf_env("on", NEXTUP_EJECT_BASE_MS="300", NEXTUP_LOG_LEVEL="info")
        pin = env["NEXTUP_BPF_PIN_DIR"]
        nx1 = self.start_nextup([a, dead], env=env)
        self.assertEqual(app_refused_connects(dead_port, 4), 4)
        v, _ = wait_until(lambda: (lambda p: p if p["verdict"] == "ejected" else None)(peer_view(nx1, dead)), 2.0)
        self.assertIsNotNone(v, "first nextup did not eject B on the kernel's 4 refusals")
        for i in range(5):
            self.assertEqual(self.roundtrip(nx1, "GET", "/one/%d" % i).status, 200)
        id1 = bpftool_map_id(pin)
        nx1.expect_exit = True
        self.assertEqual(nx1.stop(), 0)
        d1 = dump_entry(bpftool_dump(pin), dead_port)
        self.assertIsNotNone(d1, "no entry for B after the first nextup stopped")
        self.assertGreaterEqual(d1["refused"], 4)

        nx2 = self.start_nextup([a, dead], env=env)
        self.assertIn("reusing pinned map", nx2.stderr_text())
        self.assertEqual(bpftool_map_id(pin), id1, "the restarted nextup replaced the pinned map")
        d2 = dump_entry(bpftool_dump(pin), dead_port)
        self.assertEqual(d2, d1, "counters changed across the restart with no traffic")
        time.sleep(0.6)  # six health intervals: old history must not eject
        view = peer_view(nx2, dead)
        say("restart: map id %d kept; B refused=%d; after restart B %s, ejections %d, kernel refused %s"
            % (id1, d1["refused"], view["verdict"], view["ejections"], view["kernel"] and view["kernel"]["refused"]))
        self.assertEqual(view["verdict"], "healthy", "old failures ejected B after the restart: %s" % view)
        self.assertEqual(view["ejections"], 0)
        self.assertIsNotNone(view["kernel"])
        self.assertEqual(view["kernel"]["refused"], d1["refused"])

        # New failures on the kept map count, and eject.
        self.assertEqual(app_refused_connects(dead_port, 2), 2)
        v, took = wait_until(lambda: (lambda p: p if p["verdict"] == "ejected" else None)(peer_view(nx2, dead)), 2.0)
        self.assertIsNotNone(v, "the restarted nextup did not eject B on 2 new refusals")
        self.assertEqual(v["reason"], KERNEL_CONNECT)
        d3 = dump_entry(bpftool_dump(pin), dead_port)
        self.assertEqual(d3["refused"], d1["refused"] + 2)
        self.assertEqual(d3["connect_attempts"], d1["connect_attempts"] + 2)
        say("restart: 2 new refusals -> refused %d, ejected after %.3f s" % (d3["refused"], took))


    def test_overlapping_handover_counts_each_event_once(self):
        # A hand-over restart: the new nextup starts on the same listen address (SO_REUSEPORT) and
        # the same pin dir while the old one still runs (it would then drain for up to
        # NEXTUP_DRAIN_TIMEOUT_MS). The new one reuses the pinned map and the pinned programs feeding
        # it, and attaches none of its own: each connect must still count once, and one refusal must
        # not reach a threshold of 2.
        a = self.start_backend("live")
        # B answers while the shared listen address is tried (a request there may go to either peer,
        # and a refusal met by nextup itself would count too), then stops: its port refuses from then on.
        b = self.start_backend("b")
        dead_port = b.port
        dead = b.addr
        env = self.bpf_env("on", NEXTUP_EJECT_KERNEL_FAILURES="2", NEXTUP_LOG_LEVEL="info",
                           NEXTUP_POOL_MAX_IDLE="0")
        pin = env["NEXTUP_BPF_PIN_DIR"]
        old = self.start_nextup([a, dead], env=env)
        new = self.start_nextup([a, dead], env=dict(env, NEXTUP_LISTEN="127.0.0.1:%d" % old.listen_port))
        self.assertIn("reusing pinned map", new.stderr_text())
        map_id = bpftool_map_id(pin)
        feeding = links_feeding(map_id)
        self.assertEqual(self.roundtrip(old, "GET", "/handover").status, 200)  # the shared listen address
        b.stop()
        zero = {"connect_attempts": 0, "refused": 0}
        d0 = dump_entry(bpftool_dump(pin), dead_port) or zero
        self.assertEqual(app_refused_connects(dead_port, 1), 1)
        time.sleep(0.4)
        d = dump_entry(bpftool_dump(pin), dead_port) or zero
        counted = (d["connect_attempts"] - d0["connect_attempts"], d["refused"] - d0["refused"])
        verdicts = [peer_view(nx, dead) for nx in (old, new)]
        say("hand-over: 1 refused connect by the app with two nextups on %s: %d links feed map %d; counted "
            "(attempts, refused) %s; verdicts old %s / new %s (NEXTUP_EJECT_KERNEL_FAILURES=2)"
            % (pin, feeding, map_id, counted, verdicts[0]["verdict"], verdicts[1]["verdict"]))
        self.assertEqual(feeding, PROGS_PER_SET, "%d links feed the shared map while two nextups run: want one "
                         "set of %d" % (feeding, PROGS_PER_SET))
        self.assertEqual(counted, (1, 1),
                         "one refused connect counted %s times in the shared pinned map while two nextups ran; "
                         "with NEXTUP_EJECT_KERNEL_FAILURES=2 that single refusal left B %s in the old and %s in "
                         "the new nextup" % (counted, verdicts[0]["verdict"], verdicts[1]["verdict"]))
        self.assertEqual([v["verdict"] for v in verdicts], ["healthy", "healthy"])


# --------------------------------------------------------------------------
# 7. the programs are pinned node-wide: one set per node, gone with the last nextup


PROGS_PER_SET = 4  # set_state, receive_reset, send_reset and this kernel's tcp_retransmit_skb variant
FIXED_LINKS = {"link_handle_set_state", "link_handle_receive_reset", "link_handle_send_reset"}


def node_sets():
    """The program set dirs (v<layout>-<hash>) under this test process's NEXTUP_BPF_NODE_DIR."""
    if not os.path.isdir(H.BPF_NODE_DIR):
        return []
    return sorted(os.path.join(H.BPF_NODE_DIR, n) for n in os.listdir(H.BPF_NODE_DIR) if n.startswith("v"))


def variant_bin():
    """The same nextup built with another BPF object (bpf/bpf.mk's bpf-variant): another program set."""
    return os.path.join(os.path.dirname(H.nextup_bin()), "bpf-variant", "nextup")


class PinnedLinksTest(BpfCase):

    def setUp(self):
        super().setUp()
        if not shutil.which("bpftool"):
            H.skip_loudly(self, "needs bpftool")

    def test_programs_pinned_node_wide_gone_with_the_last_nextup(self):
        # The links are pinned in the node's set dir, none in the pod's. When the last nextup of the
        # namespace stops, its entry goes, and with the last one on the node the set: a refusal the
        # application meets while no nextup runs is not counted (no program runs for a pod without
        # nextup). The next nextup brings the set back and reuses the pod's map, counters kept.
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        env = self.bpf_env("on", NEXTUP_LOG_LEVEL="info", NEXTUP_EJECT_KERNEL_FAILURES="0")
        pin = env["NEXTUP_BPF_PIN_DIR"]
        nx1 = self.start_nextup([a, dead], env=env)
        sets = node_sets()
        self.assertEqual(len(sets), 1, "program sets under %s: %s" % (H.BPF_NODE_DIR, sets))
        links = pinned_links(sets[0])
        map_id = bpftool_map_id(pin)
        self.assertEqual(pinned_links(pin), {}, "link pins in the pod's dir %s" % sorted(os.listdir(pin)))
        self.assertEqual(len(links), PROGS_PER_SET, "link pins in %s: %s" % (sets[0], sorted(os.listdir(sets[0]))))
        self.assertTrue(FIXED_LINKS <= set(links), links)
        self.assertEqual(links_feeding(map_id), PROGS_PER_SET)
        self.assertEqual(app_refused_connects(dead_port, 2), 2)
        nx1.expect_exit = True
        self.assertEqual(nx1.stop(), 0)

        self.assertEqual(node_sets(), [], "the set outlived the last nextup")
        self.assertEqual(links_feeding_settled(map_id, 0), 0, "the programs still feed the map with no nextup")
        live = {link["id"] for link in bpftool_json("link", "show")}
        self.assertFalse(live & set(links.values()), "the set's links still exist")
        d0 = dump_entry(bpftool_dump(pin), dead_port)
        self.assertEqual((d0["connect_attempts"], d0["refused"]), (2, 2))
        self.assertEqual(app_refused_connects(dead_port, 3), 3)  # no nextup runs
        self.assertEqual(dump_entry(bpftool_dump(pin), dead_port), d0, "counted while no nextup ran")

        nx2 = self.start_nextup([a, dead], env=env)
        self.assertIn("reusing pinned map", nx2.stderr_text())
        self.assertEqual(bpftool_map_id(pin), map_id)
        self.assertEqual(len(node_sets()), 1)
        self.assertEqual(links_feeding(map_id), PROGS_PER_SET)
        self.assertEqual(app_refused_connects(dead_port, 1), 1)
        view, _ = wait_until(lambda: (lambda p: p if p["kernel"] and p["kernel"]["refused"] == 3 else None)(
            peer_view(nx2, dead)), 1.0)
        self.assertIsNotNone(view, "the second nextup shows no kernel counters for B: %s" % peer_view(nx2, dead))
        self.assertEqual(view["verdict"], "healthy")
        say("links %s in %s while nextup ran, gone with it (3 refusals then, uncounted); the next nextup: "
            "map id %d kept, refused 2 -> 3" % (sorted(links.values()), sets[0], map_id))
        nx2.expect_exit = True
        self.assertEqual(nx2.stop(), 0)
        self.assertEqual(node_sets(), [])


# --------------------------------------------------------------------------
# 8. pins of another network namespace are left alone


class ForeignNetnsPinsTest(BpfCase):
    """An owner nextup runs in a network namespace of its own and pins into a pin dir; a nextup in the
    test's namespace is then pointed at the same pin dir (pods sharing the host's /sys/fs/bpf)."""

    OWNER_PORT = 18090  # inside the owner's namespace: nothing listens there

    def setUp(self):
        super().setUp()
        if not shutil.which("bpftool") or not shutil.which("ip") or not shutil.which("nsenter"):
            H.skip_loudly(self, "needs bpftool, iproute2 ('ip') and nsenter")

    def _owner(self):
        """(pin dir, the owner namespace's inode, a function making 3 more refusals there): the owner
        nextup runs in that namespace and has pinned its set. nsenter, not `ip netns exec`: that one
        also mounts a sysfs of the namespace over /sys, hiding /sys/fs/bpf, which a pod mounts from
        the host."""
        ns = "nx-bpfown-%d" % os.getpid()
        ip_cmd("netns", "del", ns, check=False)
        ip_cmd("netns", "add", ns)
        self.addCleanup(ip_cmd, "netns", "del", ns, check=False)
        ip_cmd("-n", ns, "link", "set", "lo", "up")
        inum = os.stat("/var/run/netns/" + ns).st_ino
        pin = self.pin_dir()
        env = H.base_env()
        env.update({"NEXTUP_LISTEN": "127.0.0.1:18080", "NEXTUP_ADMIN": "127.0.0.1:18081",
                    "NEXTUP_UPSTREAMS": "127.0.0.1:18082", "NEXTUP_WORKERS": "1", "NEXTUP_BPF": "on",
                    "NEXTUP_BPF_PIN_DIR": pin, "NEXTUP_LOG_LEVEL": "info"})
        log = open(os.path.join("/tmp", "nextup-owner-%d.err" % os.getpid()), "w+b")
        enter = ["nsenter", "--net=/var/run/netns/" + ns]
        proc = subprocess.Popen(enter + [H.nextup_bin()], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def stop():
            H.stop_pid(proc)
            log.close()
            os.unlink(log.name)
        self.addCleanup(stop)  # after pin_dir(): runs first, the pins are removed after the owner stopped

        def complete():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError("the owner nextup exited (%s): %s" % (proc.returncode, log.read().decode()))
            names = set(os.listdir(pin)) if os.path.isdir(pin) else set()
            # Pinned, and registered with the node's set: fed by its programs.
            return "peer_stats" in names and links_feeding(bpftool_map_id(pin)) == PROGS_PER_SET

        ok, _ = wait_until(complete, 10.0, step=0.05)
        self.assertTrue(ok, "the owner nextup did not pin its set in %s" % pin)

        def in_ns(argv):
            return subprocess.run(enter + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)

        # The owner's own counters: 3 refusals met in its namespace.
        script = ("import socket\nfor _ in range(3):\n s = socket.socket()\n try: s.connect(('127.0.0.1', %d))\n"
                  " except ConnectionRefusedError: pass\n s.close()\n" % self.OWNER_PORT)
        self.assertEqual(in_ns([sys.executable, "-c", script]).returncode, 0)
        d = dump_entry(bpftool_dump(pin), self.OWNER_PORT)
        self.assertEqual((d["connect_attempts"], d["refused"]), (3, 3), "the owner's map: %s" % d)
        return pin, inum, lambda: in_ns([sys.executable, "-c", script])

    def _untouched(self, pin, map_id, links, refused):
        self.assertEqual(bpftool_map_id(pin), map_id, "the other namespace's map was replaced")
        self.assertEqual(pinned_links(pin), links, "the other namespace's links were replaced")
        self.assertEqual(links_feeding(map_id), PROGS_PER_SET)
        self.assertEqual(dump_entry(bpftool_dump(pin), self.OWNER_PORT)["refused"], refused)

    def _expected_line(self, pin, inum):
        return ("NEXTUP_BPF_PIN_DIR=%s: pinned by network namespace %d, this one is %d: give each pod its own "
                "pin directory" % (pin, inum, own_netns_inum()))

    def test_auto_warns_once_and_falls_back(self):
        pin, inum, owner_refusals = self._owner()
        map_id, links = bpftool_map_id(pin), pinned_links(pin)
        a = self.start_backend("live")
        dead = "127.0.0.1:%d" % H.free_port()
        nx = self.start_nextup([a, dead], env={"NEXTUP_BPF": "auto", "NEXTUP_BPF_PIN_DIR": pin,
                                               "NEXTUP_HEALTH_INTERVAL_MS": "100", "NEXTUP_EJECT_BASE_MS": "5000"})
        lines = [ln for ln in nx.stderr_text().splitlines() if ln.strip()]
        say("pins of netns %d, nextup in netns %d with NEXTUP_BPF=auto: %r" % (inum, own_netns_inum(), lines))
        self.assertEqual(len(lines), 1, "want exactly one warning line at start, got %r" % lines)
        self.assertIn("warn", lines[0])
        self.assertIn("NEXTUP_BPF=auto", lines[0])
        self.assertIn(self._expected_line(pin, inum), lines[0])
        self.assertFalse(debug_peers(nx)["bpf"])
        self.assertEqual(metrics(nx)["nextup_bpf_loaded"], 0)
        # The user-space signals still work: nextup's own refused connect ejects B.
        for i in range(20):
            r = self.roundtrip(nx, "GET", "/fallback/%d" % i)
            self.assertEqual((r.status, r.get("x-backend")), (200, "live"))
        view = peer_view(nx, dead)
        self.assertEqual((view["verdict"], view["reason"]), ("ejected", L7_CONNECT))
        self.assertIsNone(view["kernel"])
        self._untouched(pin, map_id, links, 3)
        # ... and the owner's programs still count for the owner.
        self.assertEqual(owner_refusals().returncode, 0)
        self._untouched(pin, map_id, links, 6)

    def test_on_exits_2_with_one_line(self):
        pin, inum, _ = self._owner()
        map_id, links = bpftool_map_id(pin), pinned_links(pin)
        env = H.base_env()
        env.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
                    "NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(), "NEXTUP_BPF": "on",
                    "NEXTUP_BPF_PIN_DIR": pin})
        proc = subprocess.Popen([H.nextup_bin()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            H.stop_pid(proc, signal.SIGKILL)
            proc.communicate(timeout=5)
            raise AssertionError("NEXTUP_BPF=on on another namespace's pins did not exit within 15 s")
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        say("pins of netns %d, NEXTUP_BPF=on: exit %d, %r" % (inum, proc.returncode, lines))
        self.assertEqual(proc.returncode, 2, "stderr: %r" % lines)
        self.assertEqual(lines, ["nextup: NEXTUP_BPF=on: " + self._expected_line(pin, inum)
                                 + " (or remove it if that namespace is gone)"])
        self.assertEqual(out, b"")
        self._untouched(pin, map_id, links, 3)


# --------------------------------------------------------------------------
# 9. another build beside a running one; a damaged set replaced; no event counted twice


class PinsReplacedTest(BpfCase):

    def setUp(self):
        super().setUp()
        if not shutil.which("bpftool"):
            H.skip_loudly(self, "needs bpftool")

    def _env(self):
        return self.bpf_env("on", NEXTUP_LOG_LEVEL="info", NEXTUP_EJECT_KERNEL_FAILURES="0")

    def test_other_build_runs_beside_the_old_one(self):
        # A nextup of another build (another BPF object) starts in the pod while the old one still runs:
        # it gets a program set of its own beside the old one, and replaces the pod's map (the old map was
        # fed by the old set); the old nextup keeps its own map, fed by the old set. Each map counts a
        # refusal once. The old set goes with the old nextup.
        other = variant_bin()
        if not os.access(other, os.X_OK):
            H.skip_loudly(self, "needs %s (make %s)" % (other, os.path.relpath(other, H.REPO)))
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        env = self._env()
        pin = env["NEXTUP_BPF_PIN_DIR"]
        old = self.start_nextup([a, dead], env=env)
        old_map, old_sets = bpftool_map_id(pin), node_sets()
        new = self.start_nextup([a, dead], env=env, binary=other)
        self.assertIn("replacing pinned map", new.stderr_text())
        self.assertIn("another nextup build", new.stderr_text())
        new_map, new_sets = bpftool_map_id(pin), node_sets()
        self.assertNotEqual(new_map, old_map)
        self.assertEqual(len(old_sets), 1)
        self.assertEqual(len(new_sets), 2, "program sets: %s" % new_sets)
        self.assertFalse(set(pinned_links(new_sets[0]).values()) & set(pinned_links(new_sets[1]).values()))
        self.assertEqual(links_feeding(new_map), PROGS_PER_SET)
        self.assertEqual(links_feeding(old_map), PROGS_PER_SET)  # the old set, for the old nextup's map

        self.assertEqual(app_refused_connects(dead_port, 1), 1)
        d_new = dump_entry(bpftool_dump(pin), dead_port)
        d_old = dump_entry([e["formatted"] for e in bpftool_json("map", "dump", "id", str(old_map))], dead_port)
        say("another build beside a running nextup: sets %s; map %d -> %d; one refusal: new map %s, old map %s"
            % ([os.path.basename(p) for p in new_sets], old_map, new_map,
               d_new and (d_new["connect_attempts"], d_new["refused"]),
               d_old and (d_old["connect_attempts"], d_old["refused"])))
        self.assertEqual((d_new["connect_attempts"], d_new["refused"]), (1, 1))
        self.assertEqual((d_old["connect_attempts"], d_old["refused"]), (1, 1))
        for nx in (old, new):
            v, _ = wait_until(lambda: (lambda p: p if p["kernel"] else None)(peer_view(nx, dead)), 1.0)
            self.assertIsNotNone(v)
            self.assertEqual(v["kernel"]["refused"], 1)

        old.expect_exit = True
        self.assertEqual(old.stop(), 0)
        self.assertEqual(links_feeding_settled(old_map, 0), 0, "the old set outlived the old nextup")
        self.assertEqual(node_sets(), [p for p in new_sets if p not in old_sets], "the old set is still pinned")
        self.assertEqual(app_refused_connects(dead_port, 1), 1)
        d_new = dump_entry(bpftool_dump(pin), dead_port)
        self.assertEqual((d_new["connect_attempts"], d_new["refused"]), (2, 2))

    def test_damaged_set_replaced(self):
        # The set's pinned links run other code than this build loads (two pins swapped: each runs the
        # other's program) while a nextup uses it: the next nextup (a hand-over, same pin dir) replaces the
        # set whole after emptying it, the running one moves to the new set at its next sweep, the old
        # programs are detached, and events count once.
        a = self.start_backend("live")
        dead_port = H.free_port()
        dead = "127.0.0.1:%d" % dead_port
        env = self._env()
        pin = env["NEXTUP_BPF_PIN_DIR"]
        nx1 = self.start_nextup([a, dead], env=env)
        sets = node_sets()
        self.assertEqual(len(sets), 1)
        old_links = pinned_links(sets[0])
        send, recv, tmp = (os.path.join(sets[0], n) for n in ("link_handle_send_reset", "link_handle_receive_reset",
                                                              "swap"))
        os.rename(send, tmp)
        os.rename(recv, send)
        os.rename(tmp, recv)

        nx2 = self.start_nextup([a, dead], env=env)
        self.assertIn("replacing the program set", nx2.stderr_text())
        self.assertIn("runs other code", nx2.stderr_text())
        self.assertIn("reusing pinned map", nx2.stderr_text())
        map_id = bpftool_map_id(pin)
        new_links = pinned_links(sets[0])
        self.assertFalse(set(new_links.values()) & set(old_links.values()))
        gone, took = wait_until(lambda: not ({link["id"] for link in bpftool_json("link", "show")}
                                             & set(old_links.values())), 8.0, step=0.2)
        self.assertTrue(gone, "the damaged set's programs are still attached")
        self.assertEqual(links_feeding(map_id), PROGS_PER_SET)
        zero = {"connect_attempts": 0, "refused": 0}
        d0 = dump_entry(bpftool_dump(pin), dead_port) or zero
        self.assertEqual(app_refused_connects(dead_port, 2), 2)
        d = dump_entry(bpftool_dump(pin), dead_port)
        counted = (d["connect_attempts"] - d0["connect_attempts"], d["refused"] - d0["refused"])
        say("damaged set replaced: links %s -> %s, the old ones gone after %.1f s; 2 refusals counted %s"
            % (sorted(old_links.values()), sorted(new_links.values()), took, counted))
        self.assertEqual(counted, (2, 2))
        for nx in (nx1, nx2):
            view, _ = wait_until(lambda: (lambda p: p if p["kernel"] and p["kernel"]["refused"] == d["refused"]
                                          else None)(peer_view(nx, dead)), 1.0)
            self.assertIsNotNone(view, "kernel view: %s" % peer_view(nx, dead))


if __name__ == "__main__":
    unittest.main()
