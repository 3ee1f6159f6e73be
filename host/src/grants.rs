//! Where a plugin's guest may connect: the `connect` grants of
//! `[plugins.NAME]`, parsed ([`Grant::parse`]) and matched ([`Grants`]).
//!
//! A grant is `HOST:PORT`. `HOST` is an IP address (`127.0.0.1`,
//! `[::1]`), a network (`10.0.0.0/8`, `[fd00::/8]`), a DNS name
//! (`db.internal`) or a wildcard of names (`*.svc.cluster.local`: any name
//! below it, not the name itself); `PORT` is a port or `*`.
//!
//! Matching happens twice, as `reactor.connect-tcp` documents: a request
//! for a name that a name grant covers may reach whatever the host
//! resolves it to; any other request (an address, or a name only address
//! grants could cover) reaches only the resolved addresses that an address
//! grant covers. The host resolves once and connects to exactly the
//! addresses it checked, so a name cannot be rebound past the grants
//! between the check and the connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// One `HOST:PORT` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    host: HostRule,
    port: Option<u16>,
    /// As written in plugins.toml, for messages.
    text: String,
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// One address, or a network.
    Net(IpNet),
    /// One name, lowercase, without a trailing dot.
    Name(String),
    /// Any name ending in this suffix (with its leading dot).
    Below(String),
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The forms a grant takes, for error hints.
pub const FORMS: &str = "\"127.0.0.1:6379\", \"db.internal:5432\", \"10.0.0.0/8:*\", \"[::1]:80\" or \"*.svc.cluster.local:443\"";

impl Grant {
    /// Parses one grant; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Grant, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or("an IPv6 grant is written [ADDRESS]:PORT")?;
            (host, port)
        } else {
            s.rsplit_once(':')
                .ok_or("a grant is HOST:PORT, with * for any port")?
        };
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(format!("the port must be 1 to 65535 or *, not {p:?}"));
                }
                Ok(n) => Some(n),
            },
        };
        if host.contains(':') && !s.starts_with('[') {
            return Err("an IPv6 grant is written [ADDRESS]:PORT, such as \"[::1]:80\"".into());
        }
        let host = parse_host(host)?;
        Ok(Grant {
            host,
            port,
            text: s.to_string(),
        })
    }

    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Whether this grant covers `name` (already normalized) on `port` by
    /// name.
    fn covers_name(&self, name: &str, port: u16) -> bool {
        self.port_ok(port)
            && match &self.host {
                HostRule::Name(n) => n == name,
                HostRule::Below(suffix) => {
                    name.ends_with(suffix.as_str()) && name.len() > suffix.len()
                }
                HostRule::Net(_) => false,
            }
    }

    /// Whether this grant covers the address `addr`.
    fn covers_addr(&self, addr: SocketAddr) -> bool {
        self.port_ok(addr.port())
            && match &self.host {
                HostRule::Net(net) => net.contains(&addr.ip().to_canonical()),
                _ => false,
            }
    }

    fn is_address_rule(&self) -> bool {
        matches!(self.host, HostRule::Net(_))
    }
}

/// An address (as a one-address network, IPv4-mapped IPv6 as IPv4) or a
/// network (its host bits cleared): `10.1.2.3`, `::1`, `10.0.0.0/8`.
/// Also what `[[listen]] proxy-from` takes.
pub fn parse_net(s: &str) -> Option<IpNet> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Some(IpNet::from(ip.to_canonical())),
        Err(_) => s.parse::<IpNet>().ok().map(|n| n.trunc()),
    }
}

fn parse_host(host: &str) -> Result<HostRule, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if let Some(net) = parse_net(host) {
        return Ok(HostRule::Net(net));
    }
    if host.contains('/') {
        return Err(format!("{host:?} is not a network (such as 10.0.0.0/8)"));
    }
    if host == "*" {
        return Err(
            "* would let the guest reach any address; grant networks (\"0.0.0.0/0:*\") if that is really meant"
                .into(),
        );
    }
    let (below, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = normalize(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!(
            "{host:?} is not an IP address, a network or a DNS name"
        ));
    }
    Ok(if below {
        HostRule::Below(format!(".{name}"))
    } else {
        HostRule::Name(name)
    })
}

/// A name as grants compare it: lowercase, without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A plugin's grants and where they were written, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    rules: Vec<Grant>,
    /// `[plugins.NAME] connect (FILE:LINE)`.
    place: String,
}

/// How a request is to be checked: by name (any address it resolves to),
/// by the addresses it resolves to, or refused outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A name grant covers the name: connect to what it resolves to.
    ByName,
    /// Connect only to the resolved addresses [`Grants::allows`] accepts.
    ByAddress,
    /// Nothing could cover it: refuse without resolving (the message says
    /// why).
    Refused(String),
}

impl Grants {
    /// `rules`, written at `place` (such as `[plugins.relay] connect
    /// (plugins.toml:7)`).
    pub fn new(rules: Vec<Grant>, place: String) -> Grants {
        Grants { rules, place }
    }

    /// Whether there are none (the plugin may not connect anywhere).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The grants, as written.
    pub fn rules(&self) -> &[Grant] {
        &self.rules
    }

    /// How to check a request for `host`:`port`, before any name is
    /// resolved.
    pub fn check(&self, host: &str, port: u16) -> Check {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            return if self.allows(addr) {
                Check::ByAddress
            } else {
                Check::Refused(format!("{addr} is not granted by {}", self.describe()))
            };
        }
        let name = normalize(host);
        if self.rules.iter().any(|g| g.covers_name(&name, port)) {
            return Check::ByName;
        }
        if self
            .rules
            .iter()
            .any(|g| g.is_address_rule() && g.port_ok(port))
        {
            return Check::ByAddress;
        }
        Check::Refused(format!(
            "{host}:{port} is not granted by {}",
            self.describe()
        ))
    }

    /// Whether an address grant covers `addr`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.rules.iter().any(|g| g.covers_addr(addr))
    }

    /// `[plugins.NAME] connect = [...] (FILE:LINE)`, for messages.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self.rules.iter().map(|g| format!("{:?}", g.text)).collect();
        format!("{} = [{}]", self.place, list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Grants {
        Grants::new(
            list.iter().map(|s| Grant::parse(s).unwrap()).collect(),
            "[plugins.p] connect".into(),
        )
    }

    #[test]
    fn parses_every_form() {
        for ok in [
            "127.0.0.1:6379",
            "db.internal:5432",
            "10.0.0.0/8:*",
            "*.svc.cluster.local:443",
            "[::1]:80",
            "[fd00::/8]:*",
            "localhost:1",
        ] {
            Grant::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("127.0.0.1", "HOST:PORT"),
            ("127.0.0.1:0", "port"),
            ("127.0.0.1:70000", "port"),
            ("*:80", "any address"),
            ("10.0.0.0/33:*", "network"),
            ("bad name:1", "DNS name"),
            (":80", "empty"),
            ("::1:80", "[ADDRESS]:PORT"),
        ] {
            let e = Grant::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses_match_addresses_and_networks() {
        let g = grants(&["127.0.0.1:6379", "10.0.0.0/8:*", "[::1]:80"]);
        assert_eq!(g.check("127.0.0.1", 6379), Check::ByAddress);
        assert!(matches!(g.check("127.0.0.1", 6380), Check::Refused(_)));
        assert_eq!(g.check("10.200.3.4", 22), Check::ByAddress);
        assert_eq!(g.check("::1", 80), Check::ByAddress);
        assert_eq!(g.check("[::1]", 80), Check::ByAddress);
        // An IPv4-mapped address is the IPv4 address.
        assert!(g.allows("[::ffff:10.1.1.1]:9".parse().unwrap()));
        assert!(!g.allows("11.0.0.1:9".parse().unwrap()));
        // A name is checked by the addresses it resolves to.
        assert_eq!(g.check("anything.example", 22), Check::ByAddress);
    }

    #[test]
    fn names_match_names_and_wildcards_only_below() {
        let g = grants(&["db.internal:5432", "*.svc.cluster.local:443"]);
        assert_eq!(g.check("DB.internal.", 5432), Check::ByName);
        assert!(matches!(g.check("db.internal", 5433), Check::Refused(_)));
        assert_eq!(g.check("a.b.svc.cluster.local", 443), Check::ByName);
        assert!(matches!(
            g.check("svc.cluster.local", 443),
            Check::Refused(_)
        ));
        assert!(matches!(
            g.check("evilsvc.cluster.local", 443),
            Check::Refused(_)
        ));
        // No address grant: an address is refused, naming the grants.
        let Check::Refused(why) = g.check("10.0.0.1", 5432) else {
            panic!()
        };
        assert!(
            why.contains("[plugins.p] connect = [\"db.internal:5432\""),
            "{why}"
        );
    }
}
