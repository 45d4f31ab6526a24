'use strict';
// ioredis through funnel with default options (ioredis 6 negotiates RESP3
// with HELLO 3): pipelines, transactions, WATCH, pub/sub and blocking
// commands.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const Redis = require('ioredis');
const { funnel, errorCollector, allErrors, sleep } = require('../lib/helpers');

const ec = errorCollector();
const clients = [];
function client() {
  const c = ec.watch(new Redis(funnel.href), 'ioredis');
  clients.push(c);
  return c;
}
after(async () => {
  for (const c of clients) await c.quit().catch(() => c.disconnect());
  assert.deepEqual(allErrors, []);
});

test('pipeline of 1000 commands keeps order', async () => {
  const r = client();
  assert.match(await r.client('INFO'), / resp=3 /);
  const p = r.pipeline();
  for (let i = 0; i < 500; i++) {
    p.set(`io:k${i}`, i);
    p.get(`io:k${i}`);
  }
  const res = await p.exec();
  assert.equal(res.length, 1000);
  for (let i = 0; i < 500; i++) {
    assert.deepEqual(res[2 * i], [null, 'OK']);
    assert.deepEqual(res[2 * i + 1], [null, String(i)]);
  }
});

test('transactions, EXECABORT and WATCH conflicts', async () => {
  const r = client();
  const other = client();
  assert.deepEqual(await r.multi().set('io:t', 1).incr('io:t').get('io:t').exec(), [
    [null, 'OK'],
    [null, 2],
    [null, '2'],
  ]);
  await assert.rejects(r.multi().set('io:t', 5).call('NOSUCHCOMMAND').exec(), /EXECABORT/);
  assert.equal(await r.get('io:t'), '2');

  await r.watch('io:t');
  await other.set('io:t', 'changed');
  assert.equal(await r.multi().set('io:t', 'mine').exec(), null);
  assert.equal(await r.get('io:t'), 'changed');
});

test('pub/sub: channels and patterns, in order', async () => {
  const sub = client();
  const pub = client();
  const got = [];
  sub.on('message', (ch, msg) => got.push(`${ch}:${msg}`));
  sub.on('pmessage', (pat, ch, msg) => got.push(`${pat}|${ch}:${msg}`));
  assert.equal(await sub.subscribe('io:news'), 1);
  assert.equal(await sub.psubscribe('io:n*'), 2);
  for (let i = 0; i < 20; i++) assert.equal(await pub.publish('io:news', String(i)), 2);
  for (let i = 0; i < 100 && got.length < 40; i++) await sleep(20);
  const plain = got.filter((m) => !m.includes('|'));
  const pattern = got.filter((m) => m.includes('|'));
  assert.deepEqual(plain, Array.from({ length: 20 }, (_, i) => `io:news:${i}`));
  assert.deepEqual(pattern, Array.from({ length: 20 }, (_, i) => `io:n*|io:news:${i}`));
  await sub.unsubscribe('io:news');
  await sub.punsubscribe();
  assert.equal(await sub.ping(), 'PONG');
});

test('blocking commands: woken by a push, and timeouts', async () => {
  const blocker = client();
  const pusher = client();
  const pending = blocker.blpop('io:q', 5);
  await sleep(100);
  await pusher.rpush('io:q', 'job');
  assert.deepEqual(await pending, ['io:q', 'job']);
  const t0 = Date.now();
  assert.equal(await blocker.brpop('io:empty', 0.3), null);
  assert.ok(Date.now() - t0 >= 300);
  assert.equal(await blocker.bzpopmin('io:z', 0.001), null);
});
