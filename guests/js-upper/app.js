// A line protocol for Twill, on the SDK's LineReceiver (the project
// `twill new js NAME` writes starts from this file).
//
// Each line the client sends gets one line back: PING gets PONG, QUIT gets
// BYE and the connection closes, anything else comes back in upper case.
// Lines end with \r\n and may be up to 16384 bytes long (Twisted's
// LineReceiver defaults); a longer one closes the connection.
//
// The SDK is imported by relative path into node_modules: ComponentizeJS
// resolves only relative module paths when it builds the component.

import { Factory, serve } from './node_modules/twill-guest/twill.js';
import { LineReceiver } from './node_modules/twill-guest/basic.js';

const PING = new TextEncoder().encode('PING');
const QUIT = new TextEncoder().encode('QUIT');

const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** One connection. */
export class Commands extends LineReceiver {
  lineReceived(line) {
    if (same(line, PING)) {
      this.sendLine('PONG');
    } else if (same(line, QUIT)) {
      this.sendLine('BYE');
      this.transport.loseConnection();
    } else {
      // ASCII upper case, byte for byte.
      this.sendLine(line.map((b) => (b >= 0x61 && b <= 0x7a ? b - 0x20 : b)));
    }
  }
}

export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({
  server: Factory.forProtocol(Commands),
});
