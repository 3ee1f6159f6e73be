//! A listener's certificates, chosen by the SNI name the client sent
//! (`certs = [{ cert, key, names }]`), with the `cert`/`key` pair, if
//! given, for a client that sent no name or one no entry covers.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates of one listener.
#[derive(Debug, Default)]
pub(super) struct ByName {
    /// `cert`/`key`: for no SNI, or an SNI no name matches.
    pub default: Option<Arc<CertifiedKey>>,
    /// `(name, certificate)`, names lowercase; `*.example.com` matches one
    /// label under `example.com`.
    pub names: Vec<(String, Arc<CertifiedKey>)>,
}

impl ByName {
    /// The certificate for `sni`, if any.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let exact = self.names.iter().find(|(n, _)| *n == sni);
            let wild = || {
                let (_, parent) = sni.split_once('.')?;
                let pattern = format!("*.{parent}");
                self.names.iter().find(|(n, _)| *n == pattern)
            };
            if let Some((_, key)) = exact.or_else(wild) {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let k = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(k.signing_key.serialize_der().into());
        let signing = super::super::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(CertifiedKey::new(vec![k.cert.der().clone()], signing))
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a, w, d) = (key(), key(), key());
        let by = ByName {
            default: Some(d.clone()),
            names: vec![
                ("a.example".into(), a.clone()),
                ("*.example".into(), w.clone()),
            ],
        };
        assert!(Arc::ptr_eq(&by.find(Some("A.Example.")).unwrap(), &a));
        assert!(Arc::ptr_eq(&by.find(Some("b.example")).unwrap(), &w));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(&by.find(Some("c.b.example")).unwrap(), &d));
        assert!(Arc::ptr_eq(&by.find(None).unwrap(), &d));
        let strict = ByName {
            default: None,
            names: vec![("a.example".into(), a)],
        };
        assert!(strict.find(Some("other.example")).is_none());
        assert!(strict.find(None).is_none());
    }
}
