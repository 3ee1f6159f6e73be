// Twisted's `twisted.protocols.portforward` as a Twill guest, in
// JavaScript: every connection accepted opens one to the backend and relays
// bytes both ways, with flow control (each side's transport is the other's
// producer) and half-close (one peer's FIN becomes a FIN to the other). The
// same behaviour as the Rust example, guests/portforward/src/lib.rs.
//
// Configured through the environment its plugin grants
// (`[plugins.NAME] env`):
// - BACKEND: `HOST:PORT` to forward to (the plugin's `connect` grants must
//   allow it);
// - SPLICE=1: once connected, hand both connections to the host
//   (`transport.splice`) instead of relaying in the guest;
// - TIMEOUT: the connect timeout in seconds (default 30).
//
// Reading the environment at run time: StarlingMonkey has no `process`
// (so no `process.env`), and the engine itself imports no
// `get-environment`, so this guest's world (guests/js-forward/wit) is
// Twill's `peer` plus `wasi:cli/environment`, and the module imports
// `getEnvironment` from it. It is called inside a callback, at the first
// use, never at the top level: ComponentizeJS evaluates the module at build
// time (Wizer) and the component starts from that snapshot, so whatever the
// top level read would be the build machine's, not the plugin's `env`.
//
// Build: scripts/build-polyglot-guests.sh, or, by hand:
//   node guest-sdk/js/build.mjs guests/js-forward/forward.js \
//     --wit guests/js-forward/wit --world forward -o js-forward.wasm

import { ClientFactory, ConnectError, Factory, Protocol, SpliceError, connectTCP, serve } from '../../guest-sdk/js/twill.js';
import { getEnvironment } from 'wasi:cli/environment@0.2.3';

// The plugin's environment, asked of the host at the first use (see above).
let env = null;
function getenv(name) {
  if (env === null) env = new Map(getEnvironment());
  return env.get(name);
}

/** Where to forward, from BACKEND: [host, port], or null. */
function backend() {
  const b = getenv('BACKEND');
  if (b === undefined) return null;
  const i = b.lastIndexOf(':');
  if (i < 0) return null;
  let host = b.slice(0, i);
  const port = b.slice(i + 1);
  if (host.startsWith('[')) host = host.slice(1);
  if (host.endsWith(']')) host = host.slice(0, -1);
  if (!/^[0-9]+$/.test(port) || Number(port) > 65535) return null;
  return [host, Number(port)];
}

function splice() {
  return getenv('SPLICE') === '1';
}

function timeout() {
  const t = getenv('TIMEOUT');
  const secs = t === undefined || t.trim() === '' ? NaN : Number(t);
  return Number.isFinite(secs) && secs > 0 ? secs : 30;
}

// Ends the other connection the way this one ended: cleanly after its
// output (Twisted's `portforward` always does this), or, if this one was
// reset or failed, with a reset, so a truncation never reaches the other
// peer as a clean close.
function closeLike(other, reason) {
  if (reason.clean) other.loseConnection();
  else other.abortConnection();
}

/** The accepted connection's protocol: Twisted's `ProxyServer`. */
class ProxyServer extends Protocol {
  constructor() {
    super();
    // The backend connection's transport, once it is made.
    this.peer = null;
  }

  connectionMade() {
    // Nothing is read until the backend connection is made.
    this.transport.pauseProducing();
    const target = backend();
    if (target === null) {
      console.error('portforward: BACKEND is not set to HOST:PORT');
      this.transport.loseConnection();
      return;
    }
    const [host, port] = target;
    try {
      connectTCP(host, port, new ProxyClientFactory(this), timeout());
    } catch (e) {
      if (!(e instanceof ConnectError)) throw e;
      console.error(`portforward: cannot connect to ${host}:${port}: ${e.message}`);
      this.transport.loseConnection();
    }
  }

  dataReceived(data) {
    this.peer?.write(data);
  }

  readConnectionLost() {
    this.peer?.loseWriteConnection();
  }

  connectionLost(reason) {
    const peer = this.peer;
    this.peer = null;
    if (peer !== null) closeLike(peer, reason);
  }
}

/** Builds the backend connection's protocol: Twisted's `ProxyClientFactory`. */
class ProxyClientFactory extends ClientFactory {
  constructor(server) {
    super();
    this.server = server;
  }

  buildProtocol(addr) {
    return new ProxyClient(this.server);
  }

  clientConnectionFailed(reason) {
    console.error(`portforward: ${reason}`);
    this.server.transport.loseConnection();
  }
}

/** The backend connection's protocol: Twisted's `ProxyClient`. */
class ProxyClient extends Protocol {
  constructor(server) {
    super();
    this.server = server;
  }

  connectionMade() {
    const server = this.server.transport;
    if (splice()) {
      try {
        server.splice(this.transport);
        return;
      } catch (e) {
        if (!(e instanceof SpliceError)) throw e;
        console.error(`portforward: splice refused (${e.message}); relaying instead`);
      }
    }
    this.server.peer = this.transport;
    // Each side pauses the other while its own output is backed up.
    this.transport.registerProducer(server);
    server.registerProducer(this.transport);
    server.resumeProducing();
  }

  dataReceived(data) {
    this.server.transport.write(data);
  }

  readConnectionLost() {
    this.server.transport.loseWriteConnection();
  }

  connectionLost(reason) {
    closeLike(this.server.transport, reason);
  }
}

export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({
  server: Factory.forProtocol(ProxyServer),
});
