//! `[host] metrics`: Prometheus metrics at `/metrics`, liveness at
//! `/healthz`, readiness at `/readyz`, over a small hyper HTTP/1.1 server.
//!
//! The data path only bumps counters it owns ([`crate::stats`], the
//! listeners', connectors' and TLS counters); nothing here runs until a
//! scrape. A scrape walks what the reactor serves now (its [`View`],
//! replaced at every reload) through a prometheus-client [`Collector`],
//! and prometheus-client encodes it: the Prometheus text format (0.0.4) by
//! default, OpenMetrics when the scraper asks for it (`Accept:
//! application/openmetrics-text`). Every metric name, its labels and what
//! it counts are listed in `docs/operations.md`.
//!
//! # Layout
//!
//! | item | owns |
//! |---|---|
//! | [`Health`] | ready or not, reloads counted |
//! | [`View`] | the listeners, plugins and connectors served now |
//! | [`Metrics`] | the collector: every family, encoded from a [`View`] |
//! | [`bind`], [`serve`] | the HTTP endpoint |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connector::ConnectorStats;
use crate::listener::ListenerHandle;
use crate::outbound::OutboundStats;
use crate::runtime::{Plugin, Sharing};
use crate::stats::{Counter, FaultKind, HistogramSnapshot};
use crate::tls::{Failure, TlsStats};

/// The process's state for `/readyz`, and its reloads.
#[derive(Debug, Default)]
pub struct Health {
    /// Every listener is bound and the reactor is serving (not starting,
    /// not shutting down).
    pub ready: AtomicBool,
    /// Reloads applied.
    pub reloads_ok: Counter,
    /// Reloads that changed nothing because something failed.
    pub reloads_failed: Counter,
    /// When the last reload was applied (Unix seconds; 0: never).
    pub last_reload_ok: AtomicU64,
}

/// What the reactor serves now, as the collector reads it.
#[derive(Debug, Default)]
pub struct View {
    /// Every listener.
    pub listeners: Vec<ListenerHandle>,
    /// Every plugin a listener or connector uses.
    pub plugins: Vec<PluginView>,
    /// Every `[[connect]]` entry.
    pub connectors: Vec<ConnectorView>,
}

/// A plugin, as the collector reads it.
#[derive(Debug)]
pub struct PluginView {
    /// Its name.
    pub name: String,
    /// The plugin (its counters are kept across reloads).
    pub plugin: Arc<Plugin>,
    /// Its guests' outbound connections, with `connect` grants.
    pub outbound: Option<Arc<OutboundStats>>,
}

/// A `[[connect]]` entry, as the collector reads it.
#[derive(Debug)]
pub struct ConnectorView {
    /// `host:port`.
    pub target: String,
    /// Its plugin.
    pub plugin: String,
    /// Its counters.
    pub stats: Arc<ConnectorStats>,
}

/// The collector: every Twill metric, read from the current [`View`].
#[derive(Debug)]
pub struct Metrics {
    health: Arc<Health>,
    view: watch::Receiver<Arc<View>>,
}

impl Metrics {
    /// A collector over `health` and the views the reactor publishes.
    pub fn new(health: Arc<Health>, view: watch::Receiver<Arc<View>>) -> Metrics {
        Metrics { health, view }
    }

    /// The registry a scrape encodes.
    fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry
    }

    /// The exposition: OpenMetrics if `openmetrics`, else the Prometheus
    /// text format.
    pub fn encode(self: &Arc<Self>, openmetrics: bool) -> String {
        let registry = self.registry();
        let mut out = String::new();
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

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
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder<'_>, V) -> std::fmt::Result,
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

fn counter(m: &mut prometheus_client::encoding::MetricEncoder<'_>, v: u64) -> std::fmt::Result {
    m.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut prometheus_client::encoding::MetricEncoder<'_>, v: i64) -> std::fmt::Result {
    m.encode_gauge(&v)
}

fn histogram(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    h: HistogramSnapshot,
) -> std::fmt::Result {
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &h.buckets, None)
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
        family(
            &mut enc,
            "twill_reloads",
            "Config reloads (SIGHUP, --watch): result=ok applied, result=failed changed nothing",
            MetricType::Counter,
            [
                (vec![("result", "ok")], h.reloads_ok.get()),
                (vec![("result", "failed")], h.reloads_failed.get()),
            ],
            counter,
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
        family(
            &mut enc,
            "twill_connections_accepted",
            "Connections accepted and handed to a protocol",
            MetricType::Counter,
            each(|s| s.accepted.load(Ordering::Relaxed)),
            counter,
        )?;
        let refused: [(&str, ListenerCount); 5] = [
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
        ];
        family(
            &mut enc,
            "twill_connections_refused",
            "Connections closed without being served, by reason: max_connections (the listener's cap), max_instances (the plugin's cap), factory (build-protocol built none), no_instance (no instance could be made), backoff (a crash-looping shared instance is waiting to restart)",
            MetricType::Counter,
            ls.iter().flat_map(|(lab, s)| {
                refused.iter().map(move |(reason, f)| {
                    let mut l = lab.clone();
                    l.push(("reason", reason));
                    (l, f(s))
                })
            }),
            counter,
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
        family(
            &mut enc,
            "twill_connections_faulted",
            "Connections that ended because their guest trapped",
            MetricType::Counter,
            each(|s| s.faulted.load(Ordering::Relaxed)),
            counter,
        )?;
        family(
            &mut enc,
            "twill_received_bytes",
            "Bytes received from the listener's peers (after TLS decryption)",
            MetricType::Counter,
            each(|s| s.traffic.received.get()),
            counter,
        )?;
        family(
            &mut enc,
            "twill_sent_bytes",
            "Bytes sent to the listener's peers (before TLS encryption)",
            MetricType::Counter,
            each(|s| s.traffic.sent.get()),
            counter,
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
        family(
            &mut enc,
            "twill_tls_handshakes",
            "TLS handshakes on a listener, by result: ok, or why it failed",
            MetricType::Counter,
            tls_ls.iter().flat_map(|(lab, t)| tls_series(lab, t)),
            counter,
        )?;
        family(
            &mut enc,
            "twill_tls_start_tls_refused",
            "start-tls calls refused on a listener's connections",
            MetricType::Counter,
            tls_ls
                .iter()
                .map(|(lab, t)| (lab.clone(), t.start_tls_refused.load(Ordering::Relaxed))),
            counter,
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
        family(
            &mut enc,
            "twill_guest_traps",
            "Guest calls that trapped, by kind: panic, cpu (its cpu limit), memory (its memory limit), output (its output limits), trap (anything else)",
            MetricType::Counter,
            ps.iter().flat_map(|(lab, p)| {
                FaultKind::ALL.iter().map(move |k| {
                    let mut l = lab.clone();
                    l.push(("kind", k.label()));
                    (l, p.plugin.stats().traps_of(*k))
                })
            }),
            counter,
        )?;
        family(
            &mut enc,
            "twill_instances_created",
            "Instances made (instantiated), including the two trial instances made when a component is loaded",
            MetricType::Counter,
            ps.iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().instances_created.get())),
            counter,
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
        family(
            &mut enc,
            "twill_shared_instance_restarts_delayed",
            "Times a crash-looping shared instance's re-creation was put off by the backoff",
            MetricType::Counter,
            shared
                .iter()
                .map(|(lab, p)| (lab.clone(), p.plugin.stats().restarts_delayed.get())),
            counter,
        )?;
        let outbound = |r: &'static str, f: fn(&OutboundStats) -> u64| {
            ps.iter().filter_map(move |(lab, p)| {
                let o = p.outbound.as_ref()?;
                let mut l = lab.clone();
                l.push(("result", r));
                Some((l, f(o)))
            })
        };
        family(
            &mut enc,
            "twill_outbound_connections",
            "Connections guests asked to open (reactor.connect-tcp), by result: opened, refused (by the grants or max-outbound), failed",
            MetricType::Counter,
            outbound("opened", |o| o.opened.load(Ordering::Relaxed))
                .chain(outbound("refused", |o| o.refused.load(Ordering::Relaxed)))
                .chain(outbound("failed", |o| o.failed.load(Ordering::Relaxed))),
            counter,
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
        family(
            &mut enc,
            "twill_connector_attempts",
            "Connection attempts by [[connect]] entries (the first and each retry)",
            MetricType::Counter,
            each(|s| s.attempts.load(Ordering::Relaxed)),
            counter,
        )?;
        family(
            &mut enc,
            "twill_connector_failures",
            "Connection attempts that failed (the factory heard client-connection-failed)",
            MetricType::Counter,
            each(|s| s.failures.load(Ordering::Relaxed)),
            counter,
        )?;
        family(
            &mut enc,
            "twill_connector_received_bytes",
            "Bytes received on [[connect]] connections",
            MetricType::Counter,
            each(|s| s.traffic.received.get()),
            counter,
        )?;
        family(
            &mut enc,
            "twill_connector_sent_bytes",
            "Bytes sent on [[connect]] connections",
            MetricType::Counter,
            each(|s| s.traffic.sent.get()),
            counter,
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
        family(
            &mut enc,
            "twill_connector_tls_handshakes",
            "TLS handshakes by [[connect]] entries, by result",
            MetricType::Counter,
            tls_cs.iter().flat_map(|(lab, t)| tls_series(lab, t)),
            counter,
        )?;
        Ok(())
    }
}

/// Binds the metrics endpoint's address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// The most concurrent scrapes served; more wait in the backlog.
const MAX_SCRAPERS: usize = 16;

/// Serves `/metrics`, `/healthz` and `/readyz` until dropped (through the
/// shutdown too: `/readyz` then says 503 while connections drain). A
/// scraper gets 10 s per request; at most [`MAX_SCRAPERS`] connections at
/// once.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics, /healthz and /readyz");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
            drop(permit);
        });
    }
}

fn respond<B>(metrics: &Arc<Metrics>, req: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a valid response")
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let openmetrics = (req.headers().get_all("accept").iter())
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let (body, content_type) = if openmetrics {
                (
                    metrics.encode(true),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    metrics.encode(false),
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                )
            };
            Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if metrics.health.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
