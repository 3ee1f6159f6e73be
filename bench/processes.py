#!/usr/bin/env python3
"""Several twill processes on one port (`[[listen]] reuse-port`) against one
process, and a rolling restart under load. Run by bench/processes.sh inside
a network namespace of its own, so `net.ipv4.tcp_migrate_req` can be set
per run without touching the machine.

Throughput (connect, one 64-byte echo, close; the loadgen's `connrate`
with 50 workers), in alternated rounds, for each layout:

- one-perconn:   one process, an instance per connection, default threads
- two-perconn:   two processes like it on one port
- one-shared:    one process, `shared-instances = 2` (its first instance's
                 thread accepts and hands connections to the other)
- two-shared-1t: two processes, one shared instance and `threads = 1`
                 each: a listening socket per instance thread, through the
                 kernel's SO_REUSEPORT hash instead of a hand-off
- proxy-v1/v2:   one-perconn with `proxy-protocol = "any"`, every
                 connection opening with a PROXY header (the loadgen's
                 `--proxy-header`, in a write of its own as HAProxy sends it)

Each figure: connections per second, server CPU per connection (all the
layout's processes, from /proc/PID/stat), and the spread (the first
process's share of the connections, from its /metrics).

Rolling restart: process A serves; the load starts; after 2 s process B
starts on the same port; after 4 s A gets SIGTERM (drain-timeout 2 s) and
must exit 0; the load runs 8 s in all. Reported: connections attempted,
failed (each failure loses its 64 bytes), and A's exit status, with
tcp_migrate_req 0 and 1.

Usage: bench/processes.sh [--rounds N] [--duration S] [--restarts N]
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/twill-target"))
TWILL = TARGET / "release" / "twill"
LOADGEN = TARGET / "release" / "loadgen"
TICK = os.sysconf("SC_CLK_TCK")
PORT = 9300
ECHO = ROOT / "guest-echo" / "echo.wasm"

PROXY = 'proxy-protocol = "any"\nproxy-from = ["127.0.0.1/32"]\n'
LAYOUTS = {
    # name: (processes, plugin settings, host settings, listener settings, loadgen args)
    "one-perconn": (1, "", "", "", []),
    "two-perconn": (2, "", "", "", []),
    "one-shared": (1, 'instance = "shared"\nshared-instances = 2\n', "", "", []),
    "two-shared-1t": (2, 'instance = "shared"\n', "threads = 1\n", "", []),
    "proxy-v1": (1, "", "", PROXY, ["--proxy-header", "v1"]),
    "proxy-v2": (1, "", "", PROXY, ["--proxy-header", "v2"]),
}
# What each layout's ratios are against.
BASE = {"two-perconn": "one-perconn", "two-shared-1t": "one-shared", "proxy-v1": "one-perconn", "proxy-v2": "one-perconn"}


def config(tmp, i, plugin, host, listen=""):
    path = Path(tmp) / f"p{i}.toml"
    path.write_text(
        f'[host]\nmetrics = "127.0.0.1:{PORT + 10 + i}"\ndrain-timeout = "2s"\nshutdown-timeout = "10s"\n{host}\n'
        f'[plugins.echo]\ncomponent = "{ECHO}"\n{plugin}\n'
        f'[[listen]]\nport = {PORT}\ninterface = "127.0.0.1"\nplugin = "echo"\nreuse-port = true\n'
        f"max-connections = 12000\nbacklog = 4096\n{listen}"
    )
    return path


def wait_http(port, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"twill exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"twill's metrics on {port} did not come up")


def start(tmp, i, plugin, host, listen=""):
    proc = subprocess.Popen([str(TWILL), "-q", "run", str(config(tmp, i, plugin, host, listen))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(PORT + 10 + i, proc)
    return proc


def accepted(i):
    with socket.create_connection(("127.0.0.1", PORT + 10 + i), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    for line in data.decode().splitlines():
        if line.startswith("twill_connections_accepted"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise SystemExit("no twill_connections_accepted")


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadgen(duration, wait=True, extra=()):
    cmd = [str(LOADGEN), "--addr", f"127.0.0.1:{PORT}", "--mode", "connrate", "-c", "50", "-s", "64", "-d", str(duration), *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return dict(kv.split("=", 1) for kv in out.stdout.split())


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def measure(tmp, layout, duration):
    n, plugin, host, listen, extra = LAYOUTS[layout]
    procs = [start(tmp, i, plugin, host, listen) for i in range(n)]
    try:
        loadgen(1, extra=extra)  # warm up
        a0 = [accepted(i) for i in range(n)]
        c0 = sum(cpu_secs(p.pid) for p in procs)
        r = loadgen(duration, extra=extra)
        c1 = sum(cpu_secs(p.pid) for p in procs)
        a1 = [accepted(i) for i in range(n)]
    finally:
        stop(procs)
    ops = int(r["ops"])
    got = [b - a for a, b in zip(a0, a1)]
    return {
        "rate": float(r["rate"]),
        "cpu_us": (c1 - c0) * 1e6 / max(ops, 1),
        "errors": int(r["errors"]),
        "share": got[0] / max(sum(got), 1),
    }


def rolling(tmp, migrate):
    Path("/proc/sys/net/ipv4/tcp_migrate_req").write_text(f"{migrate}\n")
    a = start(tmp, 0, "", "")
    load = loadgen(8, wait=False)
    time.sleep(2)
    b = start(tmp, 1, "", "")
    time.sleep(2)
    a.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    status = a.wait(timeout=30)
    drained = time.monotonic() - t0
    out, _ = load.communicate(timeout=60)
    stop([b])
    r = dict(kv.split("=", 1) for kv in out.split())
    ops, errors = int(r["ops"]), int(r["errors"])
    return {"attempted": ops + errors, "failed": errors, "lost_bytes": errors * 64, "exit": status, "drain_s": drained}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "processes.md"))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        order = list(LAYOUTS)
        for rnd in range(args.rounds):
            for layout in order if rnd % 2 == 0 else reversed(order):
                r = measure(tmp, layout, args.duration)
                results.setdefault(layout, []).append(r)
                print(f"round {rnd + 1} {layout}: {r}", flush=True)
                time.sleep(1)
        restarts = {}
        for k in range(args.restarts):
            for migrate in (0, 1) if k % 2 == 0 else (1, 0):
                r = rolling(tmp, migrate)
                restarts.setdefault(migrate, []).append(r)
                print(f"restart {k + 1} tcp_migrate_req={migrate}: {r}", flush=True)
                time.sleep(1)

    med = lambda xs: statistics.median(xs)
    lines = [
        "# Several processes on one port (bench/processes.sh)",
        "",
        f"{args.rounds} rounds, alternated, {args.duration:g} s of `loadgen --mode connrate -c 50 -s 64` each,",
        "release build, bundled guest-echo, loopback in a network namespace of its own; medians (all runs below).",
        "",
        "| layout | connections / s | server CPU µs / connection | first process's share | against its reference, per round (rate / CPU) | median ratio (rate / CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        rs = results[layout]
        rate, cpu = med([r["rate"] for r in rs]), med([r["cpu_us"] for r in rs])
        b = results[BASE.get(layout, layout)]
        # Ratios within each round (the layouts alternate), then their median.
        per = [(r["rate"] / x["rate"], r["cpu_us"] / x["cpu_us"]) for r, x in zip(rs, b)]
        shares = ", ".join(f"{r['share']:.2f}" for r in rs)
        rounds = ", ".join(f"{a:.2f}/{c:.2f}" for a, c in per)
        ref = BASE.get(layout, layout)
        lines.append(
            f"| {layout} | {rate:,.0f} | {cpu:.2f} | {shares} | {rounds} (vs {ref}) | "
            f"{med([a for a, _ in per]):.2f}× / {med([c for _, c in per]):.2f}× |"
        )
    lines += ["", "Rolling restart (A serves; B starts at 2 s; A gets SIGTERM at 4 s, drain-timeout 2 s; 8 s of connrate load):", "",
              "| tcp_migrate_req | attempted | failed | bytes lost | A's exit | A's drain (s) |", "|---|---|---|---|---|---|"]
    for migrate in (0, 1):
        for r in restarts.get(migrate, []):
            lines.append(f"| {migrate} | {r['attempted']:,} | {r['failed']} | {r['lost_bytes']} | {r['exit']} | {r['drain_s']:.2f} |")
    lines += ["", "All runs:", "", "```"]
    for layout, rs in results.items():
        for r in rs:
            lines.append(f"{layout}: {r}")
    lines.append("```")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
