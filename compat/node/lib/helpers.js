'use strict';
// Shared setup for the suites: where funnel and the direct redis-server are,
// and a collector that turns any client 'error' event into a test failure.

const funnel = new URL(process.env.FUNNEL_URL || 'redis://127.0.0.1:6380');
const direct = new URL(process.env.REDIS_DIRECT_URL || 'redis://127.0.0.1:6379');

const connection = { host: funnel.hostname, port: Number(funnel.port) };

// allErrors holds every error event of every suite, so an after() hook can
// fail the run on errors that come after a test's own checks (on close).
const allErrors = [];

// errors collects every 'error' event so a test can assert there were none.
function errorCollector() {
  const errors = [];
  return {
    errors,
    watch(emitter, label) {
      emitter.on('error', (err) => {
        console.error(`error event from ${label}:`, err);
        errors.push(`${label}: ${err && err.message}`);
        allErrors.push(`${label}: ${err && err.message}`);
      });
      return emitter;
    },
  };
}

async function waitFor(what, predicate, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { funnel, direct, connection, errorCollector, allErrors, waitFor, sleep };
