//! The runtime's side of `reactor.connect-tcp`: what an instance may open
//! ([`Outbound`], in its Store) and the request it hands on
//! ([`ConnectRequest`]) to the plugin's dialer (`super::plugin::Dial`,
//! which the crate's `outbound` module implements; this module does no
//! I/O). Each request holds an [`OutboundSlot`] under the plugin's
//! `max-outbound` until its connection ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Twisted's default `connectTCP` timeout, used for a timeout of 0 or less.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `connect-tcp` timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// One `reactor.connect-tcp` call, checked for its form.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The host as the guest wrote it: an address or a name.
    pub host: String,
    /// The port (not 0).
    pub port: u16,
    /// How long the attempt (name lookup and connect) may take.
    pub timeout: Duration,
    /// The guest's token for the outcome.
    pub token: u64,
}

/// Hands a checked request to the plugin's dialer, for this instance;
/// fails if the instance is going away.
pub type Start = Box<dyn Fn(ConnectRequest, OutboundSlot) -> Result<(), String> + Send + Sync>;

/// What an instance may open: set in its Store when its plugin has
/// `connect` grants.
pub struct Outbound {
    /// Where requests go.
    pub(crate) start: Start,
    /// Connections open or opening.
    pub(crate) live: Arc<AtomicUsize>,
    /// The plugin's `max-outbound`.
    pub(crate) max: usize,
    /// Whether the component exports `outbound-factory`.
    pub(crate) factory: bool,
}

/// One outbound connection counted against `max-outbound` until dropped.
#[derive(Debug)]
pub struct OutboundSlot(Arc<AtomicUsize>);

impl Drop for OutboundSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Outbound {
    /// Checks a `connect-tcp` call's form and the instance's room, and
    /// hands it to the dialer; the error is the import's.
    pub(crate) fn connect(
        &self,
        host: String,
        port: u16,
        timeout: f64,
        token: u64,
    ) -> Result<(), String> {
        if !self.factory {
            return Err(
                "the component does not export twill:protocol/outbound-factory, through which connect-tcp's outcome comes"
                    .into(),
            );
        }
        if host.is_empty() || port == 0 {
            return Err(format!("cannot connect to {host:?} port {port}"));
        }
        let timeout = if timeout.is_finite() && timeout > 0.0 {
            Duration::from_secs_f64(timeout.min(MAX_TIMEOUT.as_secs_f64()))
        } else {
            DEFAULT_TIMEOUT
        };
        let n = self.live.fetch_add(1, Ordering::Relaxed);
        let slot = OutboundSlot(self.live.clone());
        if n >= self.max {
            return Err(format!(
                "max-outbound reached: this instance already has {n} outbound connections open or opening (raise max-outbound in plugins.toml)"
            ));
        }
        let request = ConnectRequest {
            host,
            port,
            timeout,
            token,
        };
        (self.start)(request, slot)
    }
}
