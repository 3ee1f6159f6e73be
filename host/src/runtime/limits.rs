//! Per-plugin resource limits, and how they become wasmtime settings.
//!
//! Everything that bounds what one guest can take lives here: its linear
//! memory ([`StoreLimits`]), its CPU time per callback (epoch interruption),
//! the write high- and low-water marks that drive backpressure, and the
//! pooling allocator that sizes every instance slot to those limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::{
    Enabled, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, StoreLimits,
    StoreLimitsBuilder,
};

/// How often the epoch ticks. A callback's CPU deadline is rounded up to
/// whole ticks; a runaway guest traps at the first tick past its budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Called when a callback has run for a whole epoch tick: makes sure some
/// other reactor thread is awake to drive the sockets while this one is busy.
///
/// Callbacks run synchronously on a reactor thread. Tokio's idle worker
/// threads sleep until another worker hands them work, and the one that
/// polls the sockets may be the one now stuck in a long callback: then no
/// thread would poll sockets or timers until the callback returns (up to
/// the plugin's `cpu` limit). Spawning two no-op tasks here wakes an idle
/// worker (the second pushes the first out of this worker's LIFO slot into
/// its stealable queue, which notifies a sleeping worker); that worker
/// steals the task, runs it, and, finding the socket driver free, parks on
/// it. No effect on a current-thread runtime.
pub fn wake_an_idle_reactor_thread() {
    if let Some(h) = multi_thread_runtime() {
        h.spawn(async {});
        h.spawn(async {});
    }
}

/// The current tokio runtime, if this thread is in a multi-threaded one
/// (where other reactor threads can take over while this one is busy).
pub(crate) fn multi_thread_runtime() -> Option<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The most core memories or tables one component may hold (a Rust guest
/// built with std has one memory; interpreters such as componentize-py may
/// have a few).
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
const MAX_TABLES_PER_COMPONENT: u32 = 8;
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;

pub use crate::config::{DEFAULT_MAX_RESOURCES, Limits};
use crate::stats::{MEMORY_WARNING, PluginStats};

/// Bytes read from a socket per `data-received` call, at most (and so the
/// most a connection may have queued for batched delivery).
pub const READ_CHUNK: usize = 64 << 10;

/// The most bytes one connection may have read and queued for batched
/// delivery, undelivered: its task stops reading until they are delivered.
pub const MAX_QUEUED: usize = READ_CHUNK;

/// The limiter for one instance of a plugin with `limits`, counting its
/// memory in `stats` (under `plugin`, for the log).
pub fn store_limits(limits: &Limits, plugin: &Arc<str>, stats: Arc<PluginStats>) -> GuestLimiter {
    GuestLimiter {
        inner: StoreLimitsBuilder::new()
            .memory_size(limits.memory)
            .memories(MAX_MEMORIES_PER_COMPONENT as usize)
            .tables(MAX_TABLES_PER_COMPONENT as usize)
            .instances(MAX_CORE_INSTANCES_PER_COMPONENT as usize)
            .build(),
        refused_memory: None,
        watch: MemoryWatch {
            plugin: plugin.clone(),
            stats,
            limit: limits.memory,
            total: 0,
            warned: false,
        },
    }
}

/// One instance's linear memory, as its plugin's counters and the log see
/// it: every growth is added to [`PluginStats::guest_memory`] (and taken
/// off again when the instance is dropped), and the first growth of a
/// memory past [`MEMORY_WARNING`] of the limit is logged and counted, so
/// that a guest whose memory keeps growing is seen before it faults.
#[derive(Debug)]
struct MemoryWatch {
    plugin: Arc<str>,
    stats: Arc<PluginStats>,
    limit: usize,
    /// This instance's memories together, in bytes.
    total: usize,
    warned: bool,
}

impl MemoryWatch {
    fn grew(&mut self, current: usize, desired: usize) {
        let added = desired.saturating_sub(current);
        self.total += added;
        (self.stats.guest_memory).fetch_add(added as i64, Ordering::Relaxed);
        if !self.warned && desired as f64 > self.limit as f64 * MEMORY_WARNING && current > 0 {
            self.warned = true;
            self.stats.memory_near_limit.inc();
            tracing::warn!(
                plugin = %self.plugin,
                memory = desired,
                limit = self.limit,
                "a guest's linear memory grew past {:.0}% of its plugin's memory limit; if it keeps growing, the instance faults when it reaches the limit (twill_guest_memory_bytes shows the trend)",
                MEMORY_WARNING * 100.0
            );
        }
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        (self.stats.guest_memory).fetch_sub(self.total as i64, Ordering::Relaxed);
    }
}

/// The CPU budget per callback in epoch ticks (at least one).
pub fn cpu_ticks(limits: &Limits) -> u64 {
    let ticks = limits.cpu.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// [`StoreLimits`], plus a record of the largest memory it refused, so that
/// a component that cannot even start within its plugin's `memory` gets an
/// error saying how much it needs.
#[derive(Debug)]
pub struct GuestLimiter {
    inner: StoreLimits,
    /// The largest linear memory size, in bytes, a growth asked for and was
    /// refused.
    pub refused_memory: Option<usize>,
    watch: MemoryWatch,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.watch.grew(current, desired);
        } else {
            self.refused_memory = self.refused_memory.max(Some(desired));
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Builds the pooling allocator: `instances` slots, each sized for the
/// largest memory any plugin may use.
pub fn pooling(instances: u32, max_memory: usize) -> InstanceAllocationStrategy {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT / 4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(max_memory)
        // Keep a few warm slots per memory so reuse hits warm pages, but let
        // idle slots be reclaimed.
        .max_unused_warm_slots(64)
        // Connection churn frees an instance per connection. Resetting a
        // slot with madvise costs a TLB shootdown on every core, which
        // profiles of connect-echo-close showed as the largest single cost.
        // Instead scan for the pages the guest dirtied (PAGEMAP_SCAN, Linux
        // 6.7+) and memset them back, up to a bound. Decommits are not
        // batched: a batch would keep up to batch x memory limit of freed
        // guest memory resident (the memory fault test caught this).
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(16 << 10);
    InstanceAllocationStrategy::Pooling(pool)
}
