//! A STARTTLS line protocol, both halves: what Twisted's `startTLS` is for
//! (SMTP, IMAP, XMPP), reduced to four commands. Lines end in `\r\n` (a
//! bare `\n` is accepted).
//!
//! Server (`[[listen]]` with `tls = { ..., start-tls = true }`):
//! - `STARTTLS`: replies `OK begin TLS`, then starts TLS (the reply goes
//!   out in plaintext, everything after encrypted); `ERR <why>` if refused.
//!   Whatever the peer sent after `STARTTLS` in plaintext is dropped.
//! - `INFO`: replies `INFO tls=none`, or `INFO version=… cipher=… sni=…
//!   alpn=… subject=… sha256=…` (`-` for what is absent).
//! - `QUIT`: closes the connection.
//! - any other line: replies `ECHO <line>`.
//!
//! Client (`[[connect]]` with `tls = { ..., start-tls = true }`): sends
//! `STARTTLS`; on `OK`, starts TLS and sends `INFO` then `QUIT`; prints
//! every line it receives (`client got: <line>`) and how the connection
//! ended.

use twill_guest::{Address, ClientFactory, Protocol, Reason, Transport, export};

/// One side's line buffer.
#[derive(Default)]
struct Lines(Vec<u8>);

impl Lines {
    /// Appends `data`; returns the complete lines, without their endings.
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        self.0.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(i) = self.0.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.0.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        out
    }
}

/// `INFO`'s reply.
fn info_line(t: &Transport) -> String {
    let Some(i) = t.tls_info() else {
        return "INFO tls=none".into();
    };
    let alpn = i
        .alpn_protocol
        .map(|a| String::from_utf8_lossy(&a).into_owned());
    let (subject, sha256) = match i.peer_certificate {
        Some(c) => (c.subject.replace(' ', ""), c.sha256),
        None => ("-".into(), "-".into()),
    };
    format!(
        "INFO version={} cipher={} sni={} alpn={} subject={} sha256={}",
        i.version,
        i.cipher_suite,
        i.server_name.as_deref().unwrap_or("-"),
        alpn.as_deref().unwrap_or("-"),
        subject,
        sha256
    )
}

/// The server side.
#[derive(Default)]
struct Server {
    lines: Lines,
}

impl Protocol for Server {
    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        for line in self.lines.feed(data) {
            match line.as_str() {
                "STARTTLS" => {
                    // The reply is queued first, so it goes in plaintext.
                    t.write(b"OK begin TLS\r\n");
                    match t.start_tls() {
                        // Lines the peer sent after STARTTLS in the same
                        // plaintext are dropped, not answered inside TLS
                        // (the STARTTLS injection of CVE-2011-0411).
                        Ok(()) => {
                            self.lines = Lines::default();
                            return;
                        }
                        Err(e) => t.write(format!("ERR {}\r\n", e.0).as_bytes()),
                    }
                }
                "INFO" => t.write(format!("{}\r\n", info_line(t)).as_bytes()),
                "QUIT" => t.lose_connection(),
                other => t.write(format!("ECHO {other}\r\n").as_bytes()),
            }
        }
    }
}

/// The client side.
#[derive(Default)]
struct Client {
    lines: Lines,
}

impl Protocol for Client {
    fn connection_made(&mut self, t: &Transport) {
        println!("client connected: {}", info_line(t));
        t.write(b"STARTTLS\r\n");
    }

    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        for line in self.lines.feed(data) {
            println!("client got: {line}");
            if line.starts_with("OK") {
                match t.start_tls() {
                    Ok(()) => {
                        t.write(b"INFO\r\n");
                        t.write(b"QUIT\r\n");
                        // Nothing the server sent in plaintext after OK.
                        self.lines = Lines::default();
                        return;
                    }
                    Err(e) => {
                        println!("client: {e}");
                        t.lose_connection();
                    }
                }
            } else if line.starts_with("INFO") {
                println!("client sees: {}", info_line(t));
            }
        }
    }

    fn connection_lost(&mut self, reason: Reason) {
        println!("client lost: {reason:?}");
    }
}

/// Builds a [`Client`] for every connection.
#[derive(Default)]
struct Clients;

impl ClientFactory for Clients {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Client::default()))
    }

    fn client_connection_failed(&self, reason: Reason) {
        println!("client failed: {reason:?}");
    }
}

export!(server: twill_guest::Factory<Server>, client: Clients);
