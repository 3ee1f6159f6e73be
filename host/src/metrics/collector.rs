//! The collector: every Twill metric family, read from the reactor's
//! current [`View`](super::View) at each scrape and encoded by prometheus-client. The
//! names, labels and meanings are listed in `docs/operations.md`.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric as _, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Metrics;
use crate::connector::ConnectorStats;
use crate::outbound::OutboundStats;
use crate::runtime::Sharing;
use crate::stats::{FaultKind, HistogramSnapshot};
use crate::tls::{Failure, TlsStats};

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Reads one of a listener's counters.
type ListenerCount = fn(&crate::listener::ListenerStats) -> u64;

/// One family: its name, help and type, then each series with its labels.
fn family<'v, V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels<'v>, V)>,
    mut write: impl FnMut(&mut MetricEncoder<'_>, V) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let mut m = metric.encode_family(&labels)?;
        write(&mut m, v)?;
    }
    Ok(())
}

/// A counter family: [`family`] with [`counter`] values.
fn counters<'v>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'v>, u64)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Counter, series, counter)
}

fn counter(m: &mut MetricEncoder<'_>, v: u64) -> std::fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder<'_>, v: i64) -> std::fmt::Result {
    m.encode_gauge(&v)
}

fn histogram(m: &mut MetricEncoder<'_>, h: HistogramSnapshot) -> std::fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

/// The TLS outcome series of one listener or connector: `result` is `ok`
/// or a failure's label.
fn tls_series<'a>(labels: &Labels<'a>, t: &'a TlsStats) -> Vec<(Labels<'a>, u64)> {
    let with = |result: &'static str, v| {
        let mut l = labels.clone();
        l.push(("result", result));
        (l, v)
    };
    let mut out = vec![with("ok", t.handshakes.load(Ordering::Relaxed))];
    out.extend(Failure::ALL.iter().map(|f| with(f.label(), t.failed(*f))));
    out
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let view = self.view.borrow().clone();
        let h = &self.health;
        let info = ConstGauge::new(1i64);
        {
            let version = [("version", env!("CARGO_PKG_VERSION"))];
            let mut m = enc.encode_descriptor(
                "twill_build_info",
                "The running Twill: its version, as a label",
                None,
                MetricType::Gauge,
            )?;
            info.encode(m.encode_family(&version)?)?;
        }
        let none: Labels<'_> = Vec::new();
        family(
            &mut enc,
            "twill_ready",
            "1 while every listener is bound and the reactor serves (what /readyz answers), 0 while starting or shutting down",
            MetricType::Gauge,
            [(none.clone(), i64::from(h.ready.load(Ordering::Relaxed)))],
            gauge,
        )?;
        counters(
            &mut enc,
            "twill_reloads",
            "Config reloads (SIGHUP, --watch): result=ok applied, result=failed changed nothing",
            [
                (vec![("result", "ok")], h.reloads_ok.get()),
                (vec![("result", "failed")], h.reloads_failed.get()),
            ],
        )?;
        let last = h.last_reload_ok.load(Ordering::Relaxed);
        if last > 0 {
            family(
                &mut enc,
                "twill_last_reload_success_timestamp_seconds",
                "When the last reload was applied (Unix time)",
                MetricType::Gauge,
                [(none.clone(), last as i64)],
                gauge,
            )?;
        }

        // Listeners.
        let targets: Vec<_> = view
            .listeners
            .iter()
            .map(|l| (l, l.target(), l.local_addr().to_string()))
            .collect();
        let ls: Vec<_> = (targets.iter())
            .map(|(l, t, addr)| {
                (
                    vec![
                        ("listener", addr.as_str()),
                        ("plugin", &*t.instances.plugin().name),
                    ],
                    l.stats(),
                )
            })
            .collect();
        let each = |f: fn(&crate::listener::ListenerStats) -> u64| {
            ls.iter().map(move |(lab, s)| (lab.clone(), f(s)))
        };
        counters(
            &mut enc,
            "twill_connections_accepted",
            "Connections accepted and handed to a protocol",
            each(|s| s.accepted.load(Ordering::Relaxed)),
        )?;
        let refused: [(&str, ListenerCount); 7] = [
            ("max_connections", |s| {
                s.rejected_over_limit.load(Ordering::Relaxed)
            }),
            ("max_instances", |s| {
                s.rejected_at_capacity.load(Ordering::Relaxed)
            }),
            ("factory", |s| s.refused_by_factory.load(Ordering::Relaxed)),
            ("no_instance", |s| {
                s.instantiation_failed.load(Ordering::Relaxed)
            }),
            ("backoff", |s| s.refused_backoff.load(Ordering::Relaxed)),
            ("proxy_untrusted", |s| {
                s.proxy_untrusted.load(Ordering::Relaxed)
            }),
            ("proxy_header", |s| s.proxy_header.load(Ordering::Relaxed)),
        ];
        counters(
            &mut enc,
            "twill_connections_refused",
            "Connections closed without being served, by reason: max_connections (the listener's cap), max_instances (the plugin's cap), factory (build-protocol built none), no_instance (no instance could be made), backoff (a crash-looping shared instance is waiting to restart), proxy_untrusted (a source not in proxy-from), proxy_header (no valid PROXY protocol header in time)",
            ls.iter().flat_map(|(lab, s)| {
                refused.iter().map(move |(reason, f)| {
                    let mut l = lab.clone();
                    l.push(("reason", reason));
                    (l, f(s))
                })
            }),
        )?;
        family(
            &mut enc,
            "twill_connections_active",
            "Connections open now",
            MetricType::Gauge,
            ls.iter()
                .map(|(lab, s)| (lab.clone(), s.active.load(Ordering::Relaxed) as i64)),
            gauge,
        )?;
        counters(
            &mut enc,
            "twill_connections_faulted",
            "Connections that ended because their guest trapped",
            each(|s| s.faulted.load(Ordering::Relaxed)),
        )?;
        counters(
            &mut enc,
            "twill_received_bytes",
            "Bytes received from the listener's peers (after TLS decryption)",
            each(|s| s.traffic.received.get()),
        )?;
        counters(
            &mut enc,
            "twill_sent_bytes",
            "Bytes sent to the listener's peers (before TLS encryption)",
            each(|s| s.traffic.sent.get()),
        )?;
        let tls_ls: Vec<_> = (targets.iter())
            .filter(|(_, t, _)| t.tls.is_some())
            .map(|(l, t, addr)| {
                (
                    vec![
                        ("listener", addr.as_str()),
                        ("plugin", &*t.instances.plugin().name),
                    ],
                    l.stats().tls.clone(),
                )
            })
            .collect();
        counters(
            &mut enc,
            "twill_tls_handshakes",
            "TLS handshakes on a listener, by result: ok, or why it failed",
            tls_ls.iter().flat_map(|(lab, t)| tls_series(lab, t)),
        )?;
        counters(
            &mut enc,
            "twill_tls_start_tls_refused",
            "start-tls calls refused on a listener's connections",
            tls_ls
                .iter()
                .map(|(lab, t)| (lab.clone(), t.start_tls_refused.load(Ordering::Relaxed))),
        )?;

        // Plugins.
        let ps: Vec<_> = view
            .plugins
            .iter()
            .map(|p| (vec![("plugin", p.name.as_str())], p))
            .collect();
        family(
            &mut enc,
            "twill_guest_call_duration_seconds",
            "Guest calls (each callback, batch, delayed call and factory hook) and how long they ran",
            MetricType::Histogram,
            ps.iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().calls.snapshot())),
            histogram,
        )?;
        counters(
            &mut enc,
            "twill_guest_traps",
            "Guest calls that trapped, by kind: panic, cpu (its cpu limit), memory (its memory limit), output (its output limits), trap (anything else)",
            ps.iter().flat_map(|(lab, p)| {
                FaultKind::ALL.iter().map(move |k| {
                    let mut l = lab.clone();
                    l.push(("kind", k.label()));
                    (l, p.plugin.stats().traps_of(*k))
                })
            }),
        )?;
        counters(
            &mut enc,
            "twill_instances_created",
            "Instances made (instantiated), including the two trial instances made when a component is loaded",
            ps.iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().instances_created.get())),
        )?;
        family(
            &mut enc,
            "twill_instances_live",
            "Instances alive now, per-connection or shared (including a replaced component's instances still serving their connections)",
            MetricType::Gauge,
            ps.iter().map(|(lab, p)| {
                let mut l = lab.clone();
                l.push((
                    "sharing",
                    match p.plugin.sharing() {
                        Sharing::PerConnection => "per_connection",
                        Sharing::Shared(_) => "shared",
                    },
                ));
                (l, p.plugin.stats().instances_live.load(Ordering::Relaxed))
            }),
            gauge,
        )?;
        family(
            &mut enc,
            "twill_guest_memory_bytes",
            "Linear memory of the plugin's live instances together, in bytes (a wasm memory never shrinks: a shared instance's that keeps rising is leaking)",
            MetricType::Gauge,
            ps.iter().map(|(lab, p)| {
                (
                    lab.clone(),
                    p.plugin.stats().guest_memory.load(Ordering::Relaxed),
                )
            }),
            gauge,
        )?;
        counters(
            &mut enc,
            "twill_guest_memory_near_limit",
            &format!(
                "Instances whose linear memory grew past {:.0}% of the plugin's memory limit (each counted once, and logged)",
                crate::stats::MEMORY_WARNING * 100.0
            ),
            ps.iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().memory_near_limit.get())),
        )?;
        let shared: Vec<_> = ps
            .iter()
            .filter(|(_, p)| matches!(p.plugin.sharing(), Sharing::Shared(_)))
            .collect();
        family(
            &mut enc,
            "twill_guest_batch_reads",
            "Reads delivered per batch call on shared instances",
            MetricType::Histogram,
            shared
                .iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().batch_sizes.snapshot())),
            histogram,
        )?;
        counters(
            &mut enc,
            "twill_shared_instance_restarts_delayed",
            "Times a crash-looping shared instance's re-creation was put off by the backoff",
            shared
                .iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().restarts_delayed.get())),
        )?;
        let outbound = |r: &'static str, f: fn(&OutboundStats) -> u64| {
            ps.iter().filter_map(move |(lab, p)| {
                let o = p.outbound.as_ref()?;
                let mut l = lab.clone();
                l.push(("result", r));
                Some((l, f(o)))
            })
        };
        counters(
            &mut enc,
            "twill_outbound_connections",
            "Connections guests asked to open (reactor.connect-tcp), by result: opened, refused (by the grants or max-outbound), failed",
            outbound("opened", |o| o.opened.load(Ordering::Relaxed))
                .chain(outbound("refused", |o| o.refused.load(Ordering::Relaxed)))
                .chain(outbound("failed", |o| o.failed.load(Ordering::Relaxed))),
        )?;

        // Connectors.
        let cs: Vec<_> = view
            .connectors
            .iter()
            .map(|c| {
                (
                    vec![
                        ("connector", c.target.as_str()),
                        ("plugin", c.plugin.as_str()),
                    ],
                    &c.stats,
                )
            })
            .collect();
        let each =
            |f: fn(&ConnectorStats) -> u64| cs.iter().map(move |(lab, s)| (lab.clone(), f(s)));
        counters(
            &mut enc,
            "twill_connector_attempts",
            "Connection attempts by [[connect]] entries (the first and each retry)",
            each(|s| s.attempts.load(Ordering::Relaxed)),
        )?;
        counters(
            &mut enc,
            "twill_connector_failures",
            "Connection attempts that failed (the factory heard client-connection-failed)",
            each(|s| s.failures.load(Ordering::Relaxed)),
        )?;
        counters(
            &mut enc,
            "twill_connector_received_bytes",
            "Bytes received on [[connect]] connections",
            each(|s| s.traffic.received.get()),
        )?;
        counters(
            &mut enc,
            "twill_connector_sent_bytes",
            "Bytes sent on [[connect]] connections",
            each(|s| s.traffic.sent.get()),
        )?;
        let tls_cs: Vec<_> = view
            .connectors
            .iter()
            .filter(|c| {
                c.stats.tls.handshakes.load(Ordering::Relaxed) > 0
                    || Failure::ALL.iter().any(|f| c.stats.tls.failed(*f) > 0)
            })
            .map(|c| {
                (
                    vec![
                        ("connector", c.target.as_str()),
                        ("plugin", c.plugin.as_str()),
                    ],
                    &c.stats.tls,
                )
            })
            .collect();
        counters(
            &mut enc,
            "twill_connector_tls_handshakes",
            "TLS handshakes by [[connect]] entries, by result",
            tls_cs.iter().flat_map(|(lab, t)| tls_series(lab, t)),
        )?;
        Ok(())
    }
}
