//! A [`Session`]: one connection's view of its plugin, made on an instance
//! of its own ([`Session::own`]) or a place on a shared one
//! ([`Session::shared`]). Every method is one guest callback (Twisted's
//! `buildProtocol`, `makeConnection`, `dataReceived`, ...), run under the
//! plugin's CPU and memory limits. On a batched session, a read goes to a
//! [`ReadQueue`] instead (the crate's `shared` module implements it).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::wire::Wire;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::batch::Chunk;
use super::bindings::{self, protocol};
use super::guest::{Guest, GuestFault, GuestRef, Home, SharedGuest};
use super::plugin::Plugin;
use super::pool::InstancePermit;
use super::state::{self, ConnState, TransportCell, TransportState};
use super::state::{Caller, TransportHandle};

/// One connection's view of its plugin: the instance (its own, or a place
/// on a shared one), the connection's protocol once built, and its
/// transport. Every method is one guest callback, run under the plugin's
/// CPU and memory limits.
pub struct Session {
    pub(super) plugin: Arc<Plugin>,
    pub(super) home: Home,
    /// Where reads go for batched delivery, on a shared instance whose
    /// component exports `batch` (from a listener).
    pub(super) queue: Option<Arc<dyn ReadQueue>>,
    pub(super) protocol: Option<ResourceAny>,
    /// This connection's slot in the instance's transports, and the
    /// slot's generation (what the guest's transport handle names).
    pub(super) slot: u32,
    pub(super) generation: u32,
    /// This connection's transport state (also in the instance's slab).
    pub(super) cell: TransportCell,
    /// Its place under the plugin's `max-instances` (an instance of its
    /// own), given back after the instance is dropped.
    pub(super) permit: Option<InstancePermit>,
    /// Whether its task sends what its callbacks write to other
    /// connections ([`Session::set_defer`]).
    pub(super) defer: bool,
    /// Transports its callbacks wrote to, not yet settled.
    pub(super) touched: Vec<TransportCell>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // An instance of its own goes with the session. On a shared one,
        // drop the protocol (the guest's destructor runs as a callback, under
        // the CPU budget; skipped if the instance already faulted) and free
        // the transport slot.
        if let Home::Own(g) = &mut self.home {
            // Its factory is done: `stop-factory`, unless it faulted.
            if !g.poisoned {
                let (slot, cpu) = (self.slot, self.plugin.limits.cpu);
                if let Err(f) = g.factory_hook(cpu, Caller::Connection(slot), false) {
                    tracing::warn!(plugin = %self.plugin.name, fault = %f, "guest faulted in stop-factory");
                }
            }
            return;
        }
        // A read still queued for batched delivery is skipped.
        self.release_producer();
        if let Some(p) = self.protocol.take()
            && let Err(f) = self.call(|g| p.resource_drop(&mut g.store))
            && !matches!(f, GuestFault::Poisoned)
        {
            tracing::warn!(plugin = %self.plugin.name, fault = %f, "shared guest faulted dropping a protocol; its connections are aborted");
        }
        let slot = self.slot;
        self.guest().store.data_mut().transports.remove(slot);
    }
}

pub(super) fn address(a: SocketAddr) -> bindings::Address {
    bindings::Address {
        host: a.ip().to_canonical().to_string(),
        port: a.port(),
    }
}

/// Where a batched session's reads go: a shared instance's queue, which
/// delivers the reads of the same moment in one `batch.data-received` call
/// and writes the output they caused to each connection's socket.
pub trait ReadQueue: Send + Sync {
    /// Queues `data`, read from `stream`, for `protocol`, whose transport
    /// is `cell`; the caller has added `data.len()` to the cell's hand-off.
    fn push(&self, protocol: ResourceAny, cell: &TransportCell, stream: &Arc<Wire>, data: &[u8]);
}

impl Session {
    /// A session on a fresh instance of `plugin`'s own, in the place
    /// `permit` holds under its `max-instances` (given back once the
    /// instance is dropped).
    pub fn own(plugin: &Arc<Plugin>, permit: InstancePermit) -> Result<Session, GuestFault> {
        let home = Home::Own(Box::new(plugin.new_guest()?));
        let mut session = Session::on(plugin, home, None);
        session.permit = Some(permit);
        // The instance is its own factory: `start-factory` before anything.
        let (slot, cpu) = (session.slot, plugin.limits.cpu);
        session
            .guest()
            .factory_hook(cpu, Caller::Connection(slot), true)?;
        Ok(session)
    }

    /// A session on shared instance `shared` (made by
    /// [`Plugin::new_shared_guest`]); its reads go to `queue` if given.
    pub fn shared(
        plugin: &Arc<Plugin>,
        shared: Arc<SharedGuest>,
        queue: Option<Arc<dyn ReadQueue>>,
    ) -> Session {
        Session::on(plugin, Home::Shared(shared), queue)
    }

    /// A session for one connection on `home`, with its transport cell in
    /// the instance's slab (one more host-side resource allowed per live
    /// transport).
    fn on(plugin: &Arc<Plugin>, home: Home, queue: Option<Arc<dyn ReadQueue>>) -> Session {
        let cell: TransportCell = Arc::new(std::sync::Mutex::new(plugin.new_transport()));
        let mut session = Session {
            plugin: plugin.clone(),
            home,
            queue,
            protocol: None,
            slot: 0,
            generation: 0,
            cell: cell.clone(),
            permit: None,
            defer: false,
            touched: Vec::new(),
        };
        let mut g = session.guest();
        let data = g.store.data_mut();
        let (slot, generation) = data.transports.insert(cell);
        data.size_table();
        drop(g);
        (session.slot, session.generation) = (slot, generation);
        session
    }

    /// The plugin this session runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    pub(super) fn guest(&mut self) -> GuestRef<'_> {
        match &mut self.home {
            Home::Own(g) => GuestRef::Own(g),
            Home::Shared(s) => GuestRef::Shared(state::lock(&s.guest)),
        }
    }

    /// The transport state the guest's calls have built up, locked (a
    /// shared instance's callbacks may write to it from another thread).
    pub fn transport(&self) -> std::sync::MutexGuard<'_, TransportState> {
        state::lock(&self.cell)
    }

    /// The connection is over: the transport takes no more writes, and a
    /// producer transport it held paused reads again.
    fn release_producer(&mut self) {
        let held = {
            let mut t = self.transport();
            t.set_lost();
            t.producer_to_resume()
        };
        if let Some(p) = held {
            state::hold(&p, false);
        }
    }

    /// This connection's transport cell (for a splice's pump).
    pub fn transport_cell(&self) -> TransportCell {
        self.cell.clone()
    }

    /// Whether this connection's reads are delivered in batches (a shared
    /// instance whose component exports `batch`, from a listener): then
    /// [`Session::deliver`] queues reads instead of calling `data-received`.
    pub fn is_batched(&self) -> bool {
        self.queue.is_some()
    }

    /// Hands one read to the protocol: a `data-received` call now, or, on a
    /// batched session, a place in the instance's [`ReadQueue`] for the
    /// next batch (whose output is then written to `stream` by the
    /// delivery). The connection must not close cleanly while its
    /// hand-off has bytes queued.
    pub fn deliver(&mut self, data: &[u8], stream: &Arc<Wire>) -> Result<(), GuestFault> {
        match (&self.queue, self.protocol) {
            (Some(queue), Some(protocol)) => {
                self.transport().handoff().queue(data.len());
                queue.push(protocol, &self.cell, stream, data);
                Ok(())
            }
            (Some(_), None) => Ok(()),
            (None, _) => self.data_received(data),
        }
    }

    /// Whether the session is on a shared instance.
    pub fn is_shared(&self) -> bool {
        matches!(self.home, Home::Shared(_))
    }

    /// For a shared instance, a listener that fires when the instance
    /// faults (every connection on it must then be aborted).
    pub fn fault_listener(&self) -> Option<crate::shutdown::Shutdown> {
        match &self.home {
            Home::Own(_) => None,
            Home::Shared(s) => Some(s.fault.subscribe()),
        }
    }

    /// When this connection's own instance has its next delayed call due
    /// (or a little earlier): the connection's task fires it with
    /// [`Session::fire_timers`]. None on a shared instance, whose timer
    /// task fires its calls.
    pub fn next_timer(&mut self) -> Option<std::time::Instant> {
        match &self.home {
            Home::Own(g) => g.next_timer(),
            Home::Shared(_) => None,
        }
    }

    /// When its own instance's next delayed call is due on its clock,
    /// exactly; none on a shared instance (for the test transport's clock).
    pub fn exact_next_due(&mut self) -> Option<u64> {
        match &mut self.home {
            Home::Own(g) => g.exact_next_due(),
            Home::Shared(_) => None,
        }
    }

    /// Fires its own instance's first delayed call if it is due by `now`
    /// (for the test transport's clock).
    pub fn fire_one(&mut self, now: u64) -> Result<bool, GuestFault> {
        let (slot, cpu) = (self.slot, self.plugin.limits.cpu);
        match &mut self.home {
            Home::Own(g) => g.fire_one(cpu, Caller::Connection(slot), now),
            Home::Shared(s) => s.fire_one(now),
        }
    }

    /// Fires the instance's due delayed calls (one pass), each a
    /// `timer-fired` callback under the CPU budget. Returns how many fired.
    pub fn fire_timers(&mut self) -> Result<usize, GuestFault> {
        let (slot, cpu) = (self.slot, self.plugin.limits.cpu);
        match &mut self.home {
            Home::Own(g) => g.fire_due(cpu, Caller::Connection(slot)),
            Home::Shared(s) => s.fire_timers(),
        }
    }

    /// Ready when a callback of another connection on the same shared
    /// instance changed this connection's transport (wrote to it, closed
    /// it); registers the task's waker otherwise.
    pub fn poll_kicked(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.transport().handoff().poll_kicked(cx)
    }

    /// Runs one guest callback: refuses if the instance already faulted,
    /// arms the CPU budget, marks this connection as the caller, and turns
    /// a trap into a [`GuestFault`] that poisons the instance (and, for a
    /// shared one, aborts every connection on it).
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Guest) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFault> {
        let (slot, cpu) = (self.slot, self.plugin.limits.cpu);
        let mut touched = std::mem::take(&mut self.touched);
        let r = {
            let mut g = self.guest();
            let r = g.call(cpu, 1, Caller::Connection(slot), f);
            touched.append(&mut g.store.data_mut().touched);
            r
        };
        self.touched = touched;
        if !self.defer {
            // Nobody will send it: wake the connections it was written to.
            for cell in self.touched.drain(..) {
                state::lock(&cell).kick();
            }
        }
        if let (Err(f), Home::Shared(s)) = (&r, &self.home) {
            s.fail(f);
        }
        r
    }

    /// Whether the connection's task sends the output this connection's
    /// callbacks write to other connections itself
    /// ([`Session::settle_touched`]); if not, those connections' tasks are
    /// woken to send it.
    pub fn set_defer(&mut self, defer: bool) {
        self.defer = defer;
    }

    /// Hands each transport this connection's callbacks wrote to since the
    /// last call to `settle` (the connection's task sends the output).
    pub fn settle_touched(&mut self, mut settle: impl FnMut(&TransportCell)) {
        for cell in self.touched.drain(..) {
            settle(&cell);
        }
    }

    /// `server-factory.build-protocol(addr)`. Returns false if the guest
    /// refused the connection.
    pub fn build_server_protocol(&mut self, peer: SocketAddr) -> Result<bool, GuestFault> {
        let addr = address(peer);
        let p = self.call(|g| match g.server.clone() {
            Some(server) => server.call_build_protocol(&mut g.store, &addr),
            None => Ok(None),
        })?;
        self.protocol = p;
        Ok(self.protocol.is_some())
    }

    /// `client-factory.started-connecting(addr)`.
    pub fn started_connecting(&mut self, host: &str, port: u16) -> Result<(), GuestFault> {
        let addr = bindings::Address {
            host: host.to_string(),
            port,
        };
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_started_connecting(&mut g.store, &addr),
            None => Ok(()),
        })
    }

    /// `client-factory.build-protocol(addr)`. Returns false if the guest
    /// declined.
    pub fn build_client_protocol(&mut self, remote: SocketAddr) -> Result<bool, GuestFault> {
        let addr = address(remote);
        let p = self.call(|g| match g.client.clone() {
            Some(client) => client.call_build_protocol(&mut g.store, &addr),
            None => Ok(None),
        })?;
        self.protocol = p;
        Ok(self.protocol.is_some())
    }

    /// `outbound-factory.build-protocol(token, addr)`, for a connection
    /// the guest opened. Returns false if the guest declined.
    pub fn build_outbound_protocol(
        &mut self,
        token: u64,
        remote: SocketAddr,
    ) -> Result<bool, GuestFault> {
        let addr = address(remote);
        let p = self.call(|g| match g.outbound.clone() {
            Some(f) => f.call_build_protocol(&mut g.store, token, &addr),
            None => Ok(None),
        })?;
        self.protocol = p;
        Ok(self.protocol.is_some())
    }

    /// `half-close.read-connection-lost(protocol)`, if exported.
    pub fn read_connection_lost(&mut self) -> Result<(), GuestFault> {
        self.half_close(true)
    }

    /// `half-close.write-connection-lost(protocol)`, if exported.
    pub fn write_connection_lost(&mut self) -> Result<(), GuestFault> {
        self.half_close(false)
    }

    fn half_close(&mut self, read: bool) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| match g.half_close.clone() {
            Some(h) if read => h.call_read_connection_lost(&mut g.store, p),
            Some(h) => h.call_write_connection_lost(&mut g.store, p),
            None => Ok(()),
        })
    }

    /// Whether the component exports `half-close`: only then does a
    /// protocol's `set-half-closeable` change what the peer's FIN does.
    pub fn has_half_close(&self) -> bool {
        self.plugin.half_close.is_some()
    }

    /// `client-factory.client-connection-failed(reason)`.
    pub fn client_connection_failed(
        &mut self,
        reason: &bindings::Reason,
    ) -> Result<(), GuestFault> {
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_client_connection_failed(&mut g.store, reason),
            None => Ok(()),
        })
    }

    /// `client-factory.client-connection-lost(reason)`.
    pub fn client_connection_lost(&mut self, reason: &bindings::Reason) -> Result<(), GuestFault> {
        self.call(|g| match g.client.clone() {
            Some(client) => client.call_client_connection_lost(&mut g.store, reason),
            None => Ok(()),
        })
    }

    /// `protocol.make-connection(transport)`, with the connection's
    /// addresses recorded for `get-peer` / `get-host`.
    pub fn make_connection(
        &mut self,
        peer: SocketAddr,
        host: SocketAddr,
    ) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        {
            self.transport().set_addresses(peer, host);
        }
        let handle = TransportHandle {
            slot: self.slot,
            generation: self.generation,
        };
        self.call(|g| {
            let handle = g.store.data_mut().table.push(handle)?;
            let api = g.api.clone();
            api.protocol().call_make_connection(&mut g.store, p, handle)
        })
    }

    /// `protocol.data-received(data)`.
    pub fn data_received(&mut self, data: &[u8]) -> Result<(), GuestFault> {
        self.on_protocol(|api, store, p| api.call_data_received(store, p, data))
    }

    /// `protocol.connection-lost(reason)`. The transport stops accepting
    /// writes first.
    pub fn connection_lost(&mut self, reason: &bindings::Reason) -> Result<(), GuestFault> {
        self.release_producer();
        self.on_protocol(|api, store, p| api.call_connection_lost(store, p, reason))
    }

    /// `protocol.pause-producing()`.
    pub fn pause_producing(&mut self) -> Result<(), GuestFault> {
        self.on_protocol(|api, store, p| api.call_pause_producing(store, p))
    }

    /// `protocol.resume-producing()`.
    pub fn resume_producing(&mut self) -> Result<(), GuestFault> {
        self.on_protocol(|api, store, p| api.call_resume_producing(store, p))
    }

    /// One callback on this connection's protocol, if it has one (a
    /// connection the factory refused has none): the one body every
    /// `protocol.*` method shares.
    fn on_protocol(
        &mut self,
        f: impl FnOnce(
            protocol::GuestProtocol<'_>,
            &mut Store<ConnState>,
            ResourceAny,
        ) -> wasmtime::Result<()>,
    ) -> Result<(), GuestFault> {
        let Some(p) = self.protocol else {
            return Ok(());
        };
        self.call(|g| {
            let api = g.api.clone();
            f(api.protocol(), &mut g.store, p)
        })
    }
}

/// Delivers one batch directly, as one `batch.data-received` call: each
/// session's protocol gets its data, in order. Every session must be on
/// the same shared instance. Reads for a connection that is closing or
/// gone are skipped, as the queue skips them. If the component does not
/// export `batch`, each read is one `data-received` call instead, as the
/// host does then. The test transport uses this to let guest authors test
/// a batch without sockets.
pub fn data_received_batch(reads: &mut [(&mut Session, &[u8])]) -> Result<(), GuestFault> {
    let Some((first, _)) = reads.first() else {
        return Ok(());
    };
    let Home::Shared(shared) = &first.home else {
        panic!("data_received_batch: the sessions must be on a shared instance");
    };
    let shared = shared.clone();
    if !first.plugin.has_batch() {
        for (session, data) in reads.iter_mut() {
            session.data_received(data)?;
        }
        return Ok(());
    }
    let mut chunks = Vec::new();
    let mut data = Vec::new();
    for (session, bytes) in reads.iter() {
        let same = matches!(&session.home, Home::Shared(s) if Arc::ptr_eq(s, &shared));
        assert!(
            same,
            "data_received_batch: the sessions must share one instance"
        );
        let open = session.transport().takes_reads();
        if let (true, Some(protocol)) = (open, session.protocol) {
            chunks.push(Chunk {
                protocol,
                len: u32::try_from(bytes.len()).expect("a read under 4 GiB"),
            });
            data.extend_from_slice(bytes);
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    shared.data_received_batch(&chunks, &data)
}
