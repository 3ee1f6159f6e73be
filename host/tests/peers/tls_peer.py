"""Real TLS peers for host/tests/tls_peers.rs, one per mode:

  client PORT CA          Python's ssl as a client of a Twill echo: every
                          chunk size from 1 to 64 of a pattern, echoed
                          byte-exact, then unwrap() (close_notify both ways).
  echo-server CERT KEY    Python's ssl as an echo server for a Twill
                          connector: prints its port, serves one connection.
  twisted-client PORT CA  the seed's echo client (Twisted) over TLS against
                          Twill: connectSSL, "hello world", prints the echo.
  twisted-server CERT KEY the seed's echo server (Twisted) over TLS:
                          listenSSL on port 0, prints the port.
"""
import socket
import ssl
import sys


def pattern(n, seed):
    return bytes((i * 31 + seed) % 251 for i in range(n))


def client(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    total = 0
    for chunk in range(1, 65):
        raw = socket.create_connection(("127.0.0.1", port))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        payload = pattern(997, chunk)
        for i in range(0, len(payload), chunk):
            s.sendall(payload[i : i + chunk])
        got = b""
        while len(got) < len(payload):
            b = s.recv(65536)
            if not b:
                break
            got += b
        assert got == payload, f"chunk {chunk}: echo differs"
        # Our close_notify; then the server's (unwrap raises without it).
        s.unwrap().close()
        total += len(got)
    print(f"ok {total}", flush=True)


def echo_server(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    raw, _ = ls.accept()
    s = ctx.wrap_socket(raw, server_side=True)
    got = 0
    while True:
        try:
            b = s.recv(65536)
        except ssl.SSLEOFError:
            print("truncated", flush=True)
            return
        if not b:
            break
        got += len(b)
        s.sendall(b)
    print(f"served {got} bytes, close_notify received", flush=True)
    s.unwrap().close()


def twisted_client(port, ca):
    from twisted.internet import reactor, ssl as tssl
    from twisted.internet.protocol import ClientFactory, Protocol

    class EchoClient(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello world")

        def dataReceived(self, data):
            print("Server said:", data.decode(), flush=True)
            self.transport.loseConnection()

    class EchoClientFactory(ClientFactory):
        protocol = EchoClient

        def clientConnectionFailed(self, connector, reason):
            print("Connection failed - goodbye", reason.getErrorMessage(), flush=True)
            reactor.stop()

        def clientConnectionLost(self, connector, reason):
            print("Connection lost - goodbye", flush=True)
            reactor.stop()

    with open(ca) as f:
        root = tssl.Certificate.loadPEM(f.read())
    options = tssl.optionsForClientTLS("localhost", trustRoot=root)
    reactor.connectSSL("127.0.0.1", port, EchoClientFactory(), options)
    reactor.run()


def twisted_server(cert, key):
    from twisted.internet import reactor, ssl as tssl
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

        def connectionLost(self, reason):
            print("twisted server: connection lost:", reason.type.__name__, flush=True)
            reactor.callLater(0.1, reactor.stop)

    with open(cert) as c, open(key) as k:
        pem = c.read() + k.read()
    options = tssl.PrivateCertificate.loadPEM(pem).options()
    port = reactor.listenSSL(0, Factory.forProtocol(Echo), options, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    mode, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
    {
        "client": lambda: client(int(a), b),
        "echo-server": lambda: echo_server(a, b),
        "twisted-client": lambda: twisted_client(int(a), b),
        "twisted-server": lambda: twisted_server(a, b),
    }[mode]()
