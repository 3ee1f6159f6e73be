//! The one `bindgen!` for the whole host, generated from `wit/`.
//!
//! Imports (the transport) are implemented in `transport.rs`; exports
//! (the protocol and the factories) are called synchronously, under the
//! epoch CPU budget (see [`super`]).

wasmtime::component::bindgen!({
    world: "peer",
    path: "../wit",
    imports: { default: trappable },
    with: {
        "twill:protocol/transport.transport": super::state::TransportHandle,
        "twill:protocol/reactor.delayed-call": super::clock::DelayedCallHandle,
    },
});

pub use self::exports::twill::protocol::batch;
pub use self::exports::twill::protocol::client_factory;
pub use self::exports::twill::protocol::half_close;
pub use self::exports::twill::protocol::outbound_factory;
pub use self::exports::twill::protocol::protocol;
pub use self::exports::twill::protocol::reactor_calls;
pub use self::exports::twill::protocol::server_factory;
pub use self::twill::protocol::types::{Address, Reason};
