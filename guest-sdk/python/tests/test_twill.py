"""Unit tests for the twill Python SDK, under plain CPython: the exported glue
driven with a fake host transport, as componentize-py drives it.

    python3 -m unittest discover -s guest-sdk/python/tests

The components themselves are tested against the real host by
scripts/test-polyglot.sh.
"""

import io
import sys
import types
import unittest
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import twill  # noqa: E402
from twill import _export  # noqa: E402


class RawTransport:
    """What componentize-py hands make_connection: the imported resource (a
    plaintext connection: ``tls_info`` is None; test_tls.py has the TLS
    fake)."""

    def __init__(self):
        self.calls = []

    def tls_info(self):
        return None

    def __exit__(self, *exc):
        # componentize-py's drop of the handle: nothing may use it after.
        self.dropped = True

    def _call(self, name, args):
        assert not self.__dict__.get("dropped"), f"{name} on a dropped transport handle"
        self.calls.append((name,) + args)

    def __getattr__(self, name):
        if name in ("get_peer", "get_host"):
            return lambda: types.SimpleNamespace(host="::1" if name == "get_peer" else "127.0.0.1", port=9)
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


def wit_addr(host="192.0.2.7", port=40000):
    return types.SimpleNamespace(host=host, port=port)


class Echo(twill.Protocol):
    def data_received(self, data):
        self.transport.write(data)


class Recorder(twill.Protocol):
    def __init__(self):
        self.events = []

    def connection_made(self):
        self.events.append(("made", self.connected))

    def data_received(self, data):
        self.events.append(("data", data))

    def connection_lost(self, reason):
        self.events.append(("lost", reason, self.connected))

    def pause_producing(self):
        self.events.append(("pause",))

    def resume_producing(self):
        self.events.append(("resume",))


class Module(types.ModuleType):
    pass


def export(server=None, client=None):
    m = Module("guest")
    twill.serve(server=server, client=client, module=m)
    return m.ServerFactory(), m.ClientFactory()


class ServeTest(unittest.TestCase):
    def test_serve_defines_the_names_componentize_py_looks_up(self):
        m = Module("guest")
        sys.modules["guest"] = m
        try:
            exec("import twill\ntwill.serve(server=twill.Factory.for_protocol(twill.Protocol))", m.__dict__)
        finally:
            del sys.modules["guest"]
        self.assertIs(m.ServerFactory, _export.ServerFactoryExport)
        self.assertIs(m.ClientFactory, _export.ClientFactoryExport)
        self.assertIs(m.Batch, _export.BatchExport)

    def test_a_protocol_class_gets_a_factory(self):
        server, _ = export(server=Echo)
        box = server.build_protocol(wit_addr())
        self.assertIsInstance(box.protocol, Echo)
        self.assertIsInstance(box.protocol.factory, twill.Factory)

    def test_a_missing_role_refuses(self):
        server, client = export(server=Echo)
        self.assertIsNone(client.build_protocol(wit_addr()))
        server, client = export(client=twill.ClientFactory.for_protocol(Echo))
        self.assertIsNone(server.build_protocol(wit_addr()))

    def test_bad_factories_are_rejected_at_build_time(self):
        with self.assertRaises(TypeError):
            export(server=twill.Factory)
        with self.assertRaises(TypeError):
            export(server=object())

    def test_factory_without_protocol_says_so(self):
        server, _ = export(server=twill.Factory())
        with self.assertRaisesRegex(TypeError, "protocol is not set"):
            server.build_protocol(wit_addr())

    def test_factory_may_refuse(self):
        class Picky(twill.ServerFactory):
            protocol = Echo

            def build_protocol(self, addr):
                return None if addr.host == "192.0.2.66" else super().build_protocol(addr)

        server, _ = export(server=Picky())
        self.assertIsNone(server.build_protocol(wit_addr("192.0.2.66")))
        self.assertIsNotNone(server.build_protocol(wit_addr()))


class ProtocolTest(unittest.TestCase):
    def connect(self, protocol_class=Recorder):
        server, _ = export(server=protocol_class)
        box = server.build_protocol(wit_addr())
        raw = RawTransport()
        box.make_connection(raw)
        return box, box.protocol, raw

    def test_echo(self):
        box, _, raw = self.connect(Echo)
        box.data_received(b"hello")
        box.data_received(b"")
        self.assertEqual(raw.calls, [("write", b"hello"), ("write", b"")])

    def test_make_connection_keeps_the_transport_then_calls_connection_made(self):
        box, p, _ = self.connect()
        self.assertIsInstance(p.transport, twill.Transport)
        self.assertEqual(p.events, [("made", True)])

    def test_connection_lost_gets_a_reason_and_writes_stop(self):
        box, p, raw = self.connect()
        box.connection_lost(Reason_Lost("reset by peer"))
        (_, reason, connected) = p.events[-1]
        self.assertFalse(connected)
        self.assertEqual(reason, twill.Reason("lost", "reset by peer"))
        self.assertIs(reason.check(twill.ConnectionDone, twill.ConnectionClosed), twill.ConnectionClosed)
        self.assertIs(reason.type, twill.ConnectionLost)
        self.assertEqual(reason.get_error_message(), "Connection was lost: reset by peer")
        p.transport.write(b"late")
        self.assertEqual(raw.calls, [])

    def test_the_handle_is_dropped_once_connection_lost_returned(self):
        seen = []

        class Late(twill.Protocol):
            def connection_lost(self, reason):
                # Still usable here: the addresses are asked for now.
                seen.append(self.transport.get_peer())

        box, p, raw = self.connect(Late)
        box.connection_lost(Reason_Done())
        self.assertTrue(raw.__dict__.get("dropped"), "dropped after connection_lost")
        self.assertEqual(seen, [twill.Address("::1", 9)])
        # Afterwards nothing reaches the dropped handle (the fake asserts):
        # the peer is the one kept, the host was never asked, the rest is ignored.
        self.assertEqual(p.transport.get_peer(), twill.Address("::1", 9))
        self.assertEqual(p.transport.get_host(), twill.Address("", 0))
        p.transport.write(b"late")
        p.transport.lose_connection()
        p.transport.register_producer()
        p.transport.unregister_producer()
        self.assertIsNone(p.transport.tls_info())
        with self.assertRaises(twill.StartTLSError):
            p.transport.start_tls()

    def test_componentize_py_s_finalizer_is_detached(self):
        # componentize-py sets weakref.finalize(obj, drop the handle) on an
        # exported resource; the host owns a protocol's handle, so the SDK
        # detaches it (twill-componentize's destructor fix frees the object).
        import weakref

        box, _, _ = self.connect()
        dropped = []
        f = weakref.finalize(box, dropped.append, "stale handle")
        box.finalizer = f
        self.assertFalse(f.alive)
        self.assertIsNone(box.finalizer.detach())
        del box
        self.assertEqual(dropped, [])

    def test_done_reason(self):
        box, p, _ = self.connect()
        box.connection_lost(Reason_Done())
        reason = p.events[-1][1]
        self.assertTrue(reason.clean)
        self.assertEqual(str(reason), "Connection was closed cleanly.")
        self.assertIsNone(reason.check(twill.ConnectionLost))

    def test_transport_methods(self):
        _, p, raw = self.connect()
        t = p.transport
        t.write(bytearray(b"ab"))
        t.write(memoryview(b"cd"))
        t.write_sequence([b"e", bytearray(b"f")])
        with self.assertRaises(TypeError):
            t.write("text")
        self.assertEqual(t.get_peer(), twill.Address("::1", 9))
        self.assertEqual(str(t.get_peer()), "[::1]:9")
        self.assertEqual(str(t.get_host()), "127.0.0.1:9")
        self.assertFalse(t.disconnecting)
        t.lose_connection()
        self.assertTrue(t.disconnecting)
        self.assertEqual(
            raw.calls,
            [("write", b"ab"), ("write", b"cd"), ("write_sequence", [b"e", b"f"]), ("lose_connection",)],
        )

    def test_producer_defaults_to_the_protocol(self):
        box, p, raw = self.connect()
        p.transport.register_producer()
        box.pause_producing()
        box.resume_producing()
        self.assertEqual(p.events[-2:], [("pause",), ("resume",)])
        self.assertEqual(raw.calls, [("register_producer",)])

    def test_producer_may_be_another_object(self):
        box, p, raw = self.connect()
        other = Recorder()
        p.transport.register_producer(other, True)
        box.pause_producing()
        self.assertEqual(other.events, [("pause",)])
        p.transport.unregister_producer()
        with self.assertRaises(ValueError):
            p.transport.register_producer(other, False)


class Closer(twill.Protocol):
    """Loses the connection named in the data (a kept transport)."""

    others = {}

    def connection_made(self):
        Closer.others[len(Closer.others)] = self.transport

    def data_received(self, data):
        if data.startswith(b"lose "):
            Closer.others[int(data[5:])].lose_connection()
        else:
            self.transport.write(data)


def chunk(box, data):
    # componentize-py's record for `batch.chunk`: the borrowed protocol
    # arrives as the exported object itself.
    return types.SimpleNamespace(protocol=box, len=len(data))


class BatchTest(unittest.TestCase):
    def connect(self, n):
        Closer.others = {}
        server, _ = export(server=Closer)
        boxes = []
        for _ in range(n):
            box = server.build_protocol(wit_addr())
            raw = RawTransport()
            box.make_connection(raw)
            boxes.append((box, raw))
        return boxes

    def test_each_chunk_goes_to_its_protocol_in_order(self):
        (a, ra), (b, rb) = self.connect(2)
        parts = [(a, b"a1"), (b, b"b"), (a, b"a2")]
        _export.BatchExport().data_received([chunk(x, d) for x, d in parts], b"a1ba2")
        self.assertEqual(ra.calls, [("write", b"a1"), ("write", b"a2")])
        self.assertEqual(rb.calls, [("write", b"b")])

    def test_a_connection_closed_earlier_in_the_call_gets_nothing_more(self):
        (a, ra), (b, rb) = self.connect(2)
        parts = [(b, b"x"), (a, b"lose 1"), (b, b"y")]
        data = b"".join(d for _, d in parts)
        _export.BatchExport().data_received([chunk(x, d) for x, d in parts], data)
        self.assertEqual(rb.calls, [("write", b"x"), ("lose_connection",)])


class ClientTest(unittest.TestCase):
    def test_client_factory_hooks_in_order(self):
        log = []

        class Hello(twill.Protocol):
            def connection_made(self):
                self.transport.write(b"hello world")

            def data_received(self, data):
                print("Server said:", data.decode())
                self.transport.lose_connection()

            def connection_lost(self, reason):
                print("Connection lost")

        class Factory(twill.ClientFactory):
            protocol = Hello

            def started_connecting(self, addr):
                log.append(("started", str(addr)))

            def client_connection_lost(self, reason):
                print("Connection lost - goodbye")
                log.append(("lost", reason.kind))

        _, client = export(client=Factory())
        out = io.StringIO()
        with redirect_stdout(out):
            client.started_connecting(wit_addr("127.0.0.1", 9000))
            box = client.build_protocol(wit_addr("127.0.0.1", 9000))
            raw = RawTransport()
            box.make_connection(raw)
            box.data_received(b"hello world")
            box.connection_lost(Reason_Done())
            client.client_connection_lost(Reason_Done())
        self.assertEqual(out.getvalue(), "Server said: hello world\nConnection lost\nConnection lost - goodbye\n")
        self.assertEqual(raw.calls, [("write", b"hello world"), ("lose_connection",)])
        self.assertEqual(log, [("started", "127.0.0.1:9000"), ("lost", "done")])

    def test_failed_connection(self):
        seen = []

        class Factory(twill.ClientFactory):
            def client_connection_failed(self, reason):
                seen.append(reason)

        _, client = export(client=Factory())
        client.client_connection_failed(Reason_Failed("connection refused"))
        self.assertEqual(seen, [twill.Reason("failed", "connection refused")])
        self.assertIs(seen[0].check(twill.ConnectError), twill.ConnectError)

    def test_a_plain_factory_serves_the_client_role(self):
        _, client = export(client=twill.Factory.for_protocol(Echo))
        client.started_connecting(wit_addr())
        self.assertIsNotNone(client.build_protocol(wit_addr()))
        client.client_connection_failed(Reason_Failed("x"))
        client.client_connection_lost(Reason_Done())


if __name__ == "__main__":
    unittest.main()
