//! One accepted connection's start: the TLS handshake if its listener's
//! target has `tls` (before any guest runs: a failed handshake costs no
//! instance), its instance (a fresh one, or its place on a shared one),
//! `build-protocol`, then [`crate::connection::run`] to its end; each
//! outcome counted in the listener's [`ListenerStats`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::proxy::{self, ProxyError};
use super::{ListenerStats, Target};
use crate::connection::{self, End, Options, StartTls};
use crate::runtime::GuestFault;
use crate::runtime::pool::InstancePermit;
use crate::shared::Instances;
use crate::shutdown::Shutdown;
use crate::tls::Side;
use crate::wire::Wire;

/// An accepted connection, with what its listener served when it was
/// accepted.
pub(super) struct ServerConnection {
    /// What its listener served when it was accepted.
    pub(super) target: Arc<Target>,
    pub(super) stats: Arc<ListenerStats>,
    pub(super) peer: SocketAddr,
    /// The place reserved under the plugin's `max-instances`.
    pub(super) reserved: Option<InstancePermit>,
}

impl ServerConnection {
    /// Serves the connection to its end: on shared instance `instance` if
    /// given (this task then runs on that instance's thread), else on a
    /// fresh instance or the next shared one.
    pub(super) async fn run(self, stream: TcpStream, instance: Option<usize>, shutdown: &Shutdown) {
        let Self {
            target,
            stats,
            mut peer,
            reserved,
        } = self;
        let instances = &target.instances;
        let name = &instances.plugin().name;
        let mut wire = Wire::counted(stream, stats.traffic.clone());
        if let Some(policy) = &target.proxy {
            let header = proxy::read_header(wire.tcp_mut(), peer, policy);
            let result = tokio::select! {
                r = header => r,
                () = shutdown.recv() => return,
            };
            match result {
                Ok(Some(original)) => {
                    tracing::debug!(plugin = %name, via = %peer, peer = %original.source, "PROXY header read");
                    peer = original.source;
                    wire = wire.behind_proxy(original.source, original.destination);
                }
                Ok(None) => {}
                Err(e) => {
                    let counter = match e {
                        ProxyError::Untrusted => &stats.proxy_untrusted,
                        _ => &stats.proxy_header,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(plugin = %name, %peer, reason = e.label(), error = %e, "PROXY protocol: connection refused");
                    return;
                }
            }
        }
        let wire = Arc::new(wire);
        let side = target.tls.as_ref();
        if let Some(side) = side.filter(|s| !s.start_tls) {
            let handshake = wire.handshake(Side::Server(side), Some(&stats.tls));
            let result = tokio::select! {
                r = handshake => r,
                () = shutdown.recv() => return,
            };
            if let Err(e) = result {
                tracing::info!(plugin = %name, %peer, failure = e.failure.label(), error = %e, "TLS handshake failed; connection closed");
                return;
            }
        }
        let options = Options {
            idle_timeout: target.idle_timeout,
            tls_stats: Some(stats.tls.clone()),
            start_tls: side
                .filter(|s| s.start_tls)
                .map(|s| StartTls::Server(s.clone())),
        };
        let session = match (instances, instance, reserved) {
            (Instances::Shared(pool), Some(i), _) => pool.session_on(i),
            (Instances::Shared(pool), None, _) => pool.next_session(),
            (Instances::PerConnection { plugin, .. }, _, reserved) => match reserved {
                Some(permit) => instances.own_session(permit),
                None => plugin
                    .reserve_instance()
                    .and_then(|p| instances.own_session(p)),
            },
        };
        let mut session = match session {
            Ok(s) => s,
            Err(GuestFault::Backoff(wait)) => {
                // Said once per delay, by the pool; counted here.
                stats.refused_backoff.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(plugin = %name, %peer, ?wait, "shared instance in crash-loop backoff; closing connection");
                return;
            }
            Err(e) => {
                stats.instantiation_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(plugin = %name, %peer, error = %e, "cannot instantiate guest; closing connection");
                return;
            }
        };
        match session.build_server_protocol(peer) {
            Ok(true) => {}
            Ok(false) => {
                stats.refused_by_factory.fetch_add(1, Ordering::Relaxed);
                tracing::info!(plugin = %name, %peer, "factory refused the connection");
                return;
            }
            Err(fault) => {
                stats.faulted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %name, %peer, %fault, "guest faulted in build-protocol; connection aborted");
                wire.abort();
                return;
            }
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(plugin = %name, %peer, "connection made");
        match connection::run(wire, &mut session, shutdown, &options).await {
            End::Closed(reason) => {
                tracing::debug!(plugin = %name, %peer, ?reason, "connection lost")
            }
            End::Fault(fault) => {
                stats.faulted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %name, %peer, %fault, "guest faulted; connection aborted");
            }
        }
    }
}
