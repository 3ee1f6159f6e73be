//! The accept loop: Twisted's `reactor.listenTCP(port, factory)`.
//!
//! It binds, accepts, caps live connections per listener (a connection over
//! the cap is closed at once and counted), backs off when the process is out
//! of file descriptors instead of spinning, and hands each socket to its own
//! task (`start`): the TLS handshake if the listener has `tls` (before
//! any guest runs: a failed handshake costs no instance), a fresh
//! instance, `build-protocol`, then [`crate::connection::run`].
//!
//! What it serves (its plugin's instances, `max-connections`,
//! `idle-timeout`, `tls`) is a [`Target`] that a config reload replaces
//! while the socket stays bound ([`ListenerHandle::retarget`]): each
//! connection is served by the target current when it was accepted, to
//! its end. A reload that drops the listener stops its accept loop
//! ([`ListenerHandle::close`]); its connections drain. A closing listener
//! first accepts and serves what the kernel already queued, so that a
//! stop or a reload does not reset connections it had taken.
//!
//! # Layout
//! - this file: binding (`reuse-port` is `SO_REUSEPORT`), the accept loop,
//!   [`Target`], [`ListenerStats`];
//! - `start`: one accepted connection's start, to its end;
//! - [`proxy`]: the PROXY protocol header, read first where the listener
//!   asks for it;
//! - [`activation`]: sockets passed by a service manager.

pub mod activation;
pub mod proxy;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::config::ListenConfig;
use crate::shared::Instances;
use crate::shared::threads::LiveGuard;
mod start;

use start::ServerConnection;

use crate::shutdown::{ShutdownSignal, TaskGuard};
use crate::stats::Traffic;
use crate::tls::{ServerSide, TlsStats};

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

/// Counters for one listener, readable while it runs; they keep counting
/// across reloads that keep the listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now (counted against `max-connections`).
    pub active: AtomicUsize,
    /// Bytes received and sent on its connections.
    pub traffic: Arc<Traffic>,
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
    /// Connections closed at once because their shared instance is waiting
    /// out a crash-loop backoff.
    pub refused_backoff: AtomicU64,
    /// Connections refused because they came from a source not in
    /// `proxy-from`.
    pub proxy_untrusted: AtomicU64,
    /// Connections closed because they did not open with a whole, valid
    /// PROXY header of an accepted version in time.
    pub proxy_header: AtomicU64,
    /// TLS handshakes, completed and failed by kind, and refused
    /// `start-tls` calls.
    pub tls: Arc<TlsStats>,
}

/// What a listener serves: replaced as a whole by a reload that keeps its
/// socket.
#[derive(Debug, Clone)]
pub struct Target {
    /// The plugin's instances.
    pub instances: Instances,
    /// `max-connections`.
    pub max_connections: usize,
    /// `idle-timeout`.
    pub idle_timeout: Option<Duration>,
    /// `tls`.
    pub tls: Option<Arc<ServerSide>>,
    /// `proxy-protocol` and `proxy-from`.
    pub proxy: Option<Arc<proxy::ProxyPolicy>>,
}

impl Target {
    /// What `cfg` says to serve with `instances`.
    pub fn new(cfg: &ListenConfig, instances: Instances) -> Target {
        Target {
            instances,
            max_connections: cfg.max_connections,
            idle_timeout: cfg.idle_timeout,
            tls: cfg.tls.clone(),
            proxy: cfg.proxy.clone(),
        }
    }

    /// The shared pool whose first thread accepts for this target, if any
    /// (a target on another pool moves the accept loop there).
    fn home(&self) -> Option<usize> {
        (self.instances.pool())
            .filter(|p| p.thread(0).is_some())
            .map(|p| Arc::as_ptr(p) as usize)
    }
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    handle: ListenerHandle,
}

/// What the reactor keeps of a listener it started: to replace what it
/// serves, to close it, to read its counters.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    addr: SocketAddr,
    target: Arc<watch::Sender<Arc<Target>>>,
    stats: Arc<ListenerStats>,
    /// Fired when a reload removes the listener.
    closed: ShutdownSignal,
    /// Set once the accept loop has ended and the socket is closed.
    stopped: Arc<watch::Sender<bool>>,
}

impl ListenerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<ListenerStats> {
        &self.stats
    }

    /// What it serves now.
    pub fn target(&self) -> Arc<Target> {
        self.target.borrow().clone()
    }

    /// Serves `target` to the connections accepted from now on; those
    /// already open keep theirs.
    pub fn retarget(&self, target: Target) {
        self.target.send_replace(Arc::new(target));
    }

    /// Stops accepting and closes the socket; open connections go on to
    /// their end. Returns once the socket is closed (a connection attempt
    /// is then refused), or after `limit`.
    pub async fn close(&self, limit: Duration) {
        self.closed.fire();
        let mut stopped = self.stopped.subscribe();
        let _ = tokio::time::timeout(limit, stopped.wait_for(|s| *s)).await;
    }
}

/// Binds and listens on the address of `cfg` (with `SO_REUSEPORT` if it
/// has `reuse-port`: then other sockets with it may share the port).
/// A socket a service manager passed (systemd socket activation) that
/// matches `cfg` is served instead of binding one; see [`activation`].
pub fn bind(cfg: &ListenConfig) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::new(cfg.interface, cfg.port);
    let err = |source| BindError {
        addr,
        plugin: cfg.plugin.clone(),
        source,
    };
    if let Some(inherited) = activation::listener_for(cfg) {
        return inherited.map_err(err);
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if cfg.reuse_port {
        socket.set_reuseport(true).map_err(err)?;
        if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
            .is_ok_and(|v| v.trim() == "0")
        {
            tracing::info!(%addr, "reuse-port: net.ipv4.tcp_migrate_req is 0, so connections still completing their handshake when this process stops are reset; set it to 1 to hand them to the other processes (docs/deploying.md)");
        }
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(cfg.backlog).map_err(err)
}

impl Listener {
    /// Binds the configured address and will serve `target`. Binding
    /// happens before anything is served, so a bad address fails the whole
    /// start (or the reload).
    pub fn bind(cfg: &ListenConfig, target: Target) -> Result<Listener, BindError> {
        Ok(Listener::new(bind(cfg)?, target))
    }

    /// A listener on a bound socket (from [`bind()`]) that will serve
    /// `target`.
    pub fn new(listener: TcpListener, target: Target) -> Listener {
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        Listener {
            listener,
            handle: ListenerHandle {
                addr,
                target: Arc::new(watch::Sender::new(Arc::new(target))),
                stats: Arc::default(),
                closed: ShutdownSignal::default(),
                stopped: Arc::new(watch::Sender::new(false)),
            },
        }
    }

    /// The handle the reactor keeps.
    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// This listener's counters.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.handle.stats.clone()
    }

    /// Accepts until shutdown, or until [`ListenerHandle::close`]. Each
    /// connection runs in its own task holding a clone of `guard`, so the
    /// reactor can wait for them to finish.
    ///
    /// For a plugin with shared instances, the first instance's thread
    /// (see [`crate::shared::threads`]) accepts, and a
    /// connection stays there unless that instance has more live
    /// connections than another: then it moves to the least busy one's
    /// thread. So connections spread evenly, and a connection's socket,
    /// timers and callbacks stay on its instance's thread. When a reload
    /// gives the listener another pool (or none), the accept loop moves
    /// with it.
    pub async fn serve(self, notify: ShutdownSignal, guard: TaskGuard) {
        let Listener { listener, handle } = self;
        let addr = handle.addr;
        tracing::info!(plugin = %handle.target().instances.plugin().name, %addr, "listening");
        let mut listener = Some(listener);
        let mut std_listener = None;
        // Where connections for a target without shared threads run.
        let reactor = tokio::runtime::Handle::current();
        loop {
            let target = handle.target.subscribe();
            // The target this loop starts with: its pool's first thread
            // is where the loop runs (and the loop holds it, so that the
            // pool outlives the loop).
            let home = target.borrow().clone();
            let first = home.instances.pool().and_then(|p| p.thread(0)).cloned();
            let acceptor = Acceptor {
                target,
                home,
                reactor: reactor.clone(),
                stats: handle.stats.clone(),
                notify: notify.clone(),
                closed: handle.closed.clone(),
                guard: guard.clone(),
                addr,
            };
            let next = match (first, listener.take(), std_listener.take()) {
                (None, Some(l), _) => acceptor.accept_loop(l, None).await,
                (None, None, Some(l)) => match TcpListener::from_std(l) {
                    Ok(l) => acceptor.accept_loop(l, None).await,
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "cannot register the listening socket");
                        None
                    }
                },
                (Some(first), l, s) => {
                    let l = match (l.map(TcpListener::into_std), s) {
                        (Some(Ok(l)), _) | (None, Some(l)) => l,
                        (Some(Err(e)), _) => {
                            tracing::error!(%addr, error = %e, "cannot hand the listening socket to the shared instances' threads");
                            break;
                        }
                        (None, None) => break,
                    };
                    // The first instance's thread accepts for all of them.
                    let accepting = first.spawn(async move {
                        match TcpListener::from_std(l) {
                            Ok(l) => acceptor.accept_loop(l, Some(0)).await,
                            Err(e) => {
                                tracing::error!(addr = %acceptor.addr, error = %e, "cannot register the listening socket");
                                None
                            }
                        }
                    });
                    accepting.await.ok().flatten()
                }
                (None, None, None) => break,
            };
            // The loop returns its socket when the target moved to another
            // thread; otherwise it is done.
            match next {
                Some((l, previous)) => {
                    tracing::debug!(%addr, "the accept loop follows its new target");
                    std_listener = Some(l);
                    // The loop has left its thread: the pool it ran on may go.
                    drop(previous);
                }
                None => break,
            }
        }
        tracing::info!(%addr, "stopped listening");
        handle.stopped.send_replace(true);
    }
}

/// What a listener's accept loop needs, so that it can run on a shared
/// instance's thread.
struct Acceptor {
    target: watch::Receiver<Arc<Target>>,
    /// The target the loop started with, whose pool's first thread it runs
    /// on (if it has one).
    home: Arc<Target>,
    /// The reactor's runtime: where a connection for a target without
    /// shared threads runs.
    reactor: tokio::runtime::Handle,
    stats: Arc<ListenerStats>,
    notify: ShutdownSignal,
    closed: ShutdownSignal,
    guard: TaskGuard,
    addr: SocketAddr,
}

/// A connection counted in [`ListenerStats::active`] until dropped.
struct Active(Arc<ListenerStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Acceptor {
    /// Accepts on `listener` until shutdown or the listener is closed
    /// (then returns none), or until a reload moves the target to another
    /// pool's thread (then returns the socket, to go on accepting there,
    /// and the target it started with). The loop holds that target while
    /// it runs: a pool's threads stop when the pool is dropped, and the
    /// pool it runs on must outlive it. A connection is always served on
    /// its own target's runtime: one accepted just as a reload moved the
    /// target elsewhere goes there, never onto this loop's thread.
    /// `thread`: the shared instance whose thread this loop runs on, if
    /// any; a connection assigned to another instance moves to that
    /// instance's thread.
    async fn accept_loop(
        mut self,
        listener: TcpListener,
        thread: Option<usize>,
    ) -> Option<(std::net::TcpListener, Arc<Target>)> {
        let shutdown = self.notify.subscribe();
        let closed = self.closed.subscribe();
        let addr = self.addr;
        let home = self.home.home();
        let mut backoff = Duration::from_millis(5);
        // Closing: what the kernel already queued is accepted and served
        // before the socket closes (closing it would reset those). With
        // `reuse-port`, `net.ipv4.tcp_migrate_req = 1` also hands the
        // half-open ones to the other sockets on the port.
        let mut closing = false;
        loop {
            // A reload may have moved the target while this loop was on
            // its way here.
            if !closing && self.target.borrow().home() != home {
                return Some((listener.into_std().ok()?, self.home));
            }
            let accepted = if closing {
                queued(&listener)?
            } else {
                tokio::select! {
                    r = listener.accept() => r,
                    () = shutdown.recv() => return None,
                    () = closed.recv() => {
                        closing = true;
                        continue;
                    }
                    Ok(()) = self.target.changed() => continue,
                }
            };
            let target = self.target.borrow_and_update().clone();
            let on_home = target.home() == home;
            let plugin_name = &target.instances.plugin().name;
            let (stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(plugin = %plugin_name, %addr, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.recv() => return None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(plugin = %plugin_name, %addr, error = %e, "accept failed");
                    continue;
                }
            };
            if self.stats.active.fetch_add(1, Ordering::Relaxed) >= target.max_connections {
                self.stats.active.fetch_sub(1, Ordering::Relaxed);
                self.stats
                    .rejected_over_limit
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %plugin_name, %peer, "max-connections reached; closing new connection");
                drop(stream);
                continue;
            }
            let active = Active(self.stats.clone());
            // An instance of its own is reserved now, so that a plugin at
            // its cap refuses here, with a count, rather than failing deep
            // in instantiation.
            let reserved = if let Instances::PerConnection { plugin, .. } = &target.instances {
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
            let pool = target.instances.pool().cloned();
            let task = ServerConnection {
                target,
                stats: self.stats.clone(),
                peer,
                reserved,
            };
            let conn_shutdown = self.notify.subscribe();
            let conn_guard = self.guard.clone();
            // With threads, the pool places the connection: here if this
            // loop runs on its instance's thread, else the least busy.
            let here = thread.filter(|_| on_home).unwrap_or(usize::MAX);
            let live = (pool.as_ref())
                .filter(|p| p.thread(0).is_some())
                .map(|p| p.assign(here));
            let instance = live.as_ref().map(LiveGuard::instance);
            if on_home && instance == thread {
                tokio::spawn(async move {
                    task.run(stream, instance, &conn_shutdown).await;
                    drop((live, active, conn_guard));
                });
                continue;
            }
            // Another instance is less busy, or the target moved: the
            // socket moves to the runtime it is served on.
            let runtime = match instance.zip(pool) {
                Some((i, p)) => p.thread(i).cloned(),
                None => Some(self.reactor.clone()),
            };
            let Some(thread) = runtime else {
                continue;
            };
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(plugin = %task.target.instances.plugin().name, %peer, error = %e, "cannot move the connection to its instance's thread; closing it");
                    continue;
                }
            };
            thread.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => task.run(stream, instance, &conn_shutdown).await,
                    Err(e) => {
                        tracing::debug!(plugin = %task.target.instances.plugin().name, peer = %task.peer, error = %e, "cannot register the connection")
                    }
                }
                drop((live, active, conn_guard));
            });
        }
    }
}

/// A connection the kernel already queued on `listener`, taken with one
/// non-blocking `accept(2)` (tokio's readiness may not have heard of it
/// yet); none when the queue is empty.
fn queued(listener: &TcpListener) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    let (socket, addr) = match socket2::SockRef::from(listener).accept() {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
        Err(e) => return Some(Err(e)),
    };
    let peer = addr
        .as_socket()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let stream = std::net::TcpStream::from(socket);
    Some(
        (stream.set_nonblocking(true))
            .and_then(|()| TcpStream::from_std(stream))
            .map(|s| (s, peer)),
    )
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying at once would spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
