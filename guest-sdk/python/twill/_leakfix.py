"""The fix for componentize-py's import-argument leak, applied to a built
component (``twill-componentize`` runs it after componentize-py).

The leak (componentize-py 0.19.0 to 0.25.1): a Python ``bytes`` passed to
an imported function taking ``list<u8>`` (``transport.write``, each chunk
of ``write_sequence``, a WASI stream write) is copied into a fresh
``malloc`` buffer by ``MyCall::maybe_pop_list`` (componentize-py's
``runtime/src/lib.rs``), and nothing frees it: the glue wit-dylib
generates frees only the lists it built itself, element by element, and
the runtime never registers the buffer with ``defer_deallocate``. Every
byte a Python guest writes stays in its linear memory. docs/guide-python.md
has the reproduction and the upstream patch.

The fix here does what that missing ``defer_deallocate`` would: it wraps the
runtime module's exported ``wit_dylib_pop_list`` so that, when the fast
path handed out a buffer, the buffer is registered with the call context
(the runtime's own ``wit_dylib_dealloc_bytes(cx, ptr, len, 1, defer=1)``)
and freed when the import returns::

    len = wit_dylib_pop_list(cx, ty, retptr)     # the original
    if *retptr != 0:                             # the fast path's buffer
        wit_dylib_dealloc_bytes(cx, *retptr, len, 1, 1)
    return len

Only the one core module that exports ``wit_dylib_pop_list`` changes: a
function is appended and the export points at it. A custom section marks
the module, so a second run changes nothing. It must not be applied to a
runtime that frees the buffer itself (it would free it twice), so
:func:`needs_fix` gates it on componentize-py's version.
"""

MARK = "twill-componentize-py-pop-list-fix"

# componentize-py releases whose runtime leaks (from "adopt wit-dylib",
# v0.19.0, to the newest checked, 0.25.1).
LEAKING = ((0, 19, 0), (0, 25, 1))


def needs_fix(version):
    """Whether components built by componentize-py ``version`` (such as
    ``"0.25.1"``) leak, so that :func:`patch` applies."""
    try:
        v = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        return False
    return LEAKING[0] <= v <= LEAKING[1]


class PatchError(Exception):
    """The component is not what the fix expects (it is left unchanged)."""


def _uleb(b, i):
    result = shift = 0
    while True:
        x = b[i]
        i += 1
        result |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return result, i


def _enc(v):
    out = bytearray()
    while True:
        x = v & 0x7F
        v >>= 7
        if v:
            out.append(x | 0x80)
        else:
            out.append(x)
            return bytes(out)


def _sections(b):
    """(id, payload start, payload end, section start) of a module or
    component."""
    i = 8
    while i < len(b):
        start = i
        sid = b[i]
        size, i = _uleb(b, i + 1)
        yield sid, i, i + size, start
        i += size


def _name(b, i):
    n, i = _uleb(b, i)
    return bytes(b[i : i + n]).decode(), i + n


def _func_imports(m, s):
    """How many of a module's imports are functions."""
    n, i = _uleb(m, s)
    funcs = 0
    for _ in range(n):
        _, i = _name(m, i)
        _, i = _name(m, i)
        kind = m[i]
        i += 1
        if kind == 0:  # func: type index
            _, i = _uleb(m, i)
            funcs += 1
        elif kind == 1:  # table: reftype, limits
            i += 1
            flags = m[i]
            _, i = _uleb(m, i + 1)
            if flags & 1:
                _, i = _uleb(m, i)
        elif kind == 2:  # memory: limits
            flags = m[i]
            _, i = _uleb(m, i + 1)
            if flags & 1:
                _, i = _uleb(m, i)
        elif kind == 3:  # global: valtype, mutability
            i += 2
        elif kind == 4:  # tag
            _, i = _uleb(m, i + 1)
        else:
            raise PatchError(f"unknown import kind {kind}")
    return funcs


def _types(m, s):
    n, i = _uleb(m, s)
    types = []
    for _ in range(n):
        if m[i] != 0x60:
            raise PatchError("a type other than a plain function type")
        np, i = _uleb(m, i + 1)
        params = bytes(m[i : i + np])
        nr, i = _uleb(m, i + np)
        types.append((params, bytes(m[i : i + nr])))
        i += nr
    return types


def _exports(m, s):
    """name -> (kind, index, start and end of the index's LEB)."""
    n, i = _uleb(m, s)
    out = {}
    for _ in range(n):
        nm, j = _name(m, i)
        idx, k = _uleb(m, j + 1)
        out[nm] = (m[j], idx, j + 1, k)
        i = k
    return out


def _marked(m):
    return any(sid == 0 and _name(m, s)[0] == MARK for sid, s, _, _ in _sections(m))


I32 = 0x7F


def _patch_module(m):
    if _marked(m):
        return None
    secs = {sid: (s, e) for sid, s, e, _ in _sections(m) if sid != 0}
    for needed in (1, 3, 7, 10):
        if needed not in secs:
            raise PatchError(f"the runtime module has no section {needed}")
    types = _types(m, secs[1][0])
    imported = _func_imports(m, secs[2][0]) if 2 in secs else 0
    fs, _ = secs[3]
    defined, i = _uleb(m, fs)
    ftypes = []
    for _ in range(defined):
        t, i = _uleb(m, i)
        ftypes.append(t)
    exports = _exports(m, secs[7][0])
    try:
        _, pop, at, end = exports["wit_dylib_pop_list"]
        _, dealloc, _, _ = exports["wit_dylib_dealloc_bytes"]
    except KeyError as e:
        raise PatchError(f"the runtime module does not export {e}") from None
    pop_type = ftypes[pop - imported]
    if types[pop_type] != (bytes([I32] * 3), bytes([I32])):
        raise PatchError("wit_dylib_pop_list is not (i32, i32, i32) -> i32")
    if types[ftypes[dealloc - imported]] != (bytes([I32] * 5), b""):
        raise PatchError("wit_dylib_dealloc_bytes is not (i32 x 5) -> ()")
    wrapper = imported + defined
    # (param cx ty retptr) (local len ptr)
    code = (
        b"\x20\x00\x20\x01\x20\x02\x10" + _enc(pop) + b"\x21\x03"  # len = pop(cx, ty, retptr)
        b"\x20\x02\x28\x02\x00\x22\x04"  # ptr = i32.load(retptr), kept on the stack
        b"\x04\x40"  # if ptr != 0
        b"\x20\x00\x20\x04\x20\x03\x41\x01\x41\x01\x10" + _enc(dealloc) +  # dealloc_bytes(cx, ptr, len, 1, defer=1)
        b"\x0b"
        b"\x20\x03\x0b"  # return len
    )
    body = b"\x01\x02\x7f" + code  # one local group: 2 x i32
    body = _enc(len(body)) + body
    out = bytearray(m[:8])
    for sid, s, e, st in _sections(m):
        if sid == 3:
            _, after = _uleb(m, s)
            payload = _enc(defined + 1) + m[after:e] + _enc(pop_type)
        elif sid == 10:
            n, after = _uleb(m, s)
            payload = _enc(n + 1) + m[after:e] + body
        elif sid == 7:
            payload = m[s:at] + _enc(wrapper) + m[end:e]
        else:
            out += m[st:e]
            continue
        out += bytes([sid]) + _enc(len(payload)) + payload
    mark = _enc(len(MARK)) + MARK.encode()
    out += b"\x00" + _enc(len(mark)) + mark
    return bytes(out)


def patch(component):
    """The component with the fix applied, or ``None`` if it already has
    it. Raises :class:`PatchError` if it has no componentize-py runtime."""
    c = bytes(component)
    if c[:4] != b"\0asm":
        raise PatchError("not a wasm file")
    out = bytearray(c[:8])
    patched = None
    found = False
    for sid, s, e, st in _sections(c):
        # Section 1 of a component is a core module.
        if sid == 1 and "wit_dylib_pop_list" in _module_exports(c[s:e]):
            found = True
            patched = _patch_module(c[s:e])
            if patched is None:
                return None
            out += b"\x01" + _enc(len(patched)) + patched
        else:
            out += c[st:e]
    if not found:
        raise PatchError("no core module exports wit_dylib_pop_list: not a componentize-py component")
    return bytes(out)


def _module_exports(m):
    """A core module's export names (none without an export section)."""
    for sid, s, _, _ in _sections(m):
        if sid == 7:
            return _exports(m, s)
    return {}


def patch_file(src, dst=None):
    """Applies :func:`patch` to the file ``src`` (in place unless ``dst``).
    Returns False if it was already patched."""
    with open(src, "rb") as f:
        data = f.read()
    out = patch(data)
    if out is None:
        if dst and dst != src:
            with open(dst, "wb") as f:
                f.write(data)
        return False
    with open(dst or src, "wb") as f:
        f.write(out)
    return True
