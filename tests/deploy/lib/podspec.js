'use strict';
// Reading the rendered objects as the kubelet would: containers, their environment after the
// downward API and $(VAR) expansion, probes, preStop hooks, quantities.

const { podSpecs } = require('./kustomize');

function workloads(objects) {
  const out = [];
  for (const obj of objects) {
    for (const spec of podSpecs(obj)) out.push({ obj, spec });
  }
  return out;
}

function allContainers(spec) {
  return [
    ...(spec.initContainers || []).map((c) => ({ c, init: true })),
    ...(spec.containers || []).map((c) => ({ c, init: false })),
  ];
}

// The workload whose pod has a container named <name>.
function findContainer(objects, name) {
  for (const w of workloads(objects)) {
    for (const { c, init } of allContainers(w.spec)) {
      if (c.name === name) return { ...w, container: c, init };
    }
  }
  return null;
}

function parseQuantity(q) {
  const m = /^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(q));
  if (!m) throw new Error(`cannot read the quantity "${q}"`);
  const mult = { m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
  return Number(m[1]) * (m[2] ? mult[m[2]] : 1);
}

// Kubernetes' $(VAR) expansion: names defined earlier in the list are replaced, $$ is a literal
// $, anything else is left as written.
function expand(s, vars) {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '$' && s[i + 1] === '$') { out += '$'; i++; continue; }
    if (s[i] === '$' && s[i + 1] === '(') {
      const close = s.indexOf(')', i + 2);
      if (close > 0) {
        const name = s.slice(i + 2, close);
        out += vars.has(name) ? vars.get(name) : s.slice(i, close + 1);
        i = close;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// The container's environment as the process would see it. <pod> gives the downward API values
// (name, namespace, ...). Returns { vars: Map, list: [{name, value, raw}], problems: [] }.
function resolveEnv(container, pod) {
  const vars = new Map();
  const list = [];
  const problems = [];
  if (container.envFrom && container.envFrom.length) {
    problems.push('envFrom is used: its names and values cannot be checked here');
  }
  for (const e of container.env || []) {
    let value;
    if (e.value !== undefined && e.valueFrom !== undefined) problems.push(`${e.name}: both value and valueFrom`);
    if (e.valueFrom) {
      const vf = e.valueFrom;
      if (vf.fieldRef) {
        const fp = vf.fieldRef.fieldPath;
        if (!(fp in pod.fields)) problems.push(`${e.name}: fieldRef ${fp} is not simulated here`);
        value = pod.fields[fp];
      } else if (vf.resourceFieldRef) {
        const r = vf.resourceFieldRef;
        const [kind, res] = r.resource.split('.');
        const q = container.resources && container.resources[kind] && container.resources[kind][res];
        if (q === undefined) {
          problems.push(`${e.name}: resourceFieldRef ${r.resource} but the container sets no ${r.resource} ` +
            '(the kubelet would then use the node\'s allocatable amount)');
          value = '';
        } else {
          value = String(Math.ceil(parseQuantity(q) / parseQuantity(r.divisor || '1') - 1e-9));
        }
      } else {
        problems.push(`${e.name}: valueFrom ${Object.keys(vf).join(',')} cannot be resolved offline`);
        value = '';
      }
    } else {
      value = expand(e.value === undefined ? '' : e.value, vars);
    }
    if (vars.has(e.name)) problems.push(`${e.name} is set twice`);
    vars.set(e.name, value);
    list.push({ name: e.name, value, raw: e.value });
  }
  return { vars, list, problems };
}

// "host:port" / "[v6]:port" -> { host, port }
function splitHostPort(s) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) || /^([^:]+):(\d+)$/.exec(s);
  if (!m) return null;
  return { host: m[1], port: Number(m[2]) };
}

// A probe's or a Service's port (number or name) -> number, from the container's ports.
function resolvePort(port, container) {
  if (typeof port === 'number') return port;
  const p = (container.ports || []).find((cp) => cp.name === port);
  return p ? p.containerPort : null;
}

// Milliseconds a preStop hook waits: exec sleep N, sh -c "sleep N", or the sleep action.
function preStopSleepMs(container) {
  const ps = container.lifecycle && container.lifecycle.preStop;
  if (!ps) return 0;
  if (ps.sleep) return Number(ps.sleep.seconds) * 1000;
  const cmd = ps.exec && ps.exec.command;
  if (!cmd) return 0;
  const line = cmd.join(' ');
  const m = /(?:^|[\s;&|/])sleep\s+([0-9.]+)/.exec(line);
  return m ? Number(m[1]) * 1000 : 0;
}

function effectiveSecurity(spec, container) {
  const pod = spec.securityContext || {};
  const c = container.securityContext || {};
  const pick = (k) => (c[k] !== undefined ? c[k] : pod[k]);
  return {
    runAsUser: pick('runAsUser'),
    runAsGroup: pick('runAsGroup'),
    runAsNonRoot: pick('runAsNonRoot'),
    seccompProfile: pick('seccompProfile'),
    appArmorProfile: pick('appArmorProfile'),
    privileged: c.privileged,
    allowPrivilegeEscalation: c.allowPrivilegeEscalation,
    readOnlyRootFilesystem: c.readOnlyRootFilesystem,
    capabilities: c.capabilities || {},
  };
}

module.exports = {
  workloads, allContainers, findContainer, resolveEnv, expand, parseQuantity, splitHostPort, resolvePort,
  preStopSleepMs, effectiveSecurity,
};
