"""Unit-testing protocols without a host: Twisted's ``proto_helpers``.

:class:`StringTransport` is a :class:`twill.Transport` that keeps what is
written in memory and records everything else, and :func:`connect`,
:func:`deliver` and :func:`disconnect` call a protocol as the host would.
A protocol written for the real host runs unchanged, under plain CPython::

    import unittest
    from twill.testing import connect, deliver

    class EchoTest(unittest.TestCase):
        def test_echo(self):
            proto = Echo()
            transport = connect(proto)
            deliver(proto, b"hello")
            self.assertEqual(transport.value(), b"hello")
"""

from . import Address, Reason, SpliceError, StartTLSError, Transport, _as_bytes

__all__ = ["StringTransport", "connect", "deliver", "disconnect"]


class StringTransport(Transport):
    """A transport that buffers what is written in memory and keeps track of
    its other state: Twisted's ``StringTransport``.

    It is a :class:`twill.Transport` (``isinstance`` holds) and behaves as
    one does on the real host, where that differs from Twisted's: writes
    after :meth:`lose_connection`, :meth:`abort_connection`,
    :meth:`lose_write_connection`, a splice or the end of the connection
    are ignored, as the host ignores them, and ``str`` is refused.

    The attributes below are for tests; protocols should not use them.

    @ivar peer: what :meth:`get_peer` returns, an :class:`twill.Address`.
    @ivar host: what :meth:`get_host` returns.
    @ivar protocol: the protocol :func:`connect` connected, or None.
    @ivar disconnecting: True once :meth:`lose_connection` or
        :meth:`abort_connection` was called.
    @ivar aborted: True once :meth:`abort_connection` was called.
    @ivar write_disconnected: True once :meth:`lose_write_connection` was
        called.
    @ivar lost: True once :func:`disconnect` ended the connection.
    @ivar half_closeable: True if :func:`connect` found the protocol
        half-closeable (it defines ``read_connection_lost``).
    @ivar producer: the registered producer (the protocol itself when
        ``register_producer()`` was called without one), or None.
    @ivar streaming: True while a producer is registered, else None.
    @ivar producer_state: ``"producing"``, or ``"paused"`` after
        :meth:`pause_producing` (reading stopped) until
        :meth:`resume_producing`.
    @ivar tls: what :meth:`tls_info` returns: None (plaintext), or a
        :class:`twill.TlsInfo` a test sets.
    @ivar tls_started: True once :meth:`start_tls` was called.
    @ivar spliced_with: the other transport of :meth:`splice`, or None.
    """

    def __init__(self, peer=None, host=None):
        super().__init__(None)
        self.peer = peer if peer is not None else Address("192.168.1.1", 54321)
        self.host = host if host is not None else Address("10.0.0.1", 12345)
        self.protocol = None
        self.aborted = False
        self.write_disconnected = False
        self.lost = False
        self.half_closeable = False
        self.producer = None
        self.streaming = None
        self.producer_state = "producing"
        self.tls = None
        self.tls_started = False
        self.spliced_with = None
        self._written = bytearray()

    # Testing helpers, not transport methods.

    def value(self):
        """All the bytes written since the start or the last :meth:`clear`."""
        return bytes(self._written)

    def clear(self):
        """Discard the bytes written so far."""
        del self._written[:]

    # ITransport

    def _muted(self):
        return self._mute or self.disconnecting

    def write(self, data):
        """Keep ``data`` (bytes-like, not ``str``), unless writes are
        ignored by now."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if not self._muted():
            self._written += data

    def write_sequence(self, seq):
        """Keep each buffer of ``seq``, in order: ``writeSequence``."""
        bufs = [b if type(b) is bytes else _as_bytes(b) for b in seq]
        if not self._muted():
            for b in bufs:
                self._written += b

    def lose_connection(self):
        """Set ``disconnecting``; later writes are ignored."""
        self.disconnecting = True

    def abort_connection(self):
        """Set ``disconnecting`` and ``aborted``."""
        self.aborted = True
        self.disconnecting = True

    def get_peer(self):
        """The ``peer`` address."""
        return self.peer

    def get_host(self):
        """The ``host`` address."""
        return self.host

    def register_producer(self, producer=None, streaming=True):
        """Record ``producer`` (default: the connected protocol) in
        ``producer`` and set ``streaming``. As on the real transport, only
        streaming producers are accepted."""
        if not streaming:
            raise ValueError("twill supports streaming (push) producers only")
        self.producer = self.protocol if producer is None else producer
        self.streaming = True

    def unregister_producer(self):
        """Forget the producer."""
        self.producer = None
        self.streaming = None

    def pause_producing(self):
        """Record that reading stopped: ``producer_state = "paused"``.
        (:func:`deliver` still delivers; the test decides.)"""
        if not self._lost:
            self.producer_state = "paused"

    def resume_producing(self):
        """Record that reading resumed: ``producer_state = "producing"``."""
        if not self._lost:
            self.producer_state = "producing"

    def lose_write_connection(self):
        """Set ``write_disconnected``; later writes are ignored."""
        self._mute = True
        self.write_disconnected = True

    def splice(self, other):
        """Record a splice with ``other`` in both transports'
        ``spliced_with`` and ``spliced``; writes to either are ignored
        afterwards. Raises :class:`twill.SpliceError` where the host would
        refuse: ``other`` is this transport, or either is already spliced,
        closing or lost."""
        if not isinstance(other, Transport):
            raise TypeError("splice() wants another twill.Transport")
        if other is self:
            raise SpliceError("cannot splice a connection with itself")
        for t in (self, other):
            if t.spliced or t.disconnecting or t._lost:
                raise SpliceError("connection is already spliced, closing or closed")
        for t, partner in ((self, other), (other, self)):
            t.spliced = True
            t._mute = True
            t._partner = partner
            if isinstance(t, StringTransport):
                t.spliced_with = partner

    def tls_info(self):
        """The ``tls`` attribute: None, or a :class:`twill.TlsInfo`."""
        return self.tls

    def start_tls(self):
        """Set ``tls_started``. Raises :class:`twill.StartTLSError` where
        the host would refuse for the connection's own state: already
        encrypted (``tls`` set) or starting TLS, spliced or closing."""
        if self.tls is not None or self.tls_started or self.spliced or self.disconnecting or self._lost:
            raise StartTLSError("connection is already encrypted, starting TLS, spliced or closing")
        self.tls_started = True

    def _forward(self, data):
        partner = self._partner
        if isinstance(partner, StringTransport) and not partner._lost:
            partner._written += data

    def _connection_lost(self):
        super()._connection_lost()
        self.lost = True

    def __repr__(self):
        return "<twill.testing.StringTransport %d bytes%s>" % (
            len(self._written),
            " disconnecting" if self.disconnecting else "",
        )


def connect(protocol, transport=None):
    """Connect ``protocol`` to ``transport`` (a new :class:`StringTransport`
    by default) as the host does: mark it half-closeable if the protocol
    defines ``read_connection_lost``, then call
    ``protocol.make_connection(transport)``, which sets
    ``protocol.transport`` and calls ``connection_made``.

    @return: the transport.
    """
    if transport is None:
        transport = StringTransport()
    if isinstance(transport, StringTransport):
        transport.protocol = protocol
        transport.half_closeable = callable(getattr(protocol, "read_connection_lost", None))
    protocol.make_connection(transport)
    return transport


def deliver(protocol, *chunks):
    """Call ``protocol.data_received`` with each chunk, in order, as the
    host does: nothing once the transport is disconnecting (the host
    delivers no data after a close) or the connection has ended.

    @return: how many chunks were delivered.
    """
    delivered = 0
    for chunk in chunks:
        transport = protocol.transport
        if transport is not None and (transport.disconnecting or getattr(transport, "_lost", False)):
            break
        protocol.data_received(chunk)
        delivered += 1
    return delivered


def disconnect(protocol, reason=None):
    """End the connection as the host does: later writes are ignored,
    ``protocol.connected`` becomes False, then
    ``protocol.connection_lost(reason)`` is called.

    @param reason: a :class:`twill.Reason`; by default a clean close,
        ``Reason("done")``.
    """
    if reason is None:
        reason = Reason("done")
    transport = protocol.transport
    if isinstance(transport, Transport):
        transport._connection_lost()
    protocol.connected = False
    protocol.connection_lost(reason)
