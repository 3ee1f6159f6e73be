"""Reactor time in Python: the test kit's timer commands, for the host's
real-socket timer tests (host/tests/timers.rs with TWILL_CLOCK_WASM).

Newline-terminated commands:

- ``later MS TEXT``: ``call_later`` that writes ``TEXT``;
- ``every MS``: a ``LoopingCall`` writing ``tick N`` (first at once);
  ``stop`` stops it and writes ``stopped``;
- ``timeout MS``: ``TimeoutMixin`` loses the connection after MS ms of
  silence;
- ``echo TEXT``: writes ``TEXT``.

Build: scripts/build-polyglot-guests.sh.
"""

from twill import Factory, Protocol, serve
from twill.reactor import LoopingCall, TimeoutMixin, call_later


class Clock(Protocol, TimeoutMixin):
    def __init__(self):
        self.buf = b""
        self.loop = None
        self.ticks = 0

    def data_received(self, data):
        self.reset_timeout()
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.command(line.decode().strip())

    def write_line(self, text):
        self.transport.write(text.encode() + b"\n")

    def tick(self):
        self.ticks += 1
        self.write_line("tick %d" % self.ticks)

    def command(self, line):
        word, _, rest = line.partition(" ")
        if word == "later":
            ms, _, text = rest.partition(" ")
            call_later(int(ms) / 1000, self.write_line, text)
        elif word == "every":
            self.loop = LoopingCall(self.tick)
            self.loop.start(int(rest) / 1000)
        elif word == "stop":
            if self.loop is not None and self.loop.running:
                self.loop.stop()
            self.write_line("stopped")
        elif word == "timeout":
            self.set_timeout(int(rest) / 1000)
        elif word == "echo":
            self.write_line(rest)

    def connection_lost(self, reason):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.set_timeout(None)


serve(server=Factory.for_protocol(Clock))
