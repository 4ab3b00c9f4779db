'use strict';
// Prints, as JSON, how the rendered manifests run the nextup container of one variant: its
// environment (downward API resolved for a stand-in pod name), uid/gid, capabilities, mounts,
// probes and preStop. Used by tests/deploy/image-check.sh to run the real image the same way.
//   node container-settings.js <kustomization dir> <pod name>

const K = require('./kustomize');
const P = require('./podspec');

const [dir, podName] = process.argv.slice(2);
const objects = K.render(dir);
const found = P.findContainer(objects, 'nextup');
if (!found) throw new Error(`${dir}: no nextup container`);
const { container: c, spec, obj } = found;
const env = P.resolveEnv(c, {
  fields: {
    'metadata.name': podName,
    'metadata.namespace': obj.metadata.namespace || 'default',
  },
});
if (env.problems.length) throw new Error(env.problems.join('; '));
const s = P.effectiveSecurity(spec, c);
const volumes = Object.fromEntries((spec.volumes || []).map((v) => [v.name, v]));
const mounts = (c.volumeMounts || []).map((m) => {
  const v = volumes[m.name];
  if (!v || !v.hostPath) throw new Error(`mount ${m.mountPath}: only hostPath volumes are supported here`);
  return { host: v.hostPath.path, container: m.mountPath, readOnly: !!m.readOnly };
});
const probes = [];
for (const [name, key] of [['startup', 'startupProbe'], ['readiness', 'readinessProbe'], ['liveness', 'livenessProbe']]) {
  const pr = c[key];
  if (pr && pr.httpGet) probes.push({ name, path: pr.httpGet.path, port: P.resolvePort(pr.httpGet.port, c) });
}
const ps = c.lifecycle && c.lifecycle.preStop && c.lifecycle.preStop.exec;
process.stdout.write(JSON.stringify({
  env: Object.fromEntries(env.vars),
  user: s.runAsUser,
  group: s.runAsGroup,
  capAdd: s.capabilities.add || [],
  capDrop: s.capabilities.drop || [],
  readOnlyRoot: s.readOnlyRootFilesystem === true,
  noNewPrivs: s.allowPrivilegeEscalation === false,
  privileged: s.privileged === true,
  mounts,
  probes,
  preStop: ps ? ps.command : null,
  grace: spec.terminationGracePeriodSeconds ?? 30,
}));
