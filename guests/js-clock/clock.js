// Reactor time in JavaScript: the test kit's timer commands, for the host's
// real-socket timer tests (host/tests/timers.rs with TWILL_CLOCK_WASM).
//
// Newline-terminated commands: `later MS TEXT` (callLater that writes
// TEXT), `every MS` (a LoopingCall writing `tick N`, first at once) and
// `stop`, `timeout MS` (TimeoutMixin: lose the connection after MS ms of
// silence), `echo TEXT`.
//
// Build: scripts/build-polyglot-guests.sh.
import { Factory, LoopingCall, Protocol, TimeoutMixin, callLater, serve } from '../../guest-sdk/js/twill.js';

const decoder = new TextDecoder();

class Clock extends TimeoutMixin(Protocol) {
  constructor() {
    super();
    this.buf = '';
    this.loop = null;
    this.ticks = 0;
  }

  dataReceived(data) {
    this.resetTimeout();
    this.buf += decoder.decode(data);
    let i;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      this.command(line);
    }
  }

  writeLine(text) {
    this.transport.write(`${text}\n`);
  }

  command(line) {
    const sp = line.indexOf(' ');
    const word = sp < 0 ? line : line.slice(0, sp);
    const rest = sp < 0 ? '' : line.slice(sp + 1);
    if (word === 'later') {
      const j = rest.indexOf(' ');
      callLater(Number(rest.slice(0, j)) / 1000, (t) => this.writeLine(t), rest.slice(j + 1));
    } else if (word === 'every') {
      this.loop = new LoopingCall(() => this.writeLine(`tick ${++this.ticks}`));
      this.loop.start(Number(rest) / 1000);
    } else if (word === 'stop') {
      if (this.loop?.running) this.loop.stop();
      this.writeLine('stopped');
    } else if (word === 'timeout') {
      this.setTimeout(Number(rest) / 1000);
    } else if (word === 'echo') {
      this.writeLine(rest);
    }
  }

  connectionLost(reason) {
    if (this.loop?.running) this.loop.stop();
    this.setTimeout(null);
  }
}

export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({
  server: Factory.forProtocol(Clock),
});
