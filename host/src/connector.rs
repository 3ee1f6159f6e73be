//! The client side: Twisted's `reactor.connectTCP(host, port, factory)`.
//!
//! One connector is one instance: its client factory hears
//! `started-connecting`, then either `client-connection-failed` (name not
//! found, refused, unreachable, timed out; no protocol is built) or
//! `build-protocol`, the protocol's whole life on [`crate::connection::run`],
//! and `client-connection-lost`. With `tls` (and no `start-tls`) the
//! handshake runs before `build-protocol`; a failed one, such as a server
//! certificate that is expired or not for `server-name`, is a
//! `client-connection-failed` saying why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::config::{ConnectConfig, Reconnect};
use crate::connection::{self, End, Options, StartTls};
use crate::runtime::GuestFault;
use crate::runtime::bindings::Reason;
use crate::shared::Instances;
use crate::shutdown::Shutdown;
use crate::stats::Traffic;
use crate::tls::{Side, TlsStats};
use crate::wire::Wire;

/// One `[[connect]]` entry's counters.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    /// Connection attempts (the first and every retry).
    pub attempts: AtomicU64,
    /// Attempts that failed (the factory heard `client-connection-failed`).
    pub failures: AtomicU64,
    /// Its TLS handshakes.
    pub tls: Arc<TlsStats>,
    /// Bytes received and sent on its connections.
    pub traffic: Arc<Traffic>,
}

/// How a connector ended.
#[derive(Debug)]
pub enum ConnectorEnd {
    /// The attempt failed; the factory heard `client-connection-failed`.
    Failed(String),
    /// The connection was made and later lost with this reason.
    Lost(Reason),
    /// The guest faulted.
    Fault(GuestFault),
    /// Shutdown arrived before the connection was made.
    Cancelled,
}

/// Runs one `[[connect]]` entry to its end: one attempt, or with
/// `reconnect` attempts until `max-retries` is passed, shutdown, or
/// `retired` (a reload removed the entry: the connection it has goes on to
/// its end, and it makes no more). Counted in `stats`.
pub async fn run(
    cfg: ConnectConfig,
    instances: Instances,
    shutdown: Shutdown,
    retired: Shutdown,
    stats: Arc<ConnectorStats>,
) -> ConnectorEnd {
    let Some(policy) = cfg.reconnect.clone() else {
        return attempt(&cfg, &instances, &shutdown, &stats).await.0;
    };
    let name = instances.plugin().name.clone();
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut backoff = Backoff::new(policy, StdRng::from_os_rng());
    loop {
        let (end, made) = attempt(&cfg, &instances, &shutdown, &stats).await;
        if matches!(end, ConnectorEnd::Cancelled) || shutdown.is_shutdown() || retired.is_shutdown()
        {
            return end;
        }
        if made {
            backoff.reset();
        }
        let Some(delay) = backoff.next_delay() else {
            tracing::warn!(plugin = %name, %target, retries = backoff.retries - 1, "giving up reconnecting: max-retries reached");
            return end;
        };
        tracing::info!(plugin = %name, %target, delay_ms = delay.as_millis() as u64, retry = backoff.retries, "reconnecting after a delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.recv() => return ConnectorEnd::Cancelled,
            () = retired.recv() => return ConnectorEnd::Cancelled,
        }
    }
}

/// Twisted's `ReconnectingClientFactory` delay: after each failure or loss
/// the delay is multiplied by `factor` (up to `max-delay`), then drawn from
/// a normal distribution around itself with `jitter` × itself as standard
/// deviation; [`Backoff::reset`] (a connection was made) starts over from
/// `initial-delay`.
#[derive(Debug)]
pub struct Backoff<R> {
    policy: Reconnect,
    /// The current delay, in seconds.
    delay: f64,
    /// Retries since the last reset.
    retries: u32,
    rng: R,
}

impl<R: rand::Rng> Backoff<R> {
    /// A backoff at `initial-delay`, drawing jitter from `rng`.
    pub fn new(policy: Reconnect, rng: R) -> Backoff<R> {
        Backoff {
            delay: policy.initial_delay.as_secs_f64(),
            policy,
            retries: 0,
            rng,
        }
    }

    /// A connection was made: Twisted's `resetDelay`.
    pub fn reset(&mut self) {
        self.delay = self.policy.initial_delay.as_secs_f64();
        self.retries = 0;
    }

    /// How long to wait before the next attempt, or none once `max-retries`
    /// retries have been made since the last reset (Twisted's `retry`).
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.retries += 1;
        if self.policy.max_retries.is_some_and(|m| self.retries > m) {
            return None;
        }
        self.delay = (self.delay * self.policy.factor).min(self.policy.max_delay.as_secs_f64());
        if self.policy.jitter > 0.0
            && let Ok(normal) = Normal::new(self.delay, self.delay * self.policy.jitter)
        {
            self.delay = normal.sample(&mut self.rng);
        }
        // Twisted lets jitter take a delay past the maximum; never below 0.
        Some(Duration::from_secs_f64(self.delay.max(0.0)))
    }
}

/// One attempt, to its end; also whether a connection was made.
async fn attempt(
    cfg: &ConnectConfig,
    instances: &Instances,
    shutdown: &Shutdown,
    stats: &ConnectorStats,
) -> (ConnectorEnd, bool) {
    let end = |e| (e, false);
    let tls_stats = &stats.tls;
    stats.attempts.fetch_add(1, Ordering::Relaxed);
    let name = instances.plugin().name.clone();
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut session = match instances.session() {
        Ok(s) => s,
        Err(fault) => {
            tracing::error!(plugin = %name, %target, %fault, "cannot instantiate guest for connector");
            return end(ConnectorEnd::Fault(fault));
        }
    };
    if let Err(fault) = session.started_connecting(&cfg.host, cfg.port) {
        tracing::warn!(plugin = %name, %target, %fault, "guest faulted in started-connecting");
        return end(ConnectorEnd::Fault(fault));
    }
    let attempt = tokio::time::timeout(cfg.timeout, connect(&cfg.host, cfg.port));
    let result = tokio::select! {
        r = attempt => match r {
            Ok(r) => r,
            Err(_) => Err(format!("connecting to {target} timed out after {:?}", cfg.timeout)),
        },
        () = shutdown.recv() => return end(ConnectorEnd::Cancelled),
    };
    let result = match result {
        Ok(stream) => {
            let wire = Arc::new(Wire::counted(stream, stats.traffic.clone()));
            let _ = wire.tcp().set_nodelay(true);
            match cfg.tls.as_ref().filter(|t| !t.start_tls) {
                Some(side) => {
                    let handshake = wire.handshake(Side::Client(side), Some(tls_stats));
                    let r = tokio::select! {
                        r = handshake => r,
                        () = shutdown.recv() => return end(ConnectorEnd::Cancelled),
                    };
                    r.map(|()| wire).map_err(|e| format!("{target}: {e}"))
                }
                None => Ok(wire),
            }
        }
        Err(e) => Err(e),
    };
    let stream = match result {
        Ok(s) => s,
        Err(msg) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(plugin = %name, %target, error = %msg, "connection failed");
            if let Err(fault) = session.client_connection_failed(&Reason::Failed(msg.clone())) {
                tracing::warn!(plugin = %name, %target, %fault, "guest faulted in client-connection-failed");
                return end(ConnectorEnd::Fault(fault));
            }
            return end(ConnectorEnd::Failed(msg));
        }
    };
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::debug!(plugin = %name, %peer, "connected");
    let options = Options {
        idle_timeout: None,
        tls_stats: Some(tls_stats.clone()),
        start_tls: cfg
            .tls
            .clone()
            .filter(|t| t.start_tls)
            .map(StartTls::Client),
    };
    let reason = match session.build_client_protocol(peer) {
        Ok(true) => match connection::run(stream, &mut session, shutdown, &options).await {
            End::Closed(reason) => reason,
            End::Fault(fault) => {
                tracing::warn!(plugin = %name, %peer, %fault, "guest faulted; connection aborted");
                return (ConnectorEnd::Fault(fault), true);
            }
        },
        Ok(false) => {
            // The Rust SDK exports a client factory that declines when the
            // guest registered none: a server-only component used in a
            // [[connect]] entry lands here.
            tracing::warn!(plugin = %name, %peer, "the client factory built no protocol, so the connection is closed: does this component implement a client? (a Rust guest needs `export!(client: ...)`)");
            drop(stream);
            Reason::Done
        }
        Err(fault) => {
            tracing::warn!(plugin = %name, %peer, %fault, "guest faulted in build-protocol");
            return (ConnectorEnd::Fault(fault), true);
        }
    };
    if let Err(fault) = session.client_connection_lost(&reason) {
        tracing::warn!(plugin = %name, %peer, %fault, "guest faulted in client-connection-lost");
        return (ConnectorEnd::Fault(fault), true);
    }
    (ConnectorEnd::Lost(reason), true)
}

/// Resolves `host` and tries each address in turn.
async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    let mut last = format!("{host:?} resolved to no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}
