//! Connections a guest opens (`reactor.connect-tcp`): the [`Dialer`] of a
//! plugin with `connect` grants checks each request against the grants,
//! resolves the name itself and checks the addresses again, connects under
//! the guest's timeout, and then runs the connection like any other
//! ([`crate::connection::run`]) on the instance that asked, whose
//! `outbound-factory` hears the outcome. What was opened, refused and
//! failed is counted ([`OutboundStats`]).
//!
//! The connection's task holds the instance, so the instance lives until
//! its last connection ends, and a reactor guard, so a shutdown waits for
//! it and flushes it like any connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::connection::{self, End};
use crate::grants::Check;
use crate::runtime::bindings::Reason;
use crate::runtime::guest::SharedGuest;
use crate::runtime::outbound::{ConnectRequest, OutboundSlot};
use crate::runtime::plugin::Dial;
use crate::runtime::{Plugin, Session};
use crate::shutdown::{ShutdownSignal, WeakTaskGuard};

/// What a plugin's guests asked to open, and how it went.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Connections made (a protocol was asked for).
    pub opened: AtomicU64,
    /// Requests the grants refused.
    pub refused: AtomicU64,
    /// Attempts that failed otherwise: no such name, refused by the peer,
    /// timed out, or the reactor was shutting down.
    pub failed: AtomicU64,
}

/// Makes one plugin's guests' outbound connections.
#[derive(Clone)]
pub struct Dialer {
    plugin: Arc<Plugin>,
    shutdown: ShutdownSignal,
    guards: WeakTaskGuard,
    stats: Arc<OutboundStats>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// The dialer of `plugin`, whose connections hear `shutdown` and each
    /// hold a guard from `guards`.
    pub fn new(plugin: Arc<Plugin>, shutdown: ShutdownSignal, guards: WeakTaskGuard) -> Dialer {
        Dialer {
            plugin,
            shutdown,
            guards,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<OutboundStats> {
        &self.stats
    }

    /// Resolves and connects, within the grants; the error is the message
    /// `client-connection-failed` carries.
    async fn connect(&self, req: &ConnectRequest) -> Result<(TcpStream, SocketAddr), String> {
        let grants = self.plugin.grants();
        let (host, port) = (req.host.as_str(), req.port);
        let by_name = match grants.check(host, port) {
            Check::Refused(why) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %self.plugin.name, host, port, "outbound connection refused: {why}");
                return Err(format!("refused: {why}"));
            }
            Check::ByName => true,
            Check::ByAddress => false,
        };
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((literal, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|a| by_name || grants.allows(*a))
            .collect();
        if allowed.is_empty() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let list: Vec<String> = resolved.iter().map(ToString::to_string).collect();
            let why = format!(
                "{host} resolves to {}, none of them granted by {}",
                list.join(", "),
                grants.describe()
            );
            tracing::warn!(plugin = %self.plugin.name, host, port, "outbound connection refused: {why}");
            return Err(format!("refused: {why}"));
        }
        let mut last = String::new();
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok((s, addr)),
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last)
    }

    /// One request, to its end: the attempt, then the connection.
    async fn run(self, guest: Arc<SharedGuest>, req: ConnectRequest, slot: OutboundSlot) {
        let name = self.plugin.name.clone();
        let shutdown = self.shutdown.subscribe();
        let attempt = tokio::time::timeout(req.timeout, self.connect(&req));
        let outcome = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err(format!(
                "connecting to {}:{} timed out after {:?}", req.host, req.port, req.timeout
            ))),
            () = shutdown.recv() => Err("the reactor is shutting down".into()),
        };
        let (stream, remote) = match outcome {
            Ok(x) => x,
            Err(message) => {
                if !message.starts_with("refused") {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(plugin = %name, host = %req.host, port = req.port, %message, "outbound connection failed");
                }
                if let Err(fault) = guest.outbound_failed(req.token, &Reason::Failed(message)) {
                    tracing::warn!(plugin = %name, %fault, "guest faulted in client-connection-failed");
                }
                return;
            }
        };
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut session = Session::shared(&self.plugin, guest.clone(), None);
        match session.build_outbound_protocol(req.token, remote) {
            Ok(true) => {}
            Ok(false) => {
                drop((session, stream));
                if let Err(fault) = guest.outbound_lost(req.token, &Reason::Done) {
                    tracing::warn!(plugin = %name, %fault, "guest faulted in client-connection-lost");
                }
                return;
            }
            Err(fault) => {
                tracing::warn!(plugin = %name, %remote, %fault, "guest faulted in build-protocol; outbound connection aborted");
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                return;
            }
        }
        tracing::debug!(plugin = %name, %remote, "outbound connection made");
        let end = connection::run(
            std::sync::Arc::new(crate::wire::Wire::new(stream)),
            &mut session,
            &shutdown,
            &connection::Options::default(),
        )
        .await;
        drop(session);
        drop(slot);
        match end {
            End::Closed(reason) => {
                if let Err(fault) = guest.outbound_lost(req.token, &reason) {
                    tracing::warn!(plugin = %name, %fault, "guest faulted in client-connection-lost");
                }
            }
            End::Fault(fault) => {
                tracing::warn!(plugin = %name, %remote, %fault, "guest faulted; outbound connection aborted");
            }
        }
    }
}

impl Dial for Dialer {
    fn dial(&self, guest: Arc<SharedGuest>, request: ConnectRequest, slot: OutboundSlot) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(plugin = %self.plugin.name, "connect-tcp outside the reactor: dropped");
            return;
        };
        let guard = self.guards.upgrade();
        let me = self.clone();
        rt.spawn(async move {
            if guard.is_none() {
                let reason = Reason::Failed("the reactor has stopped".into());
                let _ = guest.outbound_failed(request.token, &reason);
                return;
            }
            me.run(guest, request, slot).await;
            drop(guard);
        });
    }
}
