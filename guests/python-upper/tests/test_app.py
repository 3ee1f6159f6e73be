"""Tests for app.py with the SDK's StringTransport: no host, no sockets.

    python -m unittest discover -s tests
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twill.testing import connect, deliver  # noqa: E402

from app import Commands  # noqa: E402


class CommandsTest(unittest.TestCase):
    def test_answers_each_line_however_it_is_chunked(self):
        data = b"hello\r\nPING\r\nQUIT\r\nnever\r\n"
        for size in range(1, len(data) + 1):
            protocol = Commands()
            transport = connect(protocol)
            deliver(protocol, *(data[i : i + size] for i in range(0, len(data), size)))
            self.assertEqual(transport.value(), b"HELLO\r\nPONG\r\nBYE\r\n", f"chunks of {size}")
            self.assertTrue(transport.disconnecting)

    def test_a_line_over_16384_bytes_closes_the_connection(self):
        protocol = Commands()
        transport = connect(protocol)
        deliver(protocol, b"a" * 16385, b"\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)


if __name__ == "__main__":
    unittest.main()
