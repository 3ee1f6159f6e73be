//! The host side of the `transport` resource.
//!
//! Every method only records what the guest asked for in
//! [`TransportState`](super::state::TransportState): writes are queued, and
//! `lose-connection` / `abort-connection` set a flag. No method blocks or
//! does I/O; the connection driver acts when the callback returns.

use std::net::SocketAddr;

use wasmtime::component::Resource;

use super::bindings::twill::protocol::{transport, types};
use super::state::{Closing, ConnState};

/// The host's representation of a guest-held `transport` handle. A Store
/// serves one connection, so the handle carries no data of its own.
#[derive(Debug)]
pub struct TransportHandle;

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

impl ConnState {
    /// Queues output, trapping the guest if it would pass its output limit.
    fn queue(
        &mut self,
        len: usize,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> wasmtime::Result<()> {
        let t = &mut self.transport;
        if !t.accepts_writes() {
            return Ok(());
        }
        if t.out.len().saturating_add(len) > t.max_output {
            return Err(wasmtime::format_err!(
                "output limit exceeded: {} bytes unsent, max-output is {}",
                t.out.len() + len,
                t.max_output
            ));
        }
        for c in chunks {
            t.out.push(c);
        }
        Ok(())
    }
}

impl types::Host for ConnState {}
impl transport::Host for ConnState {}

impl transport::HostTransport for ConnState {
    fn write(&mut self, _handle: Resource<TransportHandle>, data: Vec<u8>) -> wasmtime::Result<()> {
        self.queue(data.len(), [data])
    }

    fn write_sequence(
        &mut self,
        _handle: Resource<TransportHandle>,
        data: Vec<Vec<u8>>,
    ) -> wasmtime::Result<()> {
        let len = data.iter().map(Vec::len).sum();
        self.queue(len, data)
    }

    fn lose_connection(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        if self.transport.closing == Closing::Open {
            self.transport.closing = Closing::Lose;
        }
        Ok(())
    }

    fn abort_connection(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        if !self.transport.lost {
            self.transport.closing = Closing::Abort;
            self.transport.out.clear();
        }
        Ok(())
    }

    fn get_peer(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        Ok(address(self.transport.peer))
    }

    fn get_host(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        Ok(address(self.transport.host))
    }

    fn register_producer(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.transport.producer = true;
        Ok(())
    }

    fn unregister_producer(&mut self, _handle: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.transport.producer = false;
        Ok(())
    }

    fn drop(&mut self, rep: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}
