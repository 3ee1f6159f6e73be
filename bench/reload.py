#!/usr/bin/env python3
"""Live reload under load: `twill run` serving guests/tagecho (an echo
server that greets every connection with `tag=<TAG>\\n`) is reloaded with
SIGHUP, alternating two variants (`env = { TAG = "A" }` and `"B"`), while
bench's reload-load client (bench/src/bin/reload-load.rs) runs 100
ping-pong connections and 50 connect-echo-close workers against it.

The figure it checks: 20 reloads with 0 failed connections, 0 bytes lost
or corrupted, every connection started after a reload completed greeted by
the new variant (0 stale tags), and the ping-pong p99 within 250 ms of the
reloads next to the p99 of the whole run.

Per scenario (`--scenarios`: `shared`, an `instance = "shared"` plugin with
two shared instances; `per-connection`, an instance per connection):

1. plugins.toml is written in a temp dir: one plugin, `echo`, with
   tagecho's component and `env = { TAG = "A" }`, on a free loopback port
   (and, with `--metrics`, `[host] metrics` on another);
2. `twill run` starts; once it logs `listening`, the client starts with
   `--duration`;
3. after `--warmup` seconds, every `--interval` seconds until `--reloads`
   are done (or the load is about to end), the config is rewritten
   atomically (write, then rename) with the other tag (and, unless
   `--no-file-swap`, the component path switched between tagecho.wasm
   and tagecho-b.wasm, a byte-identical copy in the temp dir, so the
   component file changes too), twill gets SIGHUP, and the driver waits
   for a stderr line with `reloaded` (ok) or `reload failed` (failed), at
   most `--reload-timeout` seconds (timeout). A `SIGHUP ... ignored`
   warning (a host without reloading) ends the wait at once (ignored). The
   next reload's tag is the other one than the variant being served, so a
   reload that did not happen is retried with the same tag;
4. the reload log (CLOCK_MONOTONIC times of each SIGHUP and completion, its
   tag and outcome) goes to the client's stdin; the client matches its
   samples against it and prints a JSON report;
5. twill's CPU time (utime + stime, /proc/PID/stat) over the load is read,
   and twill is stopped with SIGTERM.

Writes a markdown summary to bench/results/reload.md (`--out`) and prints
it; `--json` also saves the raw reports. Loopback only; each scenario takes
about `--duration` + 3 seconds (25 s by default).

Usage: bench/reload.sh [--duration S] [--reloads N] [--interval S]
                       [--scenarios shared,per-connection] [--metrics]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/twill-target"))
RELEASE = TARGET / "release"
TWILL = RELEASE / "twill"
CLIENT = RELEASE / "reload-load"
TAGECHO = ROOT / "guests" / "tagecho" / "tagecho.wasm"
TICK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ["shared", "per-connection"]
TAGS = ("A", "B")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cpu_secs(pid):
    """The process's utime + stime, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port():
    """An ephemeral loopback port nobody holds now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Log:
    """twill's stderr, pumped by a thread into a file and a list of lines,
    so that the driver can wait for a line after a given position."""

    def __init__(self, proc, path):
        self.lines = []
        self.cond = threading.Condition()
        self.done = False
        self.file = open(path, "w")
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc):
        for raw in proc.stderr:
            line = ANSI.sub("", raw.rstrip("\n"))
            self.file.write(line + "\n")
            self.file.flush()
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait_for(self, patterns, since, timeout):
        """The first (pattern name, line) among lines[since:] matching one
        of `patterns` ({name: regex}), or (None, None) on timeout or EOF."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[since:]:
                    for name, rx in patterns.items():
                        if re.search(rx, line):
                            return name, line
                since = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.done:
                    return None, None
                self.cond.wait(left)


def write_config(path, component, tag, port, shared, metrics_port):
    """Writes plugins.toml atomically: a reload never reads half a file."""
    text = ""
    if metrics_port:
        text += f'[host]\nmetrics = "127.0.0.1:{metrics_port}"\n\n'
    text += (
        "[plugins.echo]\n"
        f'component = "{component}"\n'
        + ('instance = "shared"\nshared-instances = 2\n' if shared else "")
        + f'env = {{ TAG = "{tag}" }}\n\n'
        "[[listen]]\n"
        f"port = {port}\n"
        'plugin = "echo"\n'
        "backlog = 4096\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stop(proc, timeout=15):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_scenario(name, a, tmp):
    """One scenario: twill under load, reloaded. Returns (report, extras)."""
    shared = name == "shared"
    components = [TAGECHO]
    if not a.no_file_swap:
        b = Path(tmp) / "tagecho-b.wasm"
        shutil.copyfile(TAGECHO, b)
        components.append(b)
    port = free_port()
    metrics_port = free_port() if a.metrics else None
    cfg = Path(tmp) / f"{name}.toml"
    served = TAGS[0]
    write_config(cfg, components[0], served, port, shared, metrics_port)

    env = dict(os.environ, NO_COLOR="1")
    twill = subprocess.Popen(
        [a.twill, "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    log = Log(twill, Path(tmp) / f"{name}.log")
    client = None
    try:
        what, _ = log.wait_for({"listening": r"\blistening\b"}, 0, 60)
        if what is None:
            raise SystemExit(f"{name}: twill did not log `listening` (exit code {twill.poll()}):\n" + "\n".join(log.lines[-20:]))
        client = subprocess.Popen(
            [
                str(CLIENT),
                "--addr", f"127.0.0.1:{port}",
                "--pingpong", str(a.pingpong),
                "--churn", str(a.churn),
                "--size", str(a.size),
                "--duration", str(a.duration),
                "--window-ms", str(a.window_ms),
                "--reloads-stdin",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        t_start = time.monotonic()
        c0 = cpu_secs(twill.pid)
        load_end = t_start + a.duration
        client.stdin.write(f"initial {served}\n")
        client.stdin.flush()
        reloads = []
        time.sleep(a.warmup)
        next_at = time.monotonic()
        while len(reloads) < a.reloads:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            # Leave the reload, its window and a margin inside the load.
            if time.monotonic() + a.window_ms / 1000 + 0.5 > load_end:
                break
            if twill.poll() is not None:
                raise SystemExit(f"{name}: twill exited with {twill.returncode} during the run")
            k = len(reloads)
            tag = TAGS[1] if served == TAGS[0] else TAGS[0]
            component = components[(k + 1) % len(components)]
            write_config(cfg, component, tag, port, shared, metrics_port)
            since = log.mark()
            sent = time.monotonic()
            twill.send_signal(signal.SIGHUP)
            wait = min(a.reload_timeout, max(load_end - time.monotonic() - 0.2, 0.1))
            what, line = log.wait_for(
                {"failed": r"reload failed", "ok": r"reloaded", "ignored": r"SIGHUP.*ignored"}, since, wait
            )
            done = time.monotonic()
            outcome = what or "timeout"
            if outcome == "ok":
                served = tag
            reloads.append({"k": k + 1, "tag": tag, "component": Path(component).name, "outcome": outcome,
                            "secs": done - sent, "line": line})
            client.stdin.write(f"reload {sent:.6f} {done if outcome == 'ok' else '-'} {tag} {outcome}\n")
            client.stdin.flush()
            print(f"{name}: reload {k + 1} -> {tag}: {outcome} in {(done - sent) * 1000:.0f} ms", file=sys.stderr, flush=True)
            next_at = sent + a.interval
        # communicate() closes the client's stdin: the end of the log.
        out, _ = client.communicate(timeout=a.duration + 60)
        c1 = cpu_secs(twill.pid)
        elapsed = time.monotonic() - t_start
        if client.returncode != 0:
            raise SystemExit(f"{name}: reload-load exited with {client.returncode}")
        report = json.loads(out)
        metrics = None
        if metrics_port:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
            except OSError as e:
                metrics = f"(metrics unavailable: {e})"
        extras = {
            "reloads": reloads,
            "cpu_secs": c1 - c0,
            "cpu_pct": (c1 - c0) * 100 / elapsed,
            "twill_exit": twill.poll(),
            "metrics": metrics,
            "log_tail": log.lines[-5:],
        }
        return report, extras
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
        stop(twill)


def fmt_us(v):
    return "–" if v is None else f"{v / 1000:.2f}"


def problems(a, r, x):
    """What keeps a scenario's run from showing the figure."""
    p = []
    ok = sum(1 for e in x["reloads"] if e["outcome"] == "ok")
    if ok < a.reloads:
        p.append(f"{ok} of {a.reloads} reloads completed")
    if r["failed_connections"]:
        p.append(f"{r['failed_connections']} failed connections")
    if r["bytes_lost"] or r["corrupted_bytes"]:
        p.append(f"{r['bytes_lost']} bytes lost, {r['corrupted_bytes']} corrupted")
    if r["tags"]["stale"] or r["tags"]["unexpected"]:
        p.append(f"{r['tags']['stale']} stale and {r['tags']['unexpected']} unexpected tags")
    return p


def summary(a, results, elapsed):
    lines = [
        "# Live reload under load\n",
        "`twill run` serving `guests/tagecho/tagecho.wasm` (echo, greeting each connection with `tag=<TAG>`), "
        "reloaded with SIGHUP while bench's `reload-load` client runs; each reload rewrites plugins.toml with "
        "the other tag" + ("" if a.no_file_swap else " and switches the component between tagecho.wasm and a "
                           "byte-identical copy, tagecho-b.wasm") + ".\n",
        f"Settings: {a.pingpong} ping-pong connections and {a.churn} connect-echo-close workers, "
        f"{a.size} B per echo, {a.duration:g} s of load per scenario, up to {a.reloads} reloads every "
        f"{a.interval:g} s after a {a.warmup:g} s warm-up, each awaited at most {a.reload_timeout:g} s; "
        f"latency \"around reloads\" is from {a.window_ms} ms before each SIGHUP to {a.window_ms} ms after "
        f"the reload completed. Client: 1 thread. Machine: {os.cpu_count()} cores, `{os.uname().release}`, "
        "loopback only; the client shares the cores with twill.\n",
        "Sharing: `shared` is `instance = \"shared\"` with `shared-instances = 2`; `per-connection` is an "
        "instance per connection (the default).\n",
        "| scenario | reloads ok / failed (timeout, ignored) | connections attempted / failed | bytes lost / corrupted "
        "| stale tags | ping-pong p50 / p99 / max ms, overall | p50 / p99 / max ms, around reloads | round trips "
        "| connect-echo-close cycles | twill CPU |",
        "|---|---|---|---|---:|---|---|---:|---:|---:|",
    ]
    for name, (r, x) in results.items():
        rl = x["reloads"]
        ok = sum(1 for e in rl if e["outcome"] == "ok")
        bad = len(rl) - ok
        why = ", ".join(f"{n} {o}" for o in ("failed", "timeout", "ignored") if (n := sum(1 for e in rl if e["outcome"] == o)))
        lat, win = r["latency"], r["latency_around_reloads"]
        lines.append(
            f"| {name} | {ok} / {bad}" + (f" ({why})" if why else "") + " | "
            f"{r['connections']:,} / {r['failed_connections']} | "
            f"{r['bytes_lost']} / {r['corrupted_bytes']} | "
            f"{r['tags']['stale'] + r['tags']['unexpected']} | "
            f"{fmt_us(lat['p50_us'])} / {fmt_us(lat['p99_us'])} / {fmt_us(lat['max_us'])} | "
            f"{fmt_us(win['p50_us'])} / {fmt_us(win['p99_us'])} / {fmt_us(win['max_us'])} | "
            f"{r['round_trips']:,} | {r['cycles']:,} | {x['cpu_secs']:.1f} s ({x['cpu_pct']:.0f}% of a core) |"
        )
    lines.append("")
    for name, (r, x) in results.items():
        f = r["failures"]
        t = r["tags"]
        lines.append(f"**{name}**: failures by kind " + ", ".join(f"{k} {v}" for k, v in f.items())
                     + f"; corrupted replies {r['corrupted_replies']}; bytes sent {r['bytes_sent']:,}, echoed "
                     f"{r['bytes_echoed']:,}; tags seen by connect-echo-close cycles {t['churn_by_tag']} "
                     f"(checked {t['checked']:,}, unchecked {t['unchecked']}; stale {t['stale']}, "
                     f"unexpected {t['unexpected']}); latency samples {r['latency_around_reloads']['samples']:,} "
                     f"around reloads of {r['latency_samples']['kept']:,} kept ({r['latency_samples']['seen']:,} seen).\n")
        by_k = {e["k"]: e for e in r["reloads"]}
        if x["reloads"]:
            lines.append("| reload | tag | component | outcome | took ms | first new tag seen ms after SIGHUP | stale after |")
            lines.append("|---:|---|---|---|---:|---:|---:|")
            for e in x["reloads"]:
                c = by_k.get(e["k"], {})
                first = c.get("first_new_tag_ms")
                lines.append(f"| {e['k']} | {e['tag']} | {e['component']} | {e['outcome']} | {e['secs'] * 1000:.0f} | "
                             f"{'–' if first is None else f'{first:.1f}'} | {c.get('stale_after', '–')} |")
            lines.append("")
        if x["metrics"] is not None:
            got = [m for m in x["metrics"].splitlines() if "reload" in m and not m.startswith("#")]
            lines.append(f"Metrics (`[host] metrics`), lines about reloads: {'; '.join(got) or 'none'}.\n")
    lines.append("Verdict: " + "; ".join(f"{n}: {', '.join(problems(a, r, x)) or 'the figure holds'}"
                                          for n, (r, x) in results.items()) + ".\n")
    lines.append(
        f"Command: `bench/reload.sh --duration {a.duration:g} --reloads {a.reloads} --interval {a.interval:g} "
        f"--scenarios {a.scenarios}" + (" --metrics" if a.metrics else "") + (" --no-file-swap" if a.no_file_swap else "")
        + f"`. Total run time {elapsed:.0f} s."
    )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=22.0, help="seconds of load per scenario (at most 35)")
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.75, help="seconds from one SIGHUP to the next")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the first reload")
    ap.add_argument("--reload-timeout", type=float, default=10.0, help="seconds to wait for `reloaded`")
    ap.add_argument("--window-ms", type=int, default=250)
    ap.add_argument("--pingpong", type=int, default=100)
    ap.add_argument("--churn", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--metrics", action="store_true", help="set [host] metrics (needs a host that has it)")
    ap.add_argument("--no-file-swap", action="store_true", help="keep one component file; change only the tag")
    ap.add_argument("--twill", default=str(TWILL), help="the twill binary (default: the release build)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reload.md"))
    ap.add_argument("--json", help="also save the raw reports here")
    a = ap.parse_args()
    if not 0 < a.duration <= 35:
        raise SystemExit("--duration must be in (0, 35]: a scenario stays within ~40 s")
    names = a.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {SCENARIOS}")
    for p in (Path(a.twill), CLIENT, TAGECHO):
        if not p.exists():
            raise SystemExit(f"missing {p} (bench/reload.sh builds the binaries; scripts/build-guests.sh the guest)")
    # SIGTERM stops the run through the finally blocks too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    t0 = time.time()
    results = {}
    with tempfile.TemporaryDirectory(prefix="twill-reload-") as tmp:
        for name in names:
            print(f"scenario {name}", file=sys.stderr, flush=True)
            results[name] = run_scenario(name, a, tmp)
            time.sleep(1.0)
    text = summary(a, results, time.time() - t0)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({n: {"report": r, **x} for n, (r, x) in results.items()}, indent=1) + "\n")
    bad = {n: p for n, (r, x) in results.items() if (p := problems(a, r, x))}
    if bad:
        print("not shown: " + "; ".join(f"{n}: {', '.join(p)}" for n, p in bad.items()), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
