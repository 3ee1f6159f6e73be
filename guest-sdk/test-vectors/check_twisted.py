"""Runs the framing vectors (basic.json) against Twisted's own
twisted.protocols.basic, the spec the SDKs follow, through every chunking.

    $TWILL_TEST_PYTHON guest-sdk/test-vectors/check_twisted.py

Twisted's IntNStringReceiver and NetstringReceiver keep calling
stringReceived after loseConnection; Twill's host delivers no data once a
protocol closed, so this harness records nothing once the transport is
disconnecting (Twisted's LineReceiver stops by itself). Exits 1 on any
mismatch. It is also the reference for the chunking rule in "about".
"""

import sys
from pathlib import Path

from twisted.internet.testing import StringTransport
from twisted.protocols import basic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vectors import VECTORS, as_bytes, chunkings, expected, merge_raw  # noqa: E402


class Transport(StringTransport):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def loseConnection(self):
        if not self.disconnecting:
            self.events.append(("lose",))
        super().loseConnection()


def make(case, events):
    kind = case["kind"]
    base = {
        "line": basic.LineReceiver,
        "int32": basic.Int32StringReceiver,
        "int16": basic.Int16StringReceiver,
        "int8": basic.Int8StringReceiver,
        "netstring": basic.NetstringReceiver,
    }[kind]

    class P(base):
        raw = b""

        def record(self, *e):
            if not self.transport.disconnecting:
                events.append(e)
                return True
            return False

        def lineReceived(self, line):
            if self.record("line", line):
                self.act(case.get("on_line", {}).get(line.decode("latin-1")), line, self.sendLine)

        def stringReceived(self, s):
            if self.record("string", s):
                self.act(case.get("on_string", {}).get(s.decode("latin-1")), s, self.sendString)

        def act(self, what, data, send):
            if what == "raw":
                self.setRawMode()
            elif what == "lose":
                self.transport.loseConnection()
            elif what == "echo":
                send(data)

        def rawDataReceived(self, data):
            n = case.get("raw_length")
            if n is None:
                self.record("raw", data)
                return
            self.raw += data
            if len(self.raw) >= n:
                body, rest = self.raw[:n], self.raw[n:]
                self.raw = b""
                self.record("raw", body)
                self.setLineMode(rest)

        def lineLengthExceeded(self, line):
            self.record("exceeded")
            return base.lineLengthExceeded(self, line)

        def lengthLimitExceeded(self, length):
            self.record("exceeded", length)
            return base.lengthLimitExceeded(self, length)

    p = P()
    if "delimiter" in case:
        p.delimiter = as_bytes(case["delimiter"])
    if "max_length" in case:
        p.MAX_LENGTH = case["max_length"]
    return p


failures = 0
runs = 0
for CASE in VECTORS["cases"]:
    want = expected(CASE)
    for pieces in chunkings(as_bytes(CASE["input"])):
        events = []
        p = make(CASE, events)
        t = Transport(events)
        p.makeConnection(t)
        for piece in pieces:
            p.dataReceived(piece)
        runs += 1
        got = merge_raw(CASE, events)
        written = t.value()
        if got != want or written != as_bytes(CASE.get("written", "")):
            failures += 1
            print(f"MISMATCH {CASE['name']}: chunks {[len(x) for x in pieces][:8]} got {got!r:.200} written {written!r:.80}")
            break

for e in VECTORS["encode"]:
    p = make(e, [])
    t = StringTransport()
    p.makeConnection(t)
    send = p.sendLine if e["kind"] == "line" else p.sendString
    try:
        send(as_bytes(e["data"]))
        ok = not e.get("error") and t.value() == as_bytes(e["frame"])
    except basic.StringTooLongError:
        ok = bool(e.get("error")) and t.value() == b""
    if not ok:
        failures += 1
        print(f"MISMATCH encode {e['kind']} {len(as_bytes(e['data']))} bytes")

print(f"{len(VECTORS['cases'])} cases, {runs} chunked runs, {len(VECTORS['encode'])} encodings against Twisted: {failures} mismatches")
sys.exit(1 if failures else 0)
