//! One `[[listen]]` or `[[connect]]` entry's TLS: the rustls config built
//! from its `tls` table, the handshake deadline and whether the guest may
//! `start-tls`. A listener's settings are part of what a config reload
//! replaces under its bound socket ([`crate::swap::Swappable`]); each
//! handshake takes the settings current when its connection was accepted.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::sni::ByName;

/// `handshake-timeout` when not set.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of TLS records a connection holds unsent before it stops
/// taking plaintext (rustls's buffer limit; plaintext waits in the
/// transport's own output queue, under its marks).
pub const SEND_BUFFER: usize = 64 << 10;

/// What a `[[listen]] tls` table says, checked and loaded.
#[derive(Debug)]
pub struct ServerSettings {
    /// `cert`/`key`: served to a client that sent no SNI, or one no named
    /// certificate covers.
    pub default: Option<Arc<CertifiedKey>>,
    /// `certs = [{ cert, key, names }]`: by SNI name.
    pub named: Vec<(String, Arc<CertifiedKey>)>,
    /// `client-ca`: client certificates are required, and must chain to it.
    pub client_ca: Option<RootCertStore>,
    /// `client-auth = "optional"`: with `client-ca`, a client may present
    /// no certificate (one it presents must still chain to `client-ca`).
    pub client_auth_optional: bool,
    /// `alpn`: the protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// `handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `start-tls = true`: the connection starts in plaintext and the
    /// guest's `start-tls` begins the handshake.
    pub start_tls: bool,
}

/// A listener's TLS, ready to accept with.
#[derive(Debug)]
pub struct ServerSide {
    /// The rustls config.
    pub config: Arc<rustls::ServerConfig>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Whether connections start in plaintext (`start-tls = true`).
    pub start_tls: bool,
    /// What `twill check` says about it.
    pub summary: String,
}

/// Two settings are the same if they are the same rustls config (a config
/// loaded twice from the same files is not: its keys were read again).
impl PartialEq for ServerSide {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for ServerSide {}

impl ServerSide {
    /// Builds the rustls server config from checked settings.
    pub fn build(s: ServerSettings) -> Result<ServerSide, String> {
        let summary = server_summary(&s);
        let builder = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match s.client_ca {
            Some(roots) => {
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
                let v = if s.client_auth_optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(ByName {
            default: s.default,
            names: s.named,
        }));
        config.alpn_protocols = s.alpn;
        Ok(ServerSide {
            config: Arc::new(config),
            handshake_timeout: s.handshake_timeout,
            start_tls: s.start_tls,
            summary,
        })
    }
}

/// One line on a listener's TLS, for `twill check`.
fn server_summary(s: &ServerSettings) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &s.default {
        let names = d
            .cert
            .first()
            .map(|c| super::load::names_of(c).join(", "))
            .unwrap_or_default();
        parts.push(format!("certificate for {names}"));
    }
    if !s.named.is_empty() {
        let names: Vec<&str> = s.named.iter().map(|(n, _)| n.as_str()).collect();
        parts.push(format!("by SNI: {}", names.join(", ")));
    }
    if s.client_ca.is_some() {
        parts.push(if s.client_auth_optional {
            "client certificates optional".into()
        } else {
            "client certificates required".into()
        });
    }
    if !s.alpn.is_empty() {
        let alpn: Vec<String> = s
            .alpn
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        parts.push(format!("ALPN {}", alpn.join(", ")));
    }
    if s.start_tls {
        parts.push("plaintext until start-tls".into());
    }
    parts.push(format!("handshake-timeout {:?}", s.handshake_timeout));
    parts.join("; ")
}

/// What a `[[connect]] tls` table says, checked and loaded.
#[derive(Debug)]
pub struct ClientSettings {
    /// `ca`, or the system's trust store.
    pub roots: RootCertStore,
    /// `cert`/`key`: a client certificate to present.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// `server-name`, or the entry's `host`.
    pub server_name: ServerName<'static>,
    /// `alpn`.
    pub alpn: Vec<Vec<u8>>,
    /// `handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `start-tls = true`.
    pub start_tls: bool,
}

/// A connector's TLS, ready to connect with.
#[derive(Debug)]
pub struct ClientSide {
    /// The rustls config.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must cover.
    pub server_name: ServerName<'static>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Whether connections start in plaintext (`start-tls = true`).
    pub start_tls: bool,
    /// What `twill check` says about it.
    pub summary: String,
}

/// As for [`ServerSide`]: the same rustls config.
impl PartialEq for ClientSide {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl ClientSide {
    /// Builds the rustls client config from checked settings.
    pub fn build(s: ClientSettings) -> Result<ClientSide, String> {
        let summary = format!(
            "verifies {} against {} trust anchor(s){}{}{}",
            s.server_name.to_str(),
            s.roots.len(),
            if s.identity.is_some() {
                "; presents a client certificate"
            } else {
                ""
            },
            if s.start_tls {
                "; plaintext until start-tls"
            } else {
                ""
            },
            format_args!("; handshake-timeout {:?}", s.handshake_timeout),
        );
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(s.roots);
        let mut config = match s.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cannot use the client certificate and key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = s.alpn;
        Ok(ClientSide {
            config: Arc::new(config),
            server_name: s.server_name,
            handshake_timeout: s.handshake_timeout,
            start_tls: s.start_tls,
            summary,
        })
    }
}
