//! One instance of a component and the one way to call it: the CPU budget
//! armed per call, the caller recorded for the transport's wake-ups, and a
//! failure classified as a [`GuestFault`] that poisons the instance. Also
//! where a session's instance lives: its own, or a shared one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::batch::Chunk;
use super::bindings::{
    Reason, batch as wit_batch, client_factory, half_close, outbound_factory, protocol,
    reactor_calls, server_factory,
};
use super::state::{Caller, ConnState};
use crate::shutdown::ShutdownSignal;
use crate::stats::{FaultKind, PluginStats};

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
    /// A shared instance that keeps faulting is waiting this long before
    /// it is made again (the crate's `shared::backoff`).
    #[error("the shared instance is restarting after repeated faults (next attempt in {0:?})")]
    Backoff(Duration),
}

/// One instance of a plugin's component: its Store and its exports.
pub(crate) struct Guest {
    pub(super) store: Store<ConnState>,
    pub(super) api: protocol::Guest,
    pub(super) batch: Option<wit_batch::Guest>,
    pub(super) reactor_calls: Option<reactor_calls::Guest>,
    pub(super) server: Option<server_factory::Guest>,
    pub(super) client: Option<client_factory::Guest>,
    pub(super) outbound: Option<outbound_factory::Guest>,
    pub(super) half_close: Option<half_close::Guest>,
    pub(super) poisoned: bool,
    /// Its plugin's counters: each call's duration, traps by kind, and
    /// this instance among the live ones until it is dropped.
    pub(super) stats: Arc<PluginStats>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stats.instances_live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An instance that serves many connections (`instance = "shared"`).
pub struct SharedGuest {
    pub(super) guest: std::sync::Mutex<Guest>,
    /// Fired when the instance faults: every connection on it is aborted.
    pub(super) fault: ShutdownSignal,
    /// When it faulted (the crash-loop backoff counts from then).
    pub(super) faulted_at: std::sync::OnceLock<Instant>,
    /// Its plugin's name and CPU limit per callback.
    pub(super) plugin: Arc<str>,
    pub(super) cpu: Duration,
    /// Wakes its timer task when a delayed call falls due earlier, or
    /// the instance is gone.
    pub(super) wake: Arc<tokio::sync::Notify>,
    /// For an instance of one connection's own that can open more (its
    /// plugin has `connect` grants): its place under `max-instances`, and
    /// `stop-factory` is called when its last connection ends.
    pub(super) own: Option<super::pool::InstancePermit>,
}

impl Drop for SharedGuest {
    fn drop(&mut self) {
        // Let the timer task see that the instance is gone, and end.
        self.wake.notify_one();
        if self.own.is_some() && !self.fault.is_fired() {
            let g = self.guest.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Err(fault) = g.factory_hook(self.cpu, Caller::Reactor, false) {
                tracing::warn!(plugin = %self.plugin, %fault, "guest faulted in stop-factory");
            }
        }
    }
}

impl SharedGuest {
    /// Its plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// When the instance faulted, if it did.
    pub fn faulted_at(&self) -> Option<Instant> {
        self.faulted_at.get().copied()
    }

    /// Whether the instance faulted (its connections are being aborted;
    /// the next connection needs a fresh instance).
    pub fn is_faulted(&self) -> bool {
        self.fault.is_fired()
    }

    /// One `batch.data-received` call: `chunks` name each read's protocol
    /// and length, `data` holds their bytes in order. The call has the CPU
    /// budget of one callback per chunk. A fault poisons the instance and
    /// fires its fault signal, which aborts every connection on it.
    pub fn data_received_batch(&self, chunks: &[Chunk], data: &[u8]) -> Result<(), GuestFault> {
        let mut g = super::state::lock(&self.guest);
        g.stats.batch_sizes.observe(chunks.len() as f64);
        let callbacks = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        let r = g.call(self.cpu, callbacks, Caller::Batch, |g| {
            match g.batch.clone() {
                Some(batch) => batch.call_data_received(&mut g.store, chunks, data),
                None => Ok(()),
            }
        });
        drop(g);
        if let Err(f) = &r {
            self.fail(f);
        }
        r
    }

    /// Whether the component exports `reactor-calls` (delayed calls and
    /// the factory hooks).
    pub fn has_reactor_calls(&self) -> bool {
        super::state::lock(&self.guest).reactor_calls.is_some()
    }

    /// What its timer task sleeps on: told when a delayed call falls due
    /// earlier than any before, and when the instance is dropped.
    pub fn wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.wake
    }

    /// When its next delayed call falls due (or a little earlier), as a
    /// real instant; none if it has none, or runs on a manual clock.
    pub fn next_timer(&self) -> Option<std::time::Instant> {
        super::state::lock(&self.guest).next_timer()
    }

    /// Fires its due delayed calls (one pass, as `Guest::fire_due` does).
    /// A fault poisons the instance and aborts its connections.
    pub fn fire_timers(&self) -> Result<usize, GuestFault> {
        let r = super::state::lock(&self.guest).fire_due(self.cpu, Caller::Reactor);
        if let Err(f) = &r {
            self.fail(f);
        }
        r
    }

    /// When its next delayed call is due on its clock, exactly (for the
    /// test transport's clock).
    pub fn exact_next_due(&self) -> Option<u64> {
        super::state::lock(&self.guest).exact_next_due()
    }

    /// Fires its first delayed call if it is due by `now` (for the test
    /// transport's clock). A fault poisons the instance.
    pub fn fire_one(&self, now: u64) -> Result<bool, GuestFault> {
        let r = super::state::lock(&self.guest).fire_one(self.cpu, Caller::Reactor, now);
        if let Err(f) = &r {
            self.fail(f);
        }
        r
    }

    /// `outbound-factory.client-connection-failed(token, reason)`.
    pub fn outbound_failed(&self, token: u64, reason: &Reason) -> Result<(), GuestFault> {
        self.reactor_call(|g| match g.outbound.clone() {
            Some(f) => f.call_client_connection_failed(&mut g.store, token, reason),
            None => Ok(()),
        })
    }

    /// `outbound-factory.client-connection-lost(token, reason)`.
    pub fn outbound_lost(&self, token: u64, reason: &Reason) -> Result<(), GuestFault> {
        self.reactor_call(|g| match g.outbound.clone() {
            Some(f) => f.call_client_connection_lost(&mut g.store, token, reason),
            None => Ok(()),
        })
    }

    /// One call not about one connection, through the one call path; a
    /// fault poisons the instance and aborts its connections.
    fn reactor_call(
        &self,
        f: impl FnOnce(&mut Guest) -> wasmtime::Result<()>,
    ) -> Result<(), GuestFault> {
        let r = super::state::lock(&self.guest).call(self.cpu, 1, Caller::Reactor, f);
        if let Err(fault) = &r {
            self.fail(fault);
        }
        r
    }

    /// `reactor-calls.start-factory` or `stop-factory`, if exported.
    pub fn factory_hook(&self, start: bool) -> Result<(), GuestFault> {
        let r = super::state::lock(&self.guest).factory_hook(self.cpu, Caller::Reactor, start);
        if let Err(f) = &r {
            self.fail(f);
        }
        r
    }

    /// The instance faulted (the caller no longer holds its lock): fires
    /// its fault signal, which aborts every connection on it, and says so
    /// once, at ERROR, with what was lost.
    pub(crate) fn fail(&self, fault: &GuestFault) {
        if matches!(fault, GuestFault::Poisoned) || self.fault.is_fired() {
            return;
        }
        let _ = self.faulted_at.set(Instant::now());
        self.fault.fire();
        let connections = super::state::lock(&self.guest)
            .store
            .data()
            .transports
            .live();
        tracing::error!(
            plugin = %self.plugin,
            %fault,
            connections,
            "a shared instance faulted: its {connections} connection(s) are aborted and the guest state it held is lost; the next connection gets a fresh instance"
        );
    }
}

/// Where a session's instance lives.
pub(super) enum Home {
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

impl Guest {
    /// Runs one guest call that carries `callbacks` callbacks (one, or a
    /// batch's reads): refuses if the instance already faulted, arms the
    /// CPU budget (`cpu` per callback), records the caller, and turns a
    /// failure into a [`GuestFault`] that poisons the instance.
    pub(super) fn call<R>(
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
        let started = Instant::now();
        let r = f(self);
        self.stats.calls.observe_duration(started.elapsed());
        self.store.data_mut().current = None;
        r.map_err(|e| {
            self.poisoned = true;
            let fault = fault(&self.store, cpu, e);
            self.stats.trapped(fault.kind(&self.store));
            fault
        })
    }
}

/// The most delayed calls one pass fires before the driver looks at its
/// sockets again.
const MAX_FIRES_PER_PASS: usize = 1024;

impl Guest {
    /// When its next delayed call falls due (or a little earlier), as a
    /// real instant; none without calls, or on a manual clock.
    pub(super) fn next_timer(&self) -> Option<std::time::Instant> {
        let timers = &self.store.data().timers;
        timers.next_due().and_then(|ns| timers.clock().instant(ns))
    }

    /// One pass of firing: every delayed call due now and scheduled before
    /// the pass began, in order, each as a `timer-fired` callback with its
    /// own CPU budget (at most [`MAX_FIRES_PER_PASS`]). Calls scheduled by
    /// these callbacks wait for the next pass, after the sockets had their
    /// turn. Returns how many fired.
    pub(super) fn fire_due(&mut self, cpu: Duration, caller: Caller) -> Result<usize, GuestFault> {
        let Some(calls) = self.reactor_calls.clone() else {
            return Ok(0);
        };
        let timers = &self.store.data().timers;
        let (now, fence) = (timers.clock().now(), timers.fence());
        let mut fired = 0;
        while fired < MAX_FIRES_PER_PASS {
            let Some(token) = self.store.data_mut().timers.pop_due(now, fence) else {
                break;
            };
            self.call(cpu, 1, caller, |g| {
                calls.call_timer_fired(&mut g.store, token)
            })?;
            fired += 1;
        }
        Ok(fired)
    }

    /// When its next delayed call is due on its clock, exactly.
    pub(super) fn exact_next_due(&mut self) -> Option<u64> {
        self.reactor_calls.as_ref()?;
        self.store.data_mut().timers.exact_next_due()
    }

    /// Fires the one delayed call that is due first, if one is due by
    /// `now` (a test clock steps calls one at a time across instances).
    pub(super) fn fire_one(
        &mut self,
        cpu: Duration,
        caller: Caller,
        now: u64,
    ) -> Result<bool, GuestFault> {
        let Some(calls) = self.reactor_calls.clone() else {
            return Ok(false);
        };
        let Some(token) = self.store.data_mut().timers.pop_due(now, u64::MAX) else {
            return Ok(false);
        };
        self.call(cpu, 1, caller, |g| {
            calls.call_timer_fired(&mut g.store, token)
        })?;
        Ok(true)
    }

    /// `reactor-calls.start-factory` (or `stop-factory`), if exported.
    pub(super) fn factory_hook(
        &mut self,
        cpu: Duration,
        caller: Caller,
        start: bool,
    ) -> Result<(), GuestFault> {
        let Some(calls) = self.reactor_calls.clone() else {
            return Ok(());
        };
        self.call(cpu, 1, caller, |g| {
            if start {
                calls.call_start_factory(&mut g.store)
            } else {
                calls.call_stop_factory(&mut g.store)
            }
        })
    }
}

/// Resets the CPU budget, for a call carrying `callbacks` callbacks.
pub(super) fn arm(store: &mut Store<ConnState>, callbacks: u32) {
    let cpu = &mut store.data_mut().cpu;
    cpu.used = 0;
    cpu.max = cpu.per_callback.saturating_mul(u64::from(callbacks.max(1)));
    cpu.exceeded = false;
    store.set_epoch_deadline(1);
}

/// Classifies a failed guest call.
impl GuestFault {
    /// What kind of failure it was, for the trap counters; `store` tells
    /// a refused memory growth apart from a plain panic.
    fn kind(&self, store: &Store<ConnState>) -> FaultKind {
        match self {
            GuestFault::CpuLimit(_) => FaultKind::Cpu,
            GuestFault::MemoryAtStart { .. } => FaultKind::Memory,
            _ if store.data().limits.refused_memory.is_some() => FaultKind::Memory,
            GuestFault::Trap(m) if m.contains("output limit") => FaultKind::Output,
            GuestFault::Trap(m) if m.contains("unreachable") => FaultKind::Panic,
            _ => FaultKind::Trap,
        }
    }
}

pub(super) fn fault(store: &Store<ConnState>, cpu: Duration, e: wasmtime::Error) -> GuestFault {
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
