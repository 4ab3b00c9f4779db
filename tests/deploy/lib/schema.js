'use strict';
// Validation of Kubernetes objects against the OpenAPI schemas, through kubernetes-models:
//   * types, enums, required fields: `new Model(obj).validate()`, the package's own API;
//   * unknown fields: the schemas do not forbid additional properties, but the API server
//     (kubectl's default --validate=strict) rejects them. The package's compiled validator reads
//     every property its schema knows; run on a Proxy of the object, the properties it never
//     read are the unknown ones (a typo such as "restartPolcy", or a field newer than the schema).
// Returns a list of problems: { path, message }, empty when the object is valid.

const path = require('node:path');

const MODELS_DIR = path.dirname(require.resolve('kubernetes-models/package.json'));

function groupParts(apiVersion) {
  const slash = apiVersion.indexOf('/');
  if (slash < 0) return { group: '', version: apiVersion };
  return { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}

function loadModel(apiVersion, kind) {
  const { group, version } = groupParts(apiVersion);
  const mod = group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
  let exported;
  try {
    exported = require(mod);
  } catch (e) {
    return { error: `no schema for ${apiVersion} ${kind} in kubernetes-models (${e.code || e.message})` };
  }
  const Model = exported[kind];
  // The schema module kubernetes-models compiled for this kind, e.g. IoK8sApiAppsV1Deployment.
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const groupName = group ? cap(group.split('.')[0]) : 'Core';
  const schemaFile = path.join(MODELS_DIR, '_schemas', `IoK8sApi${groupName}${cap(version)}${kind}.js`);
  let validateFn;
  try {
    validateFn = require(schemaFile).validate;
  } catch (e) {
    return { error: `no compiled schema ${path.basename(schemaFile)} (${e.code || e.message})` };
  }
  return { Model, validateFn };
}

// Runs <validateFn> on a proxy of <obj>; returns the JSON paths of properties it never read.
function unknownFields(obj, validateFn) {
  const read = new Map(); // object -> Set of keys read
  const proxies = new WeakMap();
  const wrap = (target) => {
    if (target === null || typeof target !== 'object') return target;
    if (proxies.has(target)) return proxies.get(target);
    read.set(target, new Set());
    const p = new Proxy(target, {
      get(t, key, receiver) {
        if (typeof key === 'string') read.get(t).add(key);
        return wrap(Reflect.get(t, key, receiver));
      },
    });
    proxies.set(target, p);
    return p;
  };
  validateFn(wrap(obj));
  const unknown = [];
  const walk = (node, at) => {
    if (node === null || typeof node !== 'object') return;
    const keysRead = read.get(node);
    if (!keysRead) return; // a subtree the validator did not enter: its parent key is reported
    for (const key of Object.keys(node)) {
      const childPath = Array.isArray(node) ? `${at}[${key}]` : `${at}.${key}`;
      if (!Array.isArray(node) && !keysRead.has(key)) unknown.push(childPath);
      else walk(node[key], childPath);
    }
  };
  walk(obj, '');
  // apiVersion and kind are read by the model, not always by the schema.
  return unknown.filter((p) => p !== '.apiVersion' && p !== '.kind');
}

function validateObject(obj) {
  const problems = [];
  const { Model, validateFn, error } = loadModel(obj.apiVersion, obj.kind);
  if (error) return [{ path: '', message: error }];
  try {
    new Model(JSON.parse(JSON.stringify(obj))).validate();
  } catch (e) {
    const errs = (e && e.errors) || [];
    if (!errs.length) problems.push({ path: '', message: String(e && e.message) });
    for (const err of errs) {
      const extra = err.params && err.params.allowedValues ? ` (${err.params.allowedValues.join(', ')})`
        : err.params && err.params.missingProperty ? ` (${err.params.missingProperty})` : '';
      const at = err.instancePath.split('/').slice(1).map((seg) => (/^\d+$/.test(seg) ? `[${seg}]` : `.${seg}`)).join('');
      problems.push({ path: at, message: `${err.message}${extra}` });
    }
  }
  for (const p of unknownFields(JSON.parse(JSON.stringify(obj)), validateFn)) {
    problems.push({ path: p, message: 'unknown field (not in the Kubernetes API schema; kubectl apply would reject it)' });
  }
  return problems;
}

module.exports = { validateObject, unknownFields, loadModel };
