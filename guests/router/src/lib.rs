//! A protocol-aware router: it reads the client's first line, picks a
//! backend from its routes, connects, sends what followed the line, and
//! splices the two connections, so the guest is never called again for
//! the pair.
//!
//! The first line (at most 1024 bytes, ending in `\n` or `\r\n`) is either
//! a route's name (`cache`), or an HAProxy PROXY v1 header
//! (`PROXY TCP4 SRC DST SPORT DPORT`), whose destination `DST:DPORT` must
//! be one of the routes' backends. Routes come from the environment its
//! plugin grants: `ROUTES = "cache=127.0.0.1:6379,db=db.internal:5432"`
//! (the plugin's `connect` grants must allow each backend). An unknown
//! route or a malformed line gets `-ERR ...` and the connection closes.

use std::cell::RefCell;
use std::rc::Rc;

use twill_guest::reactor;
use twill_guest::{Address, ClientFactory, Protocol, Reason, ServerFactory, Transport};

/// The longest first line.
const MAX_LINE: usize = 1024;

/// `ROUTES`, as (name, host, port).
fn routes() -> Vec<(String, String, u16)> {
    let Ok(spec) = std::env::var("ROUTES") else {
        return Vec::new();
    };
    spec.split(',')
        .filter_map(|r| {
            let (name, target) = r.trim().split_once('=')?;
            let (host, port) = target.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((name.to_string(), host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// The backend a first line names, or why not.
fn pick(line: &str) -> Result<(String, u16), String> {
    let routes = routes();
    if let Some(rest) = line.strip_prefix("PROXY ") {
        let f: Vec<&str> = rest.split(' ').collect();
        let [proto, _src, dst, _sport, dport] = f[..] else {
            return Err("malformed PROXY header".into());
        };
        if proto != "TCP4" && proto != "TCP6" {
            return Err(format!("unsupported PROXY protocol {proto}"));
        }
        let port: u16 = dport
            .parse()
            .map_err(|_| "malformed PROXY port".to_string())?;
        return routes
            .into_iter()
            .find(|(_, h, p)| h == dst && *p == port)
            .map(|(_, h, p)| (h, p))
            .ok_or_else(|| format!("no route to {dst}:{port}"));
    }
    routes
        .into_iter()
        .find(|(name, _, _)| name == line)
        .map(|(_, h, p)| (h, p))
        .ok_or_else(|| format!("unknown route {line:?}"))
}

/// The client's connection until it is spliced.
#[derive(Default)]
struct Router {
    buf: Vec<u8>,
    /// The line was read and a backend is being connected.
    routed: bool,
    /// Bytes after the line, for the backend.
    rest: Rc<RefCell<Vec<u8>>>,
}

impl Router {
    fn refuse(transport: &Transport, why: &str) {
        transport.write(format!("-ERR {why}\r\n").as_bytes());
        transport.lose_connection();
    }
}

impl Protocol for Router {
    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        if self.routed {
            // Read before the backend connection was made (reading pauses
            // once the line is in, but a read may already be on its way).
            self.rest.borrow_mut().extend_from_slice(data);
            return;
        }
        self.buf.extend_from_slice(data);
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                Self::refuse(transport, "first line too long");
            }
            return;
        };
        if end > MAX_LINE {
            return Self::refuse(transport, "first line too long");
        }
        let line = String::from_utf8_lossy(&self.buf[..end]);
        let line = line.trim_end_matches('\r').to_string();
        let (host, port) = match pick(&line) {
            Ok(b) => b,
            Err(why) => return Self::refuse(transport, &why),
        };
        self.routed = true;
        self.rest
            .borrow_mut()
            .extend_from_slice(&self.buf[end + 1..]);
        self.buf = Vec::new();
        transport.pause_producing();
        let factory = Backend {
            client: transport.clone(),
            rest: self.rest.clone(),
        };
        if let Err(e) = reactor::connect_tcp(&host, port, factory) {
            Self::refuse(transport, &e.to_string());
        }
    }
}

/// The backend connection's factory and protocol: it sends what followed
/// the line, then splices.
struct Backend {
    client: Transport,
    rest: Rc<RefCell<Vec<u8>>>,
}

impl ClientFactory for Backend {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Backend {
            client: self.client.clone(),
            rest: self.rest.clone(),
        }))
    }

    fn client_connection_failed(&self, reason: Reason) {
        Router::refuse(&self.client, &format!("backend unavailable: {reason}"));
    }
}

impl Protocol for Backend {
    fn connection_made(&mut self, transport: &Transport) {
        let rest = std::mem::take(&mut *self.rest.borrow_mut());
        if !rest.is_empty() {
            transport.write(&rest);
        }
        if let Err(e) = self.client.splice(transport) {
            eprintln!("router: splice refused: {e}");
            self.client.lose_connection();
            transport.lose_connection();
        }
    }
}

/// The server factory: one [`Router`] per connection.
#[derive(Default)]
struct Routes;

impl ServerFactory for Routes {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Router::default()))
    }
}

twill_guest::export!(server: Routes);
