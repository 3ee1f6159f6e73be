#!/usr/bin/env python3
"""Twill's benchmark: twill (bundled guest-echo, release build; an instance per
connection, and shared instances) against a native tokio echo server and
Twisted's echo server, in alternation, for several rounds.

A fifth server, the floor (src/bin/floor-echo.rs), runs the same component
with nothing but one guest call per read: no limits, locks or bookkeeping,
one instance per thread. It shows what the engine's call path costs alone.

A second table runs twill (shared instance), the floor and the native server
on one thread each, Twisted's own model.

Each scenario reports the loadgen's throughput and the *server's* CPU time per
operation, read from /proc/PID/stat: the load generator shares the machine's
cores, so CPU per operation is the stable figure. Loopback only.

With --baseline BIN, a second twill binary (an earlier build) runs the
three twill configurations too, in the same rounds, and a third table gives
each configuration's ratio after/before and both against native: the
before/after figure of a change, measured in one sitting.

Usage: bench/run.sh [--rounds N] [--duration SECONDS] [--baseline BIN]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/twill-target"))
TICK = os.sysconf("SC_CLK_TCK")

SCENARIOS = [
    # name, loadgen args, what "op" means
    ("pingpong-64B-100c", ["--mode", "pingpong", "-c", "100", "-s", "64"], "round trip"),
    ("bulk-16KiB-10c", ["--mode", "bulk", "-c", "10", "-s", "16384"], "16 KiB block"),
    ("connrate-64B", ["--mode", "connrate", "-c", "50", "-s", "64"], "connection"),
]
IDLE_CONNS = 10_000
NAMES = ["twill", "shared", "floor", "native", "twisted", "shared-1t", "floor-1t", "native-1t", "python-shared", "js-shared"]
# The single-thread servers skip the idle scenario (memory does not depend
# on the thread count) to keep the run under 10 minutes.
NO_IDLE = {"shared-1t", "floor-1t", "native-1t", "shared-1t-before", "python-shared", "js-shared"}
TABLES = [
    (
        "Default threading (one reactor thread per CPU; Twisted is single-threaded)",
        [("twill", "twill"), ("shared", "twill shared"), ("floor", "floor"), ("native", "native tokio"), ("twisted", "Twisted")],
        [("twill", "native"), ("shared", "native"), ("floor", "native"), ("twill", "twisted"), ("shared", "twisted")],
    ),
    (
        "One thread each (`[host] threads = 1`, one shared instance; the floor and the native server on one thread)",
        [("shared-1t", "twill shared, 1 thread"), ("floor-1t", "floor, 1 thread"), ("native-1t", "native, 1 thread"), ("twisted", "Twisted")],
        [("shared-1t", "native-1t"), ("floor-1t", "native-1t"), ("shared-1t", "twisted")],
    ),
    (
        "Python and JavaScript guests, one shared instance each (`--only python-shared,js-shared,twisted`; the echo "
        "components of scripts/build-polyglot-guests.sh, `memory` 64 MiB and 256 MiB)",
        [("python-shared", "Python shared"), ("js-shared", "JavaScript shared"), ("twisted", "Twisted")],
        [("python-shared", "twisted"), ("js-shared", "twisted")],
    ),
]


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


BASELINE_OF = {"twill-before": "twill", "shared-before": "shared", "shared-1t-before": "shared-1t"}


def baseline_table():
    return (
        "Before/after (`--baseline`: the same configurations on the earlier build, alternated in every round)",
        [("twill-before", "twill before"), ("twill", "twill after"), ("shared-before", "shared before"), ("shared", "shared after"),
         ("shared-1t-before", "shared 1t before"), ("shared-1t", "shared 1t after")],
        [("twill", "twill-before"), ("shared", "shared-before"), ("shared-1t", "shared-1t-before"),
         ("twill-before", "native"), ("twill", "native"), ("shared-before", "native"), ("shared", "native"),
         ("shared-1t-before", "native-1t"), ("shared-1t", "native-1t")],
    )


def servers(venv_python, baseline=None):
    cfg = ROOT / "bench" / "twill-bench.toml"
    shared = ROOT / "bench" / "twill-bench-shared.toml"
    shared1 = ROOT / "bench" / "twill-bench-shared-1t.toml"
    echo = str(ROOT / "guest-echo" / "echo.wasm")
    srv = {
        "twill": ([str(TARGET / "release" / "twill"), "-q", "run", str(cfg)], 9100),
        "shared": ([str(TARGET / "release" / "twill"), "-q", "run", str(shared)], 9103),
        "floor": ([str(TARGET / "release" / "floor-echo"), "127.0.0.1:9104", "2", echo], 9104),
        "native": ([str(TARGET / "release" / "native-echo"), "127.0.0.1:9101", "2"], 9101),
        "twisted": ([venv_python, str(ROOT / "bench" / "twisted_echo.py"), "9102"], 9102),
        "shared-1t": ([str(TARGET / "release" / "twill"), "-q", "run", str(shared1)], 9105),
        "floor-1t": ([str(TARGET / "release" / "floor-echo"), "127.0.0.1:9106", "1", echo], 9106),
        "native-1t": ([str(TARGET / "release" / "native-echo"), "127.0.0.1:9107", "1"], 9107),
    }
    # The Python and JavaScript echo guests (scripts/build-polyglot-guests.sh),
    # one shared instance each, from configs written next to them.
    polyglot = TARGET / "polyglot"
    for lang, port, memory in (("python", 9108, "64MiB"), ("js", 9109, "256MiB")):
        wasm = polyglot / f"{lang}-echo.wasm"
        if wasm.exists():
            toml = polyglot / f"bench-{lang}-shared.toml"
            toml.write_text(
                f'[plugins.echo]\ncomponent = "{wasm}"\nmemory = "{memory}"\ninstance = "shared"\n\n'
                f'[[listen]]\nport = {port}\nplugin = "echo"\nmax-connections = 12000\nbacklog = 4096\n'
            )
            srv[f"{lang}-shared"] = ([str(TARGET / "release" / "twill"), "-q", "run", str(toml)], port)
    if baseline:
        # The same command lines with the earlier binary (ports as configured).
        for before, after in BASELINE_OF.items():
            cmd, port = srv[after]
            srv[before] = ([baseline, *cmd[1:]], port)
    return srv


def loadgen(args):
    out = subprocess.run([str(TARGET / "release" / "loadgen"), *args], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr}")
    return dict(kv.split("=", 1) for kv in out.stdout.split())


def run_server(name, cmd, port, duration, results):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        time.sleep(0.3)
        # Warm up (and, for twill, fill the instance pool's warm slots).
        loadgen(["--addr", f"127.0.0.1:{port}", "--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
        for scen, args, _ in SCENARIOS:
            c0 = cpu_secs(proc.pid)
            r = loadgen(["--addr", f"127.0.0.1:{port}", "-d", str(duration), *args])
            c1 = cpu_secs(proc.pid)
            ops = int(r["ops"])
            results.setdefault((name, scen), []).append(
                {
                    "rate": float(r["rate"]),
                    "cpu_us": (c1 - c0) * 1e6 / max(ops, 1),
                    "p99": float(r.get("p99_us", "nan")),
                    # Connections refused, reset or cut short: a rate
                    # measured over failures is not a throughput.
                    "failed": int(r.get("errors", 0)) + int(r.get("broken", 0)),
                }
            )
            time.sleep(0.5)
        if name in NO_IDLE:
            return
        r = loadgen(["--addr", f"127.0.0.1:{port}", "--mode", "idle", "-c", str(IDLE_CONNS), "-s", "64", "--server-pid", str(proc.pid)])
        results.setdefault((name, "idle-10k"), []).append({"kib": float(r["kib_per_conn"])})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    time.sleep(1.0)


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--venv-python", default="/var/tmp/twill-bench-venv/bin/python")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.md"))
    ap.add_argument("--only", default=",".join(NAMES))
    ap.add_argument("--baseline", help="an earlier twill binary to run the same twill configurations with")
    a = ap.parse_args()
    srv = servers(a.venv_python, a.baseline)
    names = [n for n in NAMES if n in a.only.split(",")]
    tables = list(TABLES)
    if a.baseline:
        # Each earlier configuration runs right before its later one.
        for before, after in BASELINE_OF.items():
            if after in names:
                names.insert(names.index(after), before)
        tables.append(baseline_table())
    results = {}
    t0 = time.time()
    for rnd in range(a.rounds):
        for name in names:
            cmd, port = srv[name]
            print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
            run_server(name, cmd, port, a.duration, results)
    elapsed = time.time() - t0

    lines = []
    lines.append(
        f"Medians of {a.rounds} rounds, {a.duration:.0f} s per scenario; servers run in alternation. "
        "A ratio is the median of the ratios within each round.\n"
    )

    def cell(name, scen, key):
        v = results.get((name, scen))
        return med([x[key] for x in v]) if v else None

    def fmt(v, unit=""):
        return "–" if v is None else (f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}")

    def failed_mark(name, scen):
        return " †" if any(x.get("failed") for x in results.get((name, scen), [])) else ""

    def ratio(a_, b_, scen, key):
        # The median of the per-round ratios: a round runs every server back
        # to back, so pairing within a round cancels the machine's drift.
        xs, ys = results.get((a_, scen)), results.get((b_, scen))
        if not xs or not ys:
            return "–"
        rs = [x[key] / y[key] for x, y in zip(xs, ys) if y[key]]
        return f"{med(rs):.2f}×" if rs else "–"

    names_of = {n: l for _, cols, _ in TABLES for n, l in cols}
    for title, cols, ratios in tables:
        lines.append(f"### {title}\n")
        label = {**names_of, **dict(cols)}
        head = [l for _, l in cols] + [f"{label[a_]} / {label[b_]}" for a_, b_ in ratios]
        lines.append("| scenario | metric | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * len(head))

        def row(scen, metric, key):
            vals = [fmt(cell(n, scen, key)) + failed_mark(n, scen) for n, _ in cols]
            rs = [ratio(a_, b_, scen, key) for a_, b_ in ratios]
            return f"| {scen} | {metric} | " + " | ".join(vals + rs) + " |"

        for scen, _, op in SCENARIOS:
            lines.append(row(scen, f"{op}s / s", "rate"))
            lines.append(row(scen, f"server CPU µs / {op}", "cpu_us"))
            if scen.startswith("pingpong"):
                lines.append(row(scen, "p99 round trip µs", "p99"))
        if (cols[0][0], "idle-10k") in results:
            lines.append(row("idle-10k", "server RSS KiB / connection", "kib"))
        lines.append("")
    if any(x.get("failed") for v in results.values() for x in v):
        lines.append("† In some round, connections failed (refused, reset or cut short): see below.\n")
    lines.append("Every round (rate; server CPU µs per op; failed connections, if any):\n")
    for (name, scen), v in sorted(results.items()):
        vals = ", ".join(
            f"{x['kib']:.1f} KiB"
            if "kib" in x
            else f"{x['rate']:,.0f}/s; {x['cpu_us']:.2f} µs" + (f"; {x['failed']:,} FAILED" if x.get("failed") else "")
            for x in v
        )
        lines.append(f"- {name} {scen}: {vals}")
    lines.append("")
    lines.append(f"Total run time {elapsed:.0f} s. Machine: {os.cpu_count()} CPUs, `{os.uname().release}`.")
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
