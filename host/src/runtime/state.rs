//! Store data: the WASI context, the resource table, the limits, and the
//! transports of the connections the instance serves (one, or many on a
//! shared instance): each a [`TransportCell`] holding the buffered output
//! and close flags, in a slab addressed by slot and generation.
//!
//! The transport's host functions only touch [`TransportState`]; the
//! connection driver (the crate's `connection` module) reads its own cell after each
//! callback and does the actual I/O.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one Store owns.
pub struct ConnState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: super::limits::GuestLimiter,
    pub(crate) cpu: CpuBudget,
    /// The transports of every connection this instance serves: one for an
    /// instance per connection, many for a shared instance.
    pub(crate) transports: Transports,
    /// Whose callback is running. A write to any other connection's
    /// transport wakes that connection's task; in a batch, so does a write
    /// to a connection without a read in the batch.
    pub(crate) current: Option<super::guest::Caller>,
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Epoch ticks a callback has used, against its budget.
#[derive(Debug, Default)]
pub(crate) struct CpuBudget {
    pub(crate) used: u64,
    /// The budget of one callback (the plugin's `cpu`, in ticks).
    pub(crate) per_callback: u64,
    /// The budget of the running call: `per_callback` times the callbacks
    /// it carries (a batch carries several).
    pub(crate) max: u64,
    pub(crate) exceeded: bool,
}

/// How the guest asked the connection to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Closing {
    /// Still open.
    #[default]
    Open,
    /// `lose-connection`: flush, then close cleanly.
    Lose,
    /// `abort-connection`: drop pending output and reset.
    Abort,
}

/// One connection's transport state, shared between the connection's task
/// (which flushes it) and its instance (whose callbacks write to it). The
/// task never takes the instance's lock to reach it, so on a shared
/// instance the data path does not contend with other connections'
/// callbacks; only a cross-connection write contends, briefly.
pub type TransportCell = Arc<Mutex<TransportState>>;

/// Locks a mutex whose holders keep it for about a microsecond: spin
/// briefly before parking, since a futex sleep and wake-up cost several
/// times that (they dominated a shared-instance ping-pong profile).
///
/// A holder can keep it much longer: a shared instance's lock is held for a
/// whole callback, up to the plugin's CPU limit if the guest spins. So when
/// spinning does not get the lock and this is a reactor thread of a
/// multi-threaded runtime, the wait happens in `block_in_place`: the
/// thread's other connections move to another thread instead of stalling
/// behind one slow guest.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    for _ in 0..2000 {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
        }
    }
    let wait = || m.lock().unwrap_or_else(|e| e.into_inner());
    if super::limits::multi_thread_runtime().is_some() {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// A slab of transport cells, addressed by slot and generation so that a
/// handle a guest kept after its connection ended (and whose slot now
/// serves another connection) reaches nothing.
#[derive(Debug, Default)]
pub struct Transports {
    slots: Vec<(u32, Option<TransportCell>)>,
    free: Vec<u32>,
}

impl Transports {
    /// Stores a new transport; returns its slot and generation.
    pub fn insert(&mut self, t: TransportCell) -> (u32, u32) {
        if let Some(i) = self.free.pop() {
            let slot = &mut self.slots[i as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(t);
            (i, slot.0)
        } else {
            let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 transports");
            self.slots.push((0, Some(t)));
            (i, 0)
        }
    }

    /// The live transport at `slot`, if it is still generation `generation`.
    pub fn get(&self, slot: u32, generation: u32) -> Option<&TransportCell> {
        match self.slots.get(slot as usize) {
            Some((g, Some(t))) if *g == generation => Some(t),
            _ => None,
        }
    }

    /// How many transports are live.
    pub fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Frees a slot when its connection ends.
    pub fn remove(&mut self, slot: u32) {
        if let Some((_, t @ Some(_))) = self.slots.get_mut(slot as usize) {
            *t = None;
            self.free.push(slot);
        }
    }
}

/// The host's side of one transport.
#[derive(Debug, Default)]
pub struct TransportState {
    /// Bytes written by the guest and not yet sent.
    pub out: OutBuf,
    /// Whether the guest asked to close.
    pub closing: Closing,
    /// The connection is over; writes are ignored.
    pub lost: bool,
    /// The protocol registered itself as a streaming producer.
    pub producer: bool,
    /// The remote address.
    pub peer: Option<SocketAddr>,
    /// The local address.
    pub host: Option<SocketAddr>,
    /// The cap on unsent output (see `Limits::max_output`).
    pub max_output: usize,
    /// The plugin's high-water mark: past the host-wide output ceiling, a
    /// connection holding more than this is aborted ([`OutputBudget`]).
    pub high_water: usize,
    /// What the connection's task and its instance's batched delivery
    /// (or another connection's callback) tell each other.
    pub handoff: Handoff,
}

/// The hand-off between a connection's task and the rest of a shared
/// instance: the reads the task queued for batched delivery, whether it
/// waits for them, and the wake-ups when another callback (another
/// connection's, or a batch's) changed this transport. Only these
/// operations touch it, under the transport's lock.
#[derive(Debug, Default)]
pub struct Handoff {
    /// Bytes read and queued for batched delivery, not yet delivered.
    queued: usize,
    /// The task waits for its queued reads to be delivered (to read more,
    /// or to close): delivery wakes it when they are.
    await_delivery: bool,
    /// Another callback changed the transport since the task last looked.
    kicked: bool,
    /// The task's waker, for `kicked`.
    waker: Option<std::task::Waker>,
}

impl Handoff {
    /// Bytes queued for delivery and not yet delivered.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The task queued `n` more bytes for delivery.
    pub fn queue(&mut self, n: usize) {
        self.queued += n;
    }

    /// `n` queued bytes were delivered (or dropped with their instance);
    /// true once none are left.
    pub fn delivered(&mut self, n: usize) -> bool {
        self.queued -= n;
        self.queued == 0
    }

    /// The task is about to sleep until its queued reads are delivered:
    /// true if it must (delivery will wake it); false if they were
    /// delivered meanwhile, and it should look again instead.
    pub fn wait_for_delivery(&mut self) -> bool {
        self.await_delivery = self.queued > 0;
        self.await_delivery
    }

    /// Whether the task sleeps until its reads are delivered.
    pub fn awaits_delivery(&self) -> bool {
        self.await_delivery
    }

    /// Marks the transport changed and wakes the task (it also stops
    /// waiting for delivery: it will look at everything again).
    pub fn kick(&mut self) {
        self.await_delivery = false;
        self.kicked = true;
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// Ready if the transport was kicked since the last call; registers the
    /// task's waker otherwise.
    pub fn poll_kicked(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if std::mem::take(&mut self.kicked) {
            return std::task::Poll::Ready(());
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

impl TransportState {
    /// Whether the connection is open: not closing, not gone. Only then
    /// are writes accepted (Twisted ignores them once the connection is
    /// closing) and reads delivered.
    pub fn is_open(&self) -> bool {
        self.closing == Closing::Open && !self.lost
    }

    /// Marks the transport changed and wakes its connection's task.
    pub fn kick(&mut self) {
        self.handoff.kick();
    }

    /// Writes as much queued output to `stream` as it takes without
    /// blocking: one `send` for one chunk (a shorter kernel path than
    /// `writev`), else a vectored write.
    pub fn write_to(&mut self, stream: &tokio::net::TcpStream) -> io::Result<()> {
        let out = &mut self.out;
        while !out.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let k = out.slices(&mut iov);
                let r = if k == 1 {
                    stream.try_write(&iov[0])
                } else {
                    stream.try_write_vectored(&iov[..k])
                };
                match r {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            out.advance(n);
        }
        Ok(())
    }
}

/// The host-wide ceiling on unsent output (`[host] max-queued-output`):
/// every connection's unsent bytes past its first [`UNCOUNTED`] are
/// counted here. Once a write would take the total past the ceiling, a
/// connection already holding more than its `high-water` mark (its peer is
/// not reading) is aborted instead of growing: the largest offenders go,
/// the others keep their output. So the total stays below the ceiling plus
/// `high-water` per connection.
#[derive(Debug)]
pub struct OutputBudget {
    used: AtomicUsize,
    limit: usize,
}

/// The unsent bytes of each connection that [`OutputBudget`] does not
/// count: small replies, flushed at once, never touch the shared counter.
pub const UNCOUNTED: usize = 64 << 10;

impl OutputBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }
}

/// A queue of owned chunks, written with vectored I/O.
#[derive(Debug, Default)]
pub struct OutBuf {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already sent.
    offset: usize,
    len: usize,
    /// The host-wide budget, and how many of this buffer's bytes it counts.
    budget: Option<Arc<OutputBudget>>,
    charged: usize,
}

impl Drop for OutBuf {
    fn drop(&mut self) {
        self.clear();
    }
}

/// At most this many chunks go into one `writev`.
pub const MAX_IOVECS: usize = 64;

impl OutBuf {
    /// An empty buffer whose bytes count against `budget`.
    pub fn with_budget(budget: Option<Arc<OutputBudget>>) -> OutBuf {
        OutBuf {
            chunks: VecDeque::new(),
            offset: 0,
            len: 0,
            budget,
            charged: 0,
        }
    }

    /// Brings the budget's count of this buffer up to date. Touches the
    /// shared counter only while the buffer holds more than [`UNCOUNTED`].
    fn recharge(&mut self) {
        let want = self.len.saturating_sub(UNCOUNTED);
        if want == self.charged {
            return;
        }
        if let Some(b) = &self.budget {
            if want > self.charged {
                b.used.fetch_add(want - self.charged, Ordering::Relaxed);
            } else {
                b.used.fetch_sub(self.charged - want, Ordering::Relaxed);
            }
        }
        self.charged = want;
    }

    /// Whether `more` bytes would take the host-wide unsent output past its
    /// ceiling.
    pub fn over_budget(&self, more: usize) -> bool {
        let Some(b) = &self.budget else {
            return false;
        };
        let extra = (self.len + more).saturating_sub(UNCOUNTED) - self.charged;
        extra > 0 && b.used.load(Ordering::Relaxed) + extra > b.limit
    }

    /// Queues a chunk; empty chunks are skipped.
    pub fn push(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.recharge();
        // Coalesce small writes so a chatty guest does not make long iovecs.
        // (Never append to a front chunk that is partly sent.)
        let appendable = self.chunks.len() > 1 || self.offset == 0;
        if let Some(last) = self.chunks.back_mut()
            && appendable
            && chunk.len() <= 512
            && last.len() + chunk.len() <= 16 << 10
        {
            last.extend_from_slice(&chunk);
            return;
        }
        self.chunks.push_back(chunk);
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether everything has been sent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops everything unsent.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.offset = 0;
        self.len = 0;
        self.recharge();
    }

    /// Fills `out` with the next slices to write, in order; returns how
    /// many. No allocation: this is on the data path.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            out[i] = IoSlice::new(if i == 0 { &c[self.offset..] } else { c });
            n += 1;
        }
        n
    }

    /// Marks `n` bytes as sent.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n;
        self.recharge();
        while n > 0 {
            let front = self.chunks.front().expect("advance past end of OutBuf");
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    /// Everything unsent, concatenated (for the test transport).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for (i, c) in self.chunks.iter().enumerate() {
            v.extend_from_slice(if i == 0 { &c[self.offset..] } else { c });
        }
        self.clear();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbuf_keeps_order_across_partial_writes() {
        let mut b = OutBuf::default();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 37 % 1000)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            b.push(chunk);
        }
        assert_eq!(b.len(), expected.len());
        let mut sent = Vec::new();
        let mut step = 1;
        while !b.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let k = b.slices(&mut iov);
            let mut n = 0;
            for s in &iov[..k] {
                let take = (step - n).min(s.len());
                sent.extend_from_slice(&s[..take]);
                n += take;
                if n == step {
                    break;
                }
            }
            b.advance(n);
            step = step * 3 % 4097 + 1;
        }
        assert_eq!(sent, expected);
    }
}
