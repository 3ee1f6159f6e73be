"""A STARTTLS line protocol, both halves, in Python: what Twisted's
``startTLS`` is for (SMTP, IMAP, XMPP), reduced to four commands. The same
protocol as the Rust guest, guests/starttls/src/lib.rs, line for line.
Lines end in ``\\r\\n`` (a bare ``\\n`` is accepted).

Server (``[[listen]]`` with ``tls = { ..., start-tls = true }``):

- ``STARTTLS``: replies ``OK begin TLS``, then starts TLS (the reply goes
  out in plaintext, everything after encrypted); ``ERR <why>`` if refused.
- ``INFO``: replies ``INFO tls=none``, or ``INFO version=... cipher=...
  sni=... alpn=... subject=... sha256=...`` (``-`` for what is absent).
- ``QUIT``: closes the connection.
- any other line: replies ``ECHO <line>``.

Client (``[[connect]]`` with ``tls = { ..., start-tls = true }``): sends
``STARTTLS``; on ``OK``, starts TLS and sends ``INFO`` then ``QUIT``;
prints every line it receives (``client got: <line>``) and how the
connection ended (the reason as ``repr``: ``Reason('done', '')``).

Build: scripts/build-polyglot-guests.sh, or, from the repository root::

    componentize-py -d wit -w peer componentize \\
        -p guest-sdk/python -p guests/python-starttls starttls -o python-starttls.wasm
"""

from twill import ClientFactory, Factory, Protocol, StartTLSError, serve


class Lines:
    """One side's line buffer."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        """Appends ``data``; returns the complete lines, without their
        endings, decoded as UTF-8 (invalid bytes replaced)."""
        self.buf += data
        out = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                return out
            line, self.buf = self.buf[:i], self.buf[i + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            out.append(line.decode("utf-8", "replace"))


def info_line(transport):
    """``INFO``'s reply."""
    i = transport.tls_info()
    if i is None:
        return "INFO tls=none"
    alpn = "-" if i.alpn_protocol is None else i.alpn_protocol.decode("utf-8", "replace")
    c = i.peer_certificate
    subject, sha256 = ("-", "-") if c is None else (c.subject.replace(" ", ""), c.sha256)
    sni = "-" if i.server_name is None else i.server_name
    return "INFO version=%s cipher=%s sni=%s alpn=%s subject=%s sha256=%s" % (
        i.version,
        i.cipher_suite,
        sni,
        alpn,
        subject,
        sha256,
    )


class Server(Protocol):
    """The server side."""

    def __init__(self):
        self.lines = Lines()

    def data_received(self, data):
        t = self.transport
        for line in self.lines.feed(data):
            if line == "STARTTLS":
                # The reply is queued first, so it goes in plaintext.
                t.write(b"OK begin TLS\r\n")
                try:
                    t.start_tls()
                except StartTLSError as e:
                    t.write(("ERR %s\r\n" % e).encode())
                else:
                    # Lines sent after STARTTLS in the same plaintext are
                    # dropped, not answered inside TLS (CVE-2011-0411).
                    self.lines = Lines()
                    return
            elif line == "INFO":
                t.write(("%s\r\n" % info_line(t)).encode())
            elif line == "QUIT":
                t.lose_connection()
            else:
                t.write(("ECHO %s\r\n" % line).encode())


class Client(Protocol):
    """The client side."""

    def __init__(self):
        self.lines = Lines()

    def connection_made(self):
        print("client connected: %s" % info_line(self.transport))
        self.transport.write(b"STARTTLS\r\n")

    def data_received(self, data):
        t = self.transport
        for line in self.lines.feed(data):
            print("client got: %s" % line)
            if line.startswith("OK"):
                try:
                    t.start_tls()
                except StartTLSError as e:
                    print("client: cannot start TLS: %s" % e)
                    t.lose_connection()
                else:
                    t.write(b"INFO\r\n")
                    t.write(b"QUIT\r\n")
                    self.lines = Lines()
                    return
            elif line.startswith("INFO"):
                print("client sees: %s" % info_line(t))

    def connection_lost(self, reason):
        print("client lost: %r" % (reason,))


class Clients(ClientFactory):
    """Builds a :class:`Client` for every connection."""

    protocol = Client

    def client_connection_failed(self, reason):
        print("client failed: %r" % (reason,))


serve(server=Factory.for_protocol(Server), client=Clients())
