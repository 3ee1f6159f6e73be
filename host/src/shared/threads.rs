//! The threads a plugin's shared instances live on.
//!
//! A shared instance serves many connections, and its callbacks run one at
//! a time under its lock. On the reactor's work-stealing runtime, those
//! connections' tasks run on whichever worker picks them up, so two workers
//! would take turns on one instance: they wait for each other's callbacks,
//! and the instance's memory and tables move between their caches on every
//! turn. Instead, each shared instance has a thread of its own, running a
//! single-threaded tokio runtime. The first instance's thread accepts the
//! listener's connections; a connection stays there unless that instance
//! has more live connections than another, and then moves, once, to the
//! least busy instance's thread ([`SharedPool::assign`]). A
//! connection's socket, timers and callbacks then all stay on its
//! instance's thread, and its instance's lock is not contended by the
//! instance's own connections.
//!
//! In `bench/` this cut the shared instances' CPU per 64-byte round trip
//! by 5–12%. The price is paid by connections that move: waking the other
//! thread and moving the socket to its reactor. With 50 clients connecting,
//! echoing once and closing in a loop, a connection cost about 30 µs of
//! CPU instead of 24 µs; a client that connects, echoes and closes one
//! connection at a time never moves. (A version where every instance's
//! thread accepted on its own copy of the socket woke both threads for
//! every connection: 60 → 80 µs per connection made one at a time.)
//!
//! It does not change what a runaway guest can stall: a callback holds its
//! instance's lock, so every connection on that instance already waited for
//! it, and they are exactly the connections on its thread. Connections of
//! other plugins and of other instances run elsewhere.
//!
//! The threads start when the reactor binds a listener for the plugin
//! ([`super::Instances::new`]), and stop when the reactor is done
//! ([`super::SharedPool::stop`]; their runtimes then cancel what is left,
//! after the reactor waited for its connections).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::SharedPool;

/// One shared instance's thread: its runtime's handle, and the sender
/// whose drop stops it.
pub struct InstanceThread {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl InstanceThread {
    /// Starts thread `index` of `plugin`, named `twill-PLUGIN-INDEX`
    /// (Linux keeps the first 15 bytes), and returns once it runs.
    pub(crate) fn start(plugin: &str, index: usize) -> std::io::Result<InstanceThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (running, started) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name(format!("twill-{plugin}-{index}"))
            .spawn(move || {
                let _ = running.send(());
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        // Return once the thread runs (and bears its name), not merely once
        // it was asked for.
        started
            .recv()
            .map_err(|_| std::io::Error::other("the instance thread ended at start"))?;
        Ok(InstanceThread {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Stops the thread (its runtime cancels its tasks). Idempotent.
    pub(crate) fn stop(&self) {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The thread's runtime, to spawn a connection's task on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// A connection counted as live on a shared instance
/// ([`SharedPool::assign`]) until dropped.
pub struct LiveGuard {
    pool: Arc<SharedPool>,
    instance: usize,
}

impl LiveGuard {
    pub(crate) fn new(pool: Arc<SharedPool>, instance: usize) -> LiveGuard {
        pool.live(instance).fetch_add(1, Ordering::Relaxed);
        LiveGuard { pool, instance }
    }

    /// The instance the connection was assigned to.
    pub fn instance(&self) -> usize {
        self.instance
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.pool
            .live(self.instance)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
