'use strict';
// nextup's services as a container's environment declares them, read the way nextup reads them:
//   * NEXTUP_SERVICES=a,b with NEXTUP_SERVICE_<NAME>_<SUFFIX> (the suffixes from `nextup --help`),
//     or NEXTUP_UPSTREAMS alone: the one service "default";
//   * which service an authority selects (sidecar/service.c: each HOSTS entry, default the name;
//     a short name also as <name>.<ns>, <name>.<ns>.svc, <name>.<ns>.svc.<domain> once the
//     namespace is known; an entry with a port wants that port, one without takes any; an
//     authority without a port is on port 80);
//   * HTTP_PROXY / NO_PROXY as HTTP clients read them (the union of curl's, Go's and Python's
//     matching, so that "exempted" means exempted by at least one of them).

const NAME_RE = /^[a-z0-9-]{1,63}$/;
const LABEL_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const PREFIX = 'NEXTUP_SERVICE_';

function varPrefix(name) {
  return `${PREFIX}${name.toUpperCase().replace(/-/g, '_')}_`;
}

// The per-service suffixes nextup knows, from its --help ("  NEXTUP_SERVICE_<NAME>_UPSTREAMS  default: ...").
function suffixesFromHelp(helpText) {
  const out = new Map();
  const re = /^ {2}NEXTUP_SERVICE_<NAME>_([A-Z0-9_]+) +default: (.*)$/gm;
  let m;
  while ((m = re.exec(helpText))) out.set(m[1], m[2].trim());
  return out;
}

function splitList(s) {
  return (s || '').split(',').map((x) => x.trim()).filter(Boolean);
}

// "host[:port]" -> { host, port } (port 0: none written), lower-cased, trailing dot dropped; null if bad.
function splitAuthority(a) {
  const s = String(a).trim().toLowerCase();
  let m = /^(\[[0-9a-f:.]+\])(?::(\d*))?$/.exec(s);
  if (!m) m = /^([^:[\]/@\s]+?)\.?(?::(\d*))?$/.exec(s);
  if (!m) return null;
  const port = m[2] ? Number(m[2]) : 0;
  if (port > 65535) return null;
  return { host: m[1], port };
}

// The services of an environment (a Map of resolved values) and what is wrong with them.
// Returns { services: [{ name, prefix, upstreamsVar, upstreams, hosts, upstreamHost }], multi, problems }.
function servicesOf(vars, suffixes) {
  const problems = [];
  const list = vars.get('NEXTUP_SERVICES');
  const single = vars.get('NEXTUP_UPSTREAMS');
  if (list !== undefined && list !== '' && single !== undefined && single !== '') {
    problems.push('NEXTUP_UPSTREAMS and NEXTUP_SERVICES are both set (nextup refuses to start)');
  }
  if (!list) {
    if (!single) problems.push('neither NEXTUP_SERVICES nor NEXTUP_UPSTREAMS is set (nextup requires one)');
    return {
      multi: false,
      problems,
      services: [{ name: 'default', prefix: 'NEXTUP_', upstreamsVar: 'NEXTUP_UPSTREAMS', upstreams: splitList(single), hosts: [], upstreamHost: '' }],
    };
  }
  const services = [];
  const seen = new Set();
  for (const [i, raw] of list.split(',').entries()) {
    const name = raw.trim();
    if (!NAME_RE.test(name)) {
      problems.push(`NEXTUP_SERVICES="${list}": name ${i + 1} "${name}" is not 1..63 characters of a-z, 0-9, -`);
      continue;
    }
    // The name is the service's default Host: it must be a host name a client can send.
    if (!LABEL_RE.test(name)) problems.push(`NEXTUP_SERVICES: "${name}" begins or ends with "-": not a DNS label (it is the default Host)`);
    if (seen.has(name)) problems.push(`NEXTUP_SERVICES: "${name}" is listed twice`);
    seen.add(name);
    const prefix = varPrefix(name);
    const upstreamsVar = `${prefix}UPSTREAMS`;
    const ups = vars.get(upstreamsVar);
    if (!ups) problems.push(`${upstreamsVar} is not set: NEXTUP_SERVICES lists "${name}" (nextup requires it)`);
    const hostsVar = vars.get(`${prefix}HOSTS`);
    services.push({
      name, prefix, upstreamsVar, upstreams: splitList(ups),
      hosts: hostsVar ? splitList(hostsVar) : [name],
      upstreamHost: vars.get(`${prefix}UPSTREAM_HOST`) || '',
    });
  }
  if (services.length === 0 && problems.length === 0) problems.push(`NEXTUP_SERVICES="${list}" names no service`);
  // Every NEXTUP_SERVICE_* must belong to a listed service and be a suffix nextup knows. (Kubernetes
  // service links of a Service named "nextup", NEXTUP_SERVICE_HOST and NEXTUP_SERVICE_PORT*, are
  // never in a manifest's env list.)
  for (const v of vars.keys()) {
    if (!v.startsWith(PREFIX)) continue;
    const svc = services.find((s) => v.startsWith(s.prefix) && suffixes.has(v.slice(s.prefix.length)));
    if (svc) continue;
    const owner = services.find((s) => v.startsWith(s.prefix));
    if (owner) {
      problems.push(`${v}: "${v.slice(owner.prefix.length)}" is not a per-service setting of nextup --help ` +
        `(known: ${[...suffixes.keys()].join(', ')})`);
    } else {
      problems.push(`${v}: no service of NEXTUP_SERVICES="${list}" has the prefix of this variable (nextup refuses to start)`);
    }
  }
  return { multi: true, problems, services };
}

// The authorities that select <svc>, as { host, port } (port 0: any).
function hostKeys(svc, namespace, domain) {
  const keys = [];
  for (const entry of svc.hosts) {
    const a = splitAuthority(entry);
    if (!a) continue;
    keys.push(a);
    if (!a.host.includes('.') && !a.host.startsWith('[') && namespace) {
      for (const form of [`${a.host}.${namespace}`, `${a.host}.${namespace}.svc`, `${a.host}.${namespace}.svc.${domain}`]) {
        keys.push({ host: form, port: a.port });
      }
    }
  }
  return keys;
}

// The service an authority selects, or null (nextup: 421). Absolute-form targets never fall back
// to NEXTUP_DEFAULT_SERVICE, so neither does this.
function route(services, authority, namespace, domain) {
  const a = splitAuthority(authority);
  if (!a) return null;
  const port = a.port || 80;
  for (const want of [port, 0]) {
    const svc = services.find((s) => hostKeys(s, namespace, domain).some((k) => k.host === a.host && k.port === want));
    if (svc) return svc;
  }
  return null;
}

function ipv4(s) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m || m.slice(1).some((x) => Number(x) > 255)) return null;
  return m.slice(1).reduce((acc, x) => acc * 256 + Number(x), 0);
}

// Whether a NO_PROXY list exempts <host>:<port> (so that the client connects to it directly):
// "*" everything; "name" or ".name" the name and every name under it; "name:port" that port only;
// an IPv4 CIDR the addresses in it; IPv6 with or without brackets.
function noProxyExempts(list, host, port) {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '');
  for (const raw of splitList(list)) {
    let e = raw.toLowerCase();
    if (e === '*') return true;
    let eport = 0;
    const pm = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(e);
    if (pm) { e = pm[1]; eport = Number(pm[2]); }
    e = e.replace(/^\[|\]$/g, '').replace(/^\*?\./, '').replace(/\.$/, '');
    if (eport && port && eport !== port) continue;
    const cidr = /^([\d.]+)\/(\d+)$/.exec(e);
    if (cidr) {
      const net = ipv4(cidr[1]);
      const ip = ipv4(h);
      const bits = Number(cidr[2]);
      if (net !== null && ip !== null && bits <= 32) {
        const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
        if (((net & mask) >>> 0) === ((ip & mask) >>> 0)) return true;
      }
      continue;
    }
    if (h === e || h.endsWith(`.${e}`)) return true;
  }
  return false;
}

// The http:// URLs written in <text> (a container's command and args): [{ url, authority, host, port }].
function httpUrls(text) {
  const out = [];
  const re = /\bhttp:\/\/([^/\s"'`\\]+)(\/[^\s"'`\\|;&)]*)?/g;
  let m;
  while ((m = re.exec(text))) {
    const a = splitAuthority(m[1]);
    if (!a) continue;
    out.push({ url: `http://${m[1]}${m[2] || '/'}`, authority: m[1], host: a.host, port: a.port || 80 });
  }
  return out;
}

function isLoopback(host) {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

module.exports = {
  NAME_RE, varPrefix, suffixesFromHelp, servicesOf, hostKeys, route, splitAuthority, noProxyExempts, httpUrls, isLoopback, splitList,
};
