//! Spliced connections (`transport.splice`): two connections' tasks meet
//! at their [`Meet`] once each has sent the output queued before the
//! splice; the second to arrive pumps bytes between the two sockets both
//! ways with no guest call, and tells the first how the pair ended.
//!
//! The pump keeps one 64 KiB buffer per direction and reads a side only
//! once its buffer was written out to the other side, so a peer that does
//! not read stops the other through TCP's own flow control (the host holds
//! at most the two buffers). One side's FIN is passed on as a write
//! shutdown of the other once that direction's buffer is written; the pair
//! ends cleanly once both directions have. A read or write error on either
//! socket resets both. `lose-connection` on either transport (from a
//! callback of another connection or a delayed call) and the reactor's
//! graceful shutdown stop the reading and close both directions once their
//! buffers are written; `abort-connection` and the shutdown's deadline
//! reset both.

use std::io::{self, IoSlice};

use tokio::io::Interest;
use tokio::sync::oneshot;

use crate::runtime::bindings::Reason;
use crate::runtime::state::{Arrival, Closing, Meet, MeetState, lock};
use crate::shutdown::Shutdown;
use crate::wire::Wire;

/// Each direction's buffer.
const BUF: usize = 64 << 10;

/// Arrives at `meet` with `stream`, once this connection's output was
/// sent: waits for the partner, or pumps with it if it is waiting. Returns
/// how the pair ended; a `Lost` reason means the caller resets its socket.
pub async fn meet(meet: &Meet, me: Arrival, shutdown: &Shutdown) -> Reason {
    let waiting = {
        let mut w = lock(&meet.waiting);
        match std::mem::take(&mut *w) {
            MeetState::Empty => {
                let (tx, rx) = oneshot::channel();
                *w = MeetState::Waiting(me.clone(), tx);
                Err(rx)
            }
            MeetState::Waiting(other, tx) => {
                *w = MeetState::Gone;
                Ok((other, tx))
            }
            MeetState::Gone => return partner_gone(),
        }
    };
    match waiting {
        Err(rx) => {
            tokio::select! {
                r = rx => match r {
                    Ok(Ok(())) => Reason::Done,
                    Ok(Err(why)) => Reason::Lost(why),
                    Err(_) => partner_gone(),
                },
                () = shutdown.aborted() => {
                    abandon(meet);
                    Reason::Lost("shutdown deadline passed; connection reset".into())
                }
            }
        }
        Ok((other, tx)) => {
            let reason = pump(&me, &other, meet, shutdown).await;
            let _ = tx.send(match &reason {
                Reason::Done => Ok(()),
                Reason::Lost(why) | Reason::Failed(why) => Err(why.clone()),
            });
            reason
        }
    }
}

fn partner_gone() -> Reason {
    Reason::Lost("the spliced connection ended before the splice took effect".into())
}

/// A connection ends without arriving at `meet` (its flush failed, its
/// instance faulted): the partner, waiting or still to come, does not wait
/// for it.
pub fn abandon(meet: &Meet) {
    *lock(&meet.waiting) = MeetState::Gone;
}

/// One direction of the pump.
struct Dir {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// No more reading: the source's FIN arrived, or the pair is stopping.
    eof: bool,
    /// The FIN went out on the destination.
    shut: bool,
}

impl Dir {
    /// A direction whose first bytes to write are `first` (output written
    /// to the destination's transport after its task last flushed).
    fn new(first: Vec<u8>) -> Dir {
        let end = first.len();
        let mut buf = first;
        buf.resize(end.max(BUF), 0);
        Dir {
            buf: buf.into_boxed_slice(),
            start: 0,
            end,
            eof: false,
            shut: false,
        }
    }

    /// Moves bytes from `src` to `dst` until either would block.
    fn step(&mut self, src: &Wire, dst: &Wire) -> io::Result<()> {
        dst.flush()?;
        loop {
            if self.start < self.end {
                match dst.write_vectored(&[IoSlice::new(&self.buf[self.start..self.end])]) {
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if self.eof {
                // The FIN (after TLS's close_notify, once the socket took
                // it).
                if !self.shut {
                    self.shut = dst.finish_write()?;
                }
                return Ok(());
            }
            match src.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => (self.start, self.end) = (0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// What this direction waits for on its source and destination.
    fn wants(&self, dst: &Wire) -> (Option<Interest>, Option<Interest>) {
        if self.start < self.end || dst.wants_write() {
            (None, Some(Interest::WRITABLE))
        } else if !self.eof {
            (Some(Interest::READABLE), None)
        } else {
            (None, None)
        }
    }
}

fn join(a: Option<Interest>, b: Option<Interest>) -> Option<Interest> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a | b),
        (a, b) => a.or(b),
    }
}

/// Resets both sockets (once they are dropped).
fn reset(a: &Wire, b: &Wire) {
    a.abort();
    b.abort();
}

/// Pumps between `a` and `b` until both directions closed (`Done`), an
/// error or an abort (`Lost`, both reset).
async fn pump(a: &Arrival, b: &Arrival, meet: &Meet, shutdown: &Shutdown) -> Reason {
    // From now on neither transport takes reads or writes; what was
    // written to one since its task's last flush goes out first.
    let (mut ab, mut ba) = (
        Dir::new(lock(&b.1).start_pumping()),
        Dir::new(lock(&a.1).start_pumping()),
    );
    let (a, b) = (&*a.0, &*b.0);
    let stop = shutdown.recv();
    let abort = shutdown.aborted();
    tokio::pin!(stop, abort);
    let mut stopping = false;
    loop {
        // A close asked on either transport since the last look.
        for cell in meet.cells.iter().filter_map(std::sync::Weak::upgrade) {
            match lock(&cell).closing() {
                Closing::Abort => {
                    reset(a, b);
                    return Reason::Lost("connection aborted".into());
                }
                Closing::Lose => stopping = true,
                Closing::Open => {}
            }
        }
        if stopping {
            ab.eof = true;
            ba.eof = true;
        }
        if let Err(e) = ab.step(a, b).and_then(|()| ba.step(b, a)) {
            reset(a, b);
            return Reason::Lost(e.to_string());
        }
        if ab.shut && ba.shut {
            return Reason::Done;
        }
        let (ab_src, ab_dst) = ab.wants(b);
        let (ba_src, ba_dst) = ba.wants(a);
        let (ia, ib) = (join(ab_src, ba_dst), join(ba_src, ab_dst));
        tokio::select! {
            r = async { a.ready(ia.unwrap_or(Interest::READABLE)).await }, if ia.is_some() => {
                if let Err(e) = r {
                    reset(a, b);
                    return Reason::Lost(e.to_string());
                }
            }
            r = async { b.ready(ib.unwrap_or(Interest::READABLE)).await }, if ib.is_some() => {
                if let Err(e) = r {
                    reset(a, b);
                    return Reason::Lost(e.to_string());
                }
            }
            () = kicked(meet) => {}
            () = &mut stop, if !stopping => stopping = true,
            () = &mut abort => {
                reset(a, b);
                return Reason::Lost("shutdown deadline passed; connection reset".into());
            }
        }
    }
}

/// Ready once either transport was changed by a guest call (a close).
async fn kicked(meet: &Meet) {
    std::future::poll_fn(|cx| {
        let mut ready = false;
        for cell in meet.cells.iter().filter_map(std::sync::Weak::upgrade) {
            ready |= lock(&cell).handoff().poll_kicked(cx).is_ready();
        }
        if ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
