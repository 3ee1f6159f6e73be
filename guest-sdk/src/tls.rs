//! TLS as a protocol sees it. The host terminates TLS: the protocol reads
//! and writes plaintext and never holds a key. It can ask what the
//! handshake negotiated ([`Transport::tls_info`], Twisted's
//! `ISSLTransport` and `getPeerCertificate`) and, on a connection that
//! began in plaintext, start TLS ([`Transport::start_tls`], Twisted's
//! `ITLSTransport.startTLS`).

use std::fmt;

use crate::{Transport, wit_types};

/// The certificate the peer presented: Twisted's `getPeerCertificate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name, such as `CN=alice, O=Example`.
    pub subject: String,
    /// SHA-256 of the DER encoding, 64 lowercase hex digits.
    pub sha256: String,
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
}

/// What a TLS handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite, such as `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// The server name (SNI) the client sent; on a client connection, the
    /// name the server was verified against.
    pub server_name: Option<String>,
    /// The ALPN protocol agreed on (Twisted's `negotiatedProtocol`).
    pub alpn_protocol: Option<Vec<u8>>,
    /// The peer's certificate, if it presented one.
    pub peer_certificate: Option<PeerCertificate>,
}

impl From<wit_types::TlsInfo> for TlsInfo {
    fn from(i: wit_types::TlsInfo) -> Self {
        TlsInfo {
            version: i.version,
            cipher_suite: i.cipher_suite,
            server_name: i.server_name,
            alpn_protocol: i.alpn_protocol,
            peer_certificate: i.peer_certificate.map(|c| PeerCertificate {
                subject: c.subject,
                sha256: c.sha256,
                der: c.der,
            }),
        }
    }
}

/// Why [`Transport::start_tls`] refused: the connection's entry has no
/// `tls` table with `start-tls = true`, or the connection is already
/// encrypted, starting TLS, spliced or closing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartTlsError(pub String);

impl fmt::Display for StartTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot start TLS: {}", self.0)
    }
}

impl std::error::Error for StartTlsError {}

impl Transport {
    /// What the connection's TLS handshake negotiated; `None` on a
    /// plaintext connection (and after [`Transport::start_tls`] until its
    /// handshake completed).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.inner.handle.tls_info().map(TlsInfo::from)
    }

    /// The peer's certificate, if the connection is TLS and the peer
    /// presented one: Twisted's `getPeerCertificate`.
    pub fn peer_certificate(&self) -> Option<PeerCertificate> {
        self.tls_info().and_then(|i| i.peer_certificate)
    }

    /// Starts TLS on this plaintext connection: Twisted's `startTLS`.
    /// Output already written goes out in plaintext; then the host runs the
    /// handshake (as server or client, as the connection's entry says), and
    /// what is written after this call goes out encrypted. Nothing is read
    /// during the handshake; a failed one ends the connection
    /// (`connection_lost` with a lost reason saying why).
    pub fn start_tls(&self) -> Result<(), StartTlsError> {
        self.inner.handle.start_tls().map_err(StartTlsError)
    }
}
