//! The counters the data path bumps, and that `/metrics` reads
//! ([`crate::metrics`]): cheap enough to update on every read, write and
//! guest call whether or not metrics are served.
//!
//! A counter that every reactor thread bumps for the same listener or
//! plugin would bounce one cache line between the cores on every update;
//! so [`Counter`] and [`Histogram`] keep one cell per thread slot
//! ([`SHARDS`] of them, each on its own cache line), and a scrape adds the
//! slots up. (prometheus-client's own `Histogram` takes a mutex per
//! observation; its source says atomics are to be considered. Its
//! registry and text encoders do the exposition.)
//!
//! # Layout
//!
//! | item | owns |
//! |---|---|
//! | [`Counter`], [`Histogram`] | sharded monotonic counts, and a histogram with fixed buckets |
//! | [`Traffic`] | bytes received and sent on a listener's or connector's sockets |
//! | [`PluginStats`] | one plugin's guest calls, traps by [`FaultKind`], instances made and live; kept across reloads by name |

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Thread slots per counter.
pub const SHARDS: usize = 16;

/// One cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cell(AtomicU64);

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// A monotonic count, one cell per thread slot.
#[derive(Debug, Default)]
pub struct Counter([Cell; SHARDS]);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// Upper bounds of [`PluginStats::calls`]' buckets, in seconds: a guest
/// call takes about a microsecond for a 64-byte echo and at most its `cpu`
/// limit (100 ms by default).
pub const CALL_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1.0,
];

/// Upper bounds of a shared instance's batch sizes (reads per call).
pub const BATCH_BUCKETS: [f64; 6] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// One thread slot of a histogram: a count per bucket (not cumulative),
/// the total count and the sum in the unit's billionths.
#[derive(Debug)]
#[repr(align(64))]
struct HistogramShard {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram over fixed bucket bounds, one set of cells per thread slot.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    shards: Vec<HistogramShard>,
}

/// A histogram's totals (the encoder makes the buckets cumulative).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The sum of every observation.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
    /// `(upper bound, observations above the previous bound and at or
    /// below this one)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        let shard = || HistogramShard {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        };
        Histogram {
            bounds,
            shards: (0..SHARDS).map(|_| shard()).collect(),
        }
    }

    /// Records one observation of `v` (seconds, or a plain number).
    #[inline]
    pub fn observe(&self, v: f64) {
        let s = &self.shards[shard()];
        let i = self.bounds.partition_point(|b| *b < v);
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add((v * 1e9) as u64, Ordering::Relaxed);
    }

    /// Records a duration.
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The totals over every thread slot.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut per_bucket = vec![0u64; self.bounds.len() + 1];
        let (mut count, mut sum) = (0, 0u64);
        for s in &self.shards {
            for (total, b) in per_bucket.iter_mut().zip(&s.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
            count += s.count.load(Ordering::Relaxed);
            sum += s.sum_nanos.load(Ordering::Relaxed);
        }
        let buckets = (self.bounds.iter().copied().chain([f64::INFINITY]))
            .zip(per_bucket)
            .collect();
        HistogramSnapshot {
            sum: sum as f64 / 1e9,
            count,
            buckets,
        }
    }
}

/// Bytes received and sent on a listener's (or a connector's) sockets,
/// counted where they cross the socket ([`crate::wire::Wire`]): after TLS
/// decryption on the way in and before encryption on the way out, so the
/// protocol's bytes.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from the peers.
    pub received: Counter,
    /// Bytes written to the peers.
    pub sent: Counter,
}

/// How a guest call failed, for `twill_guest_traps_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A panic or `unreachable`: the guest gave up.
    Panic,
    /// Its `cpu` limit.
    Cpu,
    /// Its `memory` limit (a refused growth that ended in a trap, or a
    /// component too big to start).
    Memory,
    /// Its output limits (`max-output`, or guest stdout/stderr).
    Output,
    /// Any other trap: an out-of-bounds access, a bad value across the
    /// boundary, a host resource limit.
    Trap,
}

impl FaultKind {
    /// Every kind, in label order.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Panic,
        FaultKind::Cpu,
        FaultKind::Memory,
        FaultKind::Output,
        FaultKind::Trap,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Panic => "panic",
            FaultKind::Cpu => "cpu",
            FaultKind::Memory => "memory",
            FaultKind::Output => "output",
            FaultKind::Trap => "trap",
        }
    }
}

/// One plugin's counters. The reactor keeps them by plugin name, so that
/// they keep counting when a reload replaces the plugin's component.
#[derive(Debug)]
pub struct PluginStats {
    /// Every guest call (a callback, a batch, a delayed call, a factory
    /// hook) and how long it ran.
    pub calls: Histogram,
    /// Calls that trapped, by [`FaultKind`] (in [`FaultKind::ALL`] order).
    pub traps: [Counter; 5],
    /// Instances made (instantiated).
    pub instances_created: Counter,
    /// Instances alive now (made and not yet dropped).
    pub instances_live: AtomicI64,
    /// Reads per batched call on its shared instances.
    pub batch_sizes: Histogram,
    /// Shared instances whose re-creation was delayed by the backoff.
    pub restarts_delayed: Counter,
    /// Linear memory, in bytes, of its live instances together (what
    /// their memories have grown to; a wasm memory never shrinks).
    pub guest_memory: AtomicI64,
    /// Instances whose linear memory grew past [`MEMORY_WARNING`] of the
    /// plugin's `memory` (each counted once): a guest that keeps growing
    /// faults when it reaches the limit.
    pub memory_near_limit: Counter,
}

/// The share of a plugin's `memory` past which an instance's growth is
/// logged and counted (in [`PluginStats::memory_near_limit`]).
pub const MEMORY_WARNING: f64 = 0.75;

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: Histogram::new(&CALL_BUCKETS),
            traps: Default::default(),
            instances_created: Counter::default(),
            instances_live: AtomicI64::new(0),
            batch_sizes: Histogram::new(&BATCH_BUCKETS),
            restarts_delayed: Counter::default(),
            guest_memory: AtomicI64::new(0),
            memory_near_limit: Counter::default(),
        }
    }
}

impl PluginStats {
    /// Counts a trap of `kind`.
    pub fn trapped(&self, kind: FaultKind) {
        let i = FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(4);
        self.traps[i].inc();
    }

    /// Traps of `kind` so far.
    pub fn traps_of(&self, kind: FaultKind) -> u64 {
        let i = FaultKind::ALL.iter().position(|k| *k == kind).unwrap_or(4);
        self.traps[i].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_bumped_from_many_threads_adds_up() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(3)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.get(), 24_000);
    }

    #[test]
    fn a_histogram_counts_each_bucket_and_ends_at_infinity() {
        let h = Histogram::new(&BATCH_BUCKETS);
        for v in [1.0, 1.0, 3.0, 32.0, 40.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert!((s.sum - 77.0).abs() < 1e-6);
        assert_eq!(
            s.buckets,
            vec![
                (1.0, 2),
                (2.0, 0),
                (4.0, 1),
                (8.0, 0),
                (16.0, 0),
                (32.0, 1),
                (f64::INFINITY, 1)
            ]
        );
    }
}
