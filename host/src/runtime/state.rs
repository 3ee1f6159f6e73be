//! Store data: the WASI context, the resource table, the limits, and the
//! transports of the connections the instance serves (one, or many on a
//! shared instance), in a slab addressed by slot and generation. Each
//! transport is a [`TransportCell`]: a [`TransportState`] (unsent output,
//! close flags, producer, addresses, and the [`Handoff`] between its
//! connection's task and batched delivery) whose fields only its named
//! operations touch.
//!
//! No I/O here: the transport's host functions record what the guest
//! asked; the connection driver (the crate's `connection` module) and
//! batched delivery send the output with [`TransportState::send_with`].

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::outbuf::{MAX_IOVECS, OutBuf, OutputBudget};

/// Everything one Store owns.
pub struct ConnState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: super::limits::GuestLimiter,
    pub(crate) cpu: CpuBudget,
    /// The transports of every connection this instance serves: one for an
    /// instance per connection, many for a shared instance.
    pub(crate) transports: Transports,
    /// The instance's delayed calls (`reactor.call-later`).
    pub(crate) timers: super::clock::Timers,
    /// Whether the component exports `reactor-calls`, so that a delayed
    /// call can fire (`call-later` traps otherwise).
    pub(crate) fires_timers: bool,
    /// The plugin's `max-resources`: the table holds that many besides one
    /// entry per live transport and per active delayed call (those are
    /// bounded by the connections and by `max-timers`).
    pub(crate) max_resources: usize,
    /// Where `reactor.connect-tcp` requests go, for an instance whose
    /// plugin has `connect` grants (none otherwise: the import then returns
    /// an error).
    pub(crate) outbound: Option<super::outbound::Outbound>,
    /// Transports another connection's callback wrote to, whose output the
    /// calling connection's task sends once the call returns (see
    /// `Session::settle_touched`).
    pub(crate) touched: Vec<TransportCell>,
    /// Whose callback is running. A write to any other connection's
    /// transport wakes that connection's task; in a batch, so does a write
    /// to a connection without a read in the batch.
    pub(crate) current: Option<Caller>,
}

impl ConnState {
    /// Sizes the resource table: `max-resources`, plus one entry per live
    /// transport and per active delayed call.
    pub(crate) fn size_table(&mut self) {
        let cap = self.max_resources + self.transports.live() + self.timers.active();
        self.table.set_max_capacity(cap);
    }
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Whose callback is running, for the transport's wake-ups (see
/// `ConnState::current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// One connection's callback (on the transport at this slot).
    Connection(u32),
    /// A batch: the connections with reads in it are settled after the
    /// call.
    Batch,
    /// A delayed call or a factory hook on a shared instance: no
    /// connection's task is looking, so every write wakes its connection.
    Reactor,
}

/// The host's representation of a guest-held `transport` handle: which
/// slot of the instance's [`Transports`] it
/// names, and that slot's generation when the handle was made.
#[derive(Debug, Clone, Copy)]
pub struct TransportHandle {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
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

/// Pauses (`on`) or releases the reading of the producer transport `p`,
/// which a consumer transport's output crossed a mark for. Call it with no
/// transport locked: it locks `p`.
pub fn hold(p: &std::sync::Weak<Mutex<TransportState>>, on: bool) {
    let Some(p) = p.upgrade() else { return };
    let mut t = lock(&p);
    if on {
        t.held += 1;
    } else {
        t.held = t.held.saturating_sub(1);
    }
    // Its task looks again: it stops, or starts, reading.
    t.kick();
}

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

/// The host's side of one transport: what the guest asked for (output,
/// a close, a producer) and what the connection's task and the shared
/// instance tell each other ([`Handoff`]). Only its named operations touch
/// it; none does I/O.
#[derive(Debug, Default)]
pub struct TransportState {
    /// Bytes written by the guest and not yet sent.
    out: OutBuf,
    /// Whether the guest asked to close.
    closing: Closing,
    /// The connection is over; writes are ignored.
    lost: bool,
    /// The protocol registered itself as a streaming producer.
    producer: bool,
    /// The remote address.
    peer: Option<SocketAddr>,
    /// The local address.
    host: Option<SocketAddr>,
    /// The cap on unsent output (see `Limits::max_output`).
    max_output: usize,
    /// The plugin's low-water mark (a paused producer transport resumes).
    low_water: usize,
    /// The plugin's high-water mark: past the host-wide output ceiling, a
    /// connection holding more than this is aborted ([`OutputBudget`]).
    high_water: usize,
    /// What the connection's task and its instance's batched delivery
    /// (or another connection's callback) tell each other.
    handoff: Handoff,
    /// The guest paused reading (`transport.pause-producing`).
    reading_paused: bool,
    /// `lose-write-connection`: where the write side's close stands.
    write_side: WriteSide,
    /// The protocol opted in to half-close (`set-half-closeable`).
    half_closeable: bool,
    /// `splice`: the meeting point of this connection and its partner.
    splice: Option<Arc<Meet>>,
    /// The splice's pump has taken the socket: nothing more is delivered
    /// or written.
    pumping: bool,
    /// `register-producer-transport`: the connection whose reading this
    /// transport's backed-up output pauses.
    feeds: Option<std::sync::Weak<Mutex<TransportState>>>,
    /// This transport paused its producer transport's reading.
    holding: bool,
    /// How many consumers paused this connection's reading (see `feeds`).
    held: u32,
    /// The connection's socket, so that another connection's task can send
    /// output that its callback wrote here (set by the connection's task;
    /// cleared when the connection is over).
    stream: Option<Arc<crate::wire::Wire>>,
    /// `start-tls`: allowed, asked for, done.
    start_tls: super::starttls::StartTls,
    /// Another connection's task sent some of this output (activity, for
    /// the idle timeout).
    sent_elsewhere: bool,
}

/// Where two spliced connections meet: the first of their tasks to have
/// sent its output leaves its socket here and waits; the second takes it
/// and pumps bytes between the two (the crate's `splice` module), then
/// tells the first how the pair ended.
#[derive(Debug)]
pub struct Meet {
    /// The two transports, for the pump to watch for a close.
    pub cells: [std::sync::Weak<Mutex<TransportState>>; 2],
    /// The first arrival: its socket and where the outcome goes. Taken by
    /// the second; emptied (the waiter hears `Err`) if a partner ends
    /// without arriving.
    pub waiting: Mutex<MeetState>,
}

/// A connection arriving at a [`Meet`]: its socket and its transport.
pub type Arrival = (Arc<crate::wire::Wire>, TransportCell);

/// What a [`Meet`] holds.
#[derive(Debug, Default)]
pub enum MeetState {
    /// Nobody arrived yet.
    #[default]
    Empty,
    /// One side waits with its socket.
    Waiting(
        Arrival,
        /// How the pair ended: `Ok` cleanly, `Err` lost, with why.
        tokio::sync::oneshot::Sender<Result<(), String>>,
    ),
    /// A side ended without arriving (or the pair already met): the other
    /// does not wait.
    Gone,
}

/// Where a `lose-write-connection` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteSide {
    /// Open for writes.
    #[default]
    Open,
    /// Asked: send what is queued, then FIN.
    Closing,
    /// The FIN went out.
    Closed,
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
    /// A transport whose unsent output is capped at `max_output` and
    /// counted against `budget`; past the budget, it is aborted if it holds
    /// more than `high_water`.
    pub fn new(
        budget: Option<Arc<OutputBudget>>,
        max_output: usize,
        high_water: usize,
        low_water: usize,
    ) -> TransportState {
        TransportState {
            out: OutBuf::with_budget(budget),
            max_output,
            high_water,
            low_water,
            ..TransportState::default()
        }
    }

    /// Whether the connection is open: not closing, not gone, not taken
    /// by a splice's pump. Only then are reads delivered (a spliced
    /// connection's reads from before the splice still are: the SDKs pass
    /// them on to the partner).
    pub fn is_open(&self) -> bool {
        self.closing == Closing::Open && !self.lost && !self.pumping
    }

    /// Whether reads are delivered: open, and no `start-tls` waiting for
    /// its handshake (what a peer pipelined after STARTTLS, read as
    /// plaintext, must not pass for encrypted input).
    pub fn takes_reads(&self) -> bool {
        self.is_open() && !self.start_tls.requested()
    }

    /// Whether writes are accepted: open, and the write side not closed
    /// (Twisted ignores writes once the connection is closing).
    pub fn takes_writes(&self) -> bool {
        self.is_open() && self.write_side == WriteSide::Open
    }

    /// `pause-producing` / `resume-producing` on the transport.
    pub fn set_reading_paused(&mut self, paused: bool) {
        self.reading_paused = paused;
    }

    /// Whether reading is paused: by the guest, or by a consumer
    /// transport whose output is backed up.
    pub fn reading_paused(&self) -> bool {
        self.reading_paused || self.held > 0
    }

    /// `register-producer-transport`: `producer`'s reading follows this
    /// transport's output. Returns the producer it replaces, if this one
    /// held it paused (to be released with [`hold`]).
    pub fn set_producer_transport(
        &mut self,
        producer: Option<std::sync::Weak<Mutex<TransportState>>>,
    ) -> Option<std::sync::Weak<Mutex<TransportState>>> {
        let old = std::mem::replace(&mut self.feeds, producer);
        if std::mem::take(&mut self.holding) {
            old
        } else {
            None
        }
    }

    /// Whether a producer transport is registered: another connection
    /// produces this one's output.
    pub fn is_fed(&self) -> bool {
        self.feeds.is_some()
    }

    /// The producer transport to pause now that a write took the output
    /// above the high-water mark (to be paused with [`hold`], once this
    /// transport's lock is released).
    pub fn producer_to_pause(&mut self) -> Option<std::sync::Weak<Mutex<TransportState>>> {
        if self.holding || self.out.len() <= self.high_water {
            return None;
        }
        let p = self.feeds.clone()?;
        self.holding = true;
        Some(p)
    }

    /// The producer transport to resume now that the output drained to the
    /// low-water mark (or the connection ended).
    pub fn producer_to_resume(&mut self) -> Option<std::sync::Weak<Mutex<TransportState>>> {
        if !self.holding || (self.out.len() > self.low_water && !self.lost) {
            return None;
        }
        self.holding = false;
        self.feeds.clone()
    }

    /// `lose-write-connection`: FIN once the output is sent. No effect
    /// unless open.
    pub fn lose_write(&mut self) {
        if self.is_open() && self.write_side == WriteSide::Open {
            self.write_side = WriteSide::Closing;
        }
    }

    /// Where the write side's close stands.
    pub fn write_side(&self) -> WriteSide {
        self.write_side
    }

    /// The FIN of a `lose-write-connection` went out.
    pub fn set_write_closed(&mut self) {
        self.write_side = WriteSide::Closed;
    }

    /// `set-half-closeable`.
    pub fn set_half_closeable(&mut self, on: bool) {
        self.half_closeable = on;
    }

    /// Whether the protocol opted in to half-close.
    pub fn half_closeable(&self) -> bool {
        self.half_closeable
    }

    /// Whether the connection can be spliced: open and not yet spliced.
    pub fn can_splice(&self) -> bool {
        self.is_open() && self.write_side == WriteSide::Open && self.splice.is_none()
    }

    /// The splice's pump takes the socket: returns the output written
    /// since the connection's task last flushed (the pump sends it first);
    /// from now on nothing is delivered or written.
    pub fn start_pumping(&mut self) -> Vec<u8> {
        self.pumping = true;
        self.out.take_all()
    }

    /// Splices the connection: reads stop, and its task hands the socket
    /// to `meet` once its output is sent and its reads delivered (writes
    /// still count until then: the SDKs pass late reads on with them).
    pub fn set_splice(&mut self, meet: Arc<Meet>) {
        self.splice = Some(meet);
    }

    /// The splice's meeting point, if spliced.
    pub fn splice(&self) -> Option<&Arc<Meet>> {
        self.splice.as_ref()
    }

    /// How the guest (or the shutdown) asked the connection to end.
    pub fn closing(&self) -> Closing {
        self.closing
    }

    /// Unsent output, in bytes.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Room left under `max-output`, if the transport takes writes.
    pub fn room(&self) -> Option<usize> {
        self.takes_writes()
            .then(|| self.max_output.saturating_sub(self.out.len()))
    }

    /// Whether the protocol registered itself as a producer.
    pub fn producer(&self) -> bool {
        self.producer
    }

    /// `register-producer` / `unregister-producer`.
    pub fn set_producer(&mut self, on: bool) {
        self.producer = on;
    }

    /// The connection's addresses, for `get-peer` and `get-host`.
    pub fn set_addresses(&mut self, peer: SocketAddr, host: SocketAddr) {
        (self.peer, self.host) = (Some(peer), Some(host));
    }

    /// The remote address, once the connection is made.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The local address, once the connection is made.
    pub fn host(&self) -> Option<SocketAddr> {
        self.host
    }

    /// `lose-connection` (and the shutdown): close cleanly once the output
    /// is sent. No effect once closing.
    pub fn lose(&mut self) {
        if self.closing == Closing::Open {
            self.closing = Closing::Lose;
        }
    }

    /// `abort-connection`: drop the output and reset. No effect once the
    /// connection is gone.
    pub fn abort(&mut self) {
        if !self.lost {
            self.closing = Closing::Abort;
            self.out.clear();
        }
    }

    /// The connection is over (`connection-lost` is next): writes are
    /// ignored, and reads still queued for batched delivery are skipped.
    pub fn set_lost(&mut self) {
        self.lost = true;
        self.stream = None;
    }

    /// The connection's socket, for other connections' tasks to send on.
    pub fn set_stream(&mut self, stream: Arc<crate::wire::Wire>) {
        self.stream = Some(stream);
    }

    /// Whether other connections' tasks may send on its socket.
    pub fn has_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// The connection's socket, if set.
    pub fn stream(&self) -> Option<&Arc<crate::wire::Wire>> {
        self.stream.as_ref()
    }

    /// `start-tls`'s state.
    pub fn start_tls(&mut self) -> &mut super::starttls::StartTls {
        &mut self.start_tls
    }

    /// The guest's `start-tls`: refused unless allowed and the connection
    /// is open, plaintext and not spliced.
    pub fn request_start_tls(&mut self) -> Result<(), String> {
        let encrypted = self.stream.as_ref().is_some_and(|w| w.is_tls());
        let (queued, open, spliced) = (self.out.len(), self.is_open(), self.splice.is_some());
        self.start_tls.request(queued, encrypted, open, spliced)
    }

    /// Output that may be sent now: all of it, except while `start-tls`
    /// waits, when only what was queued before it (in plaintext).
    pub fn sendable(&self) -> usize {
        match self.start_tls.plain_limit() {
            Some(limit) => limit.min(self.out.len()),
            None => self.out.len(),
        }
    }

    /// Another connection's task sent some of its output.
    pub fn mark_sent_elsewhere(&mut self) {
        self.sent_elsewhere = true;
    }

    /// Whether another connection's task sent some of its output since the
    /// last look.
    pub fn take_sent_elsewhere(&mut self) -> bool {
        std::mem::take(&mut self.sent_elsewhere)
    }

    /// Queues `len` bytes of output in `chunks`, trapping the guest if it
    /// would pass its `max-output`; ignored unless open. Past the host-wide
    /// ceiling, a transport holding more than its high-water mark is
    /// aborted instead (its peer is not reading; it goes, not the others).
    pub fn write(
        &mut self,
        len: usize,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> wasmtime::Result<()> {
        if !self.takes_writes() {
            return Ok(());
        }
        let after = self.out.len().saturating_add(len);
        if after > self.max_output {
            return Err(wasmtime::format_err!(
                "output limit exceeded: {after} bytes unsent, max-output is {}",
                self.max_output
            ));
        }
        if after > self.high_water && self.out.over_budget(len) {
            tracing::warn!(
                unsent = after,
                peer = ?self.peer,
                "the host's unsent output reached max-queued-output: aborting a connection whose peer is not reading"
            );
            self.abort();
            return Ok(());
        }
        for c in chunks {
            self.out.push(c);
        }
        Ok(())
    }

    /// Hands the unsent output to `send` (the connection's socket write:
    /// it takes the slices in order and says how many bytes it took) until
    /// it is all sent or `send` would block; returns how many bytes it
    /// took. No I/O of its own.
    pub fn send_with(
        &mut self,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while !self.out.is_empty() {
            let limit = self.start_tls.plain_limit();
            if limit == Some(0) {
                break;
            }
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let k = self.out.slices(&mut iov, limit.unwrap_or(usize::MAX));
                match send(&iov[..k]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.out.advance(n);
            self.start_tls.sent(n);
            sent += n;
        }
        Ok(sent)
    }

    /// Everything unsent, taken (the test transport's `value()`).
    pub fn take_output(&mut self) -> Vec<u8> {
        self.out.take_all()
    }

    /// The hand-off with batched delivery and other connections' callbacks.
    pub fn handoff(&mut self) -> &mut Handoff {
        &mut self.handoff
    }

    /// Marks the transport changed and wakes its connection's task.
    pub fn kick(&mut self) {
        self.handoff.kick();
    }
}
