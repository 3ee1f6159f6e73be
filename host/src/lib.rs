//! # Twill: a Twisted-style reactor for WebAssembly protocols
//!
//! The host owns every socket; protocols are sandboxed WebAssembly
//! components implementing `twill:protocol@0.1.0` (see `wit/`). For each
//! connection the host builds a fresh instance (or, with `instance =
//! "shared"`, uses one of the plugin's long-lived instances), asks its
//! factory for a protocol, and calls `make-connection`, `data-received` and
//! `connection-lost`, exactly as Twisted's reactor drives a `Protocol`.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | `plugins.toml`: the schema and its defaults, every error at once with file:line:col: key (a parse function per table over a small checker) |
//! | [`reactor`] | start-up, the shutdown broadcast, "done when idle" |
//! | [`listener`] | the accept loops: connection cap, EMFILE back-off, spreading connections over shared instances |
//! | [`connector`] | client connections: resolve, connect with timeout, client-factory callbacks |
//! | [`connection`] | the per-socket driver: the whole data path |
//! | [`shutdown`] | the shutdown signal (and a shared instance's fault signal), task tracking |
//! | [`runtime`] | wasmtime: the engine and linker, loading and checking components |
//! | [`runtime::plugin`] | a loaded plugin, built whole; it makes instances and sessions |
//! | [`runtime::guest`] | one instance and the one call path: CPU budget, fault classification |
//! | [`runtime::session`] | one connection's callbacks into its instance |
//! | [`runtime::bindings`] | the one `bindgen!` |
//! | [`runtime::wasi`] | WASI p2 sync bindings, minus the calls that would block the reactor |
//! | [`runtime::state`] | Store data: the transport slab and cells, the output queue, the host-wide output ceiling |
//! | [`runtime::transport`] | host side of the `transport` resource (no I/O) |
//! | [`runtime::limits`] | memory, CPU, backpressure, resource limits; the pooling allocator |
//! | [`runtime::pool`] | the instance pool's size (address space, `vm.max_map_count`) and each plugin's cap |
//! | [`runtime::threads`] | the thread each shared instance and its connections live on |
//! | [`runtime::batch`] | batched delivery: several connections' reads in one guest call on a shared instance |
//! | [`runtime::output`] | guest stdout/stderr, attributed to the plugin, control characters escaped |
//! | [`sink`] | the host's stdout and stderr: bounded queues and writer threads, so output never blocks the reactor |
//! | [`testing`] | the StringTransport-style test transport for guest authors |
//!
//! The data path reads in three files: [`connection`] (socket ↔ buffer ↔
//! `Session::deliver`), [`runtime::session`] (`data-received`, one guest
//! call) and [`runtime::transport`] (`write` queues bytes in the
//! connection's `TransportState`, which [`connection`] flushes). On a
//! shared instance whose component exports `batch`, `Session::deliver`
//! queues the read instead, and [`runtime::batch`] delivers it with the
//! other reads of the same moment in one call and writes the output back;
//! the two sides meet in the transport's `Handoff` ([`runtime::state`]).

pub mod config;
pub mod connection;
pub mod connector;
pub mod listener;
pub mod reactor;
pub mod runtime;
pub mod shutdown;
pub mod sink;
pub mod testing;

pub use config::Config;
pub use reactor::{Reactor, RunEnd};
pub use runtime::Runtime;
