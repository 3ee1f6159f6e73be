// testing.js (StringTransport, connect / deliver / disconnect, Clock), the
// plain-Node story it enables, and the npm package's metadata.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { LineReceiver } from '../basic.js';
import { Clock, StringTransport, clock, connect, deliver, disconnect } from '../testing.js';
import { Address, ConnectionDone, ConnectionLost, Factory, Protocol, Reason, SpliceError, StartTLSError, Transport } from '../twill.js';

const PKG = dirname(fileURLToPath(new URL('../package.json', import.meta.url)));
const bytes = (s) => new TextEncoder().encode(s);
const text = (b) => new TextDecoder().decode(b);

describe('StringTransport', () => {
  test('records writes: value() and clear()', () => {
    const t = new StringTransport();
    assert.equal(t.value().length, 0);
    t.write(bytes('ab'));
    t.write('é');
    t.writeSequence([bytes('c'), 'd']);
    assert.equal(text(t.value()), 'abécd');
    assert.equal(text(t.value()), 'abécd', 'value() does not consume');
    t.clear();
    assert.equal(t.value().length, 0);
    t.write(new Uint8Array([1, 2]).buffer);
    assert.deepEqual([...t.value()], [1, 2]);
  });

  test('keeps a copy of what was written', () => {
    const t = new StringTransport();
    const buf = bytes('abc');
    t.write(buf);
    buf[0] = 0x7a;
    assert.equal(text(t.value()), 'abc');
  });

  test('as the host, ignores writes once closing', () => {
    const t = new StringTransport();
    t.write('before');
    t.loseConnection();
    t.write('after');
    assert.equal(t.disconnecting, true);
    assert.equal(t.aborted, false);
    assert.equal(text(t.value()), 'before');

    const a = new StringTransport();
    a.abortConnection();
    a.write('x');
    assert.equal(a.disconnecting, true);
    assert.equal(a.aborted, true);
    assert.equal(a.value().length, 0);

    const h = new StringTransport();
    h.write('1');
    h.loseWriteConnection();
    h.write('2');
    assert.equal(h.writeDisconnected, true);
    assert.equal(h.disconnecting, false);
    assert.equal(text(h.value()), '1');
  });

  test("addresses: Twisted's defaults, or the given ones", () => {
    const t = new StringTransport();
    assert.ok(t.getPeer() instanceof Address);
    assert.equal(String(t.getPeer()), '192.168.1.1:54321');
    assert.equal(String(t.getHost()), '10.0.0.1:12345');
    const u = new StringTransport({ peer: new Address('::1', 7), host: new Address('127.0.0.1', 8) });
    assert.equal(String(u.getPeer()), '[::1]:7');
    assert.equal(String(u.getHost()), '127.0.0.1:8');
  });

  test('producers: recorded; the protocol by default; streaming only', () => {
    const p = new Protocol();
    const t = connect(p);
    t.registerProducer();
    assert.equal(t.producer, p);
    assert.equal(t.streaming, true);
    const other = new StringTransport();
    t.registerProducer(other);
    assert.equal(t.producer, other);
    t.unregisterProducer();
    assert.equal(t.producer, null);
    assert.throws(() => t.registerProducer(p, false), TypeError);
    assert.equal(t.producerState, 'producing');
    t.pauseProducing();
    assert.equal(t.producerState, 'paused');
    t.resumeProducing();
    assert.equal(t.producerState, 'producing');
  });

  test('is a Transport of the SDK', () => {
    assert.ok(new StringTransport() instanceof Transport);
  });

  test('TLS: recorded, refused where the host would refuse', () => {
    const t = new StringTransport();
    assert.equal(t.tlsInfo(), null);
    assert.equal(t.getPeerCertificate(), null);
    t.startTLS();
    assert.equal(t.tlsStarted, true);
    assert.throws(() => t.startTLS(), StartTLSError);
    const cert = { subject: 'CN=x', sha256: 'ab', der: new Uint8Array(1) };
    const u = new StringTransport();
    u.tls = { version: 'TLSv1.3', cipherSuite: 'TLS13_AES_128_GCM_SHA256', serverName: null, alpnProtocol: null, peerCertificate: cert };
    assert.equal(u.getPeerCertificate(), cert);
    assert.throws(() => u.startTLS(), StartTLSError);
  });

  test('splice: recorded on both, writes ignored after, refused where the host would refuse', () => {
    const t = new StringTransport();
    const u = new StringTransport();
    assert.throws(() => t.splice(t), SpliceError);
    assert.throws(() => t.splice({}), TypeError);
    t.splice(u);
    assert.equal(t.spliced && u.spliced, true);
    assert.equal(t.splicedWith, u);
    assert.equal(u.splicedWith, t);
    t.write('x');
    assert.equal(t.value().length, 0);
    assert.throws(() => t.splice(new StringTransport()), SpliceError);
    const c = new StringTransport();
    c.loseConnection();
    assert.throws(() => new StringTransport().splice(c), SpliceError);
  });
});

describe('connect, deliver, disconnect', () => {
  class Recorder extends Protocol {
    events = [];

    connectionMade() {
      this.events.push(['made', this.connected, this.transport instanceof StringTransport]);
    }

    dataReceived(data) {
      this.events.push(['data', text(data)]);
      if (text(data) === 'bye') this.transport.loseConnection();
    }

    connectionLost(reason) {
      this.events.push(['lost', reason.kind, this.connected]);
    }
  }

  test('connect calls makeConnection as the host does, and returns the transport', () => {
    const p = new Recorder();
    const t = connect(p);
    assert.ok(t instanceof StringTransport);
    assert.equal(p.transport, t);
    assert.equal(t.protocol, p);
    assert.equal(t.halfCloseable, false);
    assert.deepEqual(p.events, [['made', true, true]]);
    const mine = new StringTransport();
    assert.equal(connect(new Recorder(), mine), mine);
  });

  test('a protocol with readConnectionLost is connected half-closeable', () => {
    class Half extends Protocol {
      readConnectionLost() {}
    }
    assert.equal(connect(new Half()).halfCloseable, true);
  });

  test("a factory's protocol", () => {
    const factory = Factory.forProtocol(Recorder);
    const p = factory.buildProtocol(new Address('192.0.2.1', 1));
    connect(p);
    assert.equal(p.factory, factory);
    assert.deepEqual(p.events, [['made', true, true]]);
  });

  test('deliver: strings as UTF-8, nothing once the protocol closed', () => {
    const p = new Recorder();
    connect(p);
    assert.equal(deliver(p, 'hé', bytes('bye'), 'never'), 2);
    assert.deepEqual(p.events.slice(1), [
      ['data', 'hé'],
      ['data', 'bye'],
    ]);
  });

  test('disconnect calls connectionLost with a Reason, after which writes are ignored', () => {
    const p = new Recorder();
    const t = connect(p);
    const r = disconnect(p);
    assert.ok(r instanceof Reason);
    assert.ok(r.check(ConnectionDone));
    assert.deepEqual(p.events.at(-1), ['lost', 'done', false]);
    assert.equal(t.lost, true);
    t.write('late');
    assert.equal(t.value().length, 0);
    assert.equal(deliver(p, 'late'), 0);
    const q = new Recorder();
    connect(q);
    assert.ok(disconnect(q, 'lost', 'reset').check(ConnectionLost));
    assert.deepEqual(q.events.at(-1), ['lost', 'lost', false]);
    const r2 = new Reason('lost', 'timed out');
    assert.equal(disconnect(connect(new Recorder()).protocol, r2), r2);
  });
});

describe('driving a LineReceiver', () => {
  class Chat extends LineReceiver {
    lines = [];

    connectionMade() {
      this.sendLine('HELLO');
    }

    lineReceived(line) {
      const s = text(line);
      this.lines.push(s);
      if (s === 'QUIT') {
        this.sendLine('BYE');
        this.transport.loseConnection();
      } else {
        this.sendLine(s.toUpperCase());
      }
    }
  }

  test('lines in, lines out, QUIT closes and stops delivery', () => {
    const p = new Chat();
    const t = connect(p);
    assert.equal(text(t.value()), 'HELLO\r\n');
    t.clear();
    deliver(p, 'hel', 'lo\r\nwor', 'ld\r\nQUIT\r\nignored\r\n');
    assert.deepEqual(p.lines, ['hello', 'world', 'QUIT']);
    assert.equal(text(t.value()), 'HELLO\r\nWORLD\r\nBYE\r\n');
    assert.equal(t.disconnecting, true);
    deliver(p, 'more\r\n');
    p.dataReceived(bytes('more\r\n'));
    assert.deepEqual(p.lines, ['hello', 'world', 'QUIT']);
  });

  test('a line over MAX_LENGTH loses the connection', () => {
    const p = new Chat();
    p.MAX_LENGTH = 4;
    const t = connect(p);
    deliver(p, 'abcdef');
    assert.equal(t.disconnecting, true);
    assert.deepEqual(p.lines, []);
  });
});

describe('Clock', () => {
  test('runs due calls in order, through reactorCalls', () => {
    const c = new Clock();
    const fired = [];
    c._setReactorCalls({ timerFired: (token) => fired.push([token, c.seconds()]) });
    const a = c.callLater(2, 1n);
    c.callLater(1, 2n);
    const d = c.callLater(1, 3n);
    c.callLater(5, 4n).cancel();
    assert.equal(d.delay(0.5), true);
    assert.equal(a.getTime(), 2);
    assert.equal(c.getDelayedCalls().length, 3);
    c.advance(1);
    assert.deepEqual(fired, [[2n, 1]]);
    c.pump([0.5, 10]);
    assert.deepEqual(fired, [
      [2n, 1],
      [3n, 1.5],
      [1n, 11.5],
    ]);
    assert.equal(a.active(), false);
    assert.equal(a.cancel(), false);
    assert.deepEqual(c.getDelayedCalls(), []);
    assert.throws(() => c.advance(-1), RangeError);
  });

  test('is one instance', () => {
    assert.ok(clock instanceof Clock);
    assert.equal(globalThis[Symbol.for('twill-guest/testing.reactor')], clock);
  });
});

/** Run ES module `code` in a fresh Node, with only `--import ./testing.js`, in the package directory. */
function plainNode(code) {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, ['--import', './testing.js', '--input-type=module', '-e', code], {
    cwd: PKG,
    env,
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

describe('plain Node, with --import twill-guest/testing', () => {
  test('the package imports by name (basic, testing, the SDK)', () => {
    const out = plainNode(`
      const basic = await import('twill-guest/basic');
      const sdk = await import('twill-guest');
      const testing = await import('twill-guest/testing');
      console.log(JSON.stringify([Object.keys(basic).sort(), typeof sdk.Protocol, typeof testing.StringTransport]));
    `);
    assert.deepEqual(JSON.parse(out), [
      [
        'Int16StringReceiver',
        'Int32StringReceiver',
        'Int8StringReceiver',
        'IntNStringReceiver',
        'LineReceiver',
        'NetstringReceiver',
        'StringTooLongError',
      ],
      'function',
      'function',
    ]);
  });

  test('reactor time runs on the clock: a TimeoutMixin LineReceiver times out', () => {
    const out = plainNode(`
      import { LineReceiver } from 'twill-guest/basic';
      import { LoopingCall, TimeoutMixin, seconds } from 'twill-guest';
      import { clock, connect, deliver } from 'twill-guest/testing';
      class Idle extends TimeoutMixin(LineReceiver) {
        connectionMade() { this.setTimeout(10); }
        lineReceived(line) { this.resetTimeout(); }
      }
      const p = new Idle();
      const t = connect(p);
      clock.advance(9);
      deliver(p, 'ping\\r\\n');
      clock.advance(9);
      const before = t.disconnecting;
      clock.advance(1);
      let ticks = 0;
      new LoopingCall(() => ticks++).start(1);
      clock.pump([1, 1, 1]);
      console.log(JSON.stringify([before, t.disconnecting, seconds(), ticks]));
    `);
    assert.deepEqual(JSON.parse(out), [false, true, 22, 4]);
  });
});

describe('the npm package', () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

  /** The X of `package twill:protocol@X;` in a world.wit. */
  function witVersion(url) {
    const m = /^package twill:protocol@([^;\s]+);/m.exec(readFileSync(url, 'utf8'));
    assert.ok(m, `${fileURLToPath(url)} has a package line`);
    return m[1];
  }

  test("its version is the WIT package's (twill:protocol@X)", () => {
    assert.equal(pkg.version, witVersion(new URL('../wit/world.wit', import.meta.url)));
    const repoWit = new URL('../../../wit/world.wit', import.meta.url);
    if (existsSync(repoWit)) assert.equal(pkg.version, witVersion(repoWit));
  });

  test('publishable: exports, files, bin', () => {
    assert.equal(pkg.name, 'twill-guest');
    assert.equal(pkg.private, undefined);
    assert.deepEqual(Object.keys(pkg.exports).sort(), ['.', './basic', './package.json', './testing']);
    assert.deepEqual([...pkg.files].sort(), ['LICENSE', 'README.md', 'basic.js', 'build.mjs', 'testing.js', 'twill.js', 'wit/']);
    assert.equal(pkg.bin['twill-componentize'], 'build.mjs');
    for (const target of Object.values(pkg.exports)) assert.ok(existsSync(new URL(`../${target}`, import.meta.url)), target);
  });

  test('its subpaths resolve, by name, to these modules', async () => {
    assert.equal((await import('twill-guest/basic')).LineReceiver, LineReceiver);
    assert.equal((await import('twill-guest/testing')).StringTransport, StringTransport);
    assert.equal((await import('twill-guest')).Protocol, Protocol);
  });
});
