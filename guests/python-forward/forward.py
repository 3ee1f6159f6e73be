"""Twisted's ``twisted.protocols.portforward`` as a Twill guest, in Python:
every connection accepted opens one to the backend and relays bytes both
ways, with flow control (each side's transport is the other's producer)
and half-close (one peer's FIN becomes a FIN to the other). The same
behaviour as the Rust example, guests/portforward/src/lib.rs.

Configured through the environment its plugin grants
(``[plugins.NAME] env``):

- ``BACKEND``: ``HOST:PORT`` to forward to (the plugin's ``connect`` grants
  must allow it);
- ``SPLICE=1``: once connected, hand both connections to the host
  (``transport.splice``) instead of relaying in the guest;
- ``TIMEOUT``: the connect timeout in seconds (default 30).

Reading the environment at run time: ``os.environ``, but only inside the
callbacks, never at import time. componentize-py imports this module at
build time and the component starts from that snapshot, in which
``os.environ`` is empty; its runtime fills ``os.environ`` from
``wasi:cli/environment.get-environment`` (the plugin's ``env``) when the
first export is called, so in a callback it is the live environment.

Build: scripts/build-polyglot-guests.sh.
"""

import math
import os
import sys

from twill import ClientFactory, ConnectError, Factory, Protocol, SpliceError, serve
from twill.reactor import connect_tcp


def backend():
    """Where to forward, from ``BACKEND``: ``(host, port)``, or None."""
    b = os.environ.get("BACKEND")
    if b is None:
        return None
    host, sep, port = b.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    host = host.removeprefix("[").removesuffix("]")
    return host, int(port)


def splice():
    return os.environ.get("SPLICE") == "1"


def timeout():
    try:
        secs = float(os.environ.get("TIMEOUT", ""))
    except ValueError:
        return 30.0
    return secs if math.isfinite(secs) and secs > 0 else 30.0


def close_like(other, reason):
    """Ends the other connection the way this one ended: cleanly after its
    output (Twisted's ``portforward`` always does this), or, if this one was
    reset or failed, with a reset, so a truncation never reaches the other
    peer as a clean close."""
    if reason.clean:
        other.lose_connection()
    else:
        other.abort_connection()


class ProxyServer(Protocol):
    """The accepted connection's protocol: Twisted's ``ProxyServer``."""

    def __init__(self):
        # The backend connection's transport, once it is made.
        self.peer = None

    def connection_made(self):
        # Nothing is read until the backend connection is made.
        self.transport.pause_producing()
        target = backend()
        if target is None:
            print("portforward: BACKEND is not set to HOST:PORT", file=sys.stderr)
            self.transport.lose_connection()
            return
        host, port = target
        try:
            connect_tcp(host, port, ProxyClientFactory(self), timeout())
        except ConnectError as e:
            print("portforward: cannot connect to %s:%d: %s" % (host, port, e), file=sys.stderr)
            self.transport.lose_connection()

    def data_received(self, data):
        if self.peer is not None:
            self.peer.write(data)

    def read_connection_lost(self):
        if self.peer is not None:
            self.peer.lose_write_connection()

    def connection_lost(self, reason):
        peer, self.peer = self.peer, None
        if peer is not None:
            close_like(peer, reason)


class ProxyClientFactory(ClientFactory):
    """Builds the backend connection's protocol: Twisted's
    ``ProxyClientFactory``."""

    def __init__(self, server):
        self.server = server

    def build_protocol(self, addr):
        return ProxyClient(self.server)

    def client_connection_failed(self, reason):
        print("portforward: %s" % reason, file=sys.stderr)
        self.server.transport.lose_connection()


class ProxyClient(Protocol):
    """The backend connection's protocol: Twisted's ``ProxyClient``."""

    def __init__(self, server):
        self.server = server

    def connection_made(self):
        server = self.server.transport
        if splice():
            try:
                server.splice(self.transport)
                return
            except SpliceError as e:
                print("portforward: splice refused (%s); relaying instead" % e, file=sys.stderr)
        self.server.peer = self.transport
        # Each side pauses the other while its own output is backed up.
        self.transport.register_producer(server)
        server.register_producer(self.transport)
        server.resume_producing()

    def data_received(self, data):
        self.server.transport.write(data)

    def read_connection_lost(self):
        self.server.transport.lose_write_connection()

    def connection_lost(self, reason):
        close_like(self.server.transport, reason)


serve(server=Factory.for_protocol(ProxyServer))
