//! # guest-echo: the seed's echo server and echo client, as one component
//!
//! Twisted's classic pair, ported line for line:
//!
//! - [`Echo`] (server role, `echoserv.py`): writes back every byte it
//!   receives.
//! - [`EchoClient`] (client role, `echoclient.py`): on connect it writes
//!   `hello world`; on the first data it prints `Server said: <data>` and
//!   loses the connection; when the connection ends it prints
//!   `Connection lost`.
//! - [`EchoFactory`] (the client's factory): prints
//!   `Connection failed - goodbye` or `Connection lost - goodbye`.

use twill_guest::{ClientFactory, Factory, Protocol, Reason, Transport, export};

/// The server: echo every byte back, as soon as it arrives.
#[derive(Default)]
pub struct Echo;

impl Protocol for Echo {
    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        transport.write(data);
    }
}

/// The seed's client: say hello, print the echo, hang up.
#[derive(Default)]
pub struct EchoClient;

impl Protocol for EchoClient {
    fn connection_made(&mut self, transport: &Transport) {
        transport.write(b"hello world");
    }

    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        println!("Server said: {}", String::from_utf8_lossy(data));
        transport.lose_connection();
    }

    fn connection_lost(&mut self, _reason: Reason) {
        println!("Connection lost");
    }
}

/// The seed's client factory: builds [`EchoClient`] and says goodbye.
#[derive(Default)]
pub struct EchoFactory;

impl ClientFactory for EchoFactory {
    fn build_protocol(&self, _addr: &twill_guest::Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(EchoClient))
    }

    fn client_connection_failed(&self, _reason: Reason) {
        println!("Connection failed - goodbye");
    }

    fn client_connection_lost(&self, _reason: Reason) {
        println!("Connection lost - goodbye");
    }
}

export!(server: Factory<Echo>, client: EchoFactory);
