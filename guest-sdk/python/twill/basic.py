"""Basic framing protocols: Twisted's ``twisted.protocols.basic`` for Twill.

- :class:`LineReceiver`: lines ending with ``delimiter`` (``b"\\r\\n"``),
  with a raw mode for length-delimited bodies between lines, as HTTP has.
- :class:`Int32StringReceiver`, :class:`Int16StringReceiver`,
  :class:`Int8StringReceiver`: strings after a big-endian unsigned length
  prefix of 4, 2 or 1 bytes (:class:`IntNStringReceiver` is their base).
- :class:`NetstringReceiver`: D. J. Bernstein's netstrings,
  ``b"5:hello,"``.

Each is a :class:`twill.Protocol` subclass: override ``line_received`` or
``string_received`` instead of ``data_received``. Names are Twisted's in
snake_case (``lineReceived`` is ``line_received``, ``sendString`` is
``send_string``); the behaviour is Twisted's, and the shared test vectors
(``guest-sdk/test-vectors/basic.json``) hold all three SDKs and Twisted
itself to it, with two deviations:

- Every receiver stops delivering once ``self.transport.disconnecting`` is
  true, in the same ``data_received`` call and in later ones: Twill's host
  delivers no data after ``lose_connection`` or ``abort_connection``, and
  lines or strings already buffered are dropped with the connection.
  (Twisted's ``LineReceiver`` stops too; its ``IntNStringReceiver`` and
  ``NetstringReceiver`` go on delivering.)
- Receiving is linear in the size of the input however it is cut: a 16 MiB
  line or string delivered one byte at a time costs 16 Mi small steps, not
  the 128 Ti byte copies of Twisted's ``buffer += data``. Unprocessed bytes
  live in one ``bytearray``; a consumed offset and a scanned offset make
  each byte be searched for the delimiter once, and a length-prefixed
  payload is not looked at until all of it has arrived.

The ``paused`` flag of Twisted's receivers (their ``pauseProducing``) is
not here: ``self.transport.pause_producing()`` stops the reading itself.
"""

import struct

from . import Protocol

__all__ = [
    "Int8StringReceiver",
    "Int16StringReceiver",
    "Int32StringReceiver",
    "IntNStringReceiver",
    "LineReceiver",
    "NetstringReceiver",
    "StringTooLongError",
]


class StringTooLongError(AssertionError):
    """Raised by ``send_string`` when a string is too long for the length
    prefix of an :class:`IntNStringReceiver` (65,536 bytes or more for
    :class:`Int16StringReceiver`): Twisted's ``StringTooLongError``. Nothing
    is written."""


def _closing(transport):
    """True once the host will deliver no more data on ``transport``."""
    return transport is not None and transport.disconnecting


class LineReceiver(Protocol):
    """A protocol that receives lines and/or raw data, depending on mode:
    Twisted's ``LineReceiver``.

    In line mode, each line (without its ``delimiter``) goes to
    :meth:`line_received`. In raw mode (:meth:`set_raw_mode`), everything
    received goes to :meth:`raw_data_received` until :meth:`set_line_mode`.

    A line longer than ``MAX_LENGTH`` bytes, or an unterminated one that
    can no longer fit (``MAX_LENGTH + len(delimiter)`` bytes and still no
    delimiter), goes to :meth:`line_length_exceeded` instead, which loses
    the connection by default. Raw data is not bounded.

    Unlike Twisted's, no line or raw data is delivered once
    ``self.transport.disconnecting`` is true, not even complete lines that
    arrived in the same chunk: Twill's host delivers nothing after a close.

    @cvar delimiter: The line-ending delimiter, ``b"\\r\\n"`` by default. Set
        it on a subclass or an instance; it is searched for as a whole.
    @cvar MAX_LENGTH: The longest line accepted, in bytes (16384).
    @ivar line_mode: True in line mode, false in raw mode.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 16384
    line_mode = 1

    # The unprocessed bytes are _buf[_pos:]; no delimiter (_scan_delim, the
    # one last searched for) starts before _scanned - len(delimiter) + 1.
    # Per instance, made on first use: a subclass's __init__ need not call
    # ours.
    _buf = None
    _pos = 0
    _scanned = 0
    _scan_delim = None
    _busy = False

    def data_received(self, data):
        """Translate bytes into lines (or raw data), calling
        :meth:`line_received` or :meth:`raw_data_received`: Twisted's
        ``dataReceived``. Do not override it; override those two.

        Called again from inside one of the callbacks (as
        ``set_line_mode(extra)`` does), it only adds ``data`` to the buffer,
        which the outer call goes on processing.

        @param data: bytes, in chunks of any size.
        """
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray()
        if self._busy:
            buf += data
            return None
        transport = self.transport
        if transport is not None and transport.disconnecting:
            return None
        buf += data
        if self.line_mode:
            # The common case, per byte of a long line: no delimiter yet and
            # room for more. Search only what was not searched before.
            delimiter = self.delimiter
            pos = self._pos
            if delimiter is self._scan_delim:
                start = self._scanned - len(delimiter) + 1
                if start < pos:
                    start = pos
            else:
                # Nothing was searched for this delimiter yet.
                start = self._scanned = pos
                self._scan_delim = delimiter
            if buf.find(delimiter, start) < 0:
                end = self._scanned = len(buf)
                if end - pos < self.MAX_LENGTH + len(delimiter):
                    return None
        return self._process()

    def _process(self):
        buf = self._buf
        self._busy = True
        try:
            while True:
                transport = self.transport
                if transport is not None and transport.disconnecting:
                    return None
                pos = self._pos
                end = len(buf)
                if pos >= end:
                    return None
                if self.line_mode:
                    delimiter = self.delimiter
                    size = len(delimiter)
                    start = pos
                    if delimiter is self._scan_delim:
                        start = self._scanned - size + 1
                        if start < pos:
                            start = pos
                    i = buf.find(delimiter, start)
                    if i < 0:
                        self._scanned = end
                        self._scan_delim = delimiter
                        if end - pos >= self.MAX_LENGTH + size:
                            return self.line_length_exceeded(self.clear_line_buffer())
                        return None
                    if i - pos > self.MAX_LENGTH:
                        return self.line_length_exceeded(self.clear_line_buffer())
                    line = bytes(buf[pos:i])
                    self._pos = i + size
                    why = self.line_received(line)
                    if why:
                        return why
                else:
                    data = self.clear_line_buffer()
                    why = self.raw_data_received(data)
                    if why:
                        return why
        finally:
            self._busy = False
            pos = self._pos
            if pos and pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0
                self._scanned = self._scanned - pos if self._scanned > pos else 0

    def clear_line_buffer(self):
        """Clear buffered data: Twisted's ``clearLineBuffer``.

        @return: all of the cleared buffered data, bytes received but not
            yet delivered (from inside :meth:`line_received`, what follows
            the current line).
        """
        buf = self._buf
        if buf is None:
            return b""
        data = bytes(buf[self._pos :])
        del buf[:]
        self._pos = 0
        self._scanned = 0
        return data

    def set_line_mode(self, extra=b""):
        """Switch to line mode: Twisted's ``setLineMode``.

        From :meth:`raw_data_received`, pass the unhandled rest of the data
        as ``extra``: it is parsed for lines as if just received, once the
        callback returns. Called from outside ``data_received`` (a timer,
        another connection's callback), ``extra`` is processed at once. Do
        not pass ``extra`` from :meth:`line_received`.

        @param extra: bytes to treat as received, after any still buffered.
        """
        self.line_mode = 1
        if extra:
            return self.data_received(extra)
        return None

    def set_raw_mode(self):
        """Switch to raw mode: Twisted's ``setRawMode``. Further data, and
        what is buffered after the current line, goes to
        :meth:`raw_data_received` instead of :meth:`line_received`."""
        self.line_mode = 0

    def raw_data_received(self, data):
        """Override this for raw data: Twisted's ``rawDataReceived``.

        @param data: bytes received in raw mode, in chunks of any size.
        """
        raise NotImplementedError

    def line_received(self, line):
        """Override this for each line: Twisted's ``lineReceived``.

        A true return value stops processing of the buffered data until the
        next ``data_received``, as in Twisted.

        @param line: the line, bytes, with the delimiter removed.
        """
        raise NotImplementedError

    def send_line(self, line):
        """Send a line, adding the delimiter, in one write: Twisted's
        ``sendLine``.

        @param line: bytes, not including the delimiter.
        """
        return self.transport.write(line + self.delimiter)

    def line_length_exceeded(self, line):
        """Called when a line is too long: Twisted's ``lineLengthExceeded``.
        The default loses the connection; override it to deal with it in
        some other way.

        @param line: the whole buffer, starting with (at least some part of)
            the line that is too long; it may hold more than one line, or
            only the start of that one. The buffer is empty afterwards.
        """
        return self.transport.lose_connection()


class _StringBuffer(Protocol):
    """What the string receivers share: the unprocessed bytes are
    ``_buf[_pos:]``, and nothing can happen before ``_need`` of them are
    there; ``_process`` (each receiver's own) consumes what it can."""

    _buf = None
    _pos = 0
    _need = 1
    _busy = False

    def data_received(self, data):
        """Receive some bytes, calling :meth:`string_received` for each
        complete string: Twisted's ``dataReceived``. Do not override it.

        @param data: bytes, in chunks of any size.
        """
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray()
        buf += data
        if self._busy or len(buf) - self._pos < self._need:
            return
        self._process()


class IntNStringReceiver(_StringBuffer):
    """Generic class for length-prefixed protocols: Twisted's
    ``IntNStringReceiver``. Use one of its subclasses, or set
    ``prefix_length`` (1 to 8) on your own.

    Each string is sent as a big-endian unsigned integer of
    ``prefix_length`` bytes, its length, followed by that many bytes. Each
    received string goes to :meth:`string_received`; a length over
    ``MAX_LENGTH`` goes to :meth:`length_limit_exceeded`, which loses the
    connection by default.

    Unlike Twisted's, no string is delivered once
    ``self.transport.disconnecting`` is true, not even complete ones that
    arrived in the same chunk.

    @cvar MAX_LENGTH: The longest string accepted, in bytes (99999).
    @cvar prefix_length: The size of the length prefix, in bytes.
    """

    MAX_LENGTH = 99999
    prefix_length = None

    # _need: the prefix, then the prefix and the string.

    def _process(self):
        buf = self._buf
        size = self.prefix_length
        self._busy = True
        try:
            while True:
                transport = self.transport
                if transport is not None and transport.disconnecting:
                    return
                pos = self._pos
                start = pos + size
                if len(buf) < start:
                    self._need = size
                    return
                length = int.from_bytes(buf[pos:start], "big")
                if length > self.MAX_LENGTH:
                    # Left in the buffer, as Twisted does: if the connection
                    # stays open, the next data finds it again.
                    self._need = size
                    self.length_limit_exceeded(length)
                    return
                end = start + length
                if len(buf) < end:
                    self._need = size + length
                    return
                string = bytes(buf[start:end])
                self._pos = end
                self._need = size
                self.string_received(string)
        finally:
            self._busy = False
            pos = self._pos
            if pos and pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0

    def string_received(self, string):
        """Override this for each complete string: Twisted's
        ``stringReceived``.

        @param string: the string, bytes, without its length prefix.
        """
        raise NotImplementedError

    def length_limit_exceeded(self, length):
        """Called when a length prefix greater than ``MAX_LENGTH`` is
        received: Twisted's ``lengthLimitExceeded``. The default loses the
        connection.

        @param length: the length the prefix announced.
        """
        self.transport.lose_connection()

    def send_string(self, string):
        """Send a string with its length prefix, in one write: Twisted's
        ``sendString``.

        @param string: bytes, without framing.
        @raise StringTooLongError: if the length does not fit the prefix
            (nothing is written then).
        """
        size = self.prefix_length
        length = len(string)
        if length >> (8 * size):
            raise StringTooLongError(
                "Try to send %s bytes whereas maximum is %s" % (length, 2 ** (8 * size))
            )
        self.transport.write(length.to_bytes(size, "big") + string)


class Int32StringReceiver(IntNStringReceiver):
    """A receiver for int32-prefixed strings: Twisted's
    ``Int32StringReceiver``. The prefix is 4 bytes, the string's length in
    network byte order (up to 4,294,967,295)."""

    prefix_length = 4


class Int16StringReceiver(IntNStringReceiver):
    """A receiver for int16-prefixed strings: Twisted's
    ``Int16StringReceiver``. The prefix is 2 bytes, the string's length in
    network byte order (up to 65,535)."""

    prefix_length = 2


class Int8StringReceiver(IntNStringReceiver):
    """A receiver for int8-prefixed strings: Twisted's
    ``Int8StringReceiver``. The prefix is 1 byte, the string's length (up
    to 255)."""

    prefix_length = 1


class NetstringReceiver(_StringBuffer):
    """A protocol that sends and receives netstrings: Twisted's
    ``NetstringReceiver``.

    A netstring (https://cr.yp.to/proto/netstrings.txt) is the decimal
    length of the data, a colon, the data and a comma: ``b"5:hello,"``.
    Each received netstring's data goes to :meth:`string_received`.

    Malformed input (a length that is empty, has a non-digit or a leading
    zero, or exceeds ``MAX_LENGTH``, even before its colon arrives; a
    terminator that is not a comma) loses the connection, as Twisted's
    ``NetstringParseError`` path does, and sets :attr:`broken_peer`.

    Unlike Twisted's, no string is delivered once
    ``self.transport.disconnecting`` is true, not even complete ones that
    arrived in the same chunk.

    @cvar MAX_LENGTH: The longest string accepted, in bytes (99999).
    @ivar broken_peer: True once the peer sent a malformed netstring:
        Twisted's ``brokenPeer``.
    """

    MAX_LENGTH = 99999
    broken_peer = False

    # _length is the length of the string being received, None while its
    # length is.
    _length = None

    def _process(self):
        buf = self._buf
        self._busy = True
        try:
            while True:
                transport = self.transport
                if transport is not None and transport.disconnecting:
                    return
                pos = self._pos
                available = len(buf) - pos
                length = self._length
                if length is None:
                    if not available:
                        self._need = 1
                        return
                    limit = self.MAX_LENGTH
                    width = len(str(limit))
                    colon = buf.find(b":", pos, pos + width + 1)
                    digits = bytes(buf[pos : pos + width + 1] if colon < 0 else buf[pos:colon])
                    if not (
                        digits
                        and len(digits) <= width
                        and digits.isdigit()
                        and (digits[0] != 0x30 or len(digits) == 1)
                        and int(digits) <= limit
                    ):
                        self._parse_error()
                        return
                    if colon < 0:
                        # A valid start of a length: wait for more of it.
                        self._need = available + 1
                        return
                    self._length = length = int(digits)
                    self._pos = colon + 1
                    self._need = length + 1
                    continue
                if available <= length:
                    self._need = length + 1
                    return
                end = pos + length
                if buf[end] != 0x2C:
                    self._parse_error()
                    return
                string = bytes(buf[pos:end])
                self._pos = end + 1
                self._length = None
                self._need = 1
                self.string_received(string)
        finally:
            self._busy = False
            pos = self._pos
            if pos and pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0

    def _parse_error(self):
        # Twisted's _handleParseError.
        self.broken_peer = True
        self.transport.lose_connection()

    def string_received(self, string):
        """Override this for each complete netstring: Twisted's
        ``stringReceived``.

        @param string: the netstring's data, bytes, without the framing.
        """
        raise NotImplementedError

    def send_string(self, string):
        """Send ``string`` as a netstring, in one write: Twisted's
        ``sendString``.

        @param string: bytes, without framing.
        """
        self.transport.write(b"%d:%s," % (len(string), string))
