//! A shared instance's timer task: it sleeps until the instance's next
//! delayed call is due (or an earlier one is scheduled), fires the due
//! calls in one pass under the instance's lock, and yields so that the
//! sockets on its thread have their turn before the next pass. It runs on
//! the instance's thread, and ends when the instance is dropped or faults.

use std::sync::Weak;

use crate::runtime::guest::SharedGuest;

/// Drives `guest`'s delayed calls until it is gone.
pub(crate) async fn run(guest: Weak<SharedGuest>) {
    loop {
        let Some(g) = guest.upgrade() else { return };
        if g.is_faulted() {
            return;
        }
        let (next, wake) = (g.next_timer(), g.wake().clone());
        drop(g);
        let due = async {
            match next {
                // Due already: no trip through the timer wheel (it rounds
                // to milliseconds); the yield below let the sockets run.
                Some(at) if at <= std::time::Instant::now() => {}
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = due => {}
            () = wake.notified() => continue,
        }
        let Some(g) = guest.upgrade() else { return };
        if let Err(fault) = g.fire_timers() {
            tracing::warn!(plugin = %g.plugin(), %fault, "shared guest faulted in a delayed call; its connections are aborted");
            return;
        }
        drop(g);
        tokio::task::yield_now().await;
    }
}
