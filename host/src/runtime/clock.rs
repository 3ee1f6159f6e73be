//! Reactor time: the [`Clock`] (`reactor.seconds`, real or a test's manual
//! one) and each instance's [`Timers`], the delayed calls it scheduled
//! (`reactor.call-later`), in the order they fall due. Plain data, no
//! wasmtime and no tokio timers: whoever drives the instance (its
//! connection's task, or a shared instance's timer task) asks for
//! [`Timers::next_due`], sleeps, and fires what [`Timers::pop_due`] gives.
//!
//! A reset to a later time (a `TimeoutMixin` reset on every read) only
//! rewrites the call's due time: its place in the heap stays, and is moved
//! when it comes up. Only a call made earlier is pushed again. So a call
//! reset a million times holds one heap entry, and the heap never holds
//! more than two per call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The longest delay a call may have; longer ones are clamped to it.
pub const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The reactor's clock: nanoseconds since the host started, or a test's
/// manual clock that moves only when told.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Real monotonic time.
    #[default]
    Real,
    /// A test's clock (`twill::testing`): its nanoseconds.
    Manual(Arc<AtomicU64>),
}

/// When the host's reactor time began.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock {
    /// The current reactor time, in nanoseconds.
    pub fn now(&self) -> u64 {
        match self {
            Clock::Real => u64::try_from(start().elapsed().as_nanos()).unwrap_or(u64::MAX),
            Clock::Manual(ns) => ns.load(Ordering::Relaxed),
        }
    }

    /// The real instant a reactor time falls on (none for a manual clock).
    pub fn instant(&self, ns: u64) -> Option<Instant> {
        match self {
            Clock::Real => start().checked_add(Duration::from_nanos(ns)),
            Clock::Manual(_) => None,
        }
    }

    /// Moves a manual clock on by `by`; no effect on the real one.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ns) = self {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
        }
    }
}

/// Seconds (as a guest gives them) to a delay in nanoseconds: an error for
/// a negative or non-number delay, clamped to [`MAX_DELAY`].
pub fn delay_ns(seconds: f64) -> Result<u64, String> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(format!(
            "call-later: delay must be a number of seconds, 0 or more; got {seconds}"
        ));
    }
    let max = MAX_DELAY.as_secs_f64();
    Ok((seconds.min(max) * 1e9) as u64)
}

/// The host's representation of a guest-held `delayed-call` handle: which
/// call of the instance's [`Timers`] it names, and that slot's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayedCallHandle {
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Fired,
    Cancelled,
}

/// One scheduled call.
#[derive(Debug)]
struct Call {
    generation: u32,
    due: u64,
    /// The due time of its one valid heap entry.
    queued_at: u64,
    /// Orders calls due at the same time: the later scheduled, the later.
    seq: u64,
    token: u64,
    state: State,
    /// Whether the guest still holds its handle.
    held: bool,
}

/// Why a call could not be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// The instance already has `max-timers` active calls.
    #[error(
        "call-later: the instance already has {0} active delayed calls (the plugin's max-timers)"
    )]
    TooMany(usize),
    /// A bad delay (negative, or not a number).
    #[error("{0}")]
    BadDelay(String),
}

/// One instance's delayed calls.
#[derive(Debug, Default)]
pub struct Timers {
    clock: Clock,
    calls: Vec<Call>,
    free: Vec<u32>,
    /// (due, seq, id, generation), earliest first.
    heap: BinaryHeap<Reverse<(u64, u64, u32, u32)>>,
    active: usize,
    max: usize,
    next_seq: u64,
    /// Told when the earliest due time moves earlier (a shared instance's
    /// timer task sleeps on it).
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl Timers {
    /// No calls yet; at most `max` active at once, on `clock`.
    pub fn new(clock: Clock, max: usize) -> Timers {
        Timers {
            clock,
            max,
            ..Timers::default()
        }
    }

    /// The clock the calls run on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Notify `wake` whenever the earliest due time moves earlier.
    pub fn set_wake(&mut self, wake: Arc<tokio::sync::Notify>) {
        self.wake = Some(wake);
    }

    /// Active calls.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Schedules `token` `delay_ns` from now.
    pub fn call_later(&mut self, delay: u64, token: u64) -> Result<DelayedCallHandle, TimerError> {
        if self.active >= self.max {
            return Err(TimerError::TooMany(self.max));
        }
        let due = self.clock.now().saturating_add(delay);
        let seq = self.seq();
        let call = Call {
            generation: 0,
            due,
            queued_at: due,
            seq,
            token,
            state: State::Active,
            held: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                let slot = &mut self.calls[id as usize];
                let generation = slot.generation.wrapping_add(1);
                *slot = Call { generation, ..call };
                id
            }
            None => {
                self.calls.push(call);
                u32::try_from(self.calls.len() - 1).expect("fewer than 2^32 calls")
            }
        };
        self.active += 1;
        let generation = self.calls[id as usize].generation;
        self.push(due, seq, id, generation);
        Ok(DelayedCallHandle { id, generation })
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Queues a heap entry, telling the timer task if it is now the first.
    fn push(&mut self, due: u64, seq: u64, id: u32, generation: u32) {
        let first = self.heap.peek().is_none_or(|Reverse(top)| due < top.0);
        self.heap.push(Reverse((due, seq, id, generation)));
        if first && let Some(w) = &self.wake {
            w.notify_one();
        }
    }

    fn call(&self, h: DelayedCallHandle) -> Option<&Call> {
        self.calls
            .get(h.id as usize)
            .filter(|c| c.generation == h.generation)
    }

    fn call_mut(&mut self, h: DelayedCallHandle) -> Option<&mut Call> {
        self.calls
            .get_mut(h.id as usize)
            .filter(|c| c.generation == h.generation)
    }

    /// When the call is (or was) due, in nanoseconds.
    pub fn due(&self, h: DelayedCallHandle) -> u64 {
        self.call(h).map_or(0, |c| c.due)
    }

    /// Whether the call neither fired nor was cancelled.
    pub fn is_active(&self, h: DelayedCallHandle) -> bool {
        self.call(h).is_some_and(|c| c.state == State::Active)
    }

    /// Cancels an active call; false if it was not active.
    pub fn cancel(&mut self, h: DelayedCallHandle) -> bool {
        let Some(c) = self.call_mut(h).filter(|c| c.state == State::Active) else {
            return false;
        };
        c.state = State::Cancelled;
        let held = c.held;
        self.active -= 1;
        if !held {
            self.free.push(h.id);
        }
        true
    }

    /// Makes an active call due at `due` instead; false if it was not
    /// active.
    pub fn move_to(&mut self, h: DelayedCallHandle, due: u64) -> bool {
        let seq = self.seq();
        let Some(c) = self.call_mut(h).filter(|c| c.state == State::Active) else {
            return false;
        };
        c.due = due;
        c.seq = seq;
        if due < c.queued_at {
            // Earlier than its heap entry: a new entry, the old one stale.
            c.queued_at = due;
            self.push(due, seq, h.id, h.generation);
        }
        true
    }

    /// Makes an active call due `delay` nanoseconds from now.
    pub fn reset(&mut self, h: DelayedCallHandle, delay: u64) -> bool {
        let due = self.clock.now().saturating_add(delay);
        self.move_to(h, due)
    }

    /// Moves an active call `by` nanoseconds later (earlier if negative),
    /// never before now.
    pub fn delay(&mut self, h: DelayedCallHandle, by: i128) -> bool {
        let now = self.clock.now();
        let Some(c) = self.call(h) else { return false };
        let due = (i128::from(c.due) + by).clamp(i128::from(now), i128::from(u64::MAX));
        self.move_to(h, due as u64)
    }

    /// The guest dropped its handle: the call stays scheduled, and its
    /// slot is freed once it is no longer active.
    pub fn release(&mut self, h: DelayedCallHandle) {
        let Some(c) = self.call_mut(h) else { return };
        c.held = false;
        if c.state != State::Active {
            self.free.push(h.id);
        }
    }

    /// The earliest due time of an active call (or a little earlier: a
    /// call reset to later is found out when it comes up).
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((due, ..))| *due)
    }

    /// When the next active call is due, exactly (calls reset to later
    /// are requeued first): what a test clock orders instances by.
    pub fn exact_next_due(&mut self) -> Option<u64> {
        self.settle_top().map(|(due, ..)| due)
    }

    /// Brings the heap's top to the next active call: drops stale entries
    /// and requeues a call reset to later at its real time. Returns the
    /// top's (due, seq, id).
    fn settle_top(&mut self) -> Option<(u64, u64, u32)> {
        loop {
            let Reverse((due, seq, id, generation)) = *self.heap.peek()?;
            let c = &self.calls[id as usize];
            let valid =
                c.generation == generation && c.state == State::Active && c.queued_at == due;
            if valid && c.due == due {
                return Some((due, seq, id));
            }
            let (real, cseq) = (c.due, c.seq);
            self.heap.pop();
            if valid {
                // Reset to later: requeue at its real time.
                self.calls[id as usize].queued_at = real;
                self.heap.push(Reverse((real, cseq, id, generation)));
            }
        }
    }

    /// A fence for one pass of firing: calls scheduled after it wait for
    /// the next pass, so a call rescheduling itself with no delay cannot
    /// keep a pass going.
    pub fn fence(&self) -> u64 {
        self.next_seq
    }

    /// The next call due at `now` or before and scheduled before `fence`,
    /// marked fired: its token. None when there is none.
    pub fn pop_due(&mut self, now: u64, fence: u64) -> Option<u64> {
        let (due, seq, id) = self.settle_top()?;
        if due > now || seq > fence {
            return None;
        }
        self.heap.pop();
        let c = &mut self.calls[id as usize];
        c.state = State::Fired;
        let (token, held) = (c.token, c.held);
        self.active -= 1;
        if !held {
            self.free.push(id);
        }
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual() -> (Timers, Clock) {
        let clock = Clock::Manual(Arc::default());
        (Timers::new(clock.clone(), 4), clock)
    }

    fn fire_all(t: &mut Timers) -> Vec<u64> {
        let (now, fence) = (t.clock().now(), t.fence());
        std::iter::from_fn(|| t.pop_due(now, fence)).collect()
    }

    #[test]
    fn calls_fire_in_due_order_then_schedule_order() {
        let (mut t, clock) = manual();
        t.call_later(30, 1).unwrap();
        t.call_later(10, 2).unwrap();
        t.call_later(10, 3).unwrap();
        assert_eq!(fire_all(&mut t), Vec::<u64>::new());
        clock.advance(Duration::from_nanos(10));
        assert_eq!(fire_all(&mut t), [2, 3]);
        clock.advance(Duration::from_nanos(20));
        assert_eq!(fire_all(&mut t), [1]);
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn cancel_reset_and_delay_follow_idelayedcall() {
        let (mut t, clock) = manual();
        let a = t.call_later(100, 1).unwrap();
        let b = t.call_later(100, 2).unwrap();
        let c = t.call_later(100, 3).unwrap();
        assert!(t.cancel(a));
        assert!(!t.cancel(a), "already cancelled");
        assert!(t.reset(b, 300), "later");
        assert!(t.delay(c, -50), "earlier");
        assert_eq!(t.due(c), 50);
        clock.advance(Duration::from_nanos(100));
        assert_eq!(fire_all(&mut t), [3]);
        assert!(!t.is_active(c) && !t.reset(c, 10), "fired is inactive");
        clock.advance(Duration::from_nanos(200));
        assert_eq!(fire_all(&mut t), [2]);
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn a_call_reset_many_times_holds_one_heap_entry() {
        let (mut t, clock) = manual();
        let h = t.call_later(1_000, 7).unwrap();
        for i in 1..=100_000u64 {
            clock.advance(Duration::from_nanos(1));
            assert!(t.reset(h, 1_000 + i));
        }
        assert_eq!(t.heap.len(), 1);
        clock.advance(Duration::from_nanos(1_000 + 100_000));
        assert_eq!(fire_all(&mut t), [7]);
    }

    #[test]
    fn max_timers_counts_active_calls_and_slots_are_reused() {
        let (mut t, clock) = manual();
        let hs: Vec<_> = (0..4).map(|i| t.call_later(1, i).unwrap()).collect();
        assert_eq!(t.call_later(1, 9), Err(TimerError::TooMany(4)));
        assert!(t.cancel(hs[0]));
        let again = t.call_later(1, 10).unwrap();
        t.release(hs[0]);
        clock.advance(Duration::from_nanos(1));
        assert_eq!(fire_all(&mut t), [1, 2, 3, 10]);
        for h in &hs[1..] {
            t.release(*h);
        }
        t.release(again);
        let reused = t.call_later(1, 11).unwrap();
        assert!(reused.id < 5, "a freed slot is reused");
        assert!(!t.is_active(hs[0]), "a stale handle reaches nothing");
    }

    #[test]
    fn a_call_scheduled_during_a_pass_waits_for_the_next() {
        let (mut t, _) = manual();
        t.call_later(0, 1).unwrap();
        let (now, fence) = (t.clock().now(), t.fence());
        assert_eq!(t.pop_due(now, fence), Some(1));
        t.call_later(0, 2).unwrap();
        assert_eq!(t.pop_due(now, fence), None, "same pass");
        assert_eq!(fire_all(&mut t), [2], "next pass");
    }

    #[test]
    fn delays_are_checked_and_clamped() {
        assert!(delay_ns(-1.0).is_err());
        assert!(delay_ns(f64::NAN).is_err());
        assert_eq!(delay_ns(0.5), Ok(500_000_000));
        assert_eq!(
            delay_ns(1e300),
            Ok(MAX_DELAY.as_nanos() as u64),
            "clamped to 100 years"
        );
    }
}
