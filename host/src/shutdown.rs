//! The shutdown signal, mini-redis style: a broadcast channel every task
//! listens on, plus a completion channel whose senders the tasks hold, so the
//! reactor can wait until every connection has finished.

use tokio::sync::{broadcast, mpsc};

/// A task's view of the shutdown signal.
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    /// Wraps a receiver of the reactor's shutdown broadcast.
    pub fn new(notify: broadcast::Receiver<()>) -> Shutdown {
        Shutdown {
            is_shutdown: false,
            notify,
        }
    }

    /// Whether shutdown has been signalled.
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal. Returns at once if it was already received.
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // Lagging or a closed sender both mean "shut down".
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}

/// The reactor side: signal shutdown, and wait for every task to finish.
#[derive(Debug)]
pub struct ShutdownController {
    notify: broadcast::Sender<()>,
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
        let (notify, _) = broadcast::channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        ShutdownController {
            notify,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    /// A new listener for the signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown::new(self.notify.subscribe())
    }

    /// The broadcast sender, for tasks that subscribe on behalf of the
    /// tasks they spawn.
    pub fn sender(&self) -> broadcast::Sender<()> {
        self.notify.clone()
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
        let _ = self.notify.send(());
    }

    /// Waits until every [`TaskGuard`] has been dropped. No new guards can
    /// be made once this has been called; it may be called again (after
    /// the first call was cancelled) to keep waiting.
    pub async fn wait(&mut self) {
        self.done_tx = None;
        let _ = self.done_rx.recv().await;
    }
}
