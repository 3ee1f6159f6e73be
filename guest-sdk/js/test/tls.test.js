// Unit tests for TLS as the JavaScript SDK shows it, under plain Node:
// `transport.tlsInfo()`, `getPeerCertificate()` and `startTLS()` against a
// fake host transport, with the cases of the shared vectors in
// guest-sdk/test-vectors/tls.json (which the Rust and Python SDKs run too);
// and guests/js-starttls, its INFO line checked against the same vectors.
//
//   node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { Protocol, StartTLSError, Transport, serve } from '../twill.js';
import * as guest from '../../../guests/js-starttls/starttls.js';

const vectors = JSON.parse(readFileSync(new URL('../../test-vectors/tls.json', import.meta.url)));
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What ComponentizeJS throws when an import returns a `result`'s error. */
class ComponentError extends Error {
  constructor(value) {
    super(value);
    this.payload = value;
  }
}

/**
 * A vector's `host` record as ComponentizeJS lifts it: camelCase keys,
 * Uint8Array for `list<u8>`, undefined for none (`none` says which).
 */
function witTlsInfo(host, none = undefined) {
  if (host === null) return none;
  const c = host['peer-certificate'];
  const alpn = host['alpn-protocol'];
  return {
    version: host.version,
    cipherSuite: host['cipher-suite'],
    serverName: host['server-name'] ?? none,
    alpnProtocol: alpn === null ? none : Uint8Array.from(alpn),
    peerCertificate: c === null ? none : { subject: c.subject, sha256: c.sha256, der: Uint8Array.from(c.der) },
  };
}

// ComponentizeJS's disposer of an imported resource (as the SDK finds it).
const DISPOSE = Symbol.dispose ?? Symbol.for('dispose');

/**
 * What ComponentizeJS hands makeConnection: the imported resource. `tls` is
 * what `tlsInfo` returns; `startTlsError` makes `startTls` throw. Every
 * other call is recorded.
 */
function rawTransport({ tls, startTlsError = null } = {}) {
  const target = {
    calls: [],
    tls,
    startTlsError,
    tlsInfo() {
      return target.tls;
    },
    startTls() {
      target.calls.push(['startTls']);
      if (target.startTlsError !== null) throw new ComponentError(target.startTlsError);
    },
  };
  return new Proxy(target, {
    get(t, name) {
      if (name in t) return t[name];
      if (name === DISPOSE) return () => (t.dropped = true);
      assert.ok(!t.dropped, `${String(name)} on a dropped transport handle`);
      return (...args) => t.calls.push([name, ...args]);
    },
    set(t, name, value) {
      t[name] = value;
      return true;
    },
  });
}

/** A connection of `ProtocolClass` on `raw`, made through the exports: the protocol. */
function served(raw, ProtocolClass) {
  let made = null;
  class Kept extends ProtocolClass {
    constructor() {
      super();
      made = this;
    }
  }
  const { serverFactory } = serve({ server: Kept });
  serverFactory.buildProtocol({ host: '192.0.2.7', port: 40000 }).makeConnection(raw);
  return made;
}

/** The SDK's view as the vectors' `expect` writes it. */
function view(info) {
  if (info === null) return null;
  const c = info.peerCertificate;
  return {
    version: info.version,
    cipher_suite: info.cipherSuite,
    server_name: info.serverName,
    alpn_protocol: info.alpnProtocol === null ? null : decoder.decode(info.alpnProtocol),
    peer_certificate: c === null ? null : { subject: c.subject, sha256: c.sha256 },
  };
}

test('tls-info vectors', () => {
  for (const none of [undefined, null]) {
    for (const c of vectors.tls_info) {
      const t = served(rawTransport({ tls: witTlsInfo(c.host, none) }), Protocol).transport;
      const info = t.tlsInfo();
      assert.deepEqual(view(info), c.expect, c.name);
      const cert = t.getPeerCertificate();
      if (info === null) {
        assert.equal(cert, null, c.name);
        continue;
      }
      assert.deepEqual(cert, info.peerCertificate, c.name);
      const alpn = c.host['alpn-protocol'];
      assert.deepEqual(info.alpnProtocol, alpn === null ? null : Uint8Array.from(alpn), c.name);
      if (c.host['peer-certificate'] === null) assert.equal(cert, null, c.name);
      else {
        assert.ok(cert.der instanceof Uint8Array, c.name);
        assert.deepEqual(cert.der, Uint8Array.from(c.host['peer-certificate'].der), c.name);
      }
    }
  }
});

test('the starttls guest writes the INFO line of the vectors', () => {
  for (const c of vectors.tls_info) {
    const t = new Transport(rawTransport({ tls: witTlsInfo(c.host) }));
    assert.equal(guest.infoLine(t), c.info_line, c.name);
  }
});

test('bytes from the bindings in another form are Uint8Arrays', () => {
  const raw = rawTransport({
    tls: { version: 'TLSv1.3', cipherSuite: 'X', alpnProtocol: [104, 50], peerCertificate: { subject: '', sha256: '', der: [48, 0] } },
  });
  const info = new Transport(raw).tlsInfo();
  assert.deepEqual(info.alpnProtocol, encoder.encode('h2'));
  assert.deepEqual(info.peerCertificate.der, new Uint8Array([48, 0]));
  assert.equal(info.serverName, null);
});

test('tlsInfo asks the host each time', () => {
  // After startTLS, tlsInfo is null until the handshake completed: nothing
  // may be cached.
  const raw = rawTransport();
  const t = new Transport(raw);
  assert.equal(t.tlsInfo(), null);
  raw.tls = witTlsInfo(vectors.tls_info[1].host);
  assert.equal(t.tlsInfo().version, 'TLSv1.3');
});

test('start-tls vectors', () => {
  for (const c of vectors.start_tls) {
    const raw = rawTransport({ startTlsError: c.host_error });
    const t = served(raw, Protocol).transport;
    t.write('OK begin TLS\r\n');
    if (c.expect_error === null) assert.equal(t.startTLS(), undefined, c.name);
    else {
      assert.throws(
        () => t.startTLS(),
        (e) => e instanceof StartTLSError && e instanceof Error && e.message === c.expect_error,
        c.name,
      );
    }
    // Unchanged: the host saw the call once, and later writes reach it.
    t.write('after');
    assert.deepEqual(raw.calls, [['write', encoder.encode('OK begin TLS\r\n')], ['startTls'], ['write', encoder.encode('after')]], c.name);
    assert.equal(t.disconnecting, false, c.name);
  }
});

test('other errors from the import pass through', () => {
  const raw = rawTransport();
  raw.startTls = () => {
    throw new TypeError('trap');
  };
  assert.throws(() => new Transport(raw).startTLS(), TypeError);
});

/** guests/js-starttls driven through the SDK's exports; its console lines. */
function capture(f) {
  const lines = [];
  const log = console.log;
  console.log = (...args) => lines.push(args.join(' '));
  try {
    f();
  } finally {
    console.log = log;
  }
  return lines;
}

const writes = (raw) => decoder.decode(Buffer.concat(raw.calls.filter((c) => c[0] === 'write').map((c) => c[1])));

test('the starttls guest serves the commands', () => {
  const raw = rawTransport({ startTlsError: 'the connection is already encrypted' });
  const box = guest.serverFactory.buildProtocol({ host: '192.0.2.7', port: 40000 });
  box.makeConnection(raw);
  // Lines split across reads, ending in \r\n or a bare \n.
  for (const chunk of ['hel', 'lo\r\nINFO\n', 'STARTTLS\r', [10, 0xff, 120, 13, 10], 'QUIT\r\nlate\r\n']) {
    box.dataReceived(typeof chunk === 'string' ? encoder.encode(chunk) : Uint8Array.from(chunk));
  }
  assert.equal(
    writes(raw),
    'ECHO hello\r\nINFO tls=none\r\nOK begin TLS\r\nERR the connection is already encrypted\r\nECHO \ufffdx\r\nECHO late\r\n',
  );
  assert.ok(raw.calls.some((c) => c[0] === 'loseConnection'));
});

test('the starttls guest starts TLS after its plaintext reply', () => {
  const raw = rawTransport();
  const box = guest.serverFactory.buildProtocol({ host: '192.0.2.7', port: 40000 });
  box.makeConnection(raw);
  box.dataReceived(encoder.encode('STARTTLS\r\n'));
  assert.deepEqual(raw.calls, [['write', encoder.encode('OK begin TLS\r\n')], ['startTls']]);
  raw.tls = witTlsInfo(vectors.tls_info[3].host);
  box.dataReceived(encoder.encode('INFO\r\n'));
  assert.deepEqual(raw.calls.at(-1), ['write', encoder.encode(`${vectors.tls_info[3].info_line}\r\n`)]);
});

test('the starttls client prints what the Rust one does', () => {
  const raw = rawTransport();
  const lines = capture(() => {
    const box = guest.clientFactory.buildProtocol({ host: '127.0.0.1', port: 9 });
    box.makeConnection(raw);
    box.dataReceived(encoder.encode('OK begin TLS\r\n'));
    raw.tls = witTlsInfo(vectors.tls_info[4].host);
    box.dataReceived(encoder.encode('INFO from server\r\n'));
    box.connectionLost({ tag: 'done' });
    guest.clientFactory.clientConnectionFailed({ tag: 'failed', val: 'TLS handshake failed: expired' });
  });
  assert.deepEqual(lines, [
    'client connected: INFO tls=none',
    'client got: OK begin TLS',
    'client got: INFO from server',
    `client sees: ${vectors.tls_info[4].info_line}`,
    'client lost: done',
    'client failed: failed: TLS handshake failed: expired',
  ]);
  assert.deepEqual(
    raw.calls.map((c) => (c[0] === 'write' ? `write:${decoder.decode(c[1])}` : c[0])),
    ['write:STARTTLS\r\n', 'startTls', 'write:INFO\r\n', 'write:QUIT\r\n'],
  );
});

test('a refused starttls client says so and closes', () => {
  const raw = rawTransport({ startTlsError: 'the connection is closing' });
  const lines = capture(() => {
    const box = guest.clientFactory.buildProtocol({ host: '127.0.0.1', port: 9 });
    box.makeConnection(raw);
    box.dataReceived(encoder.encode('OK\r\n'));
    box.connectionLost({ tag: 'lost', val: 'reset by peer' });
  });
  assert.deepEqual(lines.slice(-2), ['client: cannot start TLS: the connection is closing', 'client lost: lost: reset by peer']);
  assert.deepEqual(raw.calls.at(-1), ['loseConnection']);
});
