"""The README's configuration table and `nextup --help` list the same variables
with the same defaults, and every NEXTUP_* name read in sidecar/ is documented."""
import os
import re
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def help_entries():
    out = subprocess.run([os.environ["NEXTUP_BIN"], "--help"], capture_output=True, text=True, timeout=10,
                         env={})
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"\n  (NEXTUP_\w+)  default: (.*)\n", out.stdout))


def readme_entries():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    # The table of the Configuration section (other sections quote values of their own).
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(NEXTUP_\w+)` \| `([^`]*)` \|", section, re.M))


class DocsTest(unittest.TestCase):
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
        missing = names - set(readme_entries())
        self.assertFalse(missing, "read in sidecar/ but not in the README table: %s" % sorted(missing))


if __name__ == "__main__":
    unittest.main()
