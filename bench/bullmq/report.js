'use strict';
// Reads a MONITOR capture of the upstream and prints, as JSON, where its
// top-level commands went: counts per command (EVALSHA and EVAL named by
// the BullMQ script they run), per role in the app, and how many commands
// scripts ran inside the server (MONITOR's "lua" lines), which the bill
// does not count.
//
//   node report.js monitor.txt

const fs = require('fs');
const crypto = require('crypto');
const scripts = require('bullmq/dist/cjs/scripts');

const scriptBySha = new Map();
for (const s of Object.values(scripts)) {
  scriptBySha.set(crypto.createHash('sha1').update(s.content).digest('hex'), s.name);
}
const scriptByBody = new Map(Object.values(scripts).map((s) => [s.content, s.name]));

// roles maps a command (or BullMQ script) name to the part of the app it
// serves. Anything else is "other".
const roles = {
  'status polls (getJob, getState)': ['hgetall', 'getStateV2', 'getState', 'isJobInList', 'getRanges', 'getCounts'],
  'new Queue() meta write': ['hset meta'],
  'workers: fetch next job (moveToActive)': ['moveToActive'],
  'workers: blocking wait for a job': ['bzpopmin'],
  'workers: job lifecycle (finish, progress, locks, stalled check)': ['moveToFinished', 'updateProgress', 'extendLock', 'extendLocks', 'moveStalledJobsToWait', 'addLog', 'releaseLock', 'get', 'set', 'pexpire'],
  'producer: add job': ['addStandardJob', 'addDelayedJob', 'addPrioritizedJob'],
  'QueueEvents: read events': ['xread', 'xrevrange'],
  'connection setup and checks': ['info', 'hello', 'client', 'select', 'auth', 'ping', 'quit', 'command'],
};
const roleOf = new Map();
for (const [role, names] of Object.entries(roles)) for (const n of names) roleOf.set(n, role);

// words splits one MONITOR line's quoted arguments, undoing its escapes.
function words(line) {
  const out = [];
  const re = /"((?:[^"\\]|\\.)*)"/g;
  let m;
  while ((m = re.exec(line))) {
    out.push(m[1].replace(/\\x([0-9a-f]{2})|\\(.)/g, (_, hex, c) => {
      if (hex) return String.fromCharCode(parseInt(hex, 16));
      return { n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' }[c] ?? c;
    }));
  }
  return out;
}

function nameOf(args) {
  const cmd = (args[0] || '').toLowerCase();
  if (cmd === 'evalsha') return scriptBySha.get(args[1]) || `evalsha ${args[1].slice(0, 8)}`;
  if (cmd === 'eval') return scriptByBody.get(args[1]) || 'eval';
  if (cmd === 'hset' && /:meta$/.test(args[1] || '')) return 'hset meta';
  return cmd;
}

const perCommand = {};
const perRole = {};
let top = 0;
let lua = 0;
for (const line of fs.readFileSync(process.argv[2], 'utf8').split('\n')) {
  const at = line.match(/^\d+\.\d+ \[\d+ ([^\]]+)\] /);
  if (!at) continue;
  if (at[1] === 'lua') {
    lua++;
    continue;
  }
  const name = nameOf(words(line.slice(at[0].length)));
  top++;
  perCommand[name] = (perCommand[name] || 0) + 1;
  const role = roleOf.get(name) || 'other';
  perRole[role] = (perRole[role] || 0) + 1;
}
console.log(JSON.stringify({ top, lua, perCommand, perRole }));
