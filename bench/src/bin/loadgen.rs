//! The load generator: four modes against any TCP echo server.
//!
//! - `pingpong`: N connections, each a closed loop of S-byte messages, for D
//!   seconds. Reports round trips per second and latency percentiles. With
//!   `--rate R`, paced instead: R round trips per second in all, each
//!   connection sending on its own schedule (phases spread), one message in
//!   flight at most, a tick missed while waiting skipped (so `rate` shows
//!   what was achieved; `offered=R` is added).
//! - `bulk`: N connections each stream S-byte writes while reading the echo
//!   back, for D seconds. Reports echoed bytes per second.
//! - `connrate`: N workers each loop connect, one S-byte echo, close, for D
//!   seconds. Reports connections per second.
//! - `idle`: open N connections, one echo each, hold them, print the server's
//!   RSS (from /proc/PID/status) before and after and, with `--hold`, its
//!   CPU while they sit idle; then close.
//!
//! With `--tls`, every mode speaks TLS (tokio-rustls, `--provider
//! aws-lc-rs|ring`), trusting the `--ca` certificates for `--server-name`.
//! The client keeps no sessions, so every handshake is a full one: `connrate`
//! then measures full handshakes per second. The plaintext path is the same
//! code instantiated for a bare `TcpStream` (the `Dialer` trait; its `flush`
//! is a no-op), so it costs what it did.
//!
//! Output is one line of `key=value` pairs so scripts can parse it; with
//! `--tls` it ends with what the server negotiated on a probe connection
//! made first (`tls=TLSv1_3 suite=TLS13_AES_256_GCM_SHA384 kx=X25519`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, aws_lc_rs, ring};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Pingpong,
    Bulk,
    Connrate,
    Idle,
}

/// The rustls crypto provider (with `--tls`).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Provider {
    AwsLcRs,
    Ring,
}

impl Provider {
    /// The provider with its key exchange limited to X25519, so every server
    /// negotiates the same one in one round trip (aws-lc-rs also offers
    /// X25519MLKEM768, which an OpenSSL 3.5+ server, Twisted's, prefers and
    /// asks for with a HelloRetryRequest).
    fn get(self) -> CryptoProvider {
        let (provider, x25519) = match self {
            Provider::AwsLcRs => (aws_lc_rs::default_provider(), aws_lc_rs::kx_group::X25519),
            Provider::Ring => (ring::default_provider(), ring::kx_group::X25519),
        };
        CryptoProvider {
            kx_groups: vec![x25519],
            ..provider
        }
    }
}

/// Drive an echo server and report throughput.
#[derive(Parser, Debug)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The server.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// Connections (or workers for connrate).
    #[arg(long, short = 'c', default_value_t = 100)]
    conns: usize,
    /// Message or write size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Seconds to run (not for idle).
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// The server's pid, for the idle mode's RSS figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Pingpong: round trips per second to offer in all (paced; the ticks a
    /// connection misses while it waits for a slow reply are skipped). 0: a
    /// closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Idle mode: seconds to keep holding the connections after reporting.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Loadgen worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Speak TLS: a full handshake on every connection.
    #[arg(long)]
    tls: bool,
    /// With --tls: the CA certificate(s) to trust, PEM.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry (a DNS name or
    /// an IP address; sent as SNI when a DNS name).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// With --tls: the client's rustls crypto provider (its key exchange
    /// limited to X25519).
    #[arg(long, value_enum, default_value_t = Provider::AwsLcRs)]
    provider: Provider,
    /// Connrate: open every connection with a PROXY protocol header (as
    /// HAProxy's send-proxy / send-proxy-v2 would), in a write of its own.
    #[arg(long, value_enum)]
    proxy_header: Option<ProxyHeader>,
    /// Bulk: stop once this many bytes were echoed (in all), or at
    /// `--duration`, whichever comes first; 0: run for the duration.
    #[arg(long, default_value_t = 0)]
    bytes: u64,
}

/// The PROXY protocol header versions `--proxy-header` sends.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProxyHeader {
    V1,
    V2,
}

impl ProxyHeader {
    /// A header naming 203.0.113.7:51000 -> 192.0.2.1:443, built by hand
    /// from the spec (not with the parser under test).
    fn bytes(self) -> Vec<u8> {
        match self {
            ProxyHeader::V1 => b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n".to_vec(),
            ProxyHeader::V2 => {
                let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
                h.extend_from_slice(&[203, 0, 113, 7, 192, 0, 2, 1]);
                h.extend_from_slice(&51000u16.to_be_bytes());
                h.extend_from_slice(&443u16.to_be_bytes());
                h
            }
        }
    }
}

/// How a connection to the server is made and split: plain TCP or TLS. The
/// modes are generic over it, so the plaintext path is the bare `TcpStream`
/// code.
trait Dialer: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Connect (and, for TLS, complete the handshake).
    fn dial(&self, addr: SocketAddr) -> impl Future<Output = anyhow::Result<Self::Stream>> + Send;
    /// Independent read and write halves, for the bulk mode.
    fn split(s: Self::Stream) -> (Self::Read, Self::Write);
    /// The TCP connection underneath, for socket options.
    fn tcp(s: &Self::Stream) -> &TcpStream;
}

/// Plain TCP.
#[derive(Clone, Copy)]
struct Plain;

impl Dialer for Plain {
    type Stream = TcpStream;
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    async fn dial(&self, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        connect(addr).await
    }
    fn split(s: TcpStream) -> (OwnedReadHalf, OwnedWriteHalf) {
        s.into_split()
    }
    fn tcp(s: &TcpStream) -> &TcpStream {
        s
    }
}

/// TLS over TCP (tokio-rustls), without session resumption.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let ca = args.ca.as_ref().context("--tls needs --ca PEM")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading certificates from {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(args.provider.get()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(args.server_name.clone())
            .with_context(|| format!("bad --server-name {:?}", args.server_name))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// One connection, before the measurement, for what the server
    /// negotiates: `tls=TLSv1_3 suite=TLS13_AES_256_GCM_SHA384 kx=X25519`.
    async fn probe(&self, addr: SocketAddr) -> anyhow::Result<String> {
        let mut s = self.dial(addr).await?;
        let c = s.get_ref().1;
        let unknown = || "?".to_string();
        let line = format!(
            "tls={} suite={} kx={}",
            c.protocol_version()
                .map_or_else(unknown, |v| format!("{v:?}")),
            c.negotiated_cipher_suite()
                .map_or_else(unknown, |cs| format!("{:?}", cs.suite())),
            c.negotiated_key_exchange_group()
                .map_or_else(unknown, |g| format!("{:?}", g.name())),
        );
        let _ = s.shutdown().await;
        Ok(line)
    }
}

impl Dialer for Tls {
    type Stream = TlsStream<TcpStream>;
    type Read = tokio::io::ReadHalf<Self::Stream>;
    type Write = tokio::io::WriteHalf<Self::Stream>;
    async fn dial(&self, addr: SocketAddr) -> anyhow::Result<Self::Stream> {
        let s = connect(addr).await?;
        Ok(self.connector.connect(self.name.clone(), s).await?)
    }
    fn split(s: Self::Stream) -> (Self::Read, Self::Write) {
        tokio::io::split(s)
    }
    fn tcp(s: &Self::Stream) -> &TcpStream {
        s.get_ref().0
    }
}

/// The process's user + system CPU time, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let line = if args.tls {
        let tls = Tls::new(&args)?;
        let negotiated = tls.probe(args.addr).await?;
        format!("{} {negotiated}", drive(&args, tls).await?)
    } else {
        drive(&args, Plain).await?
    };
    println!("{line}");
    Ok(())
}

async fn drive<D: Dialer>(args: &Args, dialer: D) -> anyhow::Result<String> {
    let dur = Duration::from_secs_f64(args.duration);
    match args.mode {
        Mode::Pingpong => pingpong(args, dur, dialer).await,
        Mode::Bulk => bulk(args, dur, dialer).await,
        Mode::Connrate => connrate(args, dur, dialer).await,
        Mode::Idle => idle(args, dialer).await,
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn pingpong<D: Dialer>(args: &Args, dur: Duration, dialer: D) -> anyhow::Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for _ in 0..args.conns {
        streams.push(dialer.dial(args.addr).await?);
    }
    let start = Instant::now();
    // Paced (--rate): each connection's period, its phase spread over it.
    let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.conns as f64 / args.rate));
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        let stop = stop.clone();
        let size = args.size;
        let mut pace = period.map(|p| {
            let phase = p.mul_f64(i as f64 / args.conns as f64);
            let mut iv = tokio::time::interval_at(t0 + phase, p);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            iv
        });
        tasks.push(tokio::spawn(async move {
            let msg = vec![b'p'; size];
            let mut buf = vec![0u8; size];
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut n = 0u64;
            let mut broken = false;
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = pace.as_mut() {
                    iv.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                let t = Instant::now();
                if s.write_all(&msg).await.is_err()
                    || s.flush().await.is_err()
                    || s.read_exact(&mut buf).await.is_err()
                {
                    broken = true;
                    break;
                }
                let _ = hist.record(t.elapsed().as_nanos() as u64);
                n += 1;
            }
            (n, hist, broken)
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    let mut broken = 0;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        let (n, h, b) = t.await?;
        total += n;
        broken += u64::from(b);
        hist.add(h)?;
    }
    let offered = if period.is_some() {
        format!(" offered={:.0}", args.rate)
    } else {
        String::new()
    };
    Ok(format!(
        "mode=pingpong conns={} size={} ops={total} secs={elapsed:.3} rate={:.0} p50_us={:.1} p99_us={:.1} broken={broken}{offered}",
        args.conns,
        args.size,
        total as f64 / elapsed,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0
    ))
}

async fn bulk<D: Dialer>(args: &Args, dur: Duration, dialer: D) -> anyhow::Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    // Connections that ended before the run did (reset or closed).
    let broken = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.conns {
        let s = dialer.dial(args.addr).await?;
        let (mut r, mut w) = D::split(s);
        let (stop_w, size) = (stop.clone(), args.size);
        tasks.push(tokio::spawn(async move {
            let block = vec![b'b'; size];
            while !stop_w.load(Ordering::Relaxed) {
                if w.write_all(&block).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        }));
        let (stop_r, echoed, broken) = (stop.clone(), echoed.clone(), broken.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if !stop_r.load(Ordering::Relaxed) {
                            broken.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(n) => {
                        if !stop_r.load(Ordering::Relaxed) {
                            echoed.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let base = echoed.load(Ordering::Relaxed);
    if args.bytes == 0 {
        tokio::time::sleep(dur).await;
    } else {
        while start.elapsed() < dur && echoed.load(Ordering::Relaxed) - base < args.bytes {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let bytes = echoed.load(Ordering::Relaxed) - base;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    Ok(format!(
        "mode=bulk conns={} size={} ops={} bytes={bytes} secs={elapsed:.3} rate={:.0} mib_per_s={:.1} broken={}",
        args.conns,
        args.size,
        bytes / args.size as u64,
        (bytes / args.size as u64) as f64 / elapsed,
        bytes as f64 / elapsed / (1 << 20) as f64,
        broken.load(Ordering::Relaxed)
    ))
}

async fn connrate<D: Dialer>(args: &Args, dur: Duration, dialer: D) -> anyhow::Result<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.conns {
        let (stop, errors, addr, size) = (stop.clone(), errors.clone(), args.addr, args.size);
        let dialer = dialer.clone();
        let header = args.proxy_header.map(ProxyHeader::bytes);
        tasks.push(tokio::spawn(async move {
            let msg = vec![b'c'; size];
            let mut buf = vec![0u8; size];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = async {
                    let mut s = dialer.dial(addr).await?;
                    if let Some(h) = &header {
                        s.write_all(h).await?;
                        s.flush().await?;
                    }
                    s.write_all(&msg).await?;
                    s.flush().await?;
                    s.read_exact(&mut buf).await?;
                    // Close from the client side first, so TIME_WAIT lands on
                    // the client's ephemeral ports (as real clients do), and
                    // linger 0 so a long run does not exhaust them.
                    // (With TLS, no close_notify either: a reset, as for TCP.)
                    socket2::SockRef::from(D::tcp(&s)).set_linger(Some(Duration::ZERO))?;
                    drop(s);
                    anyhow::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => n += 1,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            n
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(format!(
        "mode=connrate conns={} size={} ops={total} secs={elapsed:.3} rate={:.0} errors={}",
        args.conns,
        args.size,
        total as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    ))
}

async fn idle<D: Dialer>(args: &Args, dialer: D) -> anyhow::Result<String> {
    let pid = args.server_pid;
    let before = pid.map(rss_kib).unwrap_or(0);
    let mut held = Vec::with_capacity(args.conns);
    let msg = vec![b'i'; args.size];
    let mut buf = vec![0u8; args.size];
    let start = Instant::now();
    for _ in 0..args.conns {
        let mut s = dialer.dial(args.addr).await?;
        s.write_all(&msg).await?;
        s.flush().await?;
        s.read_exact(&mut buf).await?;
        held.push(s);
    }
    let setup = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pid.map(rss_kib).unwrap_or(0);
    let per_conn = after.saturating_sub(before) as f64 / args.conns as f64;
    // With --hold: the server's CPU while every connection sits idle, as a
    // percentage of one core.
    let cpu0 = pid.map(cpu_secs).unwrap_or(0.0);
    let held_for = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let hold_cpu_pct = if args.hold > 0.0 {
        (pid.map(cpu_secs).unwrap_or(0.0) - cpu0) * 100.0 / held_for.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let line = format!(
        "mode=idle conns={} rss_before_kib={before} rss_after_kib={after} kib_per_conn={per_conn:.2} setup_secs={setup:.3} hold_cpu_pct={hold_cpu_pct:.3}",
        args.conns
    );
    drop(held);
    Ok(line)
}
