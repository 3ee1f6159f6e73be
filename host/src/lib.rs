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
//! | [`reactor`] | start-up, each plugin's [`shared::Instances`], the run loop ([`reactor::Control`]), the shutdown, "done when idle" |
//! | [`reactor::reload`] | a live reload: validate and load first, then keep, start and drain listeners, plugins and connectors |
//! | [`watch`] | `twill run --watch`: reload when the config or a component changes |
//! | [`metrics`] | `[host] metrics`: `/metrics` (prometheus-client), `/healthz`, `/readyz` over hyper |
//! | [`stats`] | the counters the data path bumps: sharded per thread; a plugin's calls, traps and instances |
//! | [`listener`] | the accept loops: connection cap, EMFILE back-off, spreading connections over shared instances; the [`listener::Target`] a reload replaces; sockets a service manager passes ([`listener::activation`]); `reuse-port`; the PROXY protocol header read before anything else ([`listener::proxy`]) |
//! | [`connector`] | client connections: resolve, connect with timeout, client-factory callbacks; `reconnect` (Twisted's `ReconnectingClientFactory`) |
//! | [`connection`] | the per-socket driver: reads, writes, closes, backpressure, `idle-timeout`, an own instance's delayed calls |
//! | [`outbound`] | guest-opened connections (`reactor.connect-tcp`): grants checked before and after resolving, connect under the guest's timeout, run on the asking instance; counters |
//! | [`grants`] | the `connect` grants: parsing and matching names, addresses and networks |
//! | [`splice`] | spliced pairs: where two connections' tasks meet, and the pump between their sockets |
//! | [`wire`] | a connection's socket, plaintext or with TLS on it: non-blocking reads and writes for the driver, batched delivery and the pump; `close_notify` |
//! | [`tls`] | TLS terminated in the host: the crypto provider, loading and checking certificates, SNI, handshakes under a deadline and their counters, the swappable settings |
//! | [`shared`] | a shared plugin's pool: its instances, their threads, live counts, batch queues and counters |
//! | [`shared::threads`] | the thread each shared instance and its connections live on |
//! | [`shared::backoff`] | a crash-looping shared instance's restart delays |
//! | [`shared::batch`] | batched delivery: several connections' reads in one guest call on a shared instance |
//! | `shared::timers` | a shared instance's timer task: its delayed calls, fired on its thread |
//! | [`shutdown`] | the shutdown signal (and a shared instance's fault signal), task tracking |
//! | [`runtime`] | wasmtime only, no I/O: the engine and linker, loading and checking components |
//! | [`runtime::plugin`] | a loaded plugin, immutable once built; it makes instances |
//! | [`runtime::guest`] | one instance and the one call path: CPU budget, fault classification; a shared instance's batch call |
//! | [`runtime::session`] | one connection's callbacks into its instance, on its own instance or a shared one |
//! | [`runtime::bindings`] | the one `bindgen!` |
//! | [`runtime::wasi`] | WASI p2 sync bindings, minus the calls that would block the reactor |
//! | [`runtime::state`] | Store data: the transport slab, each connection's `TransportState` and its hand-off |
//! | [`runtime::outbuf`] | a connection's unsent output, and the host-wide ceiling on it |
//! | [`runtime::transport`] | host side of the `transport` resource (no I/O) |
//! | [`runtime::clock`] | reactor time: the clock (real or a test's) and an instance's delayed calls, in due order |
//! | [`runtime::reactor`] | host side of the `reactor` interface: `seconds`, `call-later`, `delayed-call`, `connect-tcp` |
//! | [`runtime::outbound`] | what an instance may open (`max-outbound`), and the request it hands to the plugin's dialer |
//! | [`runtime::starttls`] | a transport's `start-tls`: allowed, asked for, how much output still goes in plaintext |
//! | [`runtime::limits`] | memory, CPU, backpressure, resource limits; the pooling allocator |
//! | [`runtime::pool`] | the instance pool's size (address space, `vm.max_map_count`) and each plugin's cap |
//! | [`runtime::output`] | guest stdout/stderr, attributed to the plugin, control characters escaped |
//! | [`sink`] | the host's stdout and stderr: bounded queues and writer threads, so output never blocks the reactor |
//! | [`new`] | `twill new LANG NAME`: guest projects from the templates in `host/templates/` |
//! | [`testing`] | the StringTransport-style test transport for guest authors |
//!
//! Dependencies point one way: `listener`/`connector` → `shared` →
//! `connection` → `runtime` → `wire` → `tls`; nothing in `runtime` does
//! socket I/O (it keeps each connection's [`wire::Wire`] for others to
//! send on) or names a module above it (`host/tests/layout.rs` checks that no two files
//! depend on each other).
//!
//! # One 64-byte read on a shared instance, file by file
//!
//! 1. [`listener`] accepts it on the first instance's thread and
//!    [`shared::SharedPool::assign`]s it to the least busy instance;
//! 2. [`shared`] gives it a [`runtime::Session`] on that instance
//!    ([`shared::SharedPool::session_on`]), with the instance's batch queue;
//! 3. [`connection`] reads the 64 bytes and calls `Session::deliver`;
//! 4. [`runtime::session`] adds them to the transport's hand-off and pushes
//!    them to the session's `ReadQueue`;
//! 5. [`shared::batch`] queues them; its delivery task, run after every task
//!    woken by the same readiness events, takes the queue;
//! 6. [`runtime::guest`] makes the one `batch.data-received` call under the
//!    CPU budget;
//! 7. [`runtime::transport`] receives the guest's `write`;
//! 8. [`runtime::state`] queues it in the connection's `TransportState`
//!    (checking `max-output` and the host-wide ceiling, in
//!    [`runtime::outbuf`]);
//!
//! then back in [`shared::batch`], which settles the connection: its output
//! goes straight to the socket (through [`connection::send`]), and its task
//! is woken only if something else is left to do. Without `batch` (or on
//! an instance of its own), step 3 calls `data-received` directly and
//! steps 4–6 are one `Session` call; [`connection`] then sends the reply.

pub mod config;
pub mod connection;
pub mod connector;
pub mod grants;
pub mod listener;
pub mod metrics;
pub mod new;
pub mod outbound;
pub mod reactor;
pub mod runtime;
pub mod shared;
pub mod shutdown;
pub mod sink;
pub mod splice;
pub mod stats;
pub mod testing;
pub mod tls;
pub mod watch;
pub mod wire;

pub use config::Config;
pub use reactor::{Reactor, RunEnd};
pub use runtime::Runtime;
