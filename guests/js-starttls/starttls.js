// A STARTTLS line protocol, both halves, in JavaScript: what Twisted's
// `startTLS` is for (SMTP, IMAP, XMPP), reduced to four commands. The same
// protocol as the Rust guest, guests/starttls/src/lib.rs, line for line.
// Lines end in `\r\n` (a bare `\n` is accepted).
//
// Server (`[[listen]]` with `tls = { ..., start-tls = true }`):
// - `STARTTLS`: replies `OK begin TLS`, then starts TLS (the reply goes out
//   in plaintext, everything after encrypted); `ERR <why>` if refused.
// - `INFO`: replies `INFO tls=none`, or `INFO version=… cipher=… sni=…
//   alpn=… subject=… sha256=…` (`-` for what is absent).
// - `QUIT`: closes the connection.
// - any other line: replies `ECHO <line>`.
//
// Client (`[[connect]]` with `tls = { ..., start-tls = true }`): sends
// `STARTTLS`; on `OK`, starts TLS and sends `INFO` then `QUIT`; prints every
// line it receives (`client got: <line>`) and how the connection ended (the
// reason as `done`, `lost: <why>` or `failed: <why>`).
//
// Build: scripts/build-polyglot-guests.sh, or, by hand:
//   node guest-sdk/js/build.mjs guests/js-starttls/starttls.js -o js-starttls.wasm

import { ClientFactory, Factory, Protocol, StartTLSError, serve } from '../../guest-sdk/js/twill.js';

// As Rust's String::from_utf8_lossy: invalid UTF-8 becomes U+FFFD, and a
// byte order mark is kept, not skipped.
const decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/** One side's line buffer. */
export class Lines {
  constructor() {
    this.buf = new Uint8Array(0);
  }

  /** Appends `data`; returns the complete lines, without their endings. */
  feed(data) {
    const buf = new Uint8Array(this.buf.length + data.length);
    buf.set(this.buf);
    buf.set(data, this.buf.length);
    const out = [];
    let start = 0;
    for (let i = buf.indexOf(10); i >= 0; i = buf.indexOf(10, start)) {
      const end = i > start && buf[i - 1] === 13 ? i - 1 : i;
      out.push(decoder.decode(buf.subarray(start, end)));
      start = i + 1;
    }
    this.buf = buf.slice(start);
    return out;
  }
}

/** `INFO`'s reply. */
export function infoLine(transport) {
  const i = transport.tlsInfo();
  if (i === null) return 'INFO tls=none';
  const alpn = i.alpnProtocol === null ? '-' : decoder.decode(i.alpnProtocol);
  const c = i.peerCertificate;
  const [subject, sha256] = c === null ? ['-', '-'] : [c.subject.replaceAll(' ', ''), c.sha256];
  return `INFO version=${i.version} cipher=${i.cipherSuite} sni=${i.serverName ?? '-'} alpn=${alpn} subject=${subject} sha256=${sha256}`;
}

/** How a connection ended, for the client's lines. */
function show(reason) {
  return reason.kind === 'done' ? 'done' : `${reason.kind}: ${reason.message}`;
}

/** The server side. */
class Server extends Protocol {
  constructor() {
    super();
    this.lines = new Lines();
  }

  dataReceived(data) {
    const t = this.transport;
    for (const line of this.lines.feed(data)) {
      if (line === 'STARTTLS') {
        // The reply is queued first, so it goes in plaintext.
        t.write('OK begin TLS\r\n');
        try {
          t.startTLS();
        } catch (e) {
          if (!(e instanceof StartTLSError)) throw e;
          t.write(`ERR ${e.message}\r\n`);
          continue;
        }
        // Lines sent after STARTTLS in the same plaintext are dropped, not
        // answered inside TLS (CVE-2011-0411).
        this.lines = new Lines();
        return;
      } else if (line === 'INFO') {
        t.write(`${infoLine(t)}\r\n`);
      } else if (line === 'QUIT') {
        t.loseConnection();
      } else {
        t.write(`ECHO ${line}\r\n`);
      }
    }
  }
}

/** The client side. */
class Client extends Protocol {
  constructor() {
    super();
    this.lines = new Lines();
  }

  connectionMade() {
    console.log(`client connected: ${infoLine(this.transport)}`);
    this.transport.write('STARTTLS\r\n');
  }

  dataReceived(data) {
    const t = this.transport;
    for (const line of this.lines.feed(data)) {
      console.log(`client got: ${line}`);
      if (line.startsWith('OK')) {
        try {
          t.startTLS();
        } catch (e) {
          if (!(e instanceof StartTLSError)) throw e;
          console.log(`client: cannot start TLS: ${e.message}`);
          t.loseConnection();
          continue;
        }
        t.write('INFO\r\n');
        t.write('QUIT\r\n');
        this.lines = new Lines();
        return;
      } else if (line.startsWith('INFO')) {
        console.log(`client sees: ${infoLine(t)}`);
      }
    }
  }

  connectionLost(reason) {
    console.log(`client lost: ${show(reason)}`);
  }
}

/** Builds a `Client` for every connection. */
class Clients extends ClientFactory {
  constructor() {
    super();
    this.protocol = Client;
  }

  clientConnectionFailed(reason) {
    console.log(`client failed: ${show(reason)}`);
  }
}

export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({
  server: Factory.forProtocol(Server),
  client: new Clients(),
});
