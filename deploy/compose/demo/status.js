'use strict';
// Polls like a status page: every POLL_MS milliseconds (default 2000) it
// reads the queue's job counts and the state and progress of its newest
// jobs, and prints them. With NEW_CONNECTION=1 each poll opens a
// connection of its own, as a web app that connects per request does. With
// EXIT_AFTER_COMPLETED=n it exits 0 once n jobs have completed (for tests).

const { Queue } = require('bullmq');
const { connection, queueName, number, sleep, onStop } = require('./lib');

async function poll(queue) {
  const counts = await queue.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed');
  const newest = await queue.getJobs(['active', 'waiting', 'completed'], 0, 4, false);
  const states = await Promise.all(
    newest.map(async (job) => `${job.id}:${await job.getState()}:${typeof job.progress === 'number' ? job.progress : 0}%`),
  );
  console.log(`status: ${JSON.stringify(counts)} newest ${states.join(' ')}`);
  return counts;
}

async function main() {
  const every = number('POLL_MS', 2000);
  const exitAfter = number('EXIT_AFTER_COMPLETED', 0);
  const fresh = process.env.NEW_CONNECTION === '1';
  let shared = fresh ? null : new Queue(queueName, { connection });
  onStop(async () => shared && (await shared.close()));
  for (;;) {
    const queue = shared || new Queue(queueName, { connection });
    try {
      const counts = await poll(queue);
      if (exitAfter > 0 && counts.completed >= exitAfter) break;
    } finally {
      if (!shared) await queue.close();
    }
    await sleep(every);
  }
  if (shared) await shared.close();
}

main().catch((err) => {
  console.error('status:', err);
  process.exit(1);
});
