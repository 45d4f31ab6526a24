'use strict';
// node-redis (the `redis` package) through funnel: pipelines, transactions,
// pub/sub and blocking commands. node-redis 5+ speaks RESP3 unless told
// RESP: 2, and does not fall back when HELLO 3 is refused; funnel speaks
// RESP2 only for now (see the README), so this suite asks for RESP2.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { createClient } = require('redis');
const { funnel, errorCollector, allErrors, sleep } = require('../lib/helpers');

const ec = errorCollector();
const clients = [];
async function client() {
  const c = ec.watch(createClient({ url: funnel.href, RESP: 2 }), 'node-redis');
  clients.push(c);
  await c.connect();
  return c;
}
after(async () => {
  for (const c of clients) if (c.isOpen) await c.close();
  assert.deepEqual(allErrors, []);
});

test('commands, pipelines and transactions', async () => {
  const c = await client();
  assert.equal(await c.set('nr:k', 'v'), 'OK');
  assert.equal(await c.get('nr:k'), 'v');
  const piped = await c.multi().set('nr:a', '1').get('nr:a').incr('nr:a').execAsPipeline();
  assert.deepEqual(piped, ['OK', '1', 2]);
  const tx = await c.multi().incr('nr:x').incr('nr:x').get('nr:x').exec();
  assert.deepEqual(tx, [1, 2, '2']);
  await assert.rejects(c.sendCommand(['NOSUCHCOMMAND']), /unknown command/);
});

test('pub/sub with a duplicated connection', async () => {
  const c = await client();
  const sub = c.duplicate();
  clients.push(ec.watch(sub, 'node-redis subscriber'));
  await sub.connect();
  const got = [];
  await sub.subscribe('nr:ch', (msg) => got.push(msg));
  for (let i = 0; i < 10; i++) await c.publish('nr:ch', `m${i}`);
  for (let i = 0; i < 100 && got.length < 10; i++) await sleep(20);
  assert.deepEqual(got, Array.from({ length: 10 }, (_, i) => `m${i}`));
  await sub.unsubscribe('nr:ch');
});

test('blocking pop woken by a push', async () => {
  const c = await client();
  const blocker = c.duplicate();
  clients.push(ec.watch(blocker, 'node-redis blocker'));
  await blocker.connect();
  const pending = blocker.blPop('nr:q', 5);
  await sleep(100);
  await c.rPush('nr:q', 'job');
  assert.deepEqual(await pending, { key: 'nr:q', element: 'job' });
  assert.equal(await blocker.blPop('nr:q', 0.2), null);
});
