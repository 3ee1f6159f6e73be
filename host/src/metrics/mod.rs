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
//! | [`Metrics`] | the registry a scrape encodes |
//! | [`collector`] | the collector: every family, encoded from a [`View`] |
//! | [`bind`], [`serve`] | the HTTP endpoint |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod collector;

use crate::connector::ConnectorStats;
use crate::listener::ListenerHandle;
use crate::outbound::OutboundStats;
use crate::runtime::Plugin;
use crate::stats::Counter;

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

impl Health {
    /// Counts a reload's outcome.
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_reload_ok.store(now, Ordering::Relaxed);
        } else {
            self.reloads_failed.inc();
        }
    }
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
