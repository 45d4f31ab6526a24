'use strict';
// What the demo's three programs share: where Redis is (funnel, from
// REDIS_URL), the queue's name, and their settings, from the environment.

const url = new URL(process.env.REDIS_URL || 'redis://127.0.0.1:6380');

// BullMQ makes its own ioredis connections from these options.
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  ...(url.username && { username: decodeURIComponent(url.username) }),
  ...(url.password && { password: decodeURIComponent(url.password) }),
  ...(url.pathname.length > 1 && { db: Number(url.pathname.slice(1)) }),
};

const queueName = process.env.QUEUE || 'demo';

// number reads a whole-number setting, with a default.
function number(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number, not ${JSON.stringify(v)}`);
  return n;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// onStop runs close once on SIGTERM or SIGINT (docker stop, Ctrl-C), then exits.
function onStop(close) {
  let stopping = false;
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, async () => {
      if (stopping) return;
      stopping = true;
      await close();
      process.exit(0);
    });
  }
}

module.exports = { connection, queueName, number, sleep, onStop };
