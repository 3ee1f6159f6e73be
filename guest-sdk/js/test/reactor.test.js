// Unit tests for the SDK's reactor time under plain Node, on the fake
// reactor's deterministic clock (see fake-reactor.mjs), with the shared
// vectors in guest-sdk/test-vectors/time.json (the Rust and Python SDKs run
// the same ones).
//
//   node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as fake from 'twill:protocol/reactor@0.1.0';
import {
  AlreadyCalled,
  AlreadyCancelled,
  Factory,
  LoopingCall,
  Protocol,
  TimeoutMixin,
  Transport,
  callLater,
  seconds,
  serve,
} from '../twill.js';

const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/time.json', import.meta.url)));

function fresh(server = null) {
  const exports = serve({ server });
  fake.reset(exports.reactorCalls);
  return exports;
}
const advanceMs = (ms) => fake.advance(ms / 1000);

test('LoopingCall vectors', () => {
  for (const c of vectors.looping) {
    fresh();
    const ticks = [];
    const loop = new LoopingCall(() => ticks.push(seconds()));
    loop.start(c.interval_ms / 1000, c.now);
    for (const [ms, want] of c.steps) {
      advanceMs(ms);
      assert.equal(ticks.length, want, c.name);
    }
    loop.stop();
    advanceMs(10_000);
    assert.equal(ticks.length, c.steps.at(-1)[1]);
  }
});

test('TimeoutMixin vectors', () => {
  for (const c of vectors.timeout) {
    fresh();
    class P extends TimeoutMixin(Protocol) {}
    const p = new P();
    let lost = false;
    p.makeConnection(new Transport({ loseConnection: () => (lost = true) }));
    p.setTimeout(c.period_ms / 1000);
    for (const [kind, ms] of c.steps) {
      if (kind === 'advance') advanceMs(ms);
      else if (kind === 'touch') p.resetTimeout();
      else if (kind === 'open') assert.equal(lost, false, c.name);
      else if (kind === 'closed') assert.equal(lost, true, c.name);
    }
  }
});

test('callLater vectors', () => {
  for (const c of vectors.call_later) {
    fresh();
    const fired = [];
    const call = callLater(c.delay_ms / 1000, (x) => fired.push(x), 'x');
    for (const [kind, ms] of c.steps) {
      if (kind === 'advance') advanceMs(ms);
      else if (kind === 'reset') call.reset(ms / 1000);
      else if (kind === 'delay') call.delay(ms / 1000);
      else if (kind === 'cancel') call.cancel();
      else if (kind === 'pending') assert.deepEqual(fired, [], c.name);
      else if (kind === 'fired') {
        assert.deepEqual(fired, ['x'], c.name);
        assert.equal(call.active(), false);
      }
    }
  }
});

test('inactive calls throw AlreadyCalled / AlreadyCancelled, as in Twisted', () => {
  fresh();
  const a = callLater(0.01, () => {});
  advanceMs(10);
  assert.throws(() => a.cancel(), AlreadyCalled);
  const b = callLater(0.01, () => {});
  b.cancel();
  assert.throws(() => b.reset(1), AlreadyCancelled);
  assert.throws(() => callLater(-1, () => {}), RangeError);
});

test('a call drops its handle once it ran or was cancelled', () => {
  fresh();
  const fired = callLater(0.5, () => {});
  const cancelled = callLater(2, () => {});
  const [rawFired, rawCancelled] = [fired._raw, cancelled._raw];
  cancelled.cancel();
  assert.ok(rawCancelled.dropped);
  assert.ok(!rawFired.dropped);
  advanceMs(500);
  assert.ok(fired.called && rawFired.dropped);
  // The time each was due is kept (the fake throws if a dropped handle is asked).
  assert.equal(fired.getTime(), 0.5);
  assert.equal(cancelled.getTime(), 2);
});

test('startFactory / stopFactory reach the factory', () => {
  const heard = [];
  class F extends Factory {
    startFactory() {
      heard.push('start');
    }
    stopFactory() {
      heard.push('stop');
    }
  }
  const { reactorCalls } = fresh(F.forProtocol(Protocol));
  reactorCalls.startFactory();
  reactorCalls.stopFactory();
  assert.deepEqual(heard, ['start', 'stop']);
});
