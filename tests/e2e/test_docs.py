"""The README's configuration table and `nextup --help` list the same variables
with the same defaults, and every NEXTUP_* name read in sidecar/ is documented;
every metric family a live /metrics has is in the README's table with its type,
and the kernel's (present only with BPF) in bpf/README.md."""
import os
import re
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def help_entries():
    out = subprocess.run([os.environ["NEXTUP_BIN"], "--help"], capture_output=True, text=True, timeout=10,
                         env={})
    assert out.returncode == 0, out.stderr
    # NEXTUP_SERVICE_<NAME>_* are the per-service pattern, listed once each.
    return dict(re.findall(r"\n  (NEXTUP_[\w<>]+)  default: (.*)\n", out.stdout))


def readme_entries():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    # The table of the Configuration section (other sections quote values of their own).
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(NEXTUP_[\w<>]+)` \| `([^`]*)` \|", section, re.M))


def readme_metrics(path, section=None):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    if section:
        text = text.split("\n## %s\n" % section, 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `((?:nextup|process)_\w+)(?:\{[^}]*\})?` \| (counter|gauge|histogram) \|", text, re.M))


def scraped_families():
    """{family: type} from the TYPE lines of a live /metrics (BPF off: no kernel families)."""
    env = H.base_env()
    env.update({"NEXTUP_UPSTREAMS": "127.0.0.1:%d" % H.free_port(), "NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(),
                "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_BPF": "off", "NEXTUP_WORKERS": "1",
                "NEXTUP_LOG_LEVEL": "error"})
    p = subprocess.Popen([os.environ["NEXTUP_BIN"]], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen("http://%s/metrics" % env["NEXTUP_ADMIN"], timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise
                time.sleep(0.05)
    finally:
        H.stop_pid(p)
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


class DocsTest(unittest.TestCase):
    def test_every_metric_documented_with_its_type(self):
        live, documented = scraped_families(), readme_metrics("README.md", "Observability")
        self.assertGreater(len(live), 30)
        self.assertEqual({k: live[k] for k in sorted(live) if k not in documented}, {},
                         "on /metrics but not in the README's Observability table")
        self.assertEqual(sorted(k for k in documented if k not in live), [],
                         "in the README's table but not on /metrics")
        for name, kind in live.items():
            self.assertEqual(documented[name], kind, "type of %s" % name)

    def test_kernel_metrics_documented_in_bpf_readme(self):
        with open(os.path.join(ROOT, "sidecar", "health.c")) as f:
            names = set(re.findall(r'"(nextup_peer_kernel_\w+)', f.read()))
        self.assertGreaterEqual(len(names), 4)
        documented = readme_metrics("bpf/README.md")
        self.assertEqual(sorted(names - set(documented)), [], "kernel metrics missing from bpf/README.md")

    def test_moved_sections_exist(self):
        # The README points to these for what moved out of it.
        for path, must in (("deploy/README.md", ["## Kubernetes, step by step", "## TLS", "## Replicas from DNS",
                                                 "## Admin listener"]),
                           ("bpf/README.md", ["bpftool map dump"]),
                           ("bench/README.md", ["make bench", "make compare"])):
            with open(os.path.join(ROOT, path)) as f:
                text = f.read()
            for m in must:
                self.assertIn(m, text, path)
        with open(os.path.join(ROOT, "README.md")) as f:
            self.assertLessEqual(len(f.read().splitlines()), 260, "the README is read by someone deploying it")

    def test_readme_table_matches_help(self):
        helped, documented = help_entries(), readme_entries()
        self.assertGreater(len(helped), 20, "too few variables parsed from --help")
        self.assertEqual(sorted(helped), sorted(documented), "README table and --help list different variables")
        for name, default in helped.items():
            if name == "NEXTUP_WORKERS":
                # The default depends on the machine: "online CPUs (N)".
                self.assertTrue(documented[name].startswith("online CPUs"), documented[name])
                continue
            self.assertEqual(documented[name], default, "default of %s" % name)

    def test_every_variable_in_sources_is_documented(self):
        names = set()
        for fn in os.listdir(os.path.join(ROOT, "sidecar")):
            if fn.endswith((".c", ".h")):
                with open(os.path.join(ROOT, "sidecar", fn)) as f:
                    names |= set(re.findall(r'"(NEXTUP_[A-Z0-9_]+)"', f.read()))
        self.assertTrue(names)
        documented = set(readme_entries())
        # A name ending in _ is a prefix (NEXTUP_SERVICE_ for NEXTUP_SERVICE_<NAME>_*): some row has it.
        missing = {n for n in names - documented if not (n.endswith("_") and any(d.startswith(n) for d in documented))}
        self.assertFalse(missing, "read in sidecar/ but not in the README table: %s" % sorted(missing))
        self.assertIn("NEXTUP_SERVICE_<NAME>_UPSTREAMS", documented)


if __name__ == "__main__":
    unittest.main()
