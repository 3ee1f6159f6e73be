//! The one `bindgen!` for the whole host, generated from `wit/`.
//!
//! Imports (the transport) are implemented in [`super::transport`]; exports
//! (the protocol and the factories) are called asynchronously so that a
//! guest that runs past its CPU deadline yields to the reactor and can be
//! interrupted.

wasmtime::component::bindgen!({
    world: "peer",
    path: "../wit",
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "twill:protocol/transport.transport": super::transport::TransportHandle,
    },
});

pub use self::exports::twill::protocol::client_factory;
pub use self::exports::twill::protocol::protocol;
pub use self::exports::twill::protocol::server_factory;
pub use self::twill::protocol::types::{Address, Reason};
