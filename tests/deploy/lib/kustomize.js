'use strict';
// A small kustomize, enough for deploy/kubernetes and nothing more: kubectl is not on every
// machine that runs these tests. Supported kustomization fields: resources (files and
// directories), namespace, images, patches (strategic merge patches given by path, each file
// one object). Anything else is an error, so that a field added to a kustomization cannot be
// silently ignored here. Where `kubectl kustomize` exists, the tests compare the two outputs.
//
// Strategic merge follows kustomize (kyaml merge2 with ListIncreaseDirection=prepend):
//   * maps merge key by key; a null value removes the key; `$patch: delete` removes the map,
//     `$patch: replace` replaces it;
//   * lists of maps with a merge key (containers by name, volumeMounts by mountPath, ...) merge
//     element by element; an element `$patch: delete` removes it; the result lists the patch's
//     elements first (in the patch's order), then the other elements in their original order;
//   * every other list (capabilities.add, command, ...) is replaced by the patch's list.
// YAML is read as YAML 1.1, as the API server's decoder does (unquoted on/off/yes/no are
// booleans there, so they must be caught here too).

const fs = require('node:fs');
const path = require('node:path');
const YAML = require('yaml');

const KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'images', 'patches']);
const PATCH_FIELDS = new Set(['path']);

// Merge keys of the lists a patch may touch, by field name. A patch touching a list of maps that
// is not here is an error (the renderer would not know how kustomize merges it).
const MERGE_KEYS = {
  containers: 'name',
  initContainers: 'name',
  ephemeralContainers: 'name',
  env: 'name',
  volumes: 'name',
  imagePullSecrets: 'name',
  volumeMounts: 'mountPath',
  volumeDevices: 'devicePath',
  ports: null, // containerPort in a container, port in a Service: decided by the element
};

// Cluster-scoped kinds that `namespace:` must not touch (the ones this project could use).
const CLUSTER_SCOPED = new Set([
  'Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition', 'PersistentVolume',
  'StorageClass', 'PriorityClass', 'RuntimeClass', 'ValidatingWebhookConfiguration',
  'MutatingWebhookConfiguration', 'Node',
]);

class KustomizeError extends Error {}

function readYamlDocs(file) {
  const text = fs.readFileSync(file, 'utf8');
  const docs = YAML.parseAllDocuments(text, { version: '1.1' });
  const out = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      throw new KustomizeError(`${file}: YAML error: ${doc.errors[0].message}`);
    }
    const value = doc.toJS({ maxAliasCount: -1 });
    if (value === null || value === undefined) continue;
    out.push(value);
  }
  return out;
}

function isMap(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

function mergeKeyFor(field, list, where) {
  if (!(field in MERGE_KEYS)) {
    throw new KustomizeError(`${where}: the patch touches the list "${field}", whose merge key this ` +
      'renderer does not know (add it to MERGE_KEYS in tests/deploy/lib/kustomize.js)');
  }
  const key = MERGE_KEYS[field];
  if (key) return key;
  // ports: containerPort in containers, port in Services.
  const sample = list.find(isMap) || {};
  return 'containerPort' in sample ? 'containerPort' : 'port';
}

// Merges <patch> into <dest> (both maps); returns the result, or undefined when the patch deletes it.
function mergeMap(dest, patch, where) {
  if (patch.$patch === 'delete') return undefined;
  if (patch.$patch === 'replace') {
    const copy = clone(patch);
    delete copy.$patch;
    return copy;
  }
  if (patch.$patch !== undefined) {
    throw new KustomizeError(`${where}: unsupported directive $patch: ${patch.$patch}`);
  }
  const out = isMap(dest) ? clone(dest) : {};
  for (const [k, pv] of Object.entries(patch)) {
    if (k.startsWith('$')) {
      throw new KustomizeError(`${where}.${k}: unsupported patch directive`);
    }
    const at = `${where}.${k}`;
    if (pv === null) {
      delete out[k];
    } else if (isMap(pv)) {
      const merged = mergeMap(out[k], pv, at);
      if (merged === undefined) delete out[k];
      else out[k] = merged;
    } else if (Array.isArray(pv) && pv.some(isMap)) {
      out[k] = mergeList(Array.isArray(out[k]) ? out[k] : [], pv, k, at);
    } else {
      out[k] = clone(pv);
    }
  }
  return out;
}

function mergeList(dest, patch, field, where) {
  const key = mergeKeyFor(field, dest.concat(patch), where);
  const id = (el, i, whose) => {
    if (!isMap(el) || el[key] === undefined) {
      throw new KustomizeError(`${where}[${i}]: ${whose} list element has no merge key "${key}"`);
    }
    return String(el[key]);
  };
  const destById = new Map(dest.map((el, i) => [id(el, i, 'a base'), el]));
  const out = [];
  const done = new Set();
  patch.forEach((pel, i) => {
    const k = id(pel, i, 'a patch');
    done.add(k);
    const merged = mergeMap(destById.get(k), pel, `${where}[${key}=${k}]`);
    if (merged !== undefined) out.push(merged);
  });
  dest.forEach((el, i) => {
    const k = id(el, i, 'a base');
    if (!done.has(k)) out.push(clone(el));
  });
  return out;
}

function identity(obj) {
  const md = obj.metadata || {};
  return `${obj.apiVersion}/${obj.kind}/${md.namespace || ''}/${md.name}`;
}

function podSpecs(obj) {
  const specs = [];
  if (obj.kind === 'Pod' && obj.spec) specs.push(obj.spec);
  const tpl = obj.spec && obj.spec.template && obj.spec.template.spec;
  if (tpl) specs.push(tpl);
  const jobTpl = obj.spec && obj.spec.jobTemplate && obj.spec.jobTemplate.spec &&
    obj.spec.jobTemplate.spec.template && obj.spec.jobTemplate.spec.template.spec;
  if (jobTpl) specs.push(jobTpl);
  return specs;
}

// "registry:5000/a/b:tag" -> name "registry:5000/a/b"
function imageName(image) {
  const at = image.indexOf('@');
  const noDigest = at >= 0 ? image.slice(0, at) : image;
  const slash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > slash ? noDigest.slice(0, colon) : noDigest;
}

function applyImages(objects, images, where) {
  for (const [i, img] of images.entries()) {
    const allowed = new Set(['name', 'newName', 'newTag', 'digest']);
    for (const k of Object.keys(img)) {
      if (!allowed.has(k)) throw new KustomizeError(`${where}: images[${i}].${k} is not supported`);
    }
    if (!img.name) throw new KustomizeError(`${where}: images[${i}] has no name`);
  }
  for (const obj of objects) {
    for (const spec of podSpecs(obj)) {
      for (const c of [...(spec.initContainers || []), ...(spec.containers || [])]) {
        if (typeof c.image !== 'string') continue;
        const img = images.find((im) => im.name === imageName(c.image));
        if (!img) continue;
        let name = img.newName || imageName(c.image);
        const rest = c.image.slice(imageName(c.image).length);
        if (img.digest) name += `@${img.digest}`;
        else if (img.newTag !== undefined) name += `:${img.newTag}`;
        else name += rest;
        c.image = name;
      }
    }
  }
}

// Renders the kustomization in <dir>; returns the list of objects.
function render(dir, stack = []) {
  const abs = path.resolve(dir);
  if (stack.some((d) => abs === d || d.startsWith(abs + path.sep))) {
    throw new KustomizeError(`cycle: ${abs} contains or is ${stack[stack.length - 1]}`);
  }
  const kfile = ['kustomization.yaml', 'kustomization.yml', 'Kustomization']
    .map((n) => path.join(abs, n)).find((f) => fs.existsSync(f));
  if (!kfile) throw new KustomizeError(`${abs}: no kustomization.yaml`);
  const docs = readYamlDocs(kfile);
  if (docs.length !== 1 || !isMap(docs[0])) throw new KustomizeError(`${kfile}: expected one mapping`);
  const k = docs[0];
  for (const field of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(field)) {
      throw new KustomizeError(`${kfile}: field "${field}" is not supported by this renderer ` +
        '(tests/deploy/lib/kustomize.js): add it there or keep the kustomization simpler');
    }
  }
  if (k.kind !== undefined && k.kind !== 'Kustomization') throw new KustomizeError(`${kfile}: kind ${k.kind}`);

  let objects = [];
  for (const res of k.resources || []) {
    const p = path.join(abs, res);
    if (!fs.existsSync(p)) throw new KustomizeError(`${kfile}: resource ${res} does not exist`);
    if (fs.statSync(p).isDirectory()) {
      objects.push(...render(p, [...stack, abs]));
    } else {
      for (const obj of readYamlDocs(p)) {
        if (!isMap(obj) || !obj.apiVersion || !obj.kind || !obj.metadata || !obj.metadata.name) {
          throw new KustomizeError(`${p}: every document needs apiVersion, kind and metadata.name`);
        }
        objects.push(obj);
      }
    }
  }
  const seen = new Set();
  for (const obj of objects) {
    const id = identity(obj);
    if (seen.has(id)) throw new KustomizeError(`${kfile}: ${id} appears twice`);
    seen.add(id);
  }

  for (const [i, p] of (k.patches || []).entries()) {
    for (const f of Object.keys(p)) {
      if (!PATCH_FIELDS.has(f)) {
        throw new KustomizeError(`${kfile}: patches[${i}].${f} is not supported (only path: a strategic merge patch file)`);
      }
    }
    const pfile = path.join(abs, p.path);
    const pdocs = readYamlDocs(pfile);
    if (pdocs.length !== 1) throw new KustomizeError(`${pfile}: one patch object per file`);
    const patch = pdocs[0];
    const pmd = patch.metadata || {};
    const targets = objects.filter((o) => o.kind === patch.kind && o.apiVersion === patch.apiVersion &&
      o.metadata.name === pmd.name && (!pmd.namespace || o.metadata.namespace === pmd.namespace));
    if (targets.length !== 1) {
      throw new KustomizeError(`${pfile}: matches ${targets.length} objects (${patch.apiVersion} ${patch.kind} ${pmd.name})`);
    }
    const idx = objects.indexOf(targets[0]);
    const merged = mergeMap(objects[idx], patch, `${path.relative(process.cwd(), pfile)}`);
    if (merged === undefined) objects.splice(idx, 1);
    else objects[idx] = merged;
  }

  if (k.namespace) {
    for (const obj of objects) {
      if (!CLUSTER_SCOPED.has(obj.kind)) obj.metadata.namespace = k.namespace;
    }
  }
  if (k.images) applyImages(objects, k.images, kfile);
  return objects;
}

module.exports = { render, readYamlDocs, identity, podSpecs, KustomizeError };
