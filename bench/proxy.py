#!/usr/bin/env python3
"""Proxies in front of one echo server (issue 16's figures): the same
loadgen and scenarios as bench/run.py, driven through a TCP proxy whose
backend is bench's native echo server (one instance, two threads, started
once per run).

Proxies, alternated in every round (the order rotated by one each round),
each started fresh in every round on an ephemeral loopback port:

- native: bench/src/bin/native-proxy.rs, tokio `copy_bidirectional`, 2 threads
- haproxy: HAProxy `mode tcp`, `nbthread 2`, in the foreground (`-db`)
- twisted: Twisted's `portforward.ProxyFactory` (bench/twisted_portforward.py)
- twill-relay: `twill run` with guests/portforward/portforward.wasm, the
  guest relaying every chunk itself
- twill-splice: the same with `SPLICE = "1"`: the guest splices the two
  connections and the host moves the bytes

Per scenario and proxy: throughput, the proxy process's CPU time per
operation (from /proc/PID/stat, utime + stime), and the ping-pong p99; then
ratios, each the median of the per-round ratios (a round runs every proxy
back to back, so a slow round on the shared machine cancels out).

Usage: bench/proxy.sh [--rounds N] [--duration S] [--only native,haproxy]
"""
import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (SCENARIOS, cpu_secs, wait_port, loadgen)

ROOT = bench.ROOT
TARGET = bench.TARGET
RELEASE = TARGET / "release"
TWILL = RELEASE / "twill"
PORTFORWARD = ROOT / "guests" / "portforward" / "portforward.wasm"
SCENARIOS = bench.SCENARIOS
PROXIES = ["native", "haproxy", "twisted", "twill-relay", "twill-splice", "twill-relay-shared", "twill-splice-shared"]
LABEL = {
    "native": "native tokio",
    "haproxy": "HAProxy",
    "twisted": "Twisted",
    "twill-relay": "twill relay",
    "twill-splice": "twill splice",
    "twill-relay-shared": "twill relay, shared",
    "twill-splice-shared": "twill splice, shared",
}
ECHO_THREADS = 2
PROXY_THREADS = 2  # native-proxy's workers and HAProxy's nbthread


def haproxy_maxconn():
    """20,000, or what the descriptor limit allows: HAProxy wants two per
    connection plus a few, and refuses to start otherwise ("Cannot raise FD
    limit"); without CAP_SYS_RESOURCE the hard limit cannot be raised."""
    return min(20000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100) // 2)

# Ratios beyond "against native": twill's CPU against HAProxy's, and its
# throughput against Twisted's (both metrics are shown for each pair).
EXTRA_RATIOS = [
    (t, ref)
    for ref in ("haproxy", "twisted")
    for t in ("twill-relay", "twill-splice", "twill-relay-shared", "twill-splice-shared")
]


def free_port():
    """An ephemeral loopback port nobody holds now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    """Whether nothing listens on the port. SO_REUSEADDR, so connections
    left in TIME_WAIT by a finished run do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def announced(proc, timeout=30):
    """The port a server announces on stderr (`... listening on
    127.0.0.1:PORT`, as native-echo and twisted_echo.py do); the rest of
    stderr is drained in the background so the server never blocks on it."""
    found = {}
    ready = threading.Event()

    def pump():
        for line in proc.stderr:
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            if m and not ready.is_set():
                found["port"] = int(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or "port" not in found:
        raise SystemExit(f"server (pid {proc.pid}) did not announce its port; exit code {proc.poll()}")
    return found["port"]


def haproxy_config(tmp, port, echo_port):
    path = Path(tmp) / "haproxy.cfg"
    path.write_text(
        "global\n"
        f"    nbthread {PROXY_THREADS}\n"
        f"    maxconn {haproxy_maxconn()}\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "frontend fe\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend be\n"
        "backend be\n"
        f"    server echo 127.0.0.1:{echo_port}\n"
    )
    return path


def twill_config(tmp, name, port, echo_port, splice, shared):
    env = f'BACKEND = "127.0.0.1:{echo_port}"' + (', SPLICE = "1"' if splice else "")
    # Shared: one instance per core, each on its thread, as bench/run.py's
    # shared echo; otherwise an instance per proxied pair.
    sharing = 'instance = "shared"\nshared-instances = 2\n' if shared else ""
    path = Path(tmp) / f"{name}.toml"
    path.write_text(
        "[plugins.forward]\n"
        f'component = "{PORTFORWARD}"\n'
        f"{sharing}"
        f'connect = ["127.0.0.1:{echo_port}"]\n'
        f"env = {{ {env} }}\n\n"
        "[[listen]]\n"
        f"port = {port}\n"
        'plugin = "forward"\n'
        "backlog = 4096\n"
    )
    return path


def start(name, tmp, echo_port, venv_python):
    """Starts a proxy; returns (process, port) once it accepts."""
    if name in ("native", "twisted"):
        # These bind port 0 and announce the port they got.
        if name == "native":
            cmd = [str(RELEASE / "native-proxy"), "--port", "0", "--backend", f"127.0.0.1:{echo_port}", "--threads", str(PROXY_THREADS)]
        else:
            cmd = [venv_python, str(ROOT / "bench" / "twisted_portforward.py"), "0", "127.0.0.1", str(echo_port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = announced(proc)
        except BaseException:
            stop(proc)
            raise
    else:
        # These take the port from their config, as bench/run.py's twill
        # configs do: a free ephemeral port is written in.
        port = free_port()
        if name == "haproxy":
            cmd = ["haproxy", "-f", str(haproxy_config(tmp, port, echo_port)), "-db"]
        else:
            cfg = twill_config(
                tmp, name, port, echo_port, splice="splice" in name, shared=name.endswith("-shared")
            )
            cmd = [str(TWILL), "-q", "run", str(cfg)]
        if not port_free(port):
            raise SystemExit(f"port {port} is taken")
        log = Path(tmp) / f"{name}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        bench.wait_port(port, proc)
    except SystemExit as e:
        stop(proc)
        tail = log.read_text()[-2000:] if name not in ("native", "twisted") else ""
        raise SystemExit(f"{name}: {e}\n{tail}") from None
    except BaseException:
        stop(proc)
        raise
    time.sleep(0.3)
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name, proc, port, duration, results):
    addr = f"127.0.0.1:{port}"
    # Warm up (and, for twill, fill the instance pool's warm slots).
    bench.loadgen(["--addr", addr, "--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
    for scen, args, _ in SCENARIOS:
        c0 = bench.cpu_secs(proc.pid)
        r = bench.loadgen(["--addr", addr, "-d", str(duration), *args])
        c1 = bench.cpu_secs(proc.pid)
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited during {scen} with {proc.returncode}")
        ops = int(r["ops"])
        results.setdefault((name, scen), []).append(
            {
                "rate": float(r["rate"]),
                "cpu_us": (c1 - c0) * 1e6 / max(ops, 1),
                "p99": float(r["p99_us"]) if "p99_us" in r else None,
                "errors": int(r.get("errors", 0)),
            }
        )
        time.sleep(0.5)


def report(a, names, skipped, results, elapsed, order_log):
    med = statistics.median

    def cell(name, scen, key):
        v = [x[key] for x in results.get((name, scen), []) if x[key] is not None]
        return med(v) if v else None

    def fmt(v):
        return "–" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")

    def ratio(x, y, scen, key):
        xs, ys = results.get((x, scen)), results.get((y, scen))
        if not xs or not ys:
            return "–"
        rs = [p[key] / q[key] for p, q in zip(xs, ys) if q[key]]
        return f"{med(rs):.2f}×" if rs else "–"

    lines = [
        f"Medians of {a.rounds} round(s), {a.duration:g} s per scenario (after a 1 s warm-up); the proxies run in "
        "alternation, the order rotated by one each round, each started fresh in every round on an ephemeral "
        "loopback port. Ratios are medians of the per-round ratios.\n",
        f"Backend: bench's native echo server ({ECHO_THREADS} threads), one instance for the whole run. Proxies: native "
        f"tokio proxy ({PROXY_THREADS} threads, `copy_bidirectional`), HAProxy (`mode tcp`, `nbthread {PROXY_THREADS}`, "
        f"`maxconn {haproxy_maxconn()}`), "
        "Twisted's `portforward` (one thread; Twisted's defaults, Nagle left on as in bench/twisted_echo.py), twill "
        "(`guests/portforward/portforward.wasm`, default threading: one reactor thread per CPU) relaying and "
        "splicing, with an instance per proxied pair (the default) or two shared instances (`instance = \"shared\"`, "
        "`shared-instances = 2`, one per core). Loadgen: 1 thread. CPU is the proxy process's alone (utime + stime from /proc/PID/stat); the "
        "loadgen and the backend share the machine's cores.\n",
    ]
    for name, why in skipped:
        lines.append(f"- {name}: {why if why.startswith('failed') else 'skipped: ' + why}")
    if skipped:
        lines.append("")
    lines.append("| scenario | metric | " + " | ".join(LABEL[n] for n in names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    for scen, _, op in SCENARIOS:
        metrics = [(f"{op}s / s", "rate"), (f"proxy CPU µs / {op}", "cpu_us")]
        if any(cell(n, scen, "p99") is not None for n in names):
            metrics.append(("p99 µs", "p99"))
        for metric, key in metrics:
            lines.append(f"| {scen} | {metric} | " + " | ".join(fmt(cell(n, scen, key)) for n in names) + " |")
    lines.append("")

    pairs = [(n, "native") for n in names if n != "native" and "native" in names]
    pairs += [(x, y) for x, y in EXTRA_RATIOS if x in names and y in names]
    if pairs:
        lines.append("Ratios (throughput: higher is better; CPU per operation: lower is better):\n")
        lines.append("| scenario | metric | " + " | ".join(f"{LABEL[x]} / {LABEL[y]}" for x, y in pairs) + " |")
        lines.append("|---|---|" + "---:|" * len(pairs))
        for scen, _, op in SCENARIOS:
            for metric, key in [("throughput", "rate"), (f"CPU / {op}", "cpu_us")]:
                lines.append(f"| {scen} | {metric} | " + " | ".join(ratio(x, y, scen, key) for x, y in pairs) + " |")
        lines.append("")

    errs = {(n, s): sum(x["errors"] for x in v) for (n, s), v in results.items()}
    if any(errs.values()):
        lines.append(
            "Connection errors reported by the loadgen: "
            + ", ".join(f"{n} {s} {e}" for (n, s), e in sorted(errs.items()) if e)
            + ".\n"
        )
    lines.append("Every round (rate; proxy CPU µs per op; p99 µs):\n")
    for (name, scen), v in sorted(results.items()):
        vals = ", ".join(
            f"{x['rate']:,.0f}/s; {x['cpu_us']:.2f} µs" + (f"; p99 {x['p99']:.0f} µs" if x["p99"] is not None else "") for x in v
        )
        lines.append(f"- {name} {scen}: {vals}")
    lines.append("")
    lines.append("Order of each round: " + "; ".join(", ".join(o) for o in order_log) + ".\n")
    lines.append(
        f"Settings: `--rounds {a.rounds} --duration {a.duration:g}`. Total run time {elapsed:.0f} s. "
        f"Machine: {os.cpu_count()} CPUs, `{os.uname().release}`."
    )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--only", default=",".join(PROXIES), help="proxies to run, comma-separated: " + ",".join(PROXIES))
    ap.add_argument("--venv-python", default="/var/tmp/twill-bench-venv/bin/python")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "proxy.md"))
    a = ap.parse_args()
    wanted = a.only.split(",")
    unknown = [n for n in wanted if n not in PROXIES]
    if unknown:
        raise SystemExit(f"unknown proxies {unknown}; choose from {PROXIES}")
    names, skipped = [], []
    for n in PROXIES:
        if n not in wanted:
            continue
        why = None
        if n.startswith("twill") and not PORTFORWARD.exists():
            why = f"component missing ({PORTFORWARD.relative_to(ROOT)})"
        elif n.startswith("twill") and not TWILL.exists():
            why = f"binary missing ({TWILL})"
        elif n == "haproxy" and not shutil.which("haproxy"):
            why = "haproxy not installed"
        if why:
            print(f"{n}: skipped: {why}", file=sys.stderr, flush=True)
            skipped.append((n, why))
        else:
            names.append(n)
    if not names:
        raise SystemExit("no proxy to run")

    # SIGTERM (or SIGHUP) stops the run through the finally below too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    procs = []
    ports = []
    failed = {}
    results = {}
    order_log = []
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            echo_port = free_port()
            echo = subprocess.Popen(
                [str(RELEASE / "native-echo"), f"127.0.0.1:{echo_port}", str(ECHO_THREADS)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(echo)
            ports.append(echo_port)
            bench.wait_port(echo_port, echo)
            for rnd in range(a.rounds):
                k = rnd % len(names)
                order = names[k:] + names[:k]
                order_log.append(order)
                for name in order:
                    if name in failed:
                        continue
                    print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
                    try:
                        proc, port = start(name, tmp, echo_port, a.venv_python)
                        procs.append(proc)
                        ports.append(port)
                        try:
                            measure(name, proc, port, a.duration, results)
                        finally:
                            stop(proc)
                    except SystemExit as e:
                        # One proxy failing (not starting, or dying under
                        # load) drops it from the later rounds; the others go on.
                        why = str(e).strip()
                        print(f"{name}: failed in round {rnd + 1}: {why}", file=sys.stderr, flush=True)
                        failed[name] = f"failed in round {rnd + 1}: " + ("; ".join(why.splitlines()[:2])[:300] or "?")
                        continue
                    if not port_free(port):
                        print(f"warning: port {port} still held after {name} stopped", file=sys.stderr)
                    time.sleep(1.0)
                if echo.poll() is not None:
                    raise SystemExit(f"the echo backend exited with {echo.returncode}")
    finally:
        for p in procs:
            stop(p)
        held = [p for p in ports if not port_free(p)]
        if held:
            print(f"warning: ports still held at the end: {held}", file=sys.stderr)
    skipped += list(failed.items())
    text = report(a, names, skipped, results, time.time() - t0, order_log)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
