"""Unit tests for twill.testing (StringTransport and the connect helpers)
under plain CPython, and for the package's metadata: pyproject.toml's
version is the WIT package's.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import re
import sys
import tomllib
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import twill  # noqa: E402
from twill import basic  # noqa: E402
from twill.testing import StringTransport, connect, deliver, disconnect  # noqa: E402


class Chat(basic.LineReceiver):
    """A line protocol as a guest would write it: greets, echoes lines in
    upper case, says goodbye on QUIT, and records its life."""

    def __init__(self):
        self.events = []

    def connection_made(self):
        peer = self.transport.get_peer()
        self.send_line(b"hello %s" % str(peer).encode())

    def line_received(self, line):
        if line == b"QUIT":
            self.send_line(b"bye")
            self.transport.lose_connection()
        else:
            self.send_line(line.upper())

    def connection_lost(self, reason):
        self.events.append(("lost", reason, self.connected))


class StringTransportTest(unittest.TestCase):
    def test_is_a_transport(self):
        t = StringTransport()
        self.assertIsInstance(t, twill.Transport)
        self.assertFalse(t.disconnecting)
        self.assertFalse(t.spliced)

    def test_write_value_clear(self):
        t = StringTransport()
        t.write(b"ab")
        t.write(bytearray(b"cd"))
        t.write_sequence([b"e", memoryview(b"f")])
        self.assertEqual(t.value(), b"abcdef")
        self.assertIs(type(t.value()), bytes)
        t.clear()
        self.assertEqual(t.value(), b"")
        t.write(b"g")
        self.assertEqual(t.value(), b"g")

    def test_str_is_refused(self):
        t = StringTransport()
        with self.assertRaises(TypeError):
            t.write("text")
        with self.assertRaises(TypeError):
            t.write_sequence([b"ok", "text"])
        self.assertEqual(t.value(), b"")

    def test_addresses(self):
        t = StringTransport()
        self.assertEqual(t.get_peer(), twill.Address("192.168.1.1", 54321))
        self.assertEqual(t.get_host(), twill.Address("10.0.0.1", 12345))
        peer, host = twill.Address("::1", 9), twill.Address("127.0.0.1", 80)
        t = StringTransport(peer=peer, host=host)
        self.assertEqual((t.get_peer(), t.get_host()), (peer, host))

    def test_lose_connection_ignores_later_writes(self):
        t = StringTransport()
        t.write(b"last")
        t.lose_connection()
        self.assertTrue(t.disconnecting)
        self.assertFalse(t.aborted)
        t.write(b"ignored")
        t.write_sequence([b"ignored"])
        self.assertEqual(t.value(), b"last")

    def test_abort_connection(self):
        t = StringTransport()
        t.abort_connection()
        self.assertTrue(t.disconnecting)
        self.assertTrue(t.aborted)

    def test_lose_write_connection(self):
        t = StringTransport()
        t.lose_write_connection()
        t.write(b"ignored")
        self.assertTrue(t.write_disconnected)
        self.assertFalse(t.disconnecting)
        self.assertEqual(t.value(), b"")

    def test_producers(self):
        p = twill.Protocol()
        t = connect(p)
        self.assertIsNone(t.producer)
        t.register_producer()
        self.assertIs(t.producer, p)
        self.assertTrue(t.streaming)
        other = StringTransport()
        t.register_producer(other)
        self.assertIs(t.producer, other)
        t.unregister_producer()
        self.assertIsNone(t.producer)
        self.assertIsNone(t.streaming)
        with self.assertRaises(ValueError):
            t.register_producer(p, streaming=False)
        self.assertEqual(t.producer_state, "producing")
        t.pause_producing()
        self.assertEqual(t.producer_state, "paused")
        t.resume_producing()
        self.assertEqual(t.producer_state, "producing")

    def test_splice(self):
        a, b = StringTransport(), StringTransport()
        with self.assertRaises(twill.SpliceError):
            a.splice(a)
        a.splice(b)
        self.assertTrue(a.spliced and b.spliced)
        self.assertIs(a.spliced_with, b)
        self.assertIs(b.spliced_with, a)
        a.write(b"ignored")
        self.assertEqual(a.value(), b"")
        with self.assertRaises(twill.SpliceError):
            a.splice(StringTransport())
        with self.assertRaises(TypeError):
            a.splice(object())

    def test_tls(self):
        t = StringTransport()
        self.assertIsNone(t.tls_info())
        self.assertIsNone(t.get_peer_certificate())
        t.start_tls()
        self.assertTrue(t.tls_started)
        with self.assertRaises(twill.StartTLSError):
            t.start_tls()
        cert = twill.PeerCertificate("CN=alice", "00" * 32, b"der")
        t = StringTransport()
        t.tls = twill.TlsInfo("TLSv1.3", "TLS13_AES_128_GCM_SHA256", peer_certificate=cert)
        self.assertEqual(t.tls_info().version, "TLSv1.3")
        self.assertIs(t.get_peer_certificate(), cert)
        with self.assertRaises(twill.StartTLSError):
            t.start_tls()


class HelpersTest(unittest.TestCase):
    def test_connect_drives_a_line_receiver(self):
        p = Chat()
        t = connect(p, StringTransport(peer=twill.Address("192.0.2.7", 40000)))
        self.assertIs(p.transport, t)
        self.assertIs(t.protocol, p)
        self.assertTrue(p.connected)
        self.assertEqual(t.value(), b"hello 192.0.2.7:40000\r\n")
        t.clear()
        self.assertEqual(deliver(p, b"one\r\ntw", b"o\r\n"), 2)
        self.assertEqual(t.value(), b"ONE\r\nTWO\r\n")
        t.clear()
        # The host delivers nothing after a close: neither does deliver.
        self.assertEqual(deliver(p, b"QUIT\r\nmore\r\n", b"ignored\r\n"), 1)
        self.assertEqual(t.value(), b"bye\r\n")
        self.assertTrue(t.disconnecting)
        disconnect(p)
        self.assertEqual(p.events, [("lost", twill.Reason("done"), False)])
        self.assertTrue(t.lost)
        self.assertEqual(deliver(p, b"x\r\n"), 0)

    def test_connect_makes_a_transport(self):
        p = Chat()
        t = connect(p)
        self.assertIsInstance(t, StringTransport)
        self.assertEqual(t.value(), b"hello 192.168.1.1:54321\r\n")

    def test_one_byte_at_a_time(self):
        p = Chat()
        t = connect(p)
        t.clear()
        deliver(p, *[bytes([c]) for c in b"abc\r\ndef\r\n"])
        self.assertEqual(t.value(), b"ABC\r\nDEF\r\n")

    def test_disconnect_with_a_reason_mutes_writes(self):
        class P(twill.Protocol):
            def connection_lost(self, reason):
                self.reason = reason
                self.transport.write(b"too late")

        p = P()
        t = connect(p)
        disconnect(p, twill.Reason("lost", "Connection reset by peer"))
        self.assertTrue(p.reason.check(twill.ConnectionLost))
        self.assertFalse(p.connected)
        self.assertEqual(t.value(), b"")

    def test_half_closeable(self):
        class P(twill.Protocol):
            def read_connection_lost(self):
                pass

        self.assertTrue(connect(P()).half_closeable)
        self.assertFalse(connect(twill.Protocol()).half_closeable)

    def test_int_and_netstring_receivers(self):
        class Int(basic.Int16StringReceiver):
            def string_received(self, s):
                self.send_string(s[::-1])

        class Net(basic.NetstringReceiver):
            def string_received(self, s):
                self.send_string(s * 2)

        p = Int()
        t = connect(p)
        deliver(p, b"\x00\x03ab", b"c")
        self.assertEqual(t.value(), b"\x00\x03cba")
        p = Net()
        t = connect(p)
        deliver(p, b"2:ab,", b"x")
        self.assertEqual(t.value(), b"4:abab,")
        self.assertTrue(t.disconnecting)
        self.assertTrue(p.broken_peer)


class PackageTest(unittest.TestCase):
    """pyproject.toml's version is the WIT package's, and the package's."""

    def test_version_matches_wit(self):
        root = HERE.parent
        world = (root / "twill" / "wit" / "world.wit").read_text(encoding="utf-8")
        m = re.search(r"^package twill:protocol@([0-9A-Za-z.+-]+);", world, re.M)
        self.assertIsNotNone(m, "no `package twill:protocol@X;` in world.wit")
        with open(root / "pyproject.toml", "rb") as f:
            project = tomllib.load(f)["project"]
        self.assertEqual(project["name"], "twill-guest")
        self.assertEqual(project["version"], m.group(1))
        self.assertEqual(twill.__version__, m.group(1))

    def test_wit_dir(self):
        wit = Path(twill.WIT_DIR)
        self.assertTrue(wit.is_absolute())
        self.assertTrue((wit / "world.wit").is_file())
        self.assertEqual(wit, (HERE.parent / "twill" / "wit").resolve())


if __name__ == "__main__":
    unittest.main()
