//! One parse function per table of `plugins.toml` (`[host]`,
//! `[plugins.NAME]`, `[[listen]]`, `[[connect]]`) and the document walk
//! that calls them, plus the checks that span tables: plugin references,
//! listeners clashing on a port, and the plugins' instances against
//! `[host] max-instances`.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::check::{Checker, Table, Value};
use super::show::{key_segment, quote, show, show_size};
use super::*;

const TOP_KEYS: &[&str] = &["host", "plugins", "listen", "connect"];
const HOST_KEYS: &[&str] = &[
    "shutdown-timeout",
    "drain-timeout",
    "max-instances",
    "threads",
    "max-queued-output",
    "metrics",
];
const PLUGIN_KEYS: &[&str] = &[
    "component",
    "memory",
    "cpu",
    "high-water",
    "low-water",
    "max-output",
    "clock",
    "instance",
    "shared-instances",
    "max-instances",
    "max-resources",
    "max-timers",
    "connect",
    "max-outbound",
    "env",
];
const LISTEN_KEYS: &[&str] = &[
    "port",
    "plugin",
    "interface",
    "max-connections",
    "backlog",
    "idle-timeout",
    "tls",
    "reuse-port",
    "proxy-protocol",
    "proxy-from",
];
const CONNECT_KEYS: &[&str] = &[
    "host",
    "port",
    "plugin",
    "timeout",
    "reconnect",
    "initial-delay",
    "max-delay",
    "factor",
    "jitter",
    "max-retries",
    "tls",
];
/// The `[[connect]]` keys that only mean something with `reconnect = true`.
const BACKOFF_KEYS: &[&str] = &[
    "initial-delay",
    "max-delay",
    "factor",
    "jitter",
    "max-retries",
];

/// Parses the whole document; `None` after a syntax error. Whatever it
/// returns, the checker's errors decide whether the config is valid.
pub(super) fn parse_document(c: &mut Checker<'_>, path: &Path, text: &str) -> Option<Config> {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            c.syntax_error(&e);
            return None;
        }
    };
    let root = Table::unnamed(doc.get_ref());
    c.unknown_keys(&root, TOP_KEYS, "table");
    let host = root
        .get("host")
        .and_then(|v| c.table("host".into(), v, HOST_KEYS))
        .map(|t| parse_host(c, &t))
        .unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new(""));
    let plugins = root
        .get("plugins")
        .map(|v| parse_plugins(c, v, &host, base))
        .unwrap_or_default();
    let mut seen = Vec::new();
    let listen = array_of_tables(c, &root, "listen", LISTEN_KEYS)
        .iter()
        .map(|t| parse_listen(c, t, &plugins, &mut seen, base))
        .collect::<Vec<_>>();
    let connect = array_of_tables(c, &root, "connect", CONNECT_KEYS)
        .iter()
        .map(|t| parse_connect(c, t, &plugins, base))
        .collect::<Vec<_>>();
    if listen.is_empty() && connect.is_empty() && !c.has_errors() {
        c.error(
            None,
            "",
            "nothing to run: add a [[listen]] or [[connect]] entry",
        );
    }
    Some(Config {
        path: path.to_path_buf(),
        host,
        plugins,
        listen: listen.into_iter().flatten().collect(),
        connect: connect.into_iter().flatten().collect(),
        places: BTreeMap::new(),
    })
}

/// The tables of the array `name` (`[[name]]`), keyed `name[i]`.
fn array_of_tables<'t, 'i>(
    c: &mut Checker<'_>,
    root: &Table<'t, 'i>,
    name: &str,
    known: &[&str],
) -> Vec<Table<'t, 'i>> {
    let Some(v) = root.get(name) else {
        return Vec::new();
    };
    let DeValue::Array(items) = v.get_ref() else {
        let expected = format!("an array of tables (write [[{name}]], not [{name}])");
        c.type_error(v, name, &expected);
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| c.table(format!("{name}[{i}]"), item, known))
        .collect()
}

/// `[host]`.
fn parse_host(c: &mut Checker<'_>, t: &Table<'_, '_>) -> HostSettings {
    let max_queued_output = c
        .size(t, "max-queued-output", MIN_MAX_QUEUED_OUTPUT.., "")
        .and_then(|n| usize::try_from(n).ok());
    let shutdown_timeout = c
        .duration(t, "shutdown-timeout", Duration::ZERO)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let drain_timeout = c
        .duration(t, "drain-timeout", Duration::ZERO)
        .unwrap_or(Duration::ZERO);
    if !drain_timeout.is_zero() && drain_timeout >= shutdown_timeout {
        c.error(
            t.get("drain-timeout").map(|v| v.span()),
            &t.field("drain-timeout"),
            format!(
                "drain-timeout ({drain_timeout:?}) must be shorter than shutdown-timeout ({shutdown_timeout:?}): connections still open after the drain are told to close, and need the rest of shutdown-timeout to flush"
            ),
        );
    }
    HostSettings {
        shutdown_timeout,
        drain_timeout,
        max_instances: c.int(t, "max-instances", 1..=MAX_INSTANCES),
        threads: c.int(t, "threads", 1..=MAX_THREADS),
        max_queued_output: max_queued_output.unwrap_or(DEFAULT_MAX_QUEUED_OUTPUT),
        metrics: parse_metrics(c, t),
    }
}

/// `[host] metrics = "ADDR:PORT"`: where `/metrics`, `/healthz` and
/// `/readyz` are served.
fn parse_metrics(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Option<SocketAddr> {
    let (s, span) = c.string(t, "metrics")?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.error(
                Some(span),
                &t.field("metrics"),
                format!(
                    "{} is not an address and port: write e.g. \"127.0.0.1:9464\" (an IPv6 address in brackets: \"[::1]:9464\")",
                    quote(s)
                ),
            );
            None
        }
    }
}

/// Instances the plugins ask for so far, against `[host] max-instances`.
struct InstanceBudget {
    limit: Option<u32>,
    sum: u64,
    parts: Vec<String>,
    reported: bool,
}

/// `[plugins]`: every `[plugins.NAME]`, in file order.
fn parse_plugins(
    c: &mut Checker<'_>,
    v: &Value<'_>,
    host: &HostSettings,
    base: &Path,
) -> BTreeMap<String, PluginConfig> {
    let mut plugins = BTreeMap::new();
    let DeValue::Table(all) = v.get_ref() else {
        c.type_error(v, "plugins", "a table of plugins ([plugins.NAME])");
        return plugins;
    };
    let mut budget = InstanceBudget {
        limit: host.max_instances,
        sum: 0,
        parts: Vec::new(),
        reported: false,
    };
    let root = Table::unnamed(all);
    for (name, value) in root.entries() {
        let key = format!("plugins.{}", key_segment(name.get_ref()));
        if !is_identifier(name.get_ref()) {
            c.error(
                Some(name.span()),
                &key,
                format!(
                    "is not an identifier: use a letter, then letters, digits, `_` or `-`, at most {MAX_PLUGIN_NAME} characters"
                ),
            );
        }
        let line = c.line(&name.span());
        if let Some(t) = c.table(key, value, PLUGIN_KEYS) {
            let p = parse_plugin(c, &t, name.get_ref(), line, base, &mut budget);
            plugins.insert(p.name.clone(), p);
        }
    }
    plugins
}

/// Whether `name` is a valid plugin name.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= MAX_PLUGIN_NAME
}

/// `[plugins.NAME]`.
fn parse_plugin(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    name: &str,
    line: usize,
    base: &Path,
    budget: &mut InstanceBudget,
) -> PluginConfig {
    let component = match c.required(t, "component", "component = \"echo.wasm\"") {
        Some(_) => c.string(t, "component"),
        None => None,
    };
    let component = component.map_or_else(Default::default, |(path, span)| {
        let full = base.join(path);
        if let Some(problem) = component_problem(path, &full) {
            c.error(Some(span), &t.field("component"), problem);
        }
        full
    });

    let mut limits = Limits::default();
    const MEMORY_HINT: &str = " (one wasm page is 64KiB; most guests need 1MiB or more)";
    if let Some(m) = c.size(t, "memory", MIN_MEMORY..=MAX_MEMORY, MEMORY_HINT) {
        limits.memory = m as usize;
    }
    if let Some(d) = c.duration(t, "cpu", MIN_CPU) {
        limits.cpu = d;
    }
    if let Some(h) = c.size(t, "high-water", 1.., "") {
        limits.high_water = h as usize;
        limits.low_water = limits.low_water.min(limits.high_water / 2);
    }
    if let Some(l) = c.size(t, "low-water", 1.., "") {
        limits.low_water = l as usize;
    }
    if let Some(m) = c.size(t, "max-output", 1.., "") {
        limits.max_output = m as usize;
    }
    let span_of = |names: &[&str]| names.iter().find_map(|n| t.get(n)).map(|v| v.span());
    if limits.max_output < limits.high_water {
        c.error(
            span_of(&["max-output", "high-water"]),
            &t.field("max-output"),
            format!(
                "max-output ({}) must be at least high-water ({})",
                limits.max_output, limits.high_water
            ),
        );
    }
    if limits.low_water >= limits.high_water {
        c.error(
            span_of(&["low-water", "high-water"]),
            &t.field("low-water"),
            format!(
                "low-water ({}) must be below high-water ({})",
                limits.low_water, limits.high_water
            ),
        );
    }
    if let Some(r) = c.int(t, "max-resources", MIN_RESOURCES..=MAX_RESOURCES) {
        limits.max_resources = r;
    }
    if let Some(n) = c.int(t, "max-timers", 1..=MAX_TIMERS) {
        limits.max_timers = n;
    }
    if let Some(n) = c.int(t, "max-outbound", 1..=MAX_OUTBOUND) {
        limits.max_outbound = n;
    }
    let connect = parse_grants(c, t, name);
    let env = parse_env(c, t);

    let shared_instances = c.int(t, "shared-instances", 1..=MAX_SHARED_INSTANCES);
    let max_instances = c.int(t, "max-instances", 1..=MAX_INSTANCES);
    let sharing = match c.string(t, "instance") {
        None | Some(("per-connection", _)) => {
            if let Some(v) = t.get("shared-instances") {
                c.error(
                    Some(v.span()),
                    &t.field("shared-instances"),
                    "only applies with instance = \"shared\"",
                );
            }
            Sharing::PerConnection
        }
        Some(("shared", _)) => {
            if let Some(v) = t.get("max-instances") {
                c.error(
                    Some(v.span()),
                    &t.field("max-instances"),
                    "does not apply with instance = \"shared\": set shared-instances instead",
                );
            }
            Sharing::Shared(shared_instances.unwrap_or(DEFAULT_SHARED_INSTANCES))
        }
        Some((other, span)) => {
            c.error(
                Some(span),
                &t.field("instance"),
                format!(
                    "must be \"per-connection\" or \"shared\", not {}",
                    quote(other)
                ),
            );
            Sharing::PerConnection
        }
    };

    // The plugins' own instance counts must fit in [host] max-instances.
    let (asks, key) = match sharing {
        Sharing::Shared(n) => (Some(n), "shared-instances"),
        Sharing::PerConnection => (max_instances, "max-instances"),
    };
    if let (Some(limit), Some(n)) = (budget.limit, asks) {
        budget.sum += u64::from(n);
        budget.parts.push(format!("{} {n}", key_segment(name)));
        if budget.sum > u64::from(limit) && !budget.reported {
            budget.reported = true;
            c.error(
                Some(t.get(key).map_or(t.span.clone(), |v| v.span())),
                &t.field(key),
                format!(
                    "the plugins' max-instances and shared-instances add up to {} ({}), more than [host] max-instances = {limit}: raise that or lower these",
                    budget.sum,
                    budget.parts.join(" + ")
                ),
            );
        }
    }

    PluginConfig {
        name: name.to_string(),
        component,
        limits,
        clock: c.bool(t, "clock").unwrap_or(false),
        sharing,
        max_instances: max_instances.filter(|_| matches!(sharing, Sharing::PerConnection)),
        connect,
        env,
        line,
    }
}

/// `connect = ["HOST:PORT", ...]`: the plugin's grants, every bad entry
/// reported.
fn parse_grants(c: &mut Checker<'_>, t: &Table<'_, '_>, name: &str) -> crate::grants::Grants {
    use crate::grants::{FORMS, Grant, Grants};
    let place = |c: &Checker<'_>, line: usize| {
        format!(
            "[plugins.{}] connect ({}:{line})",
            key_segment(name),
            c.file()
        )
    };
    let Some(v) = t.get("connect") else {
        return Grants::default();
    };
    let key = t.field("connect");
    let DeValue::Array(items) = v.get_ref() else {
        c.type_error(v, &key, "an array of \"HOST:PORT\" strings");
        return Grants::default();
    };
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        match item.get_ref() {
            DeValue::String(s) => match Grant::parse(s) {
                Ok(g) => rules.push(g),
                Err(why) => c.error(
                    Some(item.span()),
                    &item_key,
                    format!("{}: {why} (grants look like {FORMS})", quote(s)),
                ),
            },
            _ => c.type_error(item, &item_key, "a \"HOST:PORT\" string"),
        }
    }
    let line = c.line(&v.span());
    Grants::new(rules, place(c, line))
}

/// `env = { KEY = "value", ... }`: the guest's environment.
fn parse_env(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Vec<(String, String)> {
    let Some(v) = t.get("env") else {
        return Vec::new();
    };
    let key = t.field("env");
    let DeValue::Table(entries) = v.get_ref() else {
        c.type_error(
            v,
            &key,
            "a table of strings, such as { BACKEND = \"127.0.0.1:6379\" }",
        );
        return Vec::new();
    };
    let mut env = Vec::new();
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by_key(|(k, _)| k.span().start);
    for (k, val) in sorted {
        let item_key = format!("{key}.{}", key_segment(k.get_ref()));
        match val.get_ref() {
            DeValue::String(s) if !k.get_ref().contains('=') && !k.get_ref().is_empty() => {
                env.push((k.get_ref().to_string(), s.to_string()));
            }
            DeValue::String(_) => c.error(
                Some(k.span()),
                &item_key,
                "an environment variable's name must be non-empty and contain no '='",
            ),
            _ => c.type_error(val, &item_key, "a string (in double quotes)"),
        }
    }
    env
}

/// What is wrong with the component file `full` (written `path`), if
/// anything. Looks only at its metadata: a device or FIFO is never read.
fn component_problem(path: &str, full: &Path) -> Option<String> {
    if path.is_empty() {
        return Some("is empty: give the path of a .wasm component".to_string());
    }
    let shown = show(&full.to_string_lossy());
    let meta = match std::fs::metadata(full) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "component file {shown} does not exist (paths are relative to the config file)"
            ));
        }
        Err(e) => return Some(format!("component file {shown} cannot be read: {e}")),
    };
    if !meta.is_file() {
        return Some(format!(
            "component file {shown} is not a regular file (it is {}): give the path of a .wasm component",
            file_kind(&meta)
        ));
    }
    if meta.len() > MAX_COMPONENT_SIZE {
        return Some(format!(
            "component file {shown} is {} bytes, more than the {} a component may be",
            meta.len(),
            show_size(MAX_COMPONENT_SIZE)
        ));
    }
    None
}

/// What kind of file that is not a regular file `meta` describes.
fn file_kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// `[[listen]]`. `seen` holds the bound addresses so far, with their lines.
fn parse_listen(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    plugins: &BTreeMap<String, PluginConfig>,
    seen: &mut Vec<(IpAddr, u16, usize)>,
    base: &Path,
) -> Option<ListenConfig> {
    let line = c.line(&t.span);
    let plugin = c.plugin_ref(t, "plugin", plugins);
    let port = c.port(t, "port", 0..=u16::MAX);
    let interface = c.interface(t, "interface");
    let max_connections = c.int(t, "max-connections", 1..);
    let backlog = c.int(t, "backlog", 1..=u32::MAX);
    let idle_timeout = c.duration(t, "idle-timeout", MIN_IDLE_TIMEOUT);
    let tls = super::tls::parse_listen_tls(c, t, base);
    let reuse_port = c.bool(t, "reuse-port").unwrap_or(false);
    let proxy = super::proxy::parse_listen_proxy(c, t);
    let interface = interface.unwrap_or(DEFAULT_INTERFACE);
    if let Some(port) = port.filter(|p| *p != 0) {
        let clash = seen.iter().find(|(ip, p, _)| {
            *p == port && (*ip == interface || ip.is_unspecified() || interface.is_unspecified())
        });
        if let Some((_, _, other)) = clash {
            c.error(
                t.get("port").map(|v| v.span()),
                &t.field("port"),
                format!("port {port} is already used by the listener on line {other}"),
            );
        }
        seen.push((interface, port, line));
    }
    Some(ListenConfig {
        plugin: plugin?,
        interface,
        port: port?,
        max_connections: max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        backlog: backlog.unwrap_or(DEFAULT_BACKLOG),
        idle_timeout,
        tls,
        reuse_port,
        proxy,
        line,
    })
}

/// `[[connect]]`.
fn parse_connect(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    plugins: &BTreeMap<String, PluginConfig>,
    base: &Path,
) -> Option<ConnectConfig> {
    let line = c.line(&t.span);
    let plugin = c.plugin_ref(t, "plugin", plugins);
    let port = c.port(t, "port", 1..=u16::MAX);
    let host = match c.required(t, "host", "host = \"localhost\"") {
        Some(_) => c.string(t, "host"),
        None => None,
    };
    if let Some((h, span)) = &host
        && h.trim().is_empty()
    {
        c.error(
            Some(span.clone()),
            &t.field("host"),
            "is empty: give a host name or address",
        );
    }
    let timeout = c.duration(t, "timeout", MIN_CPU);
    let reconnect = parse_reconnect(c, t);
    let tls = super::tls::parse_connect_tls(c, t, base, host.as_ref().map(|(h, _)| *h));
    Some(ConnectConfig {
        plugin: plugin?,
        host: host?.0.to_string(),
        port: port?,
        timeout: timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        reconnect,
        tls,
        line,
    })
}

/// `[[connect]] reconnect` and its backoff keys, which mean nothing
/// without it.
fn parse_reconnect(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Option<Reconnect> {
    if c.bool(t, "reconnect") != Some(true) {
        for key in BACKOFF_KEYS {
            if let Some(v) = t.get(key) {
                c.error(
                    Some(v.span()),
                    &t.field(key),
                    "has no effect without `reconnect = true` in the same [[connect]]",
                );
            }
        }
        return None;
    }
    let d = Reconnect::default();
    let initial_delay = c.duration(t, "initial-delay", MIN_CPU);
    let max_delay = c.duration(t, "max-delay", MIN_CPU);
    let factor = c.float(t, "factor", 1.0..=1000.0);
    let jitter = c.float(t, "jitter", 0.0..=1.0);
    let max_retries = c.int(t, "max-retries", 0..=u32::MAX);
    let r = Reconnect {
        initial_delay: initial_delay.unwrap_or(d.initial_delay),
        max_delay: max_delay.unwrap_or(d.max_delay),
        factor: factor.unwrap_or(d.factor),
        jitter: jitter.unwrap_or(d.jitter),
        max_retries,
    };
    if r.max_delay < r.initial_delay
        && let Some(v) = t.get("max-delay")
    {
        c.error(
            Some(v.span()),
            &t.field("max-delay"),
            format!(
                "is shorter than initial-delay ({:?}): the backoff would never grow",
                r.initial_delay
            ),
        );
    }
    Some(r)
}
