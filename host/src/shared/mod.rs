//! How a plugin's connections get their instance ([`Instances`]), and the
//! pool of a plugin with `instance = "shared"` ([`SharedPool`]): its
//! instances (made on first use, replaced after a fault), the thread each
//! lives on, how many live connections each serves, their batch queues and
//! batch counters. Built whole when the reactor binds, torn down with it
//! ([`SharedPool::stop`]). Besides [`crate::connection`], the only code
//! that touches sockets: batched delivery writes a read's output straight
//! back.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | this file | [`Instances`], [`SharedPool`]: slots, round robin, live counts |
//! | [`threads`] | the thread each shared instance lives on, and the guard counting a live connection |
//! | [`backoff`] | a crash-looping shared instance's restart delays |
//! | [`batch`] | batched delivery: a shared instance's queue of reads, one guest call for the reads of a moment |
//! | `timers` | a shared instance's timer task: its delayed calls, fired on its thread |

pub mod backoff;
pub mod batch;
pub mod threads;
mod timers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use crate::runtime::guest::SharedGuest;
use crate::runtime::plugin::Dial;
use crate::runtime::pool::InstancePermit;
use crate::runtime::session::ReadQueue;
use crate::runtime::state::lock;
use crate::runtime::{GuestFault, Plugin, Session, Sharing};

use batch::BatchStats;
use threads::{InstanceThread, LiveGuard};

/// How a plugin's connections get their instance: a fresh one each, or a
/// place on one of its shared instances.
#[derive(Clone)]
pub enum Instances {
    /// An instance of its own per connection (the default).
    PerConnection {
        /// The plugin.
        plugin: Arc<Plugin>,
        /// Where its guests' `connect-tcp` requests go, if it has grants:
        /// then a connection's instance can serve the connections it
        /// opens too.
        dialer: Option<Arc<dyn Dial>>,
    },
    /// A place on one of the plugin's shared instances.
    Shared(Arc<SharedPool>),
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Instances::PerConnection { plugin, dialer } => f
                .debug_struct("PerConnection")
                .field("plugin", &plugin.name)
                .field("dials", &dialer.is_some())
                .finish(),
            Instances::Shared(pool) => pool.fmt(f),
        }
    }
}

impl Instances {
    /// What `plugin`'s connections run on. With shared instances and
    /// `threads`, each instance gets a thread of its own now (a listener's
    /// connections run there, see [`threads`]); without, connections run
    /// where their task does. With `dialer`, its guests may open
    /// connections (`reactor.connect-tcp`).
    pub fn new(plugin: Arc<Plugin>, threads: bool, dialer: Option<Arc<dyn Dial>>) -> Instances {
        match plugin.sharing() {
            Sharing::PerConnection => Instances::PerConnection { plugin, dialer },
            Sharing::Shared(_) => {
                let pool = Arc::new(SharedPool::new(plugin, threads, dialer));
                pool.start();
                Instances::Shared(pool)
            }
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        match self {
            Instances::PerConnection { plugin, .. } => plugin,
            Instances::Shared(pool) => &pool.plugin,
        }
    }

    /// A session on a fresh instance of a per-connection plugin, in the
    /// place `permit` holds under its `max-instances`. If the plugin may
    /// open connections, the instance is one that can serve them too (they
    /// run on it, and it lives until its last connection ends; its delayed
    /// calls then run in a task of their own).
    pub fn own_session(&self, permit: InstancePermit) -> Result<Session, GuestFault> {
        let (plugin, dialer) = match self {
            Instances::PerConnection { plugin, dialer } => (plugin, dialer),
            Instances::Shared(pool) => return pool.next_session(),
        };
        let Some(dialer) = dialer else {
            return Session::own(plugin, permit);
        };
        let guest = plugin.new_shared_guest(Some(dialer.clone()), Some(permit))?;
        if plugin.has_reactor_calls()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(timers::run(Arc::downgrade(&guest)));
        }
        Ok(Session::shared(plugin, guest, None))
    }

    /// Whether both are the same instances (the same pool, or the same
    /// plugin's instances per connection).
    pub fn same_as(&self, other: &Instances) -> bool {
        match (self, other) {
            (Instances::Shared(a), Instances::Shared(b)) => Arc::ptr_eq(a, b),
            (
                Instances::PerConnection { plugin: a, .. },
                Instances::PerConnection { plugin: b, .. },
            ) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The shared pool, if the plugin has one.
    pub fn pool(&self) -> Option<&Arc<SharedPool>> {
        match self {
            Instances::PerConnection { .. } => None,
            Instances::Shared(pool) => Some(pool),
        }
    }

    /// A session for a connector or a test connection: a fresh instance
    /// (under the plugin's `max-instances`), or the next shared instance,
    /// round robin, with one call per read.
    pub fn session(&self) -> Result<Session, GuestFault> {
        match self {
            Instances::PerConnection { plugin, .. } => self.own_session(plugin.reserve_instance()?),
            Instances::Shared(pool) => pool.next_session(),
        }
    }
}

/// The pool of a plugin with `instance = "shared"`: n slots, each with its
/// current instance and batch queue, its live connections, and (for a
/// listener's connections) its thread.
pub struct SharedPool {
    plugin: Arc<Plugin>,
    slots: Vec<Slot>,
    /// Round robin over the slots, for sessions not placed by a listener.
    next: AtomicUsize,
    /// One per slot, or none if they were not wanted or could not start.
    threads: Vec<InstanceThread>,
    stats: Arc<BatchStats>,
    /// Where its guests' `connect-tcp` requests go, if it has grants.
    dialer: Option<Arc<dyn Dial>>,
}

/// A slot's instance and its batch queue.
type Current = (Arc<SharedGuest>, Option<Arc<batch::Queue>>);

/// One shared instance's place in the pool.
#[derive(Default)]
struct Slot {
    /// The current instance and its batch queue (none unless the
    /// component exports `batch`), made on first use and replaced once it
    /// faulted.
    current: Mutex<Option<Current>>,
    /// Live listener connections on it.
    live: AtomicUsize,
    /// When the next instance may be made, after faults.
    backoff: Mutex<backoff::Backoff>,
}

impl std::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("plugin", &self.plugin.name)
            .field("instances", &self.slots.len())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Drop for SharedPool {
    /// The last connection (or the reactor) let go: its threads stop.
    fn drop(&mut self) {
        for t in &self.threads {
            t.stop();
        }
    }
}

impl SharedPool {
    fn new(plugin: Arc<Plugin>, threads: bool, dialer: Option<Arc<dyn Dial>>) -> SharedPool {
        let n = plugin.sharing().instances();
        let threads = if threads {
            (0..n)
                .map(|i| InstanceThread::start(&plugin.name, i))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| {
                    tracing::warn!(plugin = %plugin.name, error = %e, "cannot start the shared instances' threads; their connections run on the reactor's threads");
                    Vec::new()
                })
        } else {
            Vec::new()
        };
        SharedPool {
            slots: (0..n).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            threads,
            stats: Arc::default(),
            dialer,
            plugin,
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// How many batches of reads, and reads in them, its instances have
    /// been handed.
    pub fn batch_stats(&self) -> &Arc<BatchStats> {
        &self.stats
    }

    /// The runtime of instance `i`'s thread, if the threads run
    /// ([`threads`]). A listener accepts on the first and runs a
    /// connection's task on its instance's thread.
    pub fn thread(&self, i: usize) -> Option<&Handle> {
        self.threads.get(i).map(InstanceThread::handle)
    }

    /// With `reactor-calls` exported, makes every instance now, each on its
    /// thread, so that its `start-factory` can start periodic work before
    /// any connection (otherwise an instance is made for its first
    /// connection).
    fn start(self: &Arc<Self>) {
        if !self.plugin.has_reactor_calls() {
            return;
        }
        for i in 0..self.slots.len() {
            let pool = self.clone();
            let make = move || {
                if let Err(fault) = pool.instance(i) {
                    tracing::error!(plugin = %pool.plugin.name, instance = i, %fault, "cannot start a shared instance");
                }
            };
            match (self.thread(i), tokio::runtime::Handle::try_current()) {
                (Some(thread), _) => drop(thread.spawn(async move { make() })),
                (None, Ok(rt)) => drop(rt.spawn(async move { make() })),
                (None, Err(_)) => make(),
            }
        }
    }

    /// The reactor is done: calls every live instance's `stop-factory`,
    /// then stops the instances' threads (their runtimes cancel what is
    /// left on them). The reactor calls this once its connections ended.
    pub fn stop(&self) {
        self.retire();
        for t in &self.threads {
            t.stop();
        }
    }

    /// A reload replaced the plugin: calls every live instance's
    /// `stop-factory` (as Twisted's `doStop` when a factory stops
    /// listening). Its connections go on to their end; the instances and
    /// their threads go once the last of them ends and the pool is
    /// dropped.
    pub fn retire(&self) {
        for slot in &self.slots {
            let current = lock(&slot.current).clone();
            if let Some((guest, _)) = current
                && !guest.is_faulted()
                && let Err(fault) = guest.factory_hook(false)
            {
                tracing::warn!(plugin = %self.plugin.name, %fault, "shared guest faulted in stop-factory");
            }
        }
    }

    /// Every live instance (for the test transport's clock).
    pub(crate) fn live_instances(&self) -> Vec<Arc<SharedGuest>> {
        self.slots
            .iter()
            .filter_map(|s| lock(&s.current).as_ref().map(|(g, _)| g.clone()))
            .filter(|g| !g.is_faulted())
            .collect()
    }

    /// Picks the shared instance for a connection accepted on instance
    /// `here`'s thread: `here`, unless it has more live connections than
    /// another instance; then the first of the least busy. The connection
    /// counts as live on it until the returned guard is dropped.
    pub fn assign(self: &Arc<Self>, here: usize) -> LiveGuard {
        let live = |i: usize| self.slots[i].live.load(Ordering::Relaxed);
        let least = (0..self.slots.len()).min_by_key(|&i| live(i)).unwrap_or(0);
        let instance = if here < self.slots.len() && live(here) <= live(least) {
            here
        } else {
            least
        };
        LiveGuard::new(self.clone(), instance)
    }

    /// The live-connection counter of instance `i`.
    fn live(&self, i: usize) -> &AtomicUsize {
        &self.slots[i].live
    }

    /// A session on instance `index` (from [`SharedPool::assign`]), for a
    /// listener's connection whose task runs on that instance's thread; its
    /// reads are delivered in batches if the component exports `batch`.
    pub fn session_on(&self, index: usize) -> Result<Session, GuestFault> {
        let (guest, queue) = self.instance(index % self.slots.len())?;
        let queue = queue.map(|q| q as Arc<dyn ReadQueue>);
        Ok(Session::shared(&self.plugin, guest, queue))
    }

    /// A session on the next instance, round robin, with one call per read
    /// (for connectors and the test transport).
    pub fn next_session(&self) -> Result<Session, GuestFault> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let (guest, _) = self.instance(i)?;
        Ok(Session::shared(&self.plugin, guest, None))
    }

    /// Slot `i`'s instance faulted `at` (now if not known): its backoff
    /// decides when the next is made; a delay is counted and said once.
    fn faulted(&self, i: usize, at: Option<std::time::Instant>) {
        let at = at.unwrap_or_else(std::time::Instant::now);
        let delay = lock(&self.slots[i].backoff).faulted(at);
        if !delay.is_zero() {
            self.plugin.stats().restarts_delayed.inc();
            tracing::warn!(plugin = %self.plugin.name, instance = i, delay_ms = delay.as_millis() as u64, "a shared instance faulted again soon after it was made: the next one is made in {delay:?}; connections meanwhile are refused");
        }
    }

    /// Instance `i` and its batch queue, made (again) if it does not exist
    /// or faulted; [`GuestFault::Backoff`] while a crash-looping slot waits
    /// ([`backoff`]).
    fn instance(&self, i: usize) -> Result<Current, GuestFault> {
        let slot = &self.slots[i];
        let mut current = lock(&slot.current);
        if let Some((guest, queue)) = &*current {
            if !guest.is_faulted() {
                return Ok((guest.clone(), queue.clone()));
            }
            let at = guest.faulted_at();
            *current = None;
            self.faulted(i, at);
        }
        if let Some(wait) = lock(&slot.backoff).wait(std::time::Instant::now()) {
            return Err(GuestFault::Backoff(wait));
        }
        lock(&slot.backoff).made(std::time::Instant::now());
        let guest = match self.plugin.new_shared_guest(self.dialer.clone(), None) {
            Ok(g) => g,
            Err(fault) => {
                // One that cannot even start (its start-factory traps)
                // crash-loops too.
                self.faulted(i, None);
                return Err(fault);
            }
        };
        if self.plugin.has_reactor_calls()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // On the instance's thread when a listener's connection (or
            // `start`) made it there.
            rt.spawn(timers::run(Arc::downgrade(&guest)));
        }
        let queue = self
            .plugin
            .has_batch()
            .then(|| batch::Queue::new(guest.clone(), self.stats.clone()));
        *current = Some((guest.clone(), queue.clone()));
        Ok((guest, queue))
    }
}
