// twill.js: write Twill protocols in JavaScript.
//
// The guest side of the `twill:protocol@0.1.0` contract (`wit/` in the Twill
// repository), shaped like Twisted, with Twisted's own camelCase names:
//
// - `Protocol`: one connection. Override `dataReceived` and friends; every
//   method has a default that does nothing.
// - `Factory`, `ServerFactory`, `ClientFactory`: build a protocol per
//   connection. `Factory.forProtocol(Echo)` (or `factory.protocol = Echo`)
//   builds `new Echo()`, as in Twisted.
// - `Transport`: the connection's handle (`this.transport`), with `write`,
//   `writeSequence`, `loseConnection`, `abortConnection`, `getPeer`,
//   `getHost`, the producer methods (`registerProducer`, `pauseProducing`,
//   `resumeProducing`), `loseWriteConnection` (half-close), `splice`, and
//   TLS: `tlsInfo`, `getPeerCertificate` and `startTLS` (Twisted's
//   `ISSLTransport` / `ITLSTransport`).
// - `Reason`: why a connection ended, with Twisted's `check` and
//   `getErrorMessage`.
// - `seconds`, `callLater`, `DelayedCall`, `LoopingCall`, `TimeoutMixin`:
//   reactor time (Twisted's `reactor.seconds`, `reactor.callLater`,
//   `task.LoopingCall`, `policies.TimeoutMixin`).
// - `connectTCP(host, port, factory, timeout)`: Twisted's
//   `reactor.connectTCP`, for opening connections (a relay, a proxy).
// - `serve({ server, client })`: returns the exports the component
//   needs; export them from your module:
//
//       import { Factory, Protocol, serve } from './twill.js';
//
//       class Echo extends Protocol {
//         dataReceived(data) {
//           this.transport.write(data);
//         }
//       }
//
//       export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } =
//         serve({ server: Factory.forProtocol(Echo) });
//
// Build it with guest-sdk/js/build.mjs (ComponentizeJS, world `peer`).
//
// Rules of the reactor: callbacks run inside the host's event loop and must
// not block (and are synchronous: a returned promise is not awaited by the
// host). The host interrupts a callback that runs past the plugin's CPU
// limit and aborts that connection; an exception that escapes a callback
// does the same. Output written through the transport is buffered by the
// host and sent, in order, when the callback returns. By default every
// connection gets a fresh instance of the component, so module-level and
// factory state lives exactly as long as one connection; with
// `instance = "shared"` in plugins.toml one instance serves many connections
// and that state is shared by them, as in one Twisted process.

import * as hostReactor from 'twill:protocol/reactor@0.1.0';

const encoder = new TextEncoder();

// ComponentizeJS's disposer of an imported resource (its glue's fallback
// when the engine has no Symbol.dispose).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

/**
 * Drop a host handle now. ComponentizeJS would drop it only when the garbage
 * collector finds its object, and in practice never: its glue unregisters
 * the object from its FinalizationRegistry on every call. A shared instance
 * that kept the handle of every ended connection or fired call faulted
 * when its resource table filled (`max-resources`).
 */
function release(raw) {
  raw?.[DISPOSE]?.();
}

/** An IPv4 or IPv6 endpoint: Twisted's `IPv4Address` / `IPv6Address`. */
export class Address {
  constructor(host, port) {
    /** The numeric host: `127.0.0.1` or `::1`. */
    this.host = host;
    /** The TCP port. */
    this.port = port;
  }

  get type() {
    return 'TCP';
  }

  toString() {
    return this.host.includes(':') ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }
}

/** A connection ended: the base of `ConnectionDone` and `ConnectionLost`. */
export class ConnectionClosed extends Error {}
/** The connection was closed cleanly. */
export class ConnectionDone extends ConnectionClosed {}
/** The connection was lost in a non-clean fashion. */
export class ConnectionLost extends ConnectionClosed {}
/**
 * A client connection attempt failed: refused, unreachable, no such name,
 * timed out; or `connectTCP` could not start one at all.
 */
export class ConnectError extends Error {}

/**
 * `Transport.splice` was refused by the host: the other transport is this
 * one, either connection is already spliced or closing, or the other belongs
 * to another instance or has ended. Nothing changed.
 */
export class SpliceError extends Error {}

/**
 * `Transport.startTLS` was refused by the host: the connection's
 * `[[listen]]` or `[[connect]]` entry has no `tls` table with
 * `start-tls = true`, or the connection is already encrypted, already
 * starting TLS, spliced or closing. Nothing changed; `message` is the
 * host's reason.
 */
export class StartTLSError extends Error {}

// The message of a WIT `result` error thrown by an import: ComponentizeJS
// throws an Error whose `payload` is the error value.
function hostError(e) {
  if (typeof e === 'string') return e;
  if (e != null && typeof e === 'object' && 'payload' in e) return String(e.payload);
  return null;
}

const REASON_TYPES = { done: ConnectionDone, lost: ConnectionLost, failed: ConnectError };

/**
 * Why a connection ended, or why an attempt never became one: the small
 * cousin of Twisted's `Failure`. `kind` is `'done'`, `'lost'` or `'failed'`;
 * `message` is the host's explanation (empty for `done`); `value` is the
 * matching error (`ConnectionDone`, `ConnectionLost`, `ConnectError`) and
 * `type` its class.
 */
export class Reason {
  constructor(kind, message = '') {
    const type = REASON_TYPES[kind];
    if (!type) throw new TypeError(`reason kind must be done, lost or failed, not ${kind}`);
    this.kind = kind;
    this.message = message;
    this.value = new type(this.toString());
  }

  get type() {
    return this.value.constructor;
  }

  /** True for a clean close (`ConnectionDone`). */
  get clean() {
    return this.kind === 'done';
  }

  /** Twisted's `Failure.check`: the first of `types` that `value` is an instance of, or null. */
  check(...types) {
    return types.find((t) => this.value instanceof t) ?? null;
  }

  /** Twisted's `Failure.getErrorMessage`. */
  getErrorMessage() {
    return this.toString();
  }

  toString() {
    if (this.kind === 'done') return 'Connection was closed cleanly.';
    if (this.kind === 'lost') return `Connection was lost: ${this.message}`;
    return `Connection failed: ${this.message}`;
  }
}

/**
 * Bytes as the SDK takes them: a Uint8Array as it is, an ArrayBuffer or
 * view over the same memory, a string as UTF-8. Throws a TypeError for
 * anything else. (Used by the transport, `basic.js` and `testing.js`.)
 *
 * @param {Uint8Array|ArrayBuffer|ArrayBufferView|string} data
 * @returns {Uint8Array}
 */
export function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (typeof data === 'string') return encoder.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('wants a Uint8Array, an ArrayBuffer(View) or a string (sent as UTF-8)');
}

// A `list<u8>` from the bindings (a Uint8Array in ComponentizeJS) as a Uint8Array.
const asBytes = (b) => (b instanceof Uint8Array ? b : Uint8Array.from(b));

/**
 * ComponentizeJS's `tls-info` record as the SDK's plain object:
 * `{ version, cipherSuite, serverName, alpnProtocol, peerCertificate }`,
 * with null (not undefined) for what is absent.
 */
function toTlsInfo(i) {
  const c = i.peerCertificate;
  return {
    version: i.version,
    cipherSuite: i.cipherSuite,
    serverName: i.serverName ?? null,
    alpnProtocol: i.alpnProtocol == null ? null : asBytes(i.alpnProtocol),
    peerCertificate: c == null ? null : { subject: c.subject, sha256: c.sha256, der: asBytes(c.der) },
  };
}

/**
 * The connection a protocol talks through: Twisted's `ITransport`.
 *
 * Every method returns at once. Writes are buffered by the host and flushed
 * in order after the current callback returns; no data is ever lost,
 * although the connection may close before it all gets through. After
 * `loseConnection`, `abortConnection` or the end of the connection, writes
 * are ignored.
 */
export class Transport {
  // Null once the connection ended and its handle was dropped.
  #raw;
  #lost = false;
  // The addresses, kept once asked for (they outlive the handle).
  #peer = null;
  #host = null;
  // Writes are dropped here, not sent to the host: after the end of the
  // connection, loseWriteConnection or splice.
  #mute = false;
  // The other transport of the splice: reads the host still delivers after
  // the splice (read before it took effect) are written there.
  #partner = null;

  constructor(raw) {
    this.#raw = raw;
    /** True once `loseConnection` or `abortConnection` was called. */
    this.disconnecting = false;
    /** True once `splice` handed this connection to the host. */
    this.spliced = false;
    this.producer = null;
  }

  /** Write bytes (a string is sent as UTF-8), in sequence, without blocking. */
  write(data) {
    const bytes = toBytes(data);
    if (!this.#mute) this.#raw.write(bytes);
  }

  /** Write each buffer in order, as one vectored write where the host can. */
  writeSequence(seq) {
    const bufs = Array.from(seq, toBytes);
    if (!this.#mute) this.#raw.writeSequence(bufs);
  }

  /** Close after writing all pending data; `connectionLost` follows with a clean reason. */
  loseConnection() {
    this.disconnecting = true;
    if (!this.#lost) this.#raw.loseConnection();
  }

  /** Close now, dropping pending data (a TCP reset); `connectionLost` follows with `lost`. */
  abortConnection() {
    this.disconnecting = true;
    if (!this.#lost) this.#raw.abortConnection();
  }

  /** The remote address: Twisted's `getPeer`. */
  getPeer() {
    if (this.#peer === null && this.#raw !== null) {
      const a = this.#raw.getPeer();
      this.#peer = new Address(a.host, a.port);
    }
    return this.#peer ?? new Address('', 0);
  }

  /** The local address: Twisted's `getHost`. */
  getHost() {
    if (this.#host === null && this.#raw !== null) {
      const a = this.#raw.getHost();
      this.#host = new Address(a.host, a.port);
    }
    return this.#host ?? new Address('', 0);
  }

  /**
   * Twisted's `registerProducer(producer, streaming = true)`: from now on the
   * host calls `producer.pauseProducing()` when this connection's output
   * buffer rises above its high-water mark, and `resumeProducing()` once it
   * drained. `producer` defaults to the protocol. Push producers only.
   *
   * `producer` may be another connection's `Transport`, as in Twisted's
   * portforward: `this.transport.registerProducer(this.peer.transport)`
   * stops reading from the peer as soon as a write takes this connection's
   * output above its high-water mark (the host does it within the write,
   * with no callback), and reads again once it drained.
   */
  registerProducer(producer = null, streaming = true) {
    if (!streaming) throw new TypeError('twill supports streaming (push) producers only');
    if (producer instanceof Transport) {
      this.producer = null;
      if (this.#raw !== null && producer.#raw !== null) this.#raw.registerProducerTransport(producer.#raw);
      return;
    }
    this.producer = producer;
    this.#raw?.registerProducer();
  }

  /** Stop the producer notifications: Twisted's `unregisterProducer`. */
  unregisterProducer() {
    this.producer = null;
    this.#raw?.unregisterProducer();
  }

  /**
   * Stop reading from this connection: Twisted's `ITransport.pauseProducing`
   * (a transport is a push producer). No `dataReceived` until
   * `resumeProducing`; the peer is slowed by TCP's flow control. Output and
   * closes are not affected.
   */
  pauseProducing() {
    if (!this.#lost) this.#raw.pauseProducing();
  }

  /** Start reading from this connection again: Twisted's `ITransport.resumeProducing`. */
  resumeProducing() {
    if (!this.#lost) this.#raw.resumeProducing();
  }

  /**
   * Close the write side after writing all pending data (a TCP half-close):
   * Twisted's `loseWriteConnection`. Reading goes on; later writes are
   * ignored. A protocol with `readConnectionLost` (and optionally
   * `writeConnectionLost`) hears of both halves (see `Protocol`).
   */
  loseWriteConnection() {
    this.#mute = true;
    if (!this.#lost) this.#raw.loseWriteConnection();
  }

  /**
   * Hand this connection and `other` (another `Transport` of this instance)
   * to the host, which relays bytes between them both ways from now on,
   * with backpressure and no more calls into the guest. Neither protocol
   * gets `dataReceived` again; each gets `connectionLost` when the pair
   * ends. Writes to either transport are ignored afterwards;
   * `loseConnection` or `abortConnection` on either ends the pair. Bytes the
   * host read before the splice took effect, but delivers afterwards (later
   * in the same batch, or in a later call), are not lost: the SDK writes
   * them to the other connection instead of calling `dataReceived`. Throws
   * `SpliceError` (changing nothing) if the host refuses.
   */
  splice(other) {
    if (!(other instanceof Transport)) throw new TypeError('splice() wants another Transport');
    if (this.#raw === null || other.#raw === null) throw new SpliceError('its connection has ended');
    try {
      this.#raw.splice(other.#raw);
    } catch (e) {
      const message = hostError(e);
      if (message === null) throw e;
      throw new SpliceError(message);
    }
    for (const t of [this, other]) {
      t.spliced = true;
      t.#mute = true;
    }
    this.#partner = other;
    other.#partner = this;
  }

  /**
   * What this connection's TLS handshake negotiated, or null on a plaintext
   * connection: `{ version, cipherSuite, serverName, alpnProtocol,
   * peerCertificate }`. `version` is `'TLSv1.3'` or `'TLSv1.2'`;
   * `cipherSuite` the IANA name (`'TLS13_AES_128_GCM_SHA256'`);
   * `serverName` the SNI name the client sent (on a client connection, the
   * name the server was verified against) or null; `alpnProtocol` the ALPN
   * protocol agreed (a `Uint8Array`, Twisted's `negotiatedProtocol`) or
   * null; `peerCertificate` as `getPeerCertificate` returns it.
   *
   * The host terminates TLS: the protocol reads and writes plaintext and
   * never holds a key. On a `[[listen]]` or `[[connect]]` with a `tls`
   * table the handshake is over before `connectionMade`; after `startTLS`,
   * this is null until its handshake completed (the next `dataReceived`
   * sees it).
   */
  tlsInfo() {
    const i = this.#raw?.tlsInfo();
    return i == null ? null : toTlsInfo(i);
  }

  /**
   * The peer's certificate, `{ subject, sha256, der }` (the subject's
   * distinguished name, the SHA-256 fingerprint of the DER as 64 lowercase
   * hex digits, the DER itself as a `Uint8Array`), if the connection is TLS
   * and the peer presented one; else null: Twisted's `getPeerCertificate`.
   */
  getPeerCertificate() {
    return this.tlsInfo()?.peerCertificate ?? null;
  }

  /**
   * Start TLS on this plaintext connection: Twisted's
   * `ITLSTransport.startTLS`, for STARTTLS protocols (SMTP, IMAP). Output
   * already written goes out in plaintext; then the host runs the
   * handshake, as the server on an accepted connection and as the client on
   * a `[[connect]]` one, with the certificates and settings of that entry's
   * `tls` table (there is no context factory to pass), and everything
   * written after this call goes out encrypted. Nothing is read during the
   * handshake; a failed one ends the connection (`connectionLost` with a
   * `lost` reason saying why). Throws `StartTLSError` (changing nothing) if
   * the host refuses.
   */
  startTLS() {
    if (this.#raw === null) throw new StartTLSError('its connection has ended');
    try {
      this.#raw.startTls();
    } catch (e) {
      const message = hostError(e);
      if (message === null) throw e;
      throw new StartTLSError(message);
    }
  }

  /**
   * @internal A read of this spliced connection that the host delivered
   * after the splice: write it to the partner's raw handle (the host accepts
   * it until its pump starts and sends it first), bypassing the mute.
   */
  _forward(data) {
    const partner = this.#partner;
    if (partner !== null && !partner.#lost) partner.#raw.write(data);
  }

  /** @internal Opt in to the half-close callbacks (the raw import). */
  _setHalfCloseable(on) {
    this.#raw.setHalfCloseable(on);
  }

  /** @internal The connection is gone: ignore writes from now on. */
  _connectionLost() {
    this.#lost = true;
    this.#mute = true;
    const partner = this.#partner;
    this.#partner = null;
    if (partner !== null && partner.#partner === this) partner.#partner = null;
  }

  /** @internal After `connectionLost` returned: drop the host's handle. */
  _release() {
    const raw = this.#raw;
    this.#raw = null;
    release(raw);
  }
}

/**
 * The protocol for one connection: Twisted's `Protocol`.
 *
 * The host calls `makeConnection` once, then `dataReceived` any number of
 * times, then `connectionLost` once. Override what you need.
 */
export class Protocol {
  constructor() {
    /** The factory that built this protocol (set by `Factory.buildProtocol`). */
    this.factory = null;
    /** The connection's `Transport`, set by `makeConnection`. */
    this.transport = null;
    /** True between `makeConnection` and `connectionLost`. */
    this.connected = false;
  }

  /** Twisted's `makeConnection`: keep the transport, then call `connectionMade`. */
  makeConnection(transport) {
    this.connected = true;
    this.transport = transport;
    this.connectionMade();
  }

  /** Called when the connection is made; the protocol may write or lose it from here. */
  connectionMade() {}

  /**
   * Called with a `Uint8Array` whenever data arrives, in chunks of any size.
   * It may be a view of a larger buffer the host delivered several
   * connections' reads in (as a Node.js `Buffer` may be a slice of a pool):
   * to keep bytes past the callback, keep a copy (`data.slice()`) or append
   * them to a buffer of your own (`basic.js` does), not the view, which
   * keeps the whole buffer alive.
   */
  dataReceived(data) {}

  /** Called once when the connection is shut down, with a `Reason`. */
  connectionLost(reason) {}

  /** Stop writing for now (only after `transport.registerProducer()`). */
  pauseProducing() {}

  /** Start writing again after `pauseProducing`. */
  resumeProducing() {}

  // Half-close, Twisted's IHalfCloseableProtocol, is opt-in: define
  //
  //     readConnectionLost() { ... }   // the peer's FIN arrived
  //     writeConnectionLost() { ... }  // optional: our FIN went out
  //
  // on a subclass. A protocol with `readConnectionLost` is made
  // half-closeable before `connectionMade` runs: the peer's FIN then calls
  // `readConnectionLost` instead of closing the connection, and the protocol
  // may keep writing until it calls `loseConnection` or
  // `transport.loseWriteConnection()`. Without it (this base class defines
  // neither), the peer's FIN closes the connection as always.
}

/**
 * Builds one protocol per connection: Twisted's `Factory`. Set `protocol`
 * to a `Protocol` subclass (or use `forProtocol`); `buildProtocol` makes a
 * new one with no arguments and sets its `factory`. Return null from
 * `buildProtocol` to refuse a connection.
 */
export class Factory {
  constructor() {
    this.protocol = null;
  }

  /** Twisted's `Factory.forProtocol`: a factory of this class that builds `protocol`. */
  static forProtocol(protocol, ...args) {
    const factory = new this(...args);
    factory.protocol = protocol;
    return factory;
  }

  /** Create a protocol for a connection with `addr` (an `Address`). */
  buildProtocol(addr) {
    if (!this.protocol) throw new TypeError(`${this.constructor.name}.protocol is not set`);
    const p = new this.protocol();
    p.factory = this;
    return p;
  }

  /**
   * The factory is about to be used: Twisted's `startFactory`. Once per
   * instance, before anything else: on a shared instance before its first
   * connection (the place to start a `LoopingCall`), on an instance of its
   * own before its connection's protocol is built.
   */
  startFactory() {}

  /**
   * The factory is done: Twisted's `stopFactory`. Once per instance, last:
   * at shutdown on a shared instance, after the connection on an instance
   * of its own.
   */
  stopFactory() {}
}

/** A factory for accepted connections: Twisted's `ServerFactory`. */
export class ServerFactory extends Factory {}

/**
 * A factory for outgoing connections: Twisted's `ClientFactory`. The host
 * calls `startedConnecting`, then either `clientConnectionFailed`, or
 * `buildProtocol` followed by the protocol's own callbacks and finally
 * `clientConnectionLost`.
 */
export class ClientFactory extends Factory {
  /** A connection attempt to `addr` (as configured) has started. */
  startedConnecting(addr) {}

  /** The attempt failed (`reason.kind === 'failed'`); no protocol was built. */
  clientConnectionFailed(reason) {}

  /** An established connection was lost, after the protocol's own `connectionLost`. */
  clientConnectionLost(reason) {}
}

// ---------------------------------------------------------------------------
// Reactor time.

/** The delayed call already ran: Twisted's `AlreadyCalled`. */
export class AlreadyCalled extends Error {}

/** The delayed call was cancelled: Twisted's `AlreadyCancelled`. */
export class AlreadyCancelled extends Error {}

// The calls not yet run, by token: [f, args, DelayedCall].
const calls = new Map();
let nextToken = 1n;

/**
 * The reactor's time, in seconds: Twisted's `reactor.seconds()`. Monotonic
 * and only meaningful in differences; under the host's test transport a
 * deterministic clock.
 */
export function seconds() {
  return hostReactor.seconds();
}

/**
 * Call `f(...args)` once, `delay` seconds from now: Twisted's
 * `reactor.callLater`. Returns the `DelayedCall`; dropping it does not
 * cancel the call. A delayed call runs on the instance that scheduled it,
 * never while another of its callbacks runs, under the same CPU budget; on
 * an instance of its own (one per connection) calls die with the
 * connection, on a shared instance they live as long as the instance.
 */
export function callLater(delay, f, ...args) {
  if (!(delay >= 0)) throw new RangeError(`callLater: delay must be >= 0, got ${delay}`);
  const token = nextToken++;
  const call = new DelayedCall(token);
  calls.set(token, [f, args, call]);
  call._raw = hostReactor.callLater(Number(delay), token);
  return call;
}

function fire(token) {
  const entry = calls.get(token);
  if (!entry) return;
  calls.delete(token);
  const [f, args, call] = entry;
  call.called = true;
  call._release();
  f(...args);
}

/** A call scheduled by `callLater`: Twisted's `IDelayedCall`. */
export class DelayedCall {
  constructor(token) {
    this._token = token;
    this._raw = null;
    this._time = 0;
    /** True once it ran. */
    this.called = false;
    /** True once it was cancelled. */
    this.cancelled = false;
  }

  /** When it is (or was) due, in `seconds()`: `getTime`. */
  getTime() {
    return this._raw === null ? this._time : this._raw.getTime();
  }

  /** Whether it neither ran nor was cancelled. */
  active() {
    return !(this.called || this.cancelled);
  }

  #check() {
    if (this.called) throw new AlreadyCalled();
    if (this.cancelled) throw new AlreadyCancelled();
  }

  /** Cancel it; throws `AlreadyCalled` / `AlreadyCancelled` if inactive. */
  cancel() {
    this.#check();
    this._raw.cancel();
    this.cancelled = true;
    calls.delete(this._token);
    this._release();
  }

  /** @internal It ran or was cancelled: keep its time, drop the host's handle. */
  _release() {
    const raw = this._raw;
    if (raw === null) return;
    this._time = raw.getTime();
    this._raw = null;
    release(raw);
  }

  /** Make it due `secondsFromNow` from now instead: `reset`. */
  reset(secondsFromNow) {
    this.#check();
    this._raw.reset(Number(secondsFromNow));
  }

  /** Make it due `secondsLater` later than it was: `delay`. */
  delay(secondsLater) {
    this.#check();
    this._raw.delay(Number(secondsLater));
  }
}

/**
 * Call `f(...args)` every `interval` seconds: Twisted's `task.LoopingCall`.
 * A tick that comes late runs once and the next is the grid point after
 * it: missed ticks are skipped, as Twisted does.
 */
export class LoopingCall {
  constructor(f, ...args) {
    this.f = f;
    this.args = args;
    this.running = false;
    this.interval = null;
    this.call = null;
    this._startTime = 0;
  }

  /** Start calling every `interval` seconds, first at once if `now`. */
  start(interval, now = true) {
    if (!(interval > 0)) throw new RangeError('LoopingCall: interval must be > 0');
    if (this.running) throw new Error('LoopingCall: already running');
    this.running = true;
    this.interval = interval;
    this._startTime = seconds();
    if (now) this._tick();
    else this._schedule(seconds());
  }

  /** Stop it: Twisted's `stop`. */
  stop() {
    if (!this.running) throw new Error('LoopingCall: not running');
    this.running = false;
    const call = this.call;
    this.call = null;
    call?.cancel();
  }

  _tick() {
    this.call = null;
    this.f(...this.args);
    if (this.running) this._schedule(seconds());
  }

  _schedule(now) {
    const ticks = Math.floor((now - this._startTime) / this.interval) + 1;
    const due = this._startTime + ticks * this.interval;
    this.call = callLater(Math.max(0, due - now), () => this._tick());
  }
}

/**
 * Close a connection after a period without activity: Twisted's
 * `policies.TimeoutMixin`, as a class mixin:
 * `class P extends TimeoutMixin(Protocol) { ... }`. Call `resetTimeout()`
 * on activity; override `timeoutConnection()` (default: lose the
 * connection).
 */
export const TimeoutMixin = (Base) =>
  class extends Base {
    /** Set (or with null, cancel) the timeout; returns the previous period. */
    setTimeout(period) {
      const prev = this.timeOut ?? null;
      this.timeOut = period;
      if (this._timeoutCall?.active()) this._timeoutCall.cancel();
      this._timeoutCall = null;
      if (period != null) {
        this._timeoutCall = callLater(period, () => {
          this._timeoutCall = null;
          this.timeoutConnection();
        });
      }
      return prev;
    }

    /** Activity: the period starts over (`resetTimeout`). */
    resetTimeout() {
      if (this.timeOut != null && this._timeoutCall?.active()) this._timeoutCall.reset(this.timeOut);
    }

    /** The period passed: by default, lose the connection. */
    timeoutConnection() {
      this.transport.loseConnection();
    }
  };

// ---------------------------------------------------------------------------
// Outgoing connections.

// The factories of connectTCP's attempts, by token, until their outcome ends
// them (clientConnectionFailed or clientConnectionLost).
const connectors = new Map();
let nextConnectToken = 1n;

/** What `connectTCP` returns: the attempt's `host` and `port`, as asked. */
export class Connector {
  constructor(host, port) {
    this.host = host;
    this.port = port;
  }
}

/**
 * Open a TCP connection to `host`:`port`: Twisted's
 * `reactor.connectTCP(host, port, factory, timeout)`. Returns a `Connector`.
 *
 * The outcome comes later, to `factory` (a `ClientFactory` or any object
 * with `buildProtocol(addr)`): `buildProtocol(addr)` once connected (`addr`
 * is the remote `Address`; the protocol lives on this same instance, so it
 * can hold the transport of the connection that asked, and relay), followed
 * by the protocol's own callbacks and then `clientConnectionLost(reason)`;
 * or `clientConnectionFailed(reason)` (refused, no such name, timed out
 * after `timeout` seconds, or not allowed by the plugin's `connect`
 * grants). Both hooks are optional. Unlike Twisted, neither
 * `startedConnecting` nor `startFactory` is called on `factory`.
 *
 * Throws `ConnectError` (and nothing follows) if the host cannot make the
 * attempt at all: the plugin has no `connect` grants in plugins.toml, the
 * host is empty or the port 0, or the instance has its plugin's
 * `max-outbound` connections open or opening already.
 */
export function connectTCP(host, port, factory, timeout = 30) {
  const token = nextConnectToken++;
  connectors.set(token, factory);
  try {
    hostReactor.connectTcp(host, port, Number(timeout), token);
  } catch (e) {
    connectors.delete(token);
    const message = hostError(e);
    if (message === null) throw e;
    throw new ConnectError(message);
  }
  return new Connector(host, port);
}

// The outcome for `token` ended its attempt: forget the factory, then call
// its optional hook `name`.
function endConnect(token, name, reason) {
  const factory = connectors.get(token);
  connectors.delete(token);
  factory?.[name]?.(toReason(reason));
}

// ---------------------------------------------------------------------------
// Glue between ComponentizeJS's bindings and the classes above. Not API.

function toReason(r) {
  return new Reason(r.tag, r.val ?? '');
}

/** The guest side of one exported `protocol` resource. */
class ProtocolExport {
  #protocol;
  #transport = null;

  constructor(protocol) {
    this.#protocol = protocol;
  }

  makeConnection(raw) {
    this.#transport = new Transport(raw);
    // Twisted's IHalfCloseableProtocol: opted in by defining
    // readConnectionLost, before the protocol can act.
    if (typeof this.#protocol.readConnectionLost === 'function') this.#transport._setHalfCloseable(true);
    this.#protocol.makeConnection(this.#transport);
  }

  /** @internal The half-close export's calls: `readConnectionLost` / `writeConnectionLost`. */
  _halfClose(name) {
    this.#protocol[name]?.();
  }

  dataReceived(data) {
    this.#deliver(data);
  }

  // Once spliced, reads still delivered (read before the splice took effect)
  // go to the partner connection, not to the protocol.
  #deliver(data) {
    const t = this.#transport;
    if (t?.spliced) t._forward(data);
    else this.#protocol.dataReceived(data);
  }

  /**
   * A chunk of a batch: skipped if an earlier chunk's callback closed it
   * (the host would not have delivered it); spliced is not closed, so it
   * goes to the partner.
   */
  _batchReceived(data) {
    if (!this.#transport?.disconnecting) this.#deliver(data);
  }

  connectionLost(reason) {
    const t = this.#transport;
    t?._connectionLost();
    try {
      this.#protocol.connected = false;
      this.#protocol.connectionLost(toReason(reason));
    } finally {
      t?._release();
    }
  }

  #producer() {
    return this.#transport?.producer ?? this.#protocol;
  }

  pauseProducing() {
    this.#producer().pauseProducing();
  }

  resumeProducing() {
    this.#producer().resumeProducing();
  }
}

function asFactory(f, role) {
  if (f == null) return null;
  if (typeof f === 'function') {
    if (f.prototype instanceof Protocol) return Factory.forProtocol(f);
    throw new TypeError(`serve({ ${role} }) wants a factory instance, not the class ${f.name}`);
  }
  if (typeof f.buildProtocol !== 'function') {
    throw new TypeError(`serve({ ${role} }) wants an object with buildProtocol(addr)`);
  }
  return f;
}

function wrap(p) {
  return p == null ? undefined : new ProtocolExport(p);
}

/**
 * The component's exports for `server` and/or `client` (factory instances,
 * or `Protocol` subclasses, which get a `Factory`). A role left out refuses
 * every connection. Export the result under these seven names (`batch`
 * delivers several connections' reads in one call; the SDK turns it back
 * into `dataReceived` calls; `reactorCalls` fires delayed calls and the
 * factories' `startFactory` / `stopFactory`; `outboundFactory` routes the
 * outcomes of `connectTCP` to its factories; `halfClose` calls
 * `readConnectionLost` / `writeConnectionLost`):
 *
 *     export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } =
 *       serve({ server, client });
 */
export function serve({ server = null, client = null } = {}) {
  server = asFactory(server, 'server');
  client = asFactory(client, 'client');
  return {
    protocol: { Protocol: ProtocolExport },
    batch: {
      dataReceived(chunks, data) {
        let offset = 0;
        for (const { protocol, len } of chunks) {
          // A view, not a copy. A copy per read is garbage that waits for
          // SpiderMonkey's collector, which does not know the plugin's
          // `memory` limit: a shared echo under 10 clients of 16 KiB bulk
          // filled 96 and 128 MiB within seconds and faulted in the host's
          // allocation for the next call; with views its memory stays at
          // about 72 MiB. The view keeps the call's buffer alive only while
          // the protocol keeps it (see `Protocol.dataReceived`).
          protocol._batchReceived(data.subarray(offset, offset + len));
          offset += len;
        }
      },
    },
    reactorCalls: {
      timerFired(token) {
        fire(token);
      },
      startFactory() {
        server?.startFactory?.();
        client?.startFactory?.();
      },
      stopFactory() {
        server?.stopFactory?.();
        client?.stopFactory?.();
      },
    },
    serverFactory: {
      buildProtocol(addr) {
        return server ? wrap(server.buildProtocol(new Address(addr.host, addr.port))) : undefined;
      },
    },
    clientFactory: {
      startedConnecting(addr) {
        client?.startedConnecting?.(new Address(addr.host, addr.port));
      },
      buildProtocol(addr) {
        return client ? wrap(client.buildProtocol(new Address(addr.host, addr.port))) : undefined;
      },
      clientConnectionFailed(reason) {
        client?.clientConnectionFailed?.(toReason(reason));
      },
      clientConnectionLost(reason) {
        client?.clientConnectionLost?.(toReason(reason));
      },
    },
    outboundFactory: {
      buildProtocol(token, addr) {
        const factory = connectors.get(token);
        return factory ? wrap(factory.buildProtocol(new Address(addr.host, addr.port))) : undefined;
      },
      clientConnectionFailed(token, reason) {
        endConnect(token, 'clientConnectionFailed', reason);
      },
      clientConnectionLost(token, reason) {
        endConnect(token, 'clientConnectionLost', reason);
      },
    },
    halfClose: {
      readConnectionLost(protocol) {
        protocol._halfClose('readConnectionLost');
      },
      writeConnectionLost(protocol) {
        protocol._halfClose('writeConnectionLost');
      },
    },
  };
}
