//! The client side: Twisted's `reactor.connectTCP(host, port, factory)`.
//!
//! One connector is one instance: its client factory hears
//! `started-connecting`, then either `client-connection-failed` (name not
//! found, refused, unreachable, timed out; no protocol is built) or
//! `build-protocol`, the protocol's whole life on [`crate::connection::run`],
//! and `client-connection-lost`.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::ConnectConfig;
use crate::connection::{self, End};
use crate::runtime::GuestFault;
use crate::runtime::bindings::Reason;
use crate::shared::Instances;
use crate::shutdown::Shutdown;

/// How a connector ended.
#[derive(Debug)]
pub enum ConnectorEnd {
    /// The attempt failed; the factory heard `client-connection-failed`.
    Failed(String),
    /// The connection was made and later lost with this reason.
    Lost(Reason),
    /// The guest faulted.
    Fault(GuestFault),
    /// Shutdown arrived before the connection was made.
    Cancelled,
}

/// Runs one `[[connect]]` entry to its end.
pub async fn run(cfg: ConnectConfig, instances: Instances, shutdown: Shutdown) -> ConnectorEnd {
    let name = instances.plugin().name.clone();
    let target = format!("{}:{}", cfg.host, cfg.port);
    let mut session = match instances.session() {
        Ok(s) => s,
        Err(fault) => {
            tracing::error!(plugin = %name, %target, %fault, "cannot instantiate guest for connector");
            return ConnectorEnd::Fault(fault);
        }
    };
    if let Err(fault) = session.started_connecting(&cfg.host, cfg.port) {
        tracing::warn!(plugin = %name, %target, %fault, "guest faulted in started-connecting");
        return ConnectorEnd::Fault(fault);
    }
    let attempt = tokio::time::timeout(cfg.timeout, connect(&cfg.host, cfg.port));
    let result = tokio::select! {
        r = attempt => match r {
            Ok(r) => r,
            Err(_) => Err(format!("connecting to {target} timed out after {:?}", cfg.timeout)),
        },
        () = shutdown.recv() => return ConnectorEnd::Cancelled,
    };
    let stream = match result {
        Ok(s) => s,
        Err(msg) => {
            tracing::info!(plugin = %name, %target, error = %msg, "connection failed");
            if let Err(fault) = session.client_connection_failed(&Reason::Failed(msg.clone())) {
                tracing::warn!(plugin = %name, %target, %fault, "guest faulted in client-connection-failed");
                return ConnectorEnd::Fault(fault);
            }
            return ConnectorEnd::Failed(msg);
        }
    };
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::debug!(plugin = %name, %peer, "connected");
    let reason = match session.build_client_protocol(peer) {
        Ok(true) => match connection::run(stream, &mut session, &shutdown).await {
            End::Closed(reason) => reason,
            End::Fault(fault) => {
                tracing::warn!(plugin = %name, %peer, %fault, "guest faulted; connection aborted");
                return ConnectorEnd::Fault(fault);
            }
        },
        Ok(false) => {
            // The Rust SDK exports a client factory that declines when the
            // guest registered none: a server-only component used in a
            // [[connect]] entry lands here.
            tracing::warn!(plugin = %name, %peer, "the client factory built no protocol, so the connection is closed: does this component implement a client? (a Rust guest needs `export!(client: ...)`)");
            drop(stream);
            Reason::Done
        }
        Err(fault) => {
            tracing::warn!(plugin = %name, %peer, %fault, "guest faulted in build-protocol");
            return ConnectorEnd::Fault(fault);
        }
    };
    if let Err(fault) = session.client_connection_lost(&reason) {
        tracing::warn!(plugin = %name, %peer, %fault, "guest faulted in client-connection-lost");
        return ConnectorEnd::Fault(fault);
    }
    ConnectorEnd::Lost(reason)
}

/// Resolves `host` and tries each address in turn.
async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    let mut last = format!("{host:?} resolved to no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}
