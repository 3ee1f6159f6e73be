#!/usr/bin/env python3
"""What reactor time costs (issue 15's figures), with the same loadgen as
bench/run.py, servers alternated in every round:

1. 10,000 idle connections: server RSS per connection, and server CPU
   while they sit idle (10 s, as % of one core), for the plain echo, the
   echo behind `[[listen]] idle-timeout = "30s"` (a host timer per
   connection), and an echo guest that keeps a 30 s `Timeout` per
   connection (bench/timeout-echo: a delayed call per connection, reset on
   every read).
2. 64-byte ping-pong, 100 connections: server CPU per round trip for the
   same three.
3. Timer accuracy under that load: `call_later(100 ms)` (the test kit's
   `later 100 x`, on another listener of the same process) from request to
   reply, while loadgen drives the timeout echo; and without load.
4. On instances of their own (one per connection): what the factory hooks
   cost, `start-factory` before each connection and `stop-factory` after
   it. The echo built before `reactor-calls` existed (the fixture
   host/tests/configs/echo-before-reactor.wasm) against today's, which
   exports it: connect-echo-close and ping-pong, CPU per operation.
5. A reconnecting client (`[[connect]] reconnect = true`, the seed's echo
   client) against a server restarted 10 times: whether every restart is
   reconnected, and how long after each restart.

Every server is one shared instance (`instance = "shared"`, 1 instance),
default threading. Usage: bench/time.sh [--rounds N] [--duration S]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (cpu_secs, wait_port, loadgen)

ROOT = bench.ROOT
TARGET = bench.TARGET
TWILL = str(TARGET / "release" / "twill")
ECHO = ROOT / "guest-echo" / "echo.wasm"
TESTKIT = ROOT / "guests" / "testkit" / "testkit.wasm"
TIMEOUT_ECHO = TARGET / "guests" / "wasm32-wasip2" / "release" / "timeout_echo.wasm"

OLD_ECHO = ROOT / "host" / "tests" / "configs" / "echo-before-reactor.wasm"
# Instances of their own: the echo without the hooks, and with them.
OWN = {"own-old": OLD_ECHO, "own-hooks": ECHO}

SERVERS = {
    # name: (component, extra [[listen]] keys)
    "plain": (ECHO, ""),
    "idle-policy": (ECHO, 'idle-timeout = "30s"\n'),
    "guest-timeout": (TIMEOUT_ECHO, ""),
}


def config(tmp, name, component, listen_extra, port, kit_port=None):
    text = (
        f'[plugins.p]\ncomponent = "{component}"\ninstance = "shared"\nshared-instances = 1\nmax-timers = 20000\n\n'
        f"[[listen]]\nport = {port}\nplugin = \"p\"\nmax-connections = 12000\nbacklog = 4096\n{listen_extra}\n"
    )
    if kit_port:
        text += (
            f'[plugins.kit]\ncomponent = "{TESTKIT}"\ninstance = "shared"\nshared-instances = 1\n\n'
            f'[[listen]]\nport = {kit_port}\nplugin = "kit"\n'
        )
    path = Path(tmp) / f"{name}.toml"
    path.write_text(text)
    return path


def start(cfg, port):
    proc = subprocess.Popen([TWILL, "-q", "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(port, proc)
    time.sleep(0.3)
    return proc


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    time.sleep(1.0)


def load(tmp, name, duration, results):
    component, extra = SERVERS[name]
    port = 9300
    proc = start(config(tmp, name, component, extra, port), port)
    try:
        addr = f"127.0.0.1:{port}"
        bench.loadgen(["--addr", addr, "--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
        c0 = bench.cpu_secs(proc.pid)
        r = bench.loadgen(["--addr", addr, "--mode", "pingpong", "-c", "100", "-s", "64", "-d", str(duration)])
        c1 = bench.cpu_secs(proc.pid)
        results.setdefault((name, "pingpong cpu µs/rt"), []).append((c1 - c0) * 1e6 / max(int(r["ops"]), 1))
        results.setdefault((name, "pingpong rt/s"), []).append(float(r["rate"]))
        time.sleep(0.5)
        r = bench.loadgen(["--addr", addr, "--mode", "idle", "-c", "10000", "-s", "64", "--server-pid", str(proc.pid), "--hold", "10"])
        results.setdefault((name, "idle KiB/conn"), []).append(float(r["kib_per_conn"]))
        results.setdefault((name, "idle CPU %core"), []).append(float(r["hold_cpu_pct"]))
    finally:
        stop(proc)


def own(tmp, name, duration, results):
    port = 9320
    cfg = Path(tmp) / f"{name}.toml"
    cfg.write_text(
        f'[plugins.p]\ncomponent = "{OWN[name]}"\n\n[[listen]]\nport = {port}\nplugin = "p"\nmax-connections = 12000\nbacklog = 4096\n'
    )
    proc = start(cfg, port)
    try:
        addr = f"127.0.0.1:{port}"
        bench.loadgen(["--addr", addr, "--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
        for scen, args in [("connrate cpu µs/conn", ["--mode", "connrate", "-c", "50", "-s", "64"]),
                           ("pingpong cpu µs/rt", ["--mode", "pingpong", "-c", "100", "-s", "64"])]:
            c0 = bench.cpu_secs(proc.pid)
            r = bench.loadgen(["--addr", addr, "-d", str(duration), *args])
            c1 = bench.cpu_secs(proc.pid)
            results.setdefault((name, scen), []).append((c1 - c0) * 1e6 / max(int(r["ops"]), 1))
            time.sleep(0.5)
    finally:
        stop(proc)


def later_latencies(port, n):
    """`later 100 x` n times on one connection: seconds from send to reply."""
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(b"later 100 x\n")
        line = f.readline()
        assert line == b"x\n", line
        out.append(time.perf_counter() - t0)
    s.close()
    return out


def accuracy(tmp, duration, results):
    port, kit = 9310, 9311
    proc = start(config(tmp, "accuracy", TIMEOUT_ECHO, "", port, kit), port)
    try:
        bench.wait_port(kit, proc)
        results.setdefault(("timer", "idle"), []).extend(later_latencies(kit, 30))
        load_done = threading.Event()

        def drive():
            bench.loadgen(["--addr", f"127.0.0.1:{port}", "--mode", "pingpong", "-c", "100", "-s", "64", "-d", str(duration + 3)])
            load_done.set()

        t = threading.Thread(target=drive)
        t.start()
        time.sleep(1.0)
        lat = []
        while not load_done.is_set() and len(lat) < 1000:
            lat.extend(later_latencies(kit, 5))
        t.join()
        results.setdefault(("timer", "under load"), []).extend(lat)
    finally:
        stop(proc)


def reconnect(tmp, results, restarts=10, down=0.5):
    """The seed's client with reconnect against a server restarted
    `restarts` times, down `down` seconds each time."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cfg = Path(tmp) / "reconnect.toml"
    cfg.write_text(
        f'[plugins.c]\ncomponent = "{ECHO}"\n\n[[connect]]\nhost = "127.0.0.1"\nport = {port}\nplugin = "c"\n'
        'reconnect = true\ninitial-delay = "100ms"\nfactor = 2.0\njitter = 0\nmax-delay = "1s"\n'
    )
    proc = subprocess.Popen([TWILL, "-q", "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gaps = []
    try:
        for i in range(restarts + 1):
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", port))
            srv.listen(8)
            srv.settimeout(10)
            up = time.perf_counter()
            conn, _ = srv.accept()
            if i > 0:
                gaps.append(time.perf_counter() - up)
            conn.settimeout(5)
            data = conn.recv(64)
            conn.sendall(data)
            while conn.recv(64):
                pass
            conn.close()
            srv.close()
            time.sleep(down)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    results[("reconnect", "gaps")] = gaps


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "time.md"))
    a = ap.parse_args()
    results = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for name in SERVERS:
                print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
                load(tmp, name, a.duration, results)
            for name in OWN:
                print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
                own(tmp, name, a.duration, results)
        print("timer accuracy", file=sys.stderr, flush=True)
        accuracy(tmp, max(a.duration * 2, 8.0), results)
        print("reconnect", file=sys.stderr, flush=True)
        reconnect(tmp, results)
    med = statistics.median
    lines = [
        f"Medians of {a.rounds} rounds, {a.duration:.0f} s of ping-pong per server per round, servers alternated; "
        "one shared instance each, default threading. Ratios are medians of the per-round ratios.\n",
        "| metric | plain echo | `idle-timeout = \"30s\"` | guest `Timeout` (30 s, reset per read) | idle-timeout / plain | guest Timeout / plain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = list(SERVERS)
    for metric in ["pingpong rt/s", "pingpong cpu µs/rt", "idle KiB/conn", "idle CPU %core"]:
        vals = [med(results[(n, metric)]) for n in names]
        # Paired by round, as bench/run.py does: each round ran the three
        # servers back to back.
        base = results[(names[0], metric)]
        ratios = []
        for n in names[1:]:
            rs = [x / y for x, y in zip(results[(n, metric)], base) if y]
            ratios.append(f"{med(rs):.2f}×" if rs else "–")
        lines.append(f"| {metric} | " + " | ".join(f"{v:.2f}" for v in vals) + " | " + " | ".join(ratios) + " |")
    extra = [med([x - y for x, y in zip(results[(n, "idle KiB/conn")], results[(names[0], "idle KiB/conn")])]) for n in names[1:]]
    lines.append("")
    lines.append(
        "Idle memory over the plain echo, per connection (median of the per-round differences): "
        + ", ".join(f"{n} {d:+.2f} KiB" for n, d in zip(names[1:], extra))
        + ".\n"
    )
    lines.append("On instances of their own: the echo built before `reactor-calls` against today's, which exports it "
                 "(so every connection also gets `start-factory` and `stop-factory`), CPU per operation:\n")
    lines.append("| metric | echo without the hooks | echo with them | with / without |")
    lines.append("|---|---:|---:|---:|")
    for metric in ["connrate cpu µs/conn", "pingpong cpu µs/rt"]:
        old, new = results[("own-old", metric)], results[("own-hooks", metric)]
        rs = [x / y for x, y in zip(new, old) if y]
        lines.append(f"| {metric} | {med(old):.2f} | {med(new):.2f} | {med(rs):.2f}× |")
    lines.append("")
    idle, loaded = results[("timer", "idle")], results[("timer", "under load")]
    lines.append("`call_later(100 ms)`, request to reply (ms), on a second listener of the same process:\n")
    lines.append("| | samples | p50 | p99 | max |")
    lines.append("|---|---:|---:|---:|---:|")
    for label, xs in [("no load", idle), ("under 100-connection ping-pong on the guest-Timeout echo", loaded)]:
        lines.append(f"| {label} | {len(xs)} | {pct(xs, 50) * 1e3:.1f} | {pct(xs, 99) * 1e3:.1f} | {max(xs) * 1e3:.1f} |")
    lines.append("")
    gaps = results[("reconnect", "gaps")]
    lines.append(
        "Reconnecting client (initial-delay 100 ms, factor 2, jitter 0, max-delay 1 s) against a server restarted "
        f"{len(gaps)} times, down 0.5 s each: reconnected {len(gaps)}/{len(gaps)} times; from the restart to the "
        "connection (the retries after a loss wait 0.2 s then 0.4 s, so the second lands 0.1 s after the 0.5 s "
        "outage): " + ", ".join(f"{g * 1e3:.0f} ms" for g in gaps) + ".\n"
    )
    lines.append("Every round:\n")
    for (n, metric), xs in sorted(results.items()):
        if n in SERVERS or n in OWN:
            lines.append(f"- {n} {metric}: " + ", ".join(f"{x:.2f}" for x in xs))
    lines.append("")
    lines.append(f"Total run time {time.time() - t0:.0f} s. Machine: {os.cpu_count()} CPUs, `{os.uname().release}`.")
    text = "\n".join(lines)
    print(text)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
