"""twill: write Twill protocols in Python.

The guest side of the ``twill:protocol@0.1.0`` contract (``wit/`` in the
Twill repository), shaped like Twisted:

- :class:`Protocol`: one connection. Override :meth:`Protocol.data_received`
  and friends; every method has a default that does nothing.
- :class:`Factory`, :class:`ServerFactory`, :class:`ClientFactory`: build a
  protocol per connection. ``factory.protocol = Echo`` (or
  ``Factory.for_protocol(Echo)``) builds ``Echo()``, as in Twisted.
- :class:`Transport`: the connection's handle (``self.transport``), with
  ``write``, ``write_sequence``, ``lose_connection``, ``abort_connection``,
  ``get_peer``, ``get_host``, the producer methods (``register_producer``,
  ``pause_producing``, ``resume_producing``), ``lose_write_connection``
  (half-close), ``splice``, and TLS: ``tls_info``, ``get_peer_certificate``
  and ``start_tls`` (Twisted's ``ISSLTransport`` / ``ITLSTransport``).
- :class:`Reason`: why a connection ended, with Twisted's ``check`` and
  ``get_error_message``.
- :func:`serve`: names the factories the component exports.
- :mod:`twill.reactor`: time: ``seconds``, ``call_later``,
  ``LoopingCall`` and ``TimeoutMixin``; and ``connect_tcp``, Twisted's
  ``reactor.connectTCP``, for opening connections (a relay, a proxy).

Example, Twisted's ``echoserv.py``::

    from twill import Factory, Protocol, serve

    class Echo(Protocol):
        def data_received(self, data):
            self.transport.write(data)

    serve(server=Factory.for_protocol(Echo))

Build it with componentize-py against Twill's ``wit/`` directory, world
``peer``, with this directory on the Python path::

    componentize-py -d wit -w peer componentize \\
        -p guest-sdk/python -p my-guest echo -o echo.wasm

Rules of the reactor: callbacks run inside the host's event loop and must
not block. The host interrupts a callback that runs past the plugin's CPU
limit and aborts that connection; an exception that escapes a callback does
the same (its traceback goes to the plugin's stderr). Output written through
the transport is buffered by the host and sent, in order, when the callback
returns. By default every connection gets a fresh instance of the
component, so module-level and factory state lives exactly as long as one
connection. With ``instance = "shared"`` in plugins.toml one instance serves
many connections, and that state is shared by them, as in one Twisted
process: a factory may keep its protocols and write to any of their
transports.
"""

import os as _os
import sys
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "Address",
    "ClientFactory",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionDone",
    "ConnectionLost",
    "Factory",
    "PeerCertificate",
    "Protocol",
    "Reason",
    "ServerFactory",
    "SpliceError",
    "StartTLSError",
    "TlsInfo",
    "Transport",
    "WIT_DIR",
    "serve",
]

__version__ = "0.1.0"

#: The directory of the ``twill:protocol`` WIT files bundled with this
#: package, for ``componentize-py -d "$(python3 -c 'import twill;
#: print(twill.WIT_DIR)')" -w peer componentize ...``.
WIT_DIR = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "wit")


class Address:
    """An IPv4 or IPv6 endpoint: Twisted's ``IPv4Address`` / ``IPv6Address``.

    ``host`` is numeric (``127.0.0.1`` or ``::1``), ``port`` an int.
    """

    __slots__ = ("host", "port")
    type = "TCP"

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def __eq__(self, other):
        if not isinstance(other, Address):
            return NotImplemented
        return (self.host, self.port) == (other.host, other.port)

    def __hash__(self):
        return hash((self.host, self.port))

    def __repr__(self):
        return "Address(%r, %r)" % (self.host, self.port)

    def __str__(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


class ConnectionClosed(Exception):
    """A connection ended (the base of the two below), as in Twisted."""


class ConnectionDone(ConnectionClosed):
    """The connection was closed cleanly."""


class ConnectionLost(ConnectionClosed):
    """The connection was lost in a non-clean fashion."""


class ConnectError(Exception):
    """A client connection attempt failed: refused, unreachable, no such
    name, timed out."""


class SpliceError(Exception):
    """:meth:`Transport.splice` was refused by the host: the other transport
    is this one, either connection is already spliced or closing, or the
    other belongs to another instance or has ended. Nothing changed."""


class StartTLSError(Exception):
    """:meth:`Transport.start_tls` was refused by the host: the
    connection's ``[[listen]]`` or ``[[connect]]`` entry has no ``tls``
    table with ``start-tls = true``, or the connection is already encrypted,
    already starting TLS, spliced or closing. Nothing changed; ``str(e)``
    is the host's reason."""


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate the peer presented in the TLS handshake: what
    Twisted's ``getPeerCertificate`` returns, reduced to what a protocol
    checks."""

    #: The subject's distinguished name, such as ``CN=alice, O=Example``.
    subject: str
    #: SHA-256 of the DER encoding, 64 lowercase hex digits: the
    #: fingerprint to pin.
    sha256: str
    #: The certificate itself, DER-encoded, for a protocol that parses it.
    der: bytes


@dataclass(frozen=True)
class TlsInfo:
    """What a connection's TLS handshake negotiated (see
    :meth:`Transport.tls_info`)."""

    #: ``"TLSv1.3"`` or ``"TLSv1.2"``.
    version: str
    #: The cipher suite, as IANA names it: ``"TLS13_AES_128_GCM_SHA256"``.
    cipher_suite: str
    #: The server name (SNI) the client sent, or None; on a client
    #: connection, the name the server was verified against.
    server_name: Optional[str] = None
    #: The protocol agreed by ALPN (``b"h2"``), or None: Twisted's
    #: ``negotiatedProtocol``.
    alpn_protocol: Optional[bytes] = None
    #: The peer's :class:`PeerCertificate`, if it presented one.
    peer_certificate: Optional[PeerCertificate] = None


def _tls_info(i):
    """A :class:`TlsInfo` from componentize-py's ``tls-info`` record."""
    c = i.peer_certificate
    alpn = i.alpn_protocol
    return TlsInfo(
        version=i.version,
        cipher_suite=i.cipher_suite,
        server_name=i.server_name,
        alpn_protocol=None if alpn is None else bytes(alpn),
        peer_certificate=None if c is None else PeerCertificate(c.subject, c.sha256, bytes(c.der)),
    )


def _host_error(e):
    """The message of a WIT ``result`` error (componentize-py raises
    ``componentize_py_types.Err`` with the payload in ``value``), or None
    for any other exception."""
    if type(e).__name__ == "Err" and hasattr(e, "value"):
        return str(e.value)
    return None


class Reason:
    """Why a connection ended, or why an attempt never became one.

    Twisted hands ``connectionLost`` a ``Failure``; this is its small cousin.
    ``kind`` is ``"done"``, ``"lost"`` or ``"failed"``; ``message`` is the
    host's explanation (empty for ``done``); ``value`` is the matching
    exception (:class:`ConnectionDone`, :class:`ConnectionLost` or
    :class:`ConnectError`) and ``type`` its class.
    """

    __slots__ = ("kind", "message", "value")

    _TYPES = {"done": ConnectionDone, "lost": ConnectionLost, "failed": ConnectError}

    def __init__(self, kind, message=""):
        if kind not in self._TYPES:
            raise ValueError("reason kind must be done, lost or failed, not %r" % (kind,))
        self.kind = kind
        self.message = message
        self.value = self._TYPES[kind](str(self))

    @property
    def type(self):
        return type(self.value)

    @property
    def clean(self):
        """True for a clean close (``ConnectionDone``)."""
        return self.kind == "done"

    def check(self, *types):
        """Twisted's ``Failure.check``: the first of ``types`` the reason's
        exception is an instance of, or None."""
        for t in types:
            if isinstance(self.value, t):
                return t
        return None

    def get_error_message(self):
        """Twisted's ``Failure.getErrorMessage``."""
        return str(self)

    def __eq__(self, other):
        if not isinstance(other, Reason):
            return NotImplemented
        return (self.kind, self.message) == (other.kind, other.message)

    def __hash__(self):
        return hash((self.kind, self.message))

    def __repr__(self):
        return "Reason(%r, %r)" % (self.kind, self.message)

    def __str__(self):
        if self.kind == "done":
            return "Connection was closed cleanly."
        if self.kind == "lost":
            return "Connection was lost: %s" % self.message
        return "Connection failed: %s" % self.message


class Transport:
    """The connection a protocol talks through: Twisted's ``ITransport``.

    Every method returns at once. Writes are buffered by the host and flushed
    in order after the current callback returns; no data is ever lost,
    although the connection may close before it all gets through. After
    ``lose_connection``, ``abort_connection`` or the end of the connection,
    writes are ignored.
    """

    __slots__ = ("_raw", "_producer", "disconnecting", "_lost", "_mute", "spliced", "_partner", "_peer", "_host")

    def __init__(self, raw):
        # None once the connection ended and its handle was dropped.
        self._raw = raw
        # The addresses, kept once asked for (they outlive the handle).
        self._peer = None
        self._host = None
        self._producer = None
        self._lost = False
        # Writes are dropped here, not sent to the host: after the end of
        # the connection, lose_write_connection or splice.
        self._mute = False
        #: True once ``lose_connection`` or ``abort_connection`` was called.
        self.disconnecting = False
        #: True once :meth:`splice` handed this connection to the host.
        self.spliced = False
        # The other transport of the splice: reads the host still delivers
        # after the splice (read before it took effect) are written there.
        self._partner = None

    def write(self, data):
        """Write some bytes to the connection, in sequence, without blocking."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if not self._mute:
            self._raw.write(data)

    def write_sequence(self, seq):
        """Write each buffer of ``seq`` in order, as one vectored write where
        the host can: Twisted's ``writeSequence``."""
        bufs = [b if type(b) is bytes else _as_bytes(b) for b in seq]
        if not self._mute:
            self._raw.write_sequence(bufs)

    def lose_connection(self):
        """Close the connection after writing all pending data; the
        protocol's ``connection_lost`` follows with a clean reason."""
        self.disconnecting = True
        if not self._lost:
            self._raw.lose_connection()

    def abort_connection(self):
        """Close the connection now, dropping pending data (a TCP reset);
        ``connection_lost`` follows with a ``lost`` reason."""
        self.disconnecting = True
        if not self._lost:
            self._raw.abort_connection()

    def get_peer(self):
        """The remote address: Twisted's ``getPeer``."""
        if self._peer is None and self._raw is not None:
            self._peer = _address(self._raw.get_peer())
        return self._peer if self._peer is not None else Address("", 0)

    def get_host(self):
        """The local address: Twisted's ``getHost``."""
        if self._host is None and self._raw is not None:
            self._host = _address(self._raw.get_host())
        return self._host if self._host is not None else Address("", 0)

    def register_producer(self, producer=None, streaming=True):
        """Twisted's ``registerProducer(producer, streaming=True)``.

        From now on, when the host's output buffer for this connection rises
        above its high-water mark it calls ``producer.pause_producing()``,
        and ``producer.resume_producing()`` once it drained. ``producer``
        defaults to the protocol itself. Only push (streaming) producers
        exist here.

        ``producer`` may be another connection's :class:`Transport`, as in
        Twisted's portforward: ``self.transport.register_producer(
        self.peer.transport)`` stops reading from the peer as soon as a
        write takes this connection's output above its high-water mark (the
        host does it within the write, with no callback), and reads again
        once it drained.
        """
        if not streaming:
            raise ValueError("twill supports streaming (push) producers only")
        if isinstance(producer, Transport):
            self._producer = None
            if self._raw is not None and producer._raw is not None:
                self._raw.register_producer_transport(producer._raw)
            return
        self._producer = producer
        if self._raw is not None:
            self._raw.register_producer()

    def unregister_producer(self):
        """Stop the producer notifications: Twisted's ``unregisterProducer``."""
        self._producer = None
        if self._raw is not None:
            self._raw.unregister_producer()

    def pause_producing(self):
        """Stop reading from this connection: Twisted's
        ``ITransport.pauseProducing`` (a transport is a push producer). No
        ``data_received`` until :meth:`resume_producing`; the peer is slowed
        by TCP's flow control. Output and closes are not affected."""
        if not self._lost:
            self._raw.pause_producing()

    def resume_producing(self):
        """Start reading from this connection again: Twisted's
        ``ITransport.resumeProducing``."""
        if not self._lost:
            self._raw.resume_producing()

    def lose_write_connection(self):
        """Close the write side after writing all pending data (a TCP
        half-close): Twisted's ``loseWriteConnection``. Reading goes on;
        later writes are ignored. A protocol with ``write_connection_lost``
        and ``read_connection_lost`` hears of both halves (see
        :class:`Protocol`)."""
        self._mute = True
        if not self._lost:
            self._raw.lose_write_connection()

    def splice(self, other):
        """Hand this connection and ``other`` (another :class:`Transport` of
        this instance) to the host, which relays bytes between them both
        ways from now on, with backpressure, and no more calls into the
        guest. Neither protocol gets ``data_received`` again; each gets
        ``connection_lost`` when the pair ends. Writes to either transport
        are ignored afterwards; ``lose_connection`` or ``abort_connection``
        on either ends the pair. Bytes the host read before the splice took
        effect, but delivers afterwards (later in the same batch, or in a
        later call), are not lost: the SDK writes them to the other
        connection instead of calling ``data_received``.

        Raises :class:`SpliceError` (changing nothing) if the host refuses.
        """
        if not isinstance(other, Transport):
            raise TypeError("splice() wants another twill.Transport")
        if self._raw is None or other._raw is None:
            raise SpliceError("its connection has ended")
        try:
            self._raw.splice(other._raw)
        except Exception as e:
            message = _host_error(e)
            if message is None:
                raise
            raise SpliceError(message) from None
        for t in (self, other):
            t.spliced = True
            t._mute = True
        self._partner = other
        other._partner = self

    def tls_info(self):
        """What this connection's TLS handshake negotiated, as a
        :class:`TlsInfo`; None on a plaintext connection.

        The host terminates TLS: the protocol reads and writes plaintext
        and never holds a key. On a ``[[listen]]`` or ``[[connect]]`` with a
        ``tls`` table the handshake is over before ``connection_made``;
        after :meth:`start_tls`, this is None until its handshake completed
        (the next ``data_received`` sees it)."""
        info = None if self._raw is None else self._raw.tls_info()
        return None if info is None else _tls_info(info)

    def get_peer_certificate(self):
        """The peer's certificate, a :class:`PeerCertificate` (subject,
        SHA-256 fingerprint, DER), if the connection is TLS and the peer
        presented one; else None: Twisted's ``getPeerCertificate``."""
        info = self.tls_info()
        return None if info is None else info.peer_certificate

    def start_tls(self):
        """Start TLS on this plaintext connection: Twisted's
        ``ITLSTransport.startTLS``, for STARTTLS protocols (SMTP, IMAP).

        Output already written goes out in plaintext (so a reply such as
        ``220 Go ahead`` written just before this call reaches the peer
        unencrypted); then the host runs the handshake, as the server on an
        accepted connection and as the client on a ``[[connect]]`` one, with
        the certificates and settings of that entry's ``tls`` table (there
        is no context factory to pass), and everything written after this
        call goes out encrypted. Nothing is read during the handshake; a
        failed one ends the connection (``connection_lost`` with a ``lost``
        reason saying why).

        Raises :class:`StartTLSError` (changing nothing) if the host
        refuses: the entry has no ``tls`` table with ``start-tls = true``,
        or the connection is already encrypted, starting TLS, spliced or
        closing.
        """
        if self._raw is None:
            raise StartTLSError("its connection has ended")
        try:
            self._raw.start_tls()
        except Exception as e:
            message = _host_error(e)
            if message is None:
                raise
            raise StartTLSError(message) from None

    def _forward(self, data):
        # A read of this spliced connection that the host delivered after
        # the splice: write it to the partner's raw handle (the host accepts
        # it until its pump starts and sends it first), bypassing the mute.
        partner = self._partner
        if partner is not None and not partner._lost:
            partner._raw.write(data)

    def _connection_lost(self):
        # Twisted: writes after the connection is gone are ignored.
        self._lost = True
        self._mute = True
        partner, self._partner = self._partner, None
        if partner is not None and partner._partner is self:
            partner._partner = None

    def _release(self):
        # After connection_lost returned: drop the host's handle now. The
        # bindings would drop it only once the object is collected; a
        # shared instance that kept every ended connection's handle faulted
        # when its resource table filled (max-resources).
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.__exit__(None, None, None)

    def __repr__(self):
        return "<twill.Transport%s%s>" % (
            " disconnecting" if self.disconnecting else "",
            " spliced" if self.spliced else "",
        )


def _as_bytes(data):
    if isinstance(data, str):
        raise TypeError("Data must be bytes, not str: encode it first")
    return bytes(data)


def _address(a):
    return Address(a.host, a.port)


class Protocol:
    """The protocol for one connection: Twisted's ``Protocol``.

    The host calls :meth:`make_connection` once, then :meth:`data_received`
    any number of times, then :meth:`connection_lost` once. Override what
    you need; the defaults do nothing.
    """

    #: The factory that built this protocol (set by ``Factory.build_protocol``).
    factory = None
    #: The connection's :class:`Transport`, set by ``make_connection``.
    transport = None
    #: True between ``make_connection`` and ``connection_lost``.
    connected = False

    def make_connection(self, transport):
        """Twisted's ``makeConnection``: keep the transport, then call
        :meth:`connection_made`. Override ``connection_made`` instead."""
        self.connected = True
        self.transport = transport
        self.connection_made()

    def connection_made(self):
        """Called when the connection is made: Twisted's ``connectionMade``.
        The protocol may write, or lose the connection, from here."""

    def data_received(self, data):
        """Called with ``bytes`` whenever data arrives: Twisted's
        ``dataReceived``. Data arrives in chunks of any size; buffer as
        your framing requires."""

    def connection_lost(self, reason):
        """Called once when the connection is shut down: Twisted's
        ``connectionLost``. ``reason`` is a :class:`Reason`."""

    def pause_producing(self):
        """Stop writing for now (only after ``transport.register_producer()``)."""

    def resume_producing(self):
        """Start writing again after :meth:`pause_producing`."""

    # Half-close, Twisted's IHalfCloseableProtocol, is opt-in: define
    #
    #     def read_connection_lost(self): ...   # the peer's FIN arrived
    #     def write_connection_lost(self): ...  # optional: our FIN went out
    #
    # on a subclass. A protocol with ``read_connection_lost`` is made
    # half-closeable before ``connection_made`` runs: the peer's FIN then
    # calls ``read_connection_lost`` instead of closing the connection, and
    # the protocol may keep writing until it calls ``lose_connection`` or
    # ``transport.lose_write_connection()``. Without it (this base class
    # defines neither), the peer's FIN closes the connection as always.


class Factory:
    """Builds one protocol per connection: Twisted's ``Factory``.

    Set ``protocol`` to a :class:`Protocol` subclass (or use
    :meth:`for_protocol`); :meth:`build_protocol` calls it with no
    arguments and sets the new protocol's ``factory``. Return None from
    ``build_protocol`` to refuse a connection.
    """

    protocol = None

    @classmethod
    def for_protocol(cls, protocol, *args, **kwargs):
        """Twisted's ``Factory.forProtocol``: a factory of this class that
        builds ``protocol``."""
        factory = cls(*args, **kwargs)
        factory.protocol = protocol
        return factory

    def build_protocol(self, addr):
        """Create a protocol for a connection with ``addr`` (an
        :class:`Address`): Twisted's ``buildProtocol``."""
        if self.protocol is None:
            raise TypeError("%s.protocol is not set" % type(self).__name__)
        p = self.protocol()
        p.factory = self
        return p

    def start_factory(self):
        """The factory is about to be used: Twisted's ``startFactory``.
        Once per instance, before anything else: on a shared instance
        before its first connection (the place to start a
        :class:`~twill.reactor.LoopingCall`), on an instance of its own
        before its connection's protocol is built."""

    def stop_factory(self):
        """The factory is done: Twisted's ``stopFactory``. Once per
        instance, last: at shutdown on a shared instance, after the
        connection on an instance of its own."""


class ServerFactory(Factory):
    """A factory for accepted connections: Twisted's ``ServerFactory``."""


class ClientFactory(Factory):
    """A factory for outgoing connections: Twisted's ``ClientFactory``.

    The host calls :meth:`started_connecting`, then either
    :meth:`client_connection_failed`, or ``build_protocol`` followed by the
    protocol's own callbacks and finally :meth:`client_connection_lost`.
    """

    def started_connecting(self, addr):
        """A connection attempt to ``addr`` (as configured) has started."""

    def client_connection_failed(self, reason):
        """The attempt failed (``reason.kind == "failed"``); no protocol was
        built."""

    def client_connection_lost(self, reason):
        """An established connection was lost, after the protocol's own
        ``connection_lost``."""


def serve(server=None, client=None, module=None):
    """Export ``server`` and/or ``client`` as the component's factories.

    Each is a factory instance (or a :class:`Protocol` subclass, which is
    wrapped in a :class:`Factory`). A role left out refuses every
    connection. Call it once, last, at the top level of the module you hand
    to componentize-py: it defines that module's ``ServerFactory``,
    ``ClientFactory``, ``Batch``, ``ReactorCalls``, ``OutboundFactory`` and
    ``HalfClose`` attributes, which are the names
    componentize-py looks up (``module`` defaults to the caller's module).

    The call runs when the component is built (componentize-py snapshots the
    initialised interpreter), so every instance starts with these
    factories already made.
    """
    from . import _export

    if module is None:
        module = sys.modules[sys._getframe(1).f_globals["__name__"]]
    elif isinstance(module, str):
        module = sys.modules[module]
    server = _as_factory(server, "server")
    client = _as_factory(client, "client")
    _export.register(server, client)
    module.ServerFactory = _export.ServerFactoryExport
    module.ClientFactory = _export.ClientFactoryExport
    module.Batch = _export.BatchExport
    module.ReactorCalls = _export.ReactorCallsExport
    module.OutboundFactory = _export.OutboundFactoryExport
    module.HalfClose = _export.HalfCloseExport


def _as_factory(f, role):
    if f is None:
        return None
    if isinstance(f, type):
        if issubclass(f, Protocol):
            return Factory.for_protocol(f)
        raise TypeError("serve(%s=...) wants a factory instance, not the class %s" % (role, f.__name__))
    if not callable(getattr(f, "build_protocol", None)):
        raise TypeError("serve(%s=...) wants an object with build_protocol(addr)" % role)
    return f
