"""Unit tests for twill.reactor under plain CPython: a fake host reactor
with a deterministic clock fires delayed calls through the exported
``reactor-calls`` glue, as the host does. The cases come from the shared
vectors in guest-sdk/test-vectors/time.json (the Rust and JavaScript SDKs
run the same ones).

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import heapq
import json
import sys
import types
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import twill  # noqa: E402
from twill import _export, reactor  # noqa: E402

VECTORS = json.loads((HERE.parent.parent / "test-vectors" / "time.json").read_text())


class FakeReactor:
    """The host's side: a clock in seconds and the scheduled calls."""

    def __init__(self):
        self.now = 0.0
        self.heap = []
        self.seq = 0
        self.calls = {}

    def seconds(self):
        return self.now

    def call_later(self, delay, token):
        call = FakeCall(self, token, self.now + delay)
        self.calls[token] = call
        call.push()
        return call

    def advance(self, dt):
        self.now += dt
        glue = _export.ReactorCallsExport()
        while self.heap and self.heap[0][0] <= self.now + 1e-12:
            due, _, token = heapq.heappop(self.heap)
            call = self.calls.get(token)
            if call is None or not call.active or abs(call.due - due) > 1e-12:
                continue
            call.active = False
            glue.timer_fired(token)


class FakeCall:
    def __init__(self, host, token, due):
        self.host, self.token, self.due, self.active = host, token, due, True
        self.dropped = False

    def push(self):
        self.host.seq += 1
        heapq.heappush(self.host.heap, (self.due, self.host.seq, self.token))

    def get_time(self):
        if self.dropped:
            raise AssertionError("get_time on a dropped handle")
        return self.due

    def __exit__(self, *exc):
        self.dropped = True

    def cancel(self):
        was, self.active = self.active, False
        return was

    def reset(self, secs):
        if self.active:
            self.due = self.host.now + secs
            self.push()
        return self.active

    def delay(self, secs):
        if self.active:
            self.due = max(self.host.now, self.due + secs)
            self.push()
        return self.active


class RawTransport:
    def __init__(self):
        self.lost = False

    def lose_connection(self):
        self.lost = True

    def __getattr__(self, name):
        return lambda *a: None


class TimeTest(unittest.TestCase):
    def setUp(self):
        self.host = FakeReactor()
        reactor._host = self.host
        reactor._calls.clear()

    def advance_ms(self, ms):
        self.host.advance(ms / 1000.0)

    def test_a_call_drops_its_handle_once_it_ran_or_was_cancelled(self):
        fired = reactor.call_later(0.5, lambda: None)
        cancelled = reactor.call_later(2.0, lambda: None)
        raw_fired, raw_cancelled = fired._raw, cancelled._raw
        cancelled.cancel()
        self.assertTrue(raw_cancelled.dropped)
        self.assertFalse(raw_fired.dropped)
        self.advance_ms(500)
        self.assertTrue(fired.called)
        self.assertTrue(raw_fired.dropped)
        # The time each was due is kept (the fake asserts nothing asks a
        # dropped handle).
        self.assertEqual(fired.get_time(), 0.5)
        self.assertEqual(cancelled.get_time(), 2.0)

    def test_looping_vectors(self):
        for case in VECTORS["looping"]:
            with self.subTest(case["name"]):
                self.setUp()
                ticks = []
                loop = reactor.LoopingCall(lambda: ticks.append(reactor.seconds()))
                loop.start(case["interval_ms"] / 1000.0, now=case["now"])
                for advance, expected in case["steps"]:
                    self.advance_ms(advance)
                    self.assertEqual(len(ticks), expected, ticks)
                loop.stop()
                self.advance_ms(10_000)
                self.assertEqual(len(ticks), case["steps"][-1][1])

    def test_timeout_vectors(self):
        for case in VECTORS["timeout"]:
            with self.subTest(case["name"]):
                self.setUp()

                class P(twill.Protocol, reactor.TimeoutMixin):
                    pass

                p = P()
                raw = RawTransport()
                p.make_connection(twill.Transport(raw))
                p.set_timeout(case["period_ms"] / 1000.0)
                for step in case["steps"]:
                    if step[0] == "advance":
                        self.advance_ms(step[1])
                    elif step[0] == "touch":
                        p.reset_timeout()
                    elif step[0] == "open":
                        self.assertFalse(raw.lost)
                    elif step[0] == "closed":
                        self.assertTrue(raw.lost)

    def test_call_later_vectors(self):
        for case in VECTORS["call_later"]:
            with self.subTest(case["name"]):
                self.setUp()
                fired = []
                call = reactor.call_later(case["delay_ms"] / 1000.0, fired.append, "x")
                for step in case["steps"]:
                    kind = step[0]
                    if kind == "advance":
                        self.advance_ms(step[1])
                    elif kind == "reset":
                        call.reset(step[1] / 1000.0)
                    elif kind == "delay":
                        call.delay(step[1] / 1000.0)
                    elif kind == "cancel":
                        call.cancel()
                    elif kind == "pending":
                        self.assertEqual(fired, [])
                    elif kind == "fired":
                        self.assertEqual(fired, ["x"])
                        self.assertFalse(call.active())

    def test_already_called_and_cancelled_raise_as_in_twisted(self):
        call = reactor.call_later(0.01, lambda: None)
        self.advance_ms(10)
        with self.assertRaises(reactor.AlreadyCalled):
            call.cancel()
        call = reactor.call_later(0.01, lambda: None)
        call.cancel()
        with self.assertRaises(reactor.AlreadyCancelled):
            call.reset(1)
        with self.assertRaises(ValueError):
            reactor.call_later(-1, lambda: None)

    def test_factory_hooks_reach_both_factories(self):
        heard = []

        class F(twill.Factory):
            def start_factory(self):
                heard.append("start")

            def stop_factory(self):
                heard.append("stop")

        module = types.ModuleType("guest")
        twill.serve(server=F.for_protocol(twill.Protocol), client=None, module=module)
        glue = module.ReactorCalls()
        glue.start_factory()
        glue.stop_factory()
        self.assertEqual(heard, ["start", "stop"])


if __name__ == "__main__":
    unittest.main()
