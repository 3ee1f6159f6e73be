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
//! [`MAX_QUEUED`] bytes queued, and closes cleanly only once they are
//! delivered. A fault in a batch poisons the instance, like any callback on
//! a shared instance: every connection on it is aborted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use wasmtime::component::ResourceAny;

use super::bindings::batch::Chunk;
use super::guest::{Caller, GuestFault, Home, SharedGuest};
use super::state::{TransportCell, lock};
use super::{Plugin, Session};

/// The most bytes one connection may have queued and undelivered; its task
/// stops reading until they are delivered.
pub const MAX_QUEUED: usize = super::limits::READ_CHUNK;

/// The most bytes of reads handed to the guest in one call (the guest
/// allocates them in its memory); a bigger queue is delivered in several
/// calls.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// The most bytes a queue holds: a read that takes it past this is
/// delivered at once, with everything queued before it, by the task that
/// read it. (One readiness event can wake up to 1,024 connections, each
/// with up to [`MAX_QUEUED`] bytes.)
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
    stream: Arc<TcpStream>,
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

/// A shared instance's queue of reads waiting for batched delivery.
#[derive(Default)]
pub(crate) struct Queue(Mutex<Pending>);

impl Drop for Queue {
    fn drop(&mut self) {
        // Let the delivery task see that its instance is gone, and end.
        let pending = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = pending.waker.take() {
            w.wake();
        }
    }
}

impl Queue {
    /// Queues `data` for `protocol`, whose connection's transport is
    /// `cell` and socket `stream`; the caller has added `data.len()` to the
    /// transport's `queued`. Starts the instance's delivery task on the
    /// current runtime (the instance's thread) on first use.
    pub(crate) fn push(
        &self,
        shared: &Arc<SharedGuest>,
        plugin: &Arc<Plugin>,
        protocol: ResourceAny,
        cell: &TransportCell,
        stream: &Arc<TcpStream>,
        data: &[u8],
    ) {
        let mut p = lock(&self.0);
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
            deliver(shared, &Who::of(plugin), &mut reads, &data, &mut Vec::new());
            return;
        }
        if let Some(w) = p.waker.take() {
            w.wake();
        } else if !p.started {
            p.started = true;
            // Only weak and plain references: the task must not keep the
            // instance (or the plugin, which owns the thread it runs on)
            // alive.
            tokio::spawn(deliver_forever(Arc::downgrade(shared), Who::of(plugin)));
        }
    }
}

/// What the delivery task knows of its plugin.
struct Who {
    plugin: Arc<str>,
    cpu: Duration,
    stats: Arc<BatchStats>,
}

impl Who {
    fn of(plugin: &Plugin) -> Who {
        Who {
            plugin: plugin.name.clone(),
            cpu: plugin.limits.cpu,
            stats: plugin.batch_stats().clone(),
        }
    }
}

/// The delivery task of one shared instance: waits for queued reads and
/// delivers them, until the instance is gone.
async fn deliver_forever(shared: Weak<SharedGuest>, who: Who) {
    let mut reads = Vec::new();
    let mut data = Vec::new();
    let mut chunks = Vec::new();
    loop {
        let next = std::future::poll_fn(|cx| {
            let Some(s) = shared.upgrade() else {
                return Poll::Ready(None);
            };
            let mut p = lock(&s.queue.0);
            if p.reads.is_empty() {
                p.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::mem::swap(&mut p.reads, &mut reads);
            std::mem::swap(&mut p.data, &mut data);
            drop(p);
            Poll::Ready(Some(s))
        })
        .await;
        let Some(s) = next else { return };
        deliver(&s, &who, &mut reads, &data, &mut chunks);
        reads.clear();
        data.clear();
        // Keep the buffer of a usual batch, not of a burst.
        data.shrink_to(MAX_BATCH_BYTES);
    }
}

/// Delivers `reads` (whose bytes are `data`, in order) in as few calls as
/// [`MAX_BATCH_BYTES`] allows, then settles every connection.
fn deliver(
    shared: &SharedGuest,
    who: &Who,
    reads: &mut [Read],
    data: &[u8],
    chunks: &mut Vec<Chunk>,
) {
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
            if !lock(&r.cell).is_open() {
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
            who.stats.calls.fetch_add(1, Ordering::Relaxed);
            who.stats
                .reads
                .fetch_add(chunks.len() as u64, Ordering::Relaxed);
            call(shared, &who.plugin, who.cpu, chunks, bytes)
        };
        if let Err(fault) = result {
            if !matches!(fault, GuestFault::Poisoned) {
                tracing::warn!(plugin = %who.plugin, %fault, reads = end - start, "shared guest faulted in a batch of reads; its connections are aborted");
            }
            // `call` fired the instance's fault: every connection on it is
            // aborted, so send nothing.
            for r in &reads[start..] {
                let mut t = lock(&r.cell);
                t.handoff.delivered(r.len);
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

/// One `batch.data-received` call. A fault poisons the instance and fires
/// its fault signal, which aborts every connection on it.
fn call(
    shared: &SharedGuest,
    plugin: &str,
    cpu: Duration,
    chunks: &[Chunk],
    data: &[u8],
) -> Result<(), GuestFault> {
    let mut g = lock(&shared.guest);
    let callbacks = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let r = g.call(cpu, callbacks, Caller::Batch, |g| match g.batch.clone() {
        Some(batch) => batch.call_data_received(&mut g.store, chunks, data),
        None => Ok(()),
    });
    drop(g);
    if let Err(f) = &r {
        shared.fail(plugin, f);
    }
    r
}

/// After a read's delivery: once a connection has nothing left queued,
/// write its output straight to the socket, and wake its task only if
/// there is more to do than wait for the next read.
fn settle(r: &Read) {
    let mut t = lock(&r.cell);
    if !t.handoff.delivered(r.len) {
        return;
    }
    let quiet = t.is_open()
        && !t.producer
        && !t.handoff.awaits_delivery()
        && t.write_to(&r.stream).is_ok()
        && t.out.is_empty();
    if !quiet {
        t.kick();
    }
}

/// Delivers one batch directly, as one `batch.data-received` call: each
/// session's protocol gets its data, in order. Every session must be on
/// the same shared instance. Reads for a connection that is closing or
/// gone are skipped, as the queue skips them. If the component does not
/// export `batch`, each read is one `data-received` call instead, as the
/// host does then. The test transport uses this to let guest authors test
/// a batch without sockets.
pub fn data_received_batch(reads: &mut [(&mut Session, &[u8])]) -> Result<(), GuestFault> {
    let Some((first, _)) = reads.first() else {
        return Ok(());
    };
    let Home::Shared(shared) = &first.home else {
        panic!("data_received_batch: the sessions must be on a shared instance");
    };
    let shared = shared.clone();
    if !first.plugin.has_batch() {
        for (session, data) in reads.iter_mut() {
            session.data_received(data)?;
        }
        return Ok(());
    }
    let mut chunks = Vec::new();
    let mut data = Vec::new();
    for (session, bytes) in reads.iter() {
        let same = matches!(&session.home, Home::Shared(s) if Arc::ptr_eq(s, &shared));
        assert!(
            same,
            "data_received_batch: the sessions must share one instance"
        );
        let open = session.transport().is_open();
        if let (true, Some(protocol)) = (open, session.protocol) {
            chunks.push(Chunk {
                protocol,
                len: u32::try_from(bytes.len()).expect("a read under 4 GiB"),
            });
            data.extend_from_slice(bytes);
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    call(
        &shared,
        &first.plugin.name,
        first.plugin.limits.cpu,
        &chunks,
        &data,
    )
}
