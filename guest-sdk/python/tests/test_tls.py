"""Unit tests for TLS as the Python SDK shows it, under plain CPython:
``transport.tls_info()``, ``get_peer_certificate()`` and ``start_tls()``
against a fake host transport, with the cases of the shared vectors in
guest-sdk/test-vectors/tls.json (which the Rust and JavaScript SDKs run
too); and the INFO line of guests/python-starttls, checked against the same
vectors.

    python3 -m unittest discover -s guest-sdk/python/tests
"""

import importlib.util
import json
import sys
import types
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path.insert(0, str(HERE.parent))

import twill  # noqa: E402

VECTORS = json.loads((HERE.parent.parent / "test-vectors" / "tls.json").read_text(encoding="utf-8"))


class Err(Exception):
    """componentize-py's ``componentize_py_types.Err``: a WIT ``result``'s
    error, with the payload in ``value``."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


def wit_tls_info(host):
    """A vector's ``host`` record as componentize-py lifts it: dataclasses
    (here namespaces) with snake_case attributes, ``bytes`` for
    ``list<u8>``, None for none."""
    if host is None:
        return None
    alpn = host["alpn-protocol"]
    c = host["peer-certificate"]
    return types.SimpleNamespace(
        version=host["version"],
        cipher_suite=host["cipher-suite"],
        server_name=host["server-name"],
        alpn_protocol=None if alpn is None else bytes(alpn),
        peer_certificate=None
        if c is None
        else types.SimpleNamespace(subject=c["subject"], sha256=c["sha256"], der=bytes(c["der"])),
    )


class RawTransport:
    """What componentize-py hands make_connection: the imported resource.
    ``tls`` is what ``tls_info`` returns; ``start_tls_error`` makes
    ``start_tls`` return ``err``. Every other call is recorded."""

    def __init__(self, tls=None, start_tls_error=None):
        self.calls = []
        self.tls = tls
        self.start_tls_error = start_tls_error

    def tls_info(self):
        self.calls.append(("tls_info",))
        return self.tls

    def start_tls(self):
        self.calls.append(("start_tls",))
        if self.start_tls_error is not None:
            raise Err(self.start_tls_error)

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


def served(raw, protocol_class=twill.Protocol):
    """A connection of ``protocol_class`` on ``raw``, made through the
    exported glue: the glue's protocol resource."""
    m = types.ModuleType("guest")
    twill.serve(server=protocol_class, module=m)
    box = m.ServerFactory().build_protocol(types.SimpleNamespace(host="192.0.2.7", port=40000))
    box.make_connection(raw)
    return box


def transport(raw):
    return served(raw).protocol.transport


def view(info):
    """The SDK's ``TlsInfo`` as the vectors' ``expect`` writes it."""
    if info is None:
        return None
    c = info.peer_certificate
    return {
        "version": info.version,
        "cipher_suite": info.cipher_suite,
        "server_name": info.server_name,
        "alpn_protocol": None if info.alpn_protocol is None else info.alpn_protocol.decode("utf-8", "replace"),
        "peer_certificate": None if c is None else {"subject": c.subject, "sha256": c.sha256},
    }


def load_guest():
    """guests/python-starttls/starttls.py, imported as a module of its own
    (its ``serve`` call registers its factories, as every test's does)."""
    path = ROOT / "guests" / "python-starttls" / "starttls.py"
    spec = importlib.util.spec_from_file_location("python_starttls_guest", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TlsInfoVectorsTest(unittest.TestCase):
    def test_vectors(self):
        for case in VECTORS["tls_info"]:
            with self.subTest(case["name"]):
                host = case["host"]
                t = transport(RawTransport(tls=wit_tls_info(host)))
                info = t.tls_info()
                self.assertEqual(view(info), case["expect"])
                cert = t.get_peer_certificate()
                if info is None:
                    self.assertIsNone(cert)
                    continue
                self.assertIsInstance(info, twill.TlsInfo)
                self.assertEqual(cert, info.peer_certificate)
                alpn = host["alpn-protocol"]
                self.assertEqual(info.alpn_protocol, None if alpn is None else bytes(alpn))
                if host["peer-certificate"] is None:
                    self.assertIsNone(cert)
                else:
                    self.assertIsInstance(cert, twill.PeerCertificate)
                    self.assertIs(type(cert.der), bytes)
                    self.assertEqual(cert.der, bytes(host["peer-certificate"]["der"]))

    def test_the_starttls_guest_writes_the_info_line_of_the_vectors(self):
        guest = load_guest()
        for case in VECTORS["tls_info"]:
            with self.subTest(case["name"]):
                t = transport(RawTransport(tls=wit_tls_info(case["host"])))
                self.assertEqual(guest.info_line(t), case["info_line"])

    def test_bytes_from_the_bindings_in_another_buffer_type_are_bytes(self):
        raw = RawTransport(
            tls=types.SimpleNamespace(
                version="TLSv1.3",
                cipher_suite="TLS13_AES_128_GCM_SHA256",
                server_name=None,
                alpn_protocol=bytearray(b"h2"),
                peer_certificate=types.SimpleNamespace(subject="CN=x", sha256="00", der=[48, 0]),
            )
        )
        info = transport(raw).tls_info()
        self.assertEqual((info.alpn_protocol, info.peer_certificate.der), (b"h2", b"\x30\x00"))
        self.assertIs(type(info.alpn_protocol), bytes)

    def test_tls_info_asks_the_host_each_time(self):
        # After start_tls, tls_info is None until the handshake completed:
        # nothing may be cached.
        raw = RawTransport()
        t = transport(raw)
        self.assertIsNone(t.tls_info())
        raw.tls = wit_tls_info(VECTORS["tls_info"][1]["host"])
        self.assertEqual(t.tls_info().version, "TLSv1.3")
        self.assertEqual([c for c in raw.calls if c[0] == "tls_info"], [("tls_info",), ("tls_info",)])


class StartTlsVectorsTest(unittest.TestCase):
    def test_vectors(self):
        for case in VECTORS["start_tls"]:
            with self.subTest(case["name"]):
                raw = RawTransport(start_tls_error=case["host_error"])
                t = transport(raw)
                t.write(b"OK begin TLS\r\n")
                if case["expect_error"] is None:
                    self.assertIsNone(t.start_tls())
                else:
                    with self.assertRaises(twill.StartTLSError) as caught:
                        t.start_tls()
                    self.assertEqual(str(caught.exception), case["expect_error"])
                    self.assertIsNone(caught.exception.__cause__)
                # The transport is unchanged: the host saw the call once,
                # and later writes still reach it.
                t.write(b"after")
                self.assertEqual(raw.calls, [("write", b"OK begin TLS\r\n"), ("start_tls",), ("write", b"after")])
                self.assertFalse(t.disconnecting)

    def test_other_exceptions_pass_through(self):
        class Trap(RawTransport):
            def start_tls(self):
                raise RuntimeError("trap")

        t = transport(Trap())
        with self.assertRaises(RuntimeError):
            t.start_tls()

    def test_names(self):
        self.assertTrue(issubclass(twill.StartTLSError, Exception))
        for name in ("StartTLSError", "TlsInfo", "PeerCertificate"):
            self.assertIn(name, twill.__all__)
        info = twill.TlsInfo("TLSv1.3", "TLS13_AES_128_GCM_SHA256")
        self.assertEqual((info.server_name, info.alpn_protocol, info.peer_certificate), (None, None, None))
        with self.assertRaises(Exception):
            info.version = "TLSv1.2"  # frozen


class StartTlsGuestTest(unittest.TestCase):
    """guests/python-starttls driven through the SDK's glue: the server's
    replies and the client's lines (the host tests run it for real)."""

    def writes(self, raw):
        return b"".join(c[1] for c in raw.calls if c[0] == "write")

    def test_server_commands(self):
        guest = load_guest()
        raw = RawTransport(start_tls_error="the connection is already encrypted")
        box = served(raw, guest.Server)
        # Lines split across reads, ending in \r\n or a bare \n.
        for chunk in (b"hel", b"lo\r\nINFO\n", b"STARTTLS\r", b"\n\xffx\r\nQUIT\r\nlate\r\n"):
            box.data_received(chunk)
        self.assertEqual(
            self.writes(raw),
            b"ECHO hello\r\nINFO tls=none\r\nOK begin TLS\r\nERR the connection is already encrypted\r\n"
            + "ECHO \ufffdx\r\n".encode()
            + b"ECHO late\r\n",
        )
        self.assertIn(("lose_connection",), raw.calls)

    def test_server_starts_tls_after_its_plaintext_reply(self):
        guest = load_guest()
        raw = RawTransport()
        box = served(raw, guest.Server)
        box.data_received(b"STARTTLS\r\n")
        self.assertEqual(raw.calls, [("write", b"OK begin TLS\r\n"), ("start_tls",)])
        raw.tls = wit_tls_info(VECTORS["tls_info"][3]["host"])
        box.data_received(b"INFO\r\n")
        self.assertEqual(raw.calls[-1], ("write", (VECTORS["tls_info"][3]["info_line"] + "\r\n").encode()))

    def test_client_lines(self):
        import io
        from contextlib import redirect_stdout

        guest = load_guest()
        raw = RawTransport()
        out = io.StringIO()
        with redirect_stdout(out):
            p = guest.Clients().build_protocol(twill.Address("127.0.0.1", 9))
            p.make_connection(twill.Transport(raw))
            p.data_received(b"OK begin TLS\r\n")
            raw.tls = wit_tls_info(VECTORS["tls_info"][4]["host"])
            p.data_received(b"INFO from server\r\n")
            p.connection_lost(twill.Reason("done"))
            guest.Clients().client_connection_failed(twill.Reason("failed", "TLS handshake failed: expired"))
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "client connected: INFO tls=none",
                "client got: OK begin TLS",
                "client got: INFO from server",
                "client sees: " + VECTORS["tls_info"][4]["info_line"],
                "client lost: Reason('done', '')",
                "client failed: Reason('failed', 'TLS handshake failed: expired')",
            ],
        )
        self.assertEqual(
            [c for c in raw.calls if c[0] != "tls_info"],
            [("write", b"STARTTLS\r\n"), ("start_tls",), ("write", b"INFO\r\n"), ("write", b"QUIT\r\n")],
        )

    def test_a_refused_client_says_so_and_closes(self):
        import io
        from contextlib import redirect_stdout

        guest = load_guest()
        raw = RawTransport(start_tls_error="the connection is closing")
        out = io.StringIO()
        with redirect_stdout(out):
            p = guest.Clients().build_protocol(twill.Address("127.0.0.1", 9))
            p.make_connection(twill.Transport(raw))
            p.data_received(b"OK\r\n")
        self.assertEqual(
            out.getvalue().splitlines()[-1], "client: cannot start TLS: the connection is closing"
        )
        self.assertEqual(raw.calls[-1], ("lose_connection",))


if __name__ == "__main__":
    unittest.main()
