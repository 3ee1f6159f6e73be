// Unit tests for outgoing connections and relaying under plain Node:
// `connectTCP` against the fake reactor (see fake-reactor.mjs), the host's
// outcomes delivered through the `outboundFactory` export as the host does
// (cases from the shared vectors in guest-sdk/test-vectors/connect.json,
// which the Rust and Python SDKs run too), the transport's producer,
// half-close and splice methods, and the `halfClose` export.
//
//   node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as fake from 'twill:protocol/reactor@0.1.0';
import {
  ClientFactory,
  ConnectError,
  Factory,
  Protocol,
  SpliceError,
  Transport,
  connectTCP,
  serve,
} from '../twill.js';

const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/connect.json', import.meta.url)));

// A fresh copy of the SDK per case (its own token counter and factories):
// a distinct URL is a distinct module instance; the reactor import still
// resolves to the one fake.
let instances = 0;
const freshSdk = () => import(`../twill.js?case=${++instances}`);

/** ComponentizeJS's reason variant. */
function witReason(text) {
  if (text === 'done') return { tag: 'done' };
  const i = text.indexOf(':');
  return { tag: text.slice(0, i), val: text.slice(i + 1) };
}

const reasonText = (r) => (r.kind === 'done' ? 'done' : `${r.kind}:${r.message}`);

function recordingFactory(sdk) {
  class RecordingFactory extends sdk.ClientFactory {
    constructor() {
      super();
      this.protocol = sdk.Protocol;
      this.calls = [];
      this.refuse = false;
    }
    buildProtocol(addr) {
      this.calls.push('build_protocol');
      this.addr = addr;
      return this.refuse ? null : super.buildProtocol(addr);
    }
    clientConnectionFailed(reason) {
      this.calls.push(`client_connection_failed:${reasonText(reason)}`);
    }
    clientConnectionLost(reason) {
      this.calls.push(`client_connection_lost:${reasonText(reason)}`);
    }
  }
  return new RecordingFactory();
}

test('connect vectors', async () => {
  for (const c of vectors.cases) {
    const sdk = await freshSdk();
    const { outboundFactory, protocol } = sdk.serve({});
    fake.connects.length = 0;
    const factories = [];
    const byToken = new Map();
    for (const step of c.steps) {
      if ('connect' in step) {
        const { host, port, timeout } = step.connect;
        const f = recordingFactory(sdk);
        factories.push(f);
        const args = timeout === undefined ? [host, port, f] : [host, port, f, timeout];
        if ('host_error' in step) {
          fake.failNextConnect(step.host_error);
          assert.throws(
            () => sdk.connectTCP(...args),
            (e) => e instanceof sdk.ConnectError && e instanceof Error && e.message === step.expect_error,
            c.name,
          );
        } else {
          const connector = sdk.connectTCP(...args);
          assert.deepEqual([connector.host, connector.port], [host, port], c.name);
          byToken.set(step.expect_token, f);
        }
        assert.deepEqual(fake.connects.at(-1), [host, port, timeout ?? 30, BigInt(step.expect_token)], c.name);
      } else if ('build' in step) {
        const f = byToken.get(step.build);
        if (f) f.refuse = step.refuse ?? false;
        const a = step.addr ?? { host: '127.0.0.1', port: 9 };
        const got = outboundFactory.buildProtocol(BigInt(step.build), a);
        if (step.expect === 'none') assert.equal(got, undefined, c.name);
        else {
          assert.ok(got instanceof protocol.Protocol, c.name);
          assert.equal(String(f.addr), `${a.host}:${a.port}`);
        }
      } else if ('failed' in step) {
        outboundFactory.clientConnectionFailed(BigInt(step.failed), { tag: 'failed', val: step.reason });
      } else if ('lost' in step) {
        outboundFactory.clientConnectionLost(BigInt(step.lost), witReason(step.reason));
      } else {
        assert.fail(`unknown step ${JSON.stringify(step)}`);
      }
    }
    assert.deepEqual(
      factories.map((f) => f.calls),
      c.expect_calls,
      c.name,
    );
  }
});

test('other errors from the import pass through', async () => {
  const sdk = await freshSdk();
  const f = recordingFactory(sdk);
  assert.throws(() => sdk.connectTCP(42, 1, f), TypeError);
  // The token is gone with it: an outcome for it reaches nothing.
  const { outboundFactory } = sdk.serve({});
  assert.equal(outboundFactory.buildProtocol(1n, addr), undefined);
  outboundFactory.clientConnectionLost(1n, { tag: 'done' });
  assert.deepEqual(f.calls, []);
});

// ComponentizeJS's disposer of an imported resource (as the SDK finds it).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

/** What ComponentizeJS hands makeConnection: the imported resource. */
function rawTransport() {
  const calls = [];
  const raw = new Proxy(
    { calls, spliceError: null },
    {
      get(target, name) {
        if (name in target) return target[name];
        if (name === DISPOSE) return () => (target.dropped = true);
        assert.ok(!target.dropped, `${String(name)} on a dropped transport handle`);
        if (name === 'splice') {
          return (other) => {
            calls.push(['splice', other]);
            if (target.spliceError !== null) throw Object.assign(new Error(target.spliceError), { payload: target.spliceError });
          };
        }
        return (...args) => calls.push([name, ...args]);
      },
      set(target, name, value) {
        target[name] = value;
        return true;
      },
    },
  );
  return raw;
}

const addr = { host: '192.0.2.7', port: 40000 };

/** A served connection: the exports, its resource (`box`), the raw transport and the protocol. */
function served(ProtocolClass) {
  let made = null;
  class Kept extends ProtocolClass {
    constructor() {
      super();
      made = this;
    }
  }
  const exports = serve({ server: Kept });
  const box = exports.serverFactory.buildProtocol(addr);
  const raw = rawTransport();
  box.makeConnection(raw);
  return { exports, box, raw, p: made };
}

class Recorder extends Protocol {
  constructor() {
    super();
    this.events = [];
  }
  connectionMade() {
    this.events.push('made');
  }
}

test('a protocol built for connectTCP is wrapped like a served one', () => {
  class Hello extends Protocol {
    connectionMade() {
      this.transport.write('hi');
    }
    dataReceived(data) {
      this.transport.write(data.map((b) => b - 32));
    }
  }
  const exports = serve({});
  fake.connects.length = 0;
  connectTCP('127.0.0.1', 9000, ClientFactory.forProtocol(Hello));
  const token = fake.connects[0][3];
  const box = exports.outboundFactory.buildProtocol(token, { host: '127.0.0.1', port: 9000 });
  const raw = rawTransport();
  box.makeConnection(raw);
  box.dataReceived(new TextEncoder().encode('a'));
  exports.batch.dataReceived([{ protocol: box, len: 1 }], new TextEncoder().encode('b'));
  const text = raw.calls.map(([name, data]) => `${name}:${new TextDecoder().decode(data)}`);
  assert.deepEqual(text, ['write:hi', 'write:A', 'write:B']);
  exports.outboundFactory.clientConnectionLost(token, { tag: 'done' });
});

test('a host error throws ConnectError and keeps no factory', () => {
  const { outboundFactory } = serve({});
  fake.connects.length = 0;
  let built = false;
  const f = new Factory();
  f.buildProtocol = () => {
    built = true;
    return new Protocol();
  };
  fake.failNextConnect('no connect grants');
  assert.throws(() => connectTCP('10.0.0.1', 22, f), ConnectError);
  assert.equal(outboundFactory.buildProtocol(fake.connects[0][3], addr), undefined);
  assert.equal(built, false);
});

test('pause, resume and loseWriteConnection reach the host', () => {
  const { raw, p } = served(Recorder);
  const t = p.transport;
  t.pauseProducing();
  t.resumeProducing();
  t.write('last');
  t.loseWriteConnection();
  t.write('ignored');
  t.writeSequence(['ignored']);
  assert.equal(t.disconnecting, false);
  t.loseConnection();
  assert.deepEqual(
    raw.calls.map((c) => c[0]),
    ['pauseProducing', 'resumeProducing', 'write', 'loseWriteConnection', 'loseConnection'],
  );
});

test('splice marks both transports and drops their writes', () => {
  const a = served(Recorder);
  const b = served(Recorder);
  const ta = a.p.transport;
  const tb = b.p.transport;
  ta.write('before');
  ta.splice(tb);
  assert.deepEqual(
    a.raw.calls.map((c) => c[0]),
    ['write', 'splice'],
  );
  assert.equal(a.raw.calls[1][1], b.raw, 'the other raw transport is passed to the host');
  assert.equal(ta.spliced && tb.spliced, true);
  ta.write('x');
  tb.write('y');
  tb.writeSequence(['z']);
  assert.deepEqual(b.raw.calls, []);
  tb.loseConnection();
  assert.deepEqual(b.raw.calls, [['loseConnection']]);
});

test('a batch chunk after the splice goes to the partner', () => {
  // Twisted's portforward, spliced on the first read: the second chunk was
  // read before the splice took effect and must not be lost.
  const b = served(Recorder);
  const received = [];
  class Splicer extends Recorder {
    dataReceived(data) {
      received.push(new TextDecoder().decode(data));
      this.transport.write('own');
      this.transport.splice(b.p.transport);
      this.transport.write('dropped');
    }
  }
  const a = served(Splicer);
  const enc = new TextEncoder();
  a.exports.batch.dataReceived(
    [
      { protocol: a.box, len: 5 },
      { protocol: a.box, len: 6 },
    ],
    enc.encode('firstsecond'),
  );
  assert.deepEqual(received, ['first']);
  assert.deepEqual(a.raw.calls, [['write', enc.encode('own')], ['splice', b.raw]]);
  assert.deepEqual(b.raw.calls, [['write', enc.encode('second')]]);
  assert.deepEqual(b.p.events, ['made']);
});

test('a read delivered after the splice goes to the partner', () => {
  const a = served(Recorder);
  const b = served(Recorder);
  const received = [];
  a.p.dataReceived = (d) => received.push(d);
  b.p.dataReceived = (d) => received.push(d);
  const enc = new TextEncoder();
  a.p.transport.splice(b.p.transport);
  a.box.dataReceived(enc.encode('from a'));
  b.box.dataReceived(enc.encode('from b'));
  assert.deepEqual(received, []);
  assert.deepEqual(b.raw.calls, [['write', enc.encode('from a')]]);
  assert.deepEqual(a.raw.calls, [['splice', b.raw], ['write', enc.encode('from b')]]);
  // The user's own writes stay dropped.
  b.p.transport.write('mine');
  assert.equal(b.raw.calls.length, 1);
  // Once a connection is gone, the pair forgets it: nothing is written to it.
  a.box.connectionLost({ tag: 'done' });
  b.box.dataReceived(enc.encode('late'));
  assert.deepEqual(received, []);
  assert.equal(a.raw.calls.length, 2);
});

test('a spliced connection closed earlier in the batch gets nothing', () => {
  const b = served(Recorder);
  class SpliceThenClose extends Recorder {
    dataReceived() {
      this.transport.splice(b.p.transport);
      this.transport.loseConnection();
    }
  }
  const a = served(SpliceThenClose);
  a.exports.batch.dataReceived(
    [
      { protocol: a.box, len: 3 },
      { protocol: a.box, len: 3 },
    ],
    new TextEncoder().encode('onetwo'),
  );
  assert.deepEqual(a.raw.calls, [['splice', b.raw], ['loseConnection']]);
  assert.deepEqual(b.raw.calls, []);
});

test('a refused splice throws SpliceError and changes nothing', () => {
  const a = served(Recorder);
  const b = served(Recorder);
  a.raw.spliceError = 'the other connection is already spliced';
  assert.throws(() => a.p.transport.splice(b.p.transport), (e) => e instanceof SpliceError && /already spliced/.test(e.message));
  assert.equal(a.p.transport.spliced || b.p.transport.spliced, false);
  a.p.transport.write('still');
  assert.equal(a.raw.calls.at(-1)[0], 'write');
  assert.throws(() => a.p.transport.splice({}), TypeError);
});

test('a transport as producer is registered with the host', () => {
  // Twisted's portforward: client.transport.registerProducer(server.transport, true).
  // The host pauses the server's reading within the write that backs the
  // client's output up (no callback), so the SDK hands it the pair.
  const server = served(Recorder);
  const client = served(Recorder);
  client.p.transport.registerProducer(server.p.transport, true);
  assert.deepEqual(client.raw.calls, [['registerProducerTransport', server.raw]]);
  client.box.pauseProducing();
  client.box.resumeProducing();
  assert.deepEqual(server.raw.calls, []);
  assert.deepEqual(client.p.events, ['made']);
  client.p.transport.registerProducer(client.p, true);
  assert.deepEqual(client.raw.calls.at(-1), ['registerProducer']);
});

class HalfCloser extends Recorder {
  readConnectionLost() {
    this.events.push('readConnectionLost');
    this.transport.write('bye');
    this.transport.loseWriteConnection();
  }
  writeConnectionLost() {
    this.events.push('writeConnectionLost');
  }
}

test('only protocols with readConnectionLost opt in to half-close, before connectionMade', () => {
  const plain = served(Recorder);
  assert.deepEqual(plain.raw.calls, []);
  assert.equal('readConnectionLost' in Protocol.prototype, false);
  class Greeter extends Recorder {
    connectionMade() {
      this.transport.write('hello');
    }
    readConnectionLost() {}
  }
  const g = served(Greeter);
  assert.deepEqual(
    g.raw.calls.map((c) => c.slice(0, 2).map(String)),
    [
      ['setHalfCloseable', 'true'],
      ['write', String(new TextEncoder().encode('hello'))],
    ],
  );
});

test('the halfClose export routes to the protocol', () => {
  const { exports, box, raw, p } = served(HalfCloser);
  exports.halfClose.readConnectionLost(box);
  exports.halfClose.writeConnectionLost(box);
  assert.deepEqual(p.events, ['made', 'readConnectionLost', 'writeConnectionLost']);
  assert.deepEqual(
    raw.calls.map((c) => c[0]),
    ['setHalfCloseable', 'write', 'loseWriteConnection'],
  );
});

test('writeConnectionLost is optional', () => {
  class ReadOnly extends Recorder {
    readConnectionLost() {
      this.events.push('rcl');
    }
  }
  const { exports, box, p } = served(ReadOnly);
  exports.halfClose.writeConnectionLost(box);
  exports.halfClose.readConnectionLost(box);
  assert.deepEqual(p.events, ['made', 'rcl']);
});

test('serve returns the outboundFactory and halfClose exports', () => {
  const exports = serve({ server: Recorder });
  assert.equal(typeof exports.outboundFactory.buildProtocol, 'function');
  assert.equal(typeof exports.halfClose.readConnectionLost, 'function');
  assert.ok(new Transport(rawTransport()) instanceof Transport);
});
