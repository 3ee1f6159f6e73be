//! The narrow core over wasmtime, with no socket I/O: the [`Runtime`] (one
//! [`Engine`], one [`Linker`]) loads each plugin's component into a
//! [`Plugin`], which makes instances; a [`Session`] is one connection's
//! callbacks on an instance of its own or a shared one (whose pool,
//! threads and batch queue the crate's `shared` module owns).
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | this file | the engine and linker, loading and checking components ([`Runtime::load`], [`LoadError`]) |
//! | [`plugin`] | a loaded plugin, immutable once built: its exports, limits and grants; it makes instances |
//! | [`guest`] | one instance and the one call path: CPU budget, caller, fault classification ([`GuestFault`]); a shared instance and its batch call |
//! | [`session`] | one connection's callbacks into its instance; the [`session::ReadQueue`] a batched session's reads go to |
//! | [`pool`] | the instance pool's size and each plugin's cap |
//! | [`state`], [`outbuf`] | Store data: the transport slab, each connection's transport state and hand-off; unsent output and its host-wide ceiling |
//! | [`bindings`], [`wasi`], [`transport`], [`limits`], [`output`] | the WIT bindings, WASI, the transport's host side, limits, guest output |
//! | [`clock`], [`reactor`] | reactor time: the clock and an instance's delayed calls; the `reactor` interface's host side |
//! | [`outbound`] | `connect-tcp`'s checks and `max-outbound`; the request handed to the plugin's dialer ([`plugin::Dial`]) |
//!
//! # Choices, and why
//!
//! - **Sync calls with an epoch CPU budget.** Guests are called directly on
//!   the reactor thread that owns the connection, with no fiber: a `call`
//!   is cheaper per round trip than `call_async` (BENCHMARKS.md has the
//!   figures). The epoch ticks every [`limits::EPOCH_TICK`]; each tick
//!   inside a callback is counted, and the guest traps once it has used its
//!   CPU budget. The price: a runaway guest holds its reactor thread until
//!   then (at most `cpu`, 100 ms by default). At its first tick the
//!   callback wakes an idle reactor thread to take over the sockets
//!   ([`limits::wake_an_idle_reactor_thread`]), so the other threads keep
//!   serving. WASI is linked with the sync bindings, minus the functions
//!   that would block the reactor ([`wasi`]).
//! - **An instance per connection** by default, from the pooling allocator,
//!   as Twisted builds a protocol per connection: a fault in one instance
//!   cannot reach another connection's state. **Shared instances**
//!   ([`Sharing::Shared`]) trade that isolation for a few KiB per connection:
//!   each connection is a `protocol` resource on a long-lived instance,
//!   whose lock a callback holds; each connection's transport state is a
//!   cell of its own, so the data path does not take the instance lock.
//!   Each shared instance has a thread of its own, where its listeners'
//!   connections run (the crate's `shared::threads`).
//! - **Batched delivery on shared instances.** One call per read costs the
//!   same fixed engine overhead whatever the read's size; a shared
//!   instance's connections' reads that are ready at the same moment go to
//!   the guest in one `batch.data-received` call (`shared::batch`), if the
//!   component exports it (the SDKs do).
//! - **Deny by default.** WASI p2 is linked so that guests built with std
//!   load, but the context grants nothing: no files, no sockets, no name
//!   lookups, no environment, no arguments, an empty stdin, and frozen clocks
//!   unless the plugin is granted `clock = true`. Stdout and stderr go to the
//!   host's output, prefixed with the plugin's name.

pub mod bindings;
pub mod clock;
pub mod guest;
pub mod limits;
pub mod outbound;
pub mod outbuf;
pub mod output;
pub mod plugin;
pub mod pool;
pub mod reactor;
pub mod session;
pub mod starttls;
pub mod state;
pub mod transport;
pub mod wasi;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config as EngineConfig, Engine};

use crate::config::{Config, HostSettings, PluginConfig};
use crate::stats::PluginStats;
use bindings::{
    batch as wit_batch, client_factory, half_close, outbound_factory, protocol, reactor_calls,
    server_factory,
};
use limits::Limits;
use outbuf::OutputBudget;
use pool::InstanceCap;
use state::ConnState;

pub use guest::GuestFault;
pub use plugin::{Plugin, PluginOptions, Sharing};
pub use session::Session;

/// The interface names a component must export for each role.
pub const SERVER_FACTORY: &str = "twill:protocol/server-factory@0.1.0";
/// See [`SERVER_FACTORY`].
pub const CLIENT_FACTORY: &str = "twill:protocol/client-factory@0.1.0";
/// See [`SERVER_FACTORY`].
pub const PROTOCOL: &str = "twill:protocol/protocol@0.1.0";
/// The optional batched-delivery export (see [`crate::shared::batch`]).
pub const BATCH: &str = "twill:protocol/batch@0.1.0";

/// A plugin that failed to load, or that cannot play the role it is used in.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: plugins.{plugin}.component: {component}: {message}")]
pub struct LoadError {
    /// The config file.
    pub file: String,
    /// Line of the plugin's table.
    pub line: usize,
    /// The plugin.
    pub plugin: String,
    /// The component path.
    pub component: String,
    /// What is wrong.
    pub message: String,
}

/// The engine, the linker and every loaded plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<ConnState>,
    plugins: HashMap<String, Arc<Plugin>>,
    ticker: Arc<AtomicBool>,
    /// The host-wide ceiling on unsent output, shared by every plugin.
    budget: Arc<OutputBudget>,
    /// The pool's size: instance slots.
    pool: u32,
    /// The `[host]` settings and the largest plugin memory the engine was
    /// sized for ([`Runtime::load`]): what a reload cannot change.
    sized_for: Option<(HostSettings, usize)>,
    /// Instance slots the plugins' caps are shared out of.
    usable: u32,
    /// Each plugin's counters, by name, kept across reloads.
    stats: Mutex<HashMap<String, Arc<PluginStats>>>,
}

/// What a reload will put in place ([`Runtime::prepare_reload`]).
#[derive(Debug)]
pub struct Prepared {
    /// Every plugin of the new config.
    pub plugins: HashMap<String, Arc<Plugin>>,
    /// The plugins reused unchanged.
    pub reused: Vec<String>,
    /// Each plugin's share of the pool, to set when the reload commits.
    pub caps: HashMap<String, usize>,
}

/// What a plugin was loaded from: its settings (less their line) and its
/// component's SHA-256. A reload reuses a plugin whose source is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    settings: PluginConfig,
    digest: [u8; 32],
}

impl Source {
    fn new(p: &PluginConfig, bytes: &[u8]) -> Source {
        let mut digest = [0; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        Source {
            settings: PluginConfig {
                line: 0,
                ..p.clone()
            },
            digest,
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("plugins", &self.plugins.keys())
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.store(true, Ordering::Relaxed);
    }
}

/// Converts a wasmtime error into an anyhow error, keeping its message
/// chain (`wasmtime::Error` is its own type in 48.x, not `anyhow::Error`).
pub fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

impl Runtime {
    /// Builds the engine (pooling allocator sized by `settings`, epoch
    /// interruption, the compile cache) and the linker (WASI p2 and the
    /// transport). `max_memory` is the largest memory limit of any plugin.
    pub fn new(settings: &HostSettings, max_memory: usize) -> anyhow::Result<Runtime> {
        let pool = settings
            .max_instances
            .unwrap_or(pool::DEFAULT_MAX_INSTANCES);
        // Whole wasm pages.
        let max_memory = max_memory.div_ceil(64 << 10).max(1) * (64 << 10);
        let mut cfg = EngineConfig::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .memory_reservation(max_memory as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .allocation_strategy(limits::pooling(pool, max_memory));
        // `TWILL_PERFMAP=1` writes /tmp/perf-PID.map so that `perf report`
        // can name the guests' JIT-compiled functions.
        if std::env::var_os("TWILL_PERFMAP").is_some_and(|v| v == "1") {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        match wasmtime::Cache::from_file(None) {
            Ok(cache) => {
                cfg.cache(Some(cache));
            }
            Err(e) => {
                tracing::warn!(error = %e, "compile cache unavailable; components will be compiled at every start")
            }
        }
        let engine = Engine::new(&cfg)
            .map_err(wasm_err)
            .context("cannot create the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(wasm_err)?;
        bindings::twill::protocol::types::add_to_linker::<
            ConnState,
            wasmtime::component::HasSelf<ConnState>,
        >(&mut linker, |s| s)
        .map_err(wasm_err)?;
        bindings::twill::protocol::transport::add_to_linker::<
            ConnState,
            wasmtime::component::HasSelf<ConnState>,
        >(&mut linker, |s| s)
        .map_err(wasm_err)?;
        transport::add_writes(&mut linker).map_err(wasm_err)?;
        bindings::twill::protocol::reactor::add_to_linker::<
            ConnState,
            wasmtime::component::HasSelf<ConnState>,
        >(&mut linker, |s| s)
        .map_err(wasm_err)?;

        let ticker = Arc::new(AtomicBool::new(false));
        let stop = ticker.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("twill-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(limits::EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the epoch thread")?;
        Ok(Runtime {
            engine,
            linker,
            plugins: HashMap::new(),
            ticker,
            budget: OutputBudget::new(settings.max_queued_output),
            pool,
            sized_for: None,
            usable: pool,
            stats: Mutex::default(),
        })
    }

    /// Builds a runtime and loads every plugin that `config` uses, checking
    /// that each exports what its listeners and connectors need. Returns
    /// every problem found, not just the first.
    pub fn load(config: &Config) -> Result<Runtime, Vec<anyhow::Error>> {
        let max_memory = config
            .plugins
            .values()
            .map(|p| p.limits.memory)
            .max()
            .unwrap_or(Limits::default().memory);
        let at = |m: String| vec![anyhow::anyhow!("{}: {m}", config.at("host.max-instances"))];
        let pool = pool::plan_pool(config, max_memory).map_err(at)?;
        let host = HostSettings {
            max_instances: Some(pool),
            ..config.host.clone()
        };
        let reserved = pool::human(pool::reservation(u64::from(pool), max_memory as u64));
        let memory = pool::human(max_memory as u64);
        let mut rt = Runtime::new(&host, max_memory).map_err(|e| {
            // Most often the pool's address space (a `ulimit -v`, or an
            // overcommit policy): say which keys size it.
            at(format!(
                "the instance pool ({pool} slots, {reserved} of address space for memories of up to {memory}) cannot be set up: {e:#}; lower [host] max-instances or the plugins' memory, or lift the address-space limit (ulimit -v)"
            ))
        })?;
        rt.sized_for = Some((config.host.clone(), max_memory));
        tracing::info!(
            slots = pool,
            %reserved,
            "instance pool: {pool} slots, each with room for memories of up to {memory}"
        );
        let maps_before = pool::count_maps();
        let mut maps_per_live = pool::MIN_MAPS_PER_LIVE;
        let plugins = rt.load_plugins(config, &HashMap::new(), &mut maps_per_live)?;
        let usable = pool::check_maps(config, pool, maps_before, maps_per_live).map_err(at)?;
        rt.usable = usable;
        let caps = pool::plugin_caps(config, usable).map_err(at)?;
        for (name, cap) in caps {
            if let Some(p) = plugins.get(&name) {
                p.cap.set_max(cap);
            }
        }
        rt.plugins = plugins;
        Ok(rt)
    }

    /// Loads and checks what a reload of `config` needs, changing nothing
    /// that runs: each plugin of `current` whose component (by content)
    /// and settings are unchanged is reused as is; the others are loaded
    /// (compiled components come from the compile cache) and checked as
    /// `twill check` does. Settings that size the process (the `[host]`
    /// keys other than `shutdown-timeout`, and a plugin `memory` past the
    /// pool's) cannot change without a restart. Returns every problem.
    pub fn prepare_reload(
        &self,
        config: &Config,
        current: &HashMap<String, Arc<Plugin>>,
    ) -> Result<Prepared, Vec<anyhow::Error>> {
        let mut errors = self.restart_only_changes(config);
        let mut maps = 0;
        let plugins = match self.load_plugins(config, current, &mut maps) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let at = |m: String| vec![anyhow::anyhow!("{}: {m}", config.at("host.max-instances"))];
        let caps = pool::plugin_caps(config, self.usable).map_err(at)?;
        let reused = (plugins.iter())
            .filter(|(name, p)| current.get(*name).is_some_and(|c| Arc::ptr_eq(c, p)))
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Prepared {
            plugins,
            reused,
            caps,
        })
    }

    /// The `[host]` settings (and plugin memory) that `config` changes
    /// but only a restart can: each as an error at its key.
    fn restart_only_changes(&self, config: &Config) -> Vec<anyhow::Error> {
        let Some((was, max_memory)) = &self.sized_for else {
            return Vec::new();
        };
        let now = &config.host;
        let mut errors = Vec::new();
        let mut changed = |key: &str, before: String, after: String| {
            errors.push(anyhow::anyhow!(
                "{}: changed from {before} to {after}, which takes a restart (a reload keeps the process's threads, instance pool and metrics address); the running configuration is unchanged",
                config.at(key)
            ));
        };
        let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
        if now.threads != was.threads {
            changed(
                "host.threads",
                show(was.threads.map(|n| n.to_string())),
                show(now.threads.map(|n| n.to_string())),
            );
        }
        if now.max_instances != was.max_instances {
            changed(
                "host.max-instances",
                show(was.max_instances.map(|n| n.to_string())),
                show(now.max_instances.map(|n| n.to_string())),
            );
        }
        if now.max_queued_output != was.max_queued_output {
            changed(
                "host.max-queued-output",
                was.max_queued_output.to_string(),
                now.max_queued_output.to_string(),
            );
        }
        if now.metrics != was.metrics {
            changed(
                "host.metrics",
                show(was.metrics.map(|a| a.to_string())),
                show(now.metrics.map(|a| a.to_string())),
            );
        }
        for (name, p) in &config.plugins {
            if p.limits.memory > *max_memory {
                errors.push(anyhow::anyhow!(
                    "{}: {} is more than the instance pool was sized for at start ({}), which takes a restart; the running configuration is unchanged",
                    config.at(&format!("plugins.{name}.memory")),
                    pool::human(p.limits.memory as u64),
                    pool::human(*max_memory as u64)
                ));
            }
        }
        errors
    }

    /// Loads every plugin of `config` (reusing those of `current` whose
    /// component and settings are unchanged), starting two trial instances
    /// of each new one and checking it exports what its listeners and
    /// connectors need. `maps_per_live` grows to the most memory maps a
    /// trial instance added.
    fn load_plugins(
        &self,
        config: &Config,
        current: &HashMap<String, Arc<Plugin>>,
        maps_per_live: &mut u64,
    ) -> Result<HashMap<String, Arc<Plugin>>, Vec<anyhow::Error>> {
        let mut errors = Vec::new();
        let mut trials = Vec::new();
        let mut plugins = HashMap::new();
        for (name, p) in &config.plugins {
            let err = |message: String| LoadError {
                file: config.path.display().to_string(),
                line: p.line,
                plugin: name.clone(),
                component: p.component.display().to_string(),
                message,
            };
            let bytes = match std::fs::read(&p.component) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(err(format!("cannot read {}: {e}", p.component.display())).into());
                    continue;
                }
            };
            let source = Source::new(p, &bytes);
            if let Some(same) = current
                .get(name)
                .filter(|c| c.source.as_ref() == Some(&source))
            {
                plugins.insert(name.clone(), same.clone());
                continue;
            }
            let options = PluginOptions {
                limits: p.limits.clone(),
                clock: p.clock,
                sharing: p.sharing,
                capture: None,
                time: clock::Clock::Real,
                connect: p.connect.clone(),
                env: p.env.clone(),
                stats: self.plugin_stats(name),
            };
            let mut plugin = match self.load_bytes(name, &bytes, options) {
                Ok(plugin) => plugin,
                Err(e) => {
                    errors.push(err(format!("{e:#}")).into());
                    continue;
                }
            };
            plugin.source = Some(source);
            match trial(&plugin, &mut trials) {
                Ok(maps) => *maps_per_live = (*maps_per_live).max(maps),
                Err(m) => errors.push(err(m).into()),
            }
            if matches!(p.sharing, Sharing::Shared(_)) && !plugin.has_batch() {
                tracing::info!(plugin = %name, "the component does not export `{BATCH}`: its shared instances get one data-received call per read");
            }
            let needs_server = config.listen.iter().any(|l| &l.plugin == name);
            let needs_client = config.connect.iter().any(|c| &c.plugin == name);
            if needs_server && plugin.server.is_none() {
                errors.push(
                    err(missing_export(
                        &plugin.exports,
                        SERVER_FACTORY,
                        "[[listen]]",
                    ))
                    .into(),
                );
            }
            if needs_client && plugin.client.is_none() {
                errors.push(
                    err(missing_export(
                        &plugin.exports,
                        CLIENT_FACTORY,
                        "[[connect]]",
                    ))
                    .into(),
                );
            }
            plugins.insert(name.clone(), Arc::new(plugin));
        }
        drop(trials);
        if errors.is_empty() {
            Ok(plugins)
        } else {
            Err(errors)
        }
    }

    /// The counters of the plugin called `name`: the same ones for as long
    /// as the process runs, whatever reloads replace its component.
    pub fn plugin_stats(&self, name: &str) -> Arc<PluginStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.entry(name.to_string()).or_default().clone()
    }

    /// Compiles (or fetches from the cache) and pre-instantiates one
    /// component.
    pub fn load_plugin(
        &self,
        name: &str,
        path: &Path,
        options: PluginOptions,
    ) -> anyhow::Result<Plugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.load_bytes(name, &bytes, options)
    }

    /// Compiles (or fetches from the cache) and pre-instantiates a
    /// component from its bytes.
    fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        options: PluginOptions,
    ) -> anyhow::Result<Plugin> {
        let PluginOptions {
            limits,
            clock,
            sharing,
            capture,
            time,
            connect,
            env,
            stats,
        } = options;
        match bytes.get(0..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => anyhow::bail!(
                "this is a core wasm module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
            ),
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => anyhow::bail!(
                "not a WebAssembly component (no `\\0asm` header with the component layer)"
            ),
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(wasm_err)
            .context("invalid component")?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wasm_err)
            .context("the component imports something the host does not provide (guests get twill:protocol/transport and WASI p2 only)")?;
        let exports = export_list(&self.engine, &component);
        let protocol = protocol::GuestIndices::new(&pre).map_err(|_| {
            anyhow::anyhow!("{}", missing_export(&exports, PROTOCOL, "every plugin"))
        })?;
        let batch = wit_batch::GuestIndices::new(&pre).ok();
        let reactor_calls = reactor_calls::GuestIndices::new(&pre).ok();
        let server = server_factory::GuestIndices::new(&pre).ok();
        let client = client_factory::GuestIndices::new(&pre).ok();
        let outbound = outbound_factory::GuestIndices::new(&pre).ok();
        let half_close = half_close::GuestIndices::new(&pre).ok();
        if server.is_none() && client.is_none() {
            anyhow::bail!("exports neither `{SERVER_FACTORY}` nor `{CLIENT_FACTORY}`; {exports}");
        }
        Ok(Plugin {
            name: name.into(),
            limits,
            pre,
            protocol,
            batch,
            reactor_calls,
            time,
            server,
            client,
            outbound,
            half_close,
            grants: Arc::new(connect),
            env,
            clock,
            capture,
            exports,
            sharing,
            budget: self.budget.clone(),
            cap: InstanceCap::new(self.pool as usize),
            stats,
            source: None,
        })
    }

    /// The plugin called `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.get(name).cloned()
    }

    /// Adds a plugin under `name`, replacing one of the same name.
    pub fn insert_plugin(&mut self, plugin: Plugin) -> Arc<Plugin> {
        let p = Arc::new(plugin);
        self.plugins.insert(p.name.to_string(), p.clone());
        p
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Instantiates `plugin` twice, keeping the instances in `trials` (so
/// that every trial has a slot of its own until all are made): a component
/// that cannot even start within its own plugin's limits fails at load,
/// not at every connection. Returns the memory maps the second instance
/// added (the steady cost of a live instance; the first also maps the
/// component's memory image, once), or 0 if there is no figure.
fn trial(plugin: &Plugin, trials: &mut Vec<guest::Guest>) -> Result<u64, String> {
    let started = |r: Result<guest::Guest, GuestFault>| {
        r.map_err(|f| match f {
            GuestFault::MemoryAtStart { needed, limit } => {
                let needed = pool::human(needed as u64);
                format!(
                    "the component needs at least {needed} of linear memory to start, more than plugins.{}.memory ({}): raise `memory` to at least {needed}",
                    plugin.name,
                    pool::human(limit as u64)
                )
            }
            f => format!("the component fails to start: {f}"),
        })
    };
    trials.push(started(plugin.new_guest())?);
    // The maps one more instance adds, measured twice: the count is the
    // process's, and another thread making instances at the same moment
    // (a test binary's other tests) inflates one measurement; keep the
    // smaller. A small pool may have no slot left: then no figure.
    let mut added = u64::MAX;
    for _ in 0..2 {
        let before = pool::count_maps();
        let Ok(next) = plugin.new_guest() else {
            break;
        };
        let delta = before
            .zip(pool::count_maps())
            .map_or(0, |(b, a)| a.saturating_sub(b));
        added = added.min(delta);
        trials.push(next);
    }
    Ok(if added == u64::MAX { 0 } else { added })
}

fn export_list(engine: &Engine, component: &Component) -> String {
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(n, _)| format!("`{n}`"))
        .collect();
    if names.is_empty() {
        "it exports nothing".into()
    } else {
        format!("it exports {}", names.join(", "))
    }
}

/// The error for a component that lacks an export a role needs; `exports`
/// is [`export_list`]'s sentence for it.
fn missing_export(exports: &str, export: &str, role: &str) -> String {
    format!("does not export `{export}`, which {role} needs; {exports}")
}
