'use strict';
// Adds a job every PRODUCE_EVERY_MS milliseconds (default 10000: 6 a
// minute), JOBS of them (default 0: forever), then exits.

const { Queue } = require('bullmq');
const { connection, queueName, number, sleep, onStop } = require('./lib');

async function main() {
  const every = number('PRODUCE_EVERY_MS', 10000);
  const jobs = number('JOBS', 0);
  const queue = new Queue(queueName, { connection });
  queue.on('error', (err) => console.error('queue error:', err.message));
  onStop(() => queue.close());
  for (let i = 1; jobs === 0 || i <= jobs; i++) {
    const job = await queue.add('render', { page: i }, { removeOnComplete: 1000, removeOnFail: 1000 });
    console.log(`producer: added job ${job.id} (page ${i})`);
    if (jobs === 0 || i < jobs) await sleep(every);
  }
  await queue.close();
}

main().catch((err) => {
  console.error('producer:', err);
  process.exit(1);
});
