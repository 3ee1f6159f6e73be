//! The instance pool's size and its split between plugins: how many
//! instances the host can really hold (address space and the kernel's
//! memory-map limit), and each plugin's cap ([`InstanceCap`]), so that one
//! plugin's idle clients cannot take every instance from the others.

use std::collections::HashMap;
use std::sync::Arc;

use super::Sharing;
use crate::config::Config;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Memory maps to allow per instance slot when sizing the default pool
/// (before any component is loaded; the loaded components are then
/// measured, see `runtime::check_maps`). The pool's reservation is split
/// into separate mappings by `mprotect`: measured on the release binary,
/// an idle slot costs 2 maps (1,000 slots: 2,078 maps in all; 3,000:
/// 6,077), and a live instance of the Rust echo, test-kit or chat
/// component 4 more (500 live: +2,000). 10 per slot leaves room for
/// components with more memories and tables (interpreters).
pub const MAPS_PER_INSTANCE: u64 = 10;

/// Memory maps kept free for everything else the process maps (code,
/// thread stacks, the allocator's arenas, compiled components).
pub const MAPS_RESERVED: u64 = 4096;

/// The least memory maps a live instance is assumed to add (measured for
/// the Rust guests; a trial instance that reuses a warm slot may show
/// fewer).
pub const MIN_MAPS_PER_LIVE: u64 = 4;

/// Memory maps an idle pool slot costs (measured: see
/// [`MAPS_PER_INSTANCE`]).
pub const IDLE_MAPS_PER_SLOT: u64 = 2;

/// Memory maps left free when checking a measured pool (thread stacks, the
/// allocator's arenas, more compiled code).
pub const MAPS_HEADROOM: u64 = 1024;

/// The memory maps this process has now (lines of `/proc/self/maps`).
pub fn count_maps() -> Option<u64> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// The pool size when `[host] max-instances` is not set, if the memory-map
/// limit allows it.
pub const DEFAULT_MAX_INSTANCES: u32 = 10_000;

/// The most address space the pool may reserve: half of x86-64's 128 TiB
/// user address space.
pub const MAX_RESERVATION: u64 = 64 << 40;

/// Linear memories the pool keeps per instance slot (see
/// `limits::pooling`).
pub const MEMORIES_PER_SLOT: u64 = 2;

/// The guard after each linear memory.
pub const GUARD: u64 = 64 << 10;

/// The address space the pool may reserve: [`MAX_RESERVATION`], or less
/// under an address-space limit (`ulimit -v`, `RLIMIT_AS`), of which 4 GiB
/// is left for everything else.
pub fn address_space() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
    if !ok || lim.rlim_cur == libc::RLIM_INFINITY {
        return MAX_RESERVATION;
    }
    lim.rlim_cur.saturating_sub(4 << 30).min(MAX_RESERVATION)
}

/// The kernel's limit on memory maps per process (`vm.max_map_count`), if
/// it can be read.
pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The most instances `max_map_count` leaves room for.
pub fn instances_for_maps(max_map_count: u64) -> u64 {
    max_map_count.saturating_sub(MAPS_RESERVED) / MAPS_PER_INSTANCE
}

/// The memory maps `instances` live instances need, with the reserve.
pub fn maps_for_instances(instances: u64) -> u64 {
    instances * MAPS_PER_INSTANCE + MAPS_RESERVED
}

/// The address space the pool reserves for `instances` slots whose memories
/// may grow to `memory` bytes.
pub fn reservation(instances: u64, memory: u64) -> u64 {
    instances
        .saturating_mul(MEMORIES_PER_SLOT)
        .saturating_mul(memory.saturating_add(GUARD))
}

/// Bytes in a human unit, for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

/// One plugin's cap on live instances of its own (an instance per
/// connection, or a connector's). The listener reserves a place when it
/// accepts, so a connection over the cap is refused at once and counted,
/// instead of failing deep in instantiation.
#[derive(Debug)]
pub struct InstanceCap {
    live: AtomicUsize,
    max: AtomicUsize,
    refused: AtomicU64,
}

impl InstanceCap {
    /// A cap of `max` live instances.
    pub fn new(max: usize) -> Arc<InstanceCap> {
        Arc::new(InstanceCap {
            live: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            refused: AtomicU64::new(0),
        })
    }

    /// Sets the cap (when the pool is split between plugins).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Live instances now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Places refused because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Reserves a place for one instance, if the cap allows.
    pub fn reserve(self: &Arc<Self>) -> Option<InstancePermit> {
        let max = self.max();
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            if live >= max {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.live.compare_exchange_weak(
                live,
                live + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(InstancePermit(self.clone())),
                Err(now) => live = now,
            }
        }
    }
}

/// A place for one live instance under its plugin's [`InstanceCap`],
/// given back when dropped.
#[derive(Debug)]
pub struct InstancePermit(Arc<InstanceCap>);

impl Drop for InstancePermit {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pool's size: `[host] max-instances` if set and the system can hold
/// it, else as many as the system allows up to
/// [`DEFAULT_MAX_INSTANCES`]. An error says which limit to change.
pub(super) fn plan_pool(config: &Config, max_memory: usize) -> Result<u32, String> {
    let memory = max_memory as u64;
    let largest = config
        .plugins
        .values()
        .max_by_key(|p| p.limits.memory)
        .map_or_else(
            || "memory".to_string(),
            |p| format!("plugins.{}.memory", p.name),
        );
    let space = address_space();
    let fit_space = space / reservation(1, memory).max(1);
    let maps = max_map_count();
    let fit_maps = maps.map_or(u64::MAX, instances_for_maps);
    match config.host.max_instances {
        None => {
            let n = u64::from(DEFAULT_MAX_INSTANCES)
                .min(fit_space)
                .min(fit_maps);
            if n < u64::from(DEFAULT_MAX_INSTANCES) {
                tracing::info!(
                    instances = n,
                    "the instance pool is smaller than the default {} to fit this system (vm.max_map_count {maps:?}, {} memories): set [host] max-instances to choose",
                    DEFAULT_MAX_INSTANCES,
                    human(memory)
                );
            }
            Ok(n.max(1) as u32)
        }
        Some(n) => {
            let want = reservation(u64::from(n), memory);
            if want > space {
                return Err(format!(
                    "{n} instance slots with memories of up to {} ({largest}) would reserve {} of address space, more than the {} the pool may take here (at most 64 TiB, and the process's address-space limit, ulimit -v, less 4 GiB): lower max-instances to at most {fit_space}, or lower {largest}",
                    human(memory),
                    human(want),
                    human(space)
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
pub(super) fn check_maps(
    config: &Config,
    pool: u32,
    base: Option<u64>,
    per_live: u64,
) -> Result<u32, String> {
    let (Some(max), Some(base)) = (max_map_count(), base) else {
        return Ok(pool);
    };
    let needed = base + u64::from(pool) * per_live + MAPS_HEADROOM;
    if needed <= max {
        return Ok(pool);
    }
    let usable = max.saturating_sub(base + MAPS_HEADROOM) / per_live.max(1);
    if config.host.max_instances.is_some() {
        // A smaller pool also has fewer idle slots to map.
        let fixed = base.saturating_sub(IDLE_MAPS_PER_SLOT * u64::from(pool));
        // (With some slack: the maps of threads and allocator arenas vary
        // from one start to the next.)
        let fits = max.saturating_sub(fixed + 2 * MAPS_HEADROOM) / (IDLE_MAPS_PER_SLOT + per_live);
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
pub(super) fn plugin_caps(config: &Config, pool: u32) -> Result<HashMap<String, usize>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_refuses_past_its_max_and_counts() {
        let cap = InstanceCap::new(2);
        let a = cap.reserve().unwrap();
        let _b = cap.reserve().unwrap();
        assert!(cap.reserve().is_none());
        assert_eq!((cap.live(), cap.refused()), (2, 1));
        drop(a);
        assert!(cap.reserve().is_some());
    }

    #[test]
    fn the_default_pool_fits_the_default_map_count() {
        // Debian's and most distributions' default vm.max_map_count.
        assert!(instances_for_maps(65_530) >= 4_000);
        assert!(maps_for_instances(instances_for_maps(65_530)) <= 65_530);
        assert_eq!(human(80 << 40), "80.0 TiB");
    }
}
