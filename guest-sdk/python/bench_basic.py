"""Benchmark of twill.basic's receivers, each input delivered one byte at a
time (the worst chunking: one data_received call per byte), under CPython.

    /var/tmp/twill-test-venv/bin/python guest-sdk/python/bench_basic.py

Cases: LineReceiver on 64-byte lines, LineReceiver on one huge line
(MAX_LENGTH raised), Int32StringReceiver and NetstringReceiver on one huge
string; at 1, 4 and 16 MiB. Receiving is linear when the 16 MiB run takes
about 4 times the 4 MiB one. "nothing" is a protocol whose data_received
does nothing: the cost of the calls themselves.

If Twisted imports (the interpreter above has it), its own
twisted.protocols.basic runs the same cases at 256 KiB and 1 MiB, for
reference: it is quadratic on huge frames (16 times the time for 4 times
the bytes), so a size is skipped once the previous one took over 20 s, and
a run is cut at 120 s (shown as ">").

Prints a table, then a one-line JSON summary. Options: --sizes 1,4 (MiB),
--no-twisted.
"""

import argparse
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twill  # noqa: E402
from twill import basic  # noqa: E402
from twill.testing import StringTransport  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
ONE = [bytes([i]) for i in range(256)]
BIG = 1 << 25  # MAX_LENGTH for the huge frames: 32 MiB
STEP = 64 * KiB
CUT = 120.0  # seconds: a run is stopped there
SKIP = 20.0  # seconds: the next size is skipped after a run this long


def lines_input(n):
    line = b"a" * 62 + b"\r\n"
    count = n // 64
    return line * count, count


def make_inputs(n):
    """{case: (data, check)} where check(result) says whether the
    receiver's result (a count or a length) is right."""
    lines, count = lines_input(n)
    line = b"x" * (n - 2) + b"\r\n"
    int32 = (n - 4).to_bytes(4, "big") + b"y" * (n - 4)
    size = n - len(b"%d:," % n)
    net = b"%d:" % size + b"z" * size + b","
    return {
        "nothing": (b"n" * n, lambda r: r == 0),
        "lines-64": (lines, lambda r: r == count),
        "line-huge": (line, lambda r: r == n - 2),
        "int32-huge": (int32, lambda r: r == n - 4),
        "netstring-huge": (net, lambda r: r == size),
    }


class Result:
    """What a receiver got: a count of frames and the size of the last."""

    count = 0
    size = 0

    def __call__(self, frame):
        self.count += 1
        self.size = len(frame)


def twill_protocol(case):
    got = Result()
    if case == "nothing":

        class P(twill.Protocol):
            def data_received(self, data):
                pass

        return P(), lambda: 0
    if case in ("lines-64", "line-huge"):

        class P(basic.LineReceiver):
            MAX_LENGTH = BIG if case == "line-huge" else 16384
            line_received = staticmethod(got)

    elif case == "int32-huge":

        class P(basic.Int32StringReceiver):
            MAX_LENGTH = BIG
            string_received = staticmethod(got)

    else:

        class P(basic.NetstringReceiver):
            MAX_LENGTH = BIG
            string_received = staticmethod(got)

    result = (lambda: got.count) if case == "lines-64" else (lambda: got.size if got.count == 1 else -1)
    p = P()
    p.make_connection(StringTransport())
    return p, result


def twisted_protocol(case):
    from twisted.internet.testing import StringTransport as TwistedTransport
    from twisted.internet.protocol import Protocol
    from twisted.protocols import basic as tbasic

    got = Result()
    if case == "nothing":

        class P(Protocol):
            def dataReceived(self, data):
                pass

        p = P()
        p.makeConnection(TwistedTransport())
        return p, lambda: 0
    if case in ("lines-64", "line-huge"):

        class P(tbasic.LineReceiver):
            MAX_LENGTH = BIG if case == "line-huge" else 16384
            lineReceived = staticmethod(got)

    elif case == "int32-huge":

        class P(tbasic.Int32StringReceiver):
            MAX_LENGTH = BIG
            stringReceived = staticmethod(got)

    else:

        class P(tbasic.NetstringReceiver):
            MAX_LENGTH = BIG
            stringReceived = staticmethod(got)

    result = (lambda: got.count) if case == "lines-64" else (lambda: got.size if got.count == 1 else -1)
    p = P()
    p.makeConnection(TwistedTransport())
    return p, result


def run(impl, case, data, check):
    """Seconds to deliver `data` one byte at a time; (seconds, complete)."""
    p, result = (twill_protocol if impl == "twill" else twisted_protocol)(case)
    feed = p.data_received if impl == "twill" else p.dataReceived
    start = time.perf_counter()
    for off in range(0, len(data), STEP):
        deque(map(feed, map(ONE.__getitem__, data[off : off + STEP])), maxlen=0)
        if time.perf_counter() - start > CUT:
            return time.perf_counter() - start, False
    elapsed = time.perf_counter() - start
    if not check(result()):
        raise SystemExit("%s %s %d bytes: wrong result %r" % (impl, case, len(data), result()))
    return elapsed, True


def size_name(n):
    return "%d MiB" % (n // MiB) if n % MiB == 0 else "%d KiB" % (n // KiB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,4,16", help="twill sizes in MiB (default 1,4,16)")
    ap.add_argument("--no-twisted", action="store_true")
    args = ap.parse_args()
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    twisted = None
    if not args.no_twisted:
        try:
            import twisted as twisted_module

            twisted = twisted_module.__version__
        except ImportError:
            twisted = None
    plan = [("twill", sizes)]
    if twisted:
        plan.append(("twisted", [256 * KiB, 1 * MiB]))
    cases = list(make_inputs(64))
    rows = []
    print("Python %s, %s; one data_received call per byte" % (platform.python_version(), platform.machine()))
    print()
    header = "%-8s %-15s %8s %10s %8s" % ("impl", "case", "size", "seconds", "MiB/s")
    print(header)
    print("-" * len(header))
    for impl, impl_sizes in plan:
        for case in cases:
            previous = 0.0
            for n in impl_sizes:
                if previous > SKIP:
                    rows.append({"impl": impl, "case": case, "bytes": n, "seconds": None, "skipped": True})
                    print("%-8s %-15s %8s %10s %8s" % (impl, case, size_name(n), "skipped", "-"), flush=True)
                    continue
                data, check = make_inputs(n)[case]
                seconds, complete = run(impl, case, data, check)
                previous = seconds
                rate = n / MiB / seconds
                rows.append(
                    {
                        "impl": impl,
                        "case": case,
                        "bytes": n,
                        "seconds": round(seconds, 3),
                        "mib_per_s": round(rate, 3) if complete else None,
                        "complete": complete,
                    }
                )
                shown = ("%.2f" % seconds) if complete else (">%.0f" % seconds)
                print(
                    "%-8s %-15s %8s %10s %8s" % (impl, case, size_name(n), shown, ("%.3g" % rate) if complete else "-"),
                    flush=True,
                )
    print()
    ratios = {}
    for impl, impl_sizes in plan:
        if len(impl_sizes) < 2:
            continue
        a, b = impl_sizes[-2], impl_sizes[-1]
        for case in cases:
            t = {r["bytes"]: r for r in rows if r["impl"] == impl and r["case"] == case}
            ra, rb = t.get(a), t.get(b)
            if ra and rb and ra.get("complete") and rb.get("complete"):
                ratios["%s %s" % (impl, case)] = round(rb["seconds"] / ra["seconds"], 2)
        print(
            "%s: time ratio %s / %s (linear ~%d, quadratic ~%d):"
            % (impl, size_name(b), size_name(a), b // a, (b // a) ** 2)
        )
        for case in cases:
            key = "%s %s" % (impl, case)
            print("  %-15s %s" % (case, ratios.get(key, "n/a (skipped or cut)")))
    summary = {
        "bench": "guest-sdk/python/bench_basic.py",
        "python": platform.python_version(),
        "twisted": twisted,
        "delivery": "1 byte per data_received",
        "rows": rows,
        "ratios": ratios,
    }
    print()
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
