//! A live reload ([`Control::Reload`](super::Control::Reload), SIGHUP):
//! re-read the config, validate it as `twill check` does, load what
//! changed, and only then change what is served. Nothing changes if any
//! of that fails.
//!
//! What a successful reload does, in order:
//!
//! 1. binds the listeners the new config adds (a port that cannot be bound
//!    fails the reload, and the ones just bound close again);
//! 2. builds each changed plugin's instances (a shared pool starts its
//!    threads and calls `start-factory`); an unchanged plugin (same
//!    component bytes, same settings) keeps its instances and their state;
//! 3. points every kept listener at its new [`Target`] (its socket stays
//!    bound, so no connection is refused), starts the new ones, and closes
//!    the removed ones (their connections drain);
//! 4. stops the `[[connect]]` entries that are gone (their connection
//!    goes on to its end; no reconnect) and starts the new ones;
//! 5. retires the replaced shared pools: `stop-factory` now; their
//!    instances and threads go when their last connection ends.
//!
//! Connections already open finish on the instance, limits and TLS
//! settings they started with.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::listener::{Listener, Target};
use crate::runtime::Plugin;

use super::{ListenKey, Reactor};

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Plugins loaded anew (changed or added).
    pub loaded: Vec<String>,
    /// Plugins kept as they were.
    pub kept: Vec<String>,
    /// Listeners kept on their socket, added, removed.
    pub listeners: (usize, usize, usize),
    /// Connectors kept, started, stopped.
    pub connectors: (usize, usize, usize),
    /// Every listener's address now, in config order.
    pub listening: Vec<std::net::SocketAddr>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lk, la, lr) = self.listeners;
        let (ck, cs, cr) = self.connectors;
        write!(
            f,
            "{} plugin(s) loaded [{}], {} unchanged; listeners: {lk} kept, {la} added, {lr} removed; connectors: {ck} kept, {cs} started, {cr} stopped",
            self.loaded.len(),
            self.loaded.join(", "),
            self.kept.len()
        )
    }
}

/// Why a reload changed nothing: every problem found, each a line
/// (`file:line:col: key: message` where there is a place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ReloadError(pub Vec<String>);

impl Reactor {
    /// Re-reads the config file and applies it, or changes nothing; counts
    /// and logs the outcome.
    pub(super) async fn reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let path = self.config.path.clone();
        tracing::info!(config = %path.display(), "reloading");
        let outcome = self.try_reload().await;
        match &outcome {
            Ok(report) => {
                self.health.reloaded(true);
                tracing::info!(config = %path.display(), %report, "config reloaded");
            }
            Err(e) => {
                self.health.reloaded(false);
                for line in &e.0 {
                    tracing::error!(config = %path.display(), error = %line, "reload failed; the running configuration is unchanged");
                }
            }
        }
        outcome
    }

    async fn try_reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let config = Config::load(&self.config.path)
            .map_err(|errs| ReloadError(errs.0.iter().map(ToString::to_string).collect()))?;
        // Loading compiles (or fetches) components: off the reactor thread.
        let runtime = self.runtime.clone();
        let current: HashMap<String, Arc<Plugin>> = (self.plugins.iter())
            .map(|(n, e)| (n.clone(), e.instances.plugin().clone()))
            .collect();
        let (config, prepared) = tokio::task::spawn_blocking(move || {
            let prepared = runtime.prepare_reload(&config, &current);
            (config, prepared)
        })
        .await
        .map_err(|e| ReloadError(vec![format!("the reload task failed: {e}")]))?;
        let prepared = prepared
            .map_err(|errs| ReloadError(errs.iter().map(|e| format!("{e:#}")).collect()))?;

        // 1. New listeners' sockets, before anything changes.
        let keys: Vec<ListenKey> = self.listeners.iter().map(|(k, _)| *k).collect();
        let new_keys = super::listen_keys(&config);
        let mut bound = HashMap::new();
        for (i, (l, key)) in config.listen.iter().zip(&new_keys).enumerate() {
            let key = *key;
            // The listeners are kept in their config's order.
            let kept = (keys.iter().zip(&self.config.listen)).find(|(k, _)| **k == key);
            if let Some((_, was)) = kept.filter(|(_, was)| was.reuse_port != l.reuse_port) {
                return Err(ReloadError(vec![format!(
                    "{}: changed from {} to {}, which takes a restart (a reload keeps the listening socket as it was bound); the running configuration is unchanged",
                    config.at(&format!("listen[{i}].reuse-port")),
                    was.reuse_port,
                    l.reuse_port
                )]));
            }
            if !keys.contains(&key) {
                let socket = crate::listener::bind(l)
                    .map_err(|e| ReloadError(vec![format!("{}: {e}", config.path.display())]))?;
                bound.insert(key, socket);
            }
        }

        // 2. The plugins' instances.
        let entries = self.entries(&config, &prepared.plugins, &self.plugins);
        for (name, cap) in &prepared.caps {
            if let Some(p) = prepared.plugins.get(name) {
                p.instance_cap().set_max(*cap);
            }
        }
        let mut report = ReloadReport {
            loaded: (prepared.plugins.keys())
                .filter(|n| !prepared.reused.contains(n))
                .cloned()
                .collect(),
            kept: prepared.reused.clone(),
            ..ReloadReport::default()
        };
        report.loaded.sort();
        report.kept.sort();
        let old = std::mem::replace(&mut self.plugins, entries);

        // 3. Listeners.
        let mut listeners = Vec::new();
        let mut kept_keys = Vec::new();
        for (l, key) in config.listen.iter().zip(new_keys) {
            let target = Target::new(l, self.plugins[&l.plugin].instances.clone());
            match bound.remove(&key) {
                Some(socket) => {
                    let listener = Listener::new(socket, target);
                    listeners.push((key, listener.handle()));
                    let guard = self.keeper.clone().expect("serving");
                    tokio::spawn(listener.serve(self.controller.signal_handle(), guard));
                    report.listeners.1 += 1;
                }
                None => {
                    let (_, handle) = (self.listeners.iter())
                        .find(|(k, _)| *k == key)
                        .expect("a listener without a new socket is a kept one");
                    handle.retarget(target);
                    listeners.push((key, handle.clone()));
                    kept_keys.push(key);
                    report.listeners.0 += 1;
                }
            }
        }
        for (key, handle) in &self.listeners {
            if !kept_keys.contains(key) {
                // Closed when the reload reports done; an accept loop
                // waiting on a guest call gets a moment.
                handle.close(std::time::Duration::from_secs(1)).await;
                report.listeners.2 += 1;
            }
        }
        self.listeners = listeners;

        // 4. Connectors: an entry kept if the same entry, for the same
        // plugin, is in the new config.
        let mut wanted: Vec<_> = (config.connect.iter())
            .map(|c| crate::config::ConnectConfig {
                line: 0,
                ..c.clone()
            })
            .collect();
        let mut connectors = Vec::new();
        for c in std::mem::take(&mut self.connectors) {
            let same = wanted.iter().position(|w| {
                *w == c.cfg && Arc::ptr_eq(self.plugins[&w.plugin].instances.plugin(), &c.plugin)
            });
            match same {
                Some(i) => {
                    wanted.remove(i);
                    connectors.push(c);
                    report.connectors.0 += 1;
                }
                None => {
                    c.retire.fire();
                    report.connectors.2 += 1;
                }
            }
        }
        self.connectors = connectors;
        for c in wanted {
            self.start_connector(c);
            report.connectors.1 += 1;
        }

        // 5. The replaced shared pools.
        for (name, e) in &old {
            let replaced = self
                .plugins
                .get(name)
                .is_none_or(|n| !n.instances.same_as(&e.instances));
            if replaced && let Some(pool) = e.instances.pool() {
                pool.retire();
            }
        }
        self.config = config;
        self.publish();
        report.listening = self.listen_addrs();
        Ok(report)
    }
}
