//! TLS, terminated in the host: guests see plaintext and never hold a key.
//!
//! rustls does the protocol and tokio-rustls drives its handshakes; this
//! module owns what Twill adds around them.
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the crypto provider (one place: ring), [`TlsInfo`] as the guest sees it |
//! | [`load`] | reading and checking PEM certificates, keys and CAs into rustls configs, with messages that say what to fix |
//! | `sni.rs` | choosing a listener's certificate by the SNI name |
//! | [`handshake`] | a handshake under its deadline over a socket the host keeps; why one failed, and the counters |
//! | [`side`] | a `[[listen]]` or `[[connect]]` entry's TLS settings, swappable as a whole (for a reload) |
//!
//! The socket with TLS on it (plaintext in, records out, without blocking)
//! is [`crate::wire::Wire`]'s.

pub mod handshake;
pub mod load;
pub mod side;
mod sni;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

pub use handshake::{Failure, HandshakeError, Side, TlsStats};
pub use side::{ClientSide, ServerSide};

/// The crypto provider every TLS config in the host uses: ring, chosen by
/// measurement over aws-lc-rs (BENCHMARKS.md, "TLS": less server CPU per
/// handshake, per round trip and per bulk block, with the same cipher
/// suite), and it builds without cmake or a C++ toolchain. Changing it is
/// this function and [`sha256_hex`].
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The SHA-256 digest of `data`, as 64 lowercase hex digits (from the same
/// crypto library as [`provider`]).
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The peer's certificate, as the guest sees it (`peer-certificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name.
    pub subject: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// The DER encoding.
    pub der: Vec<u8>,
}

impl PeerCertificate {
    /// Describes `der`; an unparsable certificate (rustls verified it, so
    /// only an unverified one could be) gets an empty subject.
    pub fn of(der: &CertificateDer<'_>) -> PeerCertificate {
        let subject = x509_parser::parse_x509_certificate(der.as_ref())
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        PeerCertificate {
            subject,
            sha256: sha256_hex(der.as_ref()),
            der: der.to_vec(),
        }
    }
}

/// What a completed handshake negotiated (`tls-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The IANA name of the cipher suite.
    pub cipher_suite: String,
    /// The SNI name the client sent (server side) or the name the server
    /// was verified against (client side).
    pub server_name: Option<String>,
    /// The ALPN protocol agreed on.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The peer's end-entity certificate, if it sent one.
    pub peer_certificate: Option<PeerCertificate>,
}

impl TlsInfo {
    /// Reads what `conn` negotiated; `server_name` is the client side's
    /// verified name (a server connection reads the SNI from `conn`).
    pub fn of(conn: &rustls::Connection, server_name: Option<String>) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => String::new(),
        };
        let cipher_suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str().map(str::to_string))
            .unwrap_or_default();
        let server_name = match conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => server_name,
        };
        TlsInfo {
            version,
            cipher_suite,
            server_name,
            alpn_protocol: conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificate: conn
                .peer_certificates()
                .and_then(<[CertificateDer<'_>]>::first)
                .map(PeerCertificate::of),
        }
    }
}
