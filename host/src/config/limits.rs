//! The per-plugin settings the runtime enforces, as plain data: the
//! [`Limits`] of each instance and how instances map to connections
//! ([`Sharing`]). How they become wasmtime settings is
//! `crate::runtime::limits`'s business.

use std::time::Duration;

/// The limits for every instance of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest linear memory an instance may grow to, in bytes.
    /// Default 16 MiB.
    pub memory: usize,
    /// The longest a single callback may run. Past it the guest traps and
    /// its connection is aborted. Default 100 ms.
    pub cpu: Duration,
    /// When a connection's unsent output rises above this many bytes, the
    /// host stops reading from it (and pauses a registered producer).
    /// Default 1 MiB.
    pub high_water: usize,
    /// Reading (and the producer) resumes once unsent output falls to this.
    /// Default 256 KiB.
    pub low_water: usize,
    /// The most unsent output a connection may hold. A guest whose write
    /// would pass it traps, and its connection is aborted: this bounds a
    /// guest that writes without end inside one callback. Default 16 MiB.
    pub max_output: usize,
    /// The most host-side WASI resources (resource-table entries: streams,
    /// pollables, ...) one instance may hold besides its connections'
    /// transports. Each costs host memory outside the guest's `memory`
    /// limit; past this, the call that would create one traps. Default 1000.
    pub max_resources: usize,
    /// The most active delayed calls (`reactor.call-later`) one instance
    /// may have; the call past it traps. Default 10,000.
    pub max_timers: usize,
    /// The most outbound connections (`reactor.connect-tcp`) one instance
    /// may have open or opening at once; past it, `connect-tcp` returns an
    /// error. Default 100.
    pub max_outbound: usize,
}

/// The default of [`Limits::max_resources`].
pub const DEFAULT_MAX_RESOURCES: usize = 1000;
/// The default of [`Limits::max_timers`].
pub const DEFAULT_MAX_TIMERS: usize = 10_000;
/// The largest `max-timers`.
pub const MAX_TIMERS: usize = 1_000_000;
/// The default of [`Limits::max_outbound`].
pub const DEFAULT_MAX_OUTBOUND: usize = 100;
/// The largest `max-outbound`.
pub const MAX_OUTBOUND: usize = 100_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 16 << 20,
            cpu: Duration::from_millis(100),
            high_water: 1 << 20,
            low_water: 256 << 10,
            max_output: 16 << 20,
            max_resources: DEFAULT_MAX_RESOURCES,
            max_timers: DEFAULT_MAX_TIMERS,
            max_outbound: DEFAULT_MAX_OUTBOUND,
        }
    }
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
    /// the least busy, on its thread; a connector's, round
    /// robin. Guest state is shared as in one Twisted process (a factory
    /// can keep a list of its protocols and write to any of them); a fault
    /// aborts every connection on that instance, and the next connection
    /// gets a fresh one. Memory per idle connection is a few KiB instead of
    /// tens.
    Shared(u32),
}

impl Sharing {
    /// How many shared instances (none with an instance per connection).
    pub fn instances(self) -> usize {
        match self {
            Sharing::PerConnection => 0,
            Sharing::Shared(n) => n.max(1) as usize,
        }
    }
}
