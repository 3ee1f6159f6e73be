//! The crash-loop backoff of one shared instance slot.
//!
//! A shared instance that traps is replaced by a fresh one for the next
//! connection. If the fresh one traps again soon after it was made (a
//! guest that panics on every connection, a start-up bug), making
//! instance after instance as fast as connections arrive would burn CPU
//! and memory for nothing: so the second quick fault in a row puts off
//! the next instance by [`FIRST_DELAY`], each further one doubles the
//! delay up to [`MAX_DELAY`], and an instance that ran for [`QUIET`]
//! before it faulted starts the count over. Connections that arrive
//! while the slot waits are closed at once, and counted
//! (`twill_connections_refused_total{reason="backoff"}`): the proxy-wasm
//! specification asks hosts the same, to rate-limit a crashing VM's
//! restarts and fail closed.
//!
//! Time is passed in, so the policy is tested without sleeping.

use std::time::{Duration, Instant};

/// The delay after the second quick fault in a row.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// An instance that ran this long before it faulted resets the backoff.
pub const QUIET: Duration = Duration::from_secs(10);

/// One slot's restart state.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    /// Quick faults in a row.
    streak: u32,
    /// When the current instance was made.
    made: Option<Instant>,
    /// No instance before this.
    until: Option<Instant>,
}

impl Backoff {
    /// An instance was made at `now`.
    pub fn made(&mut self, now: Instant) {
        self.made = Some(now);
        self.until = None;
    }

    /// The current instance faulted at `now` (found out later, at the
    /// next connection: the delay still counts from the fault): returns
    /// how long the slot waits before it makes the next (zero: at once).
    pub fn faulted(&mut self, now: Instant) -> Duration {
        let lived = self
            .made
            .map_or(Duration::MAX, |m| now.saturating_duration_since(m));
        if lived >= QUIET {
            self.streak = 0;
        }
        self.streak += 1;
        let delay = match self.streak {
            1 => Duration::ZERO,
            n => FIRST_DELAY
                .saturating_mul(1 << (n - 2).min(16))
                .min(MAX_DELAY),
        };
        self.made = None;
        self.until = Some(now + delay);
        delay
    }

    /// How long until the slot may make an instance, if it must wait.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.until
            .map(|u| u.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fault_restarts_at_once_and_quick_ones_double_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            b.made(now);
            now += Duration::from_millis(5);
            let d = b.faulted(now);
            assert_eq!(b.wait(now), (!d.is_zero()).then_some(d));
            delays.push(d.as_millis());
            now += d;
            assert_eq!(b.wait(now), None);
        }
        assert_eq!(
            delays,
            [
                0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
    }

    #[test]
    fn an_instance_that_ran_quietly_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.made(t0);
        assert_eq!(b.faulted(t0), Duration::ZERO);
        b.made(t0);
        assert_eq!(b.faulted(t0 + Duration::from_millis(1)), FIRST_DELAY);
        let later = t0 + Duration::from_secs(1);
        b.made(later);
        assert_eq!(b.faulted(later + QUIET), Duration::ZERO);
    }
}
