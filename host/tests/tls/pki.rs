//! Throwaway certificates for the TLS tests, made with rcgen in a scratch
//! directory: a server CA and leaves under it (localhost, a.example,
//! b.example, one expired), a client CA with a client (alice), and a rogue
//! CA's client (mallory). Plus rustls client configs to dial with, and
//! the starttls guest under test (`TWILL_STARTTLS_WASM`, for the Python
//! and JavaScript versions).

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The files, by name (`NAME.pem`, `NAME.key`), and DERs to compare with.
pub struct Pki {
    pub dir: PathBuf,
    /// The server leaf for localhost / 127.0.0.1.
    pub server_der: CertificateDer<'static>,
    /// alice's client certificate.
    pub alice_der: CertificateDer<'static>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    pub fn new() -> Pki {
        let dir = super::support::scratch();
        let server_ca = ca("Twill Test CA");
        let client_ca = ca("Twill Test Client CA");
        let rogue_ca = ca("Rogue CA");
        std::fs::write(dir.join("ca.pem"), server_ca.pem()).unwrap();
        std::fs::write(dir.join("client-ca.pem"), client_ca.pem()).unwrap();
        let leaf = |name: &str,
                    sans: &[&str],
                    cn: &str,
                    issuer: &CertifiedIssuer<'_, KeyPair>,
                    expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name
                .push(DnType::OrganizationName, "Twill Tests");
            if expired {
                let now = time::OffsetDateTime::now_utc();
                p.not_before = now - time::Duration::days(30);
                p.not_after = now - time::Duration::days(1);
            }
            let cert = p.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            cert.der().clone()
        };
        let server_der = leaf(
            "server",
            &["localhost", "127.0.0.1"],
            "localhost",
            &server_ca,
            false,
        );
        leaf("a", &["a.example"], "a.example", &server_ca, false);
        leaf("b", &["b.example"], "b.example", &server_ca, false);
        leaf(
            "expired",
            &["localhost", "127.0.0.1"],
            "localhost",
            &server_ca,
            true,
        );
        let alice_der = leaf("alice", &[], "alice", &client_ca, false);
        leaf("mallory", &[], "mallory", &rogue_ca, false);
        Pki {
            dir,
            server_der,
            alice_der,
        }
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client config trusting the server CA, presenting `identity`
    /// (`alice`, `mallory`) if given, offering `alpn`.
    pub fn client(&self, identity: Option<&str>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(twill::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(name) => builder
                .with_client_auth_cert(
                    chain(&self.path(&format!("{name}.pem"))),
                    PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A server config for the leaf `name`.
    pub fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(twill::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                chain(&self.path(&format!("{name}.pem"))),
                PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A server name.
pub fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_string()).unwrap()
}

/// The starttls guest: `TWILL_STARTTLS_WASM` if set (the Python and
/// JavaScript versions, from scripts/test-polyglot.sh), else the Rust one.
pub fn starttls_wasm() -> PathBuf {
    std::env::var("TWILL_STARTTLS_WASM")
        .map(Into::into)
        .unwrap_or_else(|_| super::support::repo().join("guests/starttls/starttls.wasm"))
}

/// The memory line for a Python or JavaScript starttls guest
/// (`TWILL_TEST_MEMORY`); none for the Rust one.
pub fn starttls_memory() -> String {
    match std::env::var("TWILL_STARTTLS_WASM") {
        Ok(_) => super::support::memory_line(),
        Err(_) => String::new(),
    }
}
