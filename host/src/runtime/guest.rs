//! One instance of a component and the one way to call it: the CPU budget
//! armed per call, the caller recorded for the transport's wake-ups, and a
//! failure classified as a [`GuestFault`] that poisons the instance. Also
//! where a session's instance lives: its own, or a shared one.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::batch::Chunk;
use super::bindings::{batch as wit_batch, client_factory, protocol, server_factory};
use super::state::{Caller, ConnState};
use crate::shutdown::ShutdownSignal;

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

/// One instance of a plugin's component: its Store and its exports.
pub(crate) struct Guest {
    pub(super) store: Store<ConnState>,
    pub(super) api: protocol::Guest,
    pub(super) batch: Option<wit_batch::Guest>,
    pub(super) server: Option<server_factory::Guest>,
    pub(super) client: Option<client_factory::Guest>,
    pub(super) poisoned: bool,
}

/// An instance that serves many connections (`instance = "shared"`).
pub struct SharedGuest {
    pub(super) guest: std::sync::Mutex<Guest>,
    /// Fired when the instance faults: every connection on it is aborted.
    pub(super) fault: ShutdownSignal,
    /// Its plugin's name and CPU limit per callback.
    pub(super) plugin: Arc<str>,
    pub(super) cpu: Duration,
}

impl SharedGuest {
    /// Its plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
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

    /// The instance faulted (the caller no longer holds its lock): fires
    /// its fault signal, which aborts every connection on it, and says so
    /// once, at ERROR, with what was lost.
    pub(crate) fn fail(&self, fault: &GuestFault) {
        if matches!(fault, GuestFault::Poisoned) || self.fault.is_fired() {
            return;
        }
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
        let r = f(self);
        self.store.data_mut().current = None;
        r.map_err(|e| {
            self.poisoned = true;
            fault(&self.store, cpu, e)
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
