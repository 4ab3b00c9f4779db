"""One nextup for several services (issue 12): NEXTUP_SERVICES and NEXTUP_SERVICE_<NAME>_*.

ServicesTest (passes now): configuration errors (exit 2, one line naming the variable), readiness that
follows nextup alone (/readyz 200 while a service has no replica at all; /readyz/upstreams 503 naming it),
/debug/peers grouped by service, the service label on per-peer series, promtool on a multi-service scrape.

TestServiceRouting: the request path's part (proxy.c's route_request() with services_route()). Before it
was wired these tests failed for these reasons: a request for payments or inventory was answered by a
replica of orders (service 0), an unknown authority got a replica's 200 instead of nextup's 421, the replica
saw the client's Host instead of NEXTUP_SERVICE_<NAME>_UPSTREAM_HOST, and per-service MAX_RETRIES/RETRY_ON
were not obeyed. Each asserts on the replica's name (backend.py answers "NAME\\n") or nextup's status, so a
failure says which of these it is. Three services with their own replicas behind one nextup; requests driven by Host,
by curl -x and by Python urllib with HTTP_PROXY (absolute-form).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def run(env_extra, timeout=8.0):
    """nextup with H.base_env() + <env_extra>; (status, stderr) once it exits, or (None, stderr) if it ran."""
    env = H.base_env()
    env.update({"NEXTUP_LISTEN": "127.0.0.1:%d" % H.free_port(), "NEXTUP_ADMIN": "127.0.0.1:%d" % H.free_port(),
                "NEXTUP_BPF": "off", "NEXTUP_WORKERS": "1"})
    env.update(env_extra)
    p = subprocess.Popen([H.nextup_bin()], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        H.stop_pid(p)
        _, err = p.communicate(timeout=5)
        return None, err.decode("utf-8", "replace")


OK_BASE = {"NEXTUP_SERVICES": "orders,payments", "NEXTUP_SERVICE_ORDERS_UPSTREAMS": "127.0.0.1:1",
           "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "127.0.0.1:2"}

# (environment on top of OK_BASE, or a whole one when "NEXTUP_SERVICES" is None; text the one line must hold)
CONFIG_ERRORS = [
    ({"NEXTUP_UPSTREAMS": "127.0.0.1:3"}, ["NEXTUP_UPSTREAMS=", "NEXTUP_SERVICES="]),
    ({"NEXTUP_SERVICES": "orders,Payments"}, ["NEXTUP_SERVICES=\"orders,Payments\""]),
    ({"NEXTUP_SERVICES": "orders,orders"}, ["NEXTUP_SERVICES=", "listed twice"]),
    ({"NEXTUP_SERVICES": "orders,payments,inventory"}, ["NEXTUP_SERVICE_INVENTORY_UPSTREAMS is required"]),
    ({"NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "127.0.0.1"}, ["NEXTUP_SERVICE_PAYMENTS_UPSTREAMS=\"127.0.0.1\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES": "99"},
     ["NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES=\"99\"", "from 0 to 16"]),
    ({"NEXTUP_SERVICE_PAYMENTS_RETRY_ON": "sometimes"}, ["NEXTUP_SERVICE_PAYMENTS_RETRY_ON=\"sometimes\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_RETRY_METHODS": "get"}, ["NEXTUP_SERVICE_PAYMENTS_RETRY_METHODS=\"get\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS": "90000"},
     ["NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS=\"90000\"", "NEXTUP_REQUEST_TIMEOUT_MS"]),
    ({"NEXTUP_SERVICE_PAYMENTS_REQUEST_TIMEOUT_MS": "0"}, ["NEXTUP_SERVICE_PAYMENTS_REQUEST_TIMEOUT_MS=\"0\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_HOSTS": "orders"},
     ["NEXTUP_SERVICE_ORDERS_HOSTS (default: orders)", "NEXTUP_SERVICE_PAYMENTS_HOSTS=\"orders\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_HOSTS": "pay ments"}, ["NEXTUP_SERVICE_PAYMENTS_HOSTS=\"pay ments\""]),
    ({"NEXTUP_SERVICE_PAYMENTS_UPSTREAM_HOST": "a b"}, ["NEXTUP_SERVICE_PAYMENTS_UPSTREAM_HOST=\"a b\""]),
    ({"NEXTUP_DEFAULT_SERVICE": "billing"}, ["NEXTUP_DEFAULT_SERVICE=\"billing\""]),
    ({"NEXTUP_NAMESPACE": "Shop"}, ["NEXTUP_NAMESPACE=\"Shop\""]),
    ({"NEXTUP_SERVICE_PAYMENT_UPSTREAMS": "127.0.0.1:4"},
     ["NEXTUP_SERVICE_PAYMENT_UPSTREAMS=", "unknown variable", "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS"]),
    ({"NEXTUP_SERVICES": None, "NEXTUP_UPSTREAMS": "127.0.0.1:3", "NEXTUP_SERVICE_ORDERS_UPSTREAMS": None,
      "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": None, "NEXTUP_SERVICE_X_UPSTREAMS": "127.0.0.1:4"},
     ["NEXTUP_SERVICE_X_UPSTREAMS=", "NEXTUP_SERVICES"]),
]


def with_base(extra):
    env = dict(OK_BASE)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class ServicesTest(H.NextupCase):
    def test_config_errors_exit_2_with_one_line(self):
        for extra, wants in CONFIG_ERRORS:
            with self.subTest(extra=extra):
                status, err = run(with_base(extra))
                self.assertEqual(status, 2, err)
                lines = err.strip().splitlines()
                self.assertEqual(len(lines), 1, err)
                for w in wants:
                    self.assertIn(w, lines[0])

    def test_200_services_start(self):
        env = {"NEXTUP_SERVICES": ",".join("s%d" % i for i in range(200)), "NEXTUP_NAMESPACE": "shop"}
        for i in range(200):
            env["NEXTUP_SERVICE_S%d_UPSTREAMS" % i] = "127.0.0.%d:%d" % (i % 200 + 1, 8000 + i)
        nx = self.start_nextup(None, env=dict(env, NEXTUP_BPF="off"), workers=1)
        st, body = nx.admin_get("/debug/peers")
        self.assertEqual(st, 200)
        self.assertEqual([s["name"] for s in json.loads(body)["services"]], ["s%d" % i for i in range(200)])

    def unresolvable_nextup(self, orders):
        """orders with a replica; payments named by a DNS name that has no record (a headless Service with
        no ready pod): nextup must start, and be ready."""
        conf = tempfile.NamedTemporaryFile("w", prefix="nextup-resolv-", suffix=".conf", delete=False)
        conf.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        conf.close()
        self.addCleanup(os.unlink, conf.name)
        return self.start_nextup(None, env={
            "NEXTUP_SERVICES": "orders,payments", "NEXTUP_SERVICE_ORDERS_UPSTREAMS": orders.addr,
            "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "payments-headless.invalid:8080", "NEXTUP_BPF": "off",
            "NEXTUP_DNS_REFRESH_MS": "500", "NEXTUP_RESOLV_CONF": conf.name})

    def test_ready_while_a_service_has_no_replica(self):
        orders = self.start_backend("orders-1")
        nx = self.unresolvable_nextup(orders)
        st, body = nx.admin_get("/readyz")
        self.assertEqual((st, body), (200, b"ready\n"))
        st, body = nx.admin_get("/readyz/upstreams")
        self.assertEqual(st, 503, body)
        lines = body.decode().splitlines()
        self.assertEqual(len(lines), 1, body)
        self.assertIn("service payments: no peer known", lines[0])
        self.assertIn("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS", lines[0])
        m = H.metrics(nx)
        self.assertEqual(H.metric(m, "nextup_service_peers_usable", service="payments"), 0)
        self.assertEqual(H.metric(m, "nextup_service_peers_usable", service="orders"), 1)

    def test_readyz_upstreams_200_when_every_service_has_a_peer_and_503_while_draining(self):
        a, b = self.start_backend("orders-1"), self.start_backend("payments-1")
        nx = self.start_nextup(None, env={"NEXTUP_SERVICES": "orders,payments", "NEXTUP_BPF": "off",
                                          "NEXTUP_SERVICE_ORDERS_UPSTREAMS": a.addr,
                                          "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": b.addr})
        self.assertEqual(nx.admin_get("/readyz/upstreams")[0], 200)
        # Holds the drain open: a request begun (an idle connection would be closed at once).
        keep = H.RawConn(nx.listen_port)
        self.addCleanup(keep.close)
        keep.send(b"GET / HTTP/1.1\r\nHost: orders\r\n")
        time.sleep(0.2)
        nx.proc.send_signal(15)
        deadline = time.monotonic() + 3
        while nx.admin_get("/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(nx.admin_get("/readyz"), (503, b"draining\n"))
        self.assertEqual(nx.admin_get("/readyz/upstreams")[0], 503)
        keep.close()

    def test_debug_peers_grouped_by_service(self):
        shared = self.start_backend("shared")
        o2, p2 = self.start_backend("orders-2"), self.start_backend("payments-2")
        nx = self.start_nextup(None, env={
            "NEXTUP_SERVICES": "orders,payments", "NEXTUP_BPF": "off",
            "NEXTUP_SERVICE_ORDERS_UPSTREAMS": "%s,%s" % (shared.addr, o2.addr),
            "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "%s,%s" % (shared.addr, p2.addr)})
        st, body = nx.admin_get("/debug/peers")
        self.assertEqual(st, 200)
        d = json.loads(body)
        groups = {s["name"]: s for s in d["services"]}
        self.assertEqual(list(groups), ["orders", "payments"])
        self.assertEqual([p["address"] for p in groups["orders"]["peers"]], [shared.addr, o2.addr])
        self.assertEqual([p["address"] for p in groups["payments"]["peers"]], [shared.addr, p2.addr])
        self.assertEqual((groups["orders"]["active"], groups["orders"]["usable"]), (2, 2))
        self.assertTrue(all(p["service"] == "orders" for p in groups["orders"]["peers"]))
        # The flat list holds every service's peers, each naming its service: a replica two services share
        # is one peer of each.
        self.assertEqual(sorted((p["service"], p["address"]) for p in d["peers"]),
                         sorted([("orders", shared.addr), ("orders", o2.addr), ("payments", shared.addr),
                                 ("payments", p2.addr)]))

    def test_metrics_label_peers_with_their_service_and_pass_promtool(self):
        shared = self.start_backend("shared")
        p2 = self.start_backend("payments-2")
        nx = self.start_nextup(None, env={
            "NEXTUP_SERVICES": "orders,payments", "NEXTUP_BPF": "off",
            "NEXTUP_SERVICE_ORDERS_UPSTREAMS": shared.addr,
            "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "%s,%s" % (shared.addr, p2.addr)})
        self.assertEqual(self.roundtrip(nx, "GET", "/", host="orders").status, 200)
        self.assertEqual(self.roundtrip(nx, "GET", "/", host="payments").status, 200)
        st, body = nx.admin_get("/metrics")
        self.assertEqual(st, 200)
        m = H.parse_metrics(body.decode())
        for fam in ("nextup_peer_healthy", "nextup_peer_outstanding_requests", "nextup_peer_attempts_total",
                    "nextup_peer_ejections_total"):
            self.assertEqual(H.metric(m, fam, peer=shared.addr, service="orders"),
                             1 if fam == "nextup_peer_healthy" else H.metric(m, fam, peer=shared.addr,
                                                                              service="orders"))
            self.assertIn('%s{peer="%s",service="payments"}' % (fam, shared.addr), m)
            self.assertIn('%s{peer="%s",service="payments"}' % (fam, p2.addr), m)
            self.assertNotIn('%s{peer="%s",service="orders"}' % (fam, p2.addr), m)
        self.assertIn('nextup_peer_state{peer="%s",service="payments",state="healthy"}' % p2.addr, m)
        for svc in ("orders", "payments"):
            for fam in ("nextup_service_requests_total", "nextup_service_attempts_total",
                        "nextup_service_ejections_total"):
                self.assertIn('%s{service="%s"}' % (fam, svc), m)
            self.assertIn('nextup_service_responses_total{code="2xx",service="%s"}' % svc, m)
            self.assertIn('nextup_service_retries_total{reason="reset",service="%s"}' % svc, m)
            self.assertIn('nextup_service_retries_refused_total{reason="budget",service="%s"}' % svc, m)
        # Until the request path counts per service, process-wide counters still count every request.
        self.assertGreaterEqual(H.metric(m, "nextup_downstream_requests_total"), 1)
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: scripts/deps.sh test installs Debian's prometheus")
        r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, "promtool check metrics: %s %s" % (r.stdout.decode(), r.stderr.decode()))
        self.assertEqual((r.stdout + r.stderr).strip(), b"", "promtool lint findings: %r" % (r.stdout + r.stderr))

    def test_single_upstreams_is_service_default(self):
        b = self.start_backend("only")
        nx = self.start_nextup(b, env={"NEXTUP_BPF": "off"})
        r = self.roundtrip(nx, "GET", "/", host="whatever.example")
        self.assertEqual(r.status, 200)
        d = json.loads(nx.admin_get("/debug/peers")[1])
        self.assertEqual([s["name"] for s in d["services"]], ["default"])
        self.assertEqual(H.metric(H.metrics(nx), "nextup_peer_healthy", peer=b.addr, service="default"), 1)


def replica(r):
    """The name of the replica that answered (backend.py's body), or nextup's status."""
    return r.body.decode().strip() if r.status == 200 else "status %d" % r.status


class Resp:
    def __init__(self, status, body):
        self.status, self.body = status, body


class TestServiceRouting(H.NextupCase):
    """Routing by authority, per-service policy and Host (see the module docstring)."""

    def setUp(self):
        super().setUp()
        self.orders = [self.start_backend("orders-%d" % i) for i in (1, 2)]
        self.payments_bad = self.start_backend("payments-bad", mode="503")
        self.payments_ok = self.start_backend("payments-ok")
        self.inventory_bad = self.start_backend("inventory-bad", mode="503")
        self.inventory_ok = self.start_backend("inventory-ok")
        self.env = {
            "NEXTUP_SERVICES": "orders,payments,inventory", "NEXTUP_NAMESPACE": "shop", "NEXTUP_BPF": "off",
            "NEXTUP_SERVICE_ORDERS_UPSTREAMS": ",".join(b.addr for b in self.orders),
            "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS": "%s,%s" % (self.payments_bad.addr, self.payments_ok.addr),
            "NEXTUP_SERVICE_PAYMENTS_HOSTS": "payments,pay.example.com:8443",
            "NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES": "0",
            "NEXTUP_SERVICE_INVENTORY_UPSTREAMS": "%s,%s" % (self.inventory_bad.addr, self.inventory_ok.addr),
            "NEXTUP_SERVICE_INVENTORY_RETRY_ON": "connect-failure",
            "NEXTUP_SERVICE_INVENTORY_UPSTREAM_HOST": "inventory.internal",
            # Ejection would hide the 503 replicas after their first answers: keep them in rotation.
            "NEXTUP_EJECT_GATEWAY_ERRORS": "0",
        }

    def nextup(self, **extra):
        return self.start_nextup(None, env=dict(self.env, **extra))

    def get(self, nx, host, path="/"):
        r = self.roundtrip(nx, "GET", path, host=host)
        return Resp(r.status, r.body if hasattr(r, "body") else b"")

    def test_route_by_host_every_form(self):
        nx = self.nextup()
        for host, prefix in (("orders", "orders-"), ("ORDERS:8080", "orders-"), ("orders.shop", "orders-"),
                             ("orders.shop.svc.cluster.local.", "orders-"), ("payments.shop.svc", "payments-ok"),
                             ("pay.example.com:8443", "payments-ok"), ("inventory.shop:9000", "inventory-ok")):
            with self.subTest(host=host):
                names = set()
                for _ in range(12):
                    got = replica(self.get(nx, host, "/"))
                    if not got.startswith("status 503"):
                        names.add(got)
                self.assertTrue(names and all(n.startswith(prefix) for n in names),
                                "Host %s answered by %s" % (host, sorted(names)))

    def test_absolute_form_through_curl_proxy(self):
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl missing")
        nx = self.nextup()
        for url, prefix in (("http://orders:8080/", "orders-"), ("http://payments.shop.svc.cluster.local/x",
                                                                  "payments-"),
                            ("http://inventory/", "inventory-")):
            with self.subTest(url=url):
                names = set()
                for _ in range(6):
                    out = subprocess.run([curl, "-s", "--max-time", "5", "-x", "http://127.0.0.1:%d" % nx.listen_port,
                                          url], capture_output=True, timeout=10, env=H.base_env())
                    names.add(out.stdout.decode().strip())
                # payments (MAX_RETRIES=0) and inventory (RETRY_ON=connect-failure) pass their 503
                # replica's answer on: "replica payments-bad unavailable" is that service's too.
                self.assertTrue(all(n.startswith(prefix) or n.startswith("replica " + prefix) or n == ""
                                    for n in names) and any(n.startswith(prefix) for n in names),
                                "%s through curl -x answered by %s" % (url, sorted(names)))

    def test_absolute_form_through_python_http_proxy(self):
        nx = self.nextup()
        # /headers: the replica answers with the request head it got; X-Backend names it.
        prog = ("import json, urllib.request, urllib.error\n"
                "for _ in range(6):\n"
                "    try:\n"
                "        r = urllib.request.urlopen('http://orders.shop/headers?q=1', timeout=5)\n"
                "        print(json.dumps([r.headers.get('X-Backend'), r.read().decode('latin-1').split('\\r\\n')[0]]))\n"
                "    except urllib.error.HTTPError as e:\n"
                "        print(json.dumps(['status %d' % e.code, '']))\n")
        env = H.base_env()
        env.update({"HTTP_PROXY": "http://127.0.0.1:%d" % nx.listen_port, "NO_PROXY": ""})
        env.pop("http_proxy", None)
        out = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=30, env=env)
        got = [json.loads(line) for line in out.stdout.decode().splitlines() if line]
        self.assertEqual(len(got), 6, out.stderr.decode()[-300:])
        names = {g[0] for g in got}
        self.assertTrue(all(n and n.startswith("orders-") for n in names),
                        "urllib via HTTP_PROXY answered by %s" % sorted(names))
        # The replica got origin-form, not the absolute-form target the client sent nextup.
        self.assertEqual({g[1] for g in got}, {"GET /headers?q=1 HTTP/1.1"})

    def test_per_service_max_retries_and_retry_on(self):
        nx = self.nextup()
        seen = {"payments": [], "inventory": [], "orders": []}
        for _ in range(20):
            for svc in seen:
                seen[svc].append(self.get(nx, svc).status)
        # payments: MAX_RETRIES=0, inventory: RETRY_ON=connect-failure: a 503 replica's answer reaches the client.
        self.assertIn(503, seen["payments"], "payments (MAX_RETRIES=0) never passed a 503 on: %s" % seen["payments"])
        self.assertIn(503, seen["inventory"], "inventory (RETRY_ON=connect-failure) retried 503s: %s"
                      % seen["inventory"])
        self.assertIn(200, seen["payments"])
        # orders: the global policy (gateway-error retried, 2 retries) and healthy replicas: all 200.
        self.assertEqual(set(seen["orders"]), {200})

    def test_unknown_authority_refused_421_never_connected(self):
        trap = socket.socket()
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        self.addCleanup(trap.close)
        authority = "127.0.0.1:%d" % trap.getsockname()[1]
        nx = self.nextup()
        r = self.get(nx, authority)
        self.assertEqual(r.status, 421, "Host %s: %s" % (authority, replica(r)))
        curl = shutil.which("curl")
        if curl:
            out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-x",
                                  "http://127.0.0.1:%d" % nx.listen_port, "http://%s/" % authority],
                                 capture_output=True, timeout=10, env=H.base_env())
            self.assertEqual(out.stdout, b"421")
        time.sleep(0.2)
        with self.assertRaises(BlockingIOError, msg="nextup connected to an authority no service claims"):
            trap.accept()

    def test_host_rewrite_seen_by_the_replica(self):
        nx = self.nextup()
        hosts = set()
        for _ in range(8):
            r = self.roundtrip(nx, "GET", "/headers", host="inventory")
            if r.status == 200:
                for line in r.body.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("host:"):
                        hosts.add(line.split(":", 1)[1].strip())
        self.assertEqual(hosts, {"inventory.internal"})

    def test_default_service_takes_unknown_authorities(self):
        nx = self.nextup(NEXTUP_DEFAULT_SERVICE="payments")
        names = {replica(self.get(nx, "unknown.example")) for _ in range(10)}
        self.assertTrue(names <= {"payments-ok", "status 503"} and "payments-ok" in names,
                        "unknown authority with NEXTUP_DEFAULT_SERVICE=payments went to %s" % sorted(names))


if __name__ == "__main__":
    unittest.main()
