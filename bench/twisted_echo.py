"""The seed's echo server (Twisted's echoserv.py), the Twisted baseline."""
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    protocol = Echo


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9002
    try:
        from twisted.internet import epollreactor  # noqa: F401
    except ImportError:
        pass
    reactor.listenTCP(port, EchoFactory(), backlog=4096, interface="127.0.0.1")
    print(f"twisted echo listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
