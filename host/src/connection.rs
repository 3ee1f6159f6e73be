//! The per-socket driver: the whole data path for one connection.
//!
//! socket → read buffer → guest `data-received` → `transport.write` (queued
//! in [`TransportState`]) → vectored
//! write → socket. One task owns the socket and the guest's Session, so
//! callbacks never overlap. On a shared instance whose component exports
//! `batch`, `Session::deliver` queues the read instead, and the instance's
//! delivery task ([`crate::shared::batch`]) makes the call and writes the
//! output it caused (with [`send`]); the task is woken only if more is left
//! to do. A connection then
//! has at most [`MAX_QUEUED`] bytes queued, and after the peer's FIN it
//! closes only once they are delivered.
//!
//! Twisted's semantics, as implemented here:
//! - bytes are delivered in order; a chunk boundary means nothing;
//! - `lose-connection`: stop reading, flush every queued byte, send FIN, then
//!   `connection-lost(done)`;
//! - `abort-connection`: drop queued bytes, reset, `connection-lost(lost)`;
//! - the peer's FIN: flush what the guest already wrote, close, then
//!   `connection-lost(done)`; a reset gives `connection-lost(lost(msg))`;
//! - backpressure: above the high-water mark of unsent output the host stops
//!   reading (and pauses a registered producer) until output drains to the
//!   low-water mark.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;

use crate::runtime::bindings::Reason;
use crate::runtime::limits::MAX_QUEUED;
use crate::runtime::state::{Closing, TransportState, WriteSide};
use crate::runtime::{GuestFault, Session};
use crate::shutdown::Shutdown;
use crate::tls::{ClientSide, ServerSide, Side, TlsStats};
use crate::wire::Wire;

pub use crate::runtime::limits::READ_CHUNK;

/// How long a cleanly closing connection waits for the peer's FIN, so that
/// closing with unread input does not reset the connection and destroy data
/// the peer has not read yet.
const LINGER: Duration = Duration::from_secs(2);

/// How a connection ended, as the driver saw it.
#[derive(Debug)]
pub enum End {
    /// The connection ended; `connection-lost` has been called with this.
    Closed(Reason),
    /// The guest faulted; the connection was aborted and the instance is
    /// unusable.
    Fault(GuestFault),
}

/// How a connection that began in plaintext may start TLS (`start-tls`):
/// as the server, with its listener's current settings, or as the client.
#[derive(Debug, Clone)]
pub enum StartTls {
    /// An accepted connection: its listener's `tls` (with `start-tls`).
    Server(Arc<ServerSide>),
    /// A `[[connect]]` connection: its entry's `tls`.
    Client(Arc<ClientSide>),
}

/// What a connection's entry says beyond its socket and protocol.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `[[listen]] idle-timeout`: a connection with no bytes read or sent
    /// for this long is closed as if the protocol called `lose-connection`
    /// (its output is flushed, then `connection-lost(done)`).
    pub idle_timeout: Option<Duration>,
    /// Where the entry's TLS outcomes are counted.
    pub tls_stats: Option<Arc<TlsStats>>,
    /// The entry allows `start-tls`.
    pub start_tls: Option<StartTls>,
}

/// Runs one established connection to its end: `make-connection`, every
/// `data-received`, the close, and `connection-lost`. The session must
/// already hold a built protocol; `stream` already has TLS on if its
/// entry has `tls` (without `start-tls`).
pub async fn run(
    stream: Arc<Wire>,
    session: &mut Session,
    shutdown: &Shutdown,
    options: &Options,
) -> End {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let host = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut conn = Conn {
        stream,
        eof: false,
        paused: false,
        open: Some(shutdown.open_connection()),
        idle_timeout: options.idle_timeout,
        active: tokio::time::Instant::now(),
        start_tls: options.start_tls.clone(),
        tls_stats: options.tls_stats.clone(),
    };
    {
        let mut t = session.transport();
        t.set_stream(conn.stream.clone());
        let may_start = options.start_tls.is_some() && !conn.stream.is_tls();
        t.start_tls()
            .configure(may_start, options.tls_stats.clone());
    }
    let driven = match session.make_connection(peer, host) {
        Ok(()) => {
            session.set_defer(true);
            let driven = conn.drive(session, shutdown).await;
            session.set_defer(false);
            settle_touched(session);
            driven
        }
        Err(f) => Err(f),
    };
    let spliced = session.transport().splice().cloned();
    let reason = match (driven, spliced) {
        (Ok(Driven::Splice), Some(meet)) => {
            let me = (conn.stream.clone(), session.transport_cell());
            let reason = crate::splice::meet(&meet, me, shutdown).await;
            if matches!(reason, Reason::Done) {
                conn.open = None;
            } else {
                conn.abort();
            }
            Ok(reason)
        }
        (driven, spliced) => {
            // Ended before reaching the splice: the partner must not wait.
            if let Some(meet) = spliced {
                crate::splice::abandon(&meet);
            }
            driven.map(|d| match d {
                Driven::End(r) => r,
                Driven::Splice => Reason::Lost("splice without a partner".into()),
            })
        }
    };
    // A shared instance that faulted while the loop was ending (a peer's
    // FIN seen before the fault signal) still aborts the connection: never
    // a clean close after a fault.
    let faulted = (session.fault_listener()).is_some_and(|f| f.is_shutdown());
    let reason = match reason {
        Ok(_) if faulted => Err(GuestFault::Poisoned),
        other => other,
    };
    match reason {
        Ok(reason) => {
            if let Err(f) = session.connection_lost(&reason) {
                tracing::warn!(plugin = %session.plugin().name, %peer, fault = %f, "guest faulted in connection-lost");
            }
            End::Closed(reason)
        }
        Err(fault) => {
            conn.abort();
            End::Fault(fault)
        }
    }
}

/// How a connection's own loop ended.
enum Driven {
    /// The connection ended, for this reason.
    End(Reason),
    /// The connection is spliced and its output sent: its socket goes to
    /// the splice.
    Splice,
}

/// What the loop looks at on each pass, read under one lock of the
/// transport.
struct Look {
    /// Unsent output.
    pending: usize,
    closing: Closing,
    /// Read bytes waiting for batched delivery.
    queued: usize,
    /// The guest paused reading.
    paused: bool,
    write_side: WriteSide,
    half_closeable: bool,
    spliced: bool,
    /// Another connection produces this one's output (a producer
    /// transport is registered).
    fed: bool,
    /// The guest called `start-tls`: the handshake runs once the output
    /// queued before it is sent.
    start_tls: bool,
}

struct Conn {
    /// Shared with the instance's batch queue, which writes a batched
    /// read's output straight to the socket ([`crate::shared::batch`]).
    stream: Arc<Wire>,
    eof: bool,
    paused: bool,
    /// Counted as open (one the shutdown's abort would reset) until it ends
    /// on purpose: cleanly, FIN after every byte, or with a reset arranged.
    open: Option<crate::shutdown::OpenConnection>,
    /// `[[listen]] idle-timeout`.
    idle_timeout: Option<Duration>,
    /// When a byte was last read or sent.
    active: tokio::time::Instant,
    /// How `start-tls` would run its handshake.
    start_tls: Option<StartTls>,
    /// Where handshakes are counted.
    tls_stats: Option<Arc<TlsStats>>,
}

impl Drop for Conn {
    /// A connection dropped before it ended (its task cancelled when the
    /// process exits) resets: a FIN would make whatever output was cut off
    /// look complete.
    fn drop(&mut self) {
        if self.open.is_some() {
            self.abort();
        }
    }
}

impl Conn {
    /// Closes with a reset (once the socket is dropped).
    fn abort(&mut self) {
        self.open = None;
        self.stream.abort();
    }

    /// Writes as much queued output as the socket takes without blocking.
    /// Returns what is still unsent, how the guest wants the connection to
    /// end, and how many read bytes wait for batched delivery, read under
    /// the same lock.
    fn flush(&mut self, session: &mut Session) -> io::Result<Look> {
        let mut t = session.transport();
        if send(&mut t, &self.stream)? > 0 && self.idle_timeout.is_some() {
            self.active = tokio::time::Instant::now();
        }
        if let Some(p) = t.producer_to_resume() {
            drop(t);
            crate::runtime::state::hold(&p, false);
            t = session.transport();
        }
        Ok(Look {
            pending: self.pending(&t),
            closing: t.closing(),
            queued: t.handoff().queued(),
            paused: t.reading_paused(),
            write_side: t.write_side(),
            half_closeable: t.half_closeable(),
            spliced: t.splice().is_some(),
            fed: t.is_fed(),
            start_tls: t.start_tls().requested(),
        })
    }

    /// Output still to go out now: what the transport may send (before a
    /// `start-tls` handshake, only the plaintext queued before it), plus
    /// one for TLS records waiting for the socket.
    fn pending(&self, t: &TransportState) -> usize {
        t.sendable() + usize::from(self.stream.wants_write())
    }

    /// Pauses or resumes a registered producer as output crosses the marks.
    fn producer(&mut self, session: &mut Session) -> Result<(), GuestFault> {
        let limits = &session.plugin().limits;
        let (high, low) = (limits.high_water, limits.low_water);
        let (producer, closing, pending) = {
            let t = session.transport();
            (t.producer(), t.closing(), t.unsent())
        };
        if !producer || closing != Closing::Open {
            return Ok(());
        }
        if !self.paused && pending > high {
            self.paused = true;
            session.pause_producing()?;
        } else if self.paused && pending <= low {
            self.paused = false;
            session.resume_producing()?;
        }
        Ok(())
    }

    async fn drive(
        &mut self,
        session: &mut Session,
        shutdown: &Shutdown,
    ) -> Result<Driven, GuestFault> {
        let (high, low) = (
            session.plugin().limits.high_water,
            session.plugin().limits.low_water,
        );
        let mut reading_paused = false;
        // One shutdown future for the whole connection, registered once
        // rather than on every pass of the loop.
        let stop = shutdown.recv();
        let abort = shutdown.aborted();
        tokio::pin!(stop, abort);
        let mut stopping = false;
        // On a shared instance: the instance's fault signal, and wake-ups
        // from other connections' callbacks that changed this transport.
        let fault = session.fault_listener();
        let shared = fault.is_some();
        let mut fault = fault.as_ref().map(crate::shutdown::Shutdown::recv);
        // The idle timeout: armed for the last activity seen, and moved on
        // when it fires early (activity does not touch the timer).
        let idle = self.idle_timeout;
        let idle_timer = tokio::time::sleep(idle.unwrap_or(LINGER));
        tokio::pin!(idle_timer);
        let mut idle_closed = false;
        // Whether the protocol heard `read-connection-lost`.
        let mut read_lost_told = false;
        // The instance's next delayed call (an instance of its own; a
        // shared instance's timer task fires its calls).
        let timer = tokio::time::sleep(LINGER);
        tokio::pin!(timer);
        let mut armed: Option<std::time::Instant> = None;
        loop {
            // Output the last callback wrote to other connections.
            settle_touched(session);
            // Twisted pauses a producer as soon as a write takes the buffer
            // past its size, before any byte is sent; resume after the flush.
            let producer = session.transport().producer();
            if producer {
                self.producer(session)?;
            }
            let look = match self.flush(session) {
                Ok(look) => look,
                Err(e) => return Ok(Driven::End(lost(&e))),
            };
            let (mut pending, mut closing, queued) = (look.pending, look.closing, look.queued);
            if producer {
                // Resuming may write more (or close): read the state again.
                self.producer(session)?;
                let t = session.transport();
                (pending, closing) = (self.pending(&t), t.closing());
            }
            if closing == Closing::Abort {
                self.abort();
                return Ok(Driven::End(Reason::Lost("connection aborted".into())));
            }
            if look.start_tls {
                if pending == 0 && queued == 0 {
                    // The plaintext before `start-tls` is sent and every
                    // read delivered: the handshake, then on in TLS.
                    let handshake = self.start_tls(session);
                    let done = tokio::select! {
                        r = handshake => r,
                        () = &mut abort => Err(Reason::Lost("shutdown deadline passed; connection reset".into())),
                    };
                    if let Err(reason) = done {
                        // Closed, not reset: the handshake already told
                        // the peer why (its alert).
                        self.open = None;
                        return Ok(Driven::End(reason));
                    }
                    continue;
                }
            } else if look.spliced {
                if pending == 0 && queued == 0 {
                    return Ok(Driven::Splice);
                }
            } else if look.write_side == WriteSide::Closing && pending == 0 {
                // lose-write-connection: FIN (after TLS's close_notify) now
                // that the output is sent.
                match self.stream.finish_write() {
                    Ok(true) => {
                        session.transport().set_write_closed();
                        if look.half_closeable {
                            session.write_connection_lost()?;
                        }
                        continue;
                    }
                    // close_notify waits for the socket.
                    Ok(false) => pending = 1,
                    Err(e) => return Ok(Driven::End(lost(&e))),
                }
            }
            // The peer's FIN, once the reads before it were delivered: a
            // half-closeable protocol hears of it and the connection stays
            // open; any other connection closes.
            let read_done = self.eof && queued == 0;
            let half = look.half_closeable && session.has_half_close();
            if read_done && half && !read_lost_told && !look.spliced && closing == Closing::Open {
                read_lost_told = true;
                session.read_connection_lost()?;
                continue;
            }
            // A clean close after the peer's FIN waits for the reads queued
            // before it to be delivered (after lose-connection they are
            // skipped).
            let both_closed = !half || look.write_side == WriteSide::Closed;
            if pending == 0
                && !look.spliced
                && (closing == Closing::Lose || (read_done && both_closed))
            {
                return Ok(Driven::End(self.close_cleanly().await));
            }
            // Read-side backpressure with hysteresis: a connection whose
            // output is backed up stops reading. Not when another
            // connection produces its output (a relay's, linked with
            // `register-producer-transport`): that link pauses the producer
            // instead, and pausing this side's reading too would deadlock
            // with a peer that reads only once its own output is read.
            if reading_paused && (pending <= low || look.fed) {
                reading_paused = false;
            } else if !reading_paused && pending > high && !look.fed {
                reading_paused = true;
            }
            let want_read = closing == Closing::Open
                && !look.start_tls
                && !self.eof
                && !reading_paused
                && !look.paused
                && !look.spliced
                && queued < MAX_QUEUED;
            let interest = match (want_read, pending > 0) {
                (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
                (true, false) => Some(Interest::READABLE),
                (false, true) => Some(Interest::WRITABLE),
                // Nothing to send and not reading: the loop returned above
                // (lose, EOF with nothing queued), or reads wait for batched
                // delivery, which kicks this task when done.
                // Nothing to send and not reading: reads wait for batched
                // delivery, which kicks this task when done; or the guest
                // paused reading, or heard the peer's FIN, and a callback
                // (a timer's, another connection's) must act next.
                (false, false) => {
                    // Under the lock: if the reads were delivered since
                    // `flush` looked, go round again instead of waiting.
                    let mut t = session.transport();
                    if queued > 0 && !t.handoff().wait_for_delivery() {
                        continue;
                    }
                    None
                }
            };
            let next = session.next_timer();
            if next != armed {
                if let Some(at) = next {
                    timer.as_mut().reset(at.into());
                }
                armed = next;
            }
            // Due already (a call with no delay): fire after the I/O that
            // is ready, without the timer wheel's millisecond rounding.
            let due_now = armed.is_some_and(|at| at <= std::time::Instant::now());
            tokio::select! {
                biased;
                ready = async { self.stream.ready(interest.unwrap_or(Interest::READABLE)).await }, if interest.is_some() => {
                    let ready = match ready {
                        Ok(r) => r,
                        Err(e) => return Ok(Driven::End(lost(&e))),
                    };
                    if want_read && (ready.is_readable() || ready.is_read_closed()) {
                        let mut buf = ReadBuf::take();
                        match self.stream.read(&mut buf.0) {
                            Ok(0) => self.eof = true,
                            Ok(n) => {
                                if idle.is_some() {
                                    self.active = tokio::time::Instant::now();
                                }
                                session.deliver(&buf.0[..n], &self.stream)?;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Ok(Driven::End(lost(&e))),
                        }
                    }
                }
                () = std::future::poll_fn(|cx| session.poll_kicked(cx)), if shared => {}
                () = async { if !due_now { timer.as_mut().await } }, if armed.is_some() => {
                    armed = None;
                    session.fire_timers()?;
                }
                () = async { if let Some(f) = fault.as_mut() { f.await } }, if fault.is_some() => {
                    return Err(GuestFault::Poisoned);
                }
                () = &mut abort => {
                    // The shutdown deadline passed with this connection
                    // still open: reset, so the peer sees the truncation.
                    self.abort();
                    let unsent = session.transport().unsent();
                    tracing::warn!(plugin = %session.plugin().name, unsent, "shutdown deadline passed: connection reset, unsent output dropped");
                    return Ok(Driven::End(Reason::Lost("shutdown deadline passed; connection reset".into())));
                }
                () = &mut idle_timer, if idle.is_some() && !idle_closed => {
                    let timeout = idle.unwrap_or(LINGER);
                    if session.transport().take_sent_elsewhere() {
                        self.active = tokio::time::Instant::now();
                    }
                    if self.active.elapsed() >= timeout {
                        // As if the protocol called lose-connection.
                        idle_closed = true;
                        tracing::debug!(plugin = %session.plugin().name, ?timeout, "idle timeout: closing the connection");
                        session.transport().lose();
                    } else {
                        idle_timer.as_mut().reset(self.active + timeout);
                    }
                }
                () = &mut stop, if !stopping => {
                    stopping = true;
                    // Graceful shutdown: as if the protocol called lose-connection.
                    session.transport().lose();
                }
            }
        }
    }

    /// Runs the handshake `start-tls` asked for, on this connection's
    /// socket, and puts TLS on it; counted. A failure is the connection's
    /// end, with why.
    async fn start_tls(&mut self, session: &mut Session) -> Result<(), Reason> {
        let stats = self.tls_stats.as_deref();
        let result = match &self.start_tls {
            Some(StartTls::Server(side)) => self.stream.handshake(Side::Server(side), stats).await,
            Some(StartTls::Client(side)) => self.stream.handshake(Side::Client(side), stats).await,
            // `start-tls` is refused without one of these.
            None => return Err(Reason::Lost("start-tls without TLS settings".into())),
        };
        match result {
            Ok(()) => {
                session.transport().start_tls().done();
                tracing::debug!(plugin = %session.plugin().name, "start-tls: handshake complete");
                Ok(())
            }
            Err(e) => {
                tracing::info!(plugin = %session.plugin().name, failure = e.failure.label(), error = %e, "start-tls: handshake failed");
                Err(Reason::Lost(e.message))
            }
        }
    }

    /// Sends FIN (after TLS's close_notify), waits briefly for the peer's
    /// FIN (discarding input), and reports a clean close.
    async fn close_cleanly(&mut self) -> Reason {
        self.open = None;
        self.stream.finish_write_within(LINGER).await;
        if !self.eof {
            let mut sink = [0u8; 4096];
            let tcp = self.stream.tcp();
            let _ = tokio::time::timeout(LINGER, async {
                loop {
                    if tcp.readable().await.is_err() {
                        break;
                    }
                    match tcp.try_read(&mut sink) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
        Reason::Done
    }
}

/// A read buffer (`READ_CHUNK` bytes, zeroed once when made) from a small
/// per-thread pool. An idle connection holds no buffer; a busy one borrows
/// one for the read and the `data-received` call, and gives it back on drop
/// (to whichever thread it ends on).
struct ReadBuf(Vec<u8>);

thread_local! {
    static READ_BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ReadBuf {
    fn take() -> ReadBuf {
        let v = READ_BUFS
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; READ_CHUNK]);
        ReadBuf(v)
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        READ_BUFS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 32 {
                p.push(v);
            }
        });
    }
}

/// Sends the output this connection's last callbacks wrote to other
/// connections, on their sockets; wakes a connection's task only if
/// something is left for it to do (output its socket did not take, a
/// producer to pause), or its socket failed (its task finds the error).
fn settle_touched(session: &mut Session) {
    session.settle_touched(|cell| {
        let mut t = crate::runtime::state::lock(cell);
        let sent = match t.stream().cloned() {
            Some(stream) => send(&mut t, &stream),
            None => Ok(0),
        };
        match sent {
            Ok(n) => {
                if n > 0 {
                    t.mark_sent_elsewhere();
                }
                let tls_waits = t.stream().is_some_and(|w| w.wants_write());
                if t.unsent() > 0 || t.producer() || tls_waits {
                    t.kick();
                }
            }
            Err(_) => t.kick(),
        }
        if let Some(p) = t.producer_to_resume() {
            drop(t);
            crate::runtime::state::hold(&p, false);
        }
    });
}

/// Writes as much of `t`'s sendable output to `wire` as it takes without
/// blocking (with TLS: first the records already waiting). Also used by
/// batched delivery, which writes a batched read's output straight to the
/// socket.
pub fn send(t: &mut TransportState, wire: &Wire) -> io::Result<usize> {
    wire.flush()?;
    t.send_with(|iov| wire.write_vectored(iov))
}

fn lost(e: &io::Error) -> Reason {
    Reason::Lost(e.to_string())
}
