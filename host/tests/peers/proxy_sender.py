"""Open a connection to a listener that reads PROXY protocol headers and
send it one case: a valid header (whole, or cut into pieces) or a
malformed one, then the testkit's `addr` command.

    proxy_sender.py HOST PORT CASE

Prints one JSON object: {"case", "answer" (what came back, decoded),
"end": "eof" | "reset" | "timeout", "seconds"}. The headers are built here
by hand from the spec (haproxy.org/download/2.9/doc/proxy-protocol.txt),
not with the parser under test.
"""

import json
import socket
import struct
import sys
import time

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd=0x21, fam=0x11, body=None, length=None):
    if body is None:
        # 198.51.100.9:4000 -> 192.0.2.1:80
        body = socket.inet_aton("198.51.100.9") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 4000, 80)
    n = len(body) if length is None else length
    return SIG + bytes([cmd, fam]) + struct.pack("!H", n) + body


def v2_ipv6():
    body = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + struct.pack("!HH", 51000, 443)
    )
    return v2(fam=0x21, body=body)


def v2_with_tlvs():
    # A PP2_TYPE_UNIQUE_ID TLV and a NOOP, as HAProxy may add.
    base = socket.inet_aton("198.51.100.9") + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 4000, 80)
    tlvs = bytes([0x05]) + struct.pack("!H", 8) + b"abcdefgh" + bytes([0x04]) + struct.pack("!H", 3) + b"\0\0\0"
    return v2(body=base + tlvs)


# name: list of chunks to send (a pause between chunks), then "addr\n".
CASES = {
    "v1": [b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"],
    "v1-tcp6": [b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"],
    "v1-unknown": [b"PROXY UNKNOWN\r\n"],
    "v1-split": [b"PROX", b"Y TCP4 203.0.113.7 ", b"192.0.2.1 51000 443", b"\r\n"],
    "v2": [v2()],
    "v2-ipv6": [v2_ipv6()],
    "v2-tlvs": [v2_with_tlvs()],
    "v2-local": [v2(cmd=0x20, fam=0x00, body=b"")],
    "v2-split": [v2()[:5], v2()[5:17], v2()[17:]],
    # Malformed: each must be closed without an answer.
    "none": [],
    "http": [b"GET / HTTP/1.0\r\n\r\n"],
    "v1-bad-address": [b"PROXY TCP4 999.0.0.1 192.0.2.1 51000 443\r\n"],
    "v1-bad-port": [b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 99999\r\n"],
    "v1-too-long": [b"PROXY TCP4 " + b"1" * 200 + b"\r\n"],
    "v1-lf-only": [b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\n"],
    "v2-bad-version": [SIG + bytes([0x31, 0x11]) + struct.pack("!H", 12) + b"\0" * 12],
    "v2-bad-family": [SIG + bytes([0x21, 0x51]) + struct.pack("!H", 12) + b"\0" * 12],
    "v2-short-addresses": [v2(body=b"\0" * 4)],
    "v2-oversize": [v2(length=0xFFFF)[:16] + b"\0" * 64],
}
HALF = {
    # A header cut short, then the sender's FIN.
    "v2-truncated": v2()[:20],
    "v1-truncated": b"PROXY TCP4 203.0.113.7",
}
SILENT = "silent"


def main():
    host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.create_connection((host, port), timeout=10)
    start = time.monotonic()
    if case in CASES:
        for i, chunk in enumerate(CASES[case]):
            if i:
                time.sleep(0.05)
            s.sendall(chunk)
        try:
            s.sendall(b"addr\n")
        except OSError:
            pass
    elif case in HALF:
        s.sendall(HALF[case])
        s.shutdown(socket.SHUT_WR)
    elif case != SILENT:
        raise SystemExit(f"unknown case {case}")
    got = b""
    end = "eof"
    try:
        while not got.endswith(b"\n"):
            b = s.recv(4096)
            if not b:
                break
            got += b
    except ConnectionResetError:
        end = "reset"
    except socket.timeout:
        end = "timeout"
    print(json.dumps({"case": case, "answer": got.decode("latin-1"), "end": end, "seconds": round(time.monotonic() - start, 3)}))


if __name__ == "__main__":
    main()
