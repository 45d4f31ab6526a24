'use strict';
// node-redis (the `redis` package) through funnel: pipelines, transactions,
// pub/sub and blocking commands, with its default protocol (RESP3: it sends
// HELLO 3 and does not fall back to RESP2) and with RESP: 2.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { createClient } = require('redis');
const { funnel, errorCollector, allErrors, sleep } = require('../lib/helpers');

const ec = errorCollector();
const clients = [];
async function client(RESP) {
  const c = ec.watch(createClient({ url: funnel.href, RESP }), `node-redis RESP${RESP || ' default'}`);
  clients.push(c);
  await c.connect();
  return c;
}
after(async () => {
  for (const c of clients) if (c.isOpen) await c.close();
  assert.deepEqual(allErrors, []);
});

for (const [label, RESP] of [['RESP3 (default)', undefined], ['RESP2', 2]]) {
  const k = (name) => `nr${RESP || 3}:${name}`;

  test(`${label}: commands, pipelines and transactions`, async () => {
    const c = await client(RESP);
    const hello = await c.sendCommand(['HELLO']);
    assert.equal(RESP === 2 ? hello[5] : hello.proto, RESP || 3);
    assert.equal(await c.set(k('k'), 'v'), 'OK');
    assert.equal(await c.get(k('k')), 'v');
    assert.equal(await c.get(k('missing')), null);
    await c.hSet(k('h'), { f1: 'a', f2: 'b' });
    assert.deepEqual({ ...(await c.hGetAll(k('h'))) }, { f1: 'a', f2: 'b' });
    await c.zAdd(k('z'), [{ score: 1.5, value: 'm' }]);
    assert.equal(await c.zScore(k('z'), 'm'), 1.5);
    const piped = await c.multi().set(k('a'), '1').get(k('a')).incr(k('a')).execAsPipeline();
    assert.deepEqual(piped, ['OK', '1', 2]);
    const tx = await c.multi().incr(k('x')).incr(k('x')).get(k('x')).exec();
    assert.deepEqual(tx, [1, 2, '2']);
    await assert.rejects(c.sendCommand(['NOSUCHCOMMAND']), /unknown command/);
  });

  test(`${label}: pub/sub with a duplicated connection`, async () => {
    const c = await client(RESP);
    const sub = c.duplicate();
    clients.push(ec.watch(sub, 'node-redis subscriber'));
    await sub.connect();
    const got = [];
    await sub.subscribe(k('ch'), (msg) => got.push(msg));
    await sub.pSubscribe(k('p*'), (msg, ch) => got.push(`${ch}:${msg}`));
    for (let i = 0; i < 10; i++) await c.publish(k('ch'), `m${i}`);
    await c.publish(k('px'), 'pm');
    for (let i = 0; i < 100 && got.length < 11; i++) await sleep(20);
    assert.deepEqual(got, [...Array.from({ length: 10 }, (_, i) => `m${i}`), `${k('px')}:pm`]);
    await sub.unsubscribe(k('ch'));
    await sub.pUnsubscribe(k('p*'));
  });

  test(`${label}: blocking pop woken by a push`, async () => {
    const c = await client(RESP);
    const blocker = c.duplicate();
    clients.push(ec.watch(blocker, 'node-redis blocker'));
    await blocker.connect();
    const pending = blocker.blPop(k('q'), 5);
    await sleep(100);
    await c.rPush(k('q'), 'job');
    assert.deepEqual(await pending, { key: k('q'), element: 'job' });
    assert.equal(await blocker.blPop(k('q'), 0.2), null);
  });
}
