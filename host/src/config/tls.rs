//! The `tls` tables of `[[listen]]` and `[[connect]]`. Every path is
//! resolved against the config file's directory, and every certificate,
//! key and CA bundle is loaded and checked here (the key matches its
//! certificate, the certificate is valid today, it covers the names it is
//! served for), so that `twill check` finds what a handshake would, each
//! problem at its file:line:key. The result is the rustls config itself
//! (`crate::tls::side`), so what was checked is what serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use toml::de::DeValue;

use super::check::{Checker, Table};
use super::show::quote;
use crate::tls::load;
use crate::tls::side::{
    ClientSettings, ClientSide, DEFAULT_HANDSHAKE_TIMEOUT, ServerSettings, ServerSide,
};

const LISTEN_TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "certs",
    "client-ca",
    "client-auth",
    "alpn",
    "handshake-timeout",
    "start-tls",
];
const CERT_KEYS: &[&str] = &["cert", "key", "names"];
const CONNECT_TLS_KEYS: &[&str] = &[
    "server-name",
    "ca",
    "cert",
    "key",
    "alpn",
    "handshake-timeout",
    "start-tls",
];

/// The shortest `handshake-timeout`.
const MIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);

/// A path key of `t`, resolved against `base`, with its span.
fn path_of(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    name: &str,
    base: &Path,
) -> Option<(PathBuf, std::ops::Range<usize>)> {
    let (s, span) = c.string(t, name)?;
    if s.trim().is_empty() {
        c.error(Some(span), &t.field(name), "is empty: give a file path");
        return None;
    }
    Some((base.join(s), span))
}

/// A certificate chain and its key, checked.
struct Certified {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The two, loaded by the crypto provider.
    signed: Arc<CertifiedKey>,
}

/// `cert` and `key` of `t` (both or neither), loaded and checked: dates,
/// each of `names` covered (`names_key` is where they are written), the
/// key matching. `None` if absent or wrong (the error is recorded).
fn certified(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    base: &Path,
    names: &[(String, std::ops::Range<usize>)],
    names_key: &str,
) -> Option<Certified> {
    match (t.get("cert"), t.get("key")) {
        (None, None) => return None,
        (Some(_), None) => {
            c.required(
                t,
                "key",
                "key = \"server.key\" (the certificate's private key)",
            );
            return None;
        }
        (None, Some(_)) => {
            c.required(
                t,
                "cert",
                "cert = \"server.pem\" (the PEM certificate chain)",
            );
            return None;
        }
        (Some(_), Some(_)) => {}
    }
    let cert = path_of(c, t, "cert", base);
    let key = path_of(c, t, "key", base);
    let chain = cert.as_ref().and_then(|(path, span)| {
        let checked = load::read_chain(path).and_then(|chain| {
            load::check_dates(&chain, path)?;
            Ok(chain)
        });
        checked
            .map_err(|m| c.error(Some(span.clone()), &t.field("cert"), m))
            .ok()
    });
    let key_der = key.as_ref().and_then(|(path, span)| {
        load::read_key(path)
            .map_err(|m| c.error(Some(span.clone()), &t.field("key"), m))
            .ok()
    });
    let chain = chain?;
    for (i, (name, span)) in names.iter().enumerate() {
        if let Err(m) = load::check_covers(&chain, name) {
            c.error(Some(span.clone()), &format!("{names_key}[{i}]"), m);
        }
    }
    let (key_path, key_span) = key?;
    let key_der = key_der?;
    match load::pair(chain.clone(), key_der.clone_key(), &key_path) {
        Ok(signed) => Some(Certified {
            chain,
            key: key_der,
            signed,
        }),
        Err(m) => {
            c.error(Some(key_span), &t.field("key"), m);
            None
        }
    }
}

/// A `certs` entry's `names`: a non-empty array of names.
fn names(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Vec<(String, std::ops::Range<usize>)> {
    let Some(v) = c.required(t, "names", "names = [\"example.com\", \"*.example.com\"]") else {
        return Vec::new();
    };
    let key = t.field("names");
    let DeValue::Array(items) = v.get_ref() else {
        c.type_error(v, &key, "an array of server names");
        return Vec::new();
    };
    if items.is_empty() {
        c.error(
            Some(v.span()),
            &key,
            "is empty: list the server names (SNI) this certificate is served for",
        );
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref() {
            DeValue::String(s) => out.push((s.to_ascii_lowercase(), item.span())),
            _ => c.type_error(item, &format!("{key}[{i}]"), "a server name (a string)"),
        }
    }
    out
}

/// `alpn = ["h2", "http/1.1"]`.
fn alpn(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Vec<Vec<u8>> {
    let Some(v) = t.get("alpn") else {
        return Vec::new();
    };
    let key = t.field("alpn");
    let DeValue::Array(items) = v.get_ref() else {
        c.type_error(
            v,
            &key,
            "an array of protocol names, such as [\"h2\", \"http/1.1\"]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref() {
            DeValue::String(s) if !s.is_empty() && s.len() <= 255 => {
                out.push(s.as_bytes().to_vec())
            }
            DeValue::String(s) => c.error(
                Some(item.span()),
                &format!("{key}[{i}]"),
                format!("{}: an ALPN protocol name is 1 to 255 bytes", quote(s)),
            ),
            _ => c.type_error(item, &format!("{key}[{i}]"), "a protocol name (a string)"),
        }
    }
    out
}

/// The keys both `tls` tables have: `alpn`, `handshake-timeout` and
/// `start-tls`, with their defaults.
struct Common {
    alpn: Vec<Vec<u8>>,
    handshake_timeout: std::time::Duration,
    start_tls: bool,
}

fn common(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Common {
    let alpn = alpn(c, t);
    let handshake_timeout = c.duration(t, "handshake-timeout", MIN_HANDSHAKE_TIMEOUT);
    let start_tls = c.bool(t, "start-tls");
    Common {
        alpn,
        handshake_timeout: handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        start_tls: start_tls.unwrap_or(false),
    }
}

/// `[[listen]] tls`, if present and valid.
pub(super) fn parse_listen_tls(
    c: &mut Checker<'_>,
    parent: &Table<'_, '_>,
    base: &Path,
) -> Option<Arc<ServerSide>> {
    let v = parent.get("tls")?;
    let before = c.error_count();
    let t = c.table(parent.field("tls"), v, LISTEN_TLS_KEYS)?;
    let default = certified(c, &t, base, &[], "").map(|p| p.signed);
    let mut named: Vec<(String, Arc<CertifiedKey>)> = Vec::new();
    if let Some(list) = t.get("certs") {
        let key = t.field("certs");
        match list.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Some(ct) = c.table(format!("{key}[{i}]"), item, CERT_KEYS) else {
                        continue;
                    };
                    let names = names(c, &ct);
                    if ct.get("cert").is_none() && ct.get("key").is_none() {
                        c.required(&ct, "cert", "cert = \"a.pem\"");
                        c.required(&ct, "key", "key = \"a.key\"");
                    }
                    let names_key = ct.field("names");
                    let Some(ck) = certified(c, &ct, base, &names, &names_key).map(|p| p.signed)
                    else {
                        continue;
                    };
                    for (name, span) in names {
                        if named.iter().any(|(n, _)| *n == name) {
                            c.error(
                                Some(span),
                                &names_key,
                                format!("{} is already served by an earlier entry of `certs`", quote(&name)),
                            );
                        } else {
                            named.push((name, ck.clone()));
                        }
                    }
                }
            }
            _ => c.type_error(
                list,
                &key,
                "an array of tables: certs = [{ cert = \"a.pem\", key = \"a.key\", names = [\"a.example\"] }]",
            ),
        }
    }
    if t.get("cert").is_none() && t.get("key").is_none() && t.get("certs").is_none() {
        c.error(
            Some(t.span.clone()),
            &t.key,
            "has no certificate: add cert = \"server.pem\" and key = \"server.key\" (PEM files, relative to this config file), or certs = [...] to choose by SNI name",
        );
    }
    let client_ca = path_of(c, &t, "client-ca", base).and_then(|(path, span)| {
        load::read_roots(&path)
            .map_err(|m| c.error(Some(span), &t.field("client-ca"), m))
            .ok()
    });
    let client_auth_optional = match c.string(&t, "client-auth") {
        None => false,
        Some(("required", _)) => false,
        Some(("optional", span)) => {
            if t.get("client-ca").is_none() {
                c.error(
                    Some(span),
                    &t.field("client-auth"),
                    "means nothing without `client-ca` (the CA client certificates must chain to)",
                );
            }
            true
        }
        Some((other, span)) => {
            c.error(
                Some(span),
                &t.field("client-auth"),
                format!(
                    "{}: use \"required\" (the default with client-ca) or \"optional\"",
                    quote(other)
                ),
            );
            false
        }
    };
    let common = common(c, &t);
    if c.error_count() > before {
        return None;
    }
    let settings = ServerSettings {
        default,
        named,
        client_ca,
        client_auth_optional,
        alpn: common.alpn,
        handshake_timeout: common.handshake_timeout,
        start_tls: common.start_tls,
    };
    match ServerSide::build(settings) {
        Ok(side) => Some(Arc::new(side)),
        Err(m) => {
            c.error(Some(t.span.clone()), &t.key, m);
            None
        }
    }
}

/// `[[connect]] tls`, if present and valid; `host` is the entry's, the
/// default `server-name`.
pub(super) fn parse_connect_tls(
    c: &mut Checker<'_>,
    parent: &Table<'_, '_>,
    base: &Path,
    host: Option<&str>,
) -> Option<Arc<ClientSide>> {
    let v = parent.get("tls")?;
    let before = c.error_count();
    let t = c.table(parent.field("tls"), v, CONNECT_TLS_KEYS)?;
    let server_name = match c.string(&t, "server-name") {
        Some((name, span)) => ServerName::try_from(name.to_string())
            .map_err(|_| {
                c.error(
                    Some(span),
                    &t.field("server-name"),
                    format!("{}: not a DNS name or IP address", quote(name)),
                )
            })
            .ok(),
        None => host.and_then(|h| {
            ServerName::try_from(h.to_string())
                .map_err(|_| {
                    c.error(
                        Some(t.span.clone()),
                        &t.field("server-name"),
                        format!(
                            "the host {} is not a name a certificate can be for: set server-name",
                            quote(h)
                        ),
                    )
                })
                .ok()
        }),
    };
    let roots = match path_of(c, &t, "ca", base) {
        Some((path, span)) => load::read_roots(&path)
            .map_err(|m| c.error(Some(span), &t.field("ca"), m))
            .ok(),
        None if t.get("ca").is_some() => None,
        None => load::system_roots()
            .map_err(|m| c.error(Some(t.span.clone()), &t.field("ca"), m))
            .ok(),
    };
    let identity = certified(c, &t, base, &[], "").map(|p| (p.chain, p.key));
    let common = common(c, &t);
    if c.error_count() > before {
        return None;
    }
    let settings = ClientSettings {
        roots: roots?,
        identity,
        server_name: server_name?,
        alpn: common.alpn,
        handshake_timeout: common.handshake_timeout,
        start_tls: common.start_tls,
    };
    match ClientSide::build(settings) {
        Ok(side) => Some(Arc::new(side)),
        Err(m) => {
            c.error(Some(t.span.clone()), &t.key, m);
            None
        }
    }
}
