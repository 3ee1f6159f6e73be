//! The accept loop: Twisted's `reactor.listenTCP(port, factory)`.
//!
//! It binds, accepts, caps live connections per listener (a connection over
//! the cap is closed at once and counted), backs off when the process is out
//! of file descriptors instead of spinning, and hands each socket to its own
//! task: the TLS handshake if the listener has `tls` (before any guest
//! runs: a failed handshake costs no instance), a fresh instance,
//! `build-protocol`, then [`crate::connection::run`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::config::ListenConfig;
use crate::connection::{self, End, Options, StartTls};
use crate::runtime::Plugin;
use crate::runtime::pool::InstancePermit;
use crate::shared::Instances;
use crate::shared::threads::LiveGuard;
use crate::shutdown::{Shutdown, ShutdownSignal, TaskGuard};
use crate::tls::{ServerSide, Side, Swappable, TlsStats};
use crate::wire::Wire;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for plugin {plugin:?}: {source}{hint}", hint = bind_hint(source))]
pub struct BindError {
    /// The address that failed.
    pub addr: SocketAddr,
    /// The plugin it was for.
    pub plugin: String,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another process is using the port; pick another or stop it)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        io::ErrorKind::AddrNotAvailable => " (no local interface has that address)",
        _ => "",
    }
}

/// Counters for one listener, readable while it runs.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted and handed to a protocol.
    pub accepted: AtomicU64,
    /// Connections closed at once because the listener was at
    /// `max-connections`.
    pub rejected_over_limit: AtomicU64,
    /// Connections the guest's factory refused (`build-protocol` gave none).
    pub refused_by_factory: AtomicU64,
    /// Connections that ended with a guest fault (trap or CPU limit).
    pub faulted: AtomicU64,
    /// Connections that could not get an instance (pool exhausted).
    pub instantiation_failed: AtomicU64,
    /// Connections closed at once because the plugin was at its
    /// `max-instances`.
    pub rejected_at_capacity: AtomicU64,
    /// TLS handshakes, completed and failed by kind, and refused
    /// `start-tls` calls.
    pub tls: Arc<TlsStats>,
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    instances: Instances,
    limit: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    idle_timeout: Option<Duration>,
    /// `tls`: swappable, so that a reload can replace the certificates of
    /// a listener that keeps its socket.
    tls: Option<Arc<Swappable<ServerSide>>>,
}

impl Listener {
    /// Binds the configured address. Binding happens before anything is
    /// served, so a bad address fails the whole start.
    pub fn bind(cfg: &ListenConfig, instances: Instances) -> Result<Listener, BindError> {
        let addr = SocketAddr::new(cfg.interface, cfg.port);
        let err = |source| BindError {
            addr,
            plugin: cfg.plugin.clone(),
            source,
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.bind(addr).map_err(err)?;
        let listener = socket.listen(cfg.backlog).map_err(err)?;
        Ok(Listener {
            listener,
            instances,
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            stats: Arc::default(),
            idle_timeout: cfg.idle_timeout,
            tls: cfg.tls.clone().map(|t| Arc::new(Swappable::new(t))),
        })
    }

    /// The listener's TLS settings, for a reload to replace.
    pub fn tls(&self) -> Option<&Arc<Swappable<ServerSide>>> {
        self.tls.as_ref()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// This listener's counters.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Accepts until shutdown. Each connection runs in its own task holding
    /// a clone of `guard`, so the reactor can wait for them to finish.
    ///
    /// For a plugin with shared instances, the first instance's thread
    /// (see [`crate::shared::threads`]) accepts, and a
    /// connection stays there unless that instance has more live
    /// connections than another: then it moves to the least busy one's
    /// thread. So connections spread evenly, and a connection's socket,
    /// timers and callbacks stay on its instance's thread.
    pub async fn serve(self, notify: ShutdownSignal, guard: TaskGuard) {
        let addr = self.local_addr();
        let plugin_name = self.instances.plugin().name.clone();
        tracing::info!(plugin = %plugin_name, %addr, "listening");
        let first = self.instances.pool().and_then(|p| p.thread(0)).cloned();
        let acceptor = Acceptor {
            plugin: self.instances.plugin().clone(),
            instances: self.instances,
            idle_timeout: self.idle_timeout,
            tls: self.tls.clone(),
            stats: self.stats.clone(),
            limit: self.limit.clone(),
            notify,
            guard,
            addr,
        };
        match first {
            Some(first) => {
                let listener = match self.listener.into_std() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(plugin = %plugin_name, %addr, error = %e, "cannot hand the listening socket to the shared instances' threads");
                        return;
                    }
                };
                // The first instance's thread accepts for all of them.
                let accepting = first.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => acceptor.accept_loop(l, Some(0)).await,
                        Err(e) => {
                            tracing::error!(plugin = %acceptor.plugin.name, addr = %acceptor.addr, error = %e, "cannot register the listening socket")
                        }
                    }
                });
                let _ = accepting.await;
            }
            None => acceptor.accept_loop(self.listener, None).await,
        }
        tracing::info!(plugin = %plugin_name, %addr, "stopped listening");
    }
}

/// What a listener's accept loop needs, so that it can run on a shared
/// instance's thread.
struct Acceptor {
    plugin: Arc<Plugin>,
    instances: Instances,
    idle_timeout: Option<Duration>,
    tls: Option<Arc<Swappable<ServerSide>>>,
    stats: Arc<ListenerStats>,
    limit: Arc<Semaphore>,
    notify: ShutdownSignal,
    guard: TaskGuard,
    addr: SocketAddr,
}

impl Acceptor {
    /// Accepts on `listener` until shutdown. `thread`: the shared instance
    /// whose thread this loop runs on, if any; a connection assigned to
    /// another instance moves to that instance's thread.
    async fn accept_loop(&self, listener: TcpListener, thread: Option<usize>) {
        let shutdown = self.notify.subscribe();
        let (plugin_name, addr) = (&self.plugin.name, self.addr);
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = shutdown.recv() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(plugin = %plugin_name, %addr, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.recv() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(plugin = %plugin_name, %addr, error = %e, "accept failed");
                    continue;
                }
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                self.stats
                    .rejected_over_limit
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %plugin_name, %peer, "max-connections reached; closing new connection");
                drop(stream);
                continue;
            };
            // An instance of its own is reserved now, so that a plugin at
            // its cap refuses here, with a count, rather than failing deep
            // in instantiation.
            let reserved = if let Instances::PerConnection { plugin, .. } = &self.instances {
                match plugin.reserve_instance() {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let n = self
                            .stats
                            .rejected_at_capacity
                            .fetch_add(1, Ordering::Relaxed);
                        // One line for the first refusal of a burst, then
                        // one per thousand.
                        if n.is_multiple_of(1000) {
                            tracing::warn!(plugin = %plugin_name, %peer, refused = n + 1, "{e}; closing new connections until one ends");
                        }
                        drop(stream);
                        continue;
                    }
                }
            } else {
                None
            };
            let _ = stream.set_nodelay(true);
            let task = ServerConnection {
                instances: self.instances.clone(),
                idle_timeout: self.idle_timeout,
                tls: self.tls.clone(),
                stats: self.stats.clone(),
                peer,
                reserved,
            };
            let conn_shutdown = self.notify.subscribe();
            let conn_guard = self.guard.clone();
            let pool = self.instances.pool();
            let live = thread.zip(pool).map(|(here, pool)| pool.assign(here));
            let instance = live.as_ref().map(LiveGuard::instance);
            if instance == thread {
                tokio::spawn(async move {
                    task.run(stream, instance, &conn_shutdown).await;
                    drop((live, permit, conn_guard));
                });
                continue;
            }
            // Another instance is less busy: the socket moves to its
            // thread's reactor.
            let Some(thread) = instance.zip(pool).and_then(|(i, p)| p.thread(i)) else {
                continue;
            };
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(plugin = %plugin_name, %peer, error = %e, "cannot move the connection to its instance's thread; closing it");
                    continue;
                }
            };
            thread.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => task.run(stream, instance, &conn_shutdown).await,
                    Err(e) => {
                        tracing::debug!(plugin = %task.instances.plugin().name, peer = %task.peer, error = %e, "cannot register the connection")
                    }
                }
                drop((live, permit, conn_guard));
            });
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying at once would spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

struct ServerConnection {
    instances: Instances,
    idle_timeout: Option<Duration>,
    tls: Option<Arc<Swappable<ServerSide>>>,
    stats: Arc<ListenerStats>,
    peer: SocketAddr,
    /// The place reserved under the plugin's `max-instances`.
    reserved: Option<InstancePermit>,
}

impl ServerConnection {
    /// Serves the connection to its end: on shared instance `instance` if
    /// given (this task then runs on that instance's thread), else on a
    /// fresh instance or the next shared one.
    async fn run(self, stream: TcpStream, instance: Option<usize>, shutdown: &Shutdown) {
        let Self {
            instances,
            idle_timeout,
            tls,
            stats,
            peer,
            reserved,
        } = self;
        let name = &instances.plugin().name;
        let wire = Arc::new(Wire::new(stream));
        // The settings current now: a reload swaps them for later
        // connections only.
        let side = tls.as_ref().map(|t| t.get());
        if let Some(side) = side.as_ref().filter(|s| !s.start_tls) {
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
            idle_timeout,
            tls_stats: Some(stats.tls.clone()),
            start_tls: tls
                .filter(|_| side.as_ref().is_some_and(|s| s.start_tls))
                .map(StartTls::Server),
        };
        let session = match (&instances, instance, reserved) {
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
