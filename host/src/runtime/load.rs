//! Loading a config's plugins: at start ([`Runtime::load`], which also
//! sizes the instance pool), and for a reload ([`Runtime::prepare_reload`]:
//! unchanged plugins reused, changed ones loaded and checked as `twill
//! check` does, settings that size the process refused). Every problem is
//! reported, not just the first.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, HostSettings};
use crate::stats::PluginStats;

use super::limits::Limits;
use super::plugin::{PluginOptions, Source};
use super::{
    BATCH, CLIENT_FACTORY, GuestFault, LoadError, Plugin, Runtime, SERVER_FACTORY, Sharing, clock,
    guest, missing_export, pool,
};

/// What a reload will put in place ([`Runtime::prepare_reload`]).
#[derive(Debug)]
pub struct Prepared {
    /// Every plugin of the new config.
    pub plugins: HashMap<String, Arc<Plugin>>,
    /// The plugins reused unchanged.
    pub reused: Vec<String>,
    /// Each plugin's share of the pool, to set when the reload commits.
    pub caps: HashMap<String, usize>,
}

impl Runtime {
    /// Builds a runtime and loads every plugin that `config` uses, checking
    /// that each exports what its listeners and connectors need. Returns
    /// every problem found, not just the first.
    pub fn load(config: &Config) -> Result<Runtime, Vec<anyhow::Error>> {
        let max_memory = config
            .plugins
            .values()
            .map(|p| p.limits.memory)
            .max()
            .unwrap_or(Limits::default().memory);
        let at = |m: String| vec![anyhow::anyhow!("{}: {m}", config.at("host.max-instances"))];
        let pool = pool::plan_pool(config, max_memory).map_err(at)?;
        let host = HostSettings {
            max_instances: Some(pool),
            ..config.host.clone()
        };
        let reserved = pool::human(pool::reservation(u64::from(pool), max_memory as u64));
        let memory = pool::human(max_memory as u64);
        let mut rt = Runtime::new(&host, max_memory).map_err(|e| {
            // Most often the pool's address space (a `ulimit -v`, or an
            // overcommit policy): say which keys size it.
            at(format!(
                "the instance pool ({pool} slots, {reserved} of address space for memories of up to {memory}) cannot be set up: {e:#}; lower [host] max-instances or the plugins' memory, or lift the address-space limit (ulimit -v)"
            ))
        })?;
        rt.sized_for = Some((config.host.clone(), max_memory));
        tracing::info!(
            slots = pool,
            %reserved,
            "instance pool: {pool} slots, each with room for memories of up to {memory}"
        );
        let maps_before = pool::count_maps();
        let mut maps_per_live = pool::MIN_MAPS_PER_LIVE;
        let plugins = rt.load_plugins(config, &HashMap::new(), &mut maps_per_live)?;
        let usable = pool::check_maps(config, pool, maps_before, maps_per_live).map_err(at)?;
        rt.usable = usable;
        let caps = pool::plugin_caps(config, usable).map_err(at)?;
        for (name, cap) in caps {
            if let Some(p) = plugins.get(&name) {
                p.cap.set_max(cap);
            }
        }
        rt.plugins = plugins;
        Ok(rt)
    }

    /// Loads and checks what a reload of `config` needs, changing nothing
    /// that runs: each plugin of `current` whose component (by content)
    /// and settings are unchanged is reused as is; the others are loaded
    /// (compiled components come from the compile cache) and checked as
    /// `twill check` does. Settings that size the process (the `[host]`
    /// keys other than `shutdown-timeout`, and a plugin `memory` past the
    /// pool's) cannot change without a restart. Returns every problem.
    pub fn prepare_reload(
        &self,
        config: &Config,
        current: &HashMap<String, Arc<Plugin>>,
    ) -> Result<Prepared, Vec<anyhow::Error>> {
        let mut errors = self.restart_only_changes(config);
        let mut maps = 0;
        let plugins = match self.load_plugins(config, current, &mut maps) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let at = |m: String| vec![anyhow::anyhow!("{}: {m}", config.at("host.max-instances"))];
        let caps = pool::plugin_caps(config, self.usable).map_err(at)?;
        let reused = (plugins.iter())
            .filter(|(name, p)| current.get(*name).is_some_and(|c| Arc::ptr_eq(c, p)))
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Prepared {
            plugins,
            reused,
            caps,
        })
    }

    /// The `[host]` settings (and plugin memory) that `config` changes
    /// but only a restart can: each as an error at its key.
    fn restart_only_changes(&self, config: &Config) -> Vec<anyhow::Error> {
        let Some((was, max_memory)) = &self.sized_for else {
            return Vec::new();
        };
        let now = &config.host;
        let mut errors = Vec::new();
        let mut changed = |key: &str, before: String, after: String| {
            errors.push(anyhow::anyhow!(
                "{}: changed from {before} to {after}, which takes a restart (a reload keeps the process's threads, instance pool and metrics address); the running configuration is unchanged",
                config.at(key)
            ));
        };
        let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
        if now.threads != was.threads {
            changed(
                "host.threads",
                show(was.threads.map(|n| n.to_string())),
                show(now.threads.map(|n| n.to_string())),
            );
        }
        if now.max_instances != was.max_instances {
            changed(
                "host.max-instances",
                show(was.max_instances.map(|n| n.to_string())),
                show(now.max_instances.map(|n| n.to_string())),
            );
        }
        if now.max_queued_output != was.max_queued_output {
            changed(
                "host.max-queued-output",
                was.max_queued_output.to_string(),
                now.max_queued_output.to_string(),
            );
        }
        if now.metrics != was.metrics {
            changed(
                "host.metrics",
                show(was.metrics.map(|a| a.to_string())),
                show(now.metrics.map(|a| a.to_string())),
            );
        }
        for (name, p) in &config.plugins {
            if p.limits.memory > *max_memory {
                errors.push(anyhow::anyhow!(
                    "{}: {} is more than the instance pool was sized for at start ({}), which takes a restart; the running configuration is unchanged",
                    config.at(&format!("plugins.{name}.memory")),
                    pool::human(p.limits.memory as u64),
                    pool::human(*max_memory as u64)
                ));
            }
        }
        errors
    }

    /// Loads every plugin of `config` (reusing those of `current` whose
    /// component and settings are unchanged), starting two trial instances
    /// of each new one and checking it exports what its listeners and
    /// connectors need. `maps_per_live` grows to the most memory maps a
    /// trial instance added.
    fn load_plugins(
        &self,
        config: &Config,
        current: &HashMap<String, Arc<Plugin>>,
        maps_per_live: &mut u64,
    ) -> Result<HashMap<String, Arc<Plugin>>, Vec<anyhow::Error>> {
        let mut errors = Vec::new();
        let mut trials = Vec::new();
        let mut plugins = HashMap::new();
        for (name, p) in &config.plugins {
            let err = |message: String| LoadError {
                file: config.path.display().to_string(),
                line: p.line,
                plugin: name.clone(),
                component: p.component.display().to_string(),
                message,
            };
            let bytes = match std::fs::read(&p.component) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(err(format!("cannot read {}: {e}", p.component.display())).into());
                    continue;
                }
            };
            let source = Source::new(p, &bytes);
            if let Some(same) = current
                .get(name)
                .filter(|c| c.source.as_ref() == Some(&source))
            {
                plugins.insert(name.clone(), same.clone());
                continue;
            }
            let options = PluginOptions {
                limits: p.limits.clone(),
                clock: p.clock,
                sharing: p.sharing,
                capture: None,
                time: clock::Clock::Real,
                connect: p.connect.clone(),
                env: p.env.clone(),
                stats: self.plugin_stats(name),
            };
            let mut plugin = match self.load_bytes(name, &bytes, options) {
                Ok(plugin) => plugin,
                Err(e) => {
                    errors.push(err(format!("{e:#}")).into());
                    continue;
                }
            };
            plugin.source = Some(source);
            match trial(&plugin, &mut trials) {
                Ok(maps) => *maps_per_live = (*maps_per_live).max(maps),
                Err(m) => errors.push(err(m).into()),
            }
            if matches!(p.sharing, Sharing::Shared(_)) && !plugin.has_batch() {
                tracing::info!(plugin = %name, "the component does not export `{BATCH}`: its shared instances get one data-received call per read");
            }
            let needs_server = config.listen.iter().any(|l| &l.plugin == name);
            let needs_client = config.connect.iter().any(|c| &c.plugin == name);
            if needs_server && plugin.server.is_none() {
                errors.push(
                    err(missing_export(
                        &plugin.exports,
                        SERVER_FACTORY,
                        "[[listen]]",
                    ))
                    .into(),
                );
            }
            if needs_client && plugin.client.is_none() {
                errors.push(
                    err(missing_export(
                        &plugin.exports,
                        CLIENT_FACTORY,
                        "[[connect]]",
                    ))
                    .into(),
                );
            }
            plugins.insert(name.clone(), Arc::new(plugin));
        }
        drop(trials);
        if errors.is_empty() {
            Ok(plugins)
        } else {
            Err(errors)
        }
    }

    /// The counters of the plugin called `name`: the same ones for as long
    /// as the process runs, whatever reloads replace its component.
    pub fn plugin_stats(&self, name: &str) -> Arc<PluginStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.entry(name.to_string()).or_default().clone()
    }
}

/// Instantiates `plugin` twice, keeping the instances in `trials` (so
/// that every trial has a slot of its own until all are made): a component
/// that cannot even start within its own plugin's limits fails at load,
/// not at every connection. Returns the memory maps the second instance
/// added (the steady cost of a live instance; the first also maps the
/// component's memory image, once), or 0 if there is no figure.
fn trial(plugin: &Plugin, trials: &mut Vec<guest::Guest>) -> Result<u64, String> {
    let started = |r: Result<guest::Guest, GuestFault>| {
        r.map_err(|f| match f {
            GuestFault::MemoryAtStart { needed, limit } => {
                let needed = pool::human(needed as u64);
                format!(
                    "the component needs at least {needed} of linear memory to start, more than plugins.{}.memory ({}): raise `memory` to at least {needed}",
                    plugin.name,
                    pool::human(limit as u64)
                )
            }
            f => format!("the component fails to start: {f}"),
        })
    };
    trials.push(started(plugin.new_guest())?);
    // The maps one more instance adds, measured twice: the count is the
    // process's, and another thread making instances at the same moment
    // (a test binary's other tests) inflates one measurement; keep the
    // smaller. A small pool may have no slot left: then no figure.
    let mut added = u64::MAX;
    for _ in 0..2 {
        let before = pool::count_maps();
        let Ok(next) = plugin.new_guest() else {
            break;
        };
        let delta = before
            .zip(pool::count_maps())
            .map_or(0, |(b, a)| a.saturating_sub(b));
        added = added.min(delta);
        trials.push(next);
    }
    Ok(if added == u64::MAX { 0 } else { added })
}
