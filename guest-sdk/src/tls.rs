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

/// The shared test vectors (`test-vectors/tls.json`), which the Python and
/// JavaScript SDKs' tests run too: the host's record as the SDK shows it,
/// and start-tls's errors.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let text = include_str!("../test-vectors/tls.json");
        serde_json::from_str(text).unwrap()
    }

    fn opt_str(v: &Value) -> Option<String> {
        v.as_str().map(str::to_string)
    }

    fn bytes(v: &Value) -> Option<Vec<u8>> {
        v.as_array()
            .map(|a| a.iter().map(|b| b.as_u64().unwrap() as u8).collect())
    }

    /// The record as the bindings would hand it over.
    fn host_record(h: &Value) -> wit_types::TlsInfo {
        wit_types::TlsInfo {
            version: h["version"].as_str().unwrap().into(),
            cipher_suite: h["cipher-suite"].as_str().unwrap().into(),
            server_name: opt_str(&h["server-name"]),
            alpn_protocol: bytes(&h["alpn-protocol"]),
            peer_certificate: h["peer-certificate"].as_object().map(|c| {
                wit_types::PeerCertificate {
                    subject: c["subject"].as_str().unwrap().into(),
                    sha256: c["sha256"].as_str().unwrap().into(),
                    der: bytes(&c["der"]).unwrap(),
                }
            }),
        }
    }

    #[test]
    fn tls_info_as_the_sdk_shows_it() {
        let v = vectors();
        let cases = v["tls_info"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let (host, expect) = (&case["host"], &case["expect"]);
            if host.is_null() {
                assert!(expect.is_null(), "{name}");
                continue;
            }
            let record = host_record(host);
            let info = TlsInfo::from(record.clone());
            assert_eq!(info.version, expect["version"].as_str().unwrap(), "{name}");
            assert_eq!(
                info.cipher_suite,
                expect["cipher_suite"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(info.server_name, opt_str(&expect["server_name"]), "{name}");
            // The bytes unchanged; the text as the vectors decode it.
            assert_eq!(info.alpn_protocol, record.alpn_protocol, "{name}");
            let alpn = info
                .alpn_protocol
                .as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned());
            assert_eq!(alpn, opt_str(&expect["alpn_protocol"]), "{name}");
            match (
                &info.peer_certificate,
                expect["peer_certificate"].as_object(),
            ) {
                (None, None) => {}
                (Some(c), Some(e)) => {
                    assert_eq!(c.subject, e["subject"].as_str().unwrap(), "{name}");
                    assert_eq!(c.sha256, e["sha256"].as_str().unwrap(), "{name}");
                    assert_eq!(Some(c.der.clone()), record.peer_certificate.map(|p| p.der));
                }
                (got, want) => panic!("{name}: peer certificate {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn start_tls_errors_carry_the_hosts_message() {
        let v = vectors();
        for case in v["start_tls"].as_array().unwrap() {
            let Some(host_error) = case["host_error"].as_str() else {
                assert!(case["expect_error"].is_null());
                continue;
            };
            let e = StartTlsError(host_error.to_string());
            let want = case["expect_error"].as_str().unwrap();
            assert_eq!(e.0, want);
            assert_eq!(e.to_string(), format!("cannot start TLS: {want}"));
        }
    }
}
