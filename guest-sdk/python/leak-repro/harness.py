"""Run repro.wasm (or another build of it) under wasmtime-py and measure how
much linear memory each kind of import call leaves behind.

usage: harness.py COMPONENT.wasm [kind ...]
Prints, per kind: MiB passed to imports, MiB of heap headroom lost, ratio.
"""
import os, sys, time
import wasmtime
from wasmtime import component as cm

LIMIT = 512 << 20   # per-memory limit; headroom is measured against it
N = int(os.environ.get("N", 160)); SIZE = int(os.environ.get("SIZE", 64 << 10))
KINDS = {0: "put(bytes)", 1: "put(bytearray)", 2: "put(memoryview)",
         3: "put-many([bytes]*4)", 4: "put-str(str)", 5: "print via libc (wasi adapter)",
         6: "stdout blocking-write-and-flush via bindings"}

path = sys.argv[1]
kinds = [int(k) for k in sys.argv[2:]] or list(KINDS)

cfg = wasmtime.Config()
cfg.parallel_compilation = os.environ.get("PAR", "0") == "1"
cfg.cache = True
engine = wasmtime.Engine(cfg)
cwasm = path + ".cwasm"
t = time.time()
if os.path.exists(cwasm) and os.path.getmtime(cwasm) > os.path.getmtime(path):
    comp = cm.Component.deserialize_file(engine, cwasm)
else:
    comp = cm.Component.from_file(engine, path)
    with open(cwasm, "wb") as f:
        f.write(comp.serialize())
print(f"# {path}: loaded in {time.time()-t:.1f} s", flush=True)

received = [0]
bad = [0]
def check(d):
    if bytes(d) != b"x" * len(d): bad[0] += 1
def put(store, data): received[0] += len(data); check(data)
def put_many(store, data): received[0] += sum(len(d) for d in data); [check(d) for d in data]
def put_str(store, s): received[0] += len(s)

linker = cm.Linker(engine)
linker.add_wasip2()
with linker.root() as root:
    with root.add_instance("leak:repro/sink") as sink:
        sink.add_func("put", put)
        sink.add_func("put-many", put_many)
        sink.add_func("put-str", put_str)

def call(store, inst, name, *args):
    f = inst.get_func(store, name)
    r = f(store, *args)
    try:
        f.post_return(store)
    except Exception:
        pass
    return r

for kind in kinds:
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())   # stdout discarded
    store.set_limits(memory_size=LIMIT)
    inst = linker.instantiate(store, comp)
    h = [call(store, inst, "headroom")]
    received[0] = 0
    err = None
    for _ in range(3):
        try:
            call(store, inst, "run", kind, N, SIZE)
        except Exception as e:
            err = str(e).splitlines()[0][:120]
            break
        h.append(call(store, inst, "headroom"))
    mib = (N * SIZE) / 2**20
    lost = [(h[0] - x) / 2**20 for x in h[1:]]
    print(f"kind {kind} {KINDS[kind]:<45} per run {mib:.0f} MiB passed;"
          f" headroom lost after runs 1..{len(lost)}: {', '.join(f'{x:.1f}' for x in lost)} MiB"
          + f"; host got {received[0]/2**20:.1f} MiB, {bad[0]} corrupt"
          + (f"  ERROR: {err}" if err else ""), flush=True)
    bad[0] = 0
