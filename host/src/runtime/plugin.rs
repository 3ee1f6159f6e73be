//! A loaded plugin: its component pre-instantiated, the exports each role
//! needs, its limits and grants, and how its instances map to connections.
//! It makes the instances ([`Plugin::instantiate`]) and the sessions on
//! them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::shutdown::ShutdownSignal;

use super::bindings::{batch as wit_batch, client_factory, protocol, server_factory};
pub use crate::config::Sharing;

use super::guest::{Guest, GuestFault, Home, SharedGuest, arm, fault};
use super::limits::{self, Limits};
use super::output::{GuestOutput, Sink, Stream};
use super::pool::{InstanceCap, InstancePermit};
use super::session::Session;
use super::state::{
    ConnState, CpuBudget, OutBuf, OutputBudget, TransportCell, TransportState, Transports,
};
use super::{batch, threads};

/// Everything about one loaded plugin.
pub struct Plugin {
    /// The plugin's name in `plugins.toml`.
    pub name: Arc<str>,
    /// Its limits.
    pub limits: Limits,
    pub(super) pre: InstancePre<ConnState>,
    pub(super) protocol: protocol::GuestIndices,
    pub(super) batch: Option<wit_batch::GuestIndices>,
    pub(super) server: Option<server_factory::GuestIndices>,
    pub(super) client: Option<client_factory::GuestIndices>,
    pub(super) clock: bool,
    pub(super) capture: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
    /// "it exports `a`, `b`", for errors about missing exports.
    pub(super) exports: String,
    pub(super) sharing: Sharing,
    /// With `Sharing::Shared(n)`: the n instance slots, filled on first use.
    pub(super) shared: Vec<std::sync::Mutex<Option<Arc<SharedGuest>>>>,
    pub(super) next_shared: std::sync::atomic::AtomicUsize,
    /// With `Sharing::Shared(n)`: the n threads the instances live on,
    /// started when a listener first serves the plugin.
    pub(super) threads: std::sync::OnceLock<Vec<threads::InstanceThread>>,
    /// With `Sharing::Shared(n)`: live listener connections per instance.
    pub(super) live: Vec<std::sync::atomic::AtomicUsize>,
    /// Batched delivery's counters.
    pub(super) batch_stats: Arc<batch::BatchStats>,
    /// The host-wide ceiling on unsent output.
    pub(super) budget: Arc<OutputBudget>,
    /// The cap on live instances of its own (with an instance per
    /// connection).
    pub(super) cap: Arc<InstanceCap>,
}

/// What a plugin is loaded with besides its component: everything about it
/// is fixed when it is built.
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// Its limits.
    pub limits: Limits,
    /// Whether it sees real clocks.
    pub clock: bool,
    /// How its instances map to connections.
    pub sharing: Sharing,
    /// Capture its guest output here instead of the host's stdout and
    /// stderr (the test transport does).
    pub capture: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
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

/// A frozen clock: time does not pass for a guest that was not granted one.
pub(super) struct FrozenClock;

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
    /// How instances map to connections.
    pub fn sharing(&self) -> Sharing {
        self.sharing
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

    pub(super) fn wasi(&self) -> wasmtime_wasi::WasiCtx {
        let sink = |stream| match &self.capture {
            Some(buf) => GuestOutput(Sink::Capture(buf.clone())),
            None => GuestOutput(Sink::Host {
                plugin: self.name.clone(),
                stream,
            }),
        };
        let mut b = WasiCtxBuilder::new();
        b.stdout(sink(Stream::Stdout))
            .stderr(sink(Stream::Stderr))
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
    pub(super) fn new_transport(&self) -> TransportState {
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
            limits: limits::store_limits(&self.limits),
            cpu: CpuBudget {
                used: 0,
                per_callback: limits::cpu_ticks(&self.limits),
                max: limits::cpu_ticks(&self.limits),
                exceeded: false,
            },
            transports: Transports::default(),
            current: None,
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
    pub(super) fn shared_guest(
        &self,
        engine: &Engine,
        i: usize,
    ) -> Result<Arc<SharedGuest>, GuestFault> {
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
    pub(super) fn session(
        self: &Arc<Self>,
        home: Home,
        batched: bool,
    ) -> Result<Session, GuestFault> {
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
