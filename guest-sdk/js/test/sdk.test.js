// Unit tests for the twill JavaScript SDK under plain Node: the exported glue
// driven with a fake host transport, as ComponentizeJS drives it.
//
//   node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/
//
// The components themselves are tested against the real host by
// scripts/test-polyglot.sh.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Address,
  ClientFactory,
  ConnectError,
  ConnectionClosed,
  ConnectionDone,
  ConnectionLost,
  Factory,
  Protocol,
  Reason,
  ServerFactory,
  StartTLSError,
  Transport,
  serve,
} from '../twill.js';

// ComponentizeJS's disposer of an imported resource (as the SDK finds it).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

/** What ComponentizeJS hands makeConnection: the imported resource. Using it after its disposer ran fails the test. */
function rawTransport() {
  const calls = [];
  const live = () => assert.ok(!raw.dropped, 'a call on a dropped transport handle');
  const record = (name) => (...args) => {
    live();
    calls.push([name, ...args]);
  };
  const raw = {
    calls,
    dropped: false,
    [DISPOSE]() {
      raw.dropped = true;
    },
    write: record('write'),
    writeSequence: record('writeSequence'),
    loseConnection: record('loseConnection'),
    abortConnection: record('abortConnection'),
    registerProducer: record('registerProducer'),
    unregisterProducer: record('unregisterProducer'),
    getPeer: () => (live(), { host: '::1', port: 9 }),
    getHost: () => (live(), { host: '127.0.0.1', port: 9 }),
  };
  return raw;
}

const addr = (host = '192.0.2.7', port = 40000) => ({ host, port });
const bytes = (s) => new TextEncoder().encode(s);

class Echo extends Protocol {
  dataReceived(data) {
    this.transport.write(data);
  }
}

class Recorder extends Protocol {
  constructor() {
    super();
    this.events = [];
    Recorder.last = this;
  }
  connectionMade() {
    this.events.push(['made', this.connected]);
  }
  dataReceived(data) {
    this.events.push(['data', data]);
  }
  connectionLost(reason) {
    this.events.push(['lost', reason, this.connected]);
  }
  pauseProducing() {
    this.events.push(['pause']);
  }
  resumeProducing() {
    this.events.push(['resume']);
  }
}

/** A connected protocol: its resource (`box`), the raw transport it
 * writes to, and, for a `Recorder`, the protocol object itself (`p`). */
function connect(protocolClass = Recorder) {
  const { serverFactory, protocol } = serve({ server: protocolClass });
  const box = serverFactory.buildProtocol(addr());
  assert.ok(box instanceof protocol.Protocol, 'build-protocol returns the exported resource class');
  const raw = rawTransport();
  box.makeConnection(raw);
  return { box, raw, p: Recorder.last };
}

test('echo writes back every chunk', () => {
  const { box, raw } = connect(Echo);
  box.dataReceived(bytes('hello'));
  box.dataReceived(new Uint8Array(0));
  assert.deepEqual(raw.calls, [['write', bytes('hello')], ['write', new Uint8Array(0)]]);
});

test('the transport handle is dropped once connectionLost returned', () => {
  const seen = [];
  class Late extends Protocol {
    connectionLost() {
      // Still usable here: the peer is asked for now.
      seen.push(this.transport.getPeer());
    }
  }
  const { serverFactory } = serve({ server: Late });
  const box = serverFactory.buildProtocol(addr());
  const raw = rawTransport();
  box.makeConnection(raw);
  box.connectionLost({ tag: 'done' });
  assert.ok(raw.dropped, 'dropped after connectionLost');
  assert.deepEqual(seen, [new Address('::1', 9)]);
});

test('after the drop, a kept transport answers without its handle', () => {
  let kept = null;
  class Keeper extends Protocol {
    connectionMade() {
      kept = this.transport;
      kept.getPeer();
    }
  }
  const { serverFactory } = serve({ server: Keeper });
  const box = serverFactory.buildProtocol(addr());
  const raw = rawTransport();
  box.makeConnection(raw);
  box.connectionLost({ tag: 'done' });
  // The fake fails the test if any of these reaches the dropped handle.
  assert.deepEqual(kept.getPeer(), new Address('::1', 9));
  assert.deepEqual(kept.getHost(), new Address('', 0));
  kept.write(bytes('late'));
  kept.loseConnection();
  kept.registerProducer();
  kept.unregisterProducer();
  assert.equal(kept.tlsInfo(), null);
  assert.throws(() => kept.startTLS(), StartTLSError);
  assert.deepEqual(raw.calls, []);
});

test('a missing role refuses', () => {
  assert.equal(serve({ server: Echo }).clientFactory.buildProtocol(addr()), undefined);
  assert.equal(serve({ client: Echo }).serverFactory.buildProtocol(addr()), undefined);
});

test('bad factories are rejected at build time', () => {
  assert.throws(() => serve({ server: Factory }), TypeError);
  assert.throws(() => serve({ server: {} }), TypeError);
  const { serverFactory } = serve({ server: new Factory() });
  assert.throws(() => serverFactory.buildProtocol(addr()), /protocol is not set/);
});

test('a factory may refuse, and sets protocol.factory', () => {
  let built = null;
  class Picky extends ServerFactory {
    buildProtocol(a) {
      if (a.host === '192.0.2.66') return null;
      built = super.buildProtocol(a);
      return built;
    }
  }
  const picky = Picky.forProtocol(Echo);
  const { serverFactory } = serve({ server: picky });
  assert.equal(serverFactory.buildProtocol(addr('192.0.2.66')), undefined);
  assert.ok(serverFactory.buildProtocol(addr()));
  assert.equal(built.factory, picky);
});

test('makeConnection keeps the transport, then connectionMade', () => {
  const events = [];
  const { serverFactory } = serve({
    server: Factory.forProtocol(
      class extends Protocol {
        connectionMade() {
          events.push([this.transport instanceof Transport, this.connected]);
        }
      },
    ),
  });
  serverFactory.buildProtocol(addr()).makeConnection(rawTransport());
  assert.deepEqual(events, [[true, true]]);
});

test('connectionLost gets a Reason and later writes are dropped', () => {
  const { box, raw, p } = connect();
  box.connectionLost({ tag: 'lost', val: 'reset by peer' });
  const [, reason, connected] = p.events.at(-1);
  assert.equal(connected, false);
  assert.equal(reason.kind, 'lost');
  assert.equal(reason.message, 'reset by peer');
  assert.equal(reason.type, ConnectionLost);
  assert.equal(reason.check(ConnectionDone, ConnectionClosed), ConnectionClosed);
  assert.equal(reason.getErrorMessage(), 'Connection was lost: reset by peer');
  p.transport.write('late');
  assert.deepEqual(raw.calls, []);
});

test('reasons', () => {
  const done = new Reason('done');
  assert.ok(done.clean);
  assert.equal(String(done), 'Connection was closed cleanly.');
  assert.equal(done.check(ConnectionLost), null);
  const failed = new Reason('failed', 'connection refused');
  assert.equal(failed.check(ConnectError), ConnectError);
  assert.throws(() => new Reason('nope'), TypeError);
});

test('transport methods', () => {
  const raw = rawTransport();
  const t = new Transport(raw);
  t.write('é');
  t.write(new Uint16Array([1]).buffer);
  t.writeSequence(['a', bytes('b')]);
  assert.throws(() => t.write(42), TypeError);
  assert.deepEqual(t.getPeer(), new Address('::1', 9));
  assert.equal(String(t.getPeer()), '[::1]:9');
  assert.equal(String(t.getHost()), '127.0.0.1:9');
  assert.equal(t.disconnecting, false);
  t.loseConnection();
  assert.equal(t.disconnecting, true);
  assert.deepEqual(raw.calls, [
    ['write', bytes('é')],
    ['write', new Uint8Array([1, 0])],
    ['writeSequence', [bytes('a'), bytes('b')]],
    ['loseConnection'],
  ]);
});

test('producer defaults to the protocol, or is another object', () => {
  const { box, raw, p } = connect();
  p.transport.registerProducer();
  box.pauseProducing();
  box.resumeProducing();
  assert.deepEqual(p.events.slice(-2), [['pause'], ['resume']]);
  const other = new Recorder();
  p.transport.registerProducer(other, true);
  box.pauseProducing();
  assert.deepEqual(other.events, [['pause']]);
  p.transport.unregisterProducer();
  assert.throws(() => p.transport.registerProducer(other, false), TypeError);
  assert.deepEqual(raw.calls, [['registerProducer'], ['registerProducer'], ['unregisterProducer']]);
});

test('the client role calls the factory hooks in order', () => {
  const log = [];
  class Hello extends Protocol {
    connectionMade() {
      this.transport.write('hello world');
    }
    dataReceived(data) {
      log.push(`Server said: ${new TextDecoder().decode(data)}`);
      this.transport.loseConnection();
    }
    connectionLost() {
      log.push('Connection lost');
    }
  }
  class Hellos extends ClientFactory {
    startedConnecting(a) {
      log.push(`started ${a}`);
    }
    clientConnectionFailed(reason) {
      log.push(`failed ${reason.message}`);
    }
    clientConnectionLost(reason) {
      log.push(`Connection lost - goodbye (${reason.kind})`);
    }
  }
  const { clientFactory } = serve({ client: Hellos.forProtocol(Hello) });
  clientFactory.startedConnecting(addr('127.0.0.1', 9000));
  const box = clientFactory.buildProtocol(addr('127.0.0.1', 9000));
  const raw = rawTransport();
  box.makeConnection(raw);
  box.dataReceived(bytes('hello world'));
  box.connectionLost({ tag: 'done' });
  clientFactory.clientConnectionLost({ tag: 'done' });
  clientFactory.clientConnectionFailed({ tag: 'failed', val: 'connection refused' });
  assert.deepEqual(log, [
    'started 127.0.0.1:9000',
    'Server said: hello world',
    'Connection lost',
    'Connection lost - goodbye (done)',
    'failed connection refused',
  ]);
  assert.deepEqual(raw.calls, [['write', bytes('hello world')], ['loseConnection']]);
});

test('a plain Factory serves the client role', () => {
  const { clientFactory } = serve({ client: Factory.forProtocol(Echo) });
  clientFactory.startedConnecting(addr());
  assert.ok(clientFactory.buildProtocol(addr()));
  clientFactory.clientConnectionFailed({ tag: 'failed', val: 'x' });
  clientFactory.clientConnectionLost({ tag: 'done' });
});

test('a batch gives each chunk to its protocol, in order, and skips a connection closed earlier in the call', () => {
  const kept = [];
  class Closer extends Protocol {
    connectionMade() {
      kept.push(this.transport);
    }
    dataReceived(data) {
      const text = new TextDecoder().decode(data);
      if (text.startsWith('lose ')) kept[Number(text.slice(5))].loseConnection();
      else this.transport.write(data);
    }
  }
  const { serverFactory, batch } = serve({ server: Closer });
  const conns = [0, 1].map(() => {
    const box = serverFactory.buildProtocol(addr());
    const raw = rawTransport();
    box.makeConnection(raw);
    return { box, raw };
  });
  const [a, b] = conns;
  const parts = [[a, 'a1'], [b, 'b'], [a, 'a2'], [a, 'lose 1'], [b, 'late']];
  const data = bytes(parts.map(([, d]) => d).join(''));
  // ComponentizeJS's record for `batch.chunk`: the borrowed protocol
  // arrives as the exported object itself.
  batch.dataReceived(parts.map(([c, d]) => ({ protocol: c.box, len: d.length })), data);
  assert.deepEqual(a.raw.calls, [['write', bytes('a1')], ['write', bytes('a2')]]);
  // Each protocol gets a view of the call's buffer, not a copy (a copy per
  // read filled a shared instance's memory with garbage under bulk load).
  assert.equal(a.raw.calls[0][1].buffer, data.buffer);
  assert.equal(a.raw.calls[1][1].byteOffset, 3);
  assert.deepEqual(b.raw.calls, [['write', bytes('b')], ['loseConnection']]);
});
