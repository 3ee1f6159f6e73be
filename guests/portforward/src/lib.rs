//! Twisted's `twisted.protocols.portforward` as a Twill guest: every
//! connection accepted opens one to the backend and relays bytes both
//! ways, with flow control (each side's transport is the other's
//! producer) and half-close (one peer's FIN becomes a FIN to the other).
//!
//! Configured through the environment its plugin grants
//! (`[plugins.NAME] env`):
//! - `BACKEND`: `HOST:PORT` to forward to (the plugin's `connect` grants
//!   must allow it);
//! - `SPLICE=1`: once connected, hand both connections to the host
//!   (`transport.splice`) instead of relaying in the guest;
//! - `TIMEOUT`: the connect timeout in seconds (default 30).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use twill_guest::reactor;
use twill_guest::{Address, ClientFactory, Protocol, Reason, ServerFactory, Transport};

/// Where to forward, from `BACKEND`.
fn backend() -> Option<(String, u16)> {
    let b = std::env::var("BACKEND").ok()?;
    let (host, port) = b.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

fn splice() -> bool {
    std::env::var("SPLICE").is_ok_and(|v| v == "1")
}

fn timeout() -> Duration {
    let secs = std::env::var("TIMEOUT")
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// Ends the other connection the way this one ended: cleanly after its
/// output (Twisted's `portforward` always does this), or, if this one was
/// reset or failed, with a reset, so a truncation never reaches the other
/// peer as a clean close.
fn close_like(other: &Transport, reason: &Reason) {
    if reason.is_clean() {
        other.lose_connection();
    } else {
        other.abort_connection();
    }
}

/// The backend connection's transport, once it is made.
type Peer = Rc<RefCell<Option<Transport>>>;

/// The accepted connection's protocol: Twisted's `ProxyServer`.
#[derive(Default)]
struct ProxyServer {
    peer: Peer,
}

impl Protocol for ProxyServer {
    fn half_closeable(&self) -> bool {
        true
    }

    fn connection_made(&mut self, transport: &Transport) {
        // Nothing is read until the backend connection is made.
        transport.pause_producing();
        let Some((host, port)) = backend() else {
            eprintln!("portforward: BACKEND is not set to HOST:PORT");
            transport.lose_connection();
            return;
        };
        let factory = ProxyClientFactory {
            server: transport.clone(),
            peer: self.peer.clone(),
        };
        if let Err(e) = reactor::connect_tcp_timeout(&host, port, timeout(), factory) {
            eprintln!("portforward: cannot connect to {host}:{port}: {e}");
            transport.lose_connection();
        }
    }

    fn data_received(&mut self, _transport: &Transport, data: &[u8]) {
        if let Some(peer) = &*self.peer.borrow() {
            peer.write(data);
        }
    }

    fn read_connection_lost(&mut self, _transport: &Transport) {
        if let Some(peer) = &*self.peer.borrow() {
            peer.lose_write_connection();
        }
    }

    fn connection_lost(&mut self, reason: Reason) {
        if let Some(peer) = self.peer.borrow_mut().take() {
            close_like(&peer, &reason);
        }
    }
}

/// Builds the backend connection's protocol: Twisted's
/// `ProxyClientFactory`.
struct ProxyClientFactory {
    server: Transport,
    peer: Peer,
}

impl ClientFactory for ProxyClientFactory {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(ProxyClient {
            server: self.server.clone(),
            slot: self.peer.clone(),
        }))
    }

    fn client_connection_failed(&self, reason: Reason) {
        eprintln!("portforward: {reason}");
        self.server.lose_connection();
    }
}

/// The backend connection's protocol: Twisted's `ProxyClient`.
struct ProxyClient {
    server: Transport,
    slot: Peer,
}

impl Protocol for ProxyClient {
    fn half_closeable(&self) -> bool {
        true
    }

    fn connection_made(&mut self, transport: &Transport) {
        if splice() {
            match self.server.splice(transport) {
                Ok(()) => return,
                Err(e) => eprintln!("portforward: splice refused ({e}); relaying instead"),
            }
        }
        *self.slot.borrow_mut() = Some(transport.clone());
        // Each side pauses the other while its own output is backed up.
        transport.register_producer_transport(&self.server);
        self.server.register_producer_transport(transport);
        self.server.resume_producing();
    }

    fn data_received(&mut self, _transport: &Transport, data: &[u8]) {
        self.server.write(data);
    }

    fn read_connection_lost(&mut self, _transport: &Transport) {
        self.server.lose_write_connection();
    }

    fn connection_lost(&mut self, reason: Reason) {
        close_like(&self.server, &reason);
    }
}

/// The server factory: one [`ProxyServer`] per connection.
#[derive(Default)]
struct Forward;

impl ServerFactory for Forward {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(ProxyServer::default()))
    }
}

twill_guest::export!(server: Forward);
