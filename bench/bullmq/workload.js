'use strict';
// A BullMQ app like the one funnel exists for, run against any Redis URL for
// a fixed time: producers add jobs, workers take 2-10 s per job and report
// progress, a QueueEvents listener follows, and N browser tabs poll a job's
// status every 2 s through an API-route-like function (each tab shows the
// --recent latest jobs and asks for each one's status), either with a new
// connection per call (the app as it was) or with one shared connection.
// It prints one JSON line: jobs added and completed, polls, client errors,
// and polls whose state the job did not have within the allowed staleness.
// --mode idle runs the workers and the QueueEvents listener only, with no
// job and no tab. --drain-delay sets the workers' drainDelay in seconds
// (BullMQ's default is 5), and --skip-metas 1 makes the tabs' queues skip
// the meta hash write (skipMetasUpdate): the two BullMQ settings that cut
// what funnel cannot.
//
//   node workload.js --url redis://127.0.0.1:6380 --seconds 60 --tabs 10 \
//     --workers 2 --jobs-per-min 6 --recent 5 --mode newconn --stale-ms 2000

const { Queue, Worker, QueueEvents } = require('bullmq');

function args() {
  const a = { url: 'redis://127.0.0.1:6380', seconds: 60, tabs: 10, workers: 2, jobsPerMin: 6, mode: 'newconn', staleMs: 2000, recent: 5, drainDelay: 5, skipMetas: 0 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
    a[k] = typeof a[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return a;
}

const opts = args();
const url = new URL(opts.url);
const connection = { host: url.hostname, port: Number(url.port || 6379) };
const name = `app-${process.pid}-${Date.now()}`;
const errors = [];
const onError = (what) => (err) => errors.push(`${what}: ${err && err.message}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Each job's state timeline, from QueueEvents and the producer: state ->
// [from, until], in the server's time of each event (its stream entry's id),
// not the time the listener got it, which a loaded machine delays. A poll
// is right if the state it saw held at some moment between (poll start -
// staleness) and poll end. Polls are judged at the end of the run, once
// every event is in: a poll may see a state before its event arrives.
const timeline = new Map();
const eventTime = (id) => Number(String(id).split('-')[0]) || Date.now();
// Marks may come out of order: the producer marks 'waiting' when add()
// returns, which on a loaded machine can be after the listener heard the
// job become active. A mark never ends a state that began after it, and a
// state marked late ends where a later one began.
function mark(id, state, at = Date.now()) {
  const t = timeline.get(id) || {};
  for (const s of Object.keys(t)) if (t[s].until === undefined && s !== state && t[s].from <= at) t[s].until = at;
  if (!t[state]) {
    t[state] = { from: at };
    const later = Object.values(t).filter((x) => x.from > at).map((x) => x.from);
    if (later.length) t[state].until = Math.min(...later);
  }
  timeline.set(id, t);
}
// heard reports whether the listener has had the event of a state yet.
const heard = (id, state) => Boolean((timeline.get(id) || {})[state]);
function plausible(id, state, start, end) {
  const t = timeline.get(id);
  if (!t || !t[state]) return false;
  const slack = 50; // the clock of the event's stream entry against the app's
  const { from, until } = t[state];
  return from - slack <= end && (until === undefined || until + slack >= start - opts.staleMs);
}

// getStatus is what the app's API route does for a browser tab.
async function getStatus(queue, id) {
  const job = await queue.getJob(id);
  if (!job) return { state: 'missing' };
  const state = await job.getState();
  return { state, progress: job.progress, returnvalue: job.returnvalue };
}

async function main() {
  const queue = new Queue(name, { connection });
  queue.on('error', onError('queue'));
  const events = new QueueEvents(name, { connection });
  events.on('error', onError('events'));
  await events.waitUntilReady();
  let completed = 0;
  events.on('waiting', ({ jobId }, id) => mark(jobId, 'waiting', eventTime(id)));
  events.on('active', ({ jobId }, id) => mark(jobId, 'active', eventTime(id)));
  events.on('completed', ({ jobId }, id) => {
    mark(jobId, 'completed', eventTime(id));
    completed++;
  });

  const workers = [];
  for (let w = 0; w < opts.workers; w++) {
    const worker = new Worker(
      name,
      async (job) => {
        const ms = 2000 + Math.floor(Math.random() * 8000);
        for (let step = 1; step <= 3; step++) {
          await sleep(ms / 3);
          await job.updateProgress(step * 33);
        }
        return { took: ms };
      },
      { connection, concurrency: 2, name: `w${w}`, drainDelay: opts.drainDelay },
    );
    worker.on('error', onError(`worker ${w}`));
    workers.push(worker);
  }

  const ids = [];
  const deadline = Date.now() + opts.seconds * 1000;
  const idle = opts.mode === 'idle';
  const produce = (async () => {
    const every = 60000 / opts.jobsPerMin;
    if (idle) return sleep(deadline - Date.now());
    while (Date.now() < deadline) {
      const before = Date.now();
      const job = await queue.add('render', { at: before });
      mark(job.id, 'waiting', before);
      ids.push(job.id);
      await sleep(every);
    }
  })();

  let polls = 0;
  let early = 0;
  const seen = [];
  const shared = opts.mode === 'shared' ? queue : null;
  const tabs = Array.from({ length: idle ? 0 : opts.tabs }, async (_, tab) => {
    await sleep((tab * 2000) / opts.tabs);
    while (Date.now() < deadline) {
      // Each tab shows the recent jobs and asks the API route for each
      // one's status.
      for (const id of ids.slice(-opts.recent)) {
        const start = Date.now();
        let q = shared;
        try {
          if (!q) {
            q = new Queue(name, { connection, skipMetasUpdate: Boolean(opts.skipMetas) });
            q.on('error', onError('poll'));
          }
          const st = await getStatus(q, id);
          polls++;
          const end = Date.now();
          seen.push({ id, state: st.state, start, end });
          // What the first checker judged on: the listener's events so far.
          if (!heard(id, st.state)) early++;
        } catch (err) {
          errors.push(`poll: ${err.message}`);
        } finally {
          if (!shared && q) await q.close();
        }
      }
      await sleep(2000);
    }
  });
  await Promise.all([produce, ...tabs]);
  // Let running jobs finish so the count of completed jobs is fair.
  const drainUntil = Date.now() + 15000;
  while (completed < ids.length && Date.now() < drainUntil) await sleep(200);
  for (const w of workers) await w.close();
  await events.close();
  await queue.close();
  const wrong = seen.filter((p) => !plausible(p.id, p.state, p.start, p.end)).map((p) => `${p.id}:${p.state}`);
  console.log(JSON.stringify({ mode: opts.mode, seconds: opts.seconds, added: ids.length, completed, polls, errors: errors.length, firstErrors: errors.slice(0, 3), wrongStates: wrong.length, firstWrong: wrong.slice(0, 3), seenBeforeEvent: early }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
