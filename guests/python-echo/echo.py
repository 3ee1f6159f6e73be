"""The seed's echo server and echo client, as one component, in Python.

Twisted's classic pair, ported line for line (as guest-echo does in Rust):

- ``Echo`` (server role, ``echoserv.py``): writes back every byte it
  receives.
- ``EchoClient`` (client role, ``echoclient.py``): on connect it writes
  ``hello world``; on the first data it prints ``Server said: <data>`` and
  loses the connection; when the connection ends it prints
  ``Connection lost``.
- ``EchoFactory`` (the client's factory): prints
  ``Connection failed - goodbye`` or ``Connection lost - goodbye``.

Build: scripts/build-polyglot-guests.sh (or the componentize-py command in
guest-sdk/python/README.md).
"""

from twill import ClientFactory, Factory, Protocol, serve


class Echo(Protocol):
    """The server: echo every byte back, as soon as it arrives."""

    def data_received(self, data):
        self.transport.write(data)


class EchoClient(Protocol):
    """The seed's client: say hello, print the echo, hang up."""

    def connection_made(self):
        self.transport.write(b"hello world")

    def data_received(self, data):
        print("Server said:", data.decode("utf-8", "replace"))
        self.transport.lose_connection()

    def connection_lost(self, reason):
        print("Connection lost")


class EchoFactory(ClientFactory):
    """The seed's client factory: builds EchoClient and says goodbye."""

    protocol = EchoClient

    def client_connection_failed(self, reason):
        print("Connection failed - goodbye")

    def client_connection_lost(self, reason):
        print("Connection lost - goodbye")


serve(server=Factory.for_protocol(Echo), client=EchoFactory())
