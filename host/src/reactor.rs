//! The reactor: binds every listener, starts every connector, and runs until
//! told to stop (or, with no listeners, until every connector has finished,
//! as the seed's client stops its reactor when its connection ends). Then
//! it shuts down gracefully within a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::listener::{BindError, Listener, ListenerStats};
use crate::outbound::{Dialer, OutboundStats};
use crate::runtime::Runtime;
use crate::runtime::plugin::Dial;
use crate::shared::Instances;
use crate::shutdown::ShutdownController;

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

/// A reactor with its listeners bound.
pub struct Reactor {
    config: Config,
    /// The engine's runtime: its epoch ticker runs while it lives.
    _runtime: Arc<Runtime>,
    /// Every plugin a listener or connector uses, with its instances (a
    /// shared plugin's pool and threads live as long as the reactor).
    instances: HashMap<String, Instances>,
    /// The outbound counters of every plugin with `connect` grants.
    outbound: HashMap<String, Arc<OutboundStats>>,
    listeners: Vec<Listener>,
    /// Each `[[connect]]` entry's TLS counters, in config order.
    connector_tls: Vec<Arc<crate::tls::TlsStats>>,
    /// Made at bind, so that the dialers hold its signal.
    controller: ShutdownController,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("listeners", &self.listen_addrs())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// Binds every `[[listen]]`. Nothing is served until [`run`](Self::run).
    /// Fails on the first address that cannot be bound, having bound nothing
    /// that stays open.
    pub fn bind(config: Config, runtime: Runtime) -> Result<Reactor, BindError> {
        // Each plugin's instances, built once: a shared plugin's instances
        // get threads of their own if a listener serves it.
        let mut instances = HashMap::new();
        let mut outbound = HashMap::new();
        let controller = ShutdownController::new();
        let used = (config.listen.iter().map(|l| (&l.plugin, true)))
            .chain(config.connect.iter().map(|c| (&c.plugin, false)));
        let mut served: HashMap<&String, bool> = HashMap::new();
        for (name, listens) in used {
            *served.entry(name).or_default() |= listens;
        }
        for (name, listens) in served {
            let plugin = runtime.plugin(name).expect("config validated plugin names");
            let dialer = (!plugin.grants().is_empty()).then(|| {
                let d = Dialer::new(
                    plugin.clone(),
                    controller.signal_handle(),
                    controller.weak_guard(),
                );
                outbound.insert(name.clone(), d.stats().clone());
                Arc::new(d) as Arc<dyn Dial>
            });
            instances.insert(name.clone(), Instances::new(plugin, listens, dialer));
        }
        let mut listeners = Vec::new();
        for l in &config.listen {
            listeners.push(Listener::bind(l, instances[&l.plugin].clone())?);
        }
        let connector_tls = config.connect.iter().map(|_| Arc::default()).collect();
        Ok(Reactor {
            connector_tls,
            config,
            _runtime: Arc::new(runtime),
            instances,
            outbound,
            listeners,
            controller,
        })
    }

    /// What the plugin called `name`'s guests opened, were refused and
    /// failed to open (plugins with `connect` grants).
    pub fn outbound_stats(&self, name: &str) -> Option<&Arc<OutboundStats>> {
        self.outbound.get(name)
    }

    /// How the plugin called `name` gets its instances (its shared pool,
    /// with the batch counters), if a listener or connector uses it.
    pub fn instances(&self, name: &str) -> Option<&Instances> {
        self.instances.get(name)
    }

    /// The bound address of each listener, in config order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// Each `[[connect]]` entry's TLS counters, in config order.
    pub fn connector_tls_stats(&self) -> Vec<Arc<crate::tls::TlsStats>> {
        self.connector_tls.clone()
    }

    /// Each listener's counters, in config order.
    pub fn stats(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners.iter().map(Listener::stats).collect()
    }

    /// Serves until the first message on `stop`, then shuts down: stops
    /// accepting, tells every connection to lose-connection (flushing its
    /// output), and waits up to `[host] shutdown-timeout`. A second message
    /// on `stop` forces the end. With no listeners the run also ends once
    /// every connector has finished.
    pub async fn run(self, mut stop: mpsc::Receiver<()>) -> RunEnd {
        let mut controller = self.controller;
        for l in self.listeners {
            tokio::spawn(l.serve(controller.signal_handle(), controller.guard()));
        }
        for (c, tls) in self.config.connect.iter().cloned().zip(self.connector_tls) {
            let instances = self.instances[&c.plugin].clone();
            let shutdown = controller.subscribe();
            let guard = controller.guard();
            tokio::spawn(async move {
                crate::connector::run(c, instances, shutdown, tls).await;
                drop(guard);
            });
        }
        let end = Self::serve(&self.config, &mut controller, &mut stop).await;
        // The shared instances' threads go with the reactor.
        for i in self.instances.values() {
            if let Some(pool) = i.pool() {
                pool.stop();
            }
        }
        end
    }

    /// Waits for the end: every connector done (no listeners), or a stop
    /// request and then the shutdown.
    async fn serve(
        config: &Config,
        controller: &mut ShutdownController,
        stop: &mut mpsc::Receiver<()>,
    ) -> RunEnd {
        let deadline = config.host.shutdown_timeout;
        // A closed `stop` channel is not a stop request: keep serving.
        let stop_requested = tokio::select! {
            () = controller.wait() => false,
            Some(()) = stop.recv() => true,
        };
        if !stop_requested {
            return RunEnd::Clean;
        }
        tracing::info!(timeout = ?deadline, "shutting down: closing connections");
        controller.signal();
        tokio::select! {
            () = controller.wait() => RunEnd::Clean,
            () = tokio::time::sleep(deadline) => {
                // Output still queued would be lost behind a clean FIN that
                // looks complete: every connection still open resets instead.
                let reset = controller.abort(ABORT_GRACE).await;
                tracing::warn!(timeout = ?deadline, reset, "shutdown deadline passed with connections still open: {reset} reset, their unsent output dropped");
                RunEnd::DeadlineExceeded
            }
            Some(()) = stop.recv() => {
                let reset = controller.abort(ABORT_GRACE).await;
                tracing::warn!(reset, "second stop request: exiting now; {reset} connection(s) still open were reset");
                RunEnd::Forced
            }
        }
    }
}
