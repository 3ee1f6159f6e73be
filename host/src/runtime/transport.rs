//! The host side of the `transport` resource.
//!
//! Every method only records what the guest asked for in
//! [`TransportState`]: writes are queued, and
//! `lose-connection` / `abort-connection` set a flag. No method blocks or
//! does I/O; the connection driver acts when the callback returns.
//!
//! `write-sequence` is linked by hand ([`add_writes`]) rather than through
//! the bindings: it reads the guest's lists in place, so the `max-output`
//! check happens before a byte is copied. (Many entries pointing at one
//! buffer would otherwise make the host copy many times the guest's own
//! memory before the check.) `write` copies one list, at most the guest's
//! own memory, and keeps the bindings' path: one lock of the transport.

use std::net::SocketAddr;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, WasmList};

use super::bindings::twill::protocol::{transport, types};
use super::state::{Caller, ConnState, Meet, TransportHandle, TransportState, hold, lock};

fn address(a: Option<SocketAddr>) -> types::Address {
    match a {
        Some(a) => types::Address {
            host: a.ip().to_canonical().to_string(),
            port: a.port(),
        },
        None => types::Address {
            host: String::new(),
            port: 0,
        },
    }
}

/// What a transport call changed, for the wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Nothing (a read of the addresses, the room left).
    None,
    /// Output was queued.
    Write,
    /// A close, a pause, a producer: its task must look.
    Other,
}

impl ConnState {
    /// Runs `f` on the transport `handle` names, if its connection is still
    /// there (Twisted ignores writes to a closed transport). If the call
    /// changed the transport, wake its connection's task unless it is the
    /// one whose callback is running, or (in a batch) one with a read in
    /// the batch, which the batch settles when the call returns; output
    /// written by another connection's callback is sent by that
    /// connection's task instead (`ConnState::touched`).
    fn with_transport<R: Default>(
        &mut self,
        handle: &Resource<TransportHandle>,
        change: Change,
        f: impl FnOnce(&mut TransportState) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        let h = *self.table.get(handle)?;
        let current = self.current;
        let Some(cell) = self.transports.get(h.slot, h.generation) else {
            return Ok(R::default());
        };
        let mut t = lock(cell);
        let r = f(&mut t)?;
        let settled_after = match current {
            Some(Caller::Connection(slot)) => slot == h.slot,
            Some(Caller::Batch) => t.handoff().queued() > 0,
            Some(Caller::Reactor) | None => false,
        };
        if change != Change::None && !settled_after {
            // Another connection's callback wrote: the task that made the
            // call sends the output itself once the call returns (no
            // wake-up of this connection's task, unless something is left).
            let defer = change == Change::Write
                && matches!(current, Some(Caller::Connection(_)))
                && t.has_stream();
            if defer {
                if !self.touched.iter().any(|c| std::sync::Arc::ptr_eq(c, cell)) {
                    self.touched.push(cell.clone());
                }
            } else {
                t.kick();
            }
        }
        // A write past the high-water mark pauses the producer transport
        // now, within the writing callback.
        let pause = t.producer_to_pause();
        drop(t);
        if let Some(p) = pause {
            hold(&p, true);
        }
        Ok(r)
    }
}

/// The transport interface, as named in the component's imports.
const TRANSPORT: &str = "twill:protocol/transport@0.1.0";

/// Links `write-sequence` over the guest's lists in place (`write_sequence`),
/// replacing the bindings' version (which copies every list first).
pub fn add_writes(linker: &mut Linker<ConnState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker
        .instance(TRANSPORT)?
        .func_wrap("[method]transport.write-sequence", write_sequence)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `write-sequence`: sums the lists' lengths in the guest's memory (up to
/// the room the transport has left), so that `max-output` traps before a
/// byte is copied; a sequence that fits is copied into one chunk.
fn write_sequence(
    mut store: StoreContextMut<'_, ConnState>,
    (handle, data): (Resource<TransportHandle>, WasmList<WasmList<u8>>),
) -> wasmtime::Result<()> {
    let room = store
        .data_mut()
        .with_transport(&handle, Change::None, |t| Ok(t.room()))?;
    let Some(room) = room else {
        // Closing or gone: ignored, as Twisted ignores such writes.
        return Ok(());
    };
    let mut len = 0usize;
    for i in 0..data.len() {
        len = len.saturating_add(data.get(&mut store, i).transpose()?.map_or(0, |l| l.len()));
        if len > room {
            // `queue` traps with the limit's message; nothing is copied.
            return store
                .data_mut()
                .with_transport(&handle, Change::Write, |t| t.write(len, []));
        }
    }
    let mut chunk = Vec::with_capacity(len);
    for i in 0..data.len() {
        if let Some(l) = data.get(&mut store, i).transpose()? {
            chunk.extend_from_slice(l.as_le_slice(&store));
        }
    }
    store
        .data_mut()
        .with_transport(&handle, Change::Write, |t| t.write(len, [chunk]))
}

impl types::Host for ConnState {}
impl transport::Host for ConnState {}

impl transport::HostTransport for ConnState {
    fn write(&mut self, handle: Resource<TransportHandle>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Write, |t| t.write(data.len(), [data]))
    }

    /// Never called: the linker uses the in-place `write_sequence`.
    fn write_sequence(
        &mut self,
        handle: Resource<TransportHandle>,
        data: Vec<Vec<u8>>,
    ) -> wasmtime::Result<()> {
        let len = data.iter().map(Vec::len).sum();
        self.with_transport(&handle, Change::Write, |t| t.write(len, data))
    }

    fn lose_connection(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.lose();
            Ok(())
        })
    }

    fn abort_connection(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.abort();
            Ok(())
        })
    }

    fn get_peer(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        self.with_transport(&handle, Change::None, |t| Ok(Some(t.peer())))
            .map(|a| address(a.flatten()))
    }

    fn get_host(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        self.with_transport(&handle, Change::None, |t| Ok(Some(t.host())))
            .map(|a| address(a.flatten()))
    }

    fn register_producer(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.set_producer(true);
            Ok(())
        })
    }

    fn unregister_producer(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        let held = self.with_transport(&handle, Change::Other, |t| {
            t.set_producer(false);
            Ok(t.set_producer_transport(None))
        })?;
        if let Some(p) = held {
            hold(&p, false);
        }
        Ok(())
    }

    fn register_producer_transport(
        &mut self,
        handle: Resource<TransportHandle>,
        producer: Resource<TransportHandle>,
    ) -> wasmtime::Result<()> {
        let p = *self.table.get(&producer)?;
        let Some(cell) = self.transports.get(p.slot, p.generation) else {
            return Ok(());
        };
        let weak = std::sync::Arc::downgrade(cell);
        let held = self.with_transport(&handle, Change::Other, |t| {
            Ok(t.set_producer_transport(Some(weak)))
        })?;
        if let Some(p) = held {
            hold(&p, false);
        }
        Ok(())
    }

    fn pause_producing(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.set_reading_paused(true);
            Ok(())
        })
    }

    fn resume_producing(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.set_reading_paused(false);
            Ok(())
        })
    }

    fn lose_write_connection(&mut self, handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::Other, |t| {
            t.lose_write();
            Ok(())
        })
    }

    fn set_half_closeable(
        &mut self,
        handle: Resource<TransportHandle>,
        on: bool,
    ) -> wasmtime::Result<()> {
        self.with_transport(&handle, Change::None, |t| {
            t.set_half_closeable(on);
            Ok(())
        })
    }

    fn splice(
        &mut self,
        handle: Resource<TransportHandle>,
        other: Resource<TransportHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let (a, b) = (*self.table.get(&handle)?, *self.table.get(&other)?);
        if a.slot == b.slot {
            return Ok(Err("a transport cannot be spliced to itself".into()));
        }
        let cells = (
            self.transports.get(a.slot, a.generation).cloned(),
            self.transports.get(b.slot, b.generation).cloned(),
        );
        let (Some(ca), Some(cb)) = cells else {
            return Ok(Err("cannot splice: a connection has ended".into()));
        };
        // The only place two transports are locked at once (each
        // connection's task locks its own, one at a time).
        let (mut ta, mut tb) = (lock(&ca), lock(&cb));
        if !ta.can_splice() || !tb.can_splice() {
            return Ok(Err(
                "cannot splice: a connection is already spliced, closing or closed".into(),
            ));
        }
        let meet = std::sync::Arc::new(Meet {
            cells: [
                std::sync::Arc::downgrade(&ca),
                std::sync::Arc::downgrade(&cb),
            ],
            waiting: std::sync::Mutex::default(),
        });
        ta.set_splice(meet.clone());
        tb.set_splice(meet);
        ta.kick();
        tb.kick();
        Ok(Ok(()))
    }

    fn tls_info(
        &mut self,
        handle: Resource<TransportHandle>,
    ) -> wasmtime::Result<Option<types::TlsInfo>> {
        let info = self.with_transport(&handle, Change::None, |t| {
            Ok(t.stream().and_then(|w| w.tls_info()))
        })?;
        Ok(info.map(|i| types::TlsInfo {
            version: i.version,
            cipher_suite: i.cipher_suite,
            server_name: i.server_name,
            alpn_protocol: i.alpn_protocol,
            peer_certificate: i.peer_certificate.map(|c| types::PeerCertificate {
                subject: c.subject,
                sha256: c.sha256,
                der: c.der,
            }),
        }))
    }

    fn start_tls(
        &mut self,
        handle: Resource<TransportHandle>,
    ) -> wasmtime::Result<Result<(), String>> {
        let r = self.with_transport(&handle, Change::Other, |t| Ok(Some(t.request_start_tls())))?;
        Ok(r.unwrap_or_else(|| Err("the connection has ended".into())))
    }

    fn drop(&mut self, rep: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}
