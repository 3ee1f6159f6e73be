//! The tasks a plugin's shared instances live in.
//!
//! A shared instance serves many connections, and its callbacks run one at
//! a time. Each shared instance is one task on the reactor's runtime, an
//! *instance group*: the listener's connections on that instance run as
//! futures inside it, not as tasks of their own. When the group is polled,
//! it polls the connections whose sockets (or transports) are ready; they
//! queue their reads; then it delivers those reads to the guest in one
//! batch ([`super::batch`]) and polls again the connections that delivery
//! left something to do, until none is ready.
//!
//! So an instance's connections, its batch queue and its memory are used
//! by one thread at a time, with no turns taken on its lock; a batch holds
//! every read that the same round of readiness events brought; and the
//! group, being one task, runs on whichever reactor thread is free (tokio
//! steals it for an idle thread when its own is busy). Since a connection
//! stays on the reactor's runtime, handing it to its instance costs a
//! channel send, with no thread to wake and no socket to re-register.
//!
//! In `bench/`, against the previous design (a thread and a single-threaded
//! runtime per shared instance, a connection moved to its instance's thread
//! once): the same ping-pong and bulk figures within noise, and 30–40% more
//! connections per second with 26% less CPU each (21–23 µs against
//! 29–30 µs), because no connection moves between threads.
//!
//! A connection that panics ends alone (the panic is caught and logged),
//! as a task of its own would. A group ends once its plugin is dropped and
//! its last connection has ended.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::batch::{Delivery, Who};
use super::{Plugin, SharedGuest};

type ConnTask = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// While an instance group polls its connections on this thread: the
    /// shared instances they queued reads on, delivered once the
    /// connections are polled ([`note_queued`]).
    static POLLING: RefCell<Option<Vec<Arc<SharedGuest>>>> = const { RefCell::new(None) };
}

/// One shared instance's task: the sender that hands it connections
/// (dropping it ends the task once its connections end).
pub struct InstanceGroup {
    tx: mpsc::UnboundedSender<ConnTask>,
}

impl InstanceGroup {
    /// Starts a group for one of `plugin`'s shared instances, on the
    /// current (reactor) runtime.
    pub(crate) fn start(plugin: &Arc<Plugin>) -> InstanceGroup {
        let (tx, rx) = mpsc::unbounded_channel();
        // The group polls many connections per poll; tokio's cooperative
        // budget is per task, so without this the group would yield after
        // a few of them.
        tokio::spawn(tokio::task::coop::unconstrained(run(rx, Who::of(plugin))));
        InstanceGroup { tx }
    }

    /// Runs `conn` in this group. False if the group has ended (the
    /// runtime is shutting down).
    pub fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) -> bool {
        self.tx.send(Box::pin(conn)).is_ok()
    }
}

/// Called when a read is queued on `shared`: true if an instance group is
/// polling on this thread and will deliver it once its connections are
/// polled.
pub(crate) fn note_queued(shared: &Arc<SharedGuest>) -> bool {
    POLLING.with(|p| match &mut *p.borrow_mut() {
        Some(list) => {
            if !list.iter().any(|s| Arc::ptr_eq(s, shared)) {
                list.push(shared.clone());
            }
            true
        }
        None => false,
    })
}

/// Marks this thread as polling a group until dropped.
struct Polling;

impl Polling {
    fn start(list: Vec<Arc<SharedGuest>>) -> Polling {
        POLLING.with(|p| *p.borrow_mut() = Some(list));
        Polling
    }

    fn take(&self) -> Vec<Arc<SharedGuest>> {
        POLLING.with(|p| p.borrow_mut().take()).unwrap_or_default()
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with(|p| *p.borrow_mut() = None);
    }
}

/// The group's task: takes connections from `rx`, and polls them and
/// delivers their reads until `rx` is closed and every connection ended.
async fn run(mut rx: mpsc::UnboundedReceiver<ConnTask>, who: Who) {
    let mut conns = FuturesUnordered::new();
    let mut open = true;
    let mut delivery = Delivery::default();
    let mut dirty = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while open {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(conn)) => conns.push(AssertUnwindSafe(conn).catch_unwind()),
                    Poll::Ready(None) => open = false,
                    Poll::Pending => break,
                }
            }
            let polling = Polling::start(std::mem::take(&mut dirty));
            while let Poll::Ready(Some(r)) = conns.poll_next_unpin(cx) {
                if r.is_err() {
                    tracing::error!(plugin = %who.plugin, "a connection's task panicked; it was dropped");
                }
            }
            dirty = polling.take();
            drop(polling);
            if dirty.is_empty() {
                break;
            }
            for s in dirty.drain(..) {
                delivery.deliver_queued(&s, &who);
            }
        }
        if !open && conns.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// A connection counted as live on a shared instance
/// ([`Plugin::assign_instance`]) until dropped.
pub struct LiveGuard {
    plugin: Arc<Plugin>,
    instance: usize,
}

impl LiveGuard {
    pub(crate) fn new(plugin: Arc<Plugin>, instance: usize) -> LiveGuard {
        plugin.live_count(instance).fetch_add(1, Ordering::Relaxed);
        LiveGuard { plugin, instance }
    }

    /// The instance the connection was assigned to.
    pub fn instance(&self) -> usize {
        self.instance
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.plugin
            .live_count(self.instance)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
