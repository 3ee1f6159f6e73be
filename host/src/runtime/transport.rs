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
        Some(a) => types::Address { host: a.ip().to_canonical().to_string(), port: a.port() },
        None => types::Address { host: String::new(), port: 0 },
    }
}

impl types::Host for ConnState {}
impl transport::Host for ConnState {}

impl transport::HostTransport for ConnState {
    fn write(&mut self, _self: Resource<TransportHandle>, data: Vec<u8>) -> wasmtime::Result<()> {
        if self.transport.accepts_writes() {
            self.transport.out.push(data);
        }
        Ok(())
    }

    fn write_sequence(&mut self, _self: Resource<TransportHandle>, data: Vec<Vec<u8>>) -> wasmtime::Result<()> {
        if self.transport.accepts_writes() {
            for chunk in data {
                self.transport.out.push(chunk);
            }
        }
        Ok(())
    }

    fn lose_connection(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<()> {
        if self.transport.closing == Closing::Open {
            self.transport.closing = Closing::Lose;
        }
        Ok(())
    }

    fn abort_connection(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<()> {
        if !self.transport.lost {
            self.transport.closing = Closing::Abort;
            self.transport.out.clear();
        }
        Ok(())
    }

    fn get_peer(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        Ok(address(self.transport.peer))
    }

    fn get_host(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<types::Address> {
        Ok(address(self.transport.host))
    }

    fn register_producer(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.transport.producer = true;
        Ok(())
    }

    fn unregister_producer(&mut self, _self: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.transport.producer = false;
        Ok(())
    }

    fn drop(&mut self, rep: Resource<TransportHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}
