//! A StringTransport-style test transport: drive a guest component's
//! protocol with no sockets, as Twisted's `proto_helpers.StringTransport`
//! drives a `Protocol`.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use twill::testing::TestComponent;
//!
//! let echo = TestComponent::load("guest-echo/echo.wasm")?;
//! let mut conn = echo.server_connection()?.expect("factory accepted");
//! conn.data_received(b"hello")?;
//! assert_eq!(conn.value(), b"hello");
//! # Ok(()) }
//! ```
//!
//! Everything the guest writes is kept until [`TestConnection::value`]
//! takes it; `lose-connection` and `abort-connection` only set flags that
//! [`TestConnection::disconnecting`] and [`TestConnection::aborted`] report.
//! What the guest prints is captured and returned by
//! [`TestComponent::output`].
//!
//! Time is Twisted's `task.Clock`: the component's reactor clock starts at
//! 0 and moves only when [`TestComponent::advance`] moves it, which then
//! fires every delayed call that fell due, in due order across all the
//! component's instances, with no real sleeping.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::HostSettings;
use crate::runtime::PluginOptions;
use crate::runtime::bindings::Reason;
use crate::runtime::clock::Clock;
use crate::runtime::limits::Limits;
use crate::runtime::state::Closing;
use crate::runtime::{GuestFault, Runtime, Session, Sharing};
use crate::shared::Instances;

/// The default peer address a test connection reports.
pub const PEER: &str = "192.0.2.7:40000";
/// The default host address a test connection reports.
pub const HOST: &str = "127.0.0.1:9000";

/// A loaded component, ready to make test connections.
pub struct TestComponent {
    /// Keeps the engine's epoch ticker running.
    _runtime: Runtime,
    instances: Instances,
    output: Arc<Mutex<Vec<u8>>>,
    /// The manual reactor clock.
    clock: Clock,
    /// Every connection made, to fire their instances' delayed calls.
    live: RefCell<Vec<Weak<RefCell<Session>>>>,
}

impl std::fmt::Debug for TestComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestComponent")
            .field("plugin", self.instances.plugin())
            .finish_non_exhaustive()
    }
}

impl TestComponent {
    /// Loads a component with the default limits.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<TestComponent> {
        Self::load_with(path, Limits::default())
    }

    /// Loads a component as `instance = "shared"` with one shared instance:
    /// every connection made from the returned `TestComponent` is a protocol
    /// on the same instance, so guest state spans them and a protocol may
    /// write to another connection's transport (which that connection's
    /// [`TestConnection::value`] then shows).
    pub fn load_shared(path: impl AsRef<Path>) -> anyhow::Result<TestComponent> {
        Self::load_inner(path, Limits::default(), Sharing::Shared(1))
    }

    /// [`TestComponent::load_shared`] with the given limits.
    pub fn load_shared_with(
        path: impl AsRef<Path>,
        limits: Limits,
    ) -> anyhow::Result<TestComponent> {
        Self::load_inner(path, limits, Sharing::Shared(1))
    }

    /// Loads a component with the given limits.
    pub fn load_with(path: impl AsRef<Path>, limits: Limits) -> anyhow::Result<TestComponent> {
        Self::load_inner(path, limits, Sharing::PerConnection)
    }

    fn load_inner(
        path: impl AsRef<Path>,
        limits: Limits,
        sharing: Sharing,
    ) -> anyhow::Result<TestComponent> {
        let settings = HostSettings {
            max_instances: Some(64),
            ..HostSettings::default()
        };
        let mut runtime = Runtime::new(&settings, limits.memory)?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let clock = Clock::Manual(Arc::default());
        let options = PluginOptions {
            limits,
            clock: false,
            sharing,
            capture: Some(output.clone()),
            time: clock.clone(),
            ..PluginOptions::default()
        };
        let plugin = runtime.load_plugin("test", path.as_ref(), options)?;
        let plugin = runtime.insert_plugin(plugin);
        Ok(TestComponent {
            _runtime: runtime,
            instances: Instances::new(plugin, false, None),
            output,
            clock,
            live: RefCell::default(),
        })
    }

    /// The reactor's time, in seconds: 0 at load, moved only by
    /// [`TestComponent::advance`].
    pub fn seconds(&self) -> f64 {
        self.clock.now() as f64 / 1e9
    }

    /// Moves the clock on by `by` and fires every delayed call due by then,
    /// as Twisted's `task.Clock.advance`: the clock moves first, then the
    /// calls run one at a time in due order across every instance (shared
    /// ones and each connection's own; equal times in the order scheduled
    /// within an instance), including calls they schedule for no later
    /// than the new time. Returns how many fired. A fault ends the firing
    /// with the fault; the instance is then unusable, as the host would
    /// have it.
    ///
    /// # Panics
    ///
    /// If more than 100,000 calls fire in one advance (a call that keeps
    /// rescheduling itself with no delay would otherwise never return).
    pub fn advance(&self, by: Duration) -> Result<usize, GuestFault> {
        self.clock.advance(by);
        let now = self.clock.now();
        self.live.borrow_mut().retain(|w| w.strong_count() > 0);
        let shared = self
            .instances
            .pool()
            .map(|p| p.live_instances())
            .unwrap_or_default();
        let own: Vec<_> = self
            .live
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.borrow().is_shared())
            .collect();
        let mut fired = 0;
        loop {
            // The instance whose next call is due first.
            let next_shared = shared
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.exact_next_due().map(|d| (d, i)))
                .min();
            let next_own = own
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.borrow_mut().exact_next_due().map(|d| (d, i)))
                .min();
            let ran = match (next_shared, next_own) {
                (Some((d, i)), o) if d <= now && o.is_none_or(|(e, _)| d <= e) => {
                    shared[i].fire_one(now)?
                }
                (_, Some((d, i))) if d <= now => own[i].borrow_mut().fire_one(now)?,
                _ => return Ok(fired),
            };
            if ran {
                fired += 1;
                assert!(
                    fired <= 100_000,
                    "advance: over 100,000 delayed calls fired; does one reschedule itself with no delay?"
                );
            }
        }
    }

    /// Keeps a connection's session where [`TestComponent::advance`]
    /// finds it.
    fn connection(&self, session: Session, client: bool) -> TestConnection {
        let session = Rc::new(RefCell::new(session));
        self.live.borrow_mut().push(Rc::downgrade(&session));
        TestConnection { session, client }
    }

    /// Everything the component's instances have printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// A fresh instance, as the listener makes for an accepted connection:
    /// `build-protocol(PEER)`, then `make-connection`. `None` if the
    /// factory refused.
    pub fn server_connection(&self) -> Result<Option<TestConnection>, GuestFault> {
        let peer: SocketAddr = PEER.parse().unwrap();
        let mut session = self.instances.session()?;
        if !session.build_server_protocol(peer)? {
            return Ok(None);
        }
        session.make_connection(peer, HOST.parse().unwrap())?;
        Ok(Some(self.connection(session, false)))
    }

    /// Delivers several connections' reads in one call, as the host does
    /// on a shared instance whose component exports `batch`: each
    /// connection's protocol gets its bytes through `data-received`, in
    /// order, and a connection closed by an earlier read's callback in the
    /// same call gets nothing more. The connections must come from this
    /// `TestComponent`, loaded with [`TestComponent::load_shared`]. Without
    /// a `batch` export, each read is a `data-received` call of its own.
    pub fn data_received_batch(
        &self,
        reads: &mut [(&mut TestConnection, &[u8])],
    ) -> Result<(), GuestFault> {
        let mut held: Vec<_> = reads.iter().map(|(c, _)| c.session.borrow_mut()).collect();
        let mut sessions: Vec<(&mut Session, &[u8])> = held
            .iter_mut()
            .zip(reads.iter())
            .map(|(s, (_, d))| (&mut **s, *d))
            .collect();
        crate::runtime::session::data_received_batch(&mut sessions)
    }

    /// A fresh instance, as a connector makes: `started-connecting`,
    /// `build-protocol(PEER)`, then `make-connection`. `None` if the factory
    /// declined.
    pub fn client_connection(&self) -> Result<Option<TestConnection>, GuestFault> {
        let peer: SocketAddr = PEER.parse().unwrap();
        let mut session = self.instances.session()?;
        session.started_connecting(&peer.ip().to_string(), peer.port())?;
        if !session.build_client_protocol(peer)? {
            return Ok(None);
        }
        session.make_connection(peer, HOST.parse().unwrap())?;
        Ok(Some(self.connection(session, true)))
    }

    /// A fresh client instance whose connection attempt failed:
    /// `started-connecting`, then `client-connection-failed(reason)`.
    pub fn client_connection_failed(&self, message: &str) -> Result<(), GuestFault> {
        let mut session = self.instances.session()?;
        session.started_connecting("192.0.2.7", 40000)?;
        session.client_connection_failed(&Reason::Failed(message.into()))
    }
}

/// One protocol instance on an in-memory transport.
#[derive(Debug)]
pub struct TestConnection {
    session: Rc<RefCell<Session>>,
    client: bool,
}

impl TestConnection {
    /// Delivers `data` to the protocol's `data-received`.
    pub fn data_received(&mut self, data: &[u8]) -> Result<(), GuestFault> {
        self.session.borrow_mut().data_received(data)
    }

    /// Takes everything written so far: Twisted's `StringTransport.value()`
    /// followed by `clear()`.
    pub fn value(&mut self) -> Vec<u8> {
        self.session.borrow().transport().take_output()
    }

    /// Whether the protocol called `lose-connection`.
    pub fn disconnecting(&mut self) -> bool {
        self.session.borrow().transport().closing() == Closing::Lose
    }

    /// Whether the protocol called `abort-connection`.
    pub fn aborted(&mut self) -> bool {
        self.session.borrow().transport().closing() == Closing::Abort
    }

    /// Whether the protocol registered itself as a producer.
    pub fn producer_registered(&mut self) -> bool {
        self.session.borrow().transport().producer()
    }

    /// Ends the connection: the protocol's `connection-lost(reason)`; for a
    /// client connection, then the factory's `client-connection-lost`.
    pub fn connection_lost(self, reason: Reason) -> Result<(), GuestFault> {
        let mut session = self.session.borrow_mut();
        session.connection_lost(&reason)?;
        if self.client {
            session.client_connection_lost(&reason)?;
        }
        Ok(())
    }
}
