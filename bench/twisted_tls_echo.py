"""The seed's echo server (bench/twisted_echo.py) over Twisted's TLS: the
Twisted baseline for bench/tls.py. `reactor.listenSSL` with pyOpenSSL's
context from `ssl.CertificateOptions` (Twisted's defaults: TLS 1.2 and 1.3,
its cipher list, no client auth, one certificate).

Usage: twisted_tls_echo.py PORT CERT.pem KEY.pem   (port 0 picks a free one;
the bound port is announced on stderr: `... listening on 127.0.0.1:PORT`)
"""
import sys

from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    protocol = Echo


def main():
    if len(sys.argv) != 4:
        raise SystemExit("usage: twisted_tls_echo.py PORT CERT.pem KEY.pem")
    port, cert_path, key_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        from twisted.internet import epollreactor  # noqa: F401
    except ImportError:
        pass
    with open(cert_path, "rb") as f:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    with open(key_path, "rb") as f:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    options = ssl.CertificateOptions(privateKey=key, certificate=cert)
    listening = reactor.listenSSL(port, EchoFactory(), options, backlog=4096, interface="127.0.0.1")
    bound = listening.getHost().port
    print(f"twisted tls echo listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
