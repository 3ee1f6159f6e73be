//! Batched delivery: several connections' reads in one guest call, on a
//! shared instance whose component exports `twill:protocol/batch`.
//!
//! With one `data-received` call per read, a shared instance serving 100
//! ping-pong connections makes 100 calls into the guest per round of
//! messages, and each call pays wasmtime's fixed cost: resolving the
//! export, a second entry into the guest for `cabi_realloc`, lending the
//! `borrow<protocol>`, `catch_traps`. Instead, a connection's task on the
//! instance's thread reads its socket and *queues* the bytes here
//! ([`Queue::push`]); the instance's delivery task, woken by the first read
//! queued and run by the thread's single-threaded scheduler after every
//! other task woken by the same round of readiness events, hands the whole
//! queue to the guest in one `batch.data-received` call. Then it settles
//! each connection: it writes the output the call queued straight to the
//! socket, and wakes the connection's task only if something else is left
//! to do (output the socket did not take, a close, a producer to pause,
//! or a task waiting for its reads to be delivered).
//!
//! What a protocol sees does not change: the guest SDKs turn a batch back
//! into `data-received` calls, in order. The host skips a read whose
//! connection was closed (by `lose-connection`, `abort-connection`, or its
//! end) before the batch was delivered, and the SDKs skip one whose
//! connection an earlier chunk's callback closed within the call, so no
//! protocol hears data after it asked to close. A connection has at most
//! [`MAX_QUEUED`](crate::runtime::limits::MAX_QUEUED) bytes queued, and closes cleanly only once they are
//! delivered. A fault in a batch poisons the instance, like any callback on
//! a shared instance: every connection on it is aborted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};

use crate::wire::Wire;
use wasmtime::component::ResourceAny;

use crate::runtime::GuestFault;
use crate::runtime::bindings::batch::Chunk;
use crate::runtime::guest::SharedGuest;
use crate::runtime::session::ReadQueue;
use crate::runtime::state::{TransportCell, lock};

/// The most bytes of reads handed to the guest in one call (the guest
/// allocates them in its memory); a bigger queue is delivered in several
/// calls.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// The most bytes a queue holds: a read that takes it past this is
/// delivered at once, with everything queued before it, by the task that
/// read it. (One readiness event can wake up to 1,024 connections, each
/// with up to [`MAX_QUEUED`](crate::runtime::limits::MAX_QUEUED) bytes.)
const MAX_QUEUE_BYTES: usize = 1 << 20;

/// The most reads in one call. A call carrying n reads has n times the
/// plugin's per-callback CPU budget, so that no read gets less than a
/// callback of its own would; this bounds how long a runaway guest can hold
/// its instance's thread (its connections, which the fault then aborts, are
/// the only ones that wait).
pub const MAX_BATCH_READS: usize = 32;

/// How much batched delivery a plugin has done, readable while it runs.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// `batch.data-received` calls made.
    pub calls: AtomicU64,
    /// Reads those calls delivered (skipped reads not counted).
    pub reads: AtomicU64,
}

/// One queued read: whose it is and how long. Its bytes follow the previous
/// read's in [`Pending::data`].
struct Read {
    protocol: ResourceAny,
    cell: TransportCell,
    stream: Arc<Wire>,
    len: usize,
}

/// What waits for delivery.
#[derive(Default)]
struct Pending {
    reads: Vec<Read>,
    data: Vec<u8>,
    /// The delivery task's waker, while it waits for reads.
    waker: Option<Waker>,
    /// Whether the delivery task has been started.
    started: bool,
}

/// A shared instance's queue of reads waiting for batched delivery, and
/// the instance it delivers them to. Its delivery task holds it weakly:
/// the task ends once the queue is gone (its instance faulted and was
/// replaced, and its connections ended; or the pool was dropped).
pub struct Queue {
    /// Itself, for its delivery task.
    me: Weak<Queue>,
    guest: Arc<SharedGuest>,
    stats: Arc<BatchStats>,
    pending: Mutex<Pending>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Let the delivery task see that its queue is gone, and end.
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = pending.waker.take() {
            w.wake();
        }
    }
}

impl Queue {
    /// The queue of shared instance `guest`, counting into `stats`.
    pub(crate) fn new(guest: Arc<SharedGuest>, stats: Arc<BatchStats>) -> Arc<Queue> {
        Arc::new_cyclic(|me| Queue {
            me: me.clone(),
            guest,
            stats,
            pending: Mutex::default(),
        })
    }
}

impl ReadQueue for Queue {
    /// Queues a read. Starts the delivery task on the current runtime (the
    /// instance's thread) on first use; delivers at once, in the reading
    /// task, once the queue holds `MAX_QUEUE_BYTES`.
    fn push(&self, protocol: ResourceAny, cell: &TransportCell, stream: &Arc<Wire>, data: &[u8]) {
        let mut p = lock(&self.pending);
        p.reads.push(Read {
            protocol,
            cell: cell.clone(),
            stream: stream.clone(),
            len: data.len(),
        });
        p.data.extend_from_slice(data);
        if p.data.len() >= MAX_QUEUE_BYTES {
            let mut reads = std::mem::take(&mut p.reads);
            let data = std::mem::take(&mut p.data);
            drop(p);
            self.deliver(&mut reads, &data, &mut Vec::new());
            return;
        }
        if let Some(w) = p.waker.take() {
            w.wake();
        } else if !p.started {
            p.started = true;
            // The task holds the queue weakly: it must not keep the queue
            // (and its instance) alive.
            tokio::spawn(deliver_forever(self.me.clone()));
        }
    }
}

/// The delivery task of one queue: waits for queued reads and delivers
/// them, until the queue is gone.
async fn deliver_forever(queue: Weak<Queue>) {
    let mut reads = Vec::new();
    let mut data = Vec::new();
    let mut chunks = Vec::new();
    loop {
        let next = std::future::poll_fn(|cx| {
            let Some(q) = queue.upgrade() else {
                return Poll::Ready(None);
            };
            let mut p = lock(&q.pending);
            if p.reads.is_empty() {
                p.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut p.reads, &mut reads);
            std::mem::swap(&mut p.data, &mut data);
            drop(p);
            Poll::Ready(Some(q))
        })
        .await;
        let Some(q) = next else { return };
        q.deliver(&mut reads, &data, &mut chunks);
        drop(q);
        reads.clear();
        data.clear();
        // Keep the buffer of a usual batch, not of a burst.
        data.shrink_to(MAX_BATCH_BYTES);
    }
}

impl Queue {
    /// Delivers `reads` (whose bytes are `data`, in order) in as few calls as
    /// [`MAX_BATCH_BYTES`] allows, then settles every connection.
    fn deliver(&self, reads: &mut [Read], data: &[u8], chunks: &mut Vec<Chunk>) {
        let mut offset = 0;
        let mut start = 0;
        while start < reads.len() {
            // One call: reads from `start` while they fit (at least one),
            // skipping those whose connection stopped taking data. The reads'
            // bytes are contiguous in `data` unless one is skipped: then the
            // call's bytes are copied without it.
            chunks.clear();
            let first = offset;
            let mut joined: Option<Vec<u8>> = None;
            let mut total = 0;
            let mut end = start;
            while end < reads.len()
                && chunks.len() < MAX_BATCH_READS
                && (end == start || total + reads[end].len <= MAX_BATCH_BYTES)
            {
                let r = &reads[end];
                let range = offset..offset + r.len;
                offset += r.len;
                end += 1;
                if !lock(&r.cell).takes_reads() {
                    joined.get_or_insert_with(|| data[first..range.start].to_vec());
                    continue;
                }
                if let Some(j) = &mut joined {
                    j.extend_from_slice(&data[range]);
                }
                chunks.push(Chunk {
                    protocol: r.protocol,
                    len: r.len as u32,
                });
                total += r.len;
            }
            let result = if chunks.is_empty() {
                Ok(())
            } else {
                let bytes = joined.as_deref().unwrap_or(&data[first..offset]);
                self.stats.calls.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .reads
                    .fetch_add(chunks.len() as u64, Ordering::Relaxed);
                self.guest.data_received_batch(chunks, bytes)
            };
            if let Err(fault) = result {
                if !matches!(fault, GuestFault::Poisoned) {
                    tracing::warn!(plugin = %self.guest.plugin(), %fault, reads = end - start, "shared guest faulted in a batch of reads; its connections are aborted");
                }
                // The call fired the instance's fault: every connection on it is
                // aborted, so send nothing.
                for r in &reads[start..] {
                    let mut t = lock(&r.cell);
                    t.handoff().delivered(r.len);
                    t.kick();
                }
                return;
            }
            for r in &reads[start..end] {
                settle(r);
            }
            start = end;
        }
    }
}

/// After a read's delivery: once a connection has nothing left queued,
/// write its output straight to the socket, and wake its task only if
/// there is more to do than wait for the next read.
fn settle(r: &Read) {
    let mut t = lock(&r.cell);
    if !t.handoff().delivered(r.len) {
        return;
    }
    let quiet = t.takes_writes()
        && !t.reading_paused()
        && !t.producer()
        && !t.handoff().awaits_delivery()
        && !t.start_tls().requested()
        && crate::connection::send(&mut t, &r.stream).is_ok()
        && t.unsent() == 0
        && !r.stream.wants_write();
    if !quiet {
        t.kick();
    }
    if let Some(p) = t.producer_to_resume() {
        drop(t);
        crate::runtime::state::hold(&p, false);
    }
}
