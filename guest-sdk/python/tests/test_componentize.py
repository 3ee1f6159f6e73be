"""twill-componentize's gate and errors (host/tests/leakfix.rs runs the
rewrite itself under wasmtime)."""

import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twill import _leakfix, componentize  # noqa: E402


class LeakFixGate(unittest.TestCase):
    def test_only_the_leaking_componentize_py_versions_are_patched(self):
        for v in ["0.19.0", "0.21.3", "0.25.0", "0.25.1"]:
            self.assertTrue(_leakfix.needs_fix(v), v)
        for v in ["0.18.9", "0.25.2", "0.26.0", "1.0.0", "unknown", ""]:
            self.assertFalse(_leakfix.needs_fix(v), v)

    def test_a_newer_componentize_py_leaves_the_component_as_built(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "app.wasm")
            with open(path, "wb") as f:
                f.write(b"\0asm\x0d\0\x01\0")
            self.assertFalse(componentize.fix(path, version="0.26.0"))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"\0asm\x0d\0\x01\0")

    def test_what_is_not_a_componentize_py_component_is_refused(self):
        with self.assertRaisesRegex(_leakfix.PatchError, "not a wasm file"):
            _leakfix.patch(b"hello")
        with self.assertRaisesRegex(_leakfix.PatchError, "not a componentize-py component"):
            _leakfix.patch(b"\0asm\x0d\0\x01\0")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "app.wasm")
            with open(path, "wb") as f:
                f.write(b"\0asm\x0d\0\x01\0")
            with self.assertRaisesRegex(SystemExit, "cannot apply the write-leak fix"):
                componentize.fix(path, version="0.25.1")


if __name__ == "__main__":
    unittest.main()
