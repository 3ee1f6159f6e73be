//! `plugins.toml`: the schema, its strict parsing, and errors that name the
//! file, line and key.
//!
//! The file maps plugin names to components, ports to listening plugins and
//! remote addresses to connecting plugins. Parsing rejects unknown keys and
//! wrong types (serde, `deny_unknown_fields`); [`Config::load`] then checks
//! what serde cannot: undefined plugin names, duplicate listeners, missing
//! component files, and the syntax of durations and sizes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::Sharing;
use crate::runtime::limits::Limits;

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

/// All the problems found in one config file.
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
}

/// `[host]`: settings for the whole reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// How long a graceful shutdown may take before the host exits anyway.
    pub shutdown_timeout: Duration,
    /// How many component instances may be alive at once, across plugins:
    /// the size of the pooling allocator. Each live connection holds one.
    /// `None`: as many as the system allows, up to 10,000.
    pub max_instances: Option<u32>,
    /// The most unsent output held across all connections.
    pub max_queued_output: usize,
    /// How many reactor threads run callbacks and drive the sockets (tokio
    /// worker threads). `None`: one per CPU. Twisted's reactor is one
    /// thread; `threads = 1` is the same model.
    pub threads: Option<usize>,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            shutdown_timeout: Duration::from_secs(5),
            max_instances: None,
            max_queued_output: 256 << 20,
            threads: None,
        }
    }
}

/// `[plugins.NAME]`: one component and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's name, the key under `[plugins]`.
    pub name: String,
    /// The component file, resolved against the config file's directory.
    pub component: PathBuf,
    /// Resource limits for each instance.
    pub limits: Limits,
    /// Whether the guest sees the real wall and monotonic clocks. Without
    /// this grant both are frozen at zero.
    pub clock: bool,
    /// `instance`: a fresh instance per connection (the default), or
    /// shared instances (`shared-instances` of them, default one per reactor thread).
    pub sharing: Sharing,
    /// Line of the plugin's table, for later errors (such as a component
    /// that fails to load).
    pub line: usize,
    /// `max-instances`: the most live instances this plugin may hold.
    pub max_instances: Option<u32>,
}

/// `[[listen]]`: Twisted's `reactor.listenTCP(port, factory, interface=...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// The plugin whose server-factory builds each connection's protocol.
    pub plugin: String,
    /// The local address to bind.
    pub interface: IpAddr,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// Connections past this are closed at once.
    pub max_connections: usize,
    /// The listen backlog.
    pub backlog: u32,
    /// Line of the entry.
    pub line: usize,
}

/// `[[connect]]`: Twisted's `reactor.connectTCP(host, port, factory, timeout)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// The plugin whose client-factory is used.
    pub plugin: String,
    /// The remote host: a name or an address.
    pub host: String,
    /// The remote port.
    pub port: u16,
    /// The connect timeout, covering name resolution and the TCP handshake.
    pub timeout: Duration,
    /// Line of the entry.
    pub line: usize,
}

// ---- the raw, serde-facing schema ------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    host: Option<Spanned<RawHost>>,
    #[serde(default)]
    plugins: BTreeMap<Spanned<String>, Spanned<RawPlugin>>,
    #[serde(default)]
    listen: Vec<Spanned<RawListen>>,
    #[serde(default)]
    connect: Vec<Spanned<RawConnect>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    shutdown_timeout: Option<Spanned<String>>,
    max_instances: Option<Spanned<i64>>,
    threads: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlugin {
    component: Spanned<String>,
    memory: Option<Spanned<SizeValue>>,
    cpu: Option<Spanned<String>>,
    high_water: Option<Spanned<SizeValue>>,
    low_water: Option<Spanned<SizeValue>>,
    max_output: Option<Spanned<SizeValue>>,
    clock: Option<bool>,
    instance: Option<Spanned<String>>,
    shared_instances: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawListen {
    port: Spanned<i64>,
    plugin: Spanned<String>,
    interface: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    backlog: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConnect {
    host: Spanned<String>,
    port: Spanned<i64>,
    plugin: Spanned<String>,
    timeout: Option<Spanned<String>>,
}

/// A size: a byte count, or a string such as `"16MiB"`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

/// Parses a duration such as `"5s"`, `"100ms"`, `"1.5s"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} has no unit: write e.g. \"5s\" or \"100ms\""))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "us" | "µs" => n / 1_000_000.0,
        other => {
            return Err(format!(
                "duration {s:?} has unknown unit {other:?}: use us, ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size such as `"16MiB"`, `"64KiB"`, `"1GiB"`, `"4096"` or `"1MB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a whole number"))?;
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
                "size {s:?} has unknown unit {other:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Turns byte offsets into 1-based lines and columns.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
        (line, col)
    }

    /// The dotted key at `offset`, worked out from the table headers above
    /// it (`[[listen]]` → `listen[N]`) and the `key =` on its line. Used for
    /// errors serde reports with only a span.
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut table = String::new();
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        for line in self.text[..line_start]
            .lines()
            .chain(self.text[line_start..].lines().take(1))
        {
            let t = line.trim();
            if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
                let name = name.trim().to_string();
                let n = counts
                    .entry(name.clone())
                    .and_modify(|n| *n += 1)
                    .or_insert(0);
                table = format!("{name}[{n}]");
            } else if let Some(name) = t
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .filter(|n| !n.contains('['))
            {
                table = name.trim().to_string();
            }
        }
        let here = self.text[line_start..].lines().next().unwrap_or("");
        let field = here
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'));
        match (table.is_empty(), field) {
            (true, Some(f)) => f.to_string(),
            (false, Some(f)) => format!("{table}.{f}"),
            (_, None) => table,
        }
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.line_col(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        let key = key.into();
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            key: (!key.is_empty()).then_some(key),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file. Component paths are resolved
    /// against the file's directory and must exist; the components are not
    /// loaded here (see [`crate::runtime::Runtime::load`]).
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

    /// Validates config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let loc = Locator { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| loc.key_at(s.start)).unwrap_or_default();
            ConfigErrors(vec![loc.error(
                e.span(),
                key,
                e.message().trim_end().to_string(),
            )])
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut errors = Vec::new();

        // [host]
        let mut host = HostSettings::default();
        if let Some(raw_host) = raw.host {
            let h = raw_host.into_inner();
            if let Some(t) = h.shutdown_timeout {
                match parse_duration(t.get_ref()) {
                    Ok(d) => host.shutdown_timeout = d,
                    Err(m) => errors.push(loc.error(Some(t.span()), "host.shutdown-timeout", m)),
                }
            }
            if let Some(n) = h.max_instances {
                match u32::try_from(*n.get_ref()) {
                    Ok(v) if v > 0 => host.max_instances = Some(v),
                    _ => errors.push(loc.error(
                        Some(n.span()),
                        "host.max-instances",
                        format!("must be between 1 and {}, got {}", u32::MAX, n.get_ref()),
                    )),
                }
            }
            if let Some(n) = h.threads {
                match usize::try_from(*n.get_ref()) {
                    Ok(v) if (1..=1024).contains(&v) => host.threads = Some(v),
                    _ => errors.push(loc.error(
                        Some(n.span()),
                        "host.threads",
                        format!("must be between 1 and 1024, got {}", n.get_ref()),
                    )),
                }
            }
        }

        // [plugins.NAME]
        let mut plugins = BTreeMap::new();
        for (name, plugin) in raw.plugins {
            let key = format!("plugins.{}", name.get_ref());
            let line = loc.line(name.span());
            let p = plugin.into_inner();
            let component = base.join(p.component.get_ref());
            if p.component.get_ref().is_empty() {
                errors.push(loc.error(
                    Some(p.component.span()),
                    format!("{key}.component"),
                    "is empty: give the path of a .wasm component",
                ));
            } else if !component.is_file() {
                errors.push(loc.error(
                    Some(p.component.span()),
                    format!("{key}.component"),
                    format!(
                        "component file {} does not exist (paths are relative to the config file)",
                        component.display()
                    ),
                ));
            }
            let mut limits = Limits::default();
            let size = |v: &Option<Spanned<SizeValue>>,
                        field: &str,
                        errors: &mut Vec<ConfigError>|
             -> Option<u64> {
                let v = v.as_ref()?;
                let r = match v.get_ref() {
                    SizeValue::Bytes(n) => {
                        u64::try_from(*n).map_err(|_| format!("size {n} is negative"))
                    }
                    SizeValue::Text(s) => parse_size(s),
                };
                match r {
                    Ok(0) => {
                        errors.push(loc.error(
                            Some(v.span()),
                            format!("{key}.{field}"),
                            "must be greater than zero",
                        ));
                        None
                    }
                    Ok(n) => Some(n),
                    Err(m) => {
                        errors.push(loc.error(Some(v.span()), format!("{key}.{field}"), m));
                        None
                    }
                }
            };
            if let Some(m) = size(&p.memory, "memory", &mut errors) {
                if m > 4 << 30 {
                    errors.push(loc.error(
                        p.memory.as_ref().map(|s| s.span()),
                        format!("{key}.memory"),
                        "must be at most 4GiB (a 32-bit linear memory)",
                    ));
                } else {
                    limits.memory = m as usize;
                }
            }
            if let Some(h) = size(&p.high_water, "high-water", &mut errors) {
                limits.high_water = h as usize;
                limits.low_water = limits.low_water.min(limits.high_water / 2);
            }
            if let Some(l) = size(&p.low_water, "low-water", &mut errors) {
                limits.low_water = l as usize;
            }
            if let Some(m) = size(&p.max_output, "max-output", &mut errors) {
                limits.max_output = m as usize;
            }
            if limits.max_output < limits.high_water {
                errors.push(
                    loc.error(
                        p.max_output
                            .as_ref()
                            .or(p.high_water.as_ref())
                            .map(|s| s.span()),
                        format!("{key}.max-output"),
                        format!(
                            "max-output ({}) must be at least high-water ({})",
                            limits.max_output, limits.high_water
                        ),
                    ),
                );
            }
            if limits.low_water >= limits.high_water {
                errors.push(
                    loc.error(
                        p.low_water
                            .as_ref()
                            .or(p.high_water.as_ref())
                            .map(|s| s.span()),
                        format!("{key}.low-water"),
                        format!(
                            "low-water ({}) must be below high-water ({})",
                            limits.low_water, limits.high_water
                        ),
                    ),
                );
            }
            if let Some(c) = &p.cpu {
                match parse_duration(c.get_ref()) {
                    Ok(d) if d >= Duration::from_millis(1) => limits.cpu = d,
                    Ok(_) => errors.push(loc.error(
                        Some(c.span()),
                        format!("{key}.cpu"),
                        "must be at least 1ms",
                    )),
                    Err(m) => errors.push(loc.error(Some(c.span()), format!("{key}.cpu"), m)),
                }
            }
            let shared_instances = match &p.shared_instances {
                // One per reactor thread.
                None => host.threads.map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                    |t| t as u32,
                ),
                Some(v) => match u32::try_from(*v.get_ref()) {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => {
                        errors.push(loc.error(
                            Some(v.span()),
                            format!("{key}.shared-instances"),
                            "must be between 1 and 1024",
                        ));
                        1
                    }
                },
            };
            let sharing = match p.instance.as_ref().map(|i| (i, i.get_ref().as_str())) {
                None | Some((_, "per-connection")) => {
                    if let Some(v) = &p.shared_instances {
                        errors.push(loc.error(
                            Some(v.span()),
                            format!("{key}.shared-instances"),
                            "only applies with instance = \"shared\"",
                        ));
                    }
                    Sharing::PerConnection
                }
                Some((_, "shared")) => Sharing::Shared(shared_instances),
                Some((i, other)) => {
                    errors.push(loc.error(
                        Some(i.span()),
                        format!("{key}.instance"),
                        format!("must be \"per-connection\" or \"shared\", not {other:?}"),
                    ));
                    Sharing::PerConnection
                }
            };
            plugins.insert(
                name.get_ref().clone(),
                PluginConfig {
                    name: name.into_inner(),
                    component,
                    limits,
                    clock: p.clock.unwrap_or(false),
                    sharing,
                    line,
                    max_instances: None,
                },
            );
        }

        let plugin_ref = |p: &Spanned<String>, key: String, errors: &mut Vec<ConfigError>| {
            if !plugins.contains_key(p.get_ref()) {
                let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
                errors.push(loc.error(
                    Some(p.span()),
                    key,
                    if known.is_empty() {
                        format!(
                            "plugin {:?} is not defined: add a [plugins.{}] table",
                            p.get_ref(),
                            p.get_ref()
                        )
                    } else {
                        format!(
                            "plugin {:?} is not defined (defined: {})",
                            p.get_ref(),
                            known.join(", ")
                        )
                    },
                ));
            }
        };
        let port = |p: &Spanned<i64>, key: String, errors: &mut Vec<ConfigError>| -> u16 {
            match u16::try_from(*p.get_ref()) {
                Ok(v) => v,
                Err(_) => {
                    errors.push(loc.error(
                        Some(p.span()),
                        key,
                        format!("port must be between 0 and 65535, got {}", p.get_ref()),
                    ));
                    0
                }
            }
        };

        // [[listen]]
        let mut listen: Vec<ListenConfig> = Vec::new();
        let mut seen: Vec<(IpAddr, u16, usize)> = Vec::new();
        for (i, l) in raw.listen.into_iter().enumerate() {
            let key = format!("listen[{i}]");
            let line = loc.line(l.span());
            let l = l.into_inner();
            plugin_ref(&l.plugin, format!("{key}.plugin"), &mut errors);
            let port_v = port(&l.port, format!("{key}.port"), &mut errors);
            let interface = match &l.interface {
                None => IpAddr::from([127, 0, 0, 1]),
                Some(s) => match s.get_ref().parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        errors.push(loc.error(
                            Some(s.span()),
                            format!("{key}.interface"),
                            format!("{:?} is not an IP address: use \"127.0.0.1\", \"::1\", \"0.0.0.0\" or \"::\"", s.get_ref()),
                        ));
                        IpAddr::from([127, 0, 0, 1])
                    }
                },
            };
            if port_v != 0 {
                let clash = seen.iter().find(|(ip, p, _)| {
                    *p == port_v
                        && (*ip == interface || ip.is_unspecified() || interface.is_unspecified())
                });
                if let Some((_, _, other)) = clash {
                    errors.push(loc.error(
                        Some(l.port.span()),
                        format!("{key}.port"),
                        format!("port {port_v} is already used by the listener on line {other}"),
                    ));
                }
                seen.push((interface, port_v, line));
            }
            let max_connections = match &l.max_connections {
                None => 10_000,
                Some(n) => match usize::try_from(*n.get_ref()) {
                    Ok(v) if v > 0 => v,
                    _ => {
                        errors.push(loc.error(
                            Some(n.span()),
                            format!("{key}.max-connections"),
                            format!("must be at least 1, got {}", n.get_ref()),
                        ));
                        1
                    }
                },
            };
            let backlog = match &l.backlog {
                None => 1024,
                Some(n) => match u32::try_from(*n.get_ref()) {
                    Ok(v) if v > 0 => v,
                    _ => {
                        errors.push(loc.error(
                            Some(n.span()),
                            format!("{key}.backlog"),
                            format!("must be at least 1, got {}", n.get_ref()),
                        ));
                        1
                    }
                },
            };
            listen.push(ListenConfig {
                plugin: l.plugin.into_inner(),
                interface,
                port: port_v,
                max_connections,
                backlog,
                line,
            });
        }

        // [[connect]]
        let mut connect = Vec::new();
        for (i, c) in raw.connect.into_iter().enumerate() {
            let key = format!("connect[{i}]");
            let line = loc.line(c.span());
            let c = c.into_inner();
            plugin_ref(&c.plugin, format!("{key}.plugin"), &mut errors);
            let port_v = port(&c.port, format!("{key}.port"), &mut errors);
            if port_v == 0 {
                errors.push(loc.error(
                    Some(c.port.span()),
                    format!("{key}.port"),
                    "cannot connect to port 0",
                ));
            }
            if c.host.get_ref().trim().is_empty() {
                errors.push(loc.error(
                    Some(c.host.span()),
                    format!("{key}.host"),
                    "is empty: give a host name or address",
                ));
            }
            let timeout = match &c.timeout {
                None => Duration::from_secs(30),
                Some(t) => match parse_duration(t.get_ref()) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        errors.push(loc.error(
                            Some(t.span()),
                            format!("{key}.timeout"),
                            "must be greater than zero",
                        ));
                        Duration::from_secs(30)
                    }
                    Err(m) => {
                        errors.push(loc.error(Some(t.span()), format!("{key}.timeout"), m));
                        Duration::from_secs(30)
                    }
                },
            };
            connect.push(ConnectConfig {
                plugin: c.plugin.into_inner(),
                host: c.host.into_inner(),
                port: port_v,
                timeout,
                line,
            });
        }

        if listen.is_empty() && connect.is_empty() && errors.is_empty() {
            errors.push(loc.error(
                None,
                "",
                "nothing to run: add a [[listen]] or [[connect]] entry",
            ));
        }

        if errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                host,
                plugins,
                listen,
                connect,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("3 furlongs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn error_lines_point_at_the_key() {
        let text = "[plugins.echo]\ncomponent = \"x.wasm\"\n\n[[listen]]\nport = 9000\nplugin = \"ech0\"\n";
        let errs = Config::parse(Path::new("/nonexistent/plugins.toml"), text).unwrap_err();
        let plugin_err = errs
            .0
            .iter()
            .find(|e| e.key.as_deref() == Some("listen[0].plugin"))
            .unwrap();
        assert_eq!(plugin_err.line, Some(6));
        assert!(
            plugin_err
                .message
                .contains("\"ech0\" is not defined (defined: echo)"),
            "{plugin_err}"
        );
        let missing = errs
            .0
            .iter()
            .find(|e| e.key.as_deref() == Some("plugins.echo.component"))
            .unwrap();
        assert_eq!(missing.line, Some(2));
    }

    #[test]
    fn unknown_keys_are_rejected_with_a_line() {
        let text = "[[listen]]\nport = 9000\nplugin = \"echo\"\nprot = 1\n";
        let errs = Config::parse(Path::new("p.toml"), text).unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].line, Some(4));
        assert!(
            errs.0[0].message.contains("unknown field `prot`"),
            "{}",
            errs.0[0]
        );
    }
}
