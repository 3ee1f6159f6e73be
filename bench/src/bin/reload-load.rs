//! The live-reload benchmark's load (bench/reload.py): two kinds of clients
//! against a `guests/tagecho` server, which greets every connection with
//! `tag=<TAG>\n` and then echoes.
//!
//! - `--pingpong` long-lived connections: connect, read the tag line, then
//!   loop sending `--size` pseudo-random bytes and reading exactly as many
//!   back, checking they are equal and recording the round trip's latency.
//! - `--churn` workers: loop connect, read the tag line (recording the tag
//!   and when the connection was started and greeted), one `--size` echo,
//!   close (linger 0, as the loadgen's `connrate`).
//!
//! Every failure is counted by kind (connect error, reset, EOF before the
//! expected bytes, timeout, malformed tag line) and ends that connection: a
//! ping-pong client reconnects, a churn worker starts its next cycle. A reply
//! that differs from what was sent counts as corrupted; bytes sent whose
//! echo never came back count as lost.
//!
//! After `--duration` seconds the clients stop (an exchange under way is
//! finished, or times out after `--op-timeout`). Then, with `--reloads-stdin`,
//! the driver's log of reloads is read from stdin until EOF, one line each,
//! times in CLOCK_MONOTONIC seconds (Python's `time.monotonic()`):
//!
//! ```text
//! initial A
//! reload <sent> <done|-> <tag> <ok|timeout|failed|ignored>
//! ```
//!
//! and the samples are matched against it: ping-pong latency within
//! `--window-ms` of a reload (from that much before its SIGHUP to that much
//! after it completed), and every churn cycle's tag against the variant
//! being served when the cycle started. A tag is *stale* when a reload to
//! another variant had completed before the cycle started and no later
//! reload was under way by the time the greeting arrived.
//!
//! Memory is bounded: latency samples (timestamp, latency) are kept in a
//! reservoir per connection (`--max-samples` in all; Algorithm R, so the
//! windows' percentiles stay unbiased when it overflows; the overall
//! percentiles come from full histograms), churn records up to
//! `--max-cycles` (later ones are counted, not checked).
//!
//! Output: one JSON object on stdout.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

/// Ping-pong and connect-echo-close load against a tagging echo server,
/// checked against a log of reloads.
#[derive(Parser, Debug)]
struct Args {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// Long-lived ping-pong connections.
    #[arg(long, default_value_t = 100)]
    pingpong: usize,
    /// Connect-echo-close workers.
    #[arg(long, default_value_t = 50)]
    churn: usize,
    /// Bytes per echo.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Seconds of load.
    #[arg(long, short = 'd', default_value_t = 20.0)]
    duration: f64,
    /// Seconds one connect, greeting or echo may take before it counts as
    /// failed (timeout).
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
    /// The window around each reload, in milliseconds, for the latency
    /// figures "around reloads".
    #[arg(long, default_value_t = 250)]
    window_ms: u64,
    /// Most (timestamp, latency) samples kept, across all ping-pong
    /// connections.
    #[arg(long, default_value_t = 3_000_000)]
    max_samples: usize,
    /// Most churn cycles whose tag is kept for checking.
    #[arg(long, default_value_t = 2_000_000)]
    max_cycles: usize,
    /// After the load, read the reload log from stdin (until EOF).
    #[arg(long)]
    reloads_stdin: bool,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// How a connection failed.
#[derive(Clone, Copy, Debug)]
enum Fail {
    Connect,
    Reset,
    Eof,
    Timeout,
    BadTag,
}

const FAIL_NAMES: [&str; 5] = ["connect", "reset", "eof", "timeout", "bad_tag"];

/// The tags seen, interned: a churn record holds an index.
static TAGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn intern(tag: &str) -> u16 {
    let mut tags = TAGS.lock().unwrap();
    match tags.iter().position(|t| t == tag) {
        Some(i) => i as u16,
        None => {
            tags.push(tag.to_string());
            (tags.len() - 1) as u16
        }
    }
}

fn tag_name(id: u16) -> String {
    TAGS.lock().unwrap()[id as usize].clone()
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's `time.monotonic()`
/// (and of `Instant`, which does not expose it).
fn mono_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// xorshift64*: the payloads' bytes and the reservoir's choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The shared settings of every client task.
struct Cfg {
    addr: SocketAddr,
    size: usize,
    op_timeout: Duration,
    origin: Instant,
    stop: AtomicBool,
    samples_per_conn: usize,
    cycles_per_worker: usize,
}

impl Cfg {
    /// Microseconds since the run's origin.
    fn us(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.origin)
            .as_micros()
            .min(u32::MAX as u128) as u32
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One churn cycle's greeting: when it started connecting and was greeted
/// (µs since the origin), and the tag.
#[derive(Clone, Copy)]
struct Cycle {
    start: u32,
    greeted: u32,
    tag: u16,
}

/// What one task counted; merged at the end.
struct Tally {
    connections: u64,
    failures: [u64; 5],
    round_trips: u64,
    cycles: u64,
    corrupted_replies: u64,
    corrupted_bytes: u64,
    bytes_sent: u64,
    bytes_echoed: u64,
    bytes_lost: u64,
    hist: Histogram<u64>,
    /// (µs since origin, latency µs), a reservoir.
    samples: Vec<(u32, u32)>,
    samples_seen: u64,
    records: Vec<Cycle>,
    records_dropped: u64,
    /// Tags the ping-pong connections were greeted with.
    pingpong_tags: BTreeMap<u16, u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            connections: 0,
            failures: [0; 5],
            round_trips: 0,
            cycles: 0,
            corrupted_replies: 0,
            corrupted_bytes: 0,
            bytes_sent: 0,
            bytes_echoed: 0,
            bytes_lost: 0,
            hist: Histogram::new(3).unwrap(),
            samples: Vec::new(),
            samples_seen: 0,
            records: Vec::new(),
            records_dropped: 0,
            pingpong_tags: BTreeMap::new(),
        }
    }

    fn fail(&mut self, f: Fail) {
        self.failures[f as usize] += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.connections += o.connections;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
        self.round_trips += o.round_trips;
        self.cycles += o.cycles;
        self.corrupted_replies += o.corrupted_replies;
        self.corrupted_bytes += o.corrupted_bytes;
        self.bytes_sent += o.bytes_sent;
        self.bytes_echoed += o.bytes_echoed;
        self.bytes_lost += o.bytes_lost;
        self.hist.add(&o.hist).unwrap();
        self.samples.extend(o.samples);
        self.samples_seen += o.samples_seen;
        self.records.extend(o.records);
        self.records_dropped += o.records_dropped;
        for (t, n) in o.pingpong_tags {
            *self.pingpong_tags.entry(t).or_default() += n;
        }
    }

    /// Compares the echo with what was sent; counts the bytes.
    fn check(&mut self, sent: &[u8], got: &[u8]) {
        self.bytes_echoed += got.len() as u64;
        let bad = sent.iter().zip(got).filter(|(a, b)| a != b).count() as u64;
        if bad > 0 {
            self.corrupted_replies += 1;
            self.corrupted_bytes += bad;
        }
    }
}

fn io_fail(e: &std::io::Error) -> Fail {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Fail::Eof
    } else {
        Fail::Reset
    }
}

async fn connect(cfg: &Cfg) -> Result<TcpStream, Fail> {
    let deadline = tokio::time::Instant::now() + cfg.op_timeout;
    match timeout_at(deadline, TcpStream::connect(cfg.addr)).await {
        Err(_) => Err(Fail::Timeout),
        Ok(Err(_)) => Err(Fail::Connect),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Reads the greeting, `tag=<TAG>\n`, and nothing more (the server sends
/// nothing else before it is sent something).
async fn read_tag(s: &mut TcpStream, cfg: &Cfg) -> Result<u16, Fail> {
    let deadline = tokio::time::Instant::now() + cfg.op_timeout;
    let mut line = Vec::with_capacity(32);
    let mut chunk = [0u8; 64];
    loop {
        let n = match timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err(Fail::Timeout),
            Ok(Err(e)) => return Err(io_fail(&e)),
            Ok(Ok(0)) => return Err(Fail::Eof),
            Ok(Ok(n)) => n,
        };
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            if end + 1 != line.len() {
                return Err(Fail::BadTag);
            }
            let text = std::str::from_utf8(&line[..end]).map_err(|_| Fail::BadTag)?;
            let tag = text.strip_prefix("tag=").ok_or(Fail::BadTag)?;
            return Ok(intern(tag));
        }
        if line.len() > 256 {
            return Err(Fail::BadTag);
        }
    }
}

/// Sends `msg` and reads as many bytes back into `buf`. On failure, also
/// says how many came back.
async fn echo(
    s: &mut TcpStream,
    cfg: &Cfg,
    msg: &[u8],
    buf: &mut [u8],
) -> Result<(), (Fail, usize)> {
    let deadline = tokio::time::Instant::now() + cfg.op_timeout;
    match timeout_at(deadline, s.write_all(msg)).await {
        Err(_) => return Err((Fail::Timeout, 0)),
        Ok(Err(e)) => return Err((io_fail(&e), 0)),
        Ok(Ok(())) => {}
    }
    let mut got = 0;
    while got < buf.len() {
        match timeout_at(deadline, s.read(&mut buf[got..])).await {
            Err(_) => return Err((Fail::Timeout, got)),
            Ok(Err(e)) => return Err((io_fail(&e), got)),
            Ok(Ok(0)) => return Err((Fail::Eof, got)),
            Ok(Ok(n)) => got += n,
        }
    }
    Ok(())
}

/// One long-lived ping-pong connection (reconnecting after a failure).
async fn pingpong(id: u64, cfg: Arc<Cfg>) -> Tally {
    let mut t = Tally::new();
    let mut rng = Rng::new(id + 1);
    let mut msg = vec![0u8; cfg.size];
    let mut buf = vec![0u8; cfg.size];
    'conn: while !cfg.stopped() {
        t.connections += 1;
        let mut s = match connect(&cfg).await {
            Ok(s) => s,
            Err(f) => {
                t.fail(f);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match read_tag(&mut s, &cfg).await {
            Ok(tag) => *t.pingpong_tags.entry(tag).or_default() += 1,
            Err(f) => {
                t.fail(f);
                continue;
            }
        }
        while !cfg.stopped() {
            rng.fill(&mut msg);
            let start = Instant::now();
            t.bytes_sent += msg.len() as u64;
            if let Err((f, got)) = echo(&mut s, &cfg, &msg, &mut buf).await {
                t.fail(f);
                t.check(&msg[..got], &buf[..got]);
                t.bytes_lost += (msg.len() - got) as u64;
                continue 'conn;
            }
            let end = Instant::now();
            t.check(&msg, &buf);
            t.round_trips += 1;
            let lat = end.duration_since(start).as_micros().min(u32::MAX as u128) as u32;
            let _ = t.hist.record(lat.max(1) as u64);
            // Algorithm R: keep each of the n samples seen with
            // probability cap / n.
            t.samples_seen += 1;
            let sample = (cfg.us(start), lat);
            if t.samples.len() < cfg.samples_per_conn {
                t.samples.push(sample);
            } else {
                let j = rng.next() % t.samples_seen;
                if (j as usize) < cfg.samples_per_conn {
                    t.samples[j as usize] = sample;
                }
            }
        }
    }
    t
}

/// One connect-echo-close worker.
async fn churn(id: u64, cfg: Arc<Cfg>) -> Tally {
    let mut t = Tally::new();
    let mut rng = Rng::new(0x1_0000 + id);
    let mut msg = vec![0u8; cfg.size];
    let mut buf = vec![0u8; cfg.size];
    while !cfg.stopped() {
        t.connections += 1;
        let start = Instant::now();
        let mut s = match connect(&cfg).await {
            Ok(s) => s,
            Err(f) => {
                t.fail(f);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let tag = match read_tag(&mut s, &cfg).await {
            Ok(tag) => tag,
            Err(f) => {
                t.fail(f);
                continue;
            }
        };
        let greeted = Instant::now();
        if t.records.len() < cfg.cycles_per_worker {
            t.records.push(Cycle {
                start: cfg.us(start),
                greeted: cfg.us(greeted),
                tag,
            });
        } else {
            t.records_dropped += 1;
        }
        rng.fill(&mut msg);
        t.bytes_sent += msg.len() as u64;
        if let Err((f, got)) = echo(&mut s, &cfg, &msg, &mut buf).await {
            t.fail(f);
            t.check(&msg[..got], &buf[..got]);
            t.bytes_lost += (msg.len() - got) as u64;
            continue;
        }
        t.check(&msg, &buf);
        t.cycles += 1;
        // Close first, with a reset, so TIME_WAIT does not pile up on
        // either side (as the loadgen's connrate).
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    }
    t
}

/// One line of the reload log, its times in µs since the origin.
struct Reload {
    sent: i64,
    done: Option<i64>,
    tag: String,
    outcome: String,
}

impl Reload {
    fn ok(&self) -> bool {
        self.outcome == "ok" && self.done.is_some()
    }
}

/// Parses the reload log (see the module doc).
fn read_reloads(origin_mono: f64) -> anyhow::Result<(Option<String>, Vec<Reload>)> {
    let us =
        |s: &str| -> anyhow::Result<i64> { Ok(((s.parse::<f64>()? - origin_mono) * 1e6) as i64) };
    let mut initial = None;
    let mut reloads = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["initial", tag] => initial = Some(tag.to_string()),
            ["reload", sent, done, tag, outcome] => reloads.push(Reload {
                sent: us(sent)?,
                done: if *done == "-" { None } else { Some(us(done)?) },
                tag: tag.to_string(),
                outcome: outcome.to_string(),
            }),
            _ => anyhow::bail!("bad reload log line {line:?}"),
        }
    }
    reloads.sort_by_key(|r| r.sent);
    Ok((initial, reloads))
}

/// p50, p99 and max of unsorted latencies (µs), as JSON fields.
fn pct_json(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "\"samples\": 0, \"p50_us\": null, \"p99_us\": null, \"max_us\": null".to_string();
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "\"samples\": {}, \"p50_us\": {}, \"p99_us\": {}, \"max_us\": {}",
        v.len(),
        q(0.5),
        q(0.99),
        v[v.len() - 1]
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ms(us: i64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let origin = Instant::now();
    let origin_mono = mono_now();
    let cfg = Arc::new(Cfg {
        addr: args.addr,
        size: args.size,
        op_timeout: Duration::from_secs_f64(args.op_timeout),
        origin,
        stop: AtomicBool::new(false),
        samples_per_conn: args.max_samples / args.pingpong.max(1),
        cycles_per_worker: args.max_cycles / args.churn.max(1),
    });
    let (mut total, elapsed) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..args.pingpong {
            tasks.push(tokio::spawn(pingpong(i as u64, cfg.clone())));
        }
        for i in 0..args.churn {
            tasks.push(tokio::spawn(churn(i as u64, cfg.clone())));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        cfg.stop.store(true, Ordering::Relaxed);
        let elapsed = origin.elapsed().as_secs_f64();
        let mut total = Tally::new();
        for t in tasks {
            total.merge(t.await?);
        }
        anyhow::Ok((total, elapsed))
    })?;
    drop(rt);

    let (initial, reloads) = if args.reloads_stdin {
        read_reloads(origin_mono)?
    } else {
        (None, Vec::new())
    };
    let window = args.window_ms as i64 * 1000;

    // Latency around reloads: from `window` before the SIGHUP to `window`
    // after the reload completed (or after the SIGHUP, if it never did).
    let spans: Vec<(i64, i64)> = reloads
        .iter()
        .map(|r| (r.sent - window, r.done.unwrap_or(r.sent) + window))
        .collect();
    let (mut around, mut outside): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
    for &(t, lat) in &total.samples {
        let t = t as i64;
        if spans.iter().any(|&(a, b)| a <= t && t <= b) {
            around.push(lat);
        } else {
            outside.push(lat);
        }
    }

    // Tags: the variant served when a cycle started is the last completed
    // reload's (or the initial one); a reload completing, or under way by
    // the time the greeting came, may show its tag too.
    let mut records = std::mem::take(&mut total.records);
    records.sort_by_key(|c| c.start);
    let initial_tag = initial.clone().unwrap_or_default();
    let (mut stale, mut unexpected) = (0u64, 0u64);
    let mut per_reload_stale = vec![0u64; reloads.len()];
    let mut first_new: Vec<Option<i64>> = vec![None; reloads.len()];
    let mut by_tag: BTreeMap<String, u64> = BTreeMap::new();
    for c in &records {
        let (start, greeted) = (c.start as i64, c.greeted as i64);
        let tag = tag_name(c.tag);
        *by_tag.entry(tag.clone()).or_default() += 1;
        for (k, r) in reloads.iter().enumerate() {
            if first_new[k].is_none() && start >= r.sent && tag == r.tag {
                first_new[k] = Some(greeted - r.sent);
            }
        }
        if initial.is_none() {
            continue;
        }
        let last_done = reloads
            .iter()
            .enumerate()
            .filter(|(_, r)| r.ok() && r.done.unwrap() <= start)
            .max_by_key(|(_, r)| r.done.unwrap());
        let served = last_done.map_or(&initial_tag, |(_, r)| &r.tag);
        let in_flight = reloads
            .iter()
            .any(|r| r.ok() && r.sent <= greeted && r.done.unwrap() > start && r.tag == tag);
        if tag == *served || in_flight {
            continue;
        }
        // The variant before the last completed reload: stale; anything
        // else: unexpected.
        match last_done {
            Some((k, _))
                if reloads[..k]
                    .iter()
                    .rev()
                    .find(|r| r.ok())
                    .map_or(tag == initial_tag, |p| p.tag == tag) =>
            {
                stale += 1;
                per_reload_stale[k] += 1;
            }
            _ => unexpected += 1,
        }
    }

    let mut pp_tags: BTreeMap<String, u64> = BTreeMap::new();
    for (t, n) in &total.pingpong_tags {
        *pp_tags.entry(tag_name(*t)).or_default() += n;
    }
    let map_json = |m: &BTreeMap<String, u64>| {
        let f: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}: {v}", json_str(k)))
            .collect();
        format!("{{{}}}", f.join(", "))
    };
    let failures: Vec<String> = FAIL_NAMES
        .iter()
        .zip(total.failures)
        .map(|(n, v)| format!("\"{n}\": {v}"))
        .collect();
    let failed: u64 = total.failures.iter().sum();
    let h = &total.hist;
    let reload_json: Vec<String> = reloads
        .iter()
        .enumerate()
        .map(|(k, r)| {
            format!(
                "{{\"k\": {}, \"tag\": {}, \"outcome\": {}, \"reload_ms\": {}, \"first_new_tag_ms\": {}, \"stale_after\": {}}}",
                k + 1,
                json_str(&r.tag),
                json_str(&r.outcome),
                r.done.map_or("null".to_string(), |d| ms(d - r.sent)),
                first_new[k].map_or("null".to_string(), ms),
                per_reload_stale[k]
            )
        })
        .collect();
    let mut out = String::from("{\n");
    let mut field = |k: &str, v: String| out.push_str(&format!("  \"{k}\": {v},\n"));
    field(
        "settings",
        format!(
            "{{\"pingpong\": {}, \"churn\": {}, \"size\": {}, \"duration_s\": {}, \"op_timeout_s\": {}, \"window_ms\": {}, \"threads\": {}}}",
            args.pingpong,
            args.churn,
            args.size,
            args.duration,
            args.op_timeout,
            args.window_ms,
            args.threads
        ),
    );
    field("elapsed_s", format!("{elapsed:.3}"));
    field("connections", total.connections.to_string());
    field("failed_connections", failed.to_string());
    field("failures", format!("{{{}}}", failures.join(", ")));
    field("round_trips", total.round_trips.to_string());
    field("cycles", total.cycles.to_string());
    field("bytes_sent", total.bytes_sent.to_string());
    field("bytes_echoed", total.bytes_echoed.to_string());
    field("bytes_lost", total.bytes_lost.to_string());
    field("corrupted_replies", total.corrupted_replies.to_string());
    field("corrupted_bytes", total.corrupted_bytes.to_string());
    field(
        "latency",
        format!(
            "{{\"round_trips\": {}, \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ),
    );
    field(
        "latency_around_reloads",
        format!("{{{}}}", pct_json(&mut around)),
    );
    field(
        "latency_outside_reloads",
        format!("{{{}}}", pct_json(&mut outside)),
    );
    field(
        "latency_samples",
        format!(
            "{{\"kept\": {}, \"seen\": {}}}",
            total.samples.len(),
            total.samples_seen
        ),
    );
    field(
        "tags",
        format!(
            "{{\"initial\": {}, \"checked\": {}, \"unchecked\": {}, \"stale\": {stale}, \"unexpected\": {unexpected}, \"churn_by_tag\": {}, \"pingpong_by_tag\": {}}}",
            initial.as_deref().map_or("null".to_string(), json_str),
            if initial.is_some() { records.len() } else { 0 },
            total.records_dropped,
            map_json(&by_tag),
            map_json(&pp_tags)
        ),
    );
    out.push_str(&format!("  \"reloads\": [{}]\n}}", reload_json.join(", ")));
    println!("{out}");
    Ok(())
}
