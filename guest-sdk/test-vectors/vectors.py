"""The framing vectors (basic.json) and their rules, for the Python tests
that run them: guest-sdk/python/tests/test_basic.py and check_twisted.py
(Twisted's own module). The Rust and JavaScript SDKs implement the same
two rules in their own tests.
"""

import json
from pathlib import Path

VECTORS = json.loads((Path(__file__).resolve().parent / "basic.json").read_text(encoding="utf-8"))


def as_bytes(v):
    """A vector byte string: a latin-1 string or a list of parts."""
    if isinstance(v, str):
        return v.encode("latin-1")
    out = bytearray()
    for part in v:
        out += as_bytes(part) if isinstance(part, str) else as_bytes(part["repeat"]) * part["count"]
    return bytes(out)


def chunkings(data):
    """Every way the vectors' rule cuts `data` into data_received calls."""
    n = len(data)
    if n == 0:
        yield [data]
        return
    if n <= 12:
        for mask in range(1 << (n - 1)):
            pieces, start = [], 0
            for i in range(1, n):
                if mask & (1 << (i - 1)):
                    pieces.append(data[start:i])
                    start = i
            pieces.append(data[start:])
            yield pieces
        return
    sizes = range(1, n + 1) if n <= 512 else sorted({1, 2, 3, 7, 64, 1000, 4096, n})
    for k in sizes:
        yield [data[i : i + k] for i in range(0, n, k)]
    cuts = range(1, n) if n <= 512 else sorted({max(1, n * j // 17) for j in range(1, 17)})
    for i in cuts:
        yield [data[:i], data[i:]]


def expected(case):
    """The case's events with their bytes decoded, as tuples."""
    evs = []
    for e in case["events"]:
        if e[0] in ("line", "raw", "string"):
            evs.append((e[0], as_bytes(e[1])))
        else:
            evs.append(tuple(e))
    return evs


def merge_raw(case, events):
    """Adjacent raw events merged (their sizes depend on the chunking),
    unless the case collects raw_length bytes itself."""
    out = []
    for e in events:
        if e[0] == "raw" and out and out[-1][0] == "raw" and "raw_length" not in case:
            out[-1] = ("raw", out[-1][1] + e[1])
        else:
            out.append(e)
    return out
