#!/usr/bin/env python3
"""What an instance per connection costs for the Python and JavaScript echo
guests, next to the Rust echo (guest-echo), under the release `twill`.

For each guest it starts `twill run` on an ephemeral loopback port and
measures, with plain sockets:

- start-up: from exec to the listener's log line (the component comes from
  wasmtime's compile cache; a first-ever load compiles it, which is reported
  separately as "cold");
- fresh connections: N sequential connections, each connect, send 1 byte,
  read the echo, close. Reported: time to first echo (median, p90, p99) and
  the server's CPU time per connection (from /proc/PID/stat), which is
  dominated by instantiating the component;
- idle connections: open M connections, one echo each, keep them open, in
  two batches; host memory growth over the second batch, per connection:
  VmRSS (and its anonymous / shmem parts) and PSS from smaps_rollup. Each instance maps the
  component's memory snapshot copy-on-write; pages it only reads are one
  physical copy shared by all instances, which VmRSS counts once per
  instance and PSS counts once in all;
- one long connection: echo 64 KiB chunks until the instance fails (the
  host then aborts the connection) or --stream-cap MiB went through. This
  finds how much traffic one instance carries within its memory limit.

With --sweep, it also runs the long-connection test for each guest at each
of the given memory limits (three connections per limit, one server).

Usage (after `cargo build --release` and scripts/build-polyglot-guests.sh):

    python3 bench/polyglot.py [--fresh 2000] [--idle 1000] [--stream-cap 256]
        [--sweep 16MiB,32MiB,48MiB,64MiB,96MiB] [--out FILE]

Loopback only; every loop is bounded and the servers are stopped at the end.
"""
import argparse
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/twill-target"))
POLYGLOT = Path(os.environ.get("TWILL_POLYGLOT_OUT", TARGET / "polyglot"))
TICK = os.sysconf("SC_CLK_TCK")

GUESTS = [
    # name, component, memory limit
    ("Rust (guest-echo)", ROOT / "guest-echo" / "echo.wasm", "16MiB"),
    ("Python (componentize-py)", POLYGLOT / "python-echo.wasm", "64MiB"),
    ("JavaScript (ComponentizeJS)", POLYGLOT / "js-echo.wasm", "96MiB"),
]


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


def pss_kib(pid):
    """Proportional set size: a page mapped N times counts 1/N each time, so
    the snapshot pages every instance maps read-only count once in all."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Pss", "Pss_Anon", "Pss_Shmem"):
                out[k] = int(v.split()[0])
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Server:
    def __init__(self, wasm, memory, max_instances, instance="per-connection"):
        self.dir = tempfile.TemporaryDirectory(prefix="twill-polyglot-bench-")
        cfg = Path(self.dir.name) / "plugins.toml"
        cfg.write_text(
            f'[host]\nmax-instances = {max_instances}\n\n'
            f'[plugins.echo]\ncomponent = "{wasm}"\nmemory = "{memory}"\ninstance = "{instance}"\n\n'
            '[[listen]]\nport = 0\nplugin = "echo"\n'
        )
        self.log = open(Path(self.dir.name) / "stderr.log", "w+")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(TARGET / "release" / "twill"), "run", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.port = None
        while time.perf_counter() - t0 < 300:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"twill exited early: {self.log.read()}")
            self.log.seek(0)
            m = re.search(r"listening .*addr=\S*:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.01)
        if self.port is None:
            raise SystemExit("twill did not start within 300 s")
        self.startup = time.perf_counter() - t0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def echo_once(port, keep=False):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"x")
    if s.recv(1) != b"x":
        raise SystemExit("bad echo")
    dt = time.perf_counter() - t0
    if keep:
        return dt, s
    s.close()
    return dt, None


def stream_until_failure(port, cap_mib):
    """Echoes 64 KiB chunks on one connection; returns the MiB echoed before
    the server closed or reset it, or None if it carried cap_mib."""
    chunk = bytes(range(256)) * 256
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    done = 0
    try:
        while done < cap_mib * 16:
            s.sendall(chunk)
            got = 0
            while got < len(chunk):
                b = s.recv(len(chunk) - got)
                if not b:
                    return done / 16
                got += len(b)
            done += 1
    except (ConnectionResetError, BrokenPipeError):
        return done / 16
    finally:
        s.close()
    return None


def measure(name, wasm, memory, fresh, idle, stream_cap, instance):
    if not wasm.exists():
        raise SystemExit(f"{wasm} is missing: run scripts/build-polyglot-guests.sh")
    # The first start may compile the component into the cache; the second
    # is what every later start costs.
    # max-instances sizes the pooling allocator at 8 core instances per
    # component instance; a componentize-py component has 14, so give room.
    first = Server(wasm, memory, 2 * (idle + 64), instance)
    first.stop()
    srv = Server(wasm, memory, 2 * (idle + 64), instance)
    try:
        pid = srv.proc.pid
        for _ in range(20):  # warm up the pool's slots and the code pages
            echo_once(srv.port)
        time.sleep(0.3)
        c0 = cpu_secs(pid)
        lat = [echo_once(srv.port)[0] for _ in range(fresh)]
        cpu = (cpu_secs(pid) - c0) / fresh
        # Idle connections in two batches; the cost per connection is the
        # growth over the second batch. (Measuring from before the first
        # batch picks up one-time effects: the allocator returning start-up
        # memory to the OS can shrink the process by more than a thousand
        # cheap connections grow it.)
        conns = []

        def open_idle(n):
            try:
                for _ in range(n):
                    conns.append(echo_once(srv.port, keep=True)[1])
            except OSError as e:
                srv.log.seek(0)
                tail = "".join(srv.log.readlines()[-15:])
                raise SystemExit(f"{name}: idle connection {len(conns)} failed: {e}\nserver log:\n{tail}")
            time.sleep(1.0)
            return {**status_kib(pid), **pss_kib(pid)}

        half = idle // 2
        before = open_idle(half)
        after = open_idle(idle - half)
        for s in conns:
            s.close()
        per = {k: (after[k] - before[k]) / (idle - half) for k in after}
        stream = stream_until_failure(srv.port, stream_cap)
        return {
            "name": name,
            "size": wasm.stat().st_size,
            "memory": memory,
            "cold": first.startup,
            "startup": srv.startup,
            "p50": statistics.median(lat) * 1e3,
            "p90": pct(lat, 90) * 1e3,
            "p99": pct(lat, 99) * 1e3,
            "cpu": cpu * 1e6,
            "rss_before": before["VmRSS"],
            "per": per,
            "stream": stream,
        }
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", type=int, default=2000, help="sequential fresh connections")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections held open")
    ap.add_argument("--stream-cap", type=int, default=256, help="MiB one long connection may echo")
    ap.add_argument("--sweep", help="comma-separated memory limits for the long-connection test")
    ap.add_argument("--out", type=Path, help="write the markdown tables here")
    ap.add_argument(
        "--instance",
        default="per-connection",
        choices=["per-connection", "shared"],
        help="the plugins' `instance` setting",
    )
    args = ap.parse_args()
    rows = [measure(n, w, m, args.fresh, args.idle, args.stream_cap, args.instance) for n, w, m in GUESTS]
    rust = rows[0]
    lines = [
        f"| guest | component | `memory` | start-up (cached; first) | first echo of a fresh connection p50 / p90 / p99 | server CPU per fresh connection | host PSS per idle connection | host VmRSS per idle connection (anon + shmem) | one connection echoes, then fails |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["per"]
        lines.append(
            f"| {r['name']} | {r['size'] / 1048576:.1f} MiB | {r['memory']} "
            f"| {r['startup']:.2f} s; {r['cold']:.2f} s "
            f"| {r['p50']:.2f} / {r['p90']:.2f} / {r['p99']:.2f} ms "
            f"| {r['cpu']:.0f} µs ({r['cpu'] / rust['cpu']:.1f}×) "
            f"| {p['Pss']:.0f} KiB ({p['Pss'] / max(rust['per']['Pss'], 1):.1f}×) "
            f"| {p['VmRSS']:.0f} KiB: {p['RssAnon']:.0f} + {p['RssShmem']:.0f} "
            f"| {'> %d MiB (no failure)' % args.stream_cap if r['stream'] is None else '%.1f MiB' % r['stream']} |"
        )
    if args.sweep:
        mems = args.sweep.split(",")
        lines += [
            "",
            f"One connection echoing 64 KiB chunks: MiB carried before the instance faulted, three connections per limit (cap {args.stream_cap} MiB):",
            "",
            "| guest | " + " | ".join(f"`memory = \"{m}\"`" for m in mems) + " |",
            "|---|" + "---:|" * len(mems),
        ]
        for name, wasm, _ in GUESTS:
            cells = []
            for m in mems:
                srv = Server(wasm, m, 64, args.instance)
                try:
                    got = [stream_until_failure(srv.port, args.stream_cap) for _ in range(3)]
                finally:
                    srv.stop()
                cells.append(", ".join(f"> {args.stream_cap}" if g is None else f"{g:.1f}" for g in got))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    print(
        f"\ninstance = {args.instance!r}; {args.fresh} fresh connections, {args.idle} idle connections per guest; "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"
    )
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
