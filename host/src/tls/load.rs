//! Reading and checking TLS material: PEM certificate chains, private keys
//! and CA bundles, each step with a message that says what is wrong and
//! what would be right, so that `twill check` can point at the key.
//!
//! Nothing here is cryptographic: PEM is parsed by `rustls-pki-types`, keys
//! are loaded by the crypto provider, names are checked by webpki (through
//! rustls), dates and names are read by `x509-parser`.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn pem_problem(path: &Path, e: pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!(
            "{} holds no {what} (expected a PEM block such as -----BEGIN {}-----)",
            path.display(),
            if what.contains("key") {
                "PRIVATE KEY"
            } else {
                "CERTIFICATE"
            }
        ),
        e => format!("{} is not valid PEM: {e}", path.display()),
    }
}

/// Reads a PEM certificate chain: the server's (or client's) certificate
/// first, then the intermediates.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_problem(path, e, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(path, e, "certificate"))?;
    if chain.is_empty() {
        return Err(pem_problem(path, pem::Error::NoItemsFound, "certificate"));
    }
    for (i, der) in chain.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(der.as_ref()) {
            return Err(format!(
                "certificate {} in {} is not a valid X.509 certificate: {e}",
                i + 1,
                path.display()
            ));
        }
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_problem(path, e, "private key"))
}

/// Checks that the end-entity certificate of `chain` is valid now: not
/// expired, not yet to come.
pub fn check_dates(chain: &[CertificateDer<'_>], path: &Path) -> Result<(), String> {
    let Some(first) = chain.first() else {
        return Ok(());
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(first.as_ref()) else {
        return Ok(()); // read_chain reported it
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = cert.validity();
    if now > v.not_after.timestamp() {
        return Err(format!(
            "the certificate in {} expired on {} (subject {}): renew it",
            path.display(),
            v.not_after,
            cert.subject()
        ));
    }
    if now < v.not_before.timestamp() {
        return Err(format!(
            "the certificate in {} is not valid before {} (subject {}): check the clock or the certificate",
            path.display(),
            v.not_before,
            cert.subject()
        ));
    }
    Ok(())
}

/// Loads `key` with the crypto provider and checks that it is the key of
/// `chain`'s first certificate.
pub fn pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, String> {
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("cannot use the key in {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not match the certificate ({e}): give the key the certificate was issued for",
            key_path.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The DNS names and addresses a certificate is for (its subject
/// alternative names), for messages.
pub fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) => Some(s.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Checks that `name` is a valid server name and that `chain`'s first
/// certificate covers it.
pub fn check_covers(chain: &[CertificateDer<'_>], name: &str) -> Result<(), String> {
    let server_name = ServerName::try_from(name.trim_end_matches('.'))
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))?;
    let Some(first) = chain.first() else {
        return Ok(());
    };
    if let Some(pattern) = name.strip_prefix("*.") {
        // A wildcard entry: the certificate must be for the same wildcard.
        let names = names_of(first);
        return if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            Ok(())
        } else {
            Err(format!(
                "the certificate is not for *.{pattern} (it is for: {})",
                names.join(", ")
            ))
        };
    }
    let parsed = rustls::server::ParsedCertificate::try_from(first)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    rustls::client::verify_server_name(&parsed, &server_name).map_err(|_| {
        format!(
            "the certificate does not cover {name:?} (it is for: {})",
            names_of(first).join(", ")
        )
    })
}

/// Reads a PEM bundle of CA certificates to trust.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = read_chain(path)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            format!(
                "certificate {} in {} cannot be a trust anchor: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The system's trust store (what `ca` defaults to on a `[[connect]]`).
pub fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "the system's trust store has no certificates{why}: install ca-certificates, or give `ca`"
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn chain_key_names_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("twill-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let cert = write(&dir, "a.pem", &a.cert.pem());
        let key = write(&dir, "a.key", &a.signing_key.serialize_pem());
        let other_key = write(&dir, "b.key", &b.signing_key.serialize_pem());
        let chain = read_chain(&cert).unwrap();
        check_dates(&chain, &cert).unwrap();
        check_covers(&chain, "a.example").unwrap();
        let e = check_covers(&chain, "b.example").unwrap_err();
        assert!(
            e.contains("does not cover \"b.example\"") && e.contains("a.example"),
            "{e}"
        );
        pair(chain.clone(), read_key(&key).unwrap(), &key).unwrap();
        let e = pair(chain, read_key(&other_key).unwrap(), &other_key).unwrap_err();
        assert!(e.contains("does not match the certificate"), "{e}");
        // A key file given as the certificate, and the reverse.
        assert!(
            read_chain(&key)
                .unwrap_err()
                .contains("holds no certificate")
        );
        assert!(
            read_key(&cert)
                .unwrap_err()
                .contains("holds no private key")
        );
        assert!(
            read_chain(&dir.join("missing.pem"))
                .unwrap_err()
                .contains("cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
