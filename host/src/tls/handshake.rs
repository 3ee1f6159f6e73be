//! One TLS handshake, server or client side, under its deadline: run by
//! tokio-rustls over a socket the host keeps (borrowed, so that the same
//! socket goes on carrying the connection, and so that `start-tls` can run
//! it on a connection that began in plaintext). A failure is classified
//! ([`Failure`]) and counted ([`TlsStats`]); it costs only its connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::side::{ClientSide, SEND_BUFFER, ServerSide};

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The deadline (`handshake-timeout`) passed.
    Timeout,
    /// The peer did not speak TLS (plaintext sent to a TLS port).
    NotTls,
    /// No certificate for the server name the client asked for.
    UnknownName,
    /// The client presented no certificate, or one `client-ca` did not
    /// sign.
    ClientCertificate,
    /// The server's certificate failed verification (expired, wrong name,
    /// unknown issuer): a connector's failure.
    PeerCertificate,
    /// The peer closed or reset the connection mid-handshake.
    Closed,
    /// Anything else: no common version or cipher suite, no common ALPN
    /// protocol, an alert from the peer.
    Other,
}

impl Failure {
    /// Every kind, in counter order.
    pub const ALL: [Failure; 7] = [
        Failure::Timeout,
        Failure::NotTls,
        Failure::UnknownName,
        Failure::ClientCertificate,
        Failure::PeerCertificate,
        Failure::Closed,
        Failure::Other,
    ];

    /// A short label, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::NotTls => "not_tls",
            Failure::UnknownName => "unknown_server_name",
            Failure::ClientCertificate => "client_certificate",
            Failure::PeerCertificate => "peer_certificate",
            Failure::Closed => "closed",
            Failure::Other => "other",
        }
    }
}

/// A failed handshake: what kind, and the message the logs and the guest
/// (`client-connection-failed`, `connection-lost`) see.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandshakeError {
    /// The kind.
    pub failure: Failure,
    /// Why, in words.
    pub message: String,
}

/// Handshake counters for a listener, or for the reactor's connectors.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    failed: [AtomicU64; 7],
    /// `start-tls` calls refused (no `tls` table with `start-tls = true`,
    /// or a connection already encrypted).
    pub start_tls_refused: AtomicU64,
}

impl TlsStats {
    /// Handshakes that failed this way.
    pub fn failed(&self, f: Failure) -> u64 {
        self.failed[f as usize].load(Ordering::Relaxed)
    }

    /// Counts one outcome.
    pub fn count<T>(&self, r: &Result<T, HandshakeError>) {
        match r {
            Ok(_) => self.handshakes.fetch_add(1, Ordering::Relaxed),
            Err(e) => self.failed[e.failure as usize].fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Which side of a handshake the host takes, with that side's settings.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    /// The server: an accepted connection.
    Server(&'a ServerSide),
    /// The client: a `[[connect]]` connection.
    Client(&'a ClientSide),
}

/// Runs a handshake on `tcp` as `side` says, under its deadline. Returns
/// the connection and, on the client side, the name the server was
/// verified against (rustls keeps no copy a caller can read).
pub async fn run(
    tcp: &TcpStream,
    side: Side<'_>,
) -> Result<(rustls::Connection, Option<String>), HandshakeError> {
    let within = match side {
        Side::Server(s) => s.handshake_timeout,
        Side::Client(c) => c.handshake_timeout,
    };
    let done = tokio::time::timeout(within, async {
        match side {
            Side::Server(s) => {
                let stream = tokio_rustls::TlsAcceptor::from(s.config.clone())
                    .accept(Borrowed(tcp))
                    .await
                    .map_err(|e| classify(&e, true))?;
                Ok((rustls::Connection::Server(stream.into_inner().1), None))
            }
            Side::Client(c) => {
                let stream = tokio_rustls::TlsConnector::from(c.config.clone())
                    .connect(c.server_name.clone(), Borrowed(tcp))
                    .await
                    .map_err(|e| classify(&e, false))?;
                let name = c.server_name.to_str().into_owned();
                Ok((
                    rustls::Connection::Client(stream.into_inner().1),
                    Some(name),
                ))
            }
        }
    });
    let (mut conn, name) = done.await.map_err(|_| timeout(within))??;
    conn.set_buffer_limit(Some(SEND_BUFFER));
    Ok((conn, name))
}

fn timeout(after: std::time::Duration) -> HandshakeError {
    HandshakeError {
        failure: Failure::Timeout,
        message: format!("TLS handshake did not complete within {after:?} (handshake-timeout)"),
    }
}

/// Sorts a handshake's error into a [`Failure`] with its message.
fn classify(e: &io::Error, server: bool) -> HandshakeError {
    use rustls::Error as E;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<E>());
    let failure = match inner {
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) if server => Failure::NotTls,
        Some(E::General(m)) if m.contains("no server certificate") => Failure::UnknownName,
        Some(E::NoCertificatesPresented | E::InvalidCertificate(_)) if server => {
            Failure::ClientCertificate
        }
        Some(E::InvalidCertificate(_)) => Failure::PeerCertificate,
        Some(_) => Failure::Other,
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Closed,
            _ => Failure::Other,
        },
    };
    let message = match (failure, inner) {
        (Failure::NotTls, _) => format!("TLS handshake failed: the peer does not speak TLS ({e})"),
        (Failure::UnknownName, _) => {
            "TLS handshake failed: no certificate for the server name the client asked for".into()
        }
        (Failure::Closed, _) => {
            format!("TLS handshake failed: the peer closed the connection ({e})")
        }
        _ => format!("TLS handshake failed: {e}"),
    };
    HandshakeError { failure, message }
}

/// The socket, borrowed for a handshake: tokio-rustls reads and writes it
/// through this, and the connection keeps the socket afterwards.
struct Borrowed<'a>(&'a TcpStream);

impl AsyncRead for Borrowed<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Borrowed<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection, not the handshake, decides when to close.
        Poll::Ready(Ok(()))
    }
}
