"""Unit tests for twill.basic under plain CPython: the shared framing vectors
in guest-sdk/test-vectors/basic.json (the Rust and JavaScript SDKs, and
Twisted itself through check_twisted.py, run the same ones), through every
chunking, plus linearity and the API details the vectors do not cover.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import sys
import time
import unittest
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import twill  # noqa: E402
from twill import basic  # noqa: E402
from twill.testing import StringTransport, connect  # noqa: E402

sys.path.insert(0, str(HERE.parent.parent / "test-vectors"))
from vectors import VECTORS, as_bytes, chunkings, expected, merge_raw  # noqa: E402

KINDS = {
    "line": basic.LineReceiver,
    "int32": basic.Int32StringReceiver,
    "int16": basic.Int16StringReceiver,
    "int8": basic.Int8StringReceiver,
    "netstring": basic.NetstringReceiver,
}


class RecordingTransport(StringTransport):
    """The vectors' fake transport: records ["lose"] the first time."""

    def __init__(self, events):
        super().__init__()
        self.events = events

    def lose_connection(self):
        if not self.disconnecting:
            self.events.append(("lose",))
        super().lose_connection()


def make(case, events):
    """The vectors' test protocol for `case`. It records every callback,
    with no check of its own: stopping once disconnecting is the
    receiver's job."""
    base = KINDS[case["kind"]]
    on_line = case.get("on_line", {})
    on_string = case.get("on_string", {})
    raw_length = case.get("raw_length")

    class P(base):
        raw = b""

        def act(self, what, data, send):
            if what == "raw":
                self.set_raw_mode()
            elif what == "lose":
                self.transport.lose_connection()
            elif what == "echo":
                send(data)

        def line_received(self, line):
            events.append(("line", line))
            self.act(on_line.get(line.decode("latin-1")), line, self.send_line)

        def string_received(self, string):
            events.append(("string", string))
            self.act(on_string.get(string.decode("latin-1")), string, self.send_string)

        def raw_data_received(self, data):
            if raw_length is None:
                events.append(("raw", data))
                return
            self.raw += data
            if len(self.raw) >= raw_length:
                body, rest = self.raw[:raw_length], self.raw[raw_length:]
                self.raw = b""
                events.append(("raw", body))
                self.set_line_mode(rest)

        def line_length_exceeded(self, line):
            events.append(("exceeded",))
            return base.line_length_exceeded(self, line)

        def length_limit_exceeded(self, length):
            events.append(("exceeded", length))
            return base.length_limit_exceeded(self, length)

    p = P()
    if "delimiter" in case:
        p.delimiter = as_bytes(case["delimiter"])
    if "max_length" in case:
        p.MAX_LENGTH = case["max_length"]
    return p


class VectorTest(unittest.TestCase):
    def test_cases(self):
        """Every case, through every chunking: the same events and output."""
        runs = 0
        for case in VECTORS["cases"]:
            with self.subTest(case["name"]):
                want = expected(case)
                want_written = as_bytes(case.get("written", ""))
                for pieces in chunkings(as_bytes(case["input"])):
                    events = []
                    p = make(case, events)
                    t = connect(p, RecordingTransport(events))
                    for piece in pieces:
                        p.data_received(piece)
                    runs += 1
                    got = merge_raw(case, events)
                    if got != want or t.value() != want_written:
                        self.fail(
                            "chunks %r: events %.300r, want %.300r; written %.100r, want %.100r"
                            % ([len(x) for x in pieces][:12], got, want, t.value(), want_written)
                        )
        self.assertGreater(runs, len(VECTORS["cases"]))

    def test_cases_cover_every_kind(self):
        self.assertEqual({c["kind"] for c in VECTORS["cases"]}, set(KINDS))

    def test_encode(self):
        for e in VECTORS["encode"]:
            data = as_bytes(e["data"])
            with self.subTest(kind=e["kind"], size=len(data)):
                p = make(e, [])
                t = connect(p)
                send = p.send_line if e["kind"] == "line" else p.send_string
                if e.get("error"):
                    with self.assertRaises(basic.StringTooLongError):
                        send(data)
                    self.assertEqual(t.value(), b"")
                else:
                    send(data)
                    self.assertEqual(t.value(), as_bytes(e["frame"]))


class Lines(basic.LineReceiver):
    def __init__(self):
        self.lines = []
        self.raw = []

    def line_received(self, line):
        self.lines.append(line)

    def raw_data_received(self, data):
        self.raw.append(data)


class LineReceiverTest(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(basic.LineReceiver.delimiter, b"\r\n")
        self.assertEqual(basic.LineReceiver.MAX_LENGTH, 16384)
        self.assertEqual(basic.Int32StringReceiver.MAX_LENGTH, 99999)
        self.assertEqual(basic.NetstringReceiver.MAX_LENGTH, 99999)

    def test_lines_are_bytes(self):
        p = Lines()
        connect(p)
        p.data_received(bytearray(b"ab\r\n"))
        p.data_received(memoryview(b"cd\r\n"))
        self.assertEqual(p.lines, [b"ab", b"cd"])
        self.assertTrue(all(type(x) is bytes for x in p.lines))

    def test_clear_line_buffer(self):
        class P(Lines):
            def line_received(self, line):
                super().line_received(line)
                if line == b"CLEAR":
                    self.cleared = self.clear_line_buffer()

        p = P()
        connect(p)
        p.data_received(b"a\r\nCLEAR\r\nb\r\nc")
        self.assertEqual(p.lines, [b"a", b"CLEAR"])
        self.assertEqual(p.cleared, b"b\r\nc")
        # The buffer is empty: what follows starts a new line.
        p.data_received(b"d\r\n")
        self.assertEqual(p.lines, [b"a", b"CLEAR", b"d"])
        # Outside a callback, it returns the partial line.
        p.data_received(b"partial")
        self.assertEqual(p.clear_line_buffer(), b"partial")
        self.assertEqual(p.clear_line_buffer(), b"")
        p.data_received(b"\r\n")
        self.assertEqual(p.lines[-1], b"")

    def test_clear_line_buffer_before_data(self):
        self.assertEqual(Lines().clear_line_buffer(), b"")

    def test_set_line_mode_outside_data_received(self):
        """Called from a timer, say: the extra data is processed at once."""
        p = Lines()
        connect(p)
        p.set_raw_mode()
        p.data_received(b"raw\r\n")
        self.assertEqual(p.raw, [b"raw\r\n"])
        p.set_line_mode(b"one\r\ntwo\r\nthr")
        self.assertEqual(p.lines, [b"one", b"two"])
        p.data_received(b"ee\r\n")
        self.assertEqual(p.lines, [b"one", b"two", b"three"])
        self.assertEqual(p.raw, [b"raw\r\n"])

    def test_set_line_mode_without_extra(self):
        p = Lines()
        connect(p)
        p.set_raw_mode()
        self.assertFalse(p.line_mode)
        p.set_line_mode()
        self.assertTrue(p.line_mode)
        p.data_received(b"x\r\n")
        self.assertEqual(p.lines, [b"x"])

    def test_set_line_mode_from_raw_data_received_appends(self):
        """Inside data_received, the extra data follows what is buffered."""

        class P(Lines):
            def line_received(self, line):
                super().line_received(line)
                if line == b"RAW":
                    self.set_raw_mode()

            def raw_data_received(self, data):
                super().raw_data_received(data)
                self.set_line_mode(b"x\r\n")

        p = P()
        connect(p)
        p.data_received(b"RAW\r\nbody")
        self.assertEqual(p.raw, [b"body"])
        self.assertEqual(p.lines, [b"RAW", b"x"])

    def test_delimiter_changed_midway(self):
        p = Lines()
        connect(p)
        p.data_received(b"a\nb")
        p.delimiter = b"\n"
        p.data_received(b"c\n")
        self.assertEqual(p.lines, [b"a", b"bc"])

    def test_line_length_exceeded_gets_the_buffer(self):
        class P(Lines):
            MAX_LENGTH = 3

            def line_length_exceeded(self, line):
                self.exceeded = line

        p = P()
        t = connect(p)
        p.data_received(b"ab\r\nabcd\r\nef\r\n")
        self.assertEqual(p.lines, [b"ab"])
        self.assertEqual(p.exceeded, b"abcd\r\nef\r\n")
        self.assertFalse(t.disconnecting)
        # The buffer was cleared; the connection goes on.
        p.data_received(b"gh\r\n")
        self.assertEqual(p.lines, [b"ab", b"gh"])

    def test_no_delivery_after_abort(self):
        class P(Lines):
            def line_received(self, line):
                super().line_received(line)
                self.transport.abort_connection()

        p = P()
        t = connect(p)
        p.data_received(b"a\r\nb\r\n")
        p.data_received(b"c\r\n")
        self.assertEqual(p.lines, [b"a"])
        self.assertTrue(t.aborted)

    def test_default_callbacks_raise(self):
        p = basic.LineReceiver()
        connect(p)
        with self.assertRaises(NotImplementedError):
            p.data_received(b"x\r\n")


class StringReceiverTest(unittest.TestCase):
    def test_send_string_too_long_writes_nothing(self):
        for cls, limit in (
            (basic.Int8StringReceiver, 256),
            (basic.Int16StringReceiver, 65536),
        ):
            with self.subTest(cls.__name__):
                p = cls()
                t = connect(p)
                with self.assertRaises(basic.StringTooLongError):
                    p.send_string(b"x" * limit)
                self.assertEqual(t.value(), b"")
                p.send_string(b"x" * (limit - 1))
                self.assertEqual(len(t.value()), cls.prefix_length + limit - 1)

    def test_string_too_long_is_an_assertion_error(self):
        self.assertTrue(issubclass(basic.StringTooLongError, AssertionError))

    def test_int32_send_string(self):
        p = basic.Int32StringReceiver()
        t = connect(p)
        p.send_string(b"")
        p.send_string(b"hello")
        self.assertEqual(t.value(), b"\0\0\0\0\0\0\0\x05hello")

    def test_length_limit_exceeded_override_keeps_the_prefix(self):
        """As in Twisted, the offending prefix stays in the buffer."""

        class P(basic.Int8StringReceiver):
            MAX_LENGTH = 2

            def __init__(self):
                self.exceeded = []

            def length_limit_exceeded(self, length):
                self.exceeded.append(length)

        p = P()
        t = connect(p)
        p.data_received(b"\x03")
        p.data_received(b"a")
        self.assertEqual(p.exceeded, [3, 3])
        self.assertFalse(t.disconnecting)

    def test_netstring_broken_peer(self):
        class P(basic.NetstringReceiver):
            def string_received(self, string):
                pass

        p = P()
        t = connect(p)
        p.data_received(b"3:abc,")
        self.assertFalse(p.broken_peer)
        p.data_received(b"3:abc;")
        self.assertTrue(p.broken_peer)
        self.assertTrue(t.disconnecting)

    def test_netstring_raised_max_length(self):
        class P(basic.NetstringReceiver):
            MAX_LENGTH = 1 << 25

            def string_received(self, string):
                self.got = string

        p = P()
        connect(p)
        p.data_received(b"%d:" % (1 << 20) + b"z" * (1 << 20) + b",")
        self.assertEqual(p.got, b"z" * (1 << 20))


# Differential tests: random streams, cut at random, against simple
# reference models that see the whole input at once (Twisted's logic for
# lines; the netstring and length-prefix rules for strings). The events must
# not depend on the chunking.


def _random_chunks(rng, data):
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12)))) if len(data) > 1 else []
    if rng.random() < 0.2:
        cuts = list(range(1, len(data)))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _ref_lines(data, delimiter, max_length):
    """Twisted's LineReceiver.dataReceived on the whole input, with a
    line_length_exceeded that records and does not lose the connection."""
    events, buffer = [], data
    while buffer:
        try:
            line, buffer = buffer.split(delimiter, 1)
        except ValueError:
            if len(buffer) >= max_length + len(delimiter):
                events.append(("exceeded", buffer))
            break
        if len(line) > max_length:
            events.append(("exceeded", line + delimiter + buffer))
            break
        events.append(("line", line))
    return events


def _ref_netstrings(data, max_length):
    events, i = [], 0
    while i < len(data):
        j = data.find(b":", i)
        digits = data[i:j] if j >= 0 else data[i:]
        if not (digits.isdigit() and (len(digits) == 1 or digits[:1] != b"0") and int(digits) <= max_length):
            events.append(("lose",))
            break
        if j < 0:
            break
        length = int(digits)
        if len(data) - j - 1 < length + 1:
            break
        if data[j + 1 + length] != ord(","):
            events.append(("lose",))
            break
        events.append(("string", data[j + 1 : j + 1 + length]))
        i = j + 2 + length
    return events


def _ref_int16(data, max_length):
    events, i = [], 0
    while len(data) - i >= 2:
        length = int.from_bytes(data[i : i + 2], "big")
        if length > max_length:
            events.append(("exceeded", length))
            events.append(("lose",))
            break
        if len(data) - i - 2 < length:
            break
        events.append(("string", data[i + 2 : i + 2 + length]))
        i += 2 + length
    return events


class DifferentialTest(unittest.TestCase):
    def test_lines(self):
        import random

        rng = random.Random(1)
        for _ in range(400):
            delimiter = rng.choice([b"\r\n", b"\n", b"ab", b"aab", b"\r\n\r\n"])
            max_length = rng.randrange(0, 12)
            data = bytes(rng.choice(b"ab\r\nx") for _ in range(rng.randrange(0, 60)))
            want = _ref_lines(data, delimiter, max_length)
            for _ in range(4):
                events = []

                class P(basic.LineReceiver):
                    def line_received(self, line):
                        events.append(("line", line))

                    def line_length_exceeded(self, line):
                        events.append(("exceeded", line))
                        self.stopped = True

                p = P()
                p.delimiter, p.MAX_LENGTH, p.stopped = delimiter, max_length, False
                connect(p)
                for chunk in _random_chunks(rng, data):
                    if p.stopped:
                        break
                    p.data_received(chunk)
                # What line_length_exceeded gets is the buffer at that time:
                # the rest of the input, or the start of it.
                if events and want and events[-1][0] == want[-1][0] == "exceeded":
                    self.assertTrue(want[-1][1].startswith(events[-1][1]), (data, events[-1]))
                    self.assertGreaterEqual(len(events[-1][1]), min(len(want[-1][1]), max_length + 1))
                    events[-1] = want[-1]
                self.assertEqual(events, want, (data, delimiter, max_length))

    def test_netstrings(self):
        import random

        rng = random.Random(2)
        for _ in range(400):
            max_length = rng.choice([0, 3, 9, 10, 99, 99999])
            parts = []
            for _ in range(rng.randrange(0, 5)):
                body = bytes(rng.choice(b"a,:0") for _ in range(rng.randrange(0, 12)))
                frame = b"%d:%s," % (len(body), body)
                if rng.random() < 0.15:
                    k = rng.randrange(len(frame))
                    frame = frame[:k] + bytes([rng.choice(b"0:,x")]) + frame[k + 1 :]
                parts.append(frame)
            data = b"".join(parts)
            if rng.random() < 0.3 and data:
                data = data[: rng.randrange(len(data))]
            want = _ref_netstrings(data, max_length)
            for _ in range(4):
                events = []

                class P(basic.NetstringReceiver):
                    def string_received(self, string):
                        events.append(("string", string))

                p = P()
                p.MAX_LENGTH = max_length
                connect(p, RecordingTransport(events))
                for chunk in _random_chunks(rng, data):
                    p.data_received(chunk)
                self.assertEqual(events, want, (data, max_length))

    def test_int16(self):
        import random

        rng = random.Random(3)
        for _ in range(300):
            max_length = rng.choice([0, 5, 300, 99999])
            data = b"".join(
                len(b).to_bytes(2, "big") + b
                for b in (bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 7, 260]))) for _ in range(rng.randrange(0, 4)))
            )
            if rng.random() < 0.3 and data:
                data = data[: rng.randrange(len(data))]
            want = _ref_int16(data, max_length)
            for _ in range(3):
                events = []

                class P(basic.Int16StringReceiver):
                    def string_received(self, string):
                        events.append(("string", string))

                    def length_limit_exceeded(self, length):
                        events.append(("exceeded", length))
                        basic.Int16StringReceiver.length_limit_exceeded(self, length)

                p = P()
                p.MAX_LENGTH = max_length
                connect(p, RecordingTransport(events))
                for chunk in _random_chunks(rng, data):
                    p.data_received(chunk)
                self.assertEqual(events, want, (data, max_length))


# Linearity: one huge frame delivered one byte at a time. Quadratic code
# (Twisted's `buffer += data`) takes 16 times as long for 4 times the bytes;
# linear code 4 times. The bound, 10, leaves room for a loaded machine: the
# best of 3 runs of each size is compared. The time stays bounded when the
# code is quadratic: a run of the smaller size may take 100 times as long as
# delivering the same bytes to a protocol that does nothing (a linear
# receiver takes about 10 times), one of the larger size 10 times the
# smaller's best; a run cut short fails the test at once.
SMALL = 256 * 1024
LARGE = 4 * SMALL
ONE = [bytes([i]) for i in range(256)]


class _Nothing(twill.Protocol):
    def data_received(self, data):
        pass


def _nothing(n):
    p = _Nothing()
    return p, b"x" * n, lambda: True


def _huge_line(n):
    p = Lines()
    p.MAX_LENGTH = 1 << 25
    return p, b"x" * (n - 2) + b"\r\n", lambda: p.lines == [b"x" * (n - 2)]


def _huge_int32(n):
    class P(basic.Int32StringReceiver):
        MAX_LENGTH = 1 << 25
        got = None

        def string_received(self, s):
            self.got = s

    p = P()
    return p, (n - 4).to_bytes(4, "big") + b"y" * (n - 4), lambda: p.got == b"y" * (n - 4)


def _huge_netstring(n):
    class P(basic.NetstringReceiver):
        MAX_LENGTH = 1 << 25
        got = None

        def string_received(self, s):
            self.got = s

    p = P()
    size = n - len(b"%d:," % n)
    return p, b"%d:" % size + b"z" * size + b",", lambda: p.got == b"z" * size


def _feed(make, n, deadline):
    """Seconds to deliver the frame of `n` bytes one byte at a time, or None
    if it ran past `deadline` seconds."""
    p, data, check = make(n)
    connect(p)
    feed = p.data_received
    step = 4096
    start = time.perf_counter()
    for off in range(0, len(data), step):
        deque(map(feed, map(ONE.__getitem__, data[off : off + step])), maxlen=0)
        if time.perf_counter() - start > deadline:
            return None
    elapsed = time.perf_counter() - start
    assert check(), "wrong result"
    return elapsed


class LinearityTest(unittest.TestCase):
    def check_linear(self, make):
        nothing = min(_feed(_nothing, SMALL, 60.0) for _ in range(3))
        small = large = float("inf")
        for _ in range(3):
            t = _feed(make, SMALL, 100 * nothing)
            if t is None:
                self.fail("%d bytes took over 100 times as long as for a protocol that does nothing" % SMALL)
            small = min(small, t)
            t = _feed(make, LARGE, 10 * small)
            if t is None:
                self.fail("%d bytes took over 10 times as long as %d bytes (%.3fs)" % (LARGE, SMALL, small))
            large = min(large, t)
        ratio = large / small
        self.assertLess(
            ratio,
            10,
            "%d bytes took %.3fs, %d bytes %.3fs: ratio %.1f (linear 4, quadratic 16)"
            % (SMALL, small, LARGE, large, ratio),
        )

    def test_one_huge_line(self):
        self.check_linear(_huge_line)

    def test_one_huge_int32_string(self):
        self.check_linear(_huge_int32)

    def test_one_huge_netstring(self):
        self.check_linear(_huge_netstring)


if __name__ == "__main__":
    unittest.main()
