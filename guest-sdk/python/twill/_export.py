"""Glue between componentize-py's generated bindings and the public classes.

Not API. componentize-py instantiates the app module's ``ServerFactory``,
``ClientFactory`` and the other exported interfaces' classes once (at build
time, in the snapshot) and calls their methods; an exported ``protocol`` resource is any object with the
resource's methods. :func:`twill.serve` points those two names at the
classes below, which forward to the user's factories and wrap each built
protocol in a :class:`ProtocolExport` that keeps its :class:`Transport`.
"""

import sys

from . import Address, Reason, Transport

_server = None
_client = None


def register(server, client):
    global _server, _client
    _server = server
    _client = client


def _flush():
    # The guest's stdout is not a terminal, so Python buffers it; flush at
    # the end of every callback so lines appear when they are printed.
    sys.stdout.flush()
    sys.stderr.flush()


def _reason(r):
    # componentize-py hands us wit_world.imports.types.Reason_Done /
    # Reason_Lost(value) / Reason_Failed(value).
    kind = type(r).__name__.rpartition("_")[2].lower()
    return Reason(kind, getattr(r, "value", "") or "")


class _Detached:
    """What ``ProtocolExport.finalizer`` reads as: a finalizer already
    detached."""

    @staticmethod
    def detach():
        return None


class ProtocolExport:
    """The guest side of one exported ``protocol`` resource.

    No ``__slots__``: componentize-py stores the resource handle in an
    attribute of the object.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.transport = None

    # componentize-py (0.19 to 0.25.1) keeps a strong reference to every
    # object it exports as a resource and ignores the resource's destructor,
    # so each connection's protocol stayed alive forever (about 500 bytes
    # per connection for the echo; a shared instance with 64 MiB faulted
    # after some 100,000 connections). twill-componentize's fix makes the
    # destructor drop that reference (_leakfix.py). componentize-py also
    # registers ``weakref.finalize(self, drop the handle)`` here, for an
    # object that dies while the guest still owns its handle; a protocol's
    # handle is the host's from the moment build_protocol returns it, so
    # that drop would name a handle the guest no longer has: detach it.
    @property
    def finalizer(self):
        return _Detached

    @finalizer.setter
    def finalizer(self, f):
        f.detach()

    def make_connection(self, raw):
        self.transport = Transport(raw)
        if callable(getattr(self.protocol, "read_connection_lost", None)):
            # Twisted's IHalfCloseableProtocol: opted in by defining
            # read_connection_lost, before the protocol can act.
            raw.set_half_closeable(True)
        try:
            self.protocol.make_connection(self.transport)
        finally:
            _flush()

    def data_received(self, data):
        try:
            self._deliver(data)
        finally:
            _flush()

    def _deliver(self, data):
        # Once spliced, reads still delivered (read before the splice took
        # effect) go to the partner connection, not to the protocol.
        t = self.transport
        if t is not None and t.spliced:
            t._forward(data)
        else:
            self.protocol.data_received(data)

    def connection_lost(self, reason):
        t = self.transport
        if t is not None:
            t._connection_lost()
        try:
            self.protocol.connected = False
            self.protocol.connection_lost(_reason(reason))
        finally:
            if t is not None:
                t._release()
            _flush()

    def _producer(self):
        t = self.transport
        return t._producer if t is not None and t._producer is not None else self.protocol

    def pause_producing(self):
        try:
            self._producer().pause_producing()
        finally:
            _flush()

    def resume_producing(self):
        try:
            self._producer().resume_producing()
        finally:
            _flush()


class BatchExport:
    """Exported as ``twill:protocol/batch``: several connections' reads in
    one call, turned back into ``data_received`` calls, in order."""

    def data_received(self, chunks, data):
        offset = 0
        try:
            for chunk in chunks:
                end = offset + chunk.len
                export = chunk.protocol
                t = export.transport
                # Closed by an earlier chunk's callback: the host would not
                # have delivered this read. Spliced by one is not closed:
                # the read goes to the partner connection.
                if t is None or not t.disconnecting:
                    export._deliver(data[offset:end])
                offset = end
        finally:
            _flush()


class ReactorCallsExport:
    """Exported as ``twill:protocol/reactor-calls``: delayed calls falling
    due, and the factory hooks."""

    def timer_fired(self, token):
        from . import reactor

        try:
            reactor._fire(token)
        finally:
            _flush()

    def start_factory(self):
        _factory_hook("start_factory")

    def stop_factory(self):
        _factory_hook("stop_factory")


def _factory_hook(name):
    """Calls ``name`` on each factory that has it."""
    try:
        for f in (_server, _client):
            hook = getattr(f, name, None)
            if hook is not None:
                hook()
    finally:
        _flush()


def _wrap(p):
    return None if p is None else ProtocolExport(p)


class ServerFactoryExport:
    """Exported as ``twill:protocol/server-factory``."""

    def build_protocol(self, addr):
        if _server is None:
            return None
        try:
            return _wrap(_server.build_protocol(Address(addr.host, addr.port)))
        finally:
            _flush()


def _client_hook(name, arg):
    """Calls the client factory's optional hook `name`, if it has one."""
    hook = getattr(_client, name, None)
    if hook is not None:
        try:
            hook(arg)
        finally:
            _flush()


class ClientFactoryExport:
    """Exported as ``twill:protocol/client-factory``."""

    def started_connecting(self, addr):
        _client_hook("started_connecting", Address(addr.host, addr.port))

    def build_protocol(self, addr):
        if _client is None:
            return None
        try:
            return _wrap(_client.build_protocol(Address(addr.host, addr.port)))
        finally:
            _flush()

    def client_connection_failed(self, reason):
        _client_hook("client_connection_failed", _reason(reason))

    def client_connection_lost(self, reason):
        _client_hook("client_connection_lost", _reason(reason))


def _outbound_hook(token, name, reason):
    """The outcome for `token` ended its connection attempt: forget the
    factory, then call its optional hook `name`."""
    from . import reactor

    factory = reactor._connectors.pop(token, None)
    hook = getattr(factory, name, None)
    if hook is not None:
        try:
            hook(_reason(reason))
        finally:
            _flush()


class OutboundFactoryExport:
    """Exported as ``twill:protocol/outbound-factory``: the outcomes of
    :func:`twill.reactor.connect_tcp`, routed by token to the factory it was
    given. An unknown (or forgotten) token is ignored."""

    def build_protocol(self, token, addr):
        from . import reactor

        factory = reactor._connectors.get(token)
        if factory is None:
            return None
        try:
            return _wrap(factory.build_protocol(Address(addr.host, addr.port)))
        finally:
            _flush()

    def client_connection_failed(self, token, reason):
        _outbound_hook(token, "client_connection_failed", reason)

    def client_connection_lost(self, token, reason):
        _outbound_hook(token, "client_connection_lost", reason)


def _half_close_hook(export, name):
    hook = getattr(export.protocol, name, None)
    if hook is not None:
        try:
            hook()
        finally:
            _flush()


class HalfCloseExport:
    """Exported as ``twill:protocol/half-close``: Twisted's
    ``IHalfCloseableProtocol`` callbacks, for protocols that define
    ``read_connection_lost`` (the host calls only those)."""

    def read_connection_lost(self, protocol):
        _half_close_hook(protocol, "read_connection_lost")

    def write_connection_lost(self, protocol):
        _half_close_hook(protocol, "write_connection_lost")
