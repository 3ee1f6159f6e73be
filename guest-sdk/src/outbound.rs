//! `reactor.connect-tcp` from a guest: Twisted's `reactor.connectTCP`
//! ([`connect_tcp`], re-exported from [`crate::reactor`]). Each attempt
//! gets a token; the factory waits here, by token, for the outcome the host
//! reports through the `outbound-factory` export, and is forgotten after
//! `client_connection_failed` or `client_connection_lost`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use crate::__bindings::twill::protocol::reactor as wit_reactor;
use crate::{Address, ClientFactory, Protocol, Reason};

thread_local! {
    /// The factories of attempts and connections not yet over, by token.
    static FACTORIES: RefCell<HashMap<u64, Rc<dyn ClientFactory>>> = RefCell::new(HashMap::new());
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// Why [`connect_tcp`] could not even try: the plugin has no `connect`
/// grants, it is at its `max-outbound`, or the arguments are wrong. (A
/// refused or failed attempt is reported later, to the factory's
/// `client_connection_failed`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError(pub String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// An attempt [`connect_tcp`] started: Twisted's `IConnector`, reduced to
/// where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    /// The host asked for.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// The attempt's token (distinct for every attempt of the instance).
    pub token: u64,
}

/// Open a TCP connection to `host`:`port` with `factory` as its client
/// factory: Twisted's `reactor.connectTCP(host, port, factory)`, with its
/// 30-second timeout.
///
/// Once connected, `factory.build_protocol` builds the protocol, which
/// lives on this instance (so it can hold the transport of the connection
/// that asked, and relay); otherwise `factory.client_connection_failed`
/// says why (a refusal by the plugin's `connect` grants names them). After
/// the protocol's `connection_lost`, `factory.client_connection_lost`.
pub fn connect_tcp(
    host: &str,
    port: u16,
    factory: impl ClientFactory,
) -> Result<Connector, ConnectError> {
    connect_tcp_timeout(host, port, Duration::from_secs(30), factory)
}

/// [`connect_tcp`] with a timeout of its own.
pub fn connect_tcp_timeout(
    host: &str,
    port: u16,
    timeout: Duration,
    factory: impl ClientFactory,
) -> Result<Connector, ConnectError> {
    let token = NEXT_TOKEN.with(|n| {
        let t = n.get();
        n.set(t + 1);
        t
    });
    FACTORIES.with(|f| f.borrow_mut().insert(token, Rc::new(factory)));
    match wit_reactor::connect_tcp(host, port, timeout.as_secs_f64(), token) {
        Ok(()) => Ok(Connector {
            host: host.to_string(),
            port,
            token,
        }),
        Err(message) => {
            FACTORIES.with(|f| f.borrow_mut().remove(&token));
            Err(ConnectError(message))
        }
    }
}

fn factory(token: u64) -> Option<Rc<dyn ClientFactory>> {
    FACTORIES.with(|f| f.borrow().get(&token).cloned())
}

/// `outbound-factory.build-protocol`.
pub(crate) fn build_protocol(token: u64, addr: &Address) -> Option<Box<dyn Protocol>> {
    factory(token)?.build_protocol(addr)
}

/// `outbound-factory.client-connection-failed`.
pub(crate) fn failed(token: u64, reason: Reason) {
    let f = FACTORIES.with(|f| f.borrow_mut().remove(&token));
    if let Some(f) = f {
        f.client_connection_failed(reason);
    }
}

/// `outbound-factory.client-connection-lost`.
pub(crate) fn lost(token: u64, reason: Reason) {
    let f = FACTORIES.with(|f| f.borrow_mut().remove(&token));
    if let Some(f) = f {
        f.client_connection_lost(reason);
    }
}
