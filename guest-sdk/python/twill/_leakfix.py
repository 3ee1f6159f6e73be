"""The fixes for componentize-py's two leaks, applied to a built component
(``twill-componentize`` runs them after componentize-py): the
import-argument leak, and the exported-resource leak (at the end).

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

The exported-resource leak (the same versions): ``exported_resource_to_canon``
hands the resource a strong reference to the Python object (``into_ptr``),
and the runtime's ``resource_dtor`` is a no-op ("nothing to do here"), so
every object a guest exports as a resource (each connection's protocol)
stays alive after the host drops it. The fix wraps the exported
``wit_dylib_resource_dtor`` to release that reference::

    wit_dylib_resource_dtor(ty, rep)             # the original
    gil = PyGILState_Ensure()
    _Py_DecRef(rep)
    PyGILState_Release(gil)

The runtime also registers ``weakref.finalize`` on the object, to drop the
handle if the object dies while the guest owns it; once the host owns the
handle that would drop a stale one, so the SDK's exported protocol
detaches it (``twill._export.ProtocolExport.finalizer``). Each fix has its
own marker section.
"""

MARK = "twill-componentize-py-pop-list-fix"
DTOR_MARK = "twill-componentize-py-resource-dtor-fix"

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


I32 = 0x7F


def _func_import_indices(m, s):
    """(module, name) -> function index, for a module's function imports."""
    n, i = _uleb(m, s)
    out = {}
    funcs = 0
    for _ in range(n):
        mod, i = _name(m, i)
        nm, i = _name(m, i)
        kind = m[i]
        if kind == 0:
            out[(mod, nm)] = funcs
            funcs += 1
            _, i = _uleb(m, i + 1)
        else:
            i = _skip_import_desc(m, i)
    return out


def _skip_import_desc(m, i):
    kind = m[i]
    i += 1
    if kind == 1:
        i += 1
        flags = m[i]
        _, i = _uleb(m, i + 1)
        if flags & 1:
            _, i = _uleb(m, i)
    elif kind == 2:
        flags = m[i]
        _, i = _uleb(m, i + 1)
        if flags & 1:
            _, i = _uleb(m, i)
    elif kind == 3:
        i += 2
    elif kind == 4:
        _, i = _uleb(m, i + 1)
    else:
        raise PatchError(f"unknown import kind {kind}")
    return i


class _Module:
    """What the rewrites need to know of a core module."""

    def __init__(self, m):
        self.m = m
        self.secs = {sid: (s, e) for sid, s, e, _ in _sections(m) if sid != 0}
        for needed in (1, 3, 7, 10):
            if needed not in self.secs:
                raise PatchError(f"the runtime module has no section {needed}")
        self.types = _types(m, self.secs[1][0])
        self.imports = _func_import_indices(m, self.secs[2][0]) if 2 in self.secs else {}
        self.imported = len(self.imports)
        defined, i = _uleb(m, self.secs[3][0])
        self.ftypes = []
        for _ in range(defined):
            t, i = _uleb(m, i)
            self.ftypes.append(t)
        self.exports = _exports(m, self.secs[7][0])

    def export(self, name):
        try:
            return self.exports[name][1]
        except KeyError:
            raise PatchError(f"the runtime module does not export {name}") from None

    def imported_func(self, name):
        try:
            return self.imports[("env", name)]
        except KeyError:
            raise PatchError(f"the runtime module does not import env.{name}") from None

    def signature(self, index):
        if index < self.imported:
            raise PatchError("an export that is an import")
        return self.types[self.ftypes[index - self.imported]]

    def type_of(self, index):
        return self.ftypes[index - self.imported]


def _append(mod, export, type_index, body, marker):
    """``mod``'s bytes with a function of ``type_index`` and ``body``
    (locals and code) appended, the export ``export`` pointing at it, and a
    custom section ``marker``."""
    m = mod.m
    _, _, at, end = mod.exports[export]
    new = mod.imported + len(mod.ftypes)
    body = _enc(len(body)) + body
    out = bytearray(m[:8])
    for sid, s, e, st in _sections(m):
        if sid == 3:
            n, after = _uleb(m, s)
            payload = _enc(n + 1) + m[after:e] + _enc(type_index)
        elif sid == 10:
            n, after = _uleb(m, s)
            payload = _enc(n + 1) + m[after:e] + body
        elif sid == 7:
            payload = m[s:at] + _enc(new) + m[end:e]
        else:
            out += m[st:e]
            continue
        out += bytes([sid]) + _enc(len(payload)) + payload
    mark = _enc(len(marker)) + marker.encode()
    out += b"\x00" + _enc(len(mark)) + mark
    return bytes(out)


def _fix_pop_list(m):
    mod = _Module(m)
    pop = mod.export("wit_dylib_pop_list")
    dealloc = mod.export("wit_dylib_dealloc_bytes")
    if mod.signature(pop) != (bytes([I32] * 3), bytes([I32])):
        raise PatchError("wit_dylib_pop_list is not (i32, i32, i32) -> i32")
    if mod.signature(dealloc) != (bytes([I32] * 5), b""):
        raise PatchError("wit_dylib_dealloc_bytes is not (i32 x 5) -> ()")
    # (param cx ty retptr) (local len ptr)
    code = (
        b"\x20\x00\x20\x01\x20\x02\x10" + _enc(pop) + b"\x21\x03"  # len = pop(cx, ty, retptr)
        b"\x20\x02\x28\x02\x00\x22\x04"  # ptr = i32.load(retptr), kept on the stack
        b"\x04\x40"  # if ptr != 0
        b"\x20\x00\x20\x04\x20\x03\x41\x01\x41\x01\x10" + _enc(dealloc) +  # dealloc_bytes(cx, ptr, len, 1, defer=1)
        b"\x0b"
        b"\x20\x03\x0b"  # return len
    )
    return _append(mod, "wit_dylib_pop_list", mod.type_of(pop), b"\x01\x02\x7f" + code, MARK)


def _fix_dtor(m):
    mod = _Module(m)
    dtor = mod.export("wit_dylib_resource_dtor")
    if mod.signature(dtor) != (bytes([I32] * 2), b""):
        raise PatchError("wit_dylib_resource_dtor is not (i32, i32) -> ()")
    decref = mod.imported_func("_Py_DecRef")
    ensure = mod.imported_func("PyGILState_Ensure")
    release = mod.imported_func("PyGILState_Release")
    # (param ty rep) (local gil)
    code = (
        b"\x20\x00\x20\x01\x10" + _enc(dtor)  # the original (a no-op today)
        + b"\x10" + _enc(ensure) + b"\x21\x02"  # gil = PyGILState_Ensure()
        + b"\x20\x01\x10" + _enc(decref)  # _Py_DecRef(rep)
        + b"\x20\x02\x10" + _enc(release)  # PyGILState_Release(gil)
        + b"\x0b"
    )
    return _append(mod, "wit_dylib_resource_dtor", mod.type_of(dtor), b"\x01\x01\x7f" + code, DTOR_MARK)


def _marks(m):
    return {_name(m, s)[0] for sid, s, _, _ in _sections(m) if sid == 0}


def _patch_module(m):
    """Both fixes, each unless its marker says it is there; None if neither
    was needed."""
    marks = _marks(m)
    out = m
    if MARK not in marks:
        out = _fix_pop_list(out)
    if DTOR_MARK not in marks:
        out = _fix_dtor(out)
    return None if out is m else out


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
