'use strict';
// Works the queue's jobs, CONCURRENCY at a time (default 2): each takes
// WORK_MS milliseconds (default 2000) and reports its progress in four
// steps. Runs until stopped.

const os = require('node:os');
const { Worker } = require('bullmq');
const { connection, queueName, number, sleep, onStop } = require('./lib');

const workMs = number('WORK_MS', 2000);
const worker = new Worker(
  queueName,
  async (job) => {
    for (let step = 1; step <= 4; step++) {
      await sleep(workMs / 4);
      await job.updateProgress(step * 25);
    }
    return { page: job.data.page, renderedBy: worker.name };
  },
  { connection, concurrency: number('CONCURRENCY', 2), name: process.env.WORKER_NAME || os.hostname() },
);
worker.on('completed', (job) => console.log(`worker: job ${job.id} completed`));
worker.on('failed', (job, err) => console.error(`worker: job ${job && job.id} failed: ${err.message}`));
worker.on('error', (err) => console.error('worker error:', err.message));
onStop(() => worker.close());
worker.waitUntilReady().then(() => console.log(`worker ${worker.name}: waiting for jobs on ${queueName}`));
