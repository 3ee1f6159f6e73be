// The framing helpers (basic.js) against the shared vectors
// (guest-sdk/test-vectors/basic.json, which Twisted's own
// twisted.protocols.basic passes: check_twisted.py), through every chunking
// of every case, plus what the vectors cannot say: linear time, and the
// helpers' smaller methods.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';

import {
  Int16StringReceiver,
  Int32StringReceiver,
  Int8StringReceiver,
  IntNStringReceiver,
  LineReceiver,
  NetstringReceiver,
  StringTooLongError,
} from '../basic.js';
import { StringTransport, connect } from '../testing.js';

const VECTORS = JSON.parse(readFileSync(new URL('../../test-vectors/basic.json', import.meta.url), 'utf8'));

/** A vector byte string: a latin-1 string, or a list of parts. */
function asBytes(v) {
  if (typeof v === 'string') {
    const out = new Uint8Array(v.length);
    for (let i = 0; i < v.length; i++) {
      const c = v.charCodeAt(i);
      if (c > 0xff) throw new RangeError(`not a byte: U+${c.toString(16)}`);
      out[i] = c;
    }
    return out;
  }
  const parts = v.map((part) => (typeof part === 'string' ? asBytes(part) : asBytes(part.repeat.repeat(part.count))));
  return concat(parts);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Bytes as a latin-1 string: one character a byte, for comparisons. */
function latin1(b) {
  let s = '';
  for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode.apply(null, b.subarray(i, i + 8192));
  return s;
}

/** Every way the vectors' rule cuts `data` into dataReceived calls (check_twisted.py's chunkings). */
function* chunkings(data) {
  const n = data.length;
  if (n === 0) {
    yield [data];
    return;
  }
  if (n <= 12) {
    for (let mask = 0; mask < 1 << (n - 1); mask++) {
      const pieces = [];
      let start = 0;
      for (let i = 1; i < n; i++) {
        if (mask & (1 << (i - 1))) {
          pieces.push(data.slice(start, i));
          start = i;
        }
      }
      pieces.push(data.slice(start));
      yield pieces;
    }
    return;
  }
  const sizes = n <= 512 ? Array.from({ length: n }, (_, i) => i + 1) : [...new Set([1, 2, 3, 7, 64, 1000, 4096, n])].sort((a, b) => a - b);
  for (const k of sizes) {
    const pieces = [];
    for (let i = 0; i < n; i += k) pieces.push(data.slice(i, i + k));
    yield pieces;
  }
  const cuts =
    n <= 512
      ? Array.from({ length: n - 1 }, (_, i) => i + 1)
      : [...new Set(Array.from({ length: 16 }, (_, j) => Math.max(1, Math.floor((n * (j + 1)) / 17))))].sort((a, b) => a - b);
  for (const i of cuts) yield [data.slice(0, i), data.slice(i)];
}

/** Events with bytes as latin-1 strings; adjacent raw events merged unless the case has raw_length. */
function normalize(events, c) {
  const out = [];
  for (const e of events) {
    const ev = e.map((x) => (x instanceof Uint8Array ? latin1(x) : x));
    const prev = out[out.length - 1];
    if (ev[0] === 'raw' && prev?.[0] === 'raw' && !('raw_length' in c)) prev[1] += ev[1];
    else out.push(ev);
  }
  return out;
}

function expected(c) {
  return c.events.map((e) => (['line', 'raw', 'string'].includes(e[0]) ? [e[0], latin1(asBytes(e[1]))] : [...e]));
}

const BASES = {
  line: LineReceiver,
  int32: Int32StringReceiver,
  int16: Int16StringReceiver,
  int8: Int8StringReceiver,
  netstring: NetstringReceiver,
};

/** The vectors' fake transport: records ['lose'] the first time. */
class RecordingTransport extends StringTransport {
  constructor(events) {
    super();
    this.events = events;
  }

  loseConnection() {
    if (!this.disconnecting) this.events.push(['lose']);
    super.loseConnection();
  }
}

/** The test protocol of the vectors' "about", recording into `events`. */
function make(c, events) {
  const Base = BASES[c.kind];
  class P extends Base {
    rawBuf = new Uint8Array(0);

    record(...e) {
      if (this.transport.disconnecting) return false;
      events.push(e);
      return true;
    }

    lineReceived(line) {
      if (this.record('line', line)) this.act(c.on_line?.[latin1(line)], line, (d) => this.sendLine(d));
    }

    stringReceived(s) {
      if (this.record('string', s)) this.act(c.on_string?.[latin1(s)], s, (d) => this.sendString(d));
    }

    act(what, data, send) {
      if (what === 'raw') this.setRawMode();
      else if (what === 'lose') this.transport.loseConnection();
      else if (what === 'echo') send(data);
    }

    rawDataReceived(data) {
      const n = c.raw_length;
      if (n === undefined) {
        this.record('raw', data);
        return;
      }
      this.rawBuf = concat([this.rawBuf, data]);
      if (this.rawBuf.length >= n) {
        const body = this.rawBuf.slice(0, n);
        const rest = this.rawBuf.slice(n);
        this.rawBuf = new Uint8Array(0);
        this.record('raw', body);
        this.setLineMode(rest);
      }
    }

    lineLengthExceeded(line) {
      this.record('exceeded');
      return super.lineLengthExceeded(line);
    }

    lengthLimitExceeded(length) {
      this.record('exceeded', length);
      return super.lengthLimitExceeded(length);
    }
  }
  const p = new P();
  if ('delimiter' in c) p.delimiter = asBytes(c.delimiter);
  if ('max_length' in c) p.MAX_LENGTH = c.max_length;
  return p;
}

describe('the shared vectors (test-vectors/basic.json), every chunking', () => {
  for (const c of VECTORS.cases) {
    test(c.name, () => {
      const want = expected(c);
      const wantWritten = latin1(asBytes(c.written ?? ''));
      let runs = 0;
      for (const pieces of chunkings(asBytes(c.input))) {
        const events = [];
        const p = make(c, events);
        const t = connect(p, new RecordingTransport(events));
        for (const piece of pieces) p.dataReceived(piece);
        const got = normalize(events, c);
        const chunks = pieces.slice(0, 8).map((x) => x.length);
        assert.deepEqual(got, want, `events, chunked ${JSON.stringify(chunks)}${pieces.length > 8 ? '...' : ''}`);
        assert.equal(latin1(t.value()), wantWritten, `written, chunked ${JSON.stringify(chunks)}`);
        runs++;
      }
      assert.ok(runs > 0);
    });
  }
});

describe('the shared vectors: encode', () => {
  for (const [i, e] of VECTORS.encode.entries()) {
    const data = asBytes(e.data);
    test(`${i}: ${e.kind} of ${data.length} bytes${e.error ? ' is refused' : ''}`, () => {
      const p = make(e, []);
      const t = connect(p);
      const send = () => (e.kind === 'line' ? p.sendLine(data) : p.sendString(data));
      if (e.error) {
        assert.throws(send, StringTooLongError);
        assert.equal(t.value().length, 0);
      } else {
        send();
        assert.equal(latin1(t.value()), latin1(asBytes(e.frame)));
      }
    });
  }
});

// ---------------------------------------------------------------------------
// Linear time: one frame of n bytes, delivered one byte at a time.

const ONE = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));

/** Seconds to feed an n-byte payload's frame one byte at a time to a fresh `make()`. */
function feedOneByOne(make, frame, n) {
  const p = make();
  let got = null;
  p.lineReceived = p.stringReceived = (s) => {
    got = s;
  };
  connect(p);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < frame.length; i++) p.dataReceived(ONE[frame[i]]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  assert.equal(got?.length, n, 'the frame arrived whole');
  return secs;
}

const FRAMINGS = {
  'one huge line': {
    make: () => Object.assign(new LineReceiver(), { MAX_LENGTH: 32 << 20 }),
    frame: (n) => concat([new Uint8Array(n).fill(0x61), asBytes('\r\n')]),
  },
  'one huge Int32 string': {
    make: () => Object.assign(new Int32StringReceiver(), { MAX_LENGTH: 32 << 20 }),
    frame: (n) => concat([Uint8Array.of(n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255), new Uint8Array(n).fill(0x62)]),
  },
  'one huge netstring': {
    make: () => Object.assign(new NetstringReceiver(), { MAX_LENGTH: 32 << 20 }),
    frame: (n) => concat([asBytes(`${n}:`), new Uint8Array(n).fill(0x63), asBytes(',')]),
  },
};

describe('linear time, one byte at a time', () => {
  for (const [name, f] of Object.entries(FRAMINGS)) {
    test(`${name}: 4x the input takes < 10x the time (quadratic: 16x)`, () => {
      const best = (n) => {
        const frame = f.frame(n);
        let t = Infinity;
        for (let i = 0; i < 3; i++) t = Math.min(t, feedOneByOne(f.make, frame, n));
        return t;
      };
      best(64 << 10); // warm up the JIT
      const small = best(256 << 10);
      const big = best(1 << 20);
      const ratio = big / small;
      assert.ok(ratio < 10, `256 KiB: ${small.toFixed(4)} s, 1 MiB: ${big.toFixed(4)} s, ratio ${ratio.toFixed(1)}`);
    });
  }
});

// ---------------------------------------------------------------------------
// What the vectors do not cover.

const bytes = (s) => new TextEncoder().encode(s);
const text = (b) => new TextDecoder().decode(b);

class Lines extends LineReceiver {
  constructor() {
    super();
    this.lines = [];
    this.raw = [];
  }

  lineReceived(line) {
    this.lines.push(text(line));
  }

  rawDataReceived(data) {
    this.raw.push(text(data));
  }
}

describe('LineReceiver', () => {
  test('clearLineBuffer returns and empties what is not yet processed', () => {
    const p = new Lines();
    connect(p);
    p.dataReceived(bytes('one\r\ntw'));
    assert.equal(text(p.clearLineBuffer()), 'tw');
    assert.equal(p.clearLineBuffer().length, 0);
    p.dataReceived(bytes('o\r\n'));
    assert.deepEqual(p.lines, ['one', 'o']);
  });

  test('clearLineBuffer inside lineReceived drops the lines after it', () => {
    class P extends Lines {
      lineReceived(line) {
        super.lineReceived(line);
        if (text(line) === 'STOP') this.cleared = text(this.clearLineBuffer());
      }
    }
    const p = new P();
    connect(p);
    p.dataReceived(bytes('a\r\nSTOP\r\nb\r\nc'));
    assert.deepEqual(p.lines, ['a', 'STOP']);
    assert.equal(p.cleared, 'b\r\nc');
    p.dataReceived(bytes('d\r\n'));
    assert.deepEqual(p.lines, ['a', 'STOP', 'd']);
  });

  test('setLineMode(extra) outside dataReceived processes extra at once', () => {
    const p = new Lines();
    connect(p);
    p.setRawMode();
    p.dataReceived(bytes('body'));
    assert.deepEqual(p.raw, ['body']);
    p.setLineMode(bytes('x\r\ny\r\npartial'));
    assert.deepEqual(p.lines, ['x', 'y']);
    assert.equal(p.lineMode, true);
    p.dataReceived(bytes('\r\n'));
    assert.deepEqual(p.lines, ['x', 'y', 'partial']);
    p.setLineMode('z\r\n');
    assert.deepEqual(p.lines, ['x', 'y', 'partial', 'z']);
  });

  test('setRawMode inside lineReceived hands the rest of the buffer over raw', () => {
    class P extends Lines {
      lineReceived(line) {
        super.lineReceived(line);
        this.setRawMode();
      }
    }
    const p = new P();
    connect(p);
    p.dataReceived(bytes('head\r\nrest\r\nmore'));
    assert.deepEqual(p.lines, ['head']);
    assert.deepEqual(p.raw, ['rest\r\nmore']);
    p.dataReceived(bytes('!'));
    assert.deepEqual(p.raw, ['rest\r\nmore', '!']);
  });

  test('sendLine writes once: a string as UTF-8, then the delimiter', () => {
    const p = new Lines();
    const writes = [];
    const t = new StringTransport();
    t.write = (d) => writes.push(d);
    connect(p, t);
    p.sendLine('héllo');
    p.delimiter = bytes('\n');
    p.sendLine(bytes('x'));
    assert.deepEqual(writes.map(text), ['héllo\r\n', 'x\n']);
  });

  test('a string delimiter, changed between reads', () => {
    const p = new Lines();
    connect(p);
    p.delimiter = '\n';
    p.dataReceived(bytes('a\nb\r'));
    p.delimiter = '\r';
    p.dataReceived(bytes('c\r'));
    assert.deepEqual(p.lines, ['a', 'b', 'c']);
  });

  test('MAX_LENGTH as a class field, and lineLengthExceeded gets the whole buffer', () => {
    class P extends Lines {
      MAX_LENGTH = 3;

      lineLengthExceeded(line) {
        this.exceeded = text(line);
        return super.lineLengthExceeded(line);
      }
    }
    const p = new P();
    const t = connect(p);
    p.dataReceived(bytes('abc\r\nabcd\r\nnext\r\n'));
    assert.deepEqual(p.lines, ['abc']);
    assert.equal(p.exceeded, 'abcd\r\nnext\r\n');
    assert.equal(t.disconnecting, true);
  });

  test('a line a callback keeps is its own copy', () => {
    class Keep extends LineReceiver {
      kept = [];

      lineReceived(line) {
        this.kept.push(line);
      }
    }
    const p = new Keep();
    connect(p);
    for (let i = 0; i < 2000; i++) p.dataReceived(bytes(`line ${i}\r\n`.repeat(3)));
    assert.equal(p.kept.length, 6000);
    p.kept.forEach((line, i) => assert.equal(text(line), `line ${Math.floor(i / 3)}`));
  });

  test('nothing is delivered once the transport is disconnecting', () => {
    const p = new Lines();
    const t = connect(p);
    p.dataReceived(bytes('a\r\nb'));
    t.loseConnection();
    p.dataReceived(bytes('\r\nc\r\n'));
    assert.deepEqual(p.lines, ['a']);
  });
});

describe('IntNStringReceiver', () => {
  class Strings extends Int32StringReceiver {
    strings = [];

    stringReceived(s) {
      this.strings.push(text(s));
    }

    lengthLimitExceeded(length) {
      this.exceeded = length;
      super.lengthLimitExceeded(length);
    }
  }

  test('sendString too long for the prefix throws StringTooLongError and writes nothing', () => {
    for (const [Cls, max] of [
      [Int8StringReceiver, 255],
      [Int16StringReceiver, 65535],
    ]) {
      const p = new Cls();
      const t = connect(p);
      assert.throws(() => p.sendString(new Uint8Array(max + 1)), StringTooLongError);
      assert.equal(t.value().length, 0);
      p.sendString(new Uint8Array(max));
      assert.equal(t.value().length, Cls.prototype.prefixLength + max);
    }
  });

  test('prefixes are unsigned, both ways', () => {
    const p = new Strings();
    connect(p);
    p.dataReceived(Uint8Array.of(0x80, 0, 0, 0));
    assert.equal(p.exceeded, 0x80000000);
    const q = new Int16StringReceiver();
    const t = connect(q);
    q.sendString(new Uint8Array(0x9c40));
    assert.deepEqual([...t.value().subarray(0, 2)], [0x9c, 0x40]);
  });

  test('sendString takes a string as UTF-8, in one write', () => {
    const p = new Strings();
    const t = connect(p);
    p.sendString('é');
    assert.deepEqual([...t.value()], [0, 0, 0, 2, 0xc3, 0xa9]);
  });

  test('a prefix of another size: a subclass with prefixLength 3', () => {
    class Int24 extends IntNStringReceiver {
      strings = [];

      stringReceived(s) {
        this.strings.push(text(s));
      }
    }
    Int24.prototype.prefixLength = 3;
    const p = new Int24();
    const t = connect(p);
    p.dataReceived(Uint8Array.of(0, 0, 2, 0x68, 0x69));
    p.sendString('abc');
    assert.deepEqual(p.strings, ['hi']);
    assert.deepEqual([...t.value()], [0, 0, 3, 0x61, 0x62, 0x63]);
  });

  test('malformed input sets brokenPeer and loses the connection', () => {
    class P extends NetstringReceiver {
      stringReceived() {}
    }
    const p = new P();
    const t = connect(p);
    p.dataReceived(bytes('3:abc;'));
    assert.equal(p.brokenPeer, true);
    assert.equal(t.disconnecting, true);
  });
});
