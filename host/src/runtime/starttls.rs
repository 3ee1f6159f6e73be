//! A transport's side of `start-tls`: whether its connection may start
//! TLS (its `[[listen]]` or `[[connect]]` has `tls` with `start-tls =
//! true`), the guest's request, and how much of the output queued before
//! the request still goes out in plaintext. The handshake itself is the
//! connection driver's; no I/O here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::tls::TlsStats;

/// Where `start-tls` stands on one transport.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The connection's entry allows no `start-tls`.
    #[default]
    Unavailable,
    /// The guest may call `start-tls`.
    Available,
    /// The guest called it: plaintext output drains, then the handshake.
    Requested,
    /// TLS is on.
    Done,
}

/// `start-tls` on one transport.
#[derive(Debug, Default)]
pub struct StartTls {
    stage: Stage,
    /// Output bytes still to send in plaintext (those queued before the
    /// request).
    plain: Option<usize>,
    /// The entry's TLS counters (refusals are counted there).
    stats: Option<Arc<TlsStats>>,
}

impl StartTls {
    /// Sets up the connection: whether `start-tls` is allowed, and where to
    /// count.
    pub fn configure(&mut self, available: bool, stats: Option<Arc<TlsStats>>) {
        self.stage = if available {
            Stage::Available
        } else {
            Stage::Unavailable
        };
        self.stats = stats;
    }

    /// The guest's `start-tls`, with `queued` bytes of output unsent:
    /// refused (and counted) unless allowed and the connection is open,
    /// plaintext and not spliced.
    pub fn request(
        &mut self,
        queued: usize,
        encrypted: bool,
        open: bool,
        spliced: bool,
    ) -> Result<(), String> {
        let refused = match self.stage {
            Stage::Done => Some("the connection is already encrypted"),
            _ if encrypted => Some("the connection is already encrypted"),
            Stage::Requested => Some("start-tls was already called on this connection"),
            Stage::Unavailable => Some(
                "start-tls needs the connection's [[listen]] or [[connect]] entry to have a `tls` table with `start-tls = true`",
            ),
            Stage::Available if spliced => Some("the connection is spliced"),
            Stage::Available if !open => Some("the connection is closing"),
            Stage::Available => None,
        };
        if let Some(why) = refused {
            if let Some(s) = &self.stats {
                s.start_tls_refused.fetch_add(1, Ordering::Relaxed);
            }
            return Err(why.to_string());
        }
        self.stage = Stage::Requested;
        self.plain = Some(queued);
        Ok(())
    }

    /// Whether the guest asked for TLS and the handshake has not run yet.
    pub fn requested(&self) -> bool {
        self.stage == Stage::Requested
    }

    /// How many more output bytes may go out now in plaintext, while a
    /// request waits (`None`: no limit).
    pub fn plain_limit(&self) -> Option<usize> {
        self.plain
    }

    /// `n` plaintext bytes were sent.
    pub fn sent(&mut self, n: usize) {
        if let Some(p) = &mut self.plain {
            *p = p.saturating_sub(n);
        }
    }

    /// The handshake completed: everything goes out encrypted now.
    pub fn done(&mut self) {
        self.stage = Stage::Done;
        self.plain = None;
    }
}
