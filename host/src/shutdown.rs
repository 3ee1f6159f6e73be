//! The shutdown signal, mini-redis style: one signal every task listens on,
//! plus a completion channel whose senders the tasks hold, so the reactor
//! can wait until every connection has finished. A second signal, *abort*,
//! fires when the graceful deadline passes: every connection still open
//! then resets (never a clean close that would disguise a truncation); the
//! connections count themselves open until they close on purpose.
//!
//! The signal is a flag plus a registry of wakers rather than a broadcast
//! channel or a `Notify`: every connection polls it on every pass of its
//! loop, and both of those take a lock on each poll (`Notify` showed up at
//! 1.1% of the ping-pong profile). A [`Recv`] future registers its task's
//! waker once, and from then on a poll is one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct Signal {
    fired: AtomicBool,
    wakers: Mutex<Wakers>,
}

/// The registered wakers, in reusable slots.
#[derive(Debug, Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Wakers {
    fn insert(&mut self, w: Waker) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(w);
                i
            }
            None => {
                self.slots.push(Some(w));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        self.slots[i] = None;
        self.free.push(i);
    }
}

impl Signal {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for w in wakers.slots.iter().flatten() {
            w.wake_by_ref();
        }
    }
}

/// The abort signal, and how many connections it would reset now.
#[derive(Debug, Default)]
struct Abort {
    signal: Signal,
    /// Connections open and not yet closing cleanly: the ones an abort
    /// resets.
    open: std::sync::atomic::AtomicU64,
}

/// A clonable handle that hands out [`Shutdown`] listeners.
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal {
    signal: Arc<Signal>,
    /// The reactor's signal has an abort signal; a shared instance's fault
    /// signal has none.
    abort: Option<Arc<Abort>>,
}

impl ShutdownSignal {
    /// Fires the signal: every listener's `recv` completes, now and later.
    pub fn fire(&self) {
        self.signal.fire();
    }

    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            signal: self.signal.clone(),
            abort: self.abort.clone(),
        }
    }
}

/// A task's view of the shutdown signal.
#[derive(Debug)]
pub struct Shutdown {
    signal: Arc<Signal>,
    abort: Option<Arc<Abort>>,
}

impl Shutdown {
    /// Waits for the abort signal (the graceful deadline passed): the task
    /// must then reset its connection. Never completes for a listener
    /// without one.
    pub async fn aborted(&self) {
        match &self.abort {
            Some(a) => {
                Recv {
                    signal: &a.signal,
                    slot: None,
                }
                .await
            }
            None => std::future::pending().await,
        }
    }

    /// Counts a connection as open (one the abort signal would reset)
    /// until the returned guard is dropped: when it starts closing cleanly,
    /// or ends.
    pub fn open_connection(&self) -> OpenConnection {
        if let Some(a) = &self.abort {
            a.open.fetch_add(1, Ordering::Relaxed);
        }
        OpenConnection(self.abort.clone())
    }

    /// Whether shutdown has been signalled.
    pub fn is_shutdown(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }

    /// Waits for the signal. Returns at once if it was already given.
    pub fn recv(&self) -> Recv<'_> {
        Recv {
            signal: &self.signal,
            slot: None,
        }
    }
}

/// The future returned by [`Shutdown::recv`]. Keep one pinned for a task's
/// life and poll it as often as needed: after the first poll, a poll from
/// the same task is one atomic load.
#[derive(Debug)]
pub struct Recv<'a> {
    signal: &'a Signal,
    /// The registry slot and the waker stored in it.
    slot: Option<(usize, Waker)>,
}

impl Future for Recv<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let current = matches!(&self.slot, Some((_, w)) if w.will_wake(cx.waker()));
        if !current {
            let mut wakers = self.signal.wakers.lock().unwrap_or_else(|e| e.into_inner());
            let waker = cx.waker().clone();
            let slot = match self.slot.take() {
                Some((i, _)) => {
                    wakers.slots[i] = Some(waker.clone());
                    i
                }
                None => wakers.insert(waker.clone()),
            };
            self.slot = Some((slot, waker));
            // `signal` sets the flag before it takes this lock to wake the
            // registry, so a signal that raced with this registration is
            // seen here or wakes the waker just stored.
            drop(wakers);
            if self.signal.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Recv<'_> {
    fn drop(&mut self) {
        if let Some((i, _)) = self.slot.take() {
            let mut wakers = self.signal.wakers.lock().unwrap_or_else(|e| e.into_inner());
            wakers.remove(i);
        }
    }
}

/// A connection counted by [`Shutdown::open_connection`].
#[derive(Debug)]
pub struct OpenConnection(Option<Arc<Abort>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The reactor side: signal shutdown, and wait for every task to finish.
#[derive(Debug)]
pub struct ShutdownController {
    signal: ShutdownSignal,
    abort: Arc<Abort>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by each task; the reactor knows all tasks are done when every
/// guard has been dropped.
#[derive(Debug, Clone)]
pub struct TaskGuard(#[allow(dead_code)] mpsc::Sender<()>);

/// A [`TaskGuard`] to be, for code that starts tasks later (a guest's
/// outbound connections): it does not itself keep the reactor waiting.
#[derive(Debug, Clone)]
pub struct WeakTaskGuard(mpsc::WeakSender<()>);

impl WeakTaskGuard {
    /// A guard for a new task, unless the reactor already saw every task
    /// end.
    pub fn upgrade(&self) -> Option<TaskGuard> {
        self.0.upgrade().map(TaskGuard)
    }
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    /// A controller with no tasks yet.
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::channel(1);
        let abort = Arc::new(Abort::default());
        ShutdownController {
            signal: ShutdownSignal {
                signal: Arc::default(),
                abort: Some(abort.clone()),
            },
            abort,
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

    /// A weak guard, upgraded by each task started later.
    ///
    /// # Panics
    ///
    /// If called after [`wait`](Self::wait) started.
    pub fn weak_guard(&self) -> WeakTaskGuard {
        WeakTaskGuard(
            self.done_tx
                .as_ref()
                .expect("weak_guard() after wait()")
                .downgrade(),
        )
    }

    /// Tells every task to shut down.
    pub fn signal(&self) {
        self.signal.fire();
    }

    /// Tells every task still running to stop now, and waits up to `grace`
    /// for them. Returns how many connections it resets: those open and
    /// not closing cleanly (each resets when its task next runs, or when
    /// the process exits, whichever comes first).
    pub async fn abort(&mut self, grace: std::time::Duration) -> u64 {
        let open = self.abort.open.load(Ordering::Relaxed);
        self.abort.signal.fire();
        let _ = tokio::time::timeout(grace, self.wait()).await;
        open
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registered_listener_polled_many_times_is_woken_once_signalled() {
        let c = ShutdownController::new();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = c.subscribe();
            tasks.push(tokio::spawn(async move {
                let stop = s.recv();
                tokio::pin!(stop);
                // Poll it repeatedly, as a connection loop does, then wait.
                for _ in 0..3 {
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::task::yield_now() => {}
                    }
                }
                stop.await;
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        c.signal();
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .expect("woken")
                .unwrap();
        }
    }
}
