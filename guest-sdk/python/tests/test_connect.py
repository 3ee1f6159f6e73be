"""Unit tests for outgoing connections and relaying under plain CPython:
``reactor.connect_tcp`` against a fake host reactor, the host's outcomes
delivered through the exported ``outbound-factory`` glue as the host does
(cases from the shared vectors in guest-sdk/test-vectors/connect.json, which
the Rust and JavaScript SDKs run too), the transport's producer, half-close
and splice methods, and the ``half-close`` export.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import json
import sys
import types
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import twill  # noqa: E402
from twill import _export, reactor  # noqa: E402

VECTORS = json.loads((HERE.parent.parent / "test-vectors" / "connect.json").read_text())


class Err(Exception):
    """componentize-py's ``componentize_py_types.Err``: a WIT ``result``'s
    error, with the payload in ``value``."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


class FakeReactor:
    """The host's side of ``connect-tcp``: records each call, and returns
    ``err(next_error)`` when a test sets one."""

    def __init__(self):
        self.connects = []
        self.next_error = None

    def connect_tcp(self, host, port, timeout, token):
        self.connects.append((host, port, timeout, token))
        error, self.next_error = self.next_error, None
        if error is not None:
            raise Err(error)


class RawTransport:
    """What componentize-py hands make_connection: the imported resource,
    recording every call; ``splice_error`` makes ``splice`` fail."""

    def __init__(self):
        self.calls = []
        self.splice_error = None

    def splice(self, other):
        self.calls.append(("splice", other))
        if self.splice_error is not None:
            raise Err(self.splice_error)

    def tls_info(self):
        # A plaintext connection (test_tls.py has the TLS fake).
        return None

    def __exit__(self, *exc):
        # componentize-py's drop of the handle: nothing may use it after.
        self.dropped = True

    def _call(self, name, args):
        assert not self.__dict__.get("dropped"), f"{name} on a dropped transport handle"
        self.calls.append((name,) + args)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a: self._call(name, a)


# componentize-py's variant cases are classes with these names.
class Reason_Done:
    pass


class Reason_Lost:
    def __init__(self, value):
        self.value = value


class Reason_Failed:
    def __init__(self, value):
        self.value = value


def wit_reason(text):
    if text == "done":
        return Reason_Done()
    kind, _, message = text.partition(":")
    return {"lost": Reason_Lost, "failed": Reason_Failed}[kind](message)


def reason_text(reason):
    return reason.kind if reason.kind == "done" else "%s:%s" % (reason.kind, reason.message)


class RecordingFactory(twill.ClientFactory):
    """Records its callbacks as the vectors write them."""

    protocol = twill.Protocol

    def __init__(self):
        self.calls = []
        self.refuse = False

    def build_protocol(self, addr):
        self.calls.append("build_protocol")
        self.addr = addr
        return None if self.refuse else super().build_protocol(addr)

    def client_connection_failed(self, reason):
        self.calls.append("client_connection_failed:" + reason_text(reason))

    def client_connection_lost(self, reason):
        self.calls.append("client_connection_lost:" + reason_text(reason))


def fresh():
    """A new fake host and SDK state: no factories, tokens from 1."""
    host = FakeReactor()
    reactor._host = host
    reactor._connectors.clear()
    reactor._next_connect_token[0] = 1
    return host


class ConnectVectorsTest(unittest.TestCase):
    def run_case(self, case):
        host = fresh()
        glue = _export.OutboundFactoryExport()
        factories = []
        for step in case["steps"]:
            if "connect" in step:
                c = step["connect"]
                f = RecordingFactory()
                factories.append(f)
                kwargs = {"timeout": c["timeout"]} if "timeout" in c else {}
                if "host_error" in step:
                    host.next_error = step["host_error"]
                    with self.assertRaises(twill.ConnectError) as caught:
                        reactor.connect_tcp(c["host"], c["port"], f, **kwargs)
                    self.assertEqual(str(caught.exception), step["expect_error"])
                    self.assertNotIn(step["expect_token"], reactor._connectors)
                else:
                    connector = reactor.connect_tcp(c["host"], c["port"], f, **kwargs)
                    self.assertEqual((connector.host, connector.port), (c["host"], c["port"]))
                self.assertEqual(host.connects[-1], (c["host"], c["port"], c.get("timeout", 30), step["expect_token"]))
                self.assertIsInstance(host.connects[-1][2], float)
            elif "build" in step:
                token = step["build"]
                f = reactor._connectors.get(token)
                if f is not None:
                    f.refuse = step.get("refuse", False)
                a = step.get("addr", {"host": "127.0.0.1", "port": 9})
                got = glue.build_protocol(token, types.SimpleNamespace(**a))
                if step["expect"] == "none":
                    self.assertIsNone(got)
                else:
                    self.assertIsInstance(got, _export.ProtocolExport)
                    self.assertEqual(f.addr, twill.Address(a["host"], a["port"]))
            elif "failed" in step:
                glue.client_connection_failed(step["failed"], Reason_Failed(step["reason"]))
            elif "lost" in step:
                glue.client_connection_lost(step["lost"], wit_reason(step["reason"]))
            else:
                self.fail("unknown step %r" % (step,))
        self.assertEqual([f.calls for f in factories], case["expect_calls"])

    def test_vectors(self):
        for case in VECTORS["cases"]:
            with self.subTest(case["name"]):
                self.run_case(case)

    def test_other_exceptions_pass_through_and_leave_no_mapping(self):
        class Broken:
            def connect_tcp(self, *a):
                raise RuntimeError("trap")

        fresh()
        reactor._host = Broken()
        with self.assertRaises(RuntimeError):
            reactor.connect_tcp("h", 1, RecordingFactory())
        self.assertEqual(reactor._connectors, {})

    def test_a_built_protocol_is_wrapped_like_a_served_one(self):
        host = fresh()

        class Hello(twill.Protocol):
            def connection_made(self):
                self.transport.write(b"hi")

            def data_received(self, data):
                self.transport.write(data.upper())

        reactor.connect_tcp("127.0.0.1", 9000, twill.ClientFactory.for_protocol(Hello))
        glue = _export.OutboundFactoryExport()
        box = glue.build_protocol(1, types.SimpleNamespace(host="127.0.0.1", port=9000))
        raw = RawTransport()
        box.make_connection(raw)
        box.data_received(b"a")
        _export.BatchExport().data_received([types.SimpleNamespace(protocol=box, len=1)], b"b")
        self.assertEqual(raw.calls, [("write", b"hi"), ("write", b"A"), ("write", b"B")])
        self.assertIsInstance(box.protocol.factory, twill.ClientFactory)
        self.assertEqual(len(host.connects), 1)

    def test_hooks_are_optional(self):
        fresh()
        reactor.connect_tcp("127.0.0.1", 9000, twill.Factory.for_protocol(twill.Protocol))
        reactor.connect_tcp("127.0.0.1", 9000, twill.Factory.for_protocol(twill.Protocol))
        glue = _export.OutboundFactoryExport()
        glue.client_connection_failed(1, Reason_Failed("refused"))
        glue.build_protocol(2, types.SimpleNamespace(host="127.0.0.1", port=9000))
        glue.client_connection_lost(2, Reason_Done())
        self.assertEqual(reactor._connectors, {})


class Recorder(twill.Protocol):
    def __init__(self):
        self.events = []

    def connection_made(self):
        self.events.append("made")


class HalfCloser(Recorder):
    def read_connection_lost(self):
        self.events.append("read_connection_lost")
        self.transport.write(b"bye")
        self.transport.lose_write_connection()

    def write_connection_lost(self):
        self.events.append("write_connection_lost")


def batch_chunk(box, data):
    # componentize-py's record for `batch.chunk`: the borrowed protocol
    # arrives as the exported object itself.
    return types.SimpleNamespace(protocol=box, len=len(data))


def served(protocol_class):
    m = types.ModuleType("guest")
    twill.serve(server=protocol_class, module=m)
    box = m.ServerFactory().build_protocol(types.SimpleNamespace(host="192.0.2.7", port=40000))
    raw = RawTransport()
    box.make_connection(raw)
    return m, box, raw


class TransportTest(unittest.TestCase):
    def test_pause_resume_and_lose_write_connection_reach_the_host(self):
        _, box, raw = served(Recorder)
        t = box.protocol.transport
        t.pause_producing()
        t.resume_producing()
        t.write(b"last")
        t.lose_write_connection()
        t.write(b"ignored")
        t.write_sequence([b"ignored"])
        self.assertFalse(t.disconnecting)
        t.lose_connection()
        self.assertEqual(
            raw.calls,
            [("pause_producing",), ("resume_producing",), ("write", b"last"), ("lose_write_connection",), ("lose_connection",)],
        )

    def test_splice_marks_both_transports_and_drops_their_writes(self):
        _, a, ra = served(Recorder)
        _, b, rb = served(Recorder)
        ta, tb = a.protocol.transport, b.protocol.transport
        ta.write(b"before")
        ta.splice(tb)
        self.assertEqual(ra.calls, [("write", b"before"), ("splice", rb)])
        self.assertTrue(ta.spliced and tb.spliced)
        ta.write(b"x")
        tb.write(b"y")
        tb.write_sequence([b"z"])
        self.assertEqual(rb.calls, [])
        # Closing either still reaches the host: it ends the pair.
        tb.lose_connection()
        self.assertEqual(rb.calls, [("lose_connection",)])

    def test_a_refused_splice_raises_splice_error_and_changes_nothing(self):
        _, a, ra = served(Recorder)
        _, b, rb = served(Recorder)
        ta, tb = a.protocol.transport, b.protocol.transport
        ra.splice_error = "the other connection is already spliced"
        with self.assertRaisesRegex(twill.SpliceError, "already spliced"):
            ta.splice(tb)
        self.assertFalse(ta.spliced or tb.spliced)
        ta.write(b"still")
        self.assertEqual(ra.calls[-1], ("write", b"still"))
        with self.assertRaises(TypeError):
            ta.splice(object())

    def test_a_batch_chunk_after_the_splice_goes_to_the_partner(self):
        # Twisted's portforward, spliced on the first read: the second chunk
        # was read before the splice took effect and must not be lost.
        _, b, rb = served(Recorder)
        tb = b.protocol.transport
        received = []

        class Splicer(Recorder):
            def data_received(self, data):
                received.append(data)
                self.transport.write(b"own")
                self.transport.splice(tb)
                self.transport.write(b"dropped")

        m, a, ra = served(Splicer)
        parts = [(a, b"first"), (a, b"second")]
        m.Batch().data_received([batch_chunk(x, d) for x, d in parts], b"firstsecond")
        self.assertEqual(received, [b"first"])
        self.assertEqual(ra.calls, [("write", b"own"), ("splice", rb)])
        self.assertEqual(rb.calls, [("write", b"second")])
        self.assertEqual(b.protocol.events, ["made"])

    def test_a_read_delivered_after_the_splice_goes_to_the_partner(self):
        _, a, ra = served(Recorder)
        _, b, rb = served(Recorder)
        ta, tb = a.protocol.transport, b.protocol.transport
        received = []
        a.protocol.data_received = received.append
        b.protocol.data_received = received.append
        ta.splice(tb)
        a.data_received(b"from a")
        b.data_received(b"from b")
        self.assertEqual(received, [])
        self.assertEqual(rb.calls, [("write", b"from a")])
        self.assertEqual(ra.calls, [("splice", rb), ("write", b"from b")])
        # The user's own writes stay dropped.
        tb.write(b"mine")
        self.assertEqual(rb.calls, [("write", b"from a")])
        # Once a connection is gone, the pair forgets it: nothing is written to it.
        a.connection_lost(Reason_Done())
        self.assertIsNone(ta._partner)
        self.assertIsNone(tb._partner)
        b.data_received(b"late")
        self.assertEqual(received, [])
        self.assertEqual(ra.calls, [("splice", rb), ("write", b"from b")])

    def test_a_spliced_connection_closed_earlier_in_the_batch_gets_nothing(self):
        _, b, rb = served(Recorder)
        tb = b.protocol.transport

        class SpliceThenClose(Recorder):
            def data_received(self, data):
                self.transport.splice(tb)
                self.transport.lose_connection()

        m, a, ra = served(SpliceThenClose)
        parts = [(a, b"one"), (a, b"two")]
        m.Batch().data_received([batch_chunk(x, d) for x, d in parts], b"onetwo")
        self.assertEqual(ra.calls, [("splice", rb), ("lose_connection",)])
        self.assertEqual(rb.calls, [])

    def test_a_transport_as_producer_is_registered_with_the_host(self):
        # Twisted's portforward: client.transport.registerProducer(server.transport, True).
        # The host pauses the server's reading within the write that backs
        # the client's output up (no callback), so the SDK hands it the pair.
        _, server, rs = served(Recorder)
        _, client, rc = served(Recorder)
        client.protocol.transport.register_producer(server.protocol.transport, True)
        self.assertEqual(rc.calls, [("register_producer_transport", rs)])
        # The protocol's own producer callbacks are not involved.
        client.pause_producing()
        client.resume_producing()
        self.assertEqual(rs.calls, [])
        self.assertEqual(client.protocol.events, ["made"])
        # A protocol as producer still uses the callbacks.
        client.protocol.transport.register_producer(client.protocol, True)
        self.assertEqual(rc.calls[-1], ("register_producer",))


class HalfCloseTest(unittest.TestCase):
    def test_only_protocols_with_read_connection_lost_opt_in_before_connection_made(self):
        _, box, raw = served(Recorder)
        self.assertNotIn("set_half_closeable", [c[0] for c in raw.calls])
        self.assertFalse(hasattr(twill.Protocol, "read_connection_lost"))

        class Sneaky(Recorder):
            def connection_made(self):
                self.events.append("made")
                self.transport.write(b"hello")

            def read_connection_lost(self):
                pass

        _, box, raw = served(Sneaky)
        self.assertEqual(raw.calls, [("set_half_closeable", True), ("write", b"hello")])

    def test_the_half_close_export_routes_to_the_protocol(self):
        m, box, raw = served(HalfCloser)
        glue = m.HalfClose()
        glue.read_connection_lost(box)
        glue.write_connection_lost(box)
        self.assertEqual(box.protocol.events, ["made", "read_connection_lost", "write_connection_lost"])
        self.assertEqual(
            raw.calls, [("set_half_closeable", True), ("write", b"bye"), ("lose_write_connection",)]
        )

    def test_write_connection_lost_is_optional(self):
        class ReadOnly(Recorder):
            def read_connection_lost(self):
                self.events.append("rcl")

        m, box, _ = served(ReadOnly)
        m.HalfClose().write_connection_lost(box)
        m.HalfClose().read_connection_lost(box)
        self.assertEqual(box.protocol.events, ["made", "rcl"])


class ServeTest(unittest.TestCase):
    def test_serve_defines_the_new_export_names(self):
        m = types.ModuleType("guest")
        twill.serve(server=Recorder, module=m)
        self.assertIs(m.OutboundFactory, _export.OutboundFactoryExport)
        self.assertIs(m.HalfClose, _export.HalfCloseExport)


if __name__ == "__main__":
    unittest.main()
