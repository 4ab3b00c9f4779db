"""One BPF program set per node, each pod's counters its own (issue 14).

Pods are network namespaces made here (`ip netns add`), each with a backend and a nextup started
inside it with nsenter (not `ip netns exec`, which mounts the namespace's sysfs over /sys and hides
/sys/fs/bpf, which a pod mounts from the host), each with its own NEXTUP_BPF_PIN_DIR and the test
process's NEXTUP_BPF_NODE_DIR (harness.BPF_NODE_DIR). Every pod uses the SAME addresses (127.0.0.1 and
the same ports inside its namespace) with different amounts of traffic, so a count that leaked from one
pod into another would show.

Tests: two pods share one set of programs (4 links, one map of namespaces with exactly their two
entries), and each pod's map (bpftool, /debug/peers) holds exactly its own traffic; one pod's nextup
exits: its entry and ns/ dir are gone, the other pod's keeps counting with no gap (refusals made
right before, right after and later all counted, map and links unchanged); a nextup killed hard leaves
its entry, which the surviving pod's sweep removes (within HEALTH_BPF_SWEEP_MS and a health interval);
with the last nextup gone the set is gone too.

Needs root, kernel BTF, bpftool, iproute2 and nsenter: without them the tests skip LOUDLY.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

import harness as H
import test_bpf_health as B

NEXTUP_PORT, ADMIN_PORT, BACKEND_PORT, DEAD_PORT = 18080, 18081, 18082, 18090


class Pod:
    """A network namespace with a backend and a nextup of its own (processes stopped by PID)."""

    def __init__(self, case, name):
        self.case = case
        self.ns = "nx-node-%d-%s" % (os.getpid(), name)
        H.ip("netns", "del", self.ns, check=False)
        H.ip("netns", "add", self.ns)
        case.addCleanup(H.ip, "netns", "del", self.ns, check=False)
        H.ip("-n", self.ns, "link", "set", "lo", "up")
        self.path = "/var/run/netns/" + self.ns
        self.inum = os.stat(self.path).st_ino
        self.pin = case.pin_dir()
        self.nextup = None
        self.log = None
        self.backend = self.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(BACKEND_PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        case.addCleanup(H.stop_pid, self.backend)

    def spawn(self, argv, **kw):
        return subprocess.Popen(["nsenter", "--net=" + self.path] + argv, stdin=subprocess.DEVNULL, **kw)

    def run(self, script):
        """Runs a Python <script> in the namespace; its stdout (bounded: 30 s)."""
        p = subprocess.run(["nsenter", "--net=" + self.path, sys.executable, "-c", script],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if p.returncode != 0:
            raise AssertionError("in %s: %s" % (self.ns, p.stderr.decode()))
        return p.stdout.decode()

    def start(self, caps=None):
        """Starts the pod's nextup; with <caps> (e.g. "bpf,perfmon"), with only those capabilities, as the
        manifests give them (setpriv: inheritable, ambient and bounding sets)."""
        env = H.base_env()
        env.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % NEXTUP_PORT, "NEXTUP_ADMIN": "127.0.0.1:%d" % ADMIN_PORT,
                    "NEXTUP_UPSTREAMS": "127.0.0.1:%d,127.0.0.1:%d" % (BACKEND_PORT, DEAD_PORT),
                    "NEXTUP_WORKERS": "1", "NEXTUP_BPF": "on", "NEXTUP_BPF_PIN_DIR": self.pin,
                    "NEXTUP_LOG_LEVEL": "info", "NEXTUP_HEALTH_INTERVAL_MS": "100",
                    "NEXTUP_EJECT_KERNEL_FAILURES": "0", "NEXTUP_EJECT_CONNECT_FAILURES": "0",
                    "NEXTUP_MAX_RETRIES": "0", "NEXTUP_POOL_MAX_IDLE": "0"})
        self.log = open("/tmp/nextup-node-%d-%s.err" % (os.getpid(), self.ns), "w+b")
        argv = [H.nextup_bin()]
        if caps:
            only = "-all," + ",".join("+" + c for c in caps.split(","))
            argv = ["setpriv", "--inh-caps=" + only, "--ambient-caps=" + only, "--bounding-set=" + only, "--"] + argv
        self.nextup = self.spawn(argv, env=env, stdout=self.log, stderr=self.log)
        self.case.addCleanup(self.stop)

        def registered():
            if self.nextup.poll() is not None:
                raise AssertionError("nextup in %s exited (%s): %s" % (self.ns, self.nextup.returncode, self.stderr()))
            if not os.path.exists(os.path.join(self.pin, "peer_stats")):
                return False
            return B.links_feeding(B.bpftool_map_id(self.pin)) == B.PROGS_PER_SET
        ok, _ = B.wait_until(registered, 10.0, step=0.05)
        self.case.assertTrue(ok, "nextup in %s never registered its map: %s" % (self.ns, self.stderr()))
        self.map_id = B.bpftool_map_id(self.pin)

    def stderr(self):
        if not self.log:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM):
        if self.nextup is None:
            return None
        rc = H.stop_pid(self.nextup, sig)
        self.nextup = None
        self.log.close()
        os.unlink(self.log.name)
        self.log = None
        return rc

    def refusals(self, n):
        out = self.run("import socket\nr = 0\nfor _ in range(%d):\n s = socket.socket()\n s.settimeout(2)\n"
                       " try: s.connect(('127.0.0.1', %d))\n except ConnectionRefusedError: r += 1\n s.close()\n"
                       "print(r)\n" % (n, DEAD_PORT))
        self.case.assertEqual(int(out), n)

    def gets(self, n):
        """<n> GETs through nextup (Connection: close; NEXTUP_POOL_MAX_IDLE=0: one upstream connect each,
        to the backend or to the dead port). The statuses, counted."""
        out = self.run("import http.client, json\nc = {}\nfor i in range(%d):\n"
                       " h = http.client.HTTPConnection('127.0.0.1', %d, timeout=10)\n"
                       " h.request('GET', '/?%%d' %% i, headers={'Connection': 'close'})\n"
                       " s = h.getresponse().status\n c[s] = c.get(s, 0) + 1\n h.close()\n"
                       "print(json.dumps(c))\n" % (n, NEXTUP_PORT))
        return {int(k): v for k, v in json.loads(out).items()}

    def view(self, port):
        """/debug/peers' kernel counters for 127.0.0.1:<port>, from inside the namespace."""
        out = self.run("import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:%d/debug/peers', "
                       "timeout=5).read().decode())\n" % ADMIN_PORT)
        for p in json.loads(out)["peers"]:
            if p["address"] == "127.0.0.1:%d" % port:
                return p["kernel"]
        raise AssertionError("no peer 127.0.0.1:%d in %s's /debug/peers: %s" % (port, self.ns, out))

    def dump(self, port):
        return B.dump_entry(B.bpftool_dump(self.pin), port) or {"connect_attempts": 0, "refused": 0,
                                                                "connects_established": 0}


def registered_namespaces(set_dir):
    """{inum: inner map id} of the set's netns_maps."""
    out = {}
    for e in B.bpftool_json("map", "dump", "pinned", os.path.join(set_dir, "netns_maps")):
        key = e.get("key", e.get("formatted", {}).get("key"))
        if isinstance(key, list):
            key = int.from_bytes(bytes(int(b, 16) for b in key), "little")
        out[key] = B.inner_map_id(e)
    return out


class NodeSetTest(B.BpfCase):

    def setUp(self):
        super().setUp()
        for tool in ("bpftool", "ip", "nsenter"):
            if not shutil.which(tool):
                H.skip_loudly(self, "needs bpftool, iproute2 ('ip') and nsenter")

    def _two_pods(self):
        a, b = Pod(self, "a"), Pod(self, "b")
        a.start()
        b.start()
        return a, b

    def test_two_pods_each_see_their_own(self):
        a, b = self._two_pods()
        sets = B.node_sets()
        self.assertEqual(len(sets), 1, "program sets: %s" % sets)
        links = B.pinned_links(sets[0])
        self.assertEqual(len(links), B.PROGS_PER_SET)
        self.assertEqual(B.pinned_links(a.pin), {})
        self.assertEqual(registered_namespaces(sets[0]), {a.inum: a.map_id, b.inum: b.map_id})
        self.assertNotEqual(a.map_id, b.map_id)
        for pod in (a, b):
            self.assertEqual(B.links_feeding(pod.map_id), B.PROGS_PER_SET)

        # The same peer addresses in both pods, different traffic: 3 refusals in a, 5 in b; GETs.
        a.refusals(3)
        b.refusals(5)
        ca, cb = a.gets(6), b.gets(10)
        da, db = a.dump(DEAD_PORT), b.dump(DEAD_PORT)
        la, lb = a.dump(BACKEND_PORT), b.dump(BACKEND_PORT)
        say = B.say
        say("one set %s (%d links) for pods a (ns %d, map %d) and b (ns %d, map %d); a: 3 refusals, GETs %s -> "
            "dead %s, live %s; b: 5 refusals, GETs %s -> dead %s, live %s"
            % (os.path.basename(sets[0]), len(links), a.inum, a.map_id, b.inum, b.map_id, ca,
               (da["connect_attempts"], da["refused"]), la["connects_established"], cb,
               (db["connect_attempts"], db["refused"]), lb["connects_established"]))
        for pod, d, live, codes, app in ((a, da, la, ca, 3), (b, db, lb, cb, 5)):
            self.assertEqual(set(codes) - {200, 502}, set(), codes)
            self.assertEqual(d["refused"], app + codes.get(502, 0), "%s's map: %s" % (pod.ns, d))
            self.assertEqual(d["connect_attempts"], app + codes.get(502, 0))
            self.assertEqual(live["connects_established"], codes.get(200, 0))
            k, _ = B.wait_until(lambda: (lambda v: v if v and v["refused"] == d["refused"] else None)(
                pod.view(DEAD_PORT)), 2.0, step=0.1)
            self.assertIsNotNone(k, "%s's /debug/peers: %s" % (pod.ns, pod.view(DEAD_PORT)))
        # The test's own namespace is no pod: its refusal is in nobody's map.
        self.assertEqual(B.app_refused_connects(DEAD_PORT, 1), 1)
        self.assertEqual(a.dump(DEAD_PORT)["refused"], da["refused"])
        self.assertEqual(b.dump(DEAD_PORT)["refused"], db["refused"])

    def test_one_exits_the_other_keeps_counting(self):
        a, b = self._two_pods()
        sets = B.node_sets()
        links = B.pinned_links(sets[0])
        b.refusals(2)
        base = b.dump(DEAD_PORT)["refused"]
        self.assertEqual(base, 2)
        self.assertEqual(a.stop(), 0)
        b.refusals(1)                       # right after a's exit
        self.assertEqual(registered_namespaces(sets[0]), {b.inum: b.map_id}, "a's entry is still there")
        self.assertFalse(os.path.exists(os.path.join(sets[0], "ns", str(a.inum))))
        self.assertEqual(B.links_feeding_settled(a.map_id, 0), 0, "a's map is still fed")
        self.assertTrue(os.path.exists(os.path.join(a.pin, "peer_stats")), "a's map is no longer pinned")
        time.sleep(0.3)
        b.refusals(4)
        d = b.dump(DEAD_PORT)
        B.say("a (ns %d) exited: its entry and ns dir gone, its map pinned and unfed; b's refusals 2 before, 1 right "
              "after, 4 later -> %d" % (a.inum, d["refused"]))
        self.assertEqual(d["refused"], base + 5, "b lost counts around a's exit: %s" % d)
        self.assertEqual(B.bpftool_map_id(b.pin), b.map_id)
        self.assertEqual(B.pinned_links(sets[0]), links, "the set changed when a exited")
        self.assertEqual(b.stop(), 0)
        self.assertEqual(B.node_sets(), [], "the set outlived the last nextup on the node")

    def test_joins_with_bpf_and_perfmon_only(self):
        # As the manifests run it: CAP_BPF and CAP_PERFMON, nothing else (no CAP_SYS_ADMIN, which opening a
        # program by id needs, no CAP_NET_ADMIN). A second pod's nextup joins the running set as it is, and
        # its own map counts.
        if not shutil.which("setpriv"):
            H.skip_loudly(self, "needs setpriv (util-linux)")
        a, b = Pod(self, "a"), Pod(self, "b")
        a.start(caps="bpf,perfmon")
        sets = B.node_sets()
        links = B.pinned_links(sets[0])
        b.start(caps="bpf,perfmon")
        self.assertNotIn("replacing", b.stderr())
        self.assertEqual(B.node_sets(), sets)
        self.assertEqual(B.pinned_links(sets[0]), links, "the second nextup replaced the set")
        self.assertEqual(registered_namespaces(sets[0]), {a.inum: a.map_id, b.inum: b.map_id})
        b.refusals(3)
        self.assertEqual(b.dump(DEAD_PORT)["refused"], 3)
        self.assertEqual(a.dump(DEAD_PORT)["refused"], 0)
        B.say("a and b with CAP_BPF + CAP_PERFMON only: one set %s, b joined it (links %s unchanged), b counted 3"
              % (os.path.basename(sets[0]), sorted(links.values())))

    def test_killed_nextup_swept(self):
        a, b = self._two_pods()
        sets = B.node_sets()
        self.assertEqual(a.stop(signal.SIGKILL), -signal.SIGKILL)
        self.assertIn(a.inum, registered_namespaces(sets[0]), "a SIGKILLed nextup ran its exit?")
        gone, took = B.wait_until(lambda: a.inum not in registered_namespaces(sets[0]), 8.0, step=0.2)
        B.say("a (ns %d) SIGKILLed: its entry removed by b's sweep after %.1f s" % (a.inum, took))
        self.assertTrue(gone, "a killed nextup's entry was never swept")
        self.assertEqual(registered_namespaces(sets[0]), {b.inum: b.map_id})
        # One sweep deletes the map entry, then the directory: give it that moment.
        dir_gone, _ = B.wait_until(lambda: not os.path.exists(os.path.join(sets[0], "ns", str(a.inum))), 2.0,
                                   step=0.05)
        self.assertTrue(dir_gone, "a killed nextup's ns directory outlived its swept entry")
        b.refusals(2)
        self.assertEqual(b.dump(DEAD_PORT)["refused"], 2)
        self.assertIn("removed network namespace %d" % a.inum, b.stderr())


if __name__ == "__main__":
    unittest.main()
