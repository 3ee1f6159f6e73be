//! The PROXY protocol (HAProxy's, versions 1 and 2): a listener behind a
//! load balancer learns each connection's original client from a header
//! the balancer sends first, as Twisted's `haproxy:` endpoints do.
//!
//! # Layout
//! - [`read_header`]: reads exactly one header off a fresh connection,
//!   before TLS and before any guest runs, and returns the addresses it
//!   names; [`ProxyError`] says why a connection was refused instead
//!   (the caller counts and closes).
//!
//! The `ppp` crate parses; this module only decides what to read and
//! whom to trust. The header is peeked first and consumed only once it is
//! complete, so not one byte of the protocol's data is taken with it.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::config::{ProxyPolicy, ProxyVersions as Versions};
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// How long a connection may take to send its whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest header read (v2 with TLVs); longer is refused. HAProxy's
/// own headers, TLVs included, stay well below this.
pub const MAX_HEADER: usize = 4096;

/// The addresses a header named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The original client.
    pub source: SocketAddr,
    /// The address the client connected to (on the balancer).
    pub destination: SocketAddr,
}

// `ppp`'s address pairs: one type per family, shared by v1 and v2.
impl From<ppp::v1::IPv4> for Addresses {
    fn from(a: ppp::v1::IPv4) -> Addresses {
        Addresses {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }
    }
}

impl From<ppp::v1::IPv6> for Addresses {
    fn from(a: ppp::v1::IPv6) -> Addresses {
        Addresses {
            source: (a.source_address, a.source_port).into(),
            destination: (a.destination_address, a.destination_port).into(),
        }
    }
}

/// Why a connection was refused before its protocol was built.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Its source is not in `proxy-from`.
    #[error("the source is not in proxy-from")]
    Untrusted,
    /// No complete header within [`HEADER_TIMEOUT`].
    #[error("no complete PROXY header within {HEADER_TIMEOUT:?}")]
    Timeout,
    /// The peer closed, or the socket failed, before a whole header.
    #[error("the connection ended before a whole PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a header of an accepted version (or none at all).
    #[error("{0}")]
    Malformed(String),
}

impl ProxyError {
    /// The `reason` label it is counted under.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Untrusted => "proxy_untrusted",
            _ => "proxy_header",
        }
    }
}

/// Reads the PROXY header that must open a connection from `peer` to a
/// listener with `policy`, and returns the original addresses; `None`
/// when the header says the connection is the balancer's own (v2 `LOCAL`,
/// v1 `UNKNOWN`, or a v2 family other than IPv4/IPv6): then the socket's
/// own addresses stand, as HAProxy does.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<Option<Addresses>, ProxyError> {
    if !policy.trusts(peer.ip()) {
        return Err(ProxyError::Untrusted);
    }
    tokio::time::timeout(HEADER_TIMEOUT, read(stream, policy.versions))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read(stream: &mut TcpStream, versions: Versions) -> Result<Option<Addresses>, ProxyError> {
    let mut buf = vec![0; 256];
    // A header usually arrives in one segment; when it does not, peek
    // again after a short wait (a peek leaves the socket readable, so
    // waiting for readiness would not wait).
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match parse(&buf[..n], versions)? {
            Parsed::Complete(len, addresses) => {
                // The header was peeked whole: consume exactly it.
                stream.read_exact(&mut buf[..len]).await?;
                return Ok(addresses);
            }
            Parsed::Incomplete(wanted) => {
                if wanted > MAX_HEADER {
                    return Err(ProxyError::Malformed(format!(
                        "a PROXY header of {wanted} bytes is longer than the {MAX_HEADER} accepted"
                    )));
                }
                if n == buf.len() {
                    // The buffer is what ran out, not the bytes.
                    buf.resize(wanted.max(2 * n).min(MAX_HEADER), 0);
                    continue;
                }
                // The bytes so far are all there will be if the peer
                // has sent its FIN (a peek cannot tell).
                let ready = stream.ready(Interest::READABLE).await?;
                if ready.is_read_closed() {
                    return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// What the bytes so far hold.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole header of this many bytes, and the addresses it named.
    Complete(usize, Option<Addresses>),
    /// The start of a header; at least this many bytes are needed.
    Incomplete(usize),
}

/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// The v2 signature, which v1 text can never start with.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn parse(bytes: &[u8], versions: Versions) -> Result<Parsed, ProxyError> {
    let v2ish = V2_SIGNATURE.starts_with(&bytes[..bytes.len().min(V2_SIGNATURE.len())]);
    // A v1 line is judged whole: `ppp` takes a line cut after a space for
    // a bad one.
    let v1ish = b"PROXY ".starts_with(&bytes[..bytes.len().min(6)]);
    if versions != Versions::V2
        && !v2ish
        && v1ish
        && !bytes.contains(&b'\n')
        && bytes.len() < V1_MAX
    {
        return Ok(Parsed::Incomplete(bytes.len() + 1));
    }
    let result = match (versions, v2ish) {
        (Versions::V1, _) => HeaderResult::V1(v1::Header::try_from(bytes)),
        (Versions::V2, _) => HeaderResult::V2(v2::Header::try_from(bytes)),
        (Versions::Any, true) => HeaderResult::V2(v2::Header::try_from(bytes)),
        (Versions::Any, false) => HeaderResult::V1(v1::Header::try_from(bytes)),
    };
    if result.is_incomplete() {
        let wanted = match &result {
            HeaderResult::V2(Err(v2::ParseError::Partial(_, length))) => 16 + length,
            _ => bytes.len() + 1,
        };
        return Ok(Parsed::Incomplete(wanted));
    }
    let malformed = |what: &str, e: &dyn std::fmt::Display| {
        ProxyError::Malformed(format!("not a PROXY {what} header ({e})"))
    };
    match result {
        HeaderResult::V1(Ok(h)) => {
            let addresses = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(a.into()),
                v1::Addresses::Tcp6(a) => Some(a.into()),
                v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Complete(h.header.len(), addresses))
        }
        HeaderResult::V2(Ok(h)) => {
            let addresses = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(a.into()),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(a.into()),
                // LOCAL, or a family without IP addresses.
                _ => None,
            };
            Ok(Parsed::Complete(h.len(), addresses))
        }
        HeaderResult::V1(Err(e)) => Err(if versions == Versions::V1 && v2ish {
            ProxyError::Malformed("a PROXY v2 header on a listener that accepts v1 only".into())
        } else {
            malformed("v1", &e)
        }),
        HeaderResult::V2(Err(e)) => Err(
            if versions == Versions::V2 && bytes.starts_with(b"PROXY ") {
                ProxyError::Malformed("a PROXY v1 header on a listener that accepts v2 only".into())
            } else {
                malformed("v2", &e)
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(src: &str, dst: &str) -> Vec<u8> {
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (s, d),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_headers_name_the_client_and_their_own_length() {
        let text = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nhello";
        let want = Addresses {
            source: "203.0.113.7:51000".parse().unwrap(),
            destination: "192.0.2.1:443".parse().unwrap(),
        };
        for v in [Versions::V1, Versions::Any] {
            assert_eq!(
                parse(text, v).unwrap(),
                Parsed::Complete(text.len() - 5, Some(want))
            );
        }
        let mut bin = v2_header("[2001:db8::7]:51000", "[2001:db8::1]:443");
        let len = bin.len();
        bin.extend_from_slice(b"hello");
        let want6 = Addresses {
            source: "[2001:db8::7]:51000".parse().unwrap(),
            destination: "[2001:db8::1]:443".parse().unwrap(),
        };
        for v in [Versions::V2, Versions::Any] {
            assert_eq!(parse(&bin, v).unwrap(), Parsed::Complete(len, Some(want6)));
        }
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown, Versions::Any).unwrap(),
            Parsed::Complete(15, None)
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_and_never_an_error() {
        let text = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec();
        let bin = v2_header("198.51.100.9:4000", "192.0.2.1:80");
        for (h, v) in [(&text, Versions::V1), (&bin, Versions::V2)] {
            for cut in 1..h.len() {
                for versions in [v, Versions::Any] {
                    match parse(&h[..cut], versions) {
                        Ok(Parsed::Incomplete(wanted)) => assert!(wanted > cut),
                        other => panic!("{cut} bytes of {h:?}: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn the_wrong_version_or_no_header_is_malformed() {
        let bin = v2_header("198.51.100.9:4000", "192.0.2.1:80");
        let text = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
        for (bytes, v, says) in [
            (
                &bin[..],
                Versions::V1,
                "v2 header on a listener that accepts v1 only",
            ),
            (
                &text[..],
                Versions::V2,
                "v1 header on a listener that accepts v2 only",
            ),
            (
                b"GET / HTTP/1.1\r\n",
                Versions::Any,
                "not a PROXY v1 header",
            ),
            (
                b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
                Versions::Any,
                "not a PROXY v1 header",
            ),
            (
                b"PROXY TCP4 1.1.1.1 1.1.1.1 1 99999\r\n",
                Versions::V1,
                "not a PROXY v1 header",
            ),
        ] {
            match parse(bytes, v) {
                Err(ProxyError::Malformed(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{bytes:?} as {v:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_proxy_from_sources_are_trusted() {
        let p = ProxyPolicy {
            versions: Versions::Any,
            from: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::1".parse().unwrap()));
        // An IPv4 peer on a dual-stack socket is matched as IPv4.
        assert!(p.trusts("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!p.trusts("11.0.0.1".parse().unwrap()));
        assert!(!p.trusts("127.0.0.1".parse().unwrap()));
    }
}
