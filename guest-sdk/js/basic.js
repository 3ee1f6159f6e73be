// basic.js: framing for Twill protocols, as Twisted's twisted.protocols.basic.
//
// - `LineReceiver`: lines (and raw data, switching modes), as IRC, SMTP,
//   POP3, memcached or HTTP/1.x headers need.
// - `Int32StringReceiver`, `Int16StringReceiver`, `Int8StringReceiver`
//   (on `IntNStringReceiver`): strings with a big-endian unsigned length
//   prefix.
// - `NetstringReceiver`: netstrings (`5:hello,`).
//
//     import { LineReceiver } from './node_modules/twill-guest/basic.js';
//
//     class Chat extends LineReceiver {
//       lineReceived(line) {
//         this.sendLine(line);
//       }
//     }
//
// Each is a `Protocol` whose `dataReceived` splits the stream into the
// frames it carries and hands them, one call each, to `lineReceived`,
// `rawDataReceived` or `stringReceived`; Twisted's names, defaults
// (`delimiter`, `MAX_LENGTH`) and callbacks (`lineLengthExceeded`,
// `lengthLimitExceeded`) are kept. Data is a `Uint8Array`; what a callback
// gets is its own copy, so it may keep it.
//
// One deviation from Twisted, in every receiver: delivery stops as soon as
// `this.transport.disconnecting` is true (the protocol called
// `loseConnection` or `abortConnection`), in the call under way and in any
// later one. Twill's host delivers no data once a protocol closed its
// connection; Twisted's string receivers keep calling `stringReceived`.
//
// Every receiver takes time linear in its input however it is chunked: the
// unprocessed bytes live in one growable buffer with an offset of what was
// consumed (and, for lines, of how far the delimiter was searched), so a
// 16 MiB frame delivered one byte at a time is copied O(1) times, not once
// per byte as Twisted's `buffer += data` does.

import { Protocol, toBytes } from './twill.js';

const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);


// A buffer bigger than this is dropped when it empties and the next read is
// much smaller, so one huge frame does not pin its memory for the life of
// the connection.
const KEEP = 1 << 20;

/**
 * The unprocessed bytes of a receiver: `buf[start, end)`, in a Uint8Array
 * whose capacity doubles as it fills. Consumed bytes are reclaimed lazily:
 * when an append does not fit, the live bytes move to the front (when the
 * consumed ones are at least as many, so every byte moved was paid for by
 * one consumed) or into a buffer twice the size. `mark` is an offset that
 * moves with the data (`LineReceiver`: no delimiter starts before it).
 */
class ByteQueue {
  constructor() {
    this.buf = EMPTY;
    this.start = 0;
    this.end = 0;
    this.mark = 0;
  }

  push(data) {
    const n = data.length;
    if (n === 0) return;
    let buf = this.buf;
    let start = this.start;
    let end = this.end;
    if (start === end) {
      start = end = this.mark = 0;
      if (buf.length > KEEP && n * 4 < buf.length) buf = this.buf = EMPTY;
    }
    if (end + n > buf.length) {
      const live = end - start;
      if (live + n <= buf.length && start >= live) {
        buf.copyWithin(0, start, end);
      } else {
        let cap = buf.length < 256 ? 256 : buf.length * 2;
        while (cap < live + n) cap *= 2;
        const grown = new Uint8Array(cap);
        if (live > 0) grown.set(buf.subarray(start, end));
        buf = this.buf = grown;
      }
      this.mark = this.mark > start ? this.mark - start : 0;
      end = live;
      start = 0;
    }
    if (n < 16) {
      for (let i = 0; i < n; i++) buf[end + i] = data[i];
    } else {
      buf.set(data, end);
    }
    this.start = start;
    this.end = end + n;
  }

  /** Everything unprocessed, as a copy; the queue is emptied. */
  takeAll() {
    const out = this.start === this.end ? new Uint8Array(0) : this.buf.slice(this.start, this.end);
    this.start = this.end = this.mark = 0;
    return out;
  }

  /** Drop everything unprocessed. */
  clear() {
    this.start = this.end = this.mark = 0;
  }
}

/**
 * Where `d` (not empty) first starts in `buf[from, end)`, or -1: indexOf on
 * its first byte, then a check of the rest.
 */
function find(buf, from, end, d) {
  const dl = d.length;
  const last = end - dl;
  if (from > last) return -1;
  const d0 = d[0];
  if (last - from < 32) {
    outer: for (let i = from; i <= last; i++) {
      if (buf[i] !== d0) continue;
      for (let k = 1; k < dl; k++) if (buf[i + k] !== d[k]) continue outer;
      return i;
    }
    return -1;
  }
  // Bounded to the candidates: the bytes past `end` are stale.
  const hay = buf.subarray(0, last + 1);
  let i = hay.indexOf(d0, from);
  while (i !== -1) {
    let k = 1;
    while (k < dl && buf[i + k] === d[k]) k++;
    if (k === dl) return i;
    i = hay.indexOf(d0, i + 1);
  }
  return -1;
}

const closing = (p) => {
  const t = p.transport;
  return t != null && t.disconnecting === true;
};

/**
 * A protocol that receives lines and/or raw data, depending on mode:
 * Twisted's `LineReceiver`.
 *
 * In line mode, each line received (without its delimiter) becomes a call
 * to `lineReceived`. In raw mode, each chunk of data becomes a call to
 * `rawDataReceived`. `setLineMode` and `setRawMode` switch between the
 * two. This suits line-oriented protocols such as IRC, SMTP, POP3 or
 * HTTP/1.x (raw mode for a body).
 *
 * `delimiter` (default `\r\n`) and `MAX_LENGTH` (default 16384, the longest
 * line accepted, without its delimiter) are read on every call: set them as
 * class fields (`MAX_LENGTH = 1 << 20;`), on the prototype, or on the
 * instance. A line longer than `MAX_LENGTH`, or `MAX_LENGTH` plus the
 * delimiter's length of data without a delimiter, calls
 * `lineLengthExceeded` (by default: lose the connection).
 *
 * As in Twisted, a truthy value returned by `lineReceived` or
 * `rawDataReceived` stops this call's processing (the rest stays
 * buffered) and is returned by `dataReceived`. (Twisted's
 * `_PauseableMixin` is left out, as in the Rust and Python SDKs: for flow
 * control, pause the transport.)
 *
 * Unlike Twisted, no line or raw data is delivered once
 * `this.transport.disconnecting` is true, not even lines already received
 * in the same read: Twill's host delivers no data after a close.
 */
export class LineReceiver extends Protocol {
  #q = new ByteQueue();
  #busy = false;
  // The `delimiter` the bytes were last searched for, and as bytes.
  #delimKey = null;
  #delim = EMPTY;

  constructor() {
    super();
    /** True in line mode (the default), false in raw mode: Twisted's `line_mode`. */
    this.lineMode = true;
  }

  /**
   * Clear buffered data.
   *
   * @returns {Uint8Array} All of the cleared buffered data: what was
   *   received but not yet delivered.
   */
  clearLineBuffer() {
    return this.#q.takeAll();
  }

  /**
   * Translates bytes into lines, and calls `lineReceived` (or
   * `rawDataReceived`, depending on mode). Called from inside one of those
   * callbacks (through `setLineMode(extra)`, say), it only appends `data`
   * to the buffer, which the running call then processes.
   *
   * @param {Uint8Array} data Bytes received, in a chunk of any size.
   * @returns What a callback returned to stop processing, if one did.
   */
  dataReceived(data) {
    if (!(data instanceof Uint8Array)) data = toBytes(data);
    const q = this.#q;
    if (this.#busy) {
      q.push(data);
      return undefined;
    }
    if (closing(this)) return undefined;
    this.#busy = true;
    try {
      if (!this.lineMode && q.start === q.end) {
        // Raw data with nothing buffered: handed over as it came.
        if (data.length === 0) return undefined;
        const why = this.rawDataReceived(data);
        if (why) return why;
      } else {
        q.push(data);
      }
      return this.#deliver();
    } finally {
      this.#busy = false;
    }
  }

  #deliver() {
    const q = this.#q;
    for (;;) {
      if (q.start === q.end || closing(this)) return undefined;
      if (!this.lineMode) {
        const why = this.rawDataReceived(q.takeAll());
        if (why) return why;
        continue;
      }
      const key = this.delimiter;
      if (key !== this.#delimKey) {
        const d = toBytes(key);
        if (d.length === 0) throw new RangeError('LineReceiver.delimiter cannot be empty');
        this.#delimKey = key;
        this.#delim = d;
        q.mark = q.start;
      }
      const d = this.#delim;
      const dl = d.length;
      const start = q.start;
      const i = find(q.buf, q.mark > start ? q.mark : start, q.end, d);
      if (i < 0) {
        if (q.end - start >= this.MAX_LENGTH + dl) return this.lineLengthExceeded(q.takeAll());
        // A delimiter may yet start in the last dl - 1 bytes.
        const m = q.end - dl + 1;
        q.mark = m > start ? m : start;
        return undefined;
      }
      if (i - start > this.MAX_LENGTH) return this.lineLengthExceeded(q.takeAll());
      const line = q.buf.slice(start, i);
      q.start = q.mark = i + dl;
      const why = this.lineReceived(line);
      if (why) return why;
    }
  }

  /**
   * Sets the line mode of this receiver: further data goes to
   * `lineReceived` rather than `rawDataReceived`.
   *
   * If you are calling this from a `rawDataReceived` callback, you can pass
   * in extra unhandled data (the bytes after a body, say), and that data
   * will be parsed for lines, after the callback returns. Called outside
   * any callback, `extra` is processed at once, as if received. Do not pass
   * extra data when calling this from within a `lineReceived` callback (it
   * would be queued after the data still buffered).
   *
   * @param {Uint8Array|string} [extra] Data to parse as received.
   */
  setLineMode(extra = EMPTY) {
    this.lineMode = true;
    if (extra != null && extra.length > 0) return this.dataReceived(extra);
    return undefined;
  }

  /**
   * Sets the raw mode of this receiver: further data, including what is
   * already buffered, goes to `rawDataReceived` rather than
   * `lineReceived`.
   */
  setRawMode() {
    this.lineMode = false;
  }

  /**
   * Override this for when raw data is received.
   *
   * @param {Uint8Array} data A chunk of data, of any size.
   */
  rawDataReceived(data) {
    throw new Error(`${this.constructor.name} must implement rawDataReceived to use raw mode`);
  }

  /**
   * Override this for when each line is received.
   *
   * @param {Uint8Array} line The line which was received with the
   *   delimiter removed.
   */
  lineReceived(line) {
    throw new Error(`${this.constructor.name} must implement lineReceived`);
  }

  /**
   * Sends a line to the other end of the connection: one write of the line
   * followed by the delimiter.
   *
   * @param {Uint8Array|string} line The line to send, not including the
   *   delimiter (a string is sent as UTF-8).
   */
  sendLine(line) {
    const data = toBytes(line);
    const d = toBytes(this.delimiter);
    const out = new Uint8Array(data.length + d.length);
    out.set(data, 0);
    out.set(d, data.length);
    this.transport.write(out);
  }

  /**
   * Called when the maximum line length has been reached. Override if it
   * needs to be dealt with in some special way; the default loses the
   * connection.
   *
   * @param {Uint8Array} line The remainder of the buffer, starting with (at
   *   least some part of) the line which is too long. This may be more than
   *   one line, or only the initial portion of the line. The buffer is
   *   empty afterwards.
   */
  lineLengthExceeded(line) {
    return this.transport.loseConnection();
  }
}

/** The line-ending delimiter: `\r\n` by default, a `Uint8Array` (a string is taken as UTF-8). */
LineReceiver.prototype.delimiter = Uint8Array.of(0x0d, 0x0a);
/** The longest line accepted, in bytes, without its delimiter: 16384 by default. */
LineReceiver.prototype.MAX_LENGTH = 16384;

/**
 * Raised (thrown) when trying to send a string too long for the length
 * prefix of a length-prefixed protocol: Twisted's `StringTooLongError`.
 * Nothing was written.
 */
export class StringTooLongError extends Error {}

/**
 * Generic class for length-prefixed protocols: Twisted's
 * `IntNStringReceiver`. Each string on the wire is preceded by its length,
 * a big-endian unsigned integer of `prefixLength` bytes, which subclasses
 * set (4, 2, 1: `Int32StringReceiver`, `Int16StringReceiver`,
 * `Int8StringReceiver`; anything up to 6 works).
 *
 * `MAX_LENGTH` (default 99999) is the longest string accepted; a longer
 * prefix calls `lengthLimitExceeded(length)` (by default: lose the
 * connection), leaving the data buffered.
 *
 * Unlike Twisted, no string is delivered once
 * `this.transport.disconnecting` is true, in this call or later ones:
 * Twill's host delivers no data after a close.
 */
export class IntNStringReceiver extends Protocol {
  #q = new ByteQueue();
  #busy = false;

  /**
   * Override this for notification when each complete string is received.
   *
   * @param {Uint8Array} string The complete string which was received with
   *   all framing (length prefix, etc) removed.
   */
  stringReceived(string) {
    throw new Error(`${this.constructor.name} must implement stringReceived`);
  }

  /**
   * Callback invoked when a length prefix greater than `MAX_LENGTH` is
   * received. The default implementation disconnects the transport.
   * Override this.
   *
   * @param {number} length The length prefix which was received.
   */
  lengthLimitExceeded(length) {
    this.transport.loseConnection();
  }

  /**
   * Convert int prefixed strings into calls to `stringReceived`. Called
   * again from inside `stringReceived`, it only buffers `data`.
   *
   * @param {Uint8Array} data Bytes received, in a chunk of any size.
   */
  dataReceived(data) {
    if (!(data instanceof Uint8Array)) data = toBytes(data);
    this.#q.push(data);
    if (this.#busy) return;
    this.#busy = true;
    try {
      this.#deliver();
    } finally {
      this.#busy = false;
    }
  }

  #deliver() {
    const q = this.#q;
    const p = this.prefixLength;
    for (;;) {
      if (closing(this)) return;
      const start = q.start;
      const avail = q.end - start;
      if (avail < p) return;
      const buf = q.buf;
      // Unsigned, big-endian: arithmetic, not the signed `<<`.
      let length = 0;
      for (let k = 0; k < p; k++) length = length * 256 + buf[start + k];
      if (length > this.MAX_LENGTH) {
        this.lengthLimitExceeded(length);
        return;
      }
      if (avail < p + length) return;
      const from = start + p;
      const string = buf.slice(from, from + length);
      q.start = from + length;
      this.stringReceived(string);
    }
  }

  /**
   * Send a prefixed string to the other end of the connection, in one
   * write.
   *
   * @param {Uint8Array|string} string The string to send (a string as
   *   UTF-8). The necessary framing (length prefix, etc) will be added.
   * @throws {StringTooLongError} If its length does not fit the prefix
   *   (2 ** (8 * prefixLength) bytes or more); nothing is written.
   */
  sendString(string) {
    const data = toBytes(string);
    const p = this.prefixLength;
    const n = data.length;
    const limit = 2 ** (8 * p);
    if (n >= limit) {
      throw new StringTooLongError(`Try to send ${n} bytes whereas maximum is ${limit - 1}`);
    }
    const out = new Uint8Array(p + n);
    for (let k = p - 1, v = n; k >= 0; k--, v = Math.floor(v / 256)) out[k] = v % 256;
    out.set(data, p);
    this.transport.write(out);
  }
}

/** The longest string accepted, in bytes: 99999 by default. */
IntNStringReceiver.prototype.MAX_LENGTH = 99999;

/**
 * A receiver for int32-prefixed strings: a string prefixed by 4 bytes, its
 * length as an unsigned 32-bit integer in network byte order. Twisted's
 * `Int32StringReceiver`.
 */
export class Int32StringReceiver extends IntNStringReceiver {}
/** The length of the prefix, in bytes. */
Int32StringReceiver.prototype.prefixLength = 4;

/**
 * A receiver for int16-prefixed strings: a string prefixed by 2 bytes, its
 * length as an unsigned 16-bit integer in network byte order. Twisted's
 * `Int16StringReceiver`.
 */
export class Int16StringReceiver extends IntNStringReceiver {}
/** The length of the prefix, in bytes. */
Int16StringReceiver.prototype.prefixLength = 2;

/**
 * A receiver for int8-prefixed strings: a string prefixed by 1 byte, its
 * length. Twisted's `Int8StringReceiver`.
 */
export class Int8StringReceiver extends IntNStringReceiver {}
/** The length of the prefix, in bytes. */
Int8StringReceiver.prototype.prefixLength = 1;

const COLON = 0x3a;
const COMMA = 0x2c;

/**
 * A protocol that sends and receives netstrings: Twisted's
 * `NetstringReceiver`. See https://cr.yp.to/proto/netstrings.txt: every
 * netstring starts with decimal digits giving the length of the data,
 * then a colon, the data, and a comma (`5:hello,`).
 *
 * Override `stringReceived`; send with `sendString`. `MAX_LENGTH` (default
 * 99999) is the longest string accepted. Malformed input loses the
 * connection and sets `brokenPeer` (Twisted's `NetstringParseError`
 * path): a length that does not start with a digit, is empty (`:`), has a
 * leading zero (`01:`), or exceeds `MAX_LENGTH` (found as soon as the
 * digits received so far do, before the colon arrives), or data not
 * followed by a comma. Nothing is parsed after that.
 *
 * Unlike Twisted, no string is delivered once
 * `this.transport.disconnecting` is true, in this call or later ones:
 * Twill's host delivers no data after a close.
 */
export class NetstringReceiver extends Protocol {
  #q = new ByteQueue();
  #busy = false;
  // Parsing the length (else the payload), its value and digits so far.
  #parsingLength = true;
  #length = 0;
  #digits = 0;

  constructor() {
    super();
    /** True once malformed input lost the connection. */
    this.brokenPeer = false;
  }

  /**
   * Override this for notification when each complete string is received.
   *
   * @param {Uint8Array} string The complete string which was received with
   *   all framing (length prefix, etc) removed.
   */
  stringReceived(string) {
    throw new Error(`${this.constructor.name} must implement stringReceived`);
  }

  /**
   * Sends a netstring: wraps up `string` by adding length information and
   * a trailing comma, and writes the result to the transport in one write.
   *
   * @param {Uint8Array|string} string The string to send (a string as
   *   UTF-8). The necessary framing (length prefix, etc) will be added.
   */
  sendString(string) {
    const data = toBytes(string);
    const head = encoder.encode(`${data.length}:`);
    const out = new Uint8Array(head.length + data.length + 1);
    out.set(head, 0);
    out.set(data, head.length);
    out[out.length - 1] = COMMA;
    this.transport.write(out);
  }

  /**
   * Receives some characters of a netstring. Whenever a complete netstring
   * is received, this method extracts its payload and calls
   * `stringReceived` to process it. Called again from inside
   * `stringReceived`, it only buffers `data`.
   *
   * @param {Uint8Array} data A chunk of data representing a (possibly
   *   partial) netstring.
   */
  dataReceived(data) {
    if (this.brokenPeer) return;
    if (!(data instanceof Uint8Array)) data = toBytes(data);
    this.#q.push(data);
    if (this.#busy) return;
    this.#busy = true;
    try {
      this.#deliver();
    } finally {
      this.#busy = false;
    }
  }

  #deliver() {
    const q = this.#q;
    for (;;) {
      if (closing(this)) return;
      if (this.#parsingLength) {
        const buf = q.buf;
        const end = q.end;
        const max = this.MAX_LENGTH;
        let s = q.start;
        let length = this.#length;
        let digits = this.#digits;
        for (;;) {
          if (s === end) {
            q.start = s;
            this.#length = length;
            this.#digits = digits;
            return;
          }
          const c = buf[s++];
          if (c === COLON) {
            if (digits === 0) return this.#parseError();
            break;
          }
          // Not a digit, or a digit after a leading zero.
          if (c < 0x30 || c > 0x39 || (digits === 1 && length === 0)) return this.#parseError();
          length = length * 10 + (c - 0x30);
          digits++;
          if (length > max) return this.#parseError();
        }
        q.start = s;
        this.#length = length;
        this.#parsingLength = false;
      }
      const start = q.start;
      const length = this.#length;
      if (q.end - start <= length) return;
      if (q.buf[start + length] !== COMMA) return this.#parseError();
      const string = q.buf.slice(start, start + length);
      q.start = start + length + 1;
      this.#parsingLength = true;
      this.#length = 0;
      this.#digits = 0;
      this.stringReceived(string);
    }
  }

  #parseError() {
    this.brokenPeer = true;
    this.#q.clear();
    this.transport.loseConnection();
  }
}

/** The longest string accepted, in bytes: 99999 by default. */
NetstringReceiver.prototype.MAX_LENGTH = 99999;
