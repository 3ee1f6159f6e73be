//! The narrow core over wasmtime: one [`Engine`], one [`Linker`], one
//! [`InstancePre`] per plugin, and a [`Session`] per connection (on an
//! instance of its own, or on one of the plugin's shared instances).
//!
//! # Choices, and why
//!
//! - **Sync calls with an epoch CPU budget.** Guests are called directly on
//!   the reactor thread that owns the connection, with no fiber: a `call`
//!   costs about 1.4 µs less per round trip than `call_async` (measured with
//!   `bench/`: 7.2 → 5.8 µs of server CPU per 64-byte echo). The epoch ticks
//!   every [`limits::EPOCH_TICK`]; each tick inside a callback is counted,
//!   and the guest traps once it has used its CPU budget. The price: a
//!   runaway guest holds its reactor thread until then (at most `cpu`,
//!   100 ms by default). At its first tick the callback wakes an idle
//!   reactor thread to take over the sockets
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
//!   connections run ([`threads`]).
//! - **Batched delivery on shared instances.** One call per read costs the
//!   same fixed engine overhead whatever the read's size; a shared
//!   instance's connections' reads that are ready at the same moment go to
//!   the guest in one `batch.data-received` call ([`batch`]), if the
//!   component exports it (the SDKs do). 64-byte ping-pong on one thread:
//!   4.4 → 3.9 µs of server CPU per round trip.
//! - **Deny by default.** WASI p2 is linked so that guests built with std
//!   load, but the context grants nothing: no files, no sockets, no name
//!   lookups, no environment, no arguments, an empty stdin, and frozen clocks
//!   unless the plugin is granted `clock = true`. Stdout and stderr go to the
//!   host's output, prefixed with the plugin's name.

pub mod batch;
pub mod bindings;
pub mod limits;
pub mod output;
pub mod pool;
pub mod state;
pub mod threads;
pub mod transport;
pub mod wasi;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, InstancePre, Linker, ResourceAny};
use wasmtime::{Config as EngineConfig, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::config::{Config, HostSettings};
use crate::shutdown::ShutdownSignal;
use bindings::{batch as wit_batch, client_factory, protocol, server_factory};
use limits::Limits;
use output::{GuestOutput, Sink, Std};
use pool::{InstanceCap, InstancePermit};
use state::{
    ConnState, CpuBudget, OutBuf, OutputBudget, TransportCell, TransportState, Transports,
};
use transport::TransportHandle;

/// The interface names a component must export for each role.
pub const SERVER_FACTORY: &str = "twill:protocol/server-factory@0.1.0";
/// See [`SERVER_FACTORY`].
pub const CLIENT_FACTORY: &str = "twill:protocol/client-factory@0.1.0";
/// See [`SERVER_FACTORY`].
pub const PROTOCOL: &str = "twill:protocol/protocol@0.1.0";
/// The optional batched-delivery export (see [`batch`]).
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

/// Everything about one loaded plugin.
pub struct Plugin {
    /// The plugin's name in `plugins.toml`.
    pub name: Arc<str>,
    /// Its limits.
    pub limits: Limits,
    pre: InstancePre<ConnState>,
    protocol: protocol::GuestIndices,
    batch: Option<wit_batch::GuestIndices>,
    server: Option<server_factory::GuestIndices>,
    client: Option<client_factory::GuestIndices>,
    clock: bool,
    capture: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
    /// "it exports `a`, `b`", for errors about missing exports.
    exports: String,
    sharing: Sharing,
    /// With `Sharing::Shared(n)`: the n instance slots, filled on first use.
    shared: Vec<std::sync::Mutex<Option<Arc<SharedGuest>>>>,
    next_shared: std::sync::atomic::AtomicUsize,
    /// With `Sharing::Shared(n)`: the n threads the instances live on,
    /// started when a listener first serves the plugin.
    threads: std::sync::OnceLock<Vec<threads::InstanceThread>>,
    /// With `Sharing::Shared(n)`: live listener connections per instance.
    live: Vec<std::sync::atomic::AtomicUsize>,
    /// Batched delivery's counters.
    batch_stats: Arc<batch::BatchStats>,
    /// The host-wide ceiling on unsent output.
    budget: Arc<OutputBudget>,
    /// The cap on live instances of its own (with an instance per
    /// connection).
    cap: Arc<InstanceCap>,
}

/// How a plugin's instances map to connections (`instance` in
/// `plugins.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// A fresh instance per connection, as Twisted builds a protocol per
    /// connection: a fault ends only its own connection. The default.
    #[default]
    PerConnection,
    /// This many long-lived instances, each serving many connections (one
    /// protocol resource per connection): a listener's connections go to
    /// the least busy, on its thread ([`threads`]); a connector's, round
    /// robin. Guest state is shared as in one Twisted process (a factory
    /// can keep a list of its protocols and write to any of them); a fault
    /// aborts every connection on that instance, and the next connection
    /// gets a fresh one. Memory per idle connection is a few KiB instead of
    /// tens.
    Shared(u32),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("server", &self.server.is_some())
            .field("client", &self.client.is_some())
            .finish_non_exhaustive()
    }
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
        let pool = plan_pool(config, max_memory).map_err(at)?;
        let host = HostSettings {
            max_instances: Some(pool),
            ..config.host.clone()
        };
        let mut rt = Runtime::new(&host, max_memory).map_err(|e| vec![e])?;
        tracing::info!(
            slots = pool,
            reserved = %pool::human(pool::reservation(u64::from(pool), max_memory as u64)),
            "instance pool: {pool} slots, each with room for memories of up to {}",
            pool::human(max_memory as u64)
        );
        let mut errors = Vec::new();
        let maps_before = pool::count_maps();
        let mut maps_per_live = pool::MIN_MAPS_PER_LIVE;
        let mut trials = Vec::new();
        for (name, p) in &config.plugins {
            let err = |message: String| LoadError {
                file: config.path.display().to_string(),
                line: p.line,
                plugin: name.clone(),
                component: p.component.display().to_string(),
                message,
            };
            match rt.load_plugin(name, &p.component, p.limits.clone(), p.clock) {
                Ok(mut plugin) => {
                    plugin.set_sharing(p.sharing);
                    // Instantiate once now: a component that cannot even
                    // start within its own plugin's limits fails here, not
                    // at every connection. The trial instances stay alive
                    // until all are made, so each has a slot of its own
                    // and shows the memory maps a live instance costs.
                    // The second instance shows the steady cost (the first
                    // also maps the component's memory image, once).
                    match plugin.new_guest(&rt.engine) {
                        Ok(g) => {
                            trials.push(g);
                            let before = pool::count_maps();
                            if let Ok(g2) = plugin.new_guest(&rt.engine) {
                                if let (Some(b), Some(a)) = (before, pool::count_maps()) {
                                    maps_per_live = maps_per_live.max(a.saturating_sub(b));
                                }
                                trials.push(g2);
                            }
                        }
                        Err(f) => {
                            errors.push(err(match f {
                            GuestFault::MemoryAtStart { needed, limit } => format!(
                                "the component needs at least {} of linear memory to start, more than plugins.{name}.memory ({}): raise `memory` to at least {}",
                                pool::human(needed as u64), pool::human(limit as u64), pool::human(needed as u64)
                            ),
                            f => format!("the component fails to start: {f}"),
                        }).into());
                        }
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
                    rt.plugins.insert(name.clone(), Arc::new(plugin));
                }
                Err(e) => errors.push(err(format!("{e:#}")).into()),
            }
        }
        drop(trials);
        if !errors.is_empty() {
            return Err(errors);
        }
        let usable = check_maps(config, pool, maps_before, maps_per_live).map_err(at)?;
        let caps = plugin_caps(config, usable).map_err(at)?;
        for (name, cap) in caps {
            if let Some(p) = rt.plugins.get(&name) {
                p.cap.set_max(cap);
            }
        }
        Ok(rt)
    }

    /// Compiles (or fetches from the cache) and pre-instantiates one
    /// component.
    pub fn load_plugin(
        &self,
        name: &str,
        path: &Path,
        limits: Limits,
        clock: bool,
    ) -> anyhow::Result<Plugin> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        match bytes.get(0..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => anyhow::bail!(
                "this is a core wasm module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
            ),
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => anyhow::bail!(
                "not a WebAssembly component (no `\\0asm` header with the component layer)"
            ),
        }
        let component = Component::new(&self.engine, &bytes)
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
        let server = server_factory::GuestIndices::new(&pre).ok();
        let client = client_factory::GuestIndices::new(&pre).ok();
        if server.is_none() && client.is_none() {
            anyhow::bail!("exports neither `{SERVER_FACTORY}` nor `{CLIENT_FACTORY}`; {exports}");
        }
        Ok(Plugin {
            name: name.into(),
            limits,
            pre,
            protocol,
            batch,
            server,
            client,
            clock,
            capture: None,
            exports,
            sharing: Sharing::PerConnection,
            shared: Vec::new(),
            next_shared: std::sync::atomic::AtomicUsize::new(0),
            threads: std::sync::OnceLock::new(),
            live: Vec::new(),
            batch_stats: Arc::default(),
            budget: self.budget.clone(),
            cap: InstanceCap::new(self.pool as usize),
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

/// Why a guest call failed. The connection is aborted either way; the
/// instance is not called again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestFault {
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access,
    /// running out of memory, or a bad value across the boundary.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The call ran past its CPU budget: the plugin's `cpu` limit per
    /// callback (a batch of n reads has n times that).
    #[error("guest exceeded its CPU limit of {0:?} in one call")]
    CpuLimit(Duration),
    /// The instance already trapped earlier and cannot be entered.
    #[error("guest instance is unusable after an earlier fault")]
    Poisoned,
    /// The component asked for more linear memory than its plugin's
    /// `memory` while it was being instantiated.
    #[error(
        "the component needs {needed} bytes of linear memory to start; the plugin's memory limit is {limit}"
    )]
    MemoryAtStart {
        /// The size it asked for.
        needed: usize,
        /// The plugin's limit.
        limit: usize,
    },
    /// The plugin already has `max-instances` live instances.
    #[error("the plugin is at its max-instances ({0} live instances)")]
    AtCapacity(usize),
}

/// A frozen clock: time does not pass for a guest that was not granted one.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl Plugin {
    /// Sets how instances map to connections (before the plugin is used).
    pub fn set_sharing(&mut self, sharing: Sharing) {
        self.sharing = sharing;
        self.shared = match sharing {
            Sharing::PerConnection => Vec::new(),
            Sharing::Shared(n) => (0..n.max(1)).map(|_| std::sync::Mutex::new(None)).collect(),
        };
        self.live = (0..self.shared.len())
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
    }

    /// How instances map to connections.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// Sends this plugin's guest output to `buf` instead of the host's
    /// stdout and stderr (the test transport uses this).
    pub fn capture_output(&mut self, buf: Arc<std::sync::Mutex<Vec<u8>>>) {
        self.capture = Some(buf);
    }

    /// Whether the component exports a server factory.
    pub fn is_server(&self) -> bool {
        self.server.is_some()
    }

    /// Whether the component exports a client factory.
    pub fn is_client(&self) -> bool {
        self.client.is_some()
    }

    /// Whether the component exports `batch` (see [`batch`]).
    pub fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// How many batches of reads, and reads in them, this plugin's shared
    /// instances have been handed.
    pub fn batch_stats(&self) -> &Arc<batch::BatchStats> {
        &self.batch_stats
    }

    fn wasi(&self) -> wasmtime_wasi::WasiCtx {
        let sink = |std| match &self.capture {
            Some(buf) => GuestOutput(Sink::Capture(buf.clone())),
            None => GuestOutput(Sink::Host {
                plugin: self.name.clone(),
                std,
            }),
        };
        let mut b = WasiCtxBuilder::new();
        b.stdout(sink(Std::Out))
            .stderr(sink(Std::Err))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if !self.clock {
            b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        b.build()
    }

    /// A transport state for a new connection of this plugin.
    fn new_transport(&self) -> TransportState {
        TransportState {
            out: OutBuf::with_budget(Some(self.budget.clone())),
            max_output: self.limits.max_output,
            high_water: self.limits.high_water,
            ..TransportState::default()
        }
    }

    /// Instantiates the component in a fresh Store.
    pub(crate) fn new_guest(&self, engine: &Engine) -> Result<Guest, GuestFault> {
        let state = ConnState {
            wasi: self.wasi(),
            table: wasmtime::component::ResourceTable::new(),
            limits: self.limits.store_limits(),
            cpu: CpuBudget {
                used: 0,
                per_callback: self.limits.cpu_ticks(),
                max: self.limits.cpu_ticks(),
                exceeded: false,
            },
            transports: Transports::default(),
            current: None,
            max_output: self.limits.max_output,
        };
        let mut store = Store::new(engine, state);
        // Host-side resources are host memory: bound them (the transports
        // of a shared instance's connections come on top, see `session`).
        store
            .data_mut()
            .table
            .set_max_capacity(self.limits.max_resources);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let cpu = &mut ctx.data_mut().cpu;
            cpu.used += 1;
            if cpu.used == 1 {
                limits::wake_an_idle_reactor_thread();
            }
            if cpu.used >= cpu.max {
                cpu.exceeded = true;
                Err(wasmtime::format_err!("CPU limit exceeded"))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        arm(&mut store, 1);
        let cpu = self.limits.cpu;
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            match store.data().limits.refused_memory {
                Some(needed) if needed > self.limits.memory => GuestFault::MemoryAtStart {
                    needed,
                    limit: self.limits.memory,
                },
                _ => fault(&store, cpu, e),
            }
        })?;
        let loaded = (|| {
            let api = self.protocol.load(&mut store, &instance)?;
            // Only shared instances get batches.
            let batch = self
                .batch
                .as_ref()
                .filter(|_| matches!(self.sharing, Sharing::Shared(_)))
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            let server = self
                .server
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            let client = self
                .client
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            Ok::<_, wasmtime::Error>((api, batch, server, client))
        })();
        let (api, batch, server, client) = loaded.map_err(|e| fault(&store, cpu, e))?;
        Ok(Guest {
            store,
            api,
            batch,
            server,
            client,
            poisoned: false,
        })
    }

    /// A session for one connection (or, for a client, one connector): a
    /// fresh instance, or with `instance = "shared"` a place on one of the
    /// plugin's shared instances (round robin; an instance that faulted is
    /// replaced by a fresh one). Listeners use [`Plugin::assign_instance`]
    /// and [`Plugin::instantiate_on`] instead.
    pub fn instantiate(self: &Arc<Self>, engine: &Engine) -> Result<Session, GuestFault> {
        let permit = match self.sharing {
            Sharing::PerConnection => Some(self.reserve_instance()?),
            Sharing::Shared(_) => None,
        };
        self.instantiate_reserved(engine, permit)
    }

    /// A place for one more instance of this plugin's own, under its
    /// `max-instances`: a listener reserves it when it accepts.
    pub fn reserve_instance(&self) -> Result<InstancePermit, GuestFault> {
        self.cap
            .reserve()
            .ok_or_else(|| GuestFault::AtCapacity(self.cap.max()))
    }

    /// The cap on this plugin's live instances of its own.
    pub fn instance_cap(&self) -> &Arc<InstanceCap> {
        &self.cap
    }

    /// [`Plugin::instantiate`] with the place already reserved (`None` for
    /// shared instances).
    pub fn instantiate_reserved(
        self: &Arc<Self>,
        engine: &Engine,
        permit: Option<InstancePermit>,
    ) -> Result<Session, GuestFault> {
        let home = match self.sharing {
            Sharing::PerConnection => Home::Own(Box::new(self.new_guest(engine)?)),
            Sharing::Shared(_) => {
                let i = self.next_shared.fetch_add(1, Ordering::Relaxed) % self.shared.len();
                Home::Shared(self.shared_guest(engine, i)?)
            }
        };
        let mut session = self.session(home, false)?;
        session.permit = permit;
        Ok(session)
    }

    /// With shared instances: the threads they live on, one per instance
    /// (see [`threads`]), started on first use. A listener accepts on each
    /// and runs a connection's task on its instance's thread. `None` with an
    /// instance per connection, or if the threads could not be started (the
    /// connections then run on the reactor's runtime, round robin).
    pub fn instance_threads(&self) -> Option<&[threads::InstanceThread]> {
        let Sharing::Shared(_) = self.sharing else {
            return None;
        };
        let threads = self.threads.get_or_init(|| {
            (0..self.shared.len())
                .map(|i| threads::InstanceThread::start(&self.name, i))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| {
                    tracing::warn!(plugin = %self.name, error = %e, "cannot start the shared instances' threads; their connections run on the reactor's threads");
                    Vec::new()
                })
        });
        (!threads.is_empty()).then_some(threads.as_slice())
    }

    /// Picks the shared instance for a connection accepted on instance
    /// `here`'s thread: `here`, unless it has more live connections than
    /// another instance; then the first of the least busy. The connection
    /// counts as live on it until the returned guard is dropped.
    pub fn assign_instance(self: &Arc<Self>, here: usize) -> threads::LiveGuard {
        let live = |i: usize| self.live[i].load(Ordering::Relaxed);
        let least = (0..self.live.len()).min_by_key(|&i| live(i)).unwrap_or(0);
        let instance = if here < self.live.len() && live(here) <= live(least) {
            here
        } else {
            least
        };
        threads::LiveGuard::new(self.clone(), instance)
    }

    /// The live-connection counter of shared instance `i`.
    pub(crate) fn live_count(&self, i: usize) -> &std::sync::atomic::AtomicUsize {
        &self.live[i]
    }

    /// A session on shared instance `index` (from
    /// [`Plugin::assign_instance`]), for a connection whose task runs on
    /// that instance's thread; an instance that faulted is replaced by a
    /// fresh one. Its reads are delivered in batches if the component
    /// exports `batch` ([`batch`]). Falls back to [`Plugin::instantiate`]
    /// for a plugin without shared instances.
    pub fn instantiate_on(
        self: &Arc<Self>,
        engine: &Engine,
        index: usize,
    ) -> Result<Session, GuestFault> {
        if self.shared.is_empty() {
            return self.instantiate(engine);
        }
        let home = Home::Shared(self.shared_guest(engine, index % self.shared.len())?);
        self.session(home, self.batch.is_some())
    }

    /// Shared instance `i`, made (again) if it does not exist or faulted.
    fn shared_guest(&self, engine: &Engine, i: usize) -> Result<Arc<SharedGuest>, GuestFault> {
        let mut cell = self.shared[i].lock().unwrap_or_else(|e| e.into_inner());
        Ok(match &*cell {
            Some(s) if !s.fault.is_fired() => s.clone(),
            _ => {
                let s = Arc::new(SharedGuest {
                    guest: std::sync::Mutex::new(self.new_guest(engine)?),
                    fault: ShutdownSignal::default(),
                    queue: batch::Queue::default(),
                });
                *cell = Some(s.clone());
                s
            }
        })
    }

    /// A session for one connection on `home`, with its transport cell.
    fn session(self: &Arc<Self>, home: Home, batched: bool) -> Result<Session, GuestFault> {
        let cell: TransportCell = Arc::new(std::sync::Mutex::new(self.new_transport()));
        let mut session = Session {
            plugin: self.clone(),
            home,
            batched,
            protocol: None,
            slot: 0,
            generation: 0,
            cell: cell.clone(),
            permit: None,
        };
        let max_resources = self.limits.max_resources;
        let mut g = session.guest();
        let data = g.store.data_mut();
        let (slot, generation) = data.transports.insert(cell);
        let live = data.transports.live();
        data.table.set_max_capacity(max_resources + live);
        drop(g);
        (session.slot, session.generation) = (slot, generation);
        Ok(session)
    }
}

/// One instance of a plugin's component: its Store and its exports.
pub(crate) struct Guest {
    store: Store<ConnState>,
    api: protocol::Guest,
    batch: Option<wit_batch::Guest>,
    server: Option<server_factory::Guest>,
    client: Option<client_factory::Guest>,
    poisoned: bool,
}

/// An instance that serves many connections (`instance = "shared"`).
pub(crate) struct SharedGuest {
    guest: std::sync::Mutex<Guest>,
    /// Fired when the instance faults: every connection on it is aborted.
    fault: ShutdownSignal,
    /// Reads waiting for batched delivery ([`batch`]).
    queue: batch::Queue,
}

impl SharedGuest {
    /// The instance faulted: fires its fault signal, which aborts every
    /// connection on it, and says so once, at ERROR, with what was lost.
    pub(crate) fn fail(&self, plugin: &str, fault: &GuestFault, connections: usize) {
        if matches!(fault, GuestFault::Poisoned) || self.fault.is_fired() {
            return;
        }
        self.fault.fire();
        tracing::error!(
            plugin,
            %fault,
            connections,
            "a shared instance faulted: its {connections} connection(s) are aborted and the guest state it held is lost; the next connection gets a fresh instance"
        );
    }
}

/// Where a session's instance lives.
enum Home {
    Own(Box<Guest>),
    Shared(Arc<SharedGuest>),
}

/// A session's access to its instance: direct, or under the shared
/// instance's lock.
pub(crate) enum GuestRef<'a> {
    /// An instance of the session's own.
    Own(&'a mut Guest),
    /// A shared instance, locked.
    Shared(std::sync::MutexGuard<'a, Guest>),
}

impl std::ops::Deref for GuestRef<'_> {
    type Target = Guest;
    fn deref(&self) -> &Guest {
        match self {
            GuestRef::Own(g) => g,
            GuestRef::Shared(g) => g,
        }
    }
}

impl std::ops::DerefMut for GuestRef<'_> {
    fn deref_mut(&mut self) -> &mut Guest {
        match self {
            GuestRef::Own(g) => g,
            GuestRef::Shared(g) => g,
        }
    }
}

/// Whose callback is running, for the transport's wake-ups (see
/// `ConnState::current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// One connection's callback (on the transport at this slot).
    Connection(u32),
    /// A batch: the connections with reads in it are settled after the
    /// call.
    Batch,
}

impl Guest {
    /// Runs one guest call that carries `callbacks` callbacks (one, or a
    /// batch's reads): refuses if the instance already faulted, arms the
    /// CPU budget (`cpu` per callback), records the caller, and turns a
    /// failure into a [`GuestFault`] that poisons the instance.
    fn call<R>(
        &mut self,
        cpu: Duration,
        callbacks: u32,
        caller: Caller,
        f: impl FnOnce(&mut Guest) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFault> {
        if self.poisoned {
            return Err(GuestFault::Poisoned);
        }
        let cpu = cpu * callbacks;
        arm(&mut self.store, callbacks);
        self.store.data_mut().current = Some(caller);
        let r = f(self);
        self.store.data_mut().current = None;
        r.map_err(|e| {
            self.poisoned = true;
            fault(&self.store, cpu, e)
        })
    }
}

/// Resets the CPU budget, for a call carrying `callbacks` callbacks.
fn arm(store: &mut Store<ConnState>, callbacks: u32) {
    let cpu = &mut store.data_mut().cpu;
    cpu.used = 0;
    cpu.max = cpu.per_callback.saturating_mul(u64::from(callbacks.max(1)));
    cpu.exceeded = false;
    store.set_epoch_deadline(1);
}

/// Classifies a failed guest call.
fn fault(store: &Store<ConnState>, cpu: Duration, e: wasmtime::Error) -> GuestFault {
    if store.data().cpu.exceeded {
        GuestFault::CpuLimit(cpu)
    } else if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        GuestFault::Trap(trap.to_string())
    } else {
        // A host function's error (output limit, a WASI call that would
        // block) is wrapped in the wasm backtrace: report its own message.
        GuestFault::Trap(e.root_cause().to_string())
    }
}

/// One connection's view of its plugin: the instance (its own, or a place
/// on a shared one), the connection's protocol once built, and its
/// transport. Every method is one guest callback, run under the plugin's
/// CPU and memory limits.
pub struct Session {
    plugin: Arc<Plugin>,
    home: Home,
    /// Reads go through the shared instance's batch queue.
    batched: bool,
    protocol: Option<ResourceAny>,
    /// This connection's slot in the instance's transports, and the
    /// slot's generation (what the guest's transport handle names).
    slot: u32,
    generation: u32,
    /// This connection's transport state (also in the instance's slab).
    cell: TransportCell,
    /// Its place under the plugin's `max-instances` (an instance of its
    /// own), given back after the instance is dropped.
    permit: Option<InstancePermit>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // An instance of its own goes with the session. On a shared one,
        // drop the protocol (the guest's destructor runs as a callback, under
        // the CPU budget; skipped if the instance already faulted) and free
        // the transport slot.
        if !self.is_shared() {
            return;
        }
        // A read still queued for batched delivery is skipped.
        self.transport().lost = true;
        if let Some(p) = self.protocol.take()
            && let Err(f) = self.call(|g| p.resource_drop(&mut g.store))
            && !matches!(f, GuestFault::Poisoned)
        {
            tracing::warn!(plugin = %self.plugin.name, fault = %f, "shared guest faulted dropping a protocol; its connections are aborted");
        }
        let slot = self.slot;
        self.guest().store.data_mut().transports.remove(slot);
    }
}

fn address(a: SocketAddr) -> bindings::Address {
    bindings::Address {
        host: a.ip().to_canonical().to_string(),
        port: a.port(),
    }
}

impl Session {
    /// The plugin this session runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    fn guest(&mut self) -> GuestRef<'_> {
        match &mut self.home {
            Home::Own(g) => GuestRef::Own(g),
            Home::Shared(s) => GuestRef::Shared(state::lock(&s.guest)),
        }
    }

    /// The transport state the guest's calls have built up, locked (a
    /// shared instance's callbacks may write to it from another thread).
    pub fn transport(&self) -> std::sync::MutexGuard<'_, TransportState> {
        state::lock(&self.cell)
    }

    /// Whether this connection's reads are delivered in batches (a shared
    /// instance whose component exports `batch`, from a listener): then
    /// use [`Session::queue_data`], not [`Session::data_received`].
    pub fn is_batched(&self) -> bool {
        self.batched
    }

    /// Queues `data` for batched delivery to this connection's protocol
    /// ([`batch`]); the output it causes is written to `stream`. The
    /// connection must not close cleanly while its transport's `queued`
    /// is not zero.
    pub fn queue_data(&mut self, data: &[u8], stream: &Arc<tokio::net::TcpStream>) {
        let (Home::Shared(s), Some(protocol)) = (&self.home, self.protocol) else {
            return;
        };
        self.transport().queued += data.len();
        s.queue
            .push(s, &self.plugin, protocol, &self.cell, stream, data);
    }

    /// Whether the session is on a shared instance.
    pub fn is_shared(&self) -> bool {
        matches!(self.home, Home::Shared(_))
    }

    /// For a shared instance, a listener that fires when the instance
    /// faults (every connection on it must then be aborted).
    pub fn fault_listener(&self) -> Option<crate::shutdown::Shutdown> {
        match &self.home {
            Home::Own(_) => None,
            Home::Shared(s) => Some(s.fault.subscribe()),
        }
    }

    /// Ready when a callback of another connection on the same shared
    /// instance changed this connection's transport (wrote to it, closed
    /// it); registers the task's waker otherwise.
    pub fn poll_kicked(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut t = self.transport();
        if std::mem::take(&mut t.kicked) {
            return std::task::Poll::Ready(());
        }
        if !t.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            t.waker = Some(cx.waker().clone());
        }
        std::task::Poll::Pending
    }

    /// Runs one guest callback: refuses if the instance already faulted,
    /// arms the CPU budget, marks this connection as the caller, and turns
    /// a trap into a [`GuestFault`] that poisons the instance (and, for a
    /// shared one, aborts every connection on it).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Guest) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFault> {
        let (slot, cpu) = (self.slot, self.plugin.limits.cpu);
        let mut g = self.guest();
        let r = g.call(cpu, 1, Caller::Connection(slot), f);
        let live = g.store.data().transports.live();
        drop(g);
        if let (Err(f), Home::Shared(s)) = (&r, &self.home) {
            s.fail(&self.plugin.name, f, live);
        }
        r
    }

    /// `server-factory.build-protocol(addr)`. Returns false if the guest
    /// refused the connection.
    pub fn build_server_protocol(&mut self, peer: SocketAddr) -> Result<bool, GuestFault> {
        let addr = address(peer);
        let p = self.call(|g| match g.server.clone() {
            Some(server) => server.call_build_protocol(&mut g.store, &addr),
            None => Ok(None),
        })?;
        self.protocol = p;
        Ok(self.protocol.is_some())
    }

    /// `client-factory.started-connecting(addr)`.
    pub fn started_connecting(&mut self, host: &str, port: u16) -> Result<(), GuestFault> {
        let addr = bindings::Address {
            host: host.to_string(),
            port,
        };
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_started_connecting(&mut g.store, &addr),
            None => Ok(()),
        })
    }

    /// `client-factory.build-protocol(addr)`. Returns false if the guest
    /// declined.
    pub fn build_client_protocol(&mut self, remote: SocketAddr) -> Result<bool, GuestFault> {
        let addr = address(remote);
        let p = self.call(|g| match g.client.clone() {
            Some(client) => client.call_build_protocol(&mut g.store, &addr),
            None => Ok(None),
        })?;
        self.protocol = p;
        Ok(self.protocol.is_some())
    }

    /// `client-factory.client-connection-failed(reason)`.
    pub fn client_connection_failed(
        &mut self,
        reason: &bindings::Reason,
    ) -> Result<(), GuestFault> {
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_client_connection_failed(&mut g.store, reason),
            None => Ok(()),
        })
    }

    /// `client-factory.client-connection-lost(reason)`.
    pub fn client_connection_lost(&mut self, reason: &bindings::Reason) -> Result<(), GuestFault> {
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_client_connection_lost(&mut g.store, reason),
            None => Ok(()),
        })
    }

    /// `protocol.make-connection(transport)`, with the connection's
    /// addresses recorded for `get-peer` / `get-host`.
    pub fn make_connection(
        &mut self,
        peer: SocketAddr,
        host: SocketAddr,
    ) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        {
            let mut t = self.transport();
            t.peer = Some(peer);
            t.host = Some(host);
        }
        let handle = TransportHandle {
            slot: self.slot,
            generation: self.generation,
        };
        self.call(|g| {
            let handle = g.store.data_mut().table.push(handle)?;
            let api = g.api.clone();
            api.protocol().call_make_connection(&mut g.store, p, handle)
        })
    }

    /// `protocol.data-received(data)`.
    pub fn data_received(&mut self, data: &[u8]) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| {
            let api = g.api.clone();
            api.protocol().call_data_received(&mut g.store, p, data)
        })
    }

    /// `protocol.connection-lost(reason)`. The transport stops accepting
    /// writes first.
    pub fn connection_lost(&mut self, reason: &bindings::Reason) -> Result<(), GuestFault> {
        self.transport().lost = true;
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| {
            let api = g.api.clone();
            api.protocol().call_connection_lost(&mut g.store, p, reason)
        })
    }

    /// `protocol.pause-producing()`.
    pub fn pause_producing(&mut self) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| {
            let api = g.api.clone();
            api.protocol().call_pause_producing(&mut g.store, p)
        })
    }

    /// `protocol.resume-producing()`.
    pub fn resume_producing(&mut self) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| {
            let api = g.api.clone();
            api.protocol().call_resume_producing(&mut g.store, p)
        })
    }
}

/// The pool's size: `[host] max-instances` if set and the system can hold
/// it, else as many as the system allows up to
/// [`pool::DEFAULT_MAX_INSTANCES`]. An error says which limit to change.
fn plan_pool(config: &Config, max_memory: usize) -> Result<u32, String> {
    let memory = max_memory as u64;
    let largest = config
        .plugins
        .values()
        .max_by_key(|p| p.limits.memory)
        .map_or_else(
            || "memory".to_string(),
            |p| format!("plugins.{}.memory", p.name),
        );
    let fit_space = pool::MAX_RESERVATION / pool::reservation(1, memory).max(1);
    let maps = pool::max_map_count();
    let fit_maps = maps.map_or(u64::MAX, pool::instances_for_maps);
    match config.host.max_instances {
        None => {
            let n = u64::from(pool::DEFAULT_MAX_INSTANCES)
                .min(fit_space)
                .min(fit_maps);
            if n < u64::from(pool::DEFAULT_MAX_INSTANCES) {
                tracing::info!(
                    instances = n,
                    "the instance pool is smaller than the default {} to fit this system (vm.max_map_count {maps:?}, {} memories): set [host] max-instances to choose",
                    pool::DEFAULT_MAX_INSTANCES,
                    pool::human(memory)
                );
            }
            Ok(n.max(1) as u32)
        }
        Some(n) => {
            let want = pool::reservation(u64::from(n), memory);
            if want > pool::MAX_RESERVATION {
                return Err(format!(
                    "{n} instance slots with memories of up to {} ({largest}) would reserve {} of address space, more than the {} the host allows: lower max-instances to at most {fit_space}, or lower {largest}",
                    pool::human(memory),
                    pool::human(want),
                    pool::human(pool::MAX_RESERVATION)
                ));
            }
            Ok(n)
        }
    }
}

/// How many instances can be live at once given the kernel's memory-map
/// limit, from what the process maps now (`base`, the pool's idle slots
/// included) and what one live instance of these components adds
/// (`per_live`, measured on the trial instances). An explicit `[host]
/// max-instances` past it is an error naming the `sysctl` to raise; the
/// default pool just serves fewer at once.
fn check_maps(config: &Config, pool: u32, base: Option<u64>, per_live: u64) -> Result<u32, String> {
    let (Some(max), Some(base)) = (pool::max_map_count(), base) else {
        return Ok(pool);
    };
    let needed = base + u64::from(pool) * per_live + pool::MAPS_HEADROOM;
    if needed <= max {
        return Ok(pool);
    }
    let usable = max.saturating_sub(base + pool::MAPS_HEADROOM) / per_live.max(1);
    if config.host.max_instances.is_some() {
        // A smaller pool also has fewer idle slots to map.
        let fixed = base.saturating_sub(pool::IDLE_MAPS_PER_SLOT * u64::from(pool));
        // (With some slack: the maps of threads and allocator arenas vary
        // from one start to the next.)
        let fits = max.saturating_sub(fixed + 2 * pool::MAPS_HEADROOM)
            / (pool::IDLE_MAPS_PER_SLOT + per_live);
        return Err(format!(
            "{pool} live instances of these components need about {needed} memory maps ({per_live} per live instance, measured, on top of the {base} mapped now), but the kernel allows {max} per process (vm.max_map_count): lower max-instances to at most {fits}, or raise the limit: sysctl -w vm.max_map_count={needed}"
        ));
    }
    tracing::info!(
        pool,
        usable,
        "vm.max_map_count ({max}) leaves room for {usable} live instances of these components ({per_live} memory maps each): set [host] max-instances, or raise vm.max_map_count, to change it"
    );
    Ok(usable.max(1) as u32)
}

/// Each plugin's cap on instances of its own: its `max-instances` if set;
/// otherwise an equal share of what the pool has left after the shared
/// instances and the explicit caps, so no plugin can starve another.
fn plugin_caps(config: &Config, pool: u32) -> Result<HashMap<String, usize>, String> {
    let mut reserved: u64 = 0;
    let mut unset = Vec::new();
    let mut caps = HashMap::new();
    for (name, p) in &config.plugins {
        match (p.sharing, p.max_instances) {
            (Sharing::Shared(n), _) => reserved += u64::from(n),
            (Sharing::PerConnection, Some(n)) => {
                reserved += u64::from(n);
                caps.insert(name.clone(), n as usize);
            }
            (Sharing::PerConnection, None) => unset.push(name),
        }
    }
    let left = u64::from(pool).checked_sub(reserved).ok_or_else(|| {
        format!("the plugins' max-instances and shared-instances add up to {reserved}, more than the pool's {pool} slots: raise [host] max-instances or lower the plugins' caps")
    })?;
    if !unset.is_empty() {
        let share = left / unset.len() as u64;
        if share == 0 {
            return Err(format!(
                "{left} slots are left for {} plugin(s) without max-instances ({}): raise [host] max-instances or give them max-instances",
                unset.len(),
                unset
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for name in unset {
            caps.insert(name.clone(), share as usize);
        }
    }
    Ok(caps)
}
