#!/usr/bin/env python3
"""TLS echo servers against one another (bench/tls.sh builds and runs this):
twill's TLS listener against a native tokio-rustls echo server (with either
rustls crypto provider) and Twisted's TLS, the same certificate and key for
all, on loopback. Plaintext native and twill run the idle scenario too, so
the memory a TLS connection adds can be read off.

Servers, alternated in every round (the order rotated by one each round),
each started fresh in every round on an ephemeral loopback port:

- native-tls: bench/src/bin/native-tls-echo.rs (tokio-rustls, aws-lc-rs)
- native-tls-ring: the same with `--provider ring`
- twill-tls: `twill run` with guest-echo/echo.wasm as in
  bench/twill-bench-shared.toml (two shared instances) and
  `tls = { cert, key }` on its [[listen]]
- twisted-tls: bench/twisted_tls_echo.py (`listenSSL`, pyOpenSSL)
- native, twill: the plaintext servers (idle memory only)

Scenarios (TLS servers; the loadgen speaks TLS with the server's own crypto
provider, aws-lc-rs unless the server is native-tls-ring, offers X25519 alone
and never resumes a session): 64 B ping-pong over 100 connections (round trips / s, p99),
16 KiB bulk over 10 connections (MiB / s), full handshakes per second
(`connrate`: connect, handshake, one 64 B echo, reset), and idle memory
(2,000 connections, one echo each, server RSS delta / N; every server).

Per scenario and server: throughput, the server process's CPU time per
operation (from /proc/PID/stat, utime + stime), the ping-pong p99; then
ratios, each the median of the per-round ratios (a round runs every server
back to back, so a slow round on the shared machine cancels out). A server
that does not start, or fails under load, is reported and dropped from the
later rounds; the others go on.

Usage: bench/tls.sh [--rounds N] [--duration S] [--only native-tls,twill-tls]
(tls.sh makes the certificate; tls.py itself takes --cert and --key)
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy  # noqa: E402  (free_port, port_free, announced, stop)
import run as bench  # noqa: E402  (cpu_secs, wait_port, loadgen)

ROOT = bench.ROOT
RELEASE = bench.TARGET / "release"
TWILL = RELEASE / "twill"
ECHO_WASM = ROOT / "guest-echo" / "echo.wasm"

SERVERS = ["native-tls", "native-tls-ring", "twill-tls", "twisted-tls", "native", "twill"]
TLS_SERVERS = ["native-tls", "native-tls-ring", "twill-tls", "twisted-tls"]
LABEL = {
    "native-tls": "native TLS (aws-lc-rs)",
    "native-tls-ring": "native TLS (ring)",
    "twill-tls": "twill TLS",
    "twisted-tls": "Twisted TLS",
    "native": "native plaintext",
    "twill": "twill plaintext",
}
# The loadgen's crypto provider: the one of the server it measures (ring for
# twill's host, which uses ring; Twisted's server has its own OpenSSL, and
# the client uses aws-lc-rs there).
CLIENT_PROVIDER = {"native-tls-ring": "ring", "twill-tls": "ring"}
THREADS = 2  # the native servers' runtime workers (twill: one per CPU, 2 here)
SHARED_INSTANCES = 2  # as bench/twill-bench-shared.toml
LOADGEN_THREADS = 1

PINGPONG = ("pingpong-64B-100c", ["--mode", "pingpong", "-c", "100", "-s", "64"], "round trip")
BULK = ("bulk-16KiB-10c", ["--mode", "bulk", "-c", "10", "-s", "16384"], "16 KiB block")
HANDSHAKES = ("handshakes-8w", ["--mode", "connrate", "-c", "8", "-s", "64"], "handshake")
SCENARIOS = [PINGPONG, BULK, HANDSHAKES]
IDLE_CONNS = 2000
IDLE = f"idle-{IDLE_CONNS}"

# Ratios: (numerator, denominator, scenarios); None means every scenario.
RATIOS = [
    ("twill-tls", "native-tls-ring", None),
    ("twill-tls", "twisted-tls", None),
    ("native-tls-ring", "native-tls", None),
    ("twisted-tls", "native-tls", None),
]
# Idle memory: TLS against plaintext, same server.
IDLE_PAIRS = [("native-tls", "native"), ("native-tls-ring", "native"), ("twill-tls", "twill")]


def cert_description(cert):
    """The certificate's key type and signature, for the results header."""
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True)
    want = ("Public Key Algorithm", "ASN1 OID", "NIST CURVE", "Public-Key:", "Signature Algorithm")
    seen = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith(want) and line not in seen:
            seen.append(line)
    return "; ".join(seen) or "?"


def twill_config(tmp, name, port, cert, key):
    """bench/twill-bench-shared.toml on `port`, with TLS for twill-tls."""
    tls = f'tls = {{ cert = "{cert}", key = "{key}" }}\n' if name == "twill-tls" else ""
    path = Path(tmp) / f"{name}.toml"
    path.write_text(
        "[plugins.echo]\n"
        f'component = "{ECHO_WASM}"\n'
        'instance = "shared"\n'
        f"shared-instances = {SHARED_INSTANCES}\n\n"
        "[[listen]]\n"
        f"port = {port}\n"
        'plugin = "echo"\n'
        "max-connections = 12000\n"
        "backlog = 4096\n"
        f"{tls}"
    )
    return path


def start(name, tmp, cert, key, venv_python):
    """Starts a server; returns (process, port) once it accepts TCP."""
    log = Path(tmp) / f"{name}.log"
    if name in ("native-tls", "native-tls-ring", "twisted-tls"):
        # These bind port 0 and announce the port they got.
        if name == "twisted-tls":
            cmd = [venv_python, str(ROOT / "bench" / "twisted_tls_echo.py"), "0", str(cert), str(key)]
        else:
            provider = "ring" if name == "native-tls-ring" else "aws-lc-rs"
            cmd = [str(RELEASE / "native-tls-echo"), "127.0.0.1:0", str(THREADS),
                   "--cert", str(cert), "--key", str(key), "--provider", provider]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = proxy.announced(proc)
        except BaseException:
            proxy.stop(proc)
            raise
        tail = lambda: ""  # noqa: E731  (stderr is drained by announced())
    else:
        port = proxy.free_port()
        if name == "native":
            cmd = [str(RELEASE / "native-echo"), f"127.0.0.1:{port}", str(THREADS)]
        else:
            cmd = [str(TWILL), "-q", "run", str(twill_config(tmp, name, port, cert, key))]
        if not proxy.port_free(port):
            raise SystemExit(f"port {port} is taken")
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        tail = lambda: log.read_text()[-2000:].strip()  # noqa: E731
    try:
        bench.wait_port(port, proc)
    except SystemExit as e:
        proxy.stop(proc)
        raise SystemExit(f"did not start: {e}\n{tail()}") from None
    except BaseException:
        proxy.stop(proc)
        raise
    time.sleep(0.3)
    return proc, port


def measure(name, proc, port, a, ca, results, negotiated):
    addr = f"127.0.0.1:{port}"
    tls = []
    if name in TLS_SERVERS:
        tls = ["--tls", "--ca", str(ca), "--server-name", "localhost",
               "--provider", CLIENT_PROVIDER.get(name, "aws-lc-rs")]

    def loadgen(args):
        r = bench.loadgen(["--addr", addr, "--threads", str(LOADGEN_THREADS), *tls, *args])
        if proc.poll() is not None:
            mode = args[args.index("--mode") + 1]
            raise SystemExit(f"exited during {mode} with {proc.returncode}")
        if "tls" in r:
            negotiated[name] = f"{r['tls']}, {r['suite']}, {r['kx']}"
        return r

    if tls:
        # Warm up (and, for twill, start the shared instances).
        loadgen(["--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
        for scen, args, _ in SCENARIOS:
            c0 = bench.cpu_secs(proc.pid)
            r = loadgen(["-d", str(a.duration), *args])
            c1 = bench.cpu_secs(proc.pid)
            ops = int(r["ops"])
            results.setdefault((name, scen), []).append(
                {
                    "rate": float(r["rate"]),
                    "mib": float(r["mib_per_s"]) if "mib_per_s" in r else None,
                    "cpu_us": (c1 - c0) * 1e6 / max(ops, 1),
                    "p99": float(r["p99_us"]) if "p99_us" in r else None,
                    "errors": int(r.get("errors", 0)),
                }
            )
            time.sleep(0.5)
    else:
        # Plaintext: the same warm-up, then idle memory only.
        loadgen(["--mode", "pingpong", "-c", "100", "-s", "64", "-d", "1"])
    r = loadgen(["--mode", "idle", "-c", str(IDLE_CONNS), "-s", "64", "--server-pid", str(proc.pid)])
    results.setdefault((name, IDLE), []).append({"kib": float(r["kib_per_conn"]), "setup": float(r["setup_secs"])})


def report(a, names, skipped, results, elapsed, order_log, cert_desc, negotiated):
    med = statistics.median

    def cell(name, scen, key):
        v = [x[key] for x in results.get((name, scen), []) if x.get(key) is not None]
        return med(v) if v else None

    def fmt(v):
        return "–" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}")

    def ratio(x, y, scen, key):
        xs, ys = results.get((x, scen)), results.get((y, scen))
        if not xs or not ys:
            return "–"
        rs = [p[key] / q[key] for p, q in zip(xs, ys) if q.get(key) and p.get(key) is not None]
        return f"{med(rs):.2f}×" if rs else "–"

    def diff(x, y):
        # Per-round differences of KiB per connection, paired by round.
        xs, ys = results.get((x, IDLE)), results.get((y, IDLE))
        if not xs or not ys:
            return None
        return med([p["kib"] - q["kib"] for p, q in zip(xs, ys)])

    tls_names = [n for n in names if n in TLS_SERVERS]
    lines = [
        "# TLS echo: twill against native tokio-rustls and Twisted\n",
        f"Medians of {a.rounds} round(s), {a.duration:g} s per scenario (after a 1 s warm-up of 64 B ping-pong over "
        "100 connections); the servers run in alternation, the order rotated by one each round, each started fresh "
        "in every round on an ephemeral loopback port. Ratios are medians of the per-round ratios.\n",
        "Settings:\n",
        "- Certificate: bench/tls.sh's throwaway leaf for `localhost` and `127.0.0.1` (signed by a throwaway CA, "
        f"which the loadgen trusts), the same for every server: {cert_desc}.",
        "- Negotiated (the loadgen's probe connection): "
        + ("; ".join(f"{LABEL[n]}: {negotiated[n]}" for n in tls_names if n in negotiated) or "–")
        + ".",
        f"- native TLS: bench/src/bin/native-tls-echo.rs, tokio-rustls, {THREADS} runtime threads, rustls's "
        "default server settings (TLS 1.2 and 1.3, session tickets on), provider aws-lc-rs or ring. native "
        f"plaintext: bench/src/bin/native-echo.rs, {THREADS} threads.",
        f"- twill: release `twill run`, guest-echo/echo.wasm, `instance = \"shared\"`, `shared-instances = "
        f"{SHARED_INSTANCES}` (bench/twill-bench-shared.toml), default threading (one reactor thread per CPU); "
        "twill TLS adds `tls = { cert, key }` to the [[listen]].",
        "- Twisted TLS: bench/twisted_tls_echo.py, `listenSSL` with `ssl.CertificateOptions` (pyOpenSSL), one "
        "thread, Nagle left on as in bench/twisted_echo.py.",
        f"- Loadgen: {LOADGEN_THREADS} thread, tokio-rustls, no session resumption (every handshake is a full one), "
        "key exchange X25519 only (so no server asks for X25519MLKEM768 with a HelloRetryRequest), the server's own "
        "crypto provider (ring for native TLS (ring), aws-lc-rs otherwise). Scenarios: "
        + "; ".join(f"{scen} (`{' '.join(args)}`)" for scen, args, _ in SCENARIOS)
        + f"; {IDLE} (`--mode idle -c {IDLE_CONNS} -s 64`: one handshake and echo each, then the server's RSS delta "
        "/ N). The handshake scenario is `connrate`: connect, full handshake, one 64 B echo, reset.",
        "- CPU is the server process's alone (utime + stime from /proc/PID/stat); the loadgen shares the machine's "
        "cores.\n",
    ]
    for name, why in skipped:
        lines.append(f"- {LABEL[name]}: {why}")
    if skipped:
        lines.append("")
    if tls_names:
        lines.append("| scenario | metric | " + " | ".join(LABEL[n] for n in tls_names) + " |")
        lines.append("|---|---|" + "---:|" * len(tls_names))
        for scen, _, op in SCENARIOS:
            metrics = [(f"{op}s / s", "rate")]
            if scen == BULK[0]:
                metrics.append(("MiB / s", "mib"))
            metrics.append((f"server CPU µs / {op}", "cpu_us"))
            if scen == PINGPONG[0]:
                metrics.append(("p99 µs", "p99"))
            for metric, key in metrics:
                lines.append(f"| {scen} | {metric} | " + " | ".join(fmt(cell(n, scen, key)) for n in tls_names) + " |")
        lines.append("")
    if any((n, IDLE) in results for n in names):
        idle_names = [n for n in names if (n, IDLE) in results]
        lines.append(f"Idle memory ({IDLE_CONNS:,} connections, server RSS delta / N):\n")
        lines.append("| | " + " | ".join(LABEL[n] for n in idle_names) + " |")
        lines.append("|---|" + "---:|" * len(idle_names))
        lines.append("| KiB / connection | " + " | ".join(fmt(cell(n, IDLE, "kib")) for n in idle_names) + " |")
        lines.append("| set-up s (serial: connect, handshake if TLS, one echo) | "
                     + " | ".join(fmt(cell(n, IDLE, "setup")) for n in idle_names) + " |")
        lines.append("")
        extra = [(x, y) for x, y in IDLE_PAIRS if x in idle_names and y in idle_names]
        if extra:
            lines.append(
                "KiB a TLS connection adds (median of per-round differences): "
                + "; ".join(f"{LABEL[x]} − {LABEL[y]}: {fmt(diff(x, y))}" for x, y in extra)
                + ".\n"
            )

    pairs = [(x, y, s) for x, y, s in RATIOS if x in names and y in names]
    if pairs:
        lines.append("Ratios (throughput: higher is better; CPU per operation, p99 and memory: lower is better):\n")
        lines.append("| scenario | metric | " + " | ".join(f"{LABEL[x]} / {LABEL[y]}" for x, y, _ in pairs) + " |")
        lines.append("|---|---|" + "---:|" * len(pairs))
        for scen, _, op in SCENARIOS:
            metrics = [("throughput", "rate"), (f"CPU / {op}", "cpu_us")]
            if scen == PINGPONG[0]:
                metrics.append(("p99", "p99"))
            for metric, key in metrics:
                lines.append(
                    f"| {scen} | {metric} | "
                    + " | ".join(ratio(x, y, scen, key) if s is None or scen in s else "" for x, y, s in pairs)
                    + " |"
                )
        lines.append(
            f"| {IDLE} | KiB / connection | "
            + " | ".join(ratio(x, y, IDLE, "kib") if s is None or IDLE in s else "" for x, y, s in pairs)
            + " |"
        )
        lines.append("")

    errs = {(n, s): sum(x.get("errors", 0) for x in v) for (n, s), v in results.items()}
    if any(errs.values()):
        lines.append(
            "Connection errors reported by the loadgen: "
            + ", ".join(f"{n} {s} {e}" for (n, s), e in sorted(errs.items()) if e)
            + ".\n"
        )
    lines.append("Every round (rate; server CPU µs per op; p99 µs; idle KiB per connection):\n")
    for (name, scen), v in sorted(results.items()):
        if scen == IDLE:
            vals = ", ".join(f"{x['kib']:.2f} KiB" for x in v)
        else:
            vals = ", ".join(
                f"{x['rate']:,.0f}/s; {x['cpu_us']:.2f} µs" + (f"; p99 {x['p99']:.0f} µs" if x["p99"] is not None else "")
                for x in v
            )
        lines.append(f"- {name} {scen}: {vals}")
    lines.append("")
    lines.append("Order of each round: " + "; ".join(", ".join(o) for o in order_log) + ".\n")
    lines.append(
        f"Command: `bench/tls.sh --rounds {a.rounds} --duration {a.duration:g}"
        + (f" --only {a.only}" if a.only != ",".join(SERVERS) else "")
        + f"`. Total run time {elapsed:.0f} s. Machine: {os.cpu_count()} CPUs, `{os.uname().release}`."
    )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--only", default=",".join(SERVERS), help="servers to run, comma-separated: " + ",".join(SERVERS))
    ap.add_argument("--venv-python", default="/var/tmp/twill-bench-venv/bin/python")
    ap.add_argument("--cert", required=True, help="the servers' certificate, PEM, for localhost")
    ap.add_argument("--key", required=True, help="the certificate's private key, PEM")
    ap.add_argument("--ca", required=True, help="the CA the loadgen trusts, PEM")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tls.md"))
    a = ap.parse_args()
    wanted = a.only.split(",")
    unknown = [n for n in wanted if n not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}; choose from {SERVERS}")
    names, skipped = [], []
    for n in SERVERS:
        if n not in wanted:
            continue
        why = None
        if n.startswith("twill") and not ECHO_WASM.exists():
            why = f"component missing ({ECHO_WASM.relative_to(ROOT)})"
        elif n.startswith("twill") and not TWILL.exists():
            why = f"binary missing ({TWILL})"
        elif n == "twisted-tls" and subprocess.run([a.venv_python, "-c", "import OpenSSL, twisted"]).returncode:
            why = f"pyOpenSSL or Twisted missing in {a.venv_python}"
        if why:
            print(f"{n}: skipped: {why}", file=sys.stderr, flush=True)
            skipped.append((n, "skipped: " + why))
        else:
            names.append(n)
    if not names:
        raise SystemExit("no server to run")

    # SIGTERM (or SIGHUP) stops the run through the finally below too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    procs, ports = [], []
    failed, results, order_log, negotiated = {}, {}, [], {}
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key, ca = Path(a.cert).resolve(), Path(a.key).resolve(), Path(a.ca).resolve()
            cert_desc = cert_description(cert)
            for rnd in range(a.rounds):
                k = rnd % len(names)
                order = names[k:] + names[:k]
                order_log.append(order)
                for name in order:
                    if name in failed:
                        continue
                    print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
                    try:
                        proc, port = start(name, tmp, cert, key, a.venv_python)
                        procs.append(proc)
                        ports.append(port)
                        try:
                            measure(name, proc, port, a, ca, results, negotiated)
                        finally:
                            proxy.stop(proc)
                    except SystemExit as e:
                        # One server failing (not starting, or dying under
                        # load) drops it from the later rounds.
                        why = str(e).strip()
                        print(f"{name}: failed in round {rnd + 1}: {why}", file=sys.stderr, flush=True)
                        failed[name] = f"failed in round {rnd + 1}: " + ("; ".join(why.splitlines()[:3])[:400] or "?")
                        continue
                    if not proxy.port_free(port):
                        print(f"warning: port {port} still held after {name} stopped", file=sys.stderr)
                    time.sleep(1.0)
    finally:
        for p in procs:
            proxy.stop(p)
        held = [p for p in ports if not proxy.port_free(p)]
        if held:
            print(f"warning: ports still held at the end: {held}", file=sys.stderr)
    skipped += list(failed.items())
    ran = [n for n in names if any(k[0] == n for k in results)]
    text = report(a, ran, skipped, results, time.time() - t0, order_log, cert_desc, negotiated)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
