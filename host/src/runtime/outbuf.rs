//! A connection's unsent output ([`OutBuf`]: owned chunks, written with
//! vectored I/O) and the host-wide ceiling every connection's unsent output
//! counts against ([`OutputBudget`]). No I/O here: the writer hands
//! [`OutBuf::slices`] to the socket and reports what it took.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Fills `out` with the next slices to write, in order, at most
    /// `limit` bytes in all; returns how many. No allocation: this is on
    /// the data path.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS], limit: usize) -> usize {
        let mut n = 0;
        let mut left = limit;
        for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            if left == 0 {
                break;
            }
            let s = if i == 0 { &c[self.offset..] } else { &c[..] };
            let s = &s[..s.len().min(left)];
            left -= s.len();
            out[i] = IoSlice::new(s);
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
            let k = b.slices(&mut iov, usize::MAX);
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
