'use strict';
// A Dockerfile reader: instructions (continuations joined, comments dropped) grouped by stage.

const fs = require('node:fs');

function parse(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const instructions = [];
  let buf = '';
  let start = 0;
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (/^\s*#/.test(line)) return; // comments, also inside continuations
    if (buf === '') start = i + 1;
    if (/\\\s*$/.test(line)) {
      buf += line.replace(/\\\s*$/, ' ');
      return;
    }
    buf += line;
    const text = buf.trim();
    buf = '';
    if (!text) return;
    const m = /^(\S+)\s*(.*)$/s.exec(text);
    instructions.push({ cmd: m[1].toUpperCase(), args: m[2].replace(/\s+/g, ' ').trim(), line: start });
  });
  // ARGs before the first FROM may be used in FROM lines; their defaults are what a plain build uses.
  const globalArgs = new Map();
  for (const ins of instructions) {
    if (ins.cmd === 'FROM') break;
    if (ins.cmd === 'ARG') {
      const [k, ...v] = ins.args.split('=');
      globalArgs.set(k.trim(), v.join('=').trim().replace(/^"(.*)"$/, '$1'));
    }
  }
  const subst = (s) => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (all, a, b) => (globalArgs.has(a || b) ? globalArgs.get(a || b) : all));
  const stages = [];
  for (const ins of instructions) {
    if (ins.cmd === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      stages.push({ image: subst(m ? m[1] : ins.args), name: m && m[2], instructions: [] });
    } else if (stages.length) {
      stages[stages.length - 1].instructions.push(ins);
    }
  }
  return { instructions, stages, globalArgs };
}

// Package names given to `apt-get install` in a RUN text.
function aptInstalls(runText) {
  const pkgs = [];
  for (const part of runText.split(/&&|;|\|\|/)) {
    const words = part.trim().split(/\s+/);
    const i = words.indexOf('install');
    if (i < 0 || !/apt-get|apt$/.test(words.slice(0, i).join(' '))) continue;
    for (const w of words.slice(i + 1)) {
      if (w.startsWith('-')) continue;
      pkgs.push({ name: w.replace(/[:=].*$/, ''), noRecommends: words.includes('--no-install-recommends') });
    }
  }
  return pkgs;
}

module.exports = { parse, aptInstalls };
