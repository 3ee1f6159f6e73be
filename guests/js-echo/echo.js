// The seed's echo server and echo client, as one component, in JavaScript.
//
// Twisted's classic pair, ported line for line (as guest-echo does in Rust):
//
// - Echo (server role, echoserv.py): writes back every byte it receives.
// - EchoClient (client role, echoclient.py): on connect it writes
//   `hello world`; on the first data it prints `Server said: <data>` and
//   loses the connection; when the connection ends it prints
//   `Connection lost`.
// - EchoFactory (the client's factory): prints `Connection failed - goodbye`
//   or `Connection lost - goodbye`.
//
// Build: scripts/build-polyglot-guests.sh, or, by hand:
//   node guest-sdk/js/build.mjs guests/js-echo/echo.js -o js-echo.wasm

import { ClientFactory, Factory, Protocol, serve } from '../../guest-sdk/js/twill.js';

const decoder = new TextDecoder();

/** The server: echo every byte back, as soon as it arrives. */
class Echo extends Protocol {
  dataReceived(data) {
    this.transport.write(data);
  }
}

/** The seed's client: say hello, print the echo, hang up. */
class EchoClient extends Protocol {
  connectionMade() {
    this.transport.write('hello world');
  }

  dataReceived(data) {
    console.log(`Server said: ${decoder.decode(data)}`);
    this.transport.loseConnection();
  }

  connectionLost(reason) {
    console.log('Connection lost');
  }
}

/** The seed's client factory: builds EchoClient and says goodbye. */
class EchoFactory extends ClientFactory {
  constructor() {
    super();
    this.protocol = EchoClient;
  }

  clientConnectionFailed(reason) {
    console.log('Connection failed - goodbye');
  }

  clientConnectionLost(reason) {
    console.log('Connection lost - goodbye');
  }
}

export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({
  server: Factory.forProtocol(Echo),
  client: new EchoFactory(),
});
