#!/usr/bin/env python3
"""A crash-looping shared guest (bench/crashloop.sh builds and runs this),
for the figure "a guest that panics on every connection on a shared
instance, 1,000 connection attempts per second for 10 s: instance creations
bounded by the backoff, host CPU stays low, other plugins unaffected".

One `twill run` serves two plugins on two loopback listeners:

- `crash`: guests/testkit/testkit.wasm, `instance = "shared"` (one shared
  instance). The test kit panics (traps) on the line `panic\\n`; the shared
  instance faults, and the host's crash-loop backoff puts off each quick
  re-creation (100 ms after the second quick fault, doubling up to 30 s).
- `echo`: guest-echo/echo.wasm, an instance per connection (the default).

and `[host] metrics = "127.0.0.1:PORT"` (unless `--no-metrics`).

The run, after a 1 s warm-up of the echo probe:

1. baseline, D s (`--duration`, 10): the echo probe alone;
2. storm, D s: the storm and the echo probe together.

The storm (a worker process of this script, asyncio): connection attempts
to `crash` paced at `--rate` per second (1,000); each connects, sends
`panic\\n` and reads until EOF or reset (at most 2 s). It counts attempts,
connects that succeeded, connects refused, resets, EOFs and timeouts, and
the rate it achieved.

The echo probe (another worker process, asyncio): `--probe-conns` (10)
connections to `echo`, each sending one 64 B message every
`--probe-interval` seconds (10 ms: 1,000 round trips / s offered) and timing
each round trip; p50, p99, max and the throughput achieved.

Measured on the host: twill's CPU (utime + stime from /proc/PID/stat) over
each window as % of one core; `a shared instance faulted` lines on its
stderr; and, from /metrics scraped right before and right after the storm
(parsed with prometheus_client's `text_string_to_metric_families`), the
storm's deltas of `twill_instances_created_total{plugin="crash"}`,
`twill_connections_refused_total{plugin="crash",reason="backoff"}`,
`twill_guest_traps_total{plugin="crash",kind="panic"}`,
`twill_shared_instance_restarts_delayed_total`, and the echo plugin's
traps and refusals (which should stay 0). When /metrics cannot be read (a
binary without the key, `--no-metrics`, prometheus_client missing) that
part says "metrics unavailable" and the rest is reported.

Writes bench/results/crashloop.md (`--out`, overwritten) and prints it.
Loopback only; about 2 D + 5 s.

Usage: bench/crashloop.sh [--duration S] [--rate N] [--twill PATH] [--no-metrics]
"""
import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/twill-target"))
TWILL = TARGET / "release" / "twill"
ECHO_WASM = ROOT / "guest-echo" / "echo.wasm"
TESTKIT_WASM = ROOT / "guests" / "testkit" / "testkit.wasm"
TICK = os.sysconf("SC_CLK_TCK")
FAULT_LINE = "a shared instance faulted:"  # the ERROR line, once per faulted instance
# The backoff's WARN line: "... faulted again soon after it was made: the next one is made in 100ms; ..."
BACKOFF_LINE = re.compile(r"faulted again soon after it was made: the next one is made in ([^;\s]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ATTEMPT_TIMEOUT = 2.0  # seconds one storm connection may take, end to end
STARTUP_TIMEOUT = 30

# The host's crash-loop backoff (host/src/shared/backoff.rs).
FIRST_DELAY, MAX_DELAY = 0.1, 30.0


# --- the workers (run as `crashloop.py --worker storm|probe ...`) ---------


async def storm(addr, rate, start_at, duration):
    """Paced connection attempts, each `panic\\n` then read to EOF/reset."""
    loop = asyncio.get_running_loop()
    n = dict(attempts=0, connected=0, refused=0, connect_timeout=0, connect_error=0,
             eof=0, reset=0, read_timeout=0, got_bytes=0, other_error=0)
    linger0 = struct.pack("ii", 1, 0)

    async def attempt():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        # Close with a reset: no TIME_WAIT left on the client's ports.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        deadline = loop.time() + ATTEMPT_TIMEOUT
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(s, addr), ATTEMPT_TIMEOUT)
            except ConnectionRefusedError:
                n["refused"] += 1
                return
            except asyncio.TimeoutError:
                n["connect_timeout"] += 1
                return
            except OSError:
                n["connect_error"] += 1
                return
            n["connected"] += 1
            try:
                await loop.sock_sendall(s, b"panic\n")
                while True:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise asyncio.TimeoutError
                    data = await asyncio.wait_for(loop.sock_recv(s, 4096), left)
                    if not data:
                        n["eof"] += 1
                        return
                    n["got_bytes"] += len(data)
            except (ConnectionResetError, BrokenPipeError):
                n["reset"] += 1
            except asyncio.TimeoutError:
                n["read_timeout"] += 1
            except OSError:
                n["other_error"] += 1
        finally:
            s.close()

    tasks = set()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    end = start_at + duration
    i = 0
    while True:
        due = start_at + i / rate
        if due >= end:
            break
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        t = asyncio.ensure_future(attempt())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        n["attempts"] += 1
        i += 1
    paced_secs = time.monotonic() - start_at
    if tasks:
        await asyncio.wait(tasks, timeout=ATTEMPT_TIMEOUT + 1)
    n["unfinished"] = len(tasks)
    n["secs"] = paced_secs
    n["rate"] = n["attempts"] / paced_secs
    return n


async def probe(addr, conns, interval, size, start_at, duration):
    """Paced 64 B round trips on `conns` connections; every latency."""
    msg = b"e" * size
    lat = []
    errors = 0
    streams = []
    for _ in range(conns):
        r, w = await asyncio.wait_for(asyncio.open_connection(*addr), 5)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        streams.append((r, w))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    end = start_at + duration

    async def one(j, r, w):
        nonlocal errors
        k = 0
        while True:
            # Connection j's k-th message, phases spread over the interval.
            due = start_at + (k + j / conns) * interval
            if due >= end:
                return
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            t = time.perf_counter()
            try:
                w.write(msg)
                await asyncio.wait_for(r.readexactly(size), 5)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                errors += 1
                return
            lat.append(time.perf_counter() - t)
            k += 1

    await asyncio.gather(*(one(j, r, w) for j, (r, w) in enumerate(streams)))
    for _, w in streams:
        w.close()
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6 if lat else None

    return dict(ops=len(lat), rate=len(lat) / duration, p50_us=q(0.5), p99_us=q(0.99),
                max_us=lat[-1] * 1e6 if lat else None, errors=errors, offered=conns / interval)


def worker(a):
    addr = ("127.0.0.1", a.port)
    if a.worker == "storm":
        out = asyncio.run(storm(addr, a.rate, a.start_at, a.duration))
    else:
        out = asyncio.run(probe(addr, a.probe_conns, a.probe_interval, 64, a.start_at, a.duration))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client_cpu_secs"] = ru.ru_utime + ru.ru_stime
    print(json.dumps(out))


# --- the driver -------------------------------------------------------------


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, log):
    t0 = time.monotonic()
    while time.monotonic() - t0 < STARTUP_TIMEOUT:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip()[-1500:]
            why = f"twill exited with {proc.returncode} at start"
            if proc.returncode == 2 and "metrics" in tail:
                why += " (this twill does not know `[host] metrics`: run with --no-metrics)"
            raise SystemExit(f"{why}\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"twill did not listen on {port} in {STARTUP_TIMEOUT} s")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def config(tmp, crash_port, echo_port, metrics_port):
    host = f'[host]\nmetrics = "127.0.0.1:{metrics_port}"\n\n' if metrics_port else ""
    path = Path(tmp) / "crashloop.toml"
    path.write_text(
        f"{host}"
        "[plugins.crash]\n"
        f'component = "{TESTKIT_WASM}"\n'
        'instance = "shared"\n\n'
        "[plugins.echo]\n"
        f'component = "{ECHO_WASM}"\n\n'
        "[[listen]]\n"
        f"port = {crash_port}\n"
        'plugin = "crash"\n'
        "backlog = 4096\n\n"
        "[[listen]]\n"
        f"port = {echo_port}\n"
        'plugin = "echo"\n'
    )
    return path


class Metrics:
    """Scrapes /metrics; `None` and a reason when it cannot."""

    def __init__(self, port, disabled):
        self.url = f"http://127.0.0.1:{port}/metrics" if port else None
        self.why = disabled
        if not self.why:
            try:
                from prometheus_client.parser import text_string_to_metric_families  # noqa: F401
            except ImportError:
                self.why = f"prometheus_client is not installed for {sys.executable}"

    def scrape(self):
        """{(sample name, frozenset(labels)): value}, or None (and self.why)."""
        if self.why:
            return None
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                text = r.read().decode()
        except OSError as e:
            self.why = f"GET {self.url} failed: {e}"
            return None
        try:
            out = {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    out[(s.name, frozenset(s.labels.items()))] = s.value
            return out
        except Exception as e:  # noqa: BLE001  (a parse error of any kind)
            self.why = f"could not parse {self.url}: {e}"
            return None


def total(snap, name, **labels):
    """The sum of the samples named `name` whose labels include `labels`;
    None when there is no such sample."""
    if snap is None:
        return None
    want = set(labels.items())
    vals = [v for (n, ls), v in snap.items() if n == name and want <= ls]
    return sum(vals) if vals else None


def delta(before, after, name, **labels):
    a, b = total(after, name, **labels), total(before, name, **labels)
    return None if a is None or b is None else a - b


def expected_creations(duration):
    """Instances the backoff lets a storm make in `duration` seconds when
    every instance faults at once (a connection arrives every millisecond):
    the first fault restarts at once, the second waits FIRST_DELAY, each
    further one twice as long, up to MAX_DELAY. Returns (re-creations after
    the first fault, their start times)."""
    times, t, delay = [0.0], 0.0, FIRST_DELAY
    while True:
        t += delay
        if t >= duration:
            return len(times), times
        times.append(t)
        delay = min(delay * 2, MAX_DELAY)


def spawn_worker(kind, port, start_at, a):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--port", str(port),
           "--start-at", repr(start_at), "--duration", str(a.duration), "--rate", str(a.rate),
           "--probe-conns", str(a.probe_conns), "--probe-interval", str(a.probe_interval)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(proc, what, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise SystemExit(f"the {what} worker did not finish in {timeout:.0f} s\n{err[-1500:]}")
    if proc.returncode != 0:
        raise SystemExit(f"the {what} worker failed ({proc.returncode}):\n{err[-1500:]}")
    return json.loads(out.strip().splitlines()[-1])


def window(a, twill, echo_port, crash_port, storm_on):
    """One window of `a.duration` s: the probe, and the storm if storm_on.
    Returns (probe, storm or None, twill CPU % of one core)."""
    start_at = time.monotonic() + 0.7  # the workers' start-up is outside the window
    p = spawn_worker("probe", echo_port, start_at, a)
    s = spawn_worker("storm", crash_port, start_at, a) if storm_on else None
    time.sleep(max(0.0, start_at - time.monotonic()))
    c0, t0 = cpu_secs(twill.pid), time.monotonic()
    time.sleep(max(0.0, start_at + a.duration - time.monotonic()))
    c1, t1 = cpu_secs(twill.pid), time.monotonic()
    limit = a.duration + ATTEMPT_TIMEOUT + 15
    probe_r = collect(p, "probe", limit)
    storm_r = collect(s, "storm", limit) if s else None
    return probe_r, storm_r, (c1 - c0) * 100 / (t1 - t0)


def fmt(v, unit="", digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def report(a, base, storm_w, st, cpu_base, cpu_storm, faults, delays, lines_total, m0, m1, metrics_why,
           twill_alive, elapsed, warmup):
    n_exp, times = expected_creations(a.duration)
    created = delta(m0, m1, "twill_instances_created_total", plugin="crash")
    refused_backoff = delta(m0, m1, "twill_connections_refused_total", plugin="crash", reason="backoff")
    traps = delta(m0, m1, "twill_guest_traps_total", plugin="crash", kind="panic")
    delayed = delta(m0, m1, "twill_shared_instance_restarts_delayed_total", plugin="crash")
    accepted = delta(m0, m1, "twill_connections_accepted_total", plugin="crash")
    faulted_conns = delta(m0, m1, "twill_connections_faulted_total", plugin="crash")
    echo_traps = delta(m0, m1, "twill_guest_traps_total", plugin="echo")
    echo_refused = delta(m0, m1, "twill_connections_refused_total", plugin="echo")
    live_after = total(m1, "twill_instances_live", plugin="crash")
    live_before = total(m0, "twill_instances_live", plugin="crash")
    ok_metrics = m0 is not None and m1 is not None

    def ratio(x, y):
        return f"{x / y:.2f}×" if x is not None and y else "–"

    L = ["# A crash-looping shared guest: backoff, host CPU, the other plugin\n"]
    L.append(f"Figure: a guest that panics on every connection on a shared instance, {a.rate:,.0f} connection attempts "
             f"per second for {a.duration:g} s: instance creations bounded by the backoff, host CPU stays low, other "
             "plugins unaffected.\n")
    # The first instance: made at start-up (alive before the storm) or by
    # the storm's first connection, which adds one creation.
    if live_before is not None:
        n_exp += 0 if live_before else 1
        first = ("the first instance was alive before the storm" if live_before
                 else "plus the first instance, made by the storm's first connection")
    else:
        first = "one more if the first instance is made during the storm"
    exp_text = (f"expected ≈ {n_exp} (backoff {FIRST_DELAY * 1000:.0f} ms after the second quick fault, doubling to "
                f"{MAX_DELAY:g} s: re-creations at t ≈ " + ", ".join(f"{t:g}" for t in times)
                + f" s into a {a.duration:g} s storm, if every instance faults at once; {first})")
    if ok_metrics:
        L.append(f"- **Instances created** during the storm (`twill_instances_created_total{{plugin=\"crash\"}}`, "
                 f"delta): **{fmt(created)}**; {exp_text}.")
    else:
        L.append(f"- **Instances created**: metrics unavailable ({metrics_why}); {exp_text}.")
    L.append(f"- Cross-check: `{FAULT_LINE.rstrip(':')}` lines (ERROR, one per instance that faulted) on twill's "
             f"stderr during the storm: **{faults}**"
             + (f" (instances created + those alive before the storm = {created + live_before:.0f})"
                if created is not None and live_before is not None else "")
             + f"; backoff delays it logged: {', '.join(delays) or 'none'}.")
    L.append(f"- **Host CPU** over the storm: **{cpu_storm:.1f}% of one core** (baseline, the echo probe alone: "
             f"{cpu_base:.1f}%).")
    L.append(f"- **Echo plugin**: p99 {fmt(st['probe'].get('p99_us'), ' µs')} during the storm against "
             f"{fmt(base.get('p99_us'), ' µs')} without ({ratio(st['probe'].get('p99_us'), base.get('p99_us'))}); "
             f"{fmt(st['probe']['rate'])} against {fmt(base['rate'])} round trips / s; errors "
             f"{st['probe']['errors']} and {base['errors']}.")
    L.append(f"- Storm achieved: {storm_w['attempts']:,} attempts in {storm_w['secs']:.2f} s = "
             f"**{storm_w['rate']:,.0f} / s** (target {a.rate:,.0f} / s).")
    if not twill_alive:
        L.append("- **twill exited during the run.**")
    L.append("")

    L.append("| | baseline (probe alone) | storm + probe |")
    L.append("|---|---:|---:|")
    L.append(f"| echo round trips / s (offered {base['offered']:,.0f}) | {fmt(base['rate'])} | {fmt(st['probe']['rate'])} |")
    for k, lab in [("p50_us", "echo p50 µs"), ("p99_us", "echo p99 µs"), ("max_us", "echo max µs")]:
        L.append(f"| {lab} | {fmt(base.get(k))} | {fmt(st['probe'].get(k))} |")
    L.append(f"| echo errors | {base['errors']} | {st['probe']['errors']} |")
    L.append(f"| twill CPU, % of one core | {cpu_base:.1f} | {cpu_storm:.1f} |")
    L.append(f"| probe client CPU s | {base['client_cpu_secs']:.2f} | {st['probe']['client_cpu_secs']:.2f} |")
    L.append("")

    L.append("Storm (client side):\n")
    L.append("| attempts | achieved / s | connected | refused at connect | reset | EOF | read timeout | connect timeout / error | bytes read | storm client CPU s |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    L.append(f"| {storm_w['attempts']:,} | {storm_w['rate']:,.0f} | {storm_w['connected']:,} | {storm_w['refused']:,} | "
             f"{storm_w['reset']:,} | {storm_w['eof']:,} | {storm_w['read_timeout']:,} | "
             f"{storm_w['connect_timeout'] + storm_w['connect_error']:,} | {storm_w['got_bytes']:,} | "
             f"{storm_w['client_cpu_secs']:.2f} |")
    L.append("")

    L.append("Host side, deltas over the storm (from /metrics before and after it):\n")
    if ok_metrics:
        L.append("| metric | value |")
        L.append("|---|---:|")
        for lab, v in [
            ('`twill_instances_created_total{plugin="crash"}`', created),
            ('`twill_shared_instance_restarts_delayed_total{plugin="crash"}`', delayed),
            ('`twill_connections_accepted_total{plugin="crash"}`', accepted),
            ('`twill_connections_refused_total{plugin="crash",reason="backoff"}`', refused_backoff),
            ('`twill_connections_faulted_total{plugin="crash"}`', faulted_conns),
            ('`twill_guest_traps_total{plugin="crash",kind="panic"}`', traps),
            ('`twill_guest_traps_total{plugin="echo"}` (all kinds)', echo_traps),
            ('`twill_connections_refused_total{plugin="echo"}` (all reasons)', echo_refused),
            ('`twill_instances_live{plugin="crash"}` before the storm (a gauge)', live_before),
            ('`twill_instances_live{plugin="crash"}` after the storm (a gauge)', live_after),
        ]:
            L.append(f"| {lab} | {fmt(v)} |")
    else:
        L.append(f"metrics unavailable: {metrics_why}.")
    L.append("")
    L.append(f"twill's stderr: {lines_total} line(s) during the storm (the guest's own panic messages included), "
             f"{faults} of them `{FAULT_LINE.rstrip(':')}`, {len(delays)} backoff warnings.\n")

    L.append("Settings:\n")
    L.append(f"- twill: `{a.twill}` (release), `twill -q run`, default threading. `[plugins.crash]`: "
             "guests/testkit/testkit.wasm, `instance = \"shared\"` (one shared instance), on its own listener "
             "(`backlog = 4096`); `[plugins.echo]`: guest-echo/echo.wasm, an instance per connection, on another; "
             + ("`[host] metrics = \"127.0.0.1:PORT\"`." if not a.no_metrics else "no `metrics` key (`--no-metrics`)."))
    L.append(f"- Storm: an asyncio worker process, attempts paced at {a.rate:,.0f} / s for {a.duration:g} s; each "
             f"connects, sends `panic\\n`, reads until EOF or reset (at most {ATTEMPT_TIMEOUT:g} s), closes with "
             "SO_LINGER 0.")
    L.append(f"- Echo probe: an asyncio worker process, {a.probe_conns} connections, each one 64 B round trip every "
             f"{a.probe_interval * 1000:g} ms (phases spread), latency timed per round trip (from its write to the "
             f"whole echo); baseline window first, then the storm window, {a.duration:g} s each, after a "
             f"{warmup:g} s warm-up.")
    L.append("- Host CPU: utime + stime of the twill process (/proc/PID/stat) over each window. The workers share "
             "the machine's cores.")
    L.append("")
    cmd = f"bench/crashloop.sh --duration {a.duration:g} --rate {a.rate:g}"
    if a.no_metrics:
        cmd += " --no-metrics"
    L.append(f"Command: `{cmd}`. Total run time {elapsed:.0f} s. Machine: {os.cpu_count()} CPUs, `{os.uname().release}`.")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of storm (and of baseline)")
    ap.add_argument("--rate", type=float, default=1000.0, help="storm connection attempts per second")
    ap.add_argument("--probe-conns", type=int, default=10)
    ap.add_argument("--probe-interval", type=float, default=0.01, help="seconds between one connection's round trips")
    ap.add_argument("--twill", default=str(TWILL), help="the twill binary (default: $CARGO_TARGET_DIR/release/twill)")
    ap.add_argument("--no-metrics", action="store_true", help="development: omit the `metrics` key")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "crashloop.md"))
    ap.add_argument("--twill-log", help="also keep twill's stderr in this file")
    # Internal: the worker processes.
    ap.add_argument("--worker", choices=["storm", "probe"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    for f in (ECHO_WASM, TESTKIT_WASM):
        if not f.exists():
            raise SystemExit(f"component missing: {f}")
    if not os.access(a.twill, os.X_OK):
        raise SystemExit(f"no twill binary at {a.twill}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    t_start = time.time()
    warmup = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        crash_port, echo_port, metrics_port = sorted(ports)
        if a.no_metrics:
            metrics_port = None
        cfg = config(tmp, crash_port, echo_port, metrics_port)
        log = Path(tmp) / "twill.log"
        with open(log, "w") as err:
            twill = subprocess.Popen([a.twill, "-q", "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(crash_port, twill, log)
            wait_port(echo_port, twill, log)
            metrics = Metrics(metrics_port, "`--no-metrics`: no `metrics` key" if a.no_metrics else None)
            if not metrics.why:
                t0 = time.monotonic()
                while metrics.scrape() is None and time.monotonic() - t0 < 10 and twill.poll() is None:
                    metrics.why = None
                    time.sleep(0.2)
            print(f"twill pid {twill.pid}: crash on {crash_port}, echo on {echo_port}, metrics "
                  + (f"on {metrics_port}" if not metrics.why else f"unavailable ({metrics.why})"),
                  file=sys.stderr, flush=True)

            # Warm-up: the echo probe for a second (not recorded).
            wa = argparse.Namespace(**{**vars(a), "duration": warmup})
            window(wa, twill, echo_port, crash_port, storm_on=False)

            print(f"baseline: {a.duration:g} s of echo probe", file=sys.stderr, flush=True)
            base, _, cpu_base = window(a, twill, echo_port, crash_port, storm_on=False)

            m0 = metrics.scrape()
            mark = len(log.read_text(errors="replace").splitlines())
            print(f"storm: {a.rate:g} / s for {a.duration:g} s, with the echo probe", file=sys.stderr, flush=True)
            probe_s, storm_w, cpu_storm = window(a, twill, echo_port, crash_port, storm_on=True)
            time.sleep(0.3)
            m1 = metrics.scrape()
            new = [ANSI.sub("", x) for x in log.read_text(errors="replace").splitlines()[mark:]]
            faults = sum(FAULT_LINE in line for line in new)
            delays = [m.group(1) for line in new if (m := BACKOFF_LINE.search(line))]
            twill_alive = twill.poll() is None
        finally:
            stop(twill)
            if a.twill_log:
                Path(a.twill_log).write_text(log.read_text(errors="replace"))
    text = report(a, base, storm_w, {"probe": probe_s}, cpu_base, cpu_storm, faults, delays, len(new), m0, m1,
                  metrics.why, twill_alive, time.time() - t_start, warmup)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
