//! `[[listen]] proxy-protocol` and `proxy-from`: which PROXY protocol
//! versions a listener reads, and from which balancers. Both keys go
//! together: a header is trusted only from the sources named, so there
//! is no default that would let any client name itself another address.
//! The policy itself is read by `crate::listener::proxy`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use toml::de::DeValue;

use super::check::{Checker, Table};
use super::show::quote;

/// Which header versions a listener accepts (`proxy-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersions {
    /// `"v1"`: the text header only.
    V1,
    /// `"v2"`: the binary header only.
    V2,
    /// `"any"`: either.
    Any,
}

impl ProxyVersions {
    /// The config's names, for messages.
    pub const NAMES: &'static str = "\"v1\", \"v2\" or \"any\"";

    /// Parses the config's name.
    pub fn parse(s: &str) -> Option<ProxyVersions> {
        match s {
            "v1" => Some(ProxyVersions::V1),
            "v2" => Some(ProxyVersions::V2),
            "any" => Some(ProxyVersions::Any),
            _ => None,
        }
    }
}

/// What `[[listen]] proxy-protocol` and `proxy-from` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// The versions accepted.
    pub versions: ProxyVersions,
    /// The sources a header is read from; a connection from anywhere else
    /// is refused, so that a client cannot name itself another address.
    pub from: Vec<IpNet>,
}

impl ProxyPolicy {
    /// Whether a connection from `peer` may send a header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }
}

const FROM_HINT: &str =
    "proxy-from = [\"127.0.0.1/32\", \"10.0.0.0/8\"]: the balancers' addresses or networks";

/// The listener's PROXY protocol policy, if it has one.
pub(super) fn parse_listen_proxy(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
) -> Option<Arc<ProxyPolicy>> {
    let versions = c.string(t, "proxy-protocol").and_then(|(s, span)| {
        let v = ProxyVersions::parse(s);
        if v.is_none() {
            c.error(
                Some(span),
                &t.field("proxy-protocol"),
                format!(
                    "{} is not a PROXY protocol version: use {}",
                    quote(s),
                    ProxyVersions::NAMES
                ),
            );
        }
        v
    });
    let from = parse_from(c, t);
    match (t.get("proxy-protocol"), t.get("proxy-from")) {
        (Some(_), None) => {
            c.error(
                t.get("proxy-protocol").map(|v| v.span()),
                &t.field("proxy-protocol"),
                format!("a listener that reads PROXY headers must say whom it trusts to send them: add {FROM_HINT}"),
            );
            None
        }
        (None, Some(v)) => {
            c.error(
                Some(v.span()),
                &t.field("proxy-from"),
                "proxy-from only means something with proxy-protocol = \"v1\", \"v2\" or \"any\"",
            );
            None
        }
        _ => Some(Arc::new(ProxyPolicy {
            versions: versions?,
            from: from?,
        })),
    }
}

/// `proxy-from`: addresses and networks, at least one.
fn parse_from(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Option<Vec<IpNet>> {
    let v = t.get("proxy-from")?;
    let key = t.field("proxy-from");
    let DeValue::Array(items) = v.get_ref() else {
        c.type_error(
            v,
            &key,
            "an array of addresses or networks (such as [\"10.0.0.0/8\"])",
        );
        return None;
    };
    if items.is_empty() {
        c.error(
            Some(v.span()),
            &key,
            format!("an empty proxy-from would refuse every connection: {FROM_HINT}"),
        );
        return None;
    }
    let before = c.error_count();
    let mut nets = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let DeValue::String(s) = item.get_ref() else {
            c.type_error(
                item,
                &item_key,
                "an address or network string (such as \"10.0.0.0/8\")",
            );
            continue;
        };
        match crate::grants::parse_net(s) {
            Some(n) => nets.push(n),
            None => c.error(
                Some(item.span()),
                &item_key,
                format!(
                    "{} is not an address or network (such as \"10.0.0.0/8\" or \"::1\")",
                    quote(s)
                ),
            ),
        }
    }
    (c.error_count() == before).then_some(nets)
}
