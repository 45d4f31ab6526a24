'use strict';
// BullMQ through funnel with default options: queues, workers, events,
// flows, retries, delays, pause, rate limits and worker discovery.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Queue, Worker, QueueEvents, FlowProducer } = require('bullmq');
const { connection, errorCollector, allErrors, waitFor, sleep } = require('../lib/helpers');

const closers = [];
after(async () => {
  for (const c of closers.reverse()) await c.close();
  assert.deepEqual(allErrors, [], 'error events while closing');
});
function track(x) {
  closers.push(x);
  return x;
}

test('200 jobs, 3 workers, progress, events, states and worker names', async () => {
  const ec = errorCollector();
  const name = `jobs-${Date.now()}`;
  const queue = track(ec.watch(new Queue(name, { connection }), 'queue'));
  const events = track(ec.watch(new QueueEvents(name, { connection }), 'events'));
  await events.waitUntilReady();
  const completed = new Map();
  const progress = new Map();
  events.on('completed', ({ jobId, returnvalue }) => completed.set(jobId, returnvalue));
  events.on('progress', ({ jobId, data }) => progress.set(jobId, data));

  const jobs = await queue.addBulk(Array.from({ length: 200 }, (_, i) => ({ name: 'task', data: { i } })));
  assert.equal(jobs.length, 200);
  assert.equal(await jobs[0].getState(), 'waiting');
  assert.equal((await queue.getJob(jobs[7].id)).data.i, 7);

  const seenActive = new Set();
  const workers = [1, 2, 3].map((n) =>
    track(
      ec.watch(
        new Worker(
          name,
          async (job) => {
            seenActive.add(await job.getState());
            await job.updateProgress(50);
            await job.log(`log line for ${job.data.i}`);
            await job.updateProgress(100);
            return job.data.i * 2;
          },
          { connection, concurrency: 5, name: `w${n}` },
        ),
        `worker ${n}`,
      ),
    ),
  );
  await Promise.all(workers.map((w) => w.waitUntilReady()));

  await waitFor('200 completed events', () => completed.size === 200, 90000);
  assert.deepEqual([...seenActive], ['active']);
  for (const job of jobs) {
    const fresh = await queue.getJob(job.id);
    assert.equal(await fresh.getState(), 'completed');
    assert.equal(fresh.returnvalue, job.data.i * 2);
    assert.equal(fresh.progress, 100);
    assert.equal(Number(completed.get(job.id)), job.data.i * 2);
  }
  assert.ok(progress.size > 0, 'no progress events');
  const counts = await queue.getJobCounts('completed', 'waiting', 'active', 'failed');
  assert.deepEqual(counts, { completed: 200, waiting: 0, active: 0, failed: 0 });

  const logs = await queue.getJobLogs(jobs[3].id);
  assert.deepEqual(logs.logs, ['log line for 3']);

  const found = await queue.getWorkers();
  const names = found.map((w) => w.rawname).sort();
  assert.equal(found.length, 3, `workers: ${JSON.stringify(names)}`);
  assert.ok(names.every((n, i) => n.endsWith(`:w:w${i + 1}`)), JSON.stringify(names));

  assert.deepEqual(ec.errors, []);
});

test('delayed jobs, retries with backoff, pause and resume', async () => {
  const ec = errorCollector();
  const name = `more-${Date.now()}`;
  const queue = track(ec.watch(new Queue(name, { connection }), 'queue'));
  const tries = new Map();
  const worker = track(
    ec.watch(
      new Worker(
        name,
        async (job) => {
          const n = (tries.get(job.id) || 0) + 1;
          tries.set(job.id, n);
          if (job.name === 'flaky' && n < 3) throw new Error(`attempt ${n} fails`);
          return `${job.name} done`;
        },
        { connection, concurrency: 2 },
      ),
      'worker',
    ),
  );
  await worker.waitUntilReady();

  const addedAt = Date.now();
  const delayed = await queue.add('delayed', {}, { delay: 700 });
  assert.equal(await delayed.getState(), 'delayed');
  const flaky = await queue.add('flaky', {}, { attempts: 3, backoff: { type: 'fixed', delay: 200 } });

  await waitFor('delayed job', async () => (await delayed.getState()) === 'completed', 20000);
  assert.ok(Date.now() - addedAt >= 700, 'delayed job ran early');
  await waitFor('flaky job', async () => (await flaky.getState()) === 'completed', 20000);
  const flakyDone = await queue.getJob(flaky.id);
  assert.equal(flakyDone.attemptsMade, 3);
  assert.equal(flakyDone.returnvalue, 'flaky done');
  assert.equal(tries.get(flaky.id), 3);

  await queue.pause();
  assert.equal(await queue.isPaused(), true);
  const held = await queue.add('held', {});
  await sleep(500);
  assert.ok(['waiting', 'paused'].includes(await held.getState()), await held.getState());
  await queue.resume();
  await waitFor('resumed job', async () => (await held.getState()) === 'completed', 20000);

  assert.deepEqual(ec.errors, []);
});

test('rate limiter spaces jobs out', async () => {
  const ec = errorCollector();
  const name = `limited-${Date.now()}`;
  const queue = track(ec.watch(new Queue(name, { connection }), 'queue'));
  const done = [];
  const worker = track(
    ec.watch(
      new Worker(name, async () => done.push(Date.now()), {
        connection,
        concurrency: 4,
        limiter: { max: 2, duration: 600 },
      }),
      'worker',
    ),
  );
  await worker.waitUntilReady();
  await queue.addBulk(Array.from({ length: 6 }, (_, i) => ({ name: 'r', data: { i } })));
  await waitFor('6 limited jobs', () => done.length === 6, 30000);
  done.sort((a, b) => a - b);
  assert.ok(done[5] - done[0] >= 1000, `6 jobs at 2 per 600 ms took only ${done[5] - done[0]} ms`);
  assert.deepEqual(ec.errors, []);
});

test('a flow: parent completes after its children, with their values', async () => {
  const ec = errorCollector();
  const name = `flow-${Date.now()}`;
  const flows = track(ec.watch(new FlowProducer({ connection }), 'flow producer'));
  const queue = track(ec.watch(new Queue(name, { connection }), 'queue'));
  const worker = track(
    ec.watch(
      new Worker(
        name,
        async (job) => {
          if (job.name === 'parent') return job.getChildrenValues();
          return job.data.v * 10;
        },
        { connection, concurrency: 3 },
      ),
      'worker',
    ),
  );
  await worker.waitUntilReady();
  const tree = await flows.add({
    name: 'parent',
    queueName: name,
    children: [
      { name: 'child', queueName: name, data: { v: 1 } },
      { name: 'child', queueName: name, data: { v: 2 } },
    ],
  });
  await waitFor('parent job', async () => (await tree.job.getState()) === 'completed', 30000);
  const parent = await queue.getJob(tree.job.id);
  assert.deepEqual(Object.values(parent.returnvalue).sort(), [10, 20]);
  assert.deepEqual(ec.errors, []);
});
