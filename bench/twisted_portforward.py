"""Twisted's port forwarder (twisted.protocols.portforward), the Twisted
baseline for bench/proxy.py.

    python twisted_portforward.py PORT BACKEND_HOST BACKEND_PORT

PORT 0 picks a free port; the bound address is announced on stderr as
bench/twisted_echo.py does.
"""
import sys

from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9202
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    backend = int(sys.argv[3]) if len(sys.argv) > 3 else 9001
    try:
        from twisted.internet import epollreactor  # noqa: F401
    except ImportError:
        pass
    listening = reactor.listenTCP(port, ProxyFactory(host, backend), backlog=4096, interface="127.0.0.1")
    bound = listening.getHost().port
    print(f"twisted portforward listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
