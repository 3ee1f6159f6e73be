//! The shutdown signal, mini-redis style: one signal every task listens on,
//! plus a completion channel whose senders the tasks hold, so the reactor
//! can wait until every connection has finished.
//!
//! The signal is a `Notify` plus a flag rather than a broadcast channel: every
//! connection polls it on every pass of its loop, and polling a registered
//! `Notified` is an atomic load, where a broadcast receiver takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

#[derive(Debug, Default)]
struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

/// A clonable handle that hands out [`Shutdown`] listeners.
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal(Arc<Signal>);

impl ShutdownSignal {
    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            signal: self.0.clone(),
        }
    }
}

/// A task's view of the shutdown signal.
#[derive(Debug)]
pub struct Shutdown {
    signal: Arc<Signal>,
}

impl Shutdown {
    /// Whether shutdown has been signalled.
    pub fn is_shutdown(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }

    /// Waits for the signal. Returns at once if it was already given.
    pub async fn recv(&self) {
        loop {
            // A `Notified` receives `notify_waiters` from the moment it is
            // created, so checking the flag after creating it cannot miss.
            let notified = self.signal.notify.notified();
            if self.is_shutdown() {
                return;
            }
            notified.await;
        }
    }
}

/// The reactor side: signal shutdown, and wait for every task to finish.
#[derive(Debug)]
pub struct ShutdownController {
    signal: ShutdownSignal,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by each task; the reactor knows all tasks are done when every
/// guard has been dropped.
#[derive(Debug, Clone)]
pub struct TaskGuard(#[allow(dead_code)] mpsc::Sender<()>);

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    /// A controller with no tasks yet.
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::channel(1);
        ShutdownController {
            signal: ShutdownSignal::default(),
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    /// A new listener for the signal.
    pub fn subscribe(&self) -> Shutdown {
        self.signal.subscribe()
    }

    /// A handle for tasks that subscribe on behalf of the tasks they spawn.
    pub fn signal_handle(&self) -> ShutdownSignal {
        self.signal.clone()
    }

    /// A guard for a new task.
    ///
    /// # Panics
    ///
    /// If called after [`wait`](Self::wait) started.
    pub fn guard(&self) -> TaskGuard {
        TaskGuard(self.done_tx.clone().expect("guard() after wait()"))
    }

    /// Tells every task to shut down.
    pub fn signal(&self) {
        self.signal.0.fired.store(true, Ordering::Release);
        self.signal.0.notify.notify_waiters();
    }

    /// Waits until every [`TaskGuard`] has been dropped. No new guards can
    /// be made once this has been called; it may be called again (after
    /// the first call was cancelled) to keep waiting.
    pub async fn wait(&mut self) {
        self.done_tx = None;
        let _ = self.done_rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_listener_hears_the_signal_even_if_subscribed_late() {
        let c = ShutdownController::new();
        let early = c.subscribe();
        let waiting = tokio::spawn(async move { early.recv().await });
        tokio::task::yield_now().await;
        c.signal();
        waiting.await.unwrap();
        let late = c.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }
}
