// testing.js: unit tests of Twill protocols under plain Node, with no host.
//
// Twisted's `proto_helpers.StringTransport` (`twisted.internet.testing`)
// and `task.Clock`, for the SDK:
//
// - `StringTransport`: a `Transport` that records what a protocol does
//   (`value()` is what it wrote, `disconnecting` whether it closed...).
// - `connect(protocol, transport)`, `deliver(protocol, ...chunks)`,
//   `disconnect(protocol, reason)`: what the host does to a protocol, so
//   one written for the host runs unchanged.
// - `clock`: the reactor's time under Node (`seconds`, `callLater`,
//   `LoopingCall`, `TimeoutMixin`), moved on by `clock.advance(seconds)`.
//
// The SDK imports the host's `twill:protocol/reactor` interface, which only
// exists inside a component: importing this module first makes it
// resolvable under Node (to `clock`), so run the tests with it preloaded:
//
//     node --import twill-guest/testing --test
//
//     import assert from 'node:assert/strict';
//     import { test } from 'node:test';
//     import { connect, deliver } from 'twill-guest/testing';
//     import { Chat } from './chat.js';
//
//     test('echoes lines', () => {
//       const p = new Chat();
//       const t = connect(p);
//       deliver(p, 'hello\r\n');
//       assert.equal(new TextDecoder().decode(t.value()), 'hello\r\n');
//     });

import * as nodeModule from 'node:module';

const KEY = Symbol.for('twill-guest/testing.reactor');

// The `twill:protocol/reactor` module under Node: forwards to the clock this
// module puts on globalThis.
const REACTOR_MODULE = `
const clock = () => globalThis[Symbol.for('twill-guest/testing.reactor')];
export function seconds() { return clock().seconds(); }
export function callLater(delay, token) { return clock().callLater(delay, token); }
export function connectTcp(host, port, timeout, token) { return clock().connectTcp(host, port, timeout, token); }
`;

// Module hooks: a `twill:protocol/reactor` import that nothing else resolves
// (another hook may, as the SDK's own tests do) gets the module above.
const HOOKS = `
const reactor = ${JSON.stringify(`data:text/javascript,${encodeURIComponent(REACTOR_MODULE)}`)};
export async function resolve(specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context);
  if (resolved.url.startsWith('twill:protocol/reactor')) return { url: reactor, shortCircuit: true };
  return resolved;
}
`;


/** What the host's `connect-tcp` throws: ComponentizeJS's error with a `payload`. */
class HostError extends Error {
  constructor(payload) {
    super(payload);
    this.payload = payload;
  }
}

/** A call the clock holds for `callLater`: the host's `delayed-call` resource. */
class ClockCall {
  constructor(clock, token, time, seq) {
    this.clock = clock;
    this.token = token;
    this.time = time;
    this.seq = seq;
    this.live = true;
  }

  getTime() {
    return this.time;
  }

  cancel() {
    const was = this.live;
    this.live = false;
    return was;
  }

  reset(secondsFromNow) {
    if (this.live) this.time = this.clock.seconds() + secondsFromNow;
    return this.live;
  }

  delay(secondsLater) {
    if (this.live) this.time += secondsLater;
    return this.live;
  }

  active() {
    return this.live;
  }
}

/**
 * Provide a deterministic, easily-controlled reactor time: Twisted's
 * `task.Clock`. The SDK's `seconds`, `callLater` (and so `LoopingCall` and
 * `TimeoutMixin`) run on the one instance, `clock`, when this module made
 * the reactor resolvable. Time starts at 0 and moves only by `advance`.
 */
export class Clock {
  #now = 0;
  #seq = 0;
  #calls = [];
  #fire = null;

  /** @internal Where due calls go: the SDK's `reactorCalls` export. */
  _setReactorCalls(reactorCalls) {
    this.#fire = reactorCalls;
  }

  /**
   * Pretend to be the reactor's time.
   *
   * @returns {number} The time, in seconds, since the clock started.
   */
  seconds() {
    return this.#now;
  }

  /** @internal The host's `call-later`. */
  callLater(delay, token) {
    const call = new ClockCall(this, token, this.#now + delay, this.#seq++);
    this.#calls.push(call);
    return call;
  }

  /** @internal The host's `connect-tcp`: there is no network under Node. */
  connectTcp(host, port, timeout, token) {
    throw new HostError(`connectTCP(${host}, ${port}): no host under twill-guest/testing`);
  }

  /**
   * Move time on by `amount` seconds, running every call that falls due,
   * in order (a call scheduled meanwhile runs too if it is due).
   *
   * @param {number} amount Seconds, >= 0.
   */
  advance(amount) {
    if (!(amount >= 0)) throw new RangeError(`Clock.advance: amount must be >= 0, got ${amount}`);
    this.#now += amount;
    for (;;) {
      let next = null;
      for (const c of this.#calls) {
        if (c.live && c.time <= this.#now && (next === null || c.time < next.time || (c.time === next.time && c.seq < next.seq))) {
          next = c;
        }
      }
      if (next === null) break;
      next.live = false;
      this.#calls = this.#calls.filter((c) => c.live);
      this.#fire?.timerFired(next.token);
    }
    this.#calls = this.#calls.filter((c) => c.live);
  }

  /**
   * Advance by each amount of `timings` in turn: Twisted's `Clock.pump`.
   *
   * @param {Iterable<number>} timings Seconds.
   */
  pump(timings) {
    for (const t of timings) this.advance(t);
  }

  /**
   * The calls scheduled and not yet run or cancelled, soonest first, each
   * with `getTime()`.
   */
  getDelayedCalls() {
    return this.#calls.filter((c) => c.live).sort((a, b) => a.time - b.time || a.seq - b.seq);
  }
}

/** The clock the SDK's reactor time runs on under Node (see `Clock`). */
export const clock = (globalThis[KEY] ??= new Clock());

if (typeof nodeModule.register === 'function') {
  nodeModule.register(`data:text/javascript,${encodeURIComponent(HOOKS)}`);
}

// After the hooks: the SDK imports the reactor.
const { Address, Reason, SpliceError, StartTLSError, Transport, serve, toBytes } = await import('./twill.js');
clock._setReactorCalls(serve().reactorCalls);

/**
 * A transport that buffers what is written in memory and keeps track of
 * its other state without providing any behaviour: Twisted's
 * `StringTransport`, as a `Transport` of the SDK (`instanceof Transport`
 * holds), for unit tests.
 *
 * It behaves as the real transport does on Twill's host where that differs
 * from Twisted's `StringTransport`: writes after `loseConnection`,
 * `abortConnection`, `loseWriteConnection`, a splice or the end of the
 * connection are ignored (`value()` is what the peer would receive), and a
 * string is written as UTF-8.
 *
 * The attributes below are for tests; protocols should not use them:
 * `peer` / `host` (what `getPeer` / `getHost` return), `protocol` (the
 * protocol `connect` connected), `disconnecting` (`loseConnection` or
 * `abortConnection` was called), `aborted` (`abortConnection`),
 * `writeDisconnected` (`loseWriteConnection`), `lost` (`disconnect` ended
 * the connection), `halfCloseable` (`connect` found `readConnectionLost`),
 * `producer` / `streaming` (the registered producer, the protocol when
 * `registerProducer()` got none), `producerState` (`'producing'`, or
 * `'paused'`: reading stopped), `spliced` / `splicedWith`, `tlsStarted`,
 * and `tls` (what `tlsInfo()` returns: null, plaintext, unless a test sets
 * it).
 */
export class StringTransport extends Transport {
  #chunks = [];

  /**
   * @param {object} [options]
   * @param {Address} [options.peer] What `getPeer` returns (default
   *   192.168.1.1:54321, as Twisted's).
   * @param {Address} [options.host] What `getHost` returns (default
   *   10.0.0.1:12345, as Twisted's).
   */
  constructor({ peer = null, host = null } = {}) {
    super(null);
    this.peer = peer ?? new Address('192.168.1.1', 54321);
    this.host = host ?? new Address('10.0.0.1', 12345);
    this.protocol = null;
    this.aborted = false;
    this.writeDisconnected = false;
    this.lost = false;
    this.halfCloseable = false;
    this.streaming = null;
    this.producerState = 'producing';
    this.splicedWith = null;
    this.tlsStarted = false;
    this.tls = null;
  }

  #mute() {
    return this.disconnecting || this.writeDisconnected || this.spliced || this.lost;
  }

  /**
   * Discard all data written to this transport so far. Not a transport
   * method: for tests.
   */
  clear() {
    this.#chunks = [];
  }

  /**
   * All data written to this transport since the last `clear`. Not a
   * transport method: for tests.
   *
   * @returns {Uint8Array} A copy.
   */
  value() {
    const chunks = this.#chunks;
    if (chunks.length === 1) return chunks[0].slice();
    let n = 0;
    for (const c of chunks) n += c.length;
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    this.#chunks = n > 0 ? [out] : [];
    return out.slice();
  }

  /** Write bytes (a string as UTF-8); ignored once closing. */
  write(data) {
    const bytes = toBytes(data);
    if (!this.#mute() && bytes.length > 0) this.#chunks.push(bytes.slice());
  }

  /** Write each buffer in order. */
  writeSequence(seq) {
    for (const data of Array.from(seq, toBytes)) this.write(data);
  }

  /** Close the connection: sets `disconnecting`. */
  loseConnection() {
    this.disconnecting = true;
  }

  /** Abort the connection: sets `disconnecting` and `aborted`. */
  abortConnection() {
    this.aborted = true;
    this.disconnecting = true;
  }

  /** Close the write side: sets `writeDisconnected`; writes are ignored from now on. */
  loseWriteConnection() {
    this.writeDisconnected = true;
  }

  /** The remote address: `peer`. */
  getPeer() {
    return this.peer;
  }

  /** The local address: `host`. */
  getHost() {
    return this.host;
  }

  /**
   * Record `producer` (default: the connected protocol) in `producer`, and
   * set `streaming`. As on the real transport, only streaming producers are
   * accepted.
   */
  registerProducer(producer = null, streaming = true) {
    if (!streaming) throw new TypeError('twill supports streaming (push) producers only');
    this.producer = producer ?? this.protocol;
    this.streaming = true;
  }

  /** Forget the producer. */
  unregisterProducer() {
    this.producer = null;
    this.streaming = null;
  }

  /** Record that reading stopped: `producerState = 'paused'`. (`deliver` still delivers: the test decides.) */
  pauseProducing() {
    if (!this.lost) this.producerState = 'paused';
  }

  /** Record that reading resumed: `producerState = 'producing'`. */
  resumeProducing() {
    if (!this.lost) this.producerState = 'producing';
  }

  /**
   * Record a splice with `other` in both transports' `spliced` and
   * `splicedWith`; writes to either are ignored afterwards. Throws
   * `SpliceError` where the host would refuse: `other` is this transport,
   * or either is already spliced, closing or lost.
   */
  splice(other) {
    if (!(other instanceof Transport)) throw new TypeError('splice() wants another Transport');
    if (other === this) throw new SpliceError('cannot splice a connection with itself');
    for (const t of [this, other]) {
      if (t.spliced || t.disconnecting || t.lost) throw new SpliceError('connection is already spliced, closing or closed');
    }
    this.spliced = other.spliced = true;
    this.splicedWith = other;
    if (other instanceof StringTransport) other.splicedWith = this;
  }

  /** The `tls` attribute: null (plaintext) unless the test set it. */
  tlsInfo() {
    return this.tls;
  }

  /** `tls.peerCertificate`, or null. */
  getPeerCertificate() {
    return this.tls?.peerCertificate ?? null;
  }

  /**
   * Set `tlsStarted`. Throws `StartTLSError` where the host would refuse
   * for the connection's own state: already encrypted (`tls` set) or
   * starting TLS, spliced or closing.
   */
  startTLS() {
    if (this.tls !== null || this.tlsStarted || this.spliced || this.disconnecting || this.lost) {
      throw new StartTLSError('connection is already encrypted, starting TLS, spliced or closing');
    }
    this.tlsStarted = true;
  }

  /** @internal As the real transport's: the host's half-close opt-in. */
  _setHalfCloseable(on) {
    this.halfCloseable = on;
  }

  /** @internal A read delivered after a splice goes to the partner. */
  _forward(data) {
    const partner = this.splicedWith;
    if (partner instanceof StringTransport && !partner.lost) partner.#chunks.push(data.slice());
  }

  /** @internal The connection is gone: writes are ignored from now on. */
  _connectionLost() {
    this.lost = true;
  }
}

/**
 * Connect `protocol` to `transport` as the host does: mark the transport
 * half-closeable if the protocol defines `readConnectionLost`, then call
 * `protocol.makeConnection(transport)` (which sets `protocol.transport`
 * and calls `connectionMade`). For a factory's protocol, make it with
 * `factory.buildProtocol(addr)` first, as the host does.
 *
 * @param {Protocol} protocol
 * @param {StringTransport} [transport] A new `StringTransport` by default.
 * @returns {StringTransport} The transport.
 */
export function connect(protocol, transport = new StringTransport()) {
  if (transport instanceof StringTransport) {
    transport.protocol = protocol;
    transport.halfCloseable = typeof protocol.readConnectionLost === 'function';
  }
  protocol.makeConnection(transport);
  return transport;
}

/**
 * Call `protocol.dataReceived` with each chunk, in order, as the host
 * does: each a fresh `Uint8Array` (a string as UTF-8), and nothing once the
 * transport is disconnecting (the host delivers no data after a close) or
 * the connection has ended.
 *
 * @param {Protocol} protocol
 * @param {...(Uint8Array|string)} chunks
 * @returns {number} How many chunks were delivered.
 */
export function deliver(protocol, ...chunks) {
  let delivered = 0;
  for (const chunk of chunks) {
    const t = protocol.transport;
    if (t != null && (t.disconnecting || t.lost)) break;
    protocol.dataReceived(toBytes(chunk).slice());
    delivered++;
  }
  return delivered;
}

/**
 * End the connection as the host does: later writes are ignored (the
 * transport's `lost`), `protocol.connected` becomes false, then
 * `protocol.connectionLost(reason)` is called.
 *
 * @param {Protocol} protocol
 * @param {Reason|string} [reason] A `Reason`, or its kind (`'done'`, the
 *   default, or `'lost'`).
 * @param {string} [message] The host's explanation, with a kind.
 * @returns {Reason} The reason passed.
 */
export function disconnect(protocol, reason = 'done', message = '') {
  if (!(reason instanceof Reason)) reason = new Reason(reason, message);
  const t = protocol.transport;
  if (t instanceof StringTransport) t.lost = true;
  protocol.connected = false;
  protocol.connectionLost(reason);
  return reason;
}
