//! Reactor time: Twisted's `reactor.seconds()` and `reactor.callLater`
//! ([`seconds`], [`call_later`], [`DelayedCall`]), `task.LoopingCall`
//! ([`LoopingCall`]) and `policies.TimeoutMixin` ([`Timeout`]).
//!
//! A delayed call runs on the instance that scheduled it, never while
//! another of its callbacks runs, under the same CPU budget as any
//! callback. On an instance of its own (one per connection, the default)
//! calls die with the connection; on a shared instance they live as long
//! as the instance. Closures cannot borrow the protocol (it is busy in no
//! callback when a call fires): capture a [`Transport`] clone, or share
//! state through `Rc<RefCell<...>>`.
//!
//! ```ignore
//! use std::time::Duration;
//! use twill_guest::reactor::{call_later, Timeout};
//! use twill_guest::{Protocol, Transport};
//!
//! #[derive(Default)]
//! struct Greeter { idle: Option<Timeout> }
//!
//! impl Protocol for Greeter {
//!     fn connection_made(&mut self, transport: &Transport) {
//!         let t = transport.clone();
//!         call_later(Duration::from_millis(100), move || t.write(b"hello\n"));
//!         // Drop the client after 30 s without a byte from it.
//!         let idle = Timeout::new(transport);
//!         idle.set_timeout(Some(Duration::from_secs(30)));
//!         self.idle = Some(idle);
//!     }
//!     fn data_received(&mut self, _t: &Transport, _data: &[u8]) {
//!         if let Some(idle) = &self.idle { idle.reset_timeout(); }
//!     }
//! }
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::Duration;

pub use crate::outbound::{ConnectError, Connector, connect_tcp, connect_tcp_timeout};

use crate::__bindings::twill::protocol::reactor as wit_reactor;
use crate::Transport;

/// Where a delayed call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Called,
    Cancelled,
}

/// Why [`DelayedCall::cancel`], [`DelayedCall::reset`] or
/// [`DelayedCall::delay`] changed nothing: Twisted's `AlreadyCalled` and
/// `AlreadyCancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlreadyDone {
    /// The call already ran.
    Called,
    /// The call was cancelled.
    Cancelled,
}

impl fmt::Display for AlreadyDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlreadyDone::Called => "the delayed call already ran",
            AlreadyDone::Cancelled => "the delayed call was cancelled",
        })
    }
}

impl std::error::Error for AlreadyDone {}

type Callback = Box<dyn FnOnce()>;

/// A call not yet run: its closure, and the state its handles see.
type Pending = (Callback, Rc<Cell<State>>);

thread_local! {
    /// The closures of the calls not yet run, by token.
    static CALLS: RefCell<HashMap<u64, Pending>> = RefCell::new(HashMap::new());
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// The reactor's time, in seconds: Twisted's `reactor.seconds()`.
///
/// Monotonic and only meaningful in differences. Under the host's test
/// transport it is a deterministic clock that moves only when the test
/// advances it.
pub fn seconds() -> f64 {
    wit_reactor::seconds()
}

/// Run `f` once, `delay` from now: Twisted's `reactor.callLater`.
///
/// Returns the [`DelayedCall`], to cancel or move it. Dropping it does not
/// cancel the call. The instance may have at most its plugin's `max-timers`
/// active calls; the one past it traps.
pub fn call_later(delay: Duration, f: impl FnOnce() + 'static) -> DelayedCall {
    let token = NEXT_TOKEN.with(|n| {
        let t = n.get();
        n.set(t + 1);
        t
    });
    let state = Rc::new(Cell::new(State::Active));
    CALLS.with(|c| c.borrow_mut().insert(token, (Box::new(f), state.clone())));
    let handle = wit_reactor::call_later(delay.as_secs_f64(), token);
    DelayedCall {
        inner: Rc::new(CallInner {
            handle,
            token,
            state,
        }),
    }
}

/// Runs the call `token` stands for (the host's `timer-fired`).
pub(crate) fn fire(token: u64) {
    // Out of the map before it runs: it may schedule more.
    let entry = CALLS.with(|c| c.borrow_mut().remove(&token));
    if let Some((f, state)) = entry {
        state.set(State::Called);
        f();
    }
}

/// A call scheduled by [`call_later`]: Twisted's `IDelayedCall`. Clones
/// name the same call.
#[derive(Clone)]
pub struct DelayedCall {
    inner: Rc<CallInner>,
}

struct CallInner {
    handle: wit_reactor::DelayedCall,
    token: u64,
    state: Rc<Cell<State>>,
}

impl fmt::Debug for DelayedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedCall")
            .field("state", &self.inner.state.get())
            .finish_non_exhaustive()
    }
}

impl DelayedCall {
    /// When the call is (or was) due, in [`seconds`]: Twisted's `getTime`.
    pub fn get_time(&self) -> f64 {
        self.inner.handle.get_time()
    }

    /// Whether it has neither run nor been cancelled: Twisted's `active`.
    pub fn active(&self) -> bool {
        self.inner.state.get() == State::Active
    }

    fn check(&self) -> Result<(), AlreadyDone> {
        match self.inner.state.get() {
            State::Active => Ok(()),
            State::Called => Err(AlreadyDone::Called),
            State::Cancelled => Err(AlreadyDone::Cancelled),
        }
    }

    /// Cancel it: Twisted's `cancel`.
    pub fn cancel(&self) -> Result<(), AlreadyDone> {
        self.check()?;
        self.inner.handle.cancel();
        self.inner.state.set(State::Cancelled);
        CALLS.with(|c| c.borrow_mut().remove(&self.inner.token));
        Ok(())
    }

    /// Make it due `delay` from now instead: Twisted's `reset`.
    pub fn reset(&self, delay: Duration) -> Result<(), AlreadyDone> {
        self.check()?;
        self.inner.handle.reset(delay.as_secs_f64());
        Ok(())
    }

    /// Make it due `by` later than it was: Twisted's `delay`.
    pub fn delay(&self, by: Duration) -> Result<(), AlreadyDone> {
        self.check()?;
        self.inner.handle.delay(by.as_secs_f64());
        Ok(())
    }
}

/// Call a function every `interval`: Twisted's `task.LoopingCall`.
///
/// Runs on the reactor's clock. A tick that comes late (the instance was
/// busy) runs once, and the next is scheduled on the original grid: missed
/// ticks are skipped, as Twisted does. Clones name the same loop; the loop
/// keeps running while started, even if every clone is dropped.
#[derive(Clone)]
pub struct LoopingCall {
    inner: Rc<RefCell<LoopInner>>,
}

struct LoopInner {
    f: Rc<dyn Fn()>,
    interval: f64,
    start_time: f64,
    call: Option<DelayedCall>,
    running: bool,
}

impl fmt::Debug for LoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopingCall")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl LoopingCall {
    /// A loop that calls `f`; not started yet.
    pub fn new(f: impl Fn() + 'static) -> LoopingCall {
        LoopingCall {
            inner: Rc::new(RefCell::new(LoopInner {
                f: Rc::new(f),
                interval: 0.0,
                start_time: 0.0,
                call: None,
                running: false,
            })),
        }
    }

    /// Start calling every `interval`, first at once if `now` (Twisted's
    /// `start(interval, now=True)`), else after one interval. Restarts a
    /// running loop.
    ///
    /// # Panics
    ///
    /// If `interval` is zero (Twisted rejects it too).
    pub fn start(&self, interval: Duration, now: bool) {
        assert!(!interval.is_zero(), "LoopingCall: interval must be > 0");
        self.stop();
        {
            let mut l = self.inner.borrow_mut();
            l.interval = interval.as_secs_f64();
            l.start_time = seconds();
            l.running = true;
        }
        if now {
            self.tick();
        } else {
            self.schedule(seconds());
        }
    }

    /// Stop it: Twisted's `stop`. No effect when not running.
    pub fn stop(&self) {
        let call = {
            let mut l = self.inner.borrow_mut();
            l.running = false;
            l.call.take()
        };
        if let Some(c) = call {
            let _ = c.cancel();
        }
    }

    /// Whether it is started.
    pub fn running(&self) -> bool {
        self.inner.borrow().running
    }

    fn tick(&self) {
        let f = self.inner.borrow().f.clone();
        f();
        if self.running() {
            self.schedule(seconds());
        }
    }

    /// Twisted's `_scheduleFrom`: the next point of the grid after `now`.
    fn schedule(&self, now: f64) {
        let next = {
            let l = self.inner.borrow();
            let elapsed = now - l.start_time;
            let ticks = (elapsed / l.interval).floor() + 1.0;
            l.start_time + ticks * l.interval
        };
        let me = self.clone();
        let call = call_later(Duration::from_secs_f64((next - now).max(0.0)), move || {
            me.inner.borrow_mut().call = None;
            me.tick();
        });
        self.inner.borrow_mut().call = Some(call);
    }
}

/// Close a connection after a period without activity: Twisted's
/// `policies.TimeoutMixin`, as a value the protocol keeps.
///
/// [`Timeout::new`] loses the transport's connection when the period
/// passes (Twisted's default `timeoutConnection`); [`Timeout::with`] runs
/// a function of yours instead. Call [`Timeout::reset_timeout`] on
/// activity (usually in `data_received`). Dropping it cancels it.
pub struct Timeout {
    inner: Rc<RefCell<TimeoutInner>>,
}

struct TimeoutInner {
    period: Option<Duration>,
    call: Option<DelayedCall>,
    on_timeout: Rc<dyn Fn()>,
}

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("period", &self.inner.borrow().period)
            .finish_non_exhaustive()
    }
}

impl Timeout {
    /// A timeout that loses `transport`'s connection; not set yet.
    pub fn new(transport: &Transport) -> Timeout {
        let t = transport.clone();
        Timeout::with(move || t.lose_connection())
    }

    /// A timeout that calls `on_timeout` (Twisted's `timeoutConnection`);
    /// not set yet.
    pub fn with(on_timeout: impl Fn() + 'static) -> Timeout {
        Timeout {
            inner: Rc::new(RefCell::new(TimeoutInner {
                period: None,
                call: None,
                on_timeout: Rc::new(on_timeout),
            })),
        }
    }

    /// Set (or with `None`, cancel) the timeout, counting from now:
    /// Twisted's `setTimeout`. Returns the previous period.
    pub fn set_timeout(&self, period: Option<Duration>) -> Option<Duration> {
        let (old, call) = {
            let mut t = self.inner.borrow_mut();
            let old = std::mem::replace(&mut t.period, period);
            (old, t.call.take())
        };
        if let Some(c) = call {
            let _ = c.cancel();
        }
        if let Some(p) = period {
            let weak: Weak<RefCell<TimeoutInner>> = Rc::downgrade(&self.inner);
            let call = call_later(p, move || {
                let Some(inner) = weak.upgrade() else { return };
                let f = {
                    let mut t = inner.borrow_mut();
                    t.call = None;
                    t.on_timeout.clone()
                };
                f();
            });
            self.inner.borrow_mut().call = Some(call);
        }
        old
    }

    /// Activity: the period starts over (Twisted's `resetTimeout`). No
    /// effect when no timeout is set or it already ran.
    pub fn reset_timeout(&self) {
        let t = self.inner.borrow();
        if let (Some(p), Some(c)) = (t.period, &t.call) {
            let _ = c.reset(p);
        }
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        if let Some(c) = self.inner.borrow_mut().call.take() {
            let _ = c.cancel();
        }
    }
}
