"""A line protocol for Twill, on the SDK's LineReceiver (the project
``twill new python NAME`` writes starts from this file).

Each line the client sends gets one line back: ``PING`` gets ``PONG``,
``QUIT`` gets ``BYE`` and the connection closes, anything else comes back in
upper case. Lines end with ``\\r\\n`` and may be up to 16384 bytes long
(Twisted's ``LineReceiver`` defaults); a longer one closes the connection.
"""

from twill import Factory, serve
from twill.basic import LineReceiver


class Commands(LineReceiver):
    """One connection."""

    def line_received(self, line):
        if line == b"PING":
            self.send_line(b"PONG")
        elif line == b"QUIT":
            self.send_line(b"BYE")
            self.transport.lose_connection()
        else:
            self.send_line(line.upper())


serve(server=Factory.for_protocol(Commands))
