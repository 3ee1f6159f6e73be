#!/usr/bin/env node
// Benchmark of the framing helpers (basic.js) under Node: each framing's
// stream delivered one byte at a time (the worst chunking: one
// dataReceived call per byte), at 1, 4 and 16 MiB. Time linear in the input
// shows as a 16 MiB / 4 MiB ratio near 4 (quadratic would be 16).
//
//   node guest-sdk/js/bench/basic.bench.mjs [--sizes 1,4,16]
//
// Prints a table, then a one-line JSON summary.

// The SDK imports the host's reactor, which testing.js makes resolvable
// under Node: it must load before basic.js.
const { connect } = await import('../testing.js');
const { Int32StringReceiver, LineReceiver, NetstringReceiver } = await import('../basic.js');

const MiB = 1 << 20;
const args = process.argv.slice(2);
const at = args.indexOf('--sizes');
const SIZES = (at >= 0 ? args[at + 1] : '1,4,16').split(',').map(Number);
const enc = new TextEncoder();

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * A receiver class counting what it gets. One class per case, made once:
 * a class per run would give the receivers' code a new object shape each
 * time and turn its inline caches megamorphic, which a guest (one class
 * per protocol) never sees.
 */
function counting(Base, max) {
  class P extends Base {
    frames = 0;
    bytes = 0;

    lineReceived(line) {
      this.frames++;
      this.bytes += line.length;
    }

    stringReceived(s) {
      this.frames++;
      this.bytes += s.length;
    }
  }
  if (max !== undefined) P.prototype.MAX_LENGTH = max;
  return P;
}

const CASES = [
  {
    name: 'LineReceiver, 64-byte lines',
    stream(n) {
      const line = enc.encode(`${'x'.repeat(62)}\r\n`);
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i += 64) out.set(line, i);
      return { data: out, frames: n / 64, bytes: (n / 64) * 62 };
    },
    make: counting(LineReceiver),
  },
  {
    name: 'LineReceiver, one line (MAX_LENGTH 32 MiB)',
    stream: (n) => ({ data: concat([new Uint8Array(n - 2).fill(0x61), enc.encode('\r\n')]), frames: 1, bytes: n - 2 }),
    make: counting(LineReceiver, 32 * MiB),
  },
  {
    name: 'Int32StringReceiver, one string',
    stream(n) {
      const len = n - 4;
      const head = Uint8Array.of(len >>> 24, (len >>> 16) & 255, (len >>> 8) & 255, len & 255);
      return { data: concat([head, new Uint8Array(len).fill(0x62)]), frames: 1, bytes: len };
    },
    make: counting(Int32StringReceiver, 32 * MiB),
  },
  {
    name: 'NetstringReceiver, one string',
    stream(n) {
      const len = n - `${n}:,`.length;
      return { data: concat([enc.encode(`${len}:`), new Uint8Array(len).fill(0x63), enc.encode(',')]), frames: 1, bytes: len };
    },
    make: counting(NetstringReceiver, 32 * MiB),
  },
];

const ONE = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));

function run(c, size) {
  const { data, frames, bytes } = c.stream(size);
  const p = new c.make();
  connect(p);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < data.length; i++) p.dataReceived(ONE[data[i]]);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (p.frames !== frames || p.bytes !== bytes) {
    throw new Error(`${c.name} at ${size} bytes: got ${p.frames} frames / ${p.bytes} bytes, want ${frames} / ${bytes}`);
  }
  return secs;
}

// Warm the JIT up on every path first.
for (const c of CASES) run(c, 256 << 10);

const results = [];
const ratios = {};
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);
console.log(`basic.js, one byte per dataReceived call; node ${process.version}`);
console.log(`${pad('framing', 44)} ${lpad('size', 7)} ${lpad('seconds', 9)} ${lpad('MiB/s', 8)} ${lpad('16/4', 6)}`);
for (const c of CASES) {
  const secs = {};
  for (const mib of SIZES) {
    const s = run(c, mib * MiB);
    secs[mib] = s;
    results.push({ framing: c.name, mib, seconds: Number(s.toFixed(4)), mibPerSecond: Number((mib / s).toFixed(2)) });
    const ratio = mib === 16 && secs[4] ? (s / secs[4]).toFixed(2) : '';
    if (ratio) ratios[c.name] = Number(ratio);
    console.log(`${pad(c.name, 44)} ${lpad(`${mib} MiB`, 7)} ${lpad(s.toFixed(3), 9)} ${lpad((mib / s).toFixed(2), 8)} ${lpad(ratio, 6)}`);
  }
}
console.log(JSON.stringify({ bench: 'guest-sdk/js basic.js, one byte per call', node: process.version, results, ratio16over4: ratios }));
