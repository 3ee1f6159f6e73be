//! `plugins.toml`: the schema, its defaults, and loading a file into a
//! validated [`Config`] whose errors name the file, line, column and key.
//!
//! The file maps plugin names to components, ports to listening plugins and
//! remote addresses to connecting plugins. Parsing walks toml's spanned
//! document one table at a time (`tables.rs`) through a small checker
//! (`check.rs`, with `show.rs` for how values appear in messages) that
//! records a located error and carries on with a default,
//! so every problem in the file is reported at once; only a TOML syntax
//! error stops early. This module owns the public types, the named
//! defaults and the duration and size syntax.

mod check;
mod limits;
mod proxy;
pub use proxy::{ProxyPolicy, ProxyVersions};
mod show;
mod tables;

pub use tables::is_identifier as is_plugin_name;
mod tls;

pub use limits::{
    DEFAULT_MAX_OUTBOUND, DEFAULT_MAX_RESOURCES, DEFAULT_MAX_TIMERS, Limits, MAX_OUTBOUND,
    MAX_TIMERS, Sharing,
};
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[host] shutdown-timeout` when not set.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// `[host] max-queued-output` when not set.
pub const DEFAULT_MAX_QUEUED_OUTPUT: usize = 256 << 20;
/// The smallest `[host] max-queued-output`.
pub const MIN_MAX_QUEUED_OUTPUT: u64 = 1 << 20;
/// The most reactor threads `[host] threads` may ask for.
pub const MAX_THREADS: usize = 1024;
/// The most instances `[host] max-instances` or a plugin's
/// `max-instances` may ask for.
pub const MAX_INSTANCES: u32 = 1_000_000;
/// `shared-instances` when not set: one instance, like one Twisted process.
pub const DEFAULT_SHARED_INSTANCES: u32 = 1;
/// The most `shared-instances` one plugin may have.
pub const MAX_SHARED_INSTANCES: u32 = 1024;
/// The smallest `memory`: one wasm page.
pub const MIN_MEMORY: u64 = 64 << 10;
/// The largest `memory`: a whole 32-bit linear memory.
pub const MAX_MEMORY: u64 = 4 << 30;
/// The shortest `cpu` budget per callback.
pub const MIN_CPU: Duration = Duration::from_millis(1);
/// The bounds of `max-resources`.
pub const MIN_RESOURCES: usize = 16;
/// The largest `max-resources`.
pub const MAX_RESOURCES: usize = 1_000_000;
/// The largest component file accepted.
pub const MAX_COMPONENT_SIZE: u64 = 256 << 20;
/// The longest plugin name.
pub const MAX_PLUGIN_NAME: usize = 64;
/// `[[listen]] interface` when not set: loopback only.
pub const DEFAULT_INTERFACE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `[[listen]] max-connections` when not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `[[listen]] backlog` when not set.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// `[[connect]] timeout` when not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest `[[listen]] idle-timeout`.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_millis(10);
/// `[[connect]] initial-delay` when not set: Twisted's
/// `ReconnectingClientFactory.initialDelay`.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// `[[connect]] max-delay` when not set (`maxDelay`, an hour).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);
/// `[[connect]] factor` when not set (`factor`, e).
pub const DEFAULT_FACTOR: f64 = std::f64::consts::E;
/// `[[connect]] jitter` when not set (`jitter`).
pub const DEFAULT_JITTER: f64 = 0.119_626_565_82;

/// A problem in a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{at}: {message}", file = file.display(), at = at(*line, *column, key))]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The dotted key, such as `listen[0].port`, when known.
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

fn at(line: Option<usize>, column: Option<usize>, key: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    if let Some(k) = key {
        s.push_str(&format!(": {k}"));
    }
    s
}

/// All the problems found in one config file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A validated `plugins.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// Reactor-wide settings.
    pub host: HostSettings,
    /// Plugins by name, in name order.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Listeners, in file order.
    pub listen: Vec<ListenConfig>,
    /// Connectors, in file order.
    pub connect: Vec<ConnectConfig>,
    /// Line and column of each key in the file, by dotted key (such as
    /// `host.max-instances`), for errors found after parsing.
    pub places: BTreeMap<String, (usize, usize)>,
}

impl Config {
    /// `file:line:col: key` for a key of this config (`file: key` if the
    /// key is not in the file, for a default), to start an error message.
    pub fn at(&self, key: &str) -> String {
        match self.places.get(key) {
            Some((line, col)) => format!("{}:{line}:{col}: {key}", self.path.display()),
            None => format!("{}: {key}", self.path.display()),
        }
    }
}

/// `[host]`: settings for the whole reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// How long a graceful shutdown may take before the host exits anyway.
    pub shutdown_timeout: Duration,
    /// `drain-timeout`: after a stop, how long open connections are left
    /// to end on their own (the listeners already closed) before they are
    /// told to lose-connection. Zero by default: told at once. HAProxy's
    /// soft stop and Envoy's drain time play this part for them.
    pub drain_timeout: Duration,
    /// How many component instances may be alive at once, across plugins:
    /// the size of the pooling allocator. Each live connection of a
    /// per-connection plugin holds one. `None`: not set in the file; the
    /// runtime picks a default that fits the system.
    pub max_instances: Option<u32>,
    /// How many reactor threads run callbacks and drive the sockets (tokio
    /// worker threads). `None`: one per CPU. Twisted's reactor is one
    /// thread; `threads = 1` is the same model.
    pub threads: Option<usize>,
    /// The most unsent output held across all connections, in bytes.
    pub max_queued_output: usize,
    /// `metrics`: the address `/metrics` (Prometheus), `/healthz` and
    /// `/readyz` are served on; none by default.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_timeout: Duration::ZERO,
            max_instances: None,
            threads: None,
            max_queued_output: DEFAULT_MAX_QUEUED_OUTPUT,
            metrics: None,
        }
    }
}

/// `[plugins.NAME]`: one component and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's name, the key under `[plugins]`: an identifier
    /// (`[A-Za-z][A-Za-z0-9_-]*`, at most 64 characters).
    pub name: String,
    /// The component file, resolved against the config file's directory.
    pub component: PathBuf,
    /// Resource limits for each instance.
    pub limits: Limits,
    /// Whether the guest sees the real wall and monotonic clocks. Without
    /// this grant both are frozen at zero.
    pub clock: bool,
    /// `instance`: a fresh instance per connection (the default), or
    /// shared instances (`shared-instances` of them, default one: one
    /// shared state, as in one Twisted process; more instances are a
    /// performance choice).
    pub sharing: Sharing,
    /// `max-instances`: the most live instances this plugin may hold
    /// (per-connection plugins only). `None`: no limit of its own.
    pub max_instances: Option<u32>,
    /// `connect`: where its guest may open connections
    /// (`reactor.connect-tcp`); none by default.
    pub connect: crate::grants::Grants,
    /// `env`: environment variables its guest sees (WASI's environment);
    /// none by default.
    pub env: Vec<(String, String)>,
    /// Line of the plugin's table, for later errors (such as a component
    /// that fails to load).
    pub line: usize,
}

/// `[[listen]]`: Twisted's `reactor.listenTCP(port, factory, interface=...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// The plugin whose server-factory builds each connection's protocol.
    pub plugin: String,
    /// The local address to bind: a unicast address, IPv4-mapped IPv6
    /// addresses stored as IPv4.
    pub interface: IpAddr,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// Connections past this are closed at once.
    pub max_connections: usize,
    /// The listen backlog.
    pub backlog: u32,
    /// A connection with no bytes in either direction for this long is
    /// closed cleanly (`idle-timeout`); none by default.
    pub idle_timeout: Option<Duration>,
    /// `tls`: the checked certificates and settings, built into the rustls
    /// config that serves them; none for plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::ServerSide>>,
    /// `reuse-port`: bind with `SO_REUSEPORT`, so that several processes
    /// (or an old and a new binary) serve one port and the kernel spreads
    /// connections among them.
    pub reuse_port: bool,
    /// `proxy-protocol` and `proxy-from`: each connection opens with a
    /// PROXY protocol header naming the original client; none by default.
    pub proxy: Option<std::sync::Arc<ProxyPolicy>>,
    /// Line of the entry.
    pub line: usize,
}

/// `[[connect]]`: Twisted's `reactor.connectTCP(host, port, factory, timeout)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectConfig {
    /// The plugin whose client-factory is used.
    pub plugin: String,
    /// The remote host: a name or an address.
    pub host: String,
    /// The remote port.
    pub port: u16,
    /// The connect timeout, covering name resolution and the TCP handshake.
    pub timeout: Duration,
    /// Retry after failures and losses, as Twisted's
    /// `ReconnectingClientFactory` (`reconnect = true`).
    pub reconnect: Option<Reconnect>,
    /// `tls`: the checked trust roots and settings, built into the rustls
    /// config; none for plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::ClientSide>>,
    /// Line of the entry.
    pub line: usize,
}

/// `[[connect]] reconnect = true` and its backoff: Twisted's
/// `ReconnectingClientFactory`. After each failure or loss the delay grows
/// by `factor` up to `max-delay`, with normal jitter of `jitter` times the
/// delay; a connection made resets it to `initial-delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    /// `initial-delay`: the delay the backoff starts from (the first retry
    /// waits `initial-delay` × `factor`, as in Twisted).
    pub initial_delay: Duration,
    /// `max-delay`: the longest wait between attempts.
    pub max_delay: Duration,
    /// `factor`: how much the delay grows per attempt.
    pub factor: f64,
    /// `jitter`: the standard deviation of a delay, as a fraction of it.
    pub jitter: f64,
    /// `max-retries`: attempts after the first before giving up; none means
    /// forever.
    pub max_retries: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            initial_delay: DEFAULT_INITIAL_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            factor: DEFAULT_FACTOR,
            jitter: DEFAULT_JITTER,
            max_retries: None,
        }
    }
}

/// Parses a duration such as `"5s"`, `"100ms"`, `"1.5s"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let q = show::quote(s);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {q} has no unit: write e.g. \"5s\" or \"100ms\""))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {q} does not start with a number"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "us" | "µs" => n / 1_000_000.0,
        other => {
            return Err(format!(
                "duration {q} has unknown unit {}: use us, ms, s, m or h",
                show::quote(other)
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration {q} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size such as `"16MiB"`, `"64KiB"`, `"1GiB"`, `"4096"` or `"1MB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let q = show::quote(s);
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {q} does not start with a whole number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "size {q} has unknown unit {}: use B, KiB, MiB or GiB",
                show::quote(other)
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {q} is too large"))
}

impl Config {
    /// Reads and validates a config file. Component paths are resolved
    /// against the file's directory and must be regular files; the
    /// components are not loaded here (the runtime does that).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                key: None,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text as if read from `path`: every problem is
    /// reported, in file order, except after a TOML syntax error (which
    /// is reported alone).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut checker = check::Checker::new(path, text);
        let mut config = tables::parse_document(&mut checker, path, text);
        if let Some(c) = &mut config {
            c.places = std::mem::take(&mut checker.places);
        }
        let errors = checker.finish();
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }
}
