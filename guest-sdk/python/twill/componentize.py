"""``twill-componentize``: build a Python protocol into a Twill component.

It runs componentize-py against the SDK's own copy of the contract
(:data:`twill.WIT_DIR`, world ``peer``), then applies the fixes for
componentize-py's two leaks (:mod:`twill._leakfix`: every written buffer,
and every exported resource, such as each connection's protocol) when the
installed componentize-py is a version that leaks::

    twill-componentize app -o app.wasm            # app.py in the current directory
    twill-componentize echo -p src -o echo.wasm   # more of the Python path with -p

It is the same as ``componentize-py -d WIT_DIR -w peer componentize APP
-o OUT`` followed by the fix, so a project can keep calling componentize-py
directly and run ``python -m twill.componentize --fix-only OUT``.
"""

import argparse
import os
import shutil
import subprocess
import sys
from importlib import metadata

from . import WIT_DIR, _leakfix


def _componentize_py():
    """The componentize-py executable next to this Python, else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "componentize-py")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("componentize-py")
    if not found:
        raise SystemExit("twill-componentize: componentize-py is not installed (pip install componentize-py==0.25.1)")
    return found


def fix(path, version=None):
    """Applies the leak fix to the component at ``path`` if componentize-py
    ``version`` (default: the installed one) leaks; says what it did."""
    if version is None:
        try:
            version = metadata.version("componentize-py")
        except metadata.PackageNotFoundError:
            version = "unknown"
    if not _leakfix.needs_fix(version):
        print(
            f"twill-componentize: componentize-py {version} is not one of the versions known to leak "
            f"(0.19.0 to 0.25.1); {path} left as built",
            file=sys.stderr,
        )
        return False
    try:
        changed = _leakfix.patch_file(path)
    except _leakfix.PatchError as e:
        raise SystemExit(f"twill-componentize: cannot apply the write-leak fix to {path}: {e}")
    what = "applied" if changed else "already applied"
    print(f"twill-componentize: componentize-py {version} leak fixes {what}: {path}", file=sys.stderr)
    return changed


def main(argv=None):
    ap = argparse.ArgumentParser(prog="twill-componentize", description=__doc__.split("\n\n")[0])
    ap.add_argument("app", nargs="?", help="the app module (its file, minus .py)")
    ap.add_argument("-o", "--output", help="the component to write (default: APP.wasm)")
    ap.add_argument("-p", "--python-path", action="append", default=[], help="a directory of the Python path (repeatable; default: .)")
    ap.add_argument("-w", "--world", default="peer", help="the WIT world (default: peer)")
    ap.add_argument("-d", "--wit", default=WIT_DIR, help="the WIT directory (default: the SDK's)")
    ap.add_argument("--fix-only", metavar="WASM", help="only apply the leak fixes to an already built component")
    args = ap.parse_args(argv)
    if args.fix_only:
        fix(args.fix_only)
        return 0
    if not args.app:
        ap.error("the app module is required (or --fix-only WASM)")
    out = args.output or f"{args.app}.wasm"
    cmd = [_componentize_py(), "-d", args.wit, "-w", args.world, "componentize"]
    for p in args.python_path or ["."]:
        cmd += ["-p", p]
    cmd += [args.app, "-o", out]
    built = subprocess.run(cmd)
    if built.returncode != 0:
        return built.returncode
    fix(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
