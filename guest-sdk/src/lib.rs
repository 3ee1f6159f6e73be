//! # twill-guest: write Twill protocols in Rust
//!
//! This crate owns the guest side of the `twill:protocol@0.1.0` contract (see
//! `wit/` in the Twill repository). It hides the generated wit-bindgen code
//! behind three Twisted-shaped traits and one macro:
//!
//! - [`Protocol`]: one connection. Override [`Protocol::data_received`] and
//!   friends; every method has a default that does nothing.
//! - [`ServerFactory`] / [`ClientFactory`]: build a protocol per connection.
//!   [`Factory<P>`] builds `P::default()`, like Twisted's
//!   `factory.protocol = Echo`.
//! - [`Transport`]: the connection's handle, with Twisted's `write`,
//!   `writeSequence`, `loseConnection`, `abortConnection`, `getPeer` and
//!   `getHost`.
//! - [`export!`]: names the factories the component exports.
//! - [`reactor`]: time: `seconds`, `call_later`, `LoopingCall` and a
//!   `TimeoutMixin` ([`reactor::Timeout`]).
//! - [`basic`]: framing, as Twisted's `twisted.protocols.basic`:
//!   [`basic::LineReceiver`], the `Int32`/`Int16`/`Int8StringReceiver`s and
//!   [`basic::NetstringReceiver`].
//! - TLS, terminated by the host: [`Transport::tls_info`] (what the
//!   handshake negotiated, the peer's certificate) and
//!   [`Transport::start_tls`] (STARTTLS protocols).
//!
//! ## Example: Twisted's `echoserv.py`
//!
//! ```ignore
//! use twill_guest::{export, Factory, Protocol, Transport};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Protocol for Echo {
//!     fn data_received(&mut self, transport: &Transport, data: &[u8]) {
//!         transport.write(data);
//!     }
//! }
//!
//! export!(server: Factory<Echo>);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the output
//! `.wasm` is already a component that `twill run` can load.
//!
//! ## Where the transport lives
//!
//! Twisted's `BaseProtocol.makeConnection` stores `self.transport` and then
//! calls `connectionMade`. Here the SDK stores the transport for you, next to
//! your protocol, and passes `&Transport` to every callback that may use it.
//! [`Protocol::make_connection`] is therefore a hook you rarely override: its
//! default calls [`Protocol::connection_made`].
//!
//! ## Batches
//!
//! On a shared instance the host may deliver several connections' reads in
//! one call (`twill:protocol/batch`). The SDK implements that export and
//! calls each protocol's [`Protocol::data_received`] in turn, so a protocol
//! cannot tell; a connection whose transport an earlier callback in the
//! same batch closed gets no more data, as the host would guarantee.
//!
//! ## Rules of the reactor
//!
//! Callbacks run inside the host's event loop. They must not block; the host
//! interrupts a callback that runs past its CPU limit and aborts that
//! connection. Output written through the transport is buffered by the host
//! and sent, in order, when the callback returns.

#![deny(unsafe_code)]

use std::cell::RefCell;
use std::fmt;

pub mod basic;
mod outbound;
pub mod reactor;
mod tls;

pub use tls::{PeerCertificate, StartTlsError, TlsInfo};

#[doc(hidden)]
pub mod __bindings {
    #![allow(missing_docs, unsafe_code, unsafe_op_in_unsafe_fn)]
    wit_bindgen::generate!({
        world: "peer",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_peer",
        default_bindings_module: "::twill_guest::__bindings",
    });
}

use __bindings::exports::twill::protocol::{
    batch as wit_batch, client_factory, half_close, outbound_factory, protocol as wit_protocol,
    reactor_calls, server_factory,
};
use __bindings::twill::protocol::{transport as wit_transport, types as wit_types};

/// An IPv4 or IPv6 endpoint: Twisted's `IPv4Address` / `IPv6Address`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// The numeric host, such as `127.0.0.1` or `::1`.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<wit_types::Address> for Address {
    fn from(a: wit_types::Address) -> Self {
        Address {
            host: a.host,
            port: a.port,
        }
    }
}

/// Why a connection ended, or why an attempt never became one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A clean close: Twisted's `ConnectionDone`.
    Done,
    /// An unclean loss, with the host's message: Twisted's `ConnectionLost`.
    Lost(String),
    /// A client connection attempt that failed (refused, unreachable, name
    /// not found, timed out): Twisted's `ConnectError` family.
    Failed(String),
}

impl Reason {
    /// True for a clean close (`ConnectionDone`).
    pub fn is_clean(&self) -> bool {
        matches!(self, Reason::Done)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Done => f.write_str("Connection was closed cleanly."),
            Reason::Lost(m) => write!(f, "Connection was lost: {m}"),
            Reason::Failed(m) => write!(f, "Connection failed: {m}"),
        }
    }
}

impl From<wit_types::Reason> for Reason {
    fn from(r: wit_types::Reason) -> Self {
        match r {
            wit_types::Reason::Done => Reason::Done,
            wit_types::Reason::Lost(m) => Reason::Lost(m),
            wit_types::Reason::Failed(m) => Reason::Failed(m),
        }
    }
}

/// The connection a protocol talks through: Twisted's `ITransport`.
///
/// Every method returns at once. Writes are buffered by the host and flushed
/// in order after the current callback returns; no data is ever lost,
/// although the connection may close before it all gets through.
///
/// Cloning gives another handle to the same connection. On a shared
/// instance (`instance = "shared"` in `plugins.toml`) one instance serves
/// many connections, so a protocol may keep clones of other connections'
/// transports (Twisted's chat example keeps `factory.clients`) and write to
/// them from its own callbacks; the host wakes those connections to send.
/// Once a connection is lost, writes through a kept clone are ignored.
#[derive(Clone)]
pub struct Transport {
    inner: std::rc::Rc<TransportInner>,
}

/// The handle, and whether this guest closed it (a batch skips the
/// connection's later chunks then, as the host would).
struct TransportInner {
    handle: wit_transport::Transport,
    closing: std::cell::Cell<bool>,
    /// The partner of a splice: reads the host delivers after the splice
    /// (read before it took effect) go there.
    spliced: RefCell<Option<std::rc::Weak<TransportInner>>>,
}

impl std::ops::Deref for TransportInner {
    type Target = wit_transport::Transport;
    fn deref(&self) -> &wit_transport::Transport {
        &self.handle
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// Write some data to the connection, in sequence, without blocking.
    /// Ignored after [`lose_connection`](Self::lose_connection).
    pub fn write(&self, data: &[u8]) {
        if !self.is_spliced() {
            self.inner.write(data);
        }
    }

    /// Write several buffers, as if by calling [`write`](Self::write) on each
    /// in order; the host sends them with one vectored write where it can.
    pub fn write_sequence<I, B>(&self, data: I)
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        if self.is_spliced() {
            return;
        }
        let bufs: Vec<Vec<u8>> = data.into_iter().map(|b| b.as_ref().to_vec()).collect();
        self.inner.write_sequence(&bufs);
    }

    /// The raw handle of the `transport` resource, for code that calls the
    /// `twill:protocol/transport` imports directly (the host's test kit
    /// does, to act as a hostile guest would). Protocols never need it.
    #[doc(hidden)]
    pub fn raw_handle(&self) -> u32 {
        self.inner.handle.handle()
    }

    /// Close the connection after writing all pending data. The protocol's
    /// [`Protocol::connection_lost`] follows with [`Reason::Done`]; no more
    /// data is delivered.
    pub fn lose_connection(&self) {
        self.inner.closing.set(true);
        self.inner.lose_connection();
    }

    /// Close the connection now, dropping pending data (a TCP reset).
    /// [`Protocol::connection_lost`] follows with [`Reason::Lost`].
    pub fn abort_connection(&self) {
        self.inner.closing.set(true);
        self.inner.abort_connection();
    }

    /// Whether this protocol closed the connection
    /// ([`lose_connection`](Self::lose_connection) or
    /// [`abort_connection`](Self::abort_connection)): Twisted's
    /// `transport.disconnecting`. No more data is delivered after that; the
    /// framing helpers in [`basic`] stop at it.
    pub fn disconnecting(&self) -> bool {
        self.inner.closing.get()
    }

    /// The remote address: Twisted's `getPeer`.
    pub fn peer(&self) -> Address {
        self.inner.get_peer().into()
    }

    /// The local address: Twisted's `getHost`.
    pub fn host(&self) -> Address {
        self.inner.get_host().into()
    }

    /// Ask for [`Protocol::pause_producing`] / [`Protocol::resume_producing`]
    /// as the host's output buffer crosses its high- and low-water marks:
    /// Twisted's `registerProducer(self, streaming=True)`.
    pub fn register_producer(&self) {
        self.inner.register_producer();
    }

    /// Stop the producer notifications: Twisted's `unregisterProducer`.
    pub fn unregister_producer(&self) {
        self.inner.unregister_producer();
    }

    /// Make `producer` (another connection's transport) this transport's
    /// streaming producer: Twisted's `registerProducer(peer.transport,
    /// True)`, as its `portforward` does. As soon as a write takes this
    /// connection's unsent output above its high-water mark, the host stops
    /// reading from `producer`'s connection, and starts again once it
    /// drained (no callback involved): a relay that writes what `producer`
    /// reads into this transport then holds at most about a high-water mark
    /// of it, whatever the two peers' speeds.
    pub fn register_producer_transport(&self, producer: &Transport) {
        self.inner
            .handle
            .register_producer_transport(&producer.inner.handle);
    }

    /// Stop reading from this connection: Twisted's
    /// `ITransport.pauseProducing`. Bytes the peer sends wait in the
    /// kernel, and TCP slows the peer. Output and closes go on.
    pub fn pause_producing(&self) {
        self.inner.handle.pause_producing();
    }

    /// Start reading again: Twisted's `ITransport.resumeProducing`.
    pub fn resume_producing(&self) {
        self.inner.handle.resume_producing();
    }

    /// Close the write side after sending what was written, and keep
    /// reading: Twisted's `loseWriteConnection` (a TCP half-close). A
    /// [`Protocol::half_closeable`] protocol then gets
    /// [`Protocol::write_connection_lost`].
    pub fn lose_write_connection(&self) {
        self.inner.handle.lose_write_connection();
    }

    /// Hand this connection and `other` to the host, which relays bytes
    /// between them both ways with no further callbacks (after what was
    /// already written to either). Both protocols get `connection_lost`
    /// when the pair ends. Writes to either afterwards are ignored.
    ///
    /// Fails, changing nothing, if `other` is this transport, or either
    /// connection is already spliced, closing or gone.
    pub fn splice(&self, other: &Transport) -> Result<(), SpliceError> {
        self.inner
            .handle
            .splice(&other.inner.handle)
            .map_err(SpliceError)?;
        self.inner
            .spliced
            .replace(Some(std::rc::Rc::downgrade(&other.inner)));
        other
            .inner
            .spliced
            .replace(Some(std::rc::Rc::downgrade(&self.inner)));
        Ok(())
    }

    /// Whether the connection was spliced.
    pub fn is_spliced(&self) -> bool {
        self.inner.spliced.borrow().is_some()
    }

    /// Hands a read to the protocol, or, once spliced, to the partner:
    /// bytes read before the splice took effect still reach it.
    fn deliver(&self, protocol: &mut dyn Protocol, data: &[u8]) {
        let partner = self.inner.spliced.borrow().clone();
        match partner {
            Some(partner) => {
                if let Some(partner) = partner.upgrade() {
                    partner.handle.write(data);
                }
            }
            None => protocol.data_received(self, data),
        }
    }
}

/// Why [`Transport::splice`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpliceError(pub String);

impl fmt::Display for SpliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpliceError {}

/// The protocol for one connection: Twisted's `Protocol`.
///
/// The host calls [`make_connection`](Self::make_connection) once, then
/// [`data_received`](Self::data_received) any number of times, then
/// [`connection_lost`](Self::connection_lost) once. Every method has a
/// default that does nothing (beyond `make_connection` calling
/// `connection_made`), so a protocol overrides only what it needs.
pub trait Protocol: 'static {
    /// Make a connection to a transport: Twisted's `makeConnection`.
    ///
    /// The SDK has already stored the transport, as
    /// `BaseProtocol.makeConnection` does; the default then calls
    /// [`connection_made`](Self::connection_made). Override
    /// `connection_made` instead unless you need to wrap it.
    fn make_connection(&mut self, transport: &Transport) {
        self.connection_made(transport);
    }

    /// Called when a connection is made: Twisted's `connectionMade`.
    ///
    /// The place to send a greeting or set up per-connection state. The
    /// protocol may write, or lose the connection, from here.
    fn connection_made(&mut self, transport: &Transport) {
        let _ = transport;
    }

    /// Called whenever data is received: Twisted's `dataReceived`.
    ///
    /// Data arrives in chunks of any size: a message may be split across
    /// calls, down to one byte at a time, and several messages may arrive
    /// together. Buffer as your framing requires.
    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        let _ = (transport, data);
    }

    /// Called when the connection is shut down: Twisted's `connectionLost`.
    ///
    /// [`Reason::Done`] for a clean close, [`Reason::Lost`] otherwise. The
    /// transport is gone: there is nothing left to write to.
    fn connection_lost(&mut self, reason: Reason) {
        let _ = reason;
    }

    /// Stop writing for now: Twisted's `pauseProducing`. Called only after
    /// [`Transport::register_producer`], when the host's output buffer for
    /// this connection is above its high-water mark.
    fn pause_producing(&mut self, transport: &Transport) {
        let _ = transport;
    }

    /// Start writing again: Twisted's `resumeProducing`. Called after
    /// [`pause_producing`](Self::pause_producing) once the buffer drained.
    fn resume_producing(&mut self, transport: &Transport) {
        let _ = transport;
    }

    /// Whether this protocol takes half-closes: Twisted's
    /// `IHalfCloseableProtocol`. If true, the peer's FIN does not close the
    /// connection: [`read_connection_lost`](Self::read_connection_lost) is
    /// called instead, and the protocol may keep writing until it calls
    /// `lose_connection` or `lose_write_connection`. Default false.
    fn half_closeable(&self) -> bool {
        false
    }

    /// The peer closed its write side: Twisted's `readConnectionLost`.
    /// Only for a [`half_closeable`](Self::half_closeable) protocol. The
    /// default closes the connection once its output is sent, as a
    /// protocol that is not half-closeable would be.
    fn read_connection_lost(&mut self, transport: &Transport) {
        transport.lose_connection();
    }

    /// The write side is closed (after
    /// [`Transport::lose_write_connection`]): Twisted's
    /// `writeConnectionLost`. Only for a half-closeable protocol.
    fn write_connection_lost(&mut self, transport: &Transport) {
        let _ = transport;
    }
}

/// Builds protocols for accepted connections: Twisted's `ServerFactory`.
pub trait ServerFactory: 'static {
    /// Create a protocol for a new connection from `addr`:
    /// Twisted's `buildProtocol`. Return `None` to refuse the connection;
    /// the host then closes it at once.
    fn build_protocol(&self, addr: &Address) -> Option<Box<dyn Protocol>>;

    /// The factory is about to be used: Twisted's `startFactory`. Once per
    /// instance, before anything else: on a shared instance before its
    /// first connection (the place to start a
    /// [`LoopingCall`](reactor::LoopingCall)), on an instance of its own
    /// before its connection's protocol is built.
    fn start_factory(&self) {}

    /// The factory is done: Twisted's `stopFactory`. Once per instance,
    /// last: at shutdown on a shared instance, after the connection on an
    /// instance of its own.
    fn stop_factory(&self) {}
}

/// Builds protocols for outgoing connections and hears how they ended:
/// Twisted's `ClientFactory`.
///
/// The host calls [`started_connecting`](Self::started_connecting), then
/// either [`client_connection_failed`](Self::client_connection_failed), or
/// [`build_protocol`](Self::build_protocol) followed by the protocol's own
/// callbacks and finally
/// [`client_connection_lost`](Self::client_connection_lost).
pub trait ClientFactory: 'static {
    /// A connection attempt to `addr` has started: Twisted's
    /// `startedConnecting`.
    fn started_connecting(&self, addr: &Address) {
        let _ = addr;
    }

    /// Create a protocol for the connection just made to `addr`. Return
    /// `None` to drop the connection at once.
    fn build_protocol(&self, addr: &Address) -> Option<Box<dyn Protocol>>;

    /// The connection attempt failed: Twisted's `clientConnectionFailed`.
    /// `reason` is a [`Reason::Failed`]. No protocol was built.
    fn client_connection_failed(&self, reason: Reason) {
        let _ = reason;
    }

    /// An established connection was lost, after the protocol's own
    /// `connection_lost`: Twisted's `clientConnectionLost`.
    fn client_connection_lost(&self, reason: Reason) {
        let _ = reason;
    }

    /// The factory is about to be used: Twisted's `startFactory` (see
    /// [`ServerFactory::start_factory`]).
    fn start_factory(&self) {}

    /// The factory is done: Twisted's `stopFactory` (see
    /// [`ServerFactory::stop_factory`]).
    fn stop_factory(&self) {}
}

/// A factory that builds `P::default()` for every connection, like
/// Twisted's `Factory` with `factory.protocol = P`. It serves as both a
/// [`ServerFactory`] and a [`ClientFactory`].
pub struct Factory<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Default for Factory<P> {
    fn default() -> Self {
        Factory(std::marker::PhantomData)
    }
}

impl<P> fmt::Debug for Factory<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Factory<{}>", std::any::type_name::<P>())
    }
}

impl<P: Protocol + Default> ServerFactory for Factory<P> {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(P::default()))
    }
}

impl<P: Protocol + Default> ClientFactory for Factory<P> {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(P::default()))
    }
}

/// Export a component's factories.
///
/// Name a [`ServerFactory`] to accept connections, a [`ClientFactory`] to
/// make them, or both. Each must implement `Default`; one instance is made
/// per component instance (per connection by default, or per shared
/// instance with `instance = "shared"`). A role left out refuses every
/// connection.
///
/// ```ignore
/// twill_guest::export!(server: Factory<Echo>);
/// twill_guest::export!(server: Factory<Echo>, client: EchoClientFactory);
/// ```
#[macro_export]
macro_rules! export {
    (server: $server:ty $(,)?) => {
        $crate::export!(@glue $server, $crate::__private::NoFactory);
    };
    (client: $client:ty $(,)?) => {
        $crate::export!(@glue $crate::__private::NoFactory, $client);
    };
    (server: $server:ty, client: $client:ty $(,)?) => {
        $crate::export!(@glue $server, $client);
    };
    (@glue $server:ty, $client:ty) => {
        #[doc(hidden)]
        struct __TwillExports;
        impl $crate::__private::Exports for __TwillExports {
            fn with_server<R>(f: impl FnOnce(&dyn $crate::ServerFactory) -> R) -> R {
                ::std::thread_local!(static FACTORY: $server = <$server as ::core::default::Default>::default());
                FACTORY.with(|factory| f(factory))
            }
            fn with_client<R>(f: impl FnOnce(&dyn $crate::ClientFactory) -> R) -> R {
                ::std::thread_local!(static FACTORY: $client = <$client as ::core::default::Default>::default());
                FACTORY.with(|factory| f(factory))
            }
        }
        #[doc(hidden)]
        type __TwillGlue = $crate::__private::Glue<__TwillExports>;
        $crate::__bindings::__export_peer!(__TwillGlue with_types_in $crate::__bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    //! Glue between the generated bindings and the public traits. Not API.
    use super::*;

    /// Reaches the factories named in [`export!`](crate::export!).
    pub trait Exports: 'static {
        fn with_server<R>(f: impl FnOnce(&dyn ServerFactory) -> R) -> R;
        fn with_client<R>(f: impl FnOnce(&dyn ClientFactory) -> R) -> R;
    }

    /// The factory for a role the component does not play: it refuses.
    #[derive(Default)]
    pub struct NoFactory;

    impl ServerFactory for NoFactory {
        fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
            None
        }
    }

    impl ClientFactory for NoFactory {
        fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
            None
        }
    }

    /// Implements the generated export traits for the factories in `E`.
    pub struct Glue<E>(std::marker::PhantomData<E>);

    /// The guest-side state of one exported `protocol` resource.
    pub struct ProtocolBox {
        state: RefCell<State>,
    }

    struct State {
        protocol: Box<dyn Protocol>,
        transport: Option<Transport>,
    }

    impl ProtocolBox {
        fn new(protocol: Box<dyn Protocol>) -> Self {
            ProtocolBox {
                state: RefCell::new(State {
                    protocol,
                    transport: None,
                }),
            }
        }

        /// Runs `f` with the protocol and its transport, if it has one yet.
        fn with_transport(&self, f: impl FnOnce(&mut dyn Protocol, &Transport)) {
            let mut state = self.state.borrow_mut();
            let State {
                protocol,
                transport,
            } = &mut *state;
            if let Some(transport) = transport {
                f(protocol.as_mut(), transport);
            }
        }
    }

    impl wit_protocol::GuestProtocol for ProtocolBox {
        fn make_connection(&self, transport: wit_transport::Transport) {
            let mut state = self.state.borrow_mut();
            let State {
                protocol,
                transport: slot,
            } = &mut *state;
            let transport = slot.insert(Transport {
                inner: std::rc::Rc::new(TransportInner {
                    handle: transport,
                    closing: std::cell::Cell::new(false),
                    spliced: RefCell::new(None),
                }),
            });
            if protocol.half_closeable() {
                transport.inner.handle.set_half_closeable(true);
            }
            protocol.make_connection(transport);
        }

        fn data_received(&self, data: Vec<u8>) {
            self.with_transport(|p, t| t.deliver(p, &data));
        }

        fn connection_lost(&self, reason: wit_types::Reason) {
            let mut state = self.state.borrow_mut();
            // Twisted drops the transport reference in connectionLost.
            state.transport = None;
            state.protocol.connection_lost(reason.into());
        }

        fn pause_producing(&self) {
            self.with_transport(|p, t| p.pause_producing(t));
        }

        fn resume_producing(&self) {
            self.with_transport(|p, t| p.resume_producing(t));
        }
    }

    impl<E: Exports> wit_protocol::Guest for Glue<E> {
        type Protocol = ProtocolBox;
    }

    impl<E: Exports> wit_batch::Guest for Glue<E> {
        fn data_received(chunks: Vec<wit_batch::Chunk<'_>>, data: Vec<u8>) {
            let mut rest = &data[..];
            for chunk in chunks {
                let (mine, next) = rest.split_at((chunk.len as usize).min(rest.len()));
                rest = next;
                chunk.protocol.get::<ProtocolBox>().with_transport(|p, t| {
                    // Closed by an earlier chunk's callback: the host would
                    // not have delivered this read.
                    if !t.inner.closing.get() {
                        t.deliver(p, mine);
                    }
                });
            }
        }
    }

    impl<E: Exports> half_close::Guest for Glue<E> {
        fn read_connection_lost(p: wit_protocol::ProtocolBorrow<'_>) {
            p.get::<ProtocolBox>()
                .with_transport(|p, t| p.read_connection_lost(t));
        }

        fn write_connection_lost(p: wit_protocol::ProtocolBorrow<'_>) {
            p.get::<ProtocolBox>()
                .with_transport(|p, t| p.write_connection_lost(t));
        }
    }

    impl<E: Exports> outbound_factory::Guest for Glue<E> {
        fn build_protocol(token: u64, addr: wit_types::Address) -> Option<wit_protocol::Protocol> {
            wrap(crate::outbound::build_protocol(token, &addr.into()))
        }

        fn client_connection_failed(token: u64, reason: wit_types::Reason) {
            crate::outbound::failed(token, reason.into());
        }

        fn client_connection_lost(token: u64, reason: wit_types::Reason) {
            crate::outbound::lost(token, reason.into());
        }
    }

    pub(crate) fn wrap(p: Option<Box<dyn Protocol>>) -> Option<wit_protocol::Protocol> {
        p.map(|p| wit_protocol::Protocol::new(ProtocolBox::new(p)))
    }

    impl<E: Exports> server_factory::Guest for Glue<E> {
        fn build_protocol(addr: wit_types::Address) -> Option<wit_protocol::Protocol> {
            let addr = addr.into();
            wrap(E::with_server(|f| f.build_protocol(&addr)))
        }
    }

    impl<E: Exports> reactor_calls::Guest for Glue<E> {
        fn timer_fired(token: u64) {
            crate::reactor::fire(token);
        }

        fn start_factory() {
            E::with_server(|f| f.start_factory());
            E::with_client(|f| f.start_factory());
        }

        fn stop_factory() {
            E::with_server(|f| f.stop_factory());
            E::with_client(|f| f.stop_factory());
        }
    }

    impl<E: Exports> client_factory::Guest for Glue<E> {
        fn started_connecting(addr: wit_types::Address) {
            let addr = addr.into();
            E::with_client(|f| f.started_connecting(&addr));
        }

        fn build_protocol(addr: wit_types::Address) -> Option<wit_protocol::Protocol> {
            let addr = addr.into();
            wrap(E::with_client(|f| f.build_protocol(&addr)))
        }

        fn client_connection_failed(reason: wit_types::Reason) {
            E::with_client(|f| f.client_connection_failed(reason.into()));
        }

        fn client_connection_lost(reason: wit_types::Reason) {
            E::with_client(|f| f.client_connection_lost(reason.into()));
        }
    }
}
