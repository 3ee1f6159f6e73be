//! A loaded plugin, immutable once built: its component pre-instantiated,
//! the exports each role needs, its limits and grants. It makes instances
//! (`Plugin::new_guest`, [`Plugin::new_shared_guest`]) and transport
//! states; sessions on them are made in [`super::session`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::config::PluginConfig;
use crate::shutdown::ShutdownSignal;
use crate::stats::PluginStats;

use super::bindings::{
    batch as wit_batch, client_factory, half_close, outbound_factory, protocol, reactor_calls,
    server_factory,
};
use super::clock::{Clock, Timers};
pub use crate::config::Sharing;

use super::guest::{Guest, GuestFault, SharedGuest, arm, fault};
use super::limits::{self, Limits};
use super::outbound::{ConnectRequest, Outbound, OutboundSlot};
use super::outbuf::OutputBudget;
use super::output::{GuestOutput, Sink, Stream};
use super::pool::{InstanceCap, InstancePermit};
use super::state::{ConnState, CpuBudget, TransportState, Transports};

/// Everything about one loaded plugin.
pub struct Plugin {
    /// The plugin's name in `plugins.toml`.
    pub name: Arc<str>,
    /// Its limits.
    pub limits: Limits,
    pub(super) pre: InstancePre<ConnState>,
    pub(super) protocol: protocol::GuestIndices,
    pub(super) batch: Option<wit_batch::GuestIndices>,
    pub(super) reactor_calls: Option<reactor_calls::GuestIndices>,
    /// The reactor clock its delayed calls run on.
    pub(super) time: Clock,
    pub(super) server: Option<server_factory::GuestIndices>,
    pub(super) client: Option<client_factory::GuestIndices>,
    pub(super) outbound: Option<outbound_factory::GuestIndices>,
    pub(super) half_close: Option<half_close::GuestIndices>,
    /// Where its guest may connect (`connect`).
    pub(super) grants: Arc<crate::grants::Grants>,
    /// Its guest's environment (`env`).
    pub(super) env: Vec<(String, String)>,
    pub(super) clock: bool,
    pub(super) capture: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
    /// "it exports `a`, `b`", for errors about missing exports.
    pub(super) exports: String,
    pub(super) sharing: Sharing,
    /// The host-wide ceiling on unsent output.
    pub(super) budget: Arc<OutputBudget>,
    /// The cap on live instances of its own (with an instance per
    /// connection).
    pub(super) cap: Arc<InstanceCap>,
    /// Its calls, traps and instances, counted for `/metrics`.
    pub(super) stats: Arc<PluginStats>,
    /// What it was loaded from, when it came from a config (a reload
    /// reuses it if that is unchanged).
    pub(super) source: Option<Source>,
}

/// What a plugin was loaded from: its settings (less their line) and its
/// component's SHA-256. A reload reuses a plugin whose source is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    settings: PluginConfig,
    digest: [u8; 32],
}

impl Source {
    pub(super) fn new(p: &PluginConfig, bytes: &[u8]) -> Source {
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

/// Makes the connection a request asks for, on `guest`'s instance, and
/// reports the outcome through its `outbound-factory`. Implemented by the
/// crate's `outbound` module.
pub trait Dial: Send + Sync {
    /// Starts the attempt (without blocking: it spawns a task); `slot`
    /// counts it under `max-outbound` until its connection ends.
    fn dial(&self, guest: Arc<SharedGuest>, request: ConnectRequest, slot: OutboundSlot);
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
    /// The reactor clock (a manual one under the test transport).
    pub time: Clock,
    /// Where its guest may connect.
    pub connect: crate::grants::Grants,
    /// Its guest's environment.
    pub env: Vec<(String, String)>,
    /// Where its calls, traps and instances are counted (the reactor
    /// keeps one per plugin name across reloads).
    pub stats: Arc<PluginStats>,
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

    /// Whether the component exports `batch` (reads of several
    /// connections on a shared instance in one call).
    pub fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Whether the component exports `reactor-calls` (delayed calls and
    /// the factory hooks).
    pub fn has_reactor_calls(&self) -> bool {
        self.reactor_calls.is_some()
    }

    /// Where its guest may connect (`connect`); empty if nowhere.
    pub fn grants(&self) -> &Arc<crate::grants::Grants> {
        &self.grants
    }

    /// Whether the component exports `outbound-factory`.
    pub fn has_outbound_factory(&self) -> bool {
        self.outbound.is_some()
    }

    /// The reactor clock its delayed calls run on.
    pub fn time(&self) -> &Clock {
        &self.time
    }

    /// The engine its instances run on.
    pub fn engine(&self) -> &Engine {
        self.pre.engine()
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
        for (k, v) in &self.env {
            b.env(k, v);
        }
        if !self.clock {
            b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        b.build()
    }

    /// A transport state for a new connection of this plugin.
    pub(super) fn new_transport(&self) -> TransportState {
        TransportState::new(
            Some(self.budget.clone()),
            self.limits.max_output,
            self.limits.high_water,
            self.limits.low_water,
        )
    }

    /// Instantiates the component in a fresh Store.
    pub(crate) fn new_guest(&self) -> Result<Guest, GuestFault> {
        let state = ConnState {
            wasi: self.wasi(),
            table: wasmtime::component::ResourceTable::new(),
            limits: limits::store_limits(&self.limits, &self.name, self.stats.clone()),
            cpu: CpuBudget {
                used: 0,
                per_callback: limits::cpu_ticks(&self.limits),
                max: limits::cpu_ticks(&self.limits),
                exceeded: false,
            },
            transports: Transports::default(),
            timers: Timers::new(self.time.clone(), self.limits.max_timers),
            fires_timers: self.reactor_calls.is_some(),
            max_resources: self.limits.max_resources,
            outbound: None,
            touched: Vec::new(),
            current: None,
        };
        let mut store = Store::new(self.pre.engine(), state);
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
                Some(needed) if needed > self.limits.memory => {
                    self.stats.trapped(crate::stats::FaultKind::Memory);
                    GuestFault::MemoryAtStart {
                        needed,
                        limit: self.limits.memory,
                    }
                }
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
            let calls = self
                .reactor_calls
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            let outbound = self
                .outbound
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            let half_close = self
                .half_close
                .as_ref()
                .map(|i| i.load(&mut store, &instance))
                .transpose()?;
            Ok::<_, wasmtime::Error>((api, batch, server, client, calls, outbound, half_close))
        })();
        let (api, batch, server, client, reactor_calls, outbound, half_close) =
            loaded.map_err(|e| fault(&store, cpu, e))?;
        self.stats.instances_created.inc();
        self.stats.instances_live.fetch_add(1, Ordering::Relaxed);
        Ok(Guest {
            stats: self.stats.clone(),
            store,
            api,
            batch,
            reactor_calls,
            server,
            client,
            outbound,
            half_close,
            poisoned: false,
        })
    }

    /// A place for one more instance of this plugin's own, under its
    /// `max-instances`: a listener reserves it when it accepts.
    pub fn reserve_instance(&self) -> Result<InstancePermit, GuestFault> {
        self.cap
            .reserve()
            .ok_or_else(|| GuestFault::AtCapacity(self.cap.max()))
    }

    /// Its calls, traps and instances.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    /// The cap on this plugin's live instances of its own.
    pub fn instance_cap(&self) -> &Arc<InstanceCap> {
        &self.cap
    }

    /// A fresh instance that can serve several connections, its
    /// `start-factory` called: one of a shared pool (`instance =
    /// "shared"`; the crate's `shared` module keeps the pool and drives
    /// their delayed calls), or, with `own`, one connection's instance
    /// that may open more (its plugin has `connect` grants), holding its
    /// place under `max-instances` and calling `stop-factory` once its
    /// last connection ends. With `dialer`, its `reactor.connect-tcp`
    /// requests go there.
    pub fn new_shared_guest(
        &self,
        dialer: Option<Arc<dyn Dial>>,
        own: Option<InstancePermit>,
    ) -> Result<Arc<SharedGuest>, GuestFault> {
        let mut guest = self.new_guest()?;
        let wake = Arc::new(tokio::sync::Notify::new());
        guest.store.data_mut().timers.set_wake(wake.clone());
        let factory = self.outbound.is_some();
        let max = self.limits.max_outbound;
        let shared = Arc::new_cyclic(|me: &std::sync::Weak<SharedGuest>| {
            guest.store.data_mut().outbound = dialer.map(|dialer| {
                let me = me.clone();
                Outbound {
                    start: Box::new(move |request, slot| {
                        let guest = me.upgrade().ok_or("the instance is shutting down")?;
                        dialer.dial(guest, request, slot);
                        Ok(())
                    }),
                    live: Arc::default(),
                    max,
                    factory,
                }
            });
            SharedGuest {
                guest: std::sync::Mutex::new(guest),
                fault: ShutdownSignal::default(),
                faulted_at: std::sync::OnceLock::new(),
                plugin: self.name.clone(),
                cpu: self.limits.cpu,
                wake,
                own,
            }
        });
        shared.factory_hook(true)?;
        Ok(shared)
    }
}
