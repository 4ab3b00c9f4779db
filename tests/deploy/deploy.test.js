'use strict';
// Offline checks of deploy/: the kustomizations rendered (without kubectl), every object against
// the Kubernetes OpenAPI schemas, the nextup container against nextup itself (names from
// `nextup --help`, values by starting it), the pod's shape (native sidecar, probes, drain,
// privileges of each variant), the Dockerfile against `ldd`, and, as root, one pod of each
// variant played on this machine with its user, capabilities and network namespace.
//
// Run by tests/deploy/run.sh. NEXTUP_BIN: the nextup binary (default build/nextup).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');
const http = require('node:http');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const YAML = require('yaml');

const K = require('./lib/kustomize');
const { validateObject } = require('./lib/schema');
const P = require('./lib/podspec');
const D = require('./lib/dockerfile');
const S = require('./lib/services');

const REPO = path.resolve(__dirname, '..', '..');
const DEPLOY = path.join(REPO, 'deploy');
const BIN = path.resolve(REPO, process.env.NEXTUP_BIN || 'build/nextup');
const VARIANTS = {
  bpf: path.join(DEPLOY, 'kubernetes'),
  'no-bpf': path.join(DEPLOY, 'kubernetes', 'overlays', 'no-bpf'),
};
// Overlays on top of a variant, checked by their own tests below (their files come from Secrets
// that only exist in a cluster, so the per-variant tests that start nextup do not apply as such).
const OVERLAYS = {
  'upstream-mtls': path.join(DEPLOY, 'kubernetes', 'overlays', 'upstream-mtls'),
};
const SIDECAR = 'nextup';
const IMAGE_USER = 65532; // USER in deploy/Dockerfile, checked below

// ---------------------------------------------------------------------------------------------
// helpers

const rendered = {};
const renderErrors = {};
for (const [v, dir] of Object.entries({ ...VARIANTS, ...OVERLAYS })) {
  try {
    rendered[v] = K.render(dir);
  } catch (e) {
    renderErrors[v] = e;
  }
}

function objectsOf(variant) {
  if (renderErrors[variant]) throw new Error(`${variant}: rendering failed: ${renderErrors[variant].message}`);
  return rendered[variant];
}

function fail(what, problems) {
  assert.fail(`${what}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
}

// The nextup container of a variant, with its pod and environment as the kubelet resolves them.
function sidecarOf(variant, podName) {
  const objects = objectsOf(variant);
  const found = P.findContainer(objects, SIDECAR);
  if (!found) assert.fail(`${variant}: no container named "${SIDECAR}" in any pod template`);
  const md = found.obj.metadata;
  const pod = {
    fields: {
      'metadata.name': podName || `${md.name}-5d9c7b6f8-x7k2p`,
      'metadata.namespace': md.namespace || 'default',
      'metadata.uid': '6c0e7f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6',
      'spec.nodeName': 'node-1',
      'spec.serviceAccountName': found.spec.serviceAccountName || 'default',
      'status.podIP': '10.244.1.23',
      'status.hostIP': '10.0.0.5',
    },
  };
  const env = P.resolveEnv(found.container, pod);
  return { ...found, env, objects };
}

let helpCache;
let helpSuffixCache;
function nextupHelp() {
  if (helpCache) return helpCache;
  if (!fs.existsSync(BIN)) {
    assert.fail(`nextup binary ${BIN} does not exist: build it (make) or set NEXTUP_BIN`);
  }
  const r = spawnSync(BIN, ['--help'], { encoding: 'utf8', env: {} });
  assert.equal(r.status, 0, `${BIN} --help exited ${r.status}: ${r.stderr}`);
  const vars = new Map();
  const re = /^ {2}(NEXTUP_[A-Z0-9_]+) +default: (.*)$/gm;
  let m;
  while ((m = re.exec(r.stdout))) vars.set(m[1], m[2].trim());
  assert.ok(vars.size >= 10, `could not read the variables from ${BIN} --help:\n${r.stdout}`);
  helpSuffixCache = S.suffixesFromHelp(r.stdout);
  assert.ok(helpSuffixCache.has('UPSTREAMS'), `no NEXTUP_SERVICE_<NAME>_UPSTREAMS in ${BIN} --help:\n${r.stdout}`);
  helpCache = vars;
  return vars;
}

// The suffixes of NEXTUP_SERVICE_<NAME>_<SUFFIX> that nextup --help lists.
function helpSuffixes() {
  nextupHelp();
  return helpSuffixCache;
}

// The services of the nextup container (NEXTUP_SERVICES, or NEXTUP_UPSTREAMS as "default").
function servicesOf(sc) {
  return S.servicesOf(sc.env.vars, helpSuffixes());
}

// Whether nextup knows <name>: a variable of --help, or NEXTUP_SERVICE_<NAME>_<SUFFIX> of a listed service.
function knownVariable(sc, name) {
  if (nextupHelp().has(name)) return true;
  const { services, multi } = servicesOf(sc);
  return multi && services.some((svc) => name.startsWith(svc.prefix) && helpSuffixes().has(name.slice(svc.prefix.length)));
}

// The pod's application containers, each with its environment resolved as the kubelet would.
function appsOf(sc) {
  const pod = { fields: { 'metadata.name': 'app', 'metadata.namespace': sc.obj.metadata.namespace || 'default' } };
  return (sc.spec.containers || []).map((c) => ({ c, env: P.resolveEnv(c, pod) }));
}

// The namespace nextup will know (NEXTUP_NAMESPACE resolved) and its cluster domain.
function routingOf(sc) {
  return {
    ns: sc.env.vars.get('NEXTUP_NAMESPACE') || '',
    domain: sc.env.vars.get('NEXTUP_CLUSTER_DOMAIN') || nextupHelp().get('NEXTUP_CLUSTER_DOMAIN') || 'cluster.local',
  };
}

// The environment with every service's upstreams replaced by <addr(svc, i)>.
function withUpstreams(sc, env, addr) {
  const out = { ...env };
  servicesOf(sc).services.forEach((svc, i) => { out[svc.upstreamsVar] = addr(svc, i); });
  return out;
}

function drainMs(sc) {
  const v = sc.env.vars.get('NEXTUP_DRAIN_TIMEOUT_MS') ?? nextupHelp().get('NEXTUP_DRAIN_TIMEOUT_MS');
  const n = Number(v);
  assert.ok(Number.isInteger(n) && n > 0, `NEXTUP_DRAIN_TIMEOUT_MS "${v}" is not a positive integer`);
  return n;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function httpGet(port, p) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 2000, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function editDistance(a, b) {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function probesOf(container) {
  const out = [];
  for (const [name, key] of [['startup', 'startupProbe'], ['readiness', 'readinessProbe'], ['liveness', 'livenessProbe']]) {
    const pr = container[key];
    if (!pr) continue;
    out.push({ name, probe: pr, path: pr.httpGet && pr.httpGet.path, port: pr.httpGet && P.resolvePort(pr.httpGet.port, container) });
  }
  return out;
}

function hostPathVolumes(spec) {
  return (spec.volumes || []).filter((v) => v.hostPath);
}

function which(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status === 0;
}

// ---------------------------------------------------------------------------------------------
// rendering and schemas

test('the kustomizations render (bpf = deploy/kubernetes, no-bpf = overlays/no-bpf)', () => {
  const problems = Object.entries(renderErrors).map(([v, e]) => `${v}: ${e.message}`);
  if (problems.length) fail('rendering failed', problems);
  for (const v of Object.keys(VARIANTS)) assert.ok(rendered[v].length > 0, `${v}: no objects`);
});

test('the renderer agrees with `kubectl kustomize`', (t) => {
  const probe = which('kubectl') && spawnSync('kubectl', ['kustomize', '--help'], { encoding: 'utf8', timeout: 20000 });
  if (!probe || probe.status !== 0) {
    t.skip('kubectl with kustomize is not installed here: the JS renderer alone is used');
    return;
  }
  const problems = [];
  for (const [v, dir] of Object.entries({ ...VARIANTS, ...OVERLAYS })) {
    const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60000 });
    if (r.status !== 0) { problems.push(`${v}: kubectl kustomize failed: ${r.stderr.trim()}`); continue; }
    const theirs = YAML.parseAllDocuments(r.stdout, { version: '1.1' }).map((d) => d.toJS()).filter(Boolean);
    const mine = new Map(objectsOf(v).map((o) => [K.identity(o), o]));
    const ids = new Set([...mine.keys(), ...theirs.map(K.identity)]);
    for (const id of ids) {
      const a = mine.get(id);
      const b = theirs.find((o) => K.identity(o) === id);
      if (!a || !b) { problems.push(`${v}: ${id} only in ${a ? 'this renderer' : 'kubectl kustomize'}`); continue; }
      try {
        assert.deepStrictEqual(a, b);
      } catch (e) {
        problems.push(`${v}: ${id} differs:\n${e.message}`);
      }
    }
  }
  if (problems.length) fail('this renderer and kubectl kustomize disagree', problems);
});

for (const v of Object.keys(VARIANTS)) {
  test(`${v}: every object is valid against the Kubernetes OpenAPI schema (kubernetes-models), no unknown fields`, () => {
    const problems = [];
    for (const obj of objectsOf(v)) {
      for (const p of validateObject(obj)) problems.push(`${obj.kind}/${obj.metadata.name}: ${p.path || '.'}: ${p.message}`);
    }
    if (problems.length) fail(`${v}: schema violations`, problems);
  });
}

// ---------------------------------------------------------------------------------------------
// the nextup container against nextup

for (const v of Object.keys(VARIANTS)) {
  test(`${v}: every variable set on the nextup container is one nextup knows (nextup --help)`, () => {
    const known = nextupHelp();
    const sc = sidecarOf(v);
    const problems = [...sc.env.problems];
    const nextupValues = sc.env.list.filter((e) => e.name.startsWith('NEXTUP_')).map((e) => e.raw || '').join('\n');
    const perService = servicesOf(sc).problems.filter((p) => p.startsWith('NEXTUP_SERVICE_'));
    for (const e of sc.env.list) {
      if (e.name.startsWith('NEXTUP_')) {
        if (e.name.startsWith('NEXTUP_SERVICE_')) {
          // NEXTUP_SERVICE_<NAME>_<SUFFIX>: <NAME> listed in NEXTUP_SERVICES, <SUFFIX> one of --help's.
          if (!knownVariable(sc, e.name)) problems.push(...perService.filter((p) => p.startsWith(`${e.name}:`)));
        } else if (!known.has(e.name)) {
          const near = [...known.keys()].sort((a, b) => editDistance(e.name, a) - editDistance(e.name, b))[0];
          problems.push(`${e.name}: not a variable of ${BIN} --help (nextup refuses to start; did you mean ${near}?)`);
        }
        if (/\$\(/.test(e.value)) problems.push(`${e.name}="${e.value}": $(...) left unexpanded (define the variable above it)`);
      } else if (!nextupValues.includes(`$(${e.name})`)) {
        problems.push(`${e.name}: neither a NEXTUP_ variable nor used by one as $(${e.name}) ` +
          '(nextup ignores unknown names silently: a typo would go unnoticed)');
      }
    }
    if (!sc.env.vars.has('NEXTUP_DNS_REFRESH_MS')) problems.push('NEXTUP_DNS_REFRESH_MS is not set');
    else if (!(Number(sc.env.vars.get('NEXTUP_DNS_REFRESH_MS')) > 0)) problems.push('NEXTUP_DNS_REFRESH_MS must be > 0 (replicas change)');
    if (problems.length) fail(`${v}: nextup environment`, problems);
  });

  test(`${v}: NEXTUP_SERVICES: valid names, each with its UPSTREAMS, no NEXTUP_SERVICE_* nextup does not know`, () => {
    const sc = sidecarOf(v);
    const { services, multi, problems } = servicesOf(sc);
    if (!multi) problems.push('NEXTUP_SERVICES is not set: the example is one nextup for several services');
    else if (services.length < 2) problems.push(`NEXTUP_SERVICES lists ${services.length} service: the example calls several`);
    for (const svc of services) {
      if (svc.upstreams.length === 0) problems.push(`${svc.upstreamsVar} has no host:port`);
    }
    if (problems.length) fail(`${v}: services`, problems);
  });

  test(`${v}: NEXTUP_NAMESPACE comes from the downward API (fieldRef metadata.namespace)`, () => {
    const sc = sidecarOf(v);
    const e = (sc.container.env || []).find((x) => x.name === 'NEXTUP_NAMESPACE');
    const problems = [];
    if (!e) problems.push('NEXTUP_NAMESPACE is not set: <name>.<namespace>[.svc[.cluster.local]] would not select a service ' +
      '(nextup falls back to the service account\'s namespace file, which automountServiceAccountToken: false removes)');
    else if (!(e.valueFrom && e.valueFrom.fieldRef && e.valueFrom.fieldRef.fieldPath === 'metadata.namespace')) {
      problems.push(`NEXTUP_NAMESPACE is ${JSON.stringify(e.value !== undefined ? e.value : e.valueFrom)}, not fieldRef metadata.namespace ` +
        '(a written namespace stays behind when the pod is applied to another one)');
    }
    if (problems.length) fail(`${v}: NEXTUP_NAMESPACE`, problems);
  });

  test(`${v}: nextup accepts every value (started with them: loopback ports, BPF off)`, async () => {
    const sc = sidecarOf(v);
    const [listen, admin, upstream] = [await freePort(), await freePort(), await freePort()];
    const env = withUpstreams(sc, Object.fromEntries(sc.env.vars), () => `127.0.0.1:${upstream}`);
    Object.assign(env, {
      NEXTUP_LISTEN: `127.0.0.1:${listen}`,
      NEXTUP_ADMIN: `127.0.0.1:${admin}`,
      NEXTUP_BPF: 'off',
    });
    const child = spawn(BIN, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const early = await Promise.race([exited, sleep(500).then(() => null)]);
    if (early) {
      assert.fail(`nextup exited ${early.code} within 0.5 s with the ${v} values ` +
        `(${sc.env.list.map((e) => `${e.name}=${env[e.name]}`).join(' ')}):\n${stderr}`);
    }
    try {
      for (const p of probesOf(sc.container)) {
        let status = 0;
        for (let i = 0; i < 20 && status !== 200; i++) {
          status = await httpGet(admin, p.path);
          if (status !== 200) await sleep(100);
        }
        assert.equal(status, 200, `${p.name} probe GET ${p.path} on the admin listener answered ${status}\n${stderr}`);
      }
    } finally {
      child.kill('SIGTERM');
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), drainMs(sc) + 3000);
    const end = await exited;
    clearTimeout(timer);
    assert.deepEqual(end, { code: 0, signal: null }, `nextup did not exit 0 on SIGTERM:\n${stderr}`);
  });
}

// ---------------------------------------------------------------------------------------------
// the pod's shape

for (const v of Object.keys(VARIANTS)) {
  test(`${v}: nextup is a native sidecar (init container, restartPolicy Always) started before the app`, () => {
    const sc = sidecarOf(v);
    const problems = [];
    if (!sc.init) problems.push('nextup is in containers, not initContainers');
    if (sc.container.restartPolicy !== 'Always') problems.push(`restartPolicy is ${sc.container.restartPolicy}, not Always`);
    if (!/(^|\/)nextup(:|@|$)/.test(sc.container.image || '')) problems.push(`image "${sc.container.image}" is not a nextup image`);
    if (sc.container.command) problems.push('command is set: the image\'s ENTRYPOINT (/usr/local/bin/nextup) must run');
    if (!(sc.spec.containers || []).length) problems.push('the pod has no application container');
    const idx = (sc.spec.initContainers || []).indexOf(sc.container);
    const before = (sc.spec.initContainers || []).slice(0, idx).filter((c) => c.restartPolicy !== 'Always');
    if (!sc.container.startupProbe) {
      problems.push('no startupProbe: the kubelet would start the app before nextup listens');
    }
    if (before.length) problems.push(`init containers ${before.map((c) => c.name).join(', ')} run before nextup (its proxy is not there yet)`);
    if (problems.length) fail(`${v}: sidecar`, problems);
  });

  test(`${v}: probes hit /readyz and /healthz on the admin port, which listens beyond loopback`, () => {
    const sc = sidecarOf(v);
    const admin = P.splitHostPort(sc.env.vars.get('NEXTUP_ADMIN') || nextupHelp().get('NEXTUP_ADMIN'));
    const problems = [];
    if (!admin) problems.push(`NEXTUP_ADMIN "${sc.env.vars.get('NEXTUP_ADMIN')}" is not host:port`);
    else if (/^127\.|^::1$|^localhost$/.test(admin.host)) {
      problems.push(`NEXTUP_ADMIN=${admin.host}:${admin.port} is loopback: the kubelet's probes come to the pod IP`);
    }
    const probes = Object.fromEntries(probesOf(sc.container).map((p) => [p.name, p]));
    const want = { readiness: '/readyz', liveness: '/healthz', startup: '/healthz' };
    for (const [name, p] of Object.entries(want)) {
      const pr = probes[name];
      if (!pr) { problems.push(`no ${name} probe`); continue; }
      if (!pr.probe.httpGet) { problems.push(`${name} probe is not httpGet`); continue; }
      if (pr.path !== p) problems.push(`${name} probe path is ${pr.path}, expected ${p}`);
      if (admin && pr.port !== admin.port) problems.push(`${name} probe port ${pr.probe.httpGet.port} (= ${pr.port}) is not NEXTUP_ADMIN's port ${admin.port}`);
      if (pr.probe.httpGet.scheme && pr.probe.httpGet.scheme !== 'HTTP') problems.push(`${name} probe scheme ${pr.probe.httpGet.scheme}`);
      if (pr.probe.httpGet.host) problems.push(`${name} probe sets host: probes must go to the pod IP`);
    }
    if (problems.length) fail(`${v}: probes`, problems);
  });

  test(`${v}: the proxy listens on loopback and the app calls it there`, () => {
    const sc = sidecarOf(v);
    const listen = P.splitHostPort(sc.env.vars.get('NEXTUP_LISTEN') || nextupHelp().get('NEXTUP_LISTEN'));
    const problems = [];
    if (!listen || !/^127\./.test(listen.host)) problems.push(`NEXTUP_LISTEN=${sc.env.vars.get('NEXTUP_LISTEN')} is not on 127.0.0.0/8`);
    const target = listen && `http://${listen.host}:${listen.port}`;
    for (const c of sc.spec.containers || []) {
      const text = JSON.stringify([c.command || [], c.args || [], c.env || []]);
      if (target && !text.includes(target)) problems.push(`container ${c.name} does not call ${target}`);
    }
    if ((sc.container.ports || []).some((p) => listen && p.containerPort === listen.port)) {
      problems.push('the proxy port is declared as a container port, but it only listens on loopback');
    }
    if (problems.length) fail(`${v}: proxy listener`, problems);
  });

  test(`${v}: the app's HTTP_PROXY is nextup's listener; NO_PROXY keeps loopback off it and no service`, () => {
    const sc = sidecarOf(v);
    const listen = P.splitHostPort(sc.env.vars.get('NEXTUP_LISTEN') || nextupHelp().get('NEXTUP_LISTEN'));
    assert.ok(listen, 'NEXTUP_LISTEN is not host:port');
    const want = `http://${listen.host}:${listen.port}`;
    const { services } = servicesOf(sc);
    const { ns, domain } = routingOf(sc);
    const problems = [];
    for (const { c, env } of appsOf(sc)) {
      const at = `container ${c.name}`;
      problems.push(...env.problems.map((p) => `${at}: ${p}`));
      // curl and busybox wget read only http_proxy; Go and Python either; Node (NODE_USE_ENV_PROXY=1) both.
      for (const name of ['HTTP_PROXY', 'http_proxy']) {
        const val = env.vars.get(name);
        if (val === undefined) problems.push(`${at}: ${name} is not set (${name === 'http_proxy' ? 'curl and busybox wget read only the lower-case one' : 'Go and Python read it'})`);
        else if (val.replace(/\/$/, '') !== want) problems.push(`${at}: ${name}="${val}" is not nextup's listener ${want} (NEXTUP_LISTEN)`);
      }
      // nextup tunnels no CONNECT: https:// through it would fail.
      for (const name of ['HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy']) {
        const val = env.vars.get(name);
        if (val && val.replace(/\/$/, '') === want) problems.push(`${at}: ${name}="${val}" sends https:// to nextup, which answers CONNECT with 405`);
      }
      const lists = ['NO_PROXY', 'no_proxy'].filter((n) => env.vars.has(n));
      if (lists.length === 2 && env.vars.get('NO_PROXY') !== env.vars.get('no_proxy')) {
        problems.push(`${at}: NO_PROXY and no_proxy differ (clients read one or the other)`);
      }
      const noProxy = lists.map((n) => env.vars.get(n)).join(',');
      // Through the proxy, a loopback URL is absolute-form for an authority no service claims: 421.
      for (const [h, port] of [['127.0.0.1', 15000], ['localhost', 15000], ['::1', 15000]]) {
        if (!S.noProxyExempts(noProxy, h, port)) problems.push(`${at}: NO_PROXY does not exempt ${h}: a call to nextup's admin port or any loopback URL would get 421 from nextup`);
      }
      for (const svc of services) {
        for (const k of S.hostKeys(svc, ns, domain)) {
          if (S.noProxyExempts(noProxy, k.host, k.port || 80)) {
            problems.push(`${at}: NO_PROXY="${noProxy}" exempts ${k.host}, which selects service ${svc.name}: those calls would go around nextup`);
          }
        }
      }
      // Every URL the app calls that is not loopback goes through nextup, and some service claims it.
      const text = JSON.stringify([c.command || [], c.args || []]);
      for (const u of S.httpUrls(text)) {
        if (S.isLoopback(u.host)) continue;
        if (S.noProxyExempts(noProxy, u.host, u.port)) { problems.push(`${at}: calls ${u.url}, which NO_PROXY exempts from nextup`); continue; }
        if (!S.route(services, u.authority, ns, domain)) problems.push(`${at}: calls ${u.url}, whose authority no service of NEXTUP_SERVICES claims (nextup answers 421)`);
      }
    }
    // The example shows every service it configures.
    const called = appsOf(sc).flatMap(({ c }) => S.httpUrls(JSON.stringify([c.command || [], c.args || []])));
    for (const svc of services) {
      if (!called.some((u) => S.route([svc], u.authority, ns, domain))) problems.push(`service ${svc.name}: no application container calls it`);
    }
    if (problems.length) fail(`${v}: the application's proxy settings`, problems);
  });

  test(`${v}: each service's upstreams name the headless Service of a multi-replica Deployment, on its pods' port`, () => {
    const sc = sidecarOf(v);
    const problems = [];
    const ns = sc.obj.metadata.namespace || 'default';
    const entries = servicesOf(sc).services.flatMap((svc) => svc.upstreams.map((e) => ({ e, svc })));
    const seenSvc = new Map();
    for (const { e: entry, svc: nsvc } of entries) {
      const hp = P.splitHostPort(entry);
      if (!hp) { problems.push(`"${entry}" is not host:port`); continue; }
      const m = /^([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?\.?$/.exec(hp.host);
      if (!m) { problems.push(`${entry}: not the name of a Service`); continue; }
      const svcNs = m[2] || ns;
      const svc = sc.objects.find((o) => o.kind === 'Service' && o.metadata.name === m[1] && (o.metadata.namespace || 'default') === svcNs);
      if (!svc) { problems.push(`${entry}: no Service ${m[1]} in namespace ${svcNs} among the manifests`); continue; }
      const other = seenSvc.get(`${svcNs}/${m[1]}`);
      if (other && other !== nsvc.name) problems.push(`${entry}: Service ${m[1]} is the upstream of both ${other} and ${nsvc.name}`);
      seenSvc.set(`${svcNs}/${m[1]}`, nsvc.name);
      if (svc.spec.clusterIP !== 'None') problems.push(`${entry}: Service ${m[1]} is not headless (clusterIP: None): one virtual IP hides the replicas`);
      const sel = svc.spec.selector || {};
      const dep = sc.objects.find((o) => o.kind === 'Deployment' && (o.metadata.namespace || 'default') === svcNs &&
        Object.keys(sel).length && Object.entries(sel).every(([k, val]) => ((o.spec.template.metadata || {}).labels || {})[k] === val));
      if (!dep) { problems.push(`${entry}: Service ${m[1]} selects no Deployment's pods`); continue; }
      if ((dep.spec.replicas ?? 1) < 2) problems.push(`${entry}: ${dep.metadata.name} has ${dep.spec.replicas ?? 1} replica: nothing to retry on`);
      // A headless Service is not a proxy: nextup connects to the pod IPs on the port it is given,
      // so that port must be one the pods listen on (the Service port itself is never used).
      const svcPort = (svc.spec.ports || []).find((p) => p.port === hp.port);
      if (!svcPort) problems.push(`${entry}: Service ${m[1]} has no port ${hp.port}`);
      const podPorts = (dep.spec.template.spec.containers || []).flatMap((c) => c.ports || []);
      if (!podPorts.some((p) => p.containerPort === hp.port)) {
        problems.push(`${entry}: the pods of ${dep.metadata.name} listen on ${podPorts.map((p) => p.containerPort).join(',') || 'no declared port'}, not ${hp.port}`);
      }
      if (svcPort) {
        const tp = svcPort.targetPort ?? svcPort.port;
        const tpNum = typeof tp === 'number' ? tp : (podPorts.find((p) => p.name === tp) || {}).containerPort;
        if (tpNum !== hp.port) problems.push(`${entry}: Service port ${hp.port} targets ${tp} (= ${tpNum}), not ${hp.port}`);
      }
    }
    if (problems.length) fail(`${v}: upstreams`, problems);
  });

  test(`${v}: terminationGracePeriodSeconds covers the preStop hooks and nextup's drain`, () => {
    const sc = sidecarOf(v);
    const grace = (sc.spec.terminationGracePeriodSeconds ?? 30) * 1000;
    const drain = drainMs(sc);
    const hooks = P.allContainers(sc.spec).map(({ c }) => ({ name: c.name, ms: P.preStopSleepMs(c) }));
    const need = drain + hooks.reduce((a, h) => a + h.ms, 0);
    assert.ok(grace > drain, `terminationGracePeriodSeconds*1000 = ${grace} is not > NEXTUP_DRAIN_TIMEOUT_MS = ${drain}`);
    assert.ok(grace > need, `terminationGracePeriodSeconds*1000 = ${grace} is not > NEXTUP_DRAIN_TIMEOUT_MS ${drain} + preStop sleeps ` +
      `${hooks.map((h) => `${h.name} ${h.ms}`).join(', ')} = ${need}`);
    const app = (sc.spec.containers || []).filter((c) => P.preStopSleepMs(c) > 0);
    assert.ok(app.length > 0, 'no application container has a preStop sleep: endpoints would still route to a stopping pod');
  });

  test(`${v}: every container has resource requests and limits; NEXTUP_WORKERS within 1..64`, () => {
    const sc = sidecarOf(v);
    const problems = [];
    for (const { spec } of P.workloads(objectsOf(v))) {
      for (const { c } of P.allContainers(spec)) {
        const r = c.resources || {};
        for (const k of ['requests.cpu', 'requests.memory', 'limits.memory']) {
          const [a, b] = k.split('.');
          if (!r[a] || r[a][b] === undefined) problems.push(`${c.name}: no ${k}`);
        }
      }
    }
    const w = Number(sc.env.vars.get('NEXTUP_WORKERS') ?? 'NaN');
    if (sc.env.vars.has('NEXTUP_WORKERS') && !(Number.isInteger(w) && w >= 1 && w <= 64)) problems.push(`NEXTUP_WORKERS resolves to ${sc.env.vars.get('NEXTUP_WORKERS')}`);
    if (!sc.env.vars.has('NEXTUP_WORKERS') && !(sc.container.resources && sc.container.resources.limits && sc.container.resources.limits.cpu)) {
      problems.push('neither NEXTUP_WORKERS nor a CPU limit: nextup would start one worker per node CPU');
    }
    if (problems.length) fail(`${v}: resources`, problems);
  });
}

// ---------------------------------------------------------------------------------------------
// privileges of each variant

test('bpf: nextup has exactly CAP_BPF and CAP_PERFMON (no NET_ADMIN), is not privileged, mounts bpffs and BTF', () => {
  const sc = sidecarOf('bpf');
  const s = P.effectiveSecurity(sc.spec, sc.container);
  const problems = [];
  const add = [...(s.capabilities.add || [])].map((c) => c.replace(/^CAP_/, '')).sort();
  if (JSON.stringify(add) !== JSON.stringify(['BPF', 'PERFMON'])) problems.push(`capabilities.add is [${add}], expected exactly BPF, PERFMON (the tp_btf programs load without NET_ADMIN)`);
  if (!(s.capabilities.drop || []).includes('ALL')) problems.push('capabilities.drop does not include ALL');
  if (s.privileged === true) problems.push('privileged: true');
  if (s.allowPrivilegeEscalation !== false) problems.push('allowPrivilegeEscalation is not false');
  if (s.readOnlyRootFilesystem !== true) problems.push('readOnlyRootFilesystem is not true');
  if (s.runAsUser !== 0) problems.push(`runAsUser is ${s.runAsUser}: added capabilities are effective only for uid 0 (no ambient capabilities)`);
  if (s.runAsNonRoot === true) problems.push('runAsNonRoot: true contradicts runAsUser 0');
  if (sc.env.vars.get('NEXTUP_BPF') !== 'on') problems.push(`NEXTUP_BPF is ${sc.env.vars.get('NEXTUP_BPF')}, expected on`);
  const pin = sc.env.vars.get('NEXTUP_BPF_PIN_DIR') || '';
  const raw = (sc.env.list.find((e) => e.name === 'NEXTUP_BPF_PIN_DIR') || {}).raw || '';
  if (!pin.startsWith('/sys/fs/bpf/')) problems.push(`NEXTUP_BPF_PIN_DIR "${pin}" is not under /sys/fs/bpf/`);
  if (!/\$\(POD_NAME\)/.test(raw)) problems.push(`NEXTUP_BPF_PIN_DIR "${raw}" is not per pod ($(POD_NAME)): pods on one node would share a pin`);
  // The program set is the node's: one directory for every pod, so that they share one set.
  const node = sc.env.vars.get('NEXTUP_BPF_NODE_DIR') || '';
  const nodeRaw = (sc.env.list.find((e) => e.name === 'NEXTUP_BPF_NODE_DIR') || {}).raw || '';
  if (!node.startsWith('/sys/fs/bpf/')) problems.push(`NEXTUP_BPF_NODE_DIR "${node}" is not under /sys/fs/bpf/`);
  if (/\$\(/.test(nodeRaw)) problems.push(`NEXTUP_BPF_NODE_DIR "${nodeRaw}" depends on the pod: each pod would load its own set`);
  if (node && pin && (pin === node || pin.startsWith(`${node}/`))) problems.push(`NEXTUP_BPF_PIN_DIR "${pin}" is inside NEXTUP_BPF_NODE_DIR`);
  const podNameVar = (sc.container.env || []).find((e) => e.name === 'POD_NAME');
  if (!podNameVar || !podNameVar.valueFrom || !podNameVar.valueFrom.fieldRef || podNameVar.valueFrom.fieldRef.fieldPath !== 'metadata.name') {
    problems.push('POD_NAME does not come from the downward API (fieldRef metadata.name)');
  }
  const vols = Object.fromEntries((sc.spec.volumes || []).map((vol) => [vol.name, vol]));
  const mounts = Object.fromEntries((sc.container.volumeMounts || []).map((m) => [m.mountPath, m]));
  const bpffs = mounts['/sys/fs/bpf'];
  const btf = mounts['/sys/kernel/btf'];
  if (!bpffs) problems.push('no volumeMount at /sys/fs/bpf');
  else {
    const hp = (vols[bpffs.name] || {}).hostPath;
    if (!hp || hp.path !== '/sys/fs/bpf' || hp.type !== 'Directory') problems.push(`/sys/fs/bpf is not the hostPath /sys/fs/bpf of type Directory (${JSON.stringify(vols[bpffs.name])})`);
    if (bpffs.readOnly) problems.push('/sys/fs/bpf is mounted read-only: nextup pins its map there');
  }
  if (!btf) problems.push('no volumeMount at /sys/kernel/btf');
  else {
    const hp = (vols[btf.name] || {}).hostPath;
    if (!hp || hp.path !== '/sys/kernel/btf' || hp.type !== 'Directory') problems.push(`/sys/kernel/btf is not the hostPath /sys/kernel/btf of type Directory (${JSON.stringify(vols[btf.name])})`);
    if (btf.readOnly !== true) problems.push('/sys/kernel/btf is not mounted readOnly');
  }
  const extra = hostPathVolumes(sc.spec).filter((vol) => !['/sys/fs/bpf', '/sys/kernel/btf'].includes(vol.hostPath.path));
  if (extra.length) problems.push(`other hostPath volumes: ${extra.map((vol) => vol.hostPath.path)}`);
  for (const { c } of P.allContainers(sc.spec)) {
    if (c !== sc.container && (c.volumeMounts || []).some((m) => hostPathVolumes(sc.spec).some((vol) => vol.name === m.name))) {
      problems.push(`container ${c.name} mounts a hostPath volume too`);
    }
  }
  if (sc.spec.hostNetwork || sc.spec.hostPID || sc.spec.hostIPC) problems.push('the pod shares a host namespace');
  const ns = sc.objects.find((o) => o.kind === 'Namespace' && o.metadata.name === sc.obj.metadata.namespace);
  const level = ns && ns.metadata.labels && ns.metadata.labels['pod-security.kubernetes.io/enforce'];
  if (ns && level && level !== 'privileged') problems.push(`namespace enforces Pod Security "${level}": hostPath and BPF capabilities need "privileged"`);
  if (problems.length) fail('bpf: nextup privileges', problems);
});

test('no-bpf: NEXTUP_BPF=off, no capabilities, non-root, no hostPath; every pod meets Pod Security "restricted"', () => {
  const sc = sidecarOf('no-bpf');
  const s = P.effectiveSecurity(sc.spec, sc.container);
  const problems = [];
  if (sc.env.vars.get('NEXTUP_BPF') !== 'off') problems.push(`NEXTUP_BPF is ${sc.env.vars.get('NEXTUP_BPF')}, expected off`);
  if ((s.capabilities.add || []).length) problems.push(`capabilities.add is [${s.capabilities.add}]`);
  if (s.runAsNonRoot !== true) problems.push('runAsNonRoot is not true');
  if (s.runAsUser !== IMAGE_USER) problems.push(`runAsUser is ${s.runAsUser}, expected ${IMAGE_USER} (the image's user)`);
  if ((sc.container.volumeMounts || []).some((m) => m.mountPath.startsWith('/sys/'))) problems.push('nextup still mounts something under /sys');
  // Pod Security Standards, "restricted" profile (the namespace enforces it).
  for (const { obj, spec } of P.workloads(objectsOf('no-bpf'))) {
    const who = `${obj.kind}/${obj.metadata.name}`;
    if (hostPathVolumes(spec).length) problems.push(`${who}: hostPath volumes ${hostPathVolumes(spec).map((vol) => vol.hostPath.path)}`);
    if (spec.hostNetwork || spec.hostPID || spec.hostIPC) problems.push(`${who}: shares a host namespace`);
    for (const { c } of P.allContainers(spec)) {
      const cs = P.effectiveSecurity(spec, c);
      const at = `${who} container ${c.name}`;
      if (cs.privileged) problems.push(`${at}: privileged`);
      if (cs.allowPrivilegeEscalation !== false) problems.push(`${at}: allowPrivilegeEscalation is not false`);
      if (cs.runAsNonRoot !== true) problems.push(`${at}: runAsNonRoot is not true`);
      if (cs.runAsUser === 0) problems.push(`${at}: runAsUser 0`);
      if (!(cs.capabilities.drop || []).includes('ALL')) problems.push(`${at}: capabilities.drop lacks ALL`);
      const extraCaps = (cs.capabilities.add || []).filter((cap) => cap !== 'NET_BIND_SERVICE');
      if (extraCaps.length) problems.push(`${at}: adds ${extraCaps}`);
      if (!cs.seccompProfile || !['RuntimeDefault', 'Localhost'].includes(cs.seccompProfile.type)) problems.push(`${at}: no RuntimeDefault/Localhost seccomp profile`);
      if (cs.appArmorProfile && cs.appArmorProfile.type === 'Unconfined') problems.push(`${at}: AppArmor Unconfined`);
    }
  }
  const ns = sc.objects.find((o) => o.kind === 'Namespace' && o.metadata.name === sc.obj.metadata.namespace);
  if (ns && ((ns.metadata.labels || {})['pod-security.kubernetes.io/enforce'] !== 'restricted')) {
    problems.push(`namespace ${ns.metadata.name} does not enforce Pod Security "restricted"`);
  }
  if (problems.length) fail('no-bpf: privileges', problems);
});

// ---------------------------------------------------------------------------------------------
// the Dockerfile

const DOCKERFILE = path.join(DEPLOY, 'Dockerfile');

function dockerfile() {
  assert.ok(fs.existsSync(DOCKERFILE), `${DOCKERFILE} is missing`);
  const df = D.parse(DOCKERFILE);
  assert.ok(df.stages.length >= 2, `expected a builder and a runtime stage, found ${df.stages.length}`);
  return df;
}

test('Dockerfile: the builder installs build packages with scripts/deps.sh build (as the Makefile does) and builds with make', () => {
  const df = dockerfile();
  const builder = df.stages[0];
  const runs = builder.instructions.filter((i) => i.cmd === 'RUN').map((i) => i.args);
  const problems = [];
  if (!/^debian:(12|bookworm)(\.[0-9]+)?$/.test(builder.image)) problems.push(`builder FROM ${builder.image}, expected debian:12`);
  const depsAt = runs.findIndex((r) => /(^|[\s/])scripts\/deps\.sh build(\s|$|&|;)/.test(r));
  const makeAt = runs.findIndex((r) => /(^|[\s;&])make\b[^;&|]*\bbuild\/nextup\b/.test(r));
  if (depsAt < 0) problems.push('no RUN scripts/deps.sh build in the builder stage');
  if (makeAt < 0) problems.push('no RUN make ... build/nextup in the builder stage');
  if (depsAt >= 0 && makeAt >= 0 && makeAt < depsAt) problems.push('make runs before scripts/deps.sh build');
  if (runs.some((r) => /apt-get install/.test(r))) problems.push('the builder installs packages with apt-get itself: the list would drift from scripts/deps.sh');
  if (!builder.instructions.some((i) => i.cmd === 'COPY' && /^\.\s+\S+$/.test(i.args))) problems.push('the builder does not COPY the repository (COPY . <dir>)');
  const makefile = fs.readFileSync(path.join(REPO, 'Makefile'), 'utf8');
  if (!/scripts\/deps\.sh build/.test(makefile)) problems.push('the Makefile no longer runs scripts/deps.sh build: the builder and make would differ');
  const ignore = path.join(DEPLOY, 'Dockerfile.dockerignore');
  if (!fs.existsSync(ignore)) problems.push('deploy/Dockerfile.dockerignore is missing');
  else {
    const lines = fs.readFileSync(ignore, 'utf8').split('\n').map((l) => l.trim());
    for (const must of ['build', 'build-asan', '.git']) if (!lines.includes(must)) problems.push(`Dockerfile.dockerignore does not exclude ${must}`);
  }
  if (problems.length) fail('Dockerfile builder', problems);
});

test('Dockerfile: the runtime stage is debian:12-slim, non-root 65532, the nextup entrypoint, ports 15000/15001', () => {
  const df = dockerfile();
  const rt = df.stages[df.stages.length - 1];
  const builder = df.stages[0];
  const problems = [];
  if (!/^debian:(12|bookworm)-slim$/.test(rt.image)) problems.push(`runtime FROM ${rt.image}, expected debian:12-slim`);
  const last = (cmd) => rt.instructions.filter((i) => i.cmd === cmd).pop();
  const user = last('USER');
  if (!user || !new RegExp(`^${IMAGE_USER}(:${IMAGE_USER})?$`).test(user.args)) problems.push(`USER is ${user && user.args}, expected ${IMAGE_USER}`);
  const expose = rt.instructions.filter((i) => i.cmd === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ''));
  for (const p of ['15000', '15001']) if (!expose.includes(p)) problems.push(`EXPOSE lacks ${p}`);
  const ep = last('ENTRYPOINT');
  let epv = null;
  try { epv = ep && JSON.parse(ep.args); } catch { /* shell form */ }
  if (!epv || epv[0] !== '/usr/local/bin/nextup') problems.push(`ENTRYPOINT is ${ep && ep.args}, expected ["/usr/local/bin/nextup"] (exec form: SIGTERM must reach nextup)`);
  const workdir = (builder.instructions.filter((i) => i.cmd === 'WORKDIR').pop() || { args: '/' }).args;
  const copy = rt.instructions.find((i) => i.cmd === 'COPY' && /--from=/.test(i.args));
  const want = `${path.posix.join(workdir, 'build/nextup')} /usr/local/bin/nextup`;
  if (!copy || !copy.args.includes(`--from=${builder.name}`) || !copy.args.endsWith(want)) {
    problems.push(`no COPY --from=${builder.name} ${want} (found: ${copy && copy.args})`);
  }
  const pkgs = rt.instructions.filter((i) => i.cmd === 'RUN').flatMap((i) => D.aptInstalls(i.args));
  if (!pkgs.some((p) => p.name === 'bpftool')) problems.push('bpftool is not installed (kubectl exec ... bpftool map dump)');
  for (const p of pkgs) {
    if (!p.noRecommends) problems.push(`${p.name}: apt-get install without --no-install-recommends`);
    if (/-dev$|^(gcc|clang|llvm|make|cpp|binutils)(-|$)/.test(p.name)) problems.push(`${p.name}: a build package in the runtime image`);
  }
  // The no-bpf variant runs as the image's user; keep the two in step.
  const nb = P.effectiveSecurity(sidecarOf('no-bpf').spec, sidecarOf('no-bpf').container);
  if (nb.runAsUser !== IMAGE_USER) problems.push(`no-bpf runAsUser ${nb.runAsUser} differs from the image user ${IMAGE_USER}`);
  if (problems.length) fail('Dockerfile runtime stage', problems);
});

test('Dockerfile: the runtime stage installs the package of every library `ldd nextup` resolves (glibc aside)', (t) => {
  const osRelease = fs.existsSync('/etc/os-release') ? fs.readFileSync('/etc/os-release', 'utf8') : '';
  if (!/^VERSION_CODENAME=bookworm$/m.test(osRelease) || !which('dpkg') || !which('ldd')) {
    t.skip('not Debian 12 with dpkg and ldd: the package names here would not be those of debian:12-slim');
    return;
  }
  assert.ok(fs.existsSync(BIN), `nextup binary ${BIN} does not exist: build it (make) or set NEXTUP_BIN`);
  const df = dockerfile();
  const rt = df.stages[df.stages.length - 1];
  const installed = new Set(rt.instructions.filter((i) => i.cmd === 'RUN').flatMap((i) => D.aptInstalls(i.args)).map((p) => p.name));
  const ldd = spawnSync('ldd', [BIN], { encoding: 'utf8' });
  assert.equal(ldd.status, 0, `ldd ${BIN} failed: ${ldd.stderr}`);
  const libs = [];
  for (const line of ldd.stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) || /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
    else if (/not found/.test(line)) assert.fail(`ldd: ${line.trim()}`);
  }
  assert.ok(libs.length > 0, `ldd printed no library:\n${ldd.stdout}`);
  const problems = [];
  const found = [];
  for (const lib of libs) {
    const candidates = [...new Set([lib, fs.realpathSync(lib), lib.startsWith('/lib') ? `/usr${lib}` : lib.replace(/^\/usr/, '')])];
    let pkg = null;
    for (const c of candidates) {
      const r = spawnSync('dpkg', ['-S', c], { encoding: 'utf8' });
      if (r.status === 0) { pkg = r.stdout.split('\n')[0].split(':')[0].trim(); break; }
    }
    if (!pkg) { problems.push(`${lib}: no Debian package owns it (dpkg -S)`); continue; }
    found.push(`${path.basename(lib)}=${pkg}`);
    if (pkg === 'libc6') continue; // glibc is in every image
    if (!installed.has(pkg)) problems.push(`${path.basename(lib)} comes from ${pkg}, which the runtime stage does not install`);
  }
  t.diagnostic(`ldd ${path.relative(REPO, BIN)}: ${found.join(' ')}`);
  if (problems.length) fail('runtime libraries missing from deploy/Dockerfile', problems);
});

// ---------------------------------------------------------------------------------------------
// one pod of each variant, played on this machine

function podSimPrereqs(needBpf) {
  const missing = [];
  if (process.getuid() !== 0) missing.push('not root');
  for (const cmd of ['unshare', 'setpriv', 'ip', 'mount']) if (!which(cmd)) missing.push(`no ${cmd}`);
  if (needBpf) {
    const fsType = spawnSync('stat', ['-f', '-c', '%T', '/sys/fs/bpf'], { encoding: 'utf8' });
    if (fsType.status !== 0 || fsType.stdout.trim() !== 'bpf_fs') missing.push('/sys/fs/bpf is not a bpffs mount');
    try { fs.accessSync('/sys/kernel/btf/vmlinux', fs.constants.R_OK); } catch { missing.push('no /sys/kernel/btf/vmlinux'); }
  }
  if (missing.length === 0) {
    const r = spawnSync('unshare', ['--net', '--mount', '--propagation', 'private', '--', 'true']);
    if (r.status !== 0) missing.push('unshare --net --mount is not permitted here');
  }
  return missing;
}

for (const v of Object.keys(VARIANTS)) {
  test(`${v}: the pod, played here: nextup as the manifest runs it (user, capabilities, read-only root, own network namespace)`, async (t) => {
    const podName = `shop-frontend-deploytest-${process.pid}`;
    const sc = sidecarOf(v, podName);
    const bpfMode = sc.env.vars.get('NEXTUP_BPF') || nextupHelp().get('NEXTUP_BPF');
    const missing = podSimPrereqs(bpfMode === 'on');
    if (missing.length) {
      t.skip(`cannot play the pod here: ${missing.join(', ')}`);
      return;
    }
    assert.ok(fs.existsSync(BIN), `nextup binary ${BIN} does not exist`);
    assert.ok(nextupHelp().has('NEXTUP_RESOLV_CONF'), `${BIN} has no NEXTUP_RESOLV_CONF: cannot point it at the simulated cluster DNS`);
    const s = P.effectiveSecurity(sc.spec, sc.container);
    assert.ok((s.capabilities.drop || []).includes('ALL'), 'the simulation assumes capabilities.drop: [ALL]');
    const ns = sc.obj.metadata.namespace || 'default';

    // The cluster this pod lives in: for each service, the headless Service of its first upstream
    // and that many replicas, on addresses of their own (127.0.<service>.<replica>).
    const { services } = servicesOf(sc);
    const cluster = services.map((nsvc, i) => {
      const first = P.splitHostPort(nsvc.upstreams[0] || '');
      assert.ok(first, `${nsvc.upstreamsVar} has no host:port`);
      const svcName = first.host.split('.')[0];
      const svc = sc.objects.find((o) => o.kind === 'Service' && o.metadata.name === svcName);
      assert.ok(svc, `no Service ${svcName}`);
      const dep = sc.objects.find((o) => o.kind === 'Deployment' && Object.entries(svc.spec.selector || {})
        .every(([k, val]) => ((o.spec.template.metadata || {}).labels || {})[k] === val));
      const replicas = Math.min(Math.max(dep ? dep.spec.replicas ?? 1 : 1, 1), 8);
      return {
        name: nsvc.name,
        port: first.port,
        upstreamHost: nsvc.upstreamHost,
        dnsName: `${svcName}.${svc.metadata.namespace || ns}.svc.cluster.local`,
        replicas: Array.from({ length: replicas }, (_, j) => `127.0.${i + 1}.${j + 1}`),
      };
    });
    // The application's calls, made by a real HTTP_PROXY client (Python's urllib) with the app
    // container's environment: every non-loopback URL its command names, a few times each; nextup's
    // admin port, which NO_PROXY must keep off the proxy; and a name no service claims.
    const { ns: nextupNs, domain } = routingOf(sc);
    const app = appsOf(sc)[0];
    assert.ok(app, 'the pod has no application container');
    const admin = P.splitHostPort(sc.env.vars.get('NEXTUP_ADMIN') || nextupHelp().get('NEXTUP_ADMIN'));
    const calls = [];
    for (const u of S.httpUrls(JSON.stringify([app.c.command || [], app.c.args || []])).filter((x) => !S.isLoopback(x.host))) {
      const to = S.route(services, u.authority, nextupNs, domain);
      for (let i = 0; i < 3; i++) calls.push({ url: u.url, service: to ? to.name : null, authority: u.authority });
    }
    assert.ok(calls.length > 0, `container ${app.c.name} calls no http:// URL`);
    calls.push({ url: `http://127.0.0.1:${admin.port}/readyz`, direct: true });
    calls.push({ url: 'http://no-such-service.example/', service: null, authority: 'no-such-service.example' });
    const py = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' });
    assert.equal(py.status, 0, `python3 (the application's HTTP client here) does not run: ${py.stderr}`);
    const appEnv = { PATH: process.env.PATH };
    for (const [k, val] of app.env.vars) if (/^(https?|no|all)_proxy$/i.test(k)) appEnv[k] = val;

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nextup-podsim-'));
    fs.chmodSync(dir, 0o755);
    const resolv = path.join(dir, 'resolv.conf');
    fs.writeFileSync(resolv, `nameserver 127.0.0.1\nsearch ${ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n`);
    fs.chmodSync(resolv, 0o644);
    const env = Object.fromEntries(sc.env.vars);
    env.NEXTUP_RESOLV_CONF = resolv; // with the next one, the only variables not from the manifest
    // Never the node's real program set: one of this test run's own (removed below).
    const nodeDir = `/sys/fs/bpf/nextup-podsim-node-${process.pid}`;
    if (bpfMode !== 'off') env.NEXTUP_BPF_NODE_DIR = nodeDir;
    const listen = P.splitHostPort(env.NEXTUP_LISTEN || nextupHelp().get('NEXTUP_LISTEN'));
    const pinDir = bpfMode === 'off' ? null : (env.NEXTUP_BPF_PIN_DIR || nextupHelp().get('NEXTUP_BPF_PIN_DIR'));
    const preStop = sc.container.lifecycle && sc.container.lifecycle.preStop;
    const spec = {
      bin: BIN,
      env,
      uid: s.runAsUser ?? IMAGE_USER,
      gid: s.runAsGroup ?? IMAGE_USER,
      caps: (s.capabilities.add || []).map((c) => c.replace(/^CAP_/, '').toLowerCase()),
      noNewPrivs: s.allowPrivilegeEscalation === false,
      readOnlyRoot: s.readOnlyRootFilesystem === true,
      probes: probesOf(sc.container).map((p) => ({ name: p.name, path: p.path, port: p.port })),
      listenPort: listen.port,
      cluster,
      calls,
      python: py.stdout.trim(),
      appEnv,
      preStop: preStop ? (preStop.exec ? preStop.exec.command : null) : null,
      pinDir,
      drainMs: drainMs(sc),
    };
    if (pinDir) assert.ok(!fs.existsSync(pinDir), `${pinDir} exists already`);
    const specFile = path.join(dir, 'spec.json');
    fs.writeFileSync(specFile, JSON.stringify(spec));
    fs.chmodSync(specFile, 0o644);
    let out;
    try {
      const r = spawnSync('unshare', ['--net', '--mount', '--propagation', 'private', '--',
        process.execPath, path.join(__dirname, 'lib', 'podsim.js'), specFile], { encoding: 'utf8', timeout: 60000 });
      assert.equal(r.status, 0, `podsim failed: ${r.stderr}`);
      out = JSON.parse(r.stdout);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      if (pinDir && fs.existsSync(pinDir)) fs.rmSync(pinDir, { recursive: true, force: true });
      if (fs.existsSync(nodeDir)) fs.rmSync(nodeDir, { recursive: true, force: true });
    }
    const log = `\n--- nextup stderr ---\n${out.stderr}`;
    t.diagnostic(`uid ${spec.uid}, capabilities [${spec.caps}], NEXTUP_BPF=${bpfMode}, ` +
      cluster.map((c) => `${c.name}: ${c.replicas.length} replicas of ${c.dnsName}:${c.port}`).join(', '));
    assert.deepEqual(out.errors, [], `simulation errors${log}`);
    for (const p of spec.probes) {
      assert.equal(out.probes[p.name] && out.probes[p.name].status, 200, `${p.name} probe GET ${p.path} on :${p.port}: ${JSON.stringify(out.probes[p.name])}${log}`);
    }
    assert.equal(out.calls.length, calls.length, `the app's calls did not all run: ${JSON.stringify(out.calls)}${log}`);
    const bad = [];
    out.calls.forEach((got, i) => {
      const want = calls[i];
      if (want.direct) {
        if (got.status !== 200) bad.push(`${want.url} (NO_PROXY: straight to nextup's admin port): ${got.status} ${got.body}`);
      } else if (!want.service) {
        if (got.status !== 421) bad.push(`${want.url} (no service claims ${want.authority}): ${got.status} ${got.body}, expected 421`);
      } else if (got.status !== 200 || !got.body.startsWith(`${want.service} replica `)) {
        bad.push(`${want.url} (service ${want.service}): ${got.status} ${got.body}`);
      }
    });
    assert.deepEqual(bad, [], `the app's calls with its HTTP_PROXY / NO_PROXY (python3 urllib), through 127.0.0.1:${listen.port}: ` +
      'each service\'s first replica answers 503 and nextup must retry on another of the same service' + log);
    // What the replicas saw: origin-form, and the Host nextup sends (the client's authority, or UPSTREAM_HOST).
    const seenBad = [];
    for (const r of out.seen) {
      const c = cluster.find((x) => x.name === r.service);
      const hosts = new Set(calls.filter((x) => x.service === r.service).map((x) => c.upstreamHost || x.authority));
      if (!r.target.startsWith('/')) seenBad.push(`${r.service} replica ${r.replica} got request-target ${r.target} (not origin-form)`);
      if (!hosts.has(r.host)) seenBad.push(`${r.service} replica ${r.replica} got Host ${r.host}, expected ${[...hosts].join(' or ')}`);
    }
    for (const c of cluster) if (!out.seen.some((r) => r.service === c.name)) seenBad.push(`no replica of ${c.name} saw a request`);
    assert.deepEqual(seenBad, [], `requests at the replicas${log}`);
    t.diagnostic(`${calls.length} calls by python3 urllib with the app's proxy environment: ` +
      `${cluster.map((c) => `${c.name} ${out.seen.filter((r) => r.service === c.name).length} requests at its replicas`).join(', ')}; ` +
      'admin port direct (NO_PROXY); an unknown authority 421');
    if (pinDir) {
      assert.ok(out.pin && out.pin.exists, `no pinned map at ${pinDir}/peer_stats${log}`);
      if (out.pin.show) {
        assert.ok(out.pin.show.status === 0 && /peer_stats/.test(out.pin.show.out),
          `bpftool map show pinned ${pinDir}/peer_stats with the container's capabilities failed: ${JSON.stringify(out.pin.show)}`);
      }
      if (out.pin.dump) {
        const e = out.pin.dump.find((x) => x.key && x.key.port === cluster[0].port);
        assert.ok(e && e.value.connects_established > 0, `bpftool dump of ${pinDir}/peer_stats has no established connects to port ${cluster[0].port}: ${JSON.stringify(out.pin.dump)}`);
        t.diagnostic(`bpftool map dump pinned ${pinDir}/peer_stats: ${out.pin.dump.length} peers, ` +
          `${out.pin.dump.reduce((a, x) => a + (x.value.connects_established || 0), 0)} connects established`);
      } else {
        t.diagnostic(`bpftool dump not read: ${out.pin.dumpError}`);
      }
    }
    if (spec.preStop) {
      assert.equal(out.preStop && out.preStop.status, 0, `preStop ${JSON.stringify(spec.preStop)} failed: ${JSON.stringify(out.preStop)}`);
      if (pinDir) assert.equal(out.preStop.pinLeft, false, `preStop left ${pinDir} on the node's bpffs`);
    }
    assert.equal(out.exit && out.exit.code, 0, `nextup did not exit 0 after SIGTERM: ${JSON.stringify(out.exit)}${log}`);
    assert.ok(out.exit.afterSigtermMs === undefined || out.exit.afterSigtermMs < spec.drainMs + 1000, `draining took ${out.exit.afterSigtermMs} ms`);
  });
}

// ---------------------------------------------------------------------------------------------
// overlays/upstream-mtls: nextup -> orders over mutual TLS, files from Secrets

const MTLS = 'upstream-mtls';
const MTLS_SECRETS_SCRIPT = path.join(REPO, 'scripts', 'make-tls-secrets.sh');
const TLS_FILE_VARS = ['NEXTUP_UPSTREAM_CA_FILE', 'NEXTUP_UPSTREAM_CERT_FILE', 'NEXTUP_UPSTREAM_KEY_FILE',
  'NEXTUP_TLS_CERT_FILE', 'NEXTUP_TLS_KEY_FILE', 'NEXTUP_TLS_CLIENT_CA_FILE'];

// The Secret volume mounted at a directory holding <file>: { mount, volume } or null.
function secretMountOf(spec, container, file) {
  for (const m of container.volumeMounts || []) {
    if (path.dirname(file) !== m.mountPath.replace(/\/+$/, '')) continue;
    const vol = (spec.volumes || []).find((x) => x.name === m.name);
    return { mount: m, volume: vol };
  }
  return null;
}

// Runs scripts/make-tls-secrets.sh into a new temp dir: the dir (one subdirectory per Secret).
function makeTestSecrets() {
  for (const tool of ['openssl', 'nginx']) {
    if (!which(tool) && !fs.existsSync(`/usr/sbin/${tool}`)) assert.fail(`${tool} is not installed: scripts/deps.sh test installs it`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nextup-mtls-'));
  const r = spawnSync(MTLS_SECRETS_SCRIPT, [dir, 'shop'], { encoding: 'utf8', timeout: 30000 });
  assert.equal(r.status, 0, `make-tls-secrets.sh failed: ${r.stderr}`);
  return dir;
}

test(`${MTLS}: renders; every object is valid against the Kubernetes OpenAPI schema`, () => {
  const problems = [];
  for (const obj of objectsOf(MTLS)) {
    for (const p of validateObject(obj)) problems.push(`${obj.kind}/${obj.metadata.name}: ${p.path || '.'}: ${p.message}`);
  }
  if (problems.length) fail(`${MTLS}: schema violations`, problems);
});

test(`${MTLS}: nextup's TLS files come from Secrets mounted whole and read-only, which the script makes`, () => {
  const sc = sidecarOf(MTLS);
  const problems = [...sc.env.problems];
  problems.push(...servicesOf(sc).problems);
  for (const e of sc.env.list) {
    if (e.name.startsWith('NEXTUP_') && !knownVariable(sc, e.name)) problems.push(`${e.name}: not a variable of ${BIN} --help`);
  }
  if (sc.env.vars.get('NEXTUP_UPSTREAM_TLS') !== 'on') problems.push('NEXTUP_UPSTREAM_TLS is not "on"');
  for (const v of ['NEXTUP_UPSTREAM_CA_FILE', 'NEXTUP_UPSTREAM_CERT_FILE', 'NEXTUP_UPSTREAM_KEY_FILE']) {
    if (!sc.env.vars.has(v)) problems.push(`${v} is not set`);
  }
  const secrets = makeTestSecrets();
  try {
    for (const v of TLS_FILE_VARS) {
      const file = sc.env.vars.get(v);
      if (!file) continue;
      const found = secretMountOf(sc.spec, sc.container, file);
      if (!found || !found.volume) { problems.push(`${v}=${file}: no volume is mounted at ${path.dirname(file)}`); continue; }
      const { mount, volume } = found;
      if (!volume.secret) problems.push(`${v}=${file}: volume ${volume.name} is not a Secret`);
      // A subPath mount is never updated by the kubelet: rotation would not reach nextup.
      if (mount.subPath || mount.subPathExpr) problems.push(`${v}: volume ${volume.name} is mounted with subPath (rotation would never reach nextup)`);
      if (mount.readOnly !== true) problems.push(`${v}: volume ${volume.name} is not mounted readOnly`);
      if (volume.secret && volume.secret.items) problems.push(`${v}: Secret ${volume.secret.secretName} has items: the key names are the file names here`);
      if (volume.secret && !fs.existsSync(path.join(secrets, volume.secret.secretName, path.basename(file)))) {
        problems.push(`${v}=${file}: scripts/make-tls-secrets.sh makes no key ${path.basename(file)} in Secret ${volume.secret.secretName}`);
      }
    }
    if (!sc.env.vars.has('NEXTUP_TLS_RELOAD_MS')) problems.push('NEXTUP_TLS_RELOAD_MS is not set (rotation is the point of mounting the Secret whole)');
  } finally {
    fs.rmSync(secrets, { recursive: true, force: true });
  }
  if (problems.length) fail(`${MTLS}: nextup TLS settings`, problems);
});

// The overlay's orders nginx.conf and nextup environment, run on loopback with the script's
// certificates: the paths of the mounts are replaced by the script's directories, the ports by
// free ones, and the replica's name comes in as SNI (as from NEXTUP_UPSTREAMS in the cluster).
test(`${MTLS}: the overlay's nginx and nextup, run here with the script's certificates, talk mutual TLS`, async (t) => {
  const objects = objectsOf(MTLS);
  const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'orders-nginx');
  assert.ok(cm && cm.data && cm.data['nginx.conf'], 'no ConfigMap orders-nginx with nginx.conf');
  const orders = P.findContainer(objects, 'orders');
  assert.ok(orders, 'no orders container');
  const mountOf = (vol) => (orders.container.volumeMounts || []).find((m) => m.name === vol);
  const tlsVol = (orders.spec.volumes || []).find((x) => x.secret);
  assert.ok(tlsVol, 'the orders pod mounts no Secret');
  const tlsMount = mountOf(tlsVol.name);
  const tmpMount = (orders.container.volumeMounts || []).find((m) => m.mountPath === '/tmp');
  assert.ok(tlsMount && tmpMount, 'orders mounts neither its Secret nor a writable /tmp');
  const containerPort = P.resolvePort('http', orders.container);
  const sc = sidecarOf(MTLS);
  // TLS is one setting for all services: every one must then be a TLS replica (orders here).
  const { services } = servicesOf(sc);
  assert.deepEqual(services.map((s) => s.name), ['orders'], 'NEXTUP_UPSTREAM_TLS=on covers every service: the overlay carries orders alone');
  const ordersSvc = services[0];
  const upstreamEntry = P.splitHostPort(ordersSvc.upstreams[0]);
  assert.equal(upstreamEntry.port, containerPort, `${ordersSvc.upstreamsVar} port and the orders container port differ`);

  const secrets = makeTestSecrets();
  const dir = path.join(secrets, 'run');
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  const children = [];
  try {
    const nginxPort = await freePort();
    // One pass, so that a replaced path is never replaced again. /dev/stdout and /dev/stderr
    // become files: Node's stdio pipes are sockets, which cannot be opened by name.
    const swap = new Map([
      [`${tlsMount.mountPath}/`, `${path.join(secrets, tlsVol.secret.secretName)}/`],
      [`${tmpMount.mountPath}/`, `${path.join(dir, 'tmp')}/`],
      ['/dev/stdout', path.join(dir, 'access.log')],
      ['/dev/stderr', path.join(dir, 'error.log')],
    ]);
    const escape = (x) => x.replace(/[.*+?^${}()|[\]\\\/]/g, '\\$&');
    let conf = cm.data['nginx.conf']
      .replace(new RegExp([...swap.keys()].map(escape).join('|'), 'g'), (m) => swap.get(m))
      .replace(new RegExp(`listen ${containerPort} ssl;`), `listen 127.0.0.1:${nginxPort} ssl;`);
    assert.ok(conf.includes(`127.0.0.1:${nginxPort}`), `nginx.conf does not listen on ${containerPort} with ssl`);
    conf = `daemon off;\n${conf}`;
    fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
    const nginxBin = fs.existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx';
    const errLog = path.join(dir, 'error.log');
    const check = spawnSync(nginxBin, ['-t', '-q', '-p', dir, '-e', errLog, '-c', path.join(dir, 'nginx.conf')], { encoding: 'utf8' });
    assert.equal(check.status, 0, `nginx -t refuses the overlay's nginx.conf: ${check.stderr}`);
    const ng = spawn(nginxBin, ['-p', dir, '-e', errLog, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(ng);
    const ngLog = () => { try { return fs.readFileSync(errLog, 'utf8'); } catch { return '(no error log)'; } };

    const start = async (dropClientCert) => {
      const [listen, admin] = [await freePort(), await freePort()];
      const env = Object.fromEntries(sc.env.vars);
      for (const v of TLS_FILE_VARS) {
        if (!env[v]) continue;
        const { volume } = secretMountOf(sc.spec, sc.container, env[v]);
        env[v] = path.join(secrets, volume.secret.secretName, path.basename(env[v]));
      }
      Object.assign(env, {
        NEXTUP_LISTEN: `127.0.0.1:${listen}`, NEXTUP_ADMIN: `127.0.0.1:${admin}`, NEXTUP_BPF: 'off',
        [ordersSvc.upstreamsVar]: `127.0.0.1:${nginxPort}`, NEXTUP_UPSTREAM_SNI: upstreamEntry.host,
      });
      if (dropClientCert) { delete env.NEXTUP_UPSTREAM_CERT_FILE; delete env.NEXTUP_UPSTREAM_KEY_FILE; }
      const child = spawn(BIN, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      children.push(child);
      child.stderr.setEncoding('utf8');
      child.err = '';
      child.stderr.on('data', (d) => { child.err += d; });
      let ready = 0;
      for (let i = 0; i < 50 && ready !== 200; i++) {
        ready = await httpGet(admin, '/readyz');
        if (ready !== 200) await sleep(100);
      }
      assert.equal(ready, 200, `nextup never ready:\n${child.err}`);
      child.listen = listen;
      return child;
    };
    // As the application's HTTP_PROXY client sends it: absolute-form for the service's name.
    const call = (port) => new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: `http://${ordersSvc.name}/`, timeout: 5000, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode, body }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ status: 0, body: String(e) }));
    });

    const nx = await start(false);
    const got = [];
    for (let i = 0; i < 5; i++) got.push(await call(nx.listen));
    const bad = got.filter((g) => g.status !== 200 || !/^orders replica /.test(g.body));
    assert.deepEqual(bad, [], `calls through nextup over mutual TLS failed:\n${nx.err}\n--- nginx ---\n${ngLog()}`);
    t.diagnostic(`5 calls through nextup -> nginx (mutual TLS, SNI ${upstreamEntry.host}): ${got[0].body.trim()}`);

    // Without its client certificate nextup must be turned away: nginx answers 400 for a missing
    // certificate (it does not fail the handshake), and nextup passes that answer on unchanged.
    const anon = await start(true);
    const r = await call(anon.listen);
    assert.equal(r.status, 400, `without a client certificate the replica should refuse (400), got ${r.status} ${r.body}`);
    assert.match(r.body, /certificate/i, 'the 400 should be nginx\'s "No required SSL certificate was sent"');
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await sleep(300);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    fs.rmSync(secrets, { recursive: true, force: true });
  }
});
