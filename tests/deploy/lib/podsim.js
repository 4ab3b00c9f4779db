'use strict';
// One pod of the rendered manifests, played on this machine: run as root by deploy.test.js under
//   unshare --net --mount --propagation private -- node podsim.js <spec.json>
// so that this process is alone in a new network namespace (like a pod: its own loopback, the
// admin and proxy ports exactly as the manifest writes them) and a private mount namespace (the
// root filesystem is remounted read-only there, like readOnlyRootFilesystem).
//
// In that namespace it stands in for the cluster:
//   * a DNS server on 127.0.0.1:53 answering each service's headless Service name with one
//     address per replica (127.0.<service>.1, .2, ...), found through the search path of a pod's
//     resolv.conf;
//   * one HTTP backend per replica on the port nextup is told to use, answering "<service>
//     replica <n>" and noting the Host and request-target it got; the first replica of each
//     service answers 503, so a call only succeeds if nextup retries on another replica of it;
// then starts nextup with the container's environment, user and capabilities (setpriv: uid/gid,
// bounding set = the added capabilities, no_new_privs), hits its probes, makes the application's
// calls with a real HTTP_PROXY client (python3 urllib, the app container's proxy variables), looks
// at the pinned map, runs the preStop hook, sends SIGTERM, and prints what happened as JSON on
// stdout.

const fs = require('node:fs');
const http = require('node:http');
const dgram = require('node:dgram');
const { spawn, execFileSync, spawnSync } = require('node:child_process');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const result = { probes: {}, calls: [], seen: [], pin: null, preStop: null, exit: null, stderr: '', errors: [] };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function dnsServer(answers) {
  // answers: Map lowercased FQDN (no trailing dot) -> [IPv4 strings]
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    try {
      let off = 12;
      const labels = [];
      while (msg[off] !== 0) {
        labels.push(msg.toString('ascii', off + 1, off + 1 + msg[off]));
        off += msg[off] + 1;
      }
      off += 1;
      const qtype = msg.readUInt16BE(off);
      const qend = off + 4;
      const name = labels.join('.').toLowerCase();
      const addrs = answers.get(name);
      const ans = addrs && qtype === 1 ? addrs : [];
      const head = Buffer.alloc(12);
      head.writeUInt16BE(msg.readUInt16BE(0), 0);
      head.writeUInt16BE(0x8180 | (addrs ? 0 : 3), 2); // response, RD, RA; NXDOMAIN when unknown
      head.writeUInt16BE(1, 4);
      head.writeUInt16BE(ans.length, 6);
      const rrs = ans.map((a) => {
        const rr = Buffer.alloc(16);
        rr.writeUInt16BE(0xc00c, 0); // the question's name
        rr.writeUInt16BE(1, 2);
        rr.writeUInt16BE(1, 4);
        rr.writeUInt32BE(5, 6);
        rr.writeUInt16BE(4, 10);
        a.split('.').forEach((b, i) => { rr[12 + i] = Number(b); });
        return rr;
      });
      sock.send(Buffer.concat([head, msg.subarray(12, qend), ...rrs]), rinfo.port, rinfo.address);
    } catch (e) {
      result.errors.push(`dns: ${e.message}`);
    }
  });
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(53, '127.0.0.1', () => resolve(sock));
  });
}

function backend(address, port, status, body, service, replica) {
  const srv = http.createServer((req, res) => {
    result.seen.push({ service, replica, host: req.headers.host, target: req.url });
    res.writeHead(status, { 'Content-Type': 'text/plain' });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, address, () => resolve(srv));
  });
}

function get(port, path) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: 3000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, body: e.message }));
  });
}

// One GET per URL with urllib's default opener, which takes its proxies from the environment
// (http_proxy/HTTP_PROXY, no_proxy/NO_PROXY) as an application's would: [{ status, body }].
const APP_CLIENT = `
import json, sys, urllib.error, urllib.request
out = []
for url in json.loads(sys.argv[1]):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            out.append({"status": r.status, "body": r.read().decode(errors="replace").strip()})
    except urllib.error.HTTPError as e:
        out.append({"status": e.code, "body": e.read().decode(errors="replace").strip()})
    except OSError as e:
        out.append({"status": 0, "body": str(e)})
print(json.dumps(out))
`;

// Runs <cmd> without blocking the event loop: { status, stdout, stderr }.
function run(cmd, args, env, timeoutMs) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); resolve({ status: -1, stdout, stderr: String(e) }); });
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ status: code === null ? signal : code, stdout, stderr }); });
  });
}

function privArgs() {
  const args = [];
  if (spec.uid !== 0) args.push(`--reuid=${spec.uid}`, `--regid=${spec.gid}`, '--clear-groups');
  args.push('--inh-caps=-all', `--bounding-set=${['-all', ...spec.caps.map((c) => `+${c}`)].join(',')}`);
  if (spec.noNewPrivs) args.push('--no-new-privs');
  return args;
}

async function main() {
  execFileSync('ip', ['link', 'set', 'lo', 'up']);
  if (spec.readOnlyRoot) {
    execFileSync('mount', ['-o', 'remount,bind,ro', '/']);
    try {
      fs.writeFileSync('/.podsim-write-check', '');
      fs.unlinkSync('/.podsim-write-check');
      result.errors.push('the root filesystem is still writable after the read-only remount');
    } catch (e) {
      if (e.code !== 'EROFS') result.errors.push(`read-only root check: ${e.message}`);
    }
  }

  const servers = [];
  const answers = new Map(spec.cluster.map((c) => [c.dnsName, c.replicas]));
  servers.push(await dnsServer(answers));
  for (const c of spec.cluster) {
    for (const [i, addr] of c.replicas.entries()) {
      servers.push(await backend(addr, c.port, i === 0 ? 503 : 200,
        i === 0 ? `${c.name} replica 1 is failing\n` : `${c.name} replica ${i + 1}\n`, c.name, i + 1));
    }
  }

  const child = spawn('setpriv', [...privArgs(), '--', spec.bin], { env: spec.env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', () => {}); // access log
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { result.stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  exited.then((e) => { exitInfo = e; });

  // Probes, as the kubelet sends them (to the admin port; here through the loopback).
  const deadline = Date.now() + 8000;
  for (const p of spec.probes) {
    let r;
    do {
      r = await get(p.port, p.path);
      if (r.status === 200 || exitInfo) break;
      await sleep(100);
    } while (Date.now() < deadline);
    result.probes[p.name] = { path: p.path, port: p.port, status: r.status, body: r.body.trim().slice(0, 200) };
  }

  // The application's calls, by an HTTP client that reads HTTP_PROXY / NO_PROXY itself.
  // (Not spawnSync: the DNS server and the replicas answer from this process's event loop.)
  if (!exitInfo) {
    const r = await run(spec.python, ['-c', APP_CLIENT, JSON.stringify(spec.calls.map((c) => c.url))], spec.appEnv, 30000);
    if (r.status !== 0) result.errors.push(`the application's client (python3 urllib) failed (${r.status}): ${r.stderr}`);
    else result.calls = JSON.parse(r.stdout);
  }

  if (spec.pinDir && !exitInfo) {
    const mapPath = `${spec.pinDir}/peer_stats`;
    result.pin = { dir: spec.pinDir, exists: fs.existsSync(mapPath), dump: null };
    // What the README has people run in the nextup container (its capabilities only): `map show`.
    // (`map dump` there needs CAP_SYS_ADMIN to read the map's BTF, so the dump below runs as the
    // test's full root.)
    const where = spawnSync('sh', ['-c', 'command -v bpftool'], { encoding: 'utf8' });
    const bpftool = where.status === 0 ? where.stdout.trim() : null;
    if (bpftool) {
      const show = spawnSync('setpriv', [...privArgs(), '--', bpftool, 'map', 'show', 'pinned', mapPath], { env: spec.env, encoding: 'utf8' });
      result.pin.show = { status: show.status, out: `${show.stdout}${show.stderr}`.trim() };
    }
    const dump = spawnSync('bpftool', ['-j', 'map', 'dump', 'pinned', mapPath], { encoding: 'utf8' });
    if (!dump.error && dump.status === 0) {
      const entries = JSON.parse(dump.stdout || '[]');
      result.pin.dump = entries.map((e) => (e.formatted ? { key: e.formatted.key, value: e.formatted.value } : e));
    } else {
      result.pin.dumpError = dump.error ? dump.error.code : dump.stderr.trim();
    }
  }

  if (spec.preStop && !exitInfo) {
    const r = spawnSync('setpriv', [...privArgs(), '--', ...spec.preStop], { env: spec.env, encoding: 'utf8' });
    result.preStop = { status: r.status, stderr: (r.stderr || '').trim(), pinLeft: spec.pinDir ? fs.existsSync(spec.pinDir) : null };
  }

  if (!exitInfo) {
    child.kill('SIGTERM');
    const t0 = Date.now();
    const timer = setTimeout(() => child.kill('SIGKILL'), spec.drainMs + 3000);
    exitInfo = await exited;
    clearTimeout(timer);
    exitInfo.afterSigtermMs = Date.now() - t0;
  }
  result.exit = exitInfo;
  for (const s of servers) s.close();
}

main()
  .catch((e) => { result.errors.push(e.stack || String(e)); })
  .finally(() => {
    if (spec.pinDir && fs.existsSync(spec.pinDir)) {
      try { execFileSync('rm', ['-rf', '--', spec.pinDir]); } catch (e) { result.errors.push(`cleanup: ${e.message}`); }
    }
    process.stdout.write(JSON.stringify(result));
    process.exit(0);
  });
