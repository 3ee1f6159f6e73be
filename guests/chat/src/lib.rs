//! # guest-chat: Twisted's chat server, as a Twill component
//!
//! The chat example from Twisted's documentation ("Writing Servers"), ported
//! line for line. Every connection is asked for a name; after that, each
//! line it sends goes to every *other* connected user as `<name> line`.
//!
//! In Twisted the users live on the factory and every protocol shares them
//! because the process is shared. Here they live in a `thread_local!`, and
//! are shared because the plugin runs with `instance = "shared"` (see
//! `chat.toml`): one instance serves every connection, one protocol
//! resource each, and a protocol writes to other users through the
//! [`Transport`] clones it keeps. (With an instance per connection every
//! user would be alone in their own room.)
//!
//! Lines are split by the SDK's [`LineReceiver`] (Twisted's), on `\n` with
//! a trailing `\r` dropped, so both `nc` and telnet users can talk.
//!
//! One addition to Twisted's example: a user who sends nothing for
//! [`IDLE`] is told so and dropped, with the SDK's `TimeoutMixin`
//! ([`Timeout`]), reset on every byte received.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use twill_guest::basic::{LineProtocol, LineReceiver};
use twill_guest::reactor::Timeout;
use twill_guest::{Factory, Protocol, Reason, Transport, export};

/// How long a user may stay silent before being dropped.
pub const IDLE: Duration = Duration::from_secs(600);

thread_local! {
    /// Twisted's `factory.users`: name -> that user's transport.
    static USERS: RefCell<BTreeMap<String, Transport>> = const { RefCell::new(BTreeMap::new()) };
}

/// `LineReceiver.MAX_LENGTH`: a line longer than this (without its
/// delimiter) ends the connection that sent it, as Twisted's default
/// `lineLengthExceeded` does. Without it, one client sending megabytes
/// without a newline would grow the shared instance's memory until it ran
/// out, and every user would lose the room with it.
pub const MAX_LENGTH: usize = 16384;

/// Twisted's `Chat(LineReceiver)`.
pub struct Chat {
    name: Option<String>,
    lines: LineReceiver,
    idle: Option<Timeout>,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            name: None,
            lines: LineReceiver::new(b"\n", MAX_LENGTH),
            idle: None,
        }
    }
}

fn send_line(t: &Transport, line: &str) {
    t.write_sequence([line.as_bytes(), b"\r\n"]);
}

impl LineProtocol for Chat {
    fn line_receiver(&mut self) -> &mut LineReceiver {
        &mut self.lines
    }

    fn line_received(&mut self, t: &Transport, line: &[u8]) {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
        match &self.name {
            None => self.handle_getname(t, &line),
            Some(name) => {
                let message = format!("<{name}> {line}");
                USERS.with(|u| {
                    for (other, peer) in u.borrow().iter() {
                        if other != name {
                            send_line(peer, &message);
                        }
                    }
                });
            }
        }
    }

    /// Twisted's default drops the connection; this one says why first.
    fn line_length_exceeded(&mut self, t: &Transport, _line: &[u8]) {
        send_line(t, "Line too long.");
        t.lose_connection();
    }
}

impl Chat {
    fn handle_getname(&mut self, t: &Transport, name: &str) {
        if USERS.with(|u| u.borrow().contains_key(name)) {
            send_line(t, "Name taken, please choose another.");
            return;
        }
        send_line(t, &format!("Welcome, {name}!"));
        USERS.with(|u| u.borrow_mut().insert(name.to_string(), t.clone()));
        self.name = Some(name.to_string());
    }
}

impl Protocol for Chat {
    fn connection_made(&mut self, t: &Transport) {
        send_line(t, "What's your name?");
        let me = t.clone();
        let idle = Timeout::with(move || {
            send_line(&me, "Idle for too long, goodbye.");
            me.lose_connection();
        });
        idle.set_timeout(Some(IDLE));
        self.idle = Some(idle);
    }

    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        if let Some(idle) = &self.idle {
            idle.reset_timeout();
        }
        self.receive_lines(t, data);
    }

    fn connection_lost(&mut self, _reason: Reason) {
        // Dropping the timeout cancels it.
        self.idle = None;
        if let Some(name) = &self.name {
            USERS.with(|u| u.borrow_mut().remove(name));
        }
    }
}

export!(server: Factory<Chat>);
