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
//! | this file | the engine and linker, compiling and checking one component ([`LoadError`]) |
//! | [`diagnose`] | the message for a file that is not a Twill component (a wasip1 or other core module, a WASI command, another world, an unknown import) and the command that fixes it |
//! | [`load`] | a config's plugins, at start ([`Runtime::load`], sizing the pool) and for a reload ([`Runtime::prepare_reload`]) |
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
pub mod diagnose;
pub mod guest;
pub mod limits;
pub mod load;
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

use crate::config::HostSettings;
use crate::stats::PluginStats;
use bindings::{
    batch as wit_batch, client_factory, half_close, outbound_factory, protocol, reactor_calls,
    server_factory,
};
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
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                anyhow::bail!("{}", diagnose::core_module(bytes))
            }
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => anyhow::bail!(
                "not a WebAssembly component (no `\\0asm` header with the component layer)"
            ),
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(wasm_err)
            .context("invalid component")?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                diagnose::unknown_import(&format!("{:#}", wasm_err(e)))
            )
        })?;
        let export_names: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if let Some(wrong) = diagnose::wrong_world(&export_names) {
            anyhow::bail!("{wrong}");
        }
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
    let fix = if export == SERVER_FACTORY {
        "export a server factory (Rust: `export!(server: ...)`; Python: `serve(server=...)`; JavaScript: `serve({ server })`), i.e. build for world `server` or `peer`"
    } else if export == CLIENT_FACTORY {
        "export a client factory (Rust: `export!(client: ...)`; Python: `serve(client=...)`; JavaScript: `serve({ client })`), i.e. build for world `client` or `peer`"
    } else {
        diagnose::BUILD
    };
    format!("does not export `{export}`, which {role} needs; {exports}: {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component lacking a factory its entries need (SDK-built ones
    /// always export both; hand-written worlds may not): the message says
    /// how each SDK adds it.
    #[test]
    fn a_missing_factory_names_the_export_to_add() {
        let m = missing_export("it exports `x`", CLIENT_FACTORY, "[[connect]]");
        assert!(m.starts_with("does not export `twill:protocol/client-factory@0.1.0`, which [[connect]] needs; it exports `x`: "), "{m}");
        for sdk in [
            "export!(client: ...)",
            "serve(client=...)",
            "serve({ client })",
        ] {
            assert!(m.contains(sdk), "{m}");
        }
        let m = missing_export("it exports `x`", SERVER_FACTORY, "[[listen]]");
        assert!(
            m.contains("export!(server: ...)") && m.contains("world `server` or `peer`"),
            "{m}"
        );
    }
}
