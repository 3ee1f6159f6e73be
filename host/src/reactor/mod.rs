//! The reactor: binds every listener, starts every connector, and runs until
//! told to stop (or, with no listeners, until every connector has finished,
//! as the seed's client stops its reactor when its connection ends). Then
//! it shuts down gracefully within a deadline. Told to reload, it re-reads
//! its config and changes what it serves without dropping a connection
//! ([`reload`]).
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | this file | [`Reactor`]: start-up, the run loop ([`Control`]), the shutdown |
//! | [`reload`] | a live reload: what stays, what starts, what drains |

pub mod reload;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::{Config, ConnectConfig};
use crate::connector::ConnectorStats;
use crate::listener::{BindError, Listener, ListenerHandle, ListenerStats, Target};
use crate::metrics::{Health, View};
use crate::outbound::{Dialer, OutboundStats};
use crate::runtime::plugin::Dial;
use crate::runtime::{Plugin, Runtime};
use crate::shared::Instances;
use crate::shutdown::{ShutdownController, ShutdownSignal, TaskGuard};

pub use reload::{ReloadError, ReloadReport};

/// How long connections get to reset once the shutdown deadline passed.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Everything finished: every connector ended, or a stop request was
    /// followed by a clean shutdown within the deadline.
    Clean,
    /// Connections were still open when the shutdown deadline passed.
    DeadlineExceeded,
    /// A second stop request forced the exit.
    Forced,
}

/// What a running reactor can be told ([`Reactor::run`]).
#[derive(Debug)]
pub enum Control {
    /// Shut down gracefully; a second one forces the end (SIGINT, SIGTERM).
    Stop,
    /// Re-read the config file and apply it, or change nothing if it does
    /// not load (SIGHUP); the outcome goes to the sender, if any.
    Reload(Option<oneshot::Sender<Result<ReloadReport, ReloadError>>>),
}

/// A plugin as the reactor serves it: its instances, and the counters of
/// the connections its guests open.
#[derive(Clone)]
struct PluginEntry {
    instances: Instances,
    outbound: Option<Arc<OutboundStats>>,
    /// Whether a listener serves it (its shared instances then have threads).
    listens: bool,
}

/// A listener's place: its config address, and how many entries before it
/// have the same one (port 0 stays port 0, so a reload keeps the socket
/// each picked, in order).
type ListenKey = (IpAddr, u16, usize);

/// The key of each `[[listen]]` entry of `config`, in order.
fn listen_keys(config: &Config) -> Vec<ListenKey> {
    let mut keys: Vec<ListenKey> = Vec::new();
    for l in &config.listen {
        let n = (keys.iter())
            .filter(|(ip, port, _)| (*ip, *port) == (l.interface, l.port))
            .count();
        keys.push((l.interface, l.port, n));
    }
    keys
}

/// A running `[[connect]]` entry.
struct RunningConnector {
    /// Its entry, line set to 0 (a reload keeps an unchanged entry).
    cfg: ConnectConfig,
    plugin: Arc<Plugin>,
    stats: Arc<ConnectorStats>,
    /// Fired when a reload removes the entry.
    retire: ShutdownSignal,
}

/// A reactor with its listeners bound.
pub struct Reactor {
    config: Config,
    runtime: Arc<Runtime>,
    /// Every plugin a listener or connector uses.
    plugins: HashMap<String, PluginEntry>,
    /// Bound, not yet serving (until [`run`](Self::run)).
    pending: Vec<Listener>,
    /// Every listener, in config order.
    listeners: Vec<(ListenKey, ListenerHandle)>,
    connectors: Vec<RunningConnector>,
    /// The connectors' tasks (with no listeners, the run ends with them).
    connector_tasks: JoinSet<()>,
    controller: ShutdownController,
    /// Held while serving, so that tasks started by a reload get guards.
    keeper: Option<TaskGuard>,
    health: Arc<Health>,
    view: watch::Sender<Arc<View>>,
    /// The metrics endpoint's socket, bound at start.
    metrics: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("listeners", &self.listen_addrs())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// Binds every `[[listen]]` (and `[host] metrics`). Nothing is served
    /// until [`run`](Self::run). Fails on the first address that cannot be
    /// bound, having bound nothing that stays open.
    pub fn bind(config: Config, runtime: Runtime) -> Result<Reactor, BindError> {
        let runtime = Arc::new(runtime);
        let controller = ShutdownController::new();
        let metrics = match config.host.metrics {
            Some(addr) => Some(crate::metrics::bind(addr).map_err(|source| BindError {
                addr,
                plugin: "[host] metrics".into(),
                source,
            })?),
            None => None,
        };
        let mut reactor = Reactor {
            runtime,
            plugins: HashMap::new(),
            pending: Vec::new(),
            listeners: Vec::new(),
            connectors: Vec::new(),
            connector_tasks: JoinSet::new(),
            keeper: Some(controller.guard()),
            controller,
            health: Arc::default(),
            view: watch::Sender::new(Arc::default()),
            metrics,
            config,
        };
        let plugins: HashMap<String, Arc<Plugin>> = (reactor.config.plugins.keys())
            .filter_map(|name| Some((name.clone(), reactor.runtime.plugin(name)?)))
            .collect();
        reactor.plugins = reactor.entries(&reactor.config, &plugins, &HashMap::new());
        for (l, key) in reactor
            .config
            .listen
            .iter()
            .zip(listen_keys(&reactor.config))
        {
            let target = Target::new(l, reactor.plugins[&l.plugin].instances.clone());
            let listener = Listener::bind(l, target)?;
            reactor.listeners.push((key, listener.handle()));
            reactor.pending.push(listener);
        }
        for (name, addr) in crate::listener::activation::close_unclaimed() {
            tracing::warn!(%addr, name = ?name, "closing a socket the service manager passed: no [[listen]] entry matches it (by plugin name or port)");
        }
        reactor.publish();
        Ok(reactor)
    }

    /// Each plugin `config` uses, as the reactor serves it: `current`'s
    /// entry if its plugin is the same one (a reload reused it) and it is
    /// used the same way; else new instances (a shared pool starts its
    /// threads and, with `reactor-calls`, its instances).
    fn entries(
        &self,
        config: &Config,
        plugins: &HashMap<String, Arc<Plugin>>,
        current: &HashMap<String, PluginEntry>,
    ) -> HashMap<String, PluginEntry> {
        let used = (config.listen.iter().map(|l| (&l.plugin, true)))
            .chain(config.connect.iter().map(|c| (&c.plugin, false)));
        let mut served: HashMap<&String, bool> = HashMap::new();
        for (name, listens) in used {
            *served.entry(name).or_default() |= listens;
        }
        let mut entries = HashMap::new();
        for (name, listens) in served {
            let plugin = plugins[name].clone();
            if let Some(e) = current.get(name)
                && Arc::ptr_eq(e.instances.plugin(), &plugin)
                && e.listens == listens
            {
                entries.insert(name.clone(), e.clone());
                continue;
            }
            let mut outbound = None;
            let dialer = (!plugin.grants().is_empty()).then(|| {
                let d = Dialer::new(
                    plugin.clone(),
                    self.controller.signal_handle(),
                    self.controller.weak_guard(),
                );
                outbound = Some(d.stats().clone());
                Arc::new(d) as Arc<dyn Dial>
            });
            let instances = Instances::new(plugin, listens, dialer);
            entries.insert(
                name.clone(),
                PluginEntry {
                    instances,
                    outbound,
                    listens,
                },
            );
        }
        entries
    }

    /// What the plugin called `name`'s guests opened, were refused and
    /// failed to open (plugins with `connect` grants).
    pub fn outbound_stats(&self, name: &str) -> Option<&Arc<OutboundStats>> {
        self.plugins.get(name)?.outbound.as_ref()
    }

    /// How the plugin called `name` gets its instances (its shared pool,
    /// with the batch counters), if a listener or connector uses it.
    pub fn instances(&self, name: &str) -> Option<&Instances> {
        self.plugins.get(name).map(|e| &e.instances)
    }

    /// The bound address of each listener, in config order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, h)| h.local_addr()).collect()
    }

    /// The metrics endpoint's address, if `[host] metrics` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Each `[[connect]]` entry's TLS counters, in config order.
    pub fn connector_tls_stats(&self) -> Vec<Arc<crate::tls::TlsStats>> {
        self.connectors
            .iter()
            .map(|c| c.stats.tls.clone())
            .collect()
    }

    /// Each listener's counters, in config order.
    pub fn stats(&self) -> Vec<Arc<ListenerStats>> {
        (self.listeners.iter())
            .map(|(_, h)| h.stats().clone())
            .collect()
    }

    /// Reloads, ready, shutting down: what `/readyz` and the reload
    /// counters read.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Puts what is served now where `/metrics` reads it.
    fn publish(&self) {
        let plugins = (self.plugins.iter())
            .map(|(name, e)| crate::metrics::PluginView {
                name: name.clone(),
                plugin: e.instances.plugin().clone(),
                outbound: e.outbound.clone(),
            })
            .collect();
        let listeners = self.listeners.iter().map(|(_, h)| h.clone()).collect();
        let connectors = (self.connectors.iter())
            .map(|c| crate::metrics::ConnectorView {
                target: format!("{}:{}", c.cfg.host, c.cfg.port),
                plugin: c.cfg.plugin.clone(),
                stats: c.stats.clone(),
            })
            .collect();
        self.view.send_replace(Arc::new(View {
            listeners,
            plugins,
            connectors,
        }));
    }

    /// Starts `cfg`'s connector.
    fn start_connector(&mut self, mut cfg: ConnectConfig) {
        cfg.line = 0;
        let entry = &self.plugins[&cfg.plugin];
        let instances = entry.instances.clone();
        let running = RunningConnector {
            plugin: instances.plugin().clone(),
            stats: Arc::default(),
            retire: ShutdownSignal::default(),
            cfg: cfg.clone(),
        };
        let shutdown = self.controller.subscribe();
        let retired = running.retire.subscribe();
        let stats = running.stats.clone();
        let guard = self.keeper.clone();
        self.connector_tasks.spawn(async move {
            crate::connector::run(cfg, instances, shutdown, retired, stats).await;
            drop(guard);
        });
        self.connectors.push(running);
    }

    /// Serves until told to stop, then shuts down: stops accepting, tells
    /// every connection to lose-connection (flushing its output), and
    /// waits up to `[host] shutdown-timeout`. A second [`Control::Stop`]
    /// forces the end. With no listeners the run also ends once every
    /// connector has finished. [`Control::Reload`] re-reads the config
    /// file and applies it ([`reload`]).
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> RunEnd {
        let keeper = self.keeper.clone().expect("a reactor runs once");
        for l in std::mem::take(&mut self.pending) {
            tokio::spawn(l.serve(self.controller.signal_handle(), keeper.clone()));
        }
        for c in self.config.connect.clone() {
            self.start_connector(c);
        }
        self.publish();
        // Served until the run returns, through the shutdown.
        let metrics = self.metrics.take().map(|listener| {
            let metrics = crate::metrics::Metrics::new(self.health.clone(), self.view.subscribe());
            tokio::spawn(crate::metrics::serve(listener, Arc::new(metrics)))
        });
        self.health.ready.store(true, Ordering::Relaxed);
        let stopped = loop {
            if self.listeners.is_empty() && self.connector_tasks.is_empty() {
                break false;
            }
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Stop) => break true,
                    Some(Control::Reload(reply)) => {
                        let outcome = self.reload().await;
                        if let Some(reply) = reply {
                            let _ = reply.send(outcome);
                        }
                    }
                    // Nobody can tell it to stop any more: serve on.
                    None => std::future::pending::<()>().await,
                },
                Some(_) = self.connector_tasks.join_next(), if self.listeners.is_empty() => {}
            }
        };
        self.health.ready.store(false, Ordering::Relaxed);
        self.keeper = None;
        drop(keeper);
        let end = if stopped {
            self.shut_down(&mut control).await
        } else {
            // Every connector ended: wait for the connections their guests
            // opened (they hold guards too).
            self.controller.wait().await;
            RunEnd::Clean
        };
        // The shared instances' threads go with the reactor.
        for e in self.plugins.values() {
            if let Some(pool) = e.instances.pool() {
                pool.stop();
            }
        }
        if let Some(m) = metrics {
            m.abort();
        }
        end
    }

    /// The shutdown after a stop request: stop accepting, let connections
    /// end on their own for `[host] drain-timeout`, tell those left to
    /// lose-connection, and reset whatever is still open at
    /// `shutdown-timeout` (counted from the stop).
    async fn shut_down(&mut self, control: &mut mpsc::Receiver<Control>) -> RunEnd {
        let deadline = self.config.host.shutdown_timeout;
        let drain = self.config.host.drain_timeout;
        let started = tokio::time::Instant::now();
        // Stop accepting first (what the kernel queued is still served).
        for (_, l) in &self.listeners {
            l.close(std::time::Duration::from_secs(1)).await;
        }
        let controller = &mut self.controller;
        if !drain.is_zero() {
            tracing::info!(drain = ?drain, timeout = ?deadline, "shutting down: stopped accepting; open connections may end on their own during the drain");
            tokio::select! {
                () = controller.wait() => return RunEnd::Clean,
                () = tokio::time::sleep(drain) => {}
                () = second_stop(control) => return forced(controller).await,
            }
        }
        tracing::info!(timeout = ?deadline, "shutting down: closing connections");
        controller.signal();
        tokio::select! {
            () = controller.wait() => RunEnd::Clean,
            () = tokio::time::sleep_until(started + deadline) => {
                // Output still queued would be lost behind a clean FIN that
                // looks complete: every connection still open resets instead.
                let reset = controller.abort(ABORT_GRACE).await;
                tracing::warn!(timeout = ?deadline, reset, "shutdown deadline passed with connections still open: {reset} reset, their unsent output dropped");
                RunEnd::DeadlineExceeded
            }
            () = second_stop(control) => forced(controller).await,
        }
    }
}

/// Returns at a second stop request during a shutdown; a reload asked
/// for meanwhile is refused.
async fn second_stop(control: &mut mpsc::Receiver<Control>) {
    loop {
        match control.recv().await {
            Some(Control::Stop) => return,
            Some(Control::Reload(reply)) => {
                tracing::warn!("reload requested while shutting down: ignored");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ReloadError(vec![
                        "the reactor is shutting down".into(),
                    ])));
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// The end forced by a second stop request: every connection resets.
async fn forced(controller: &mut ShutdownController) -> RunEnd {
    let reset = controller.abort(ABORT_GRACE).await;
    tracing::warn!(
        reset,
        "second stop request: exiting now; {reset} connection(s) still open were reset"
    );
    RunEnd::Forced
}
