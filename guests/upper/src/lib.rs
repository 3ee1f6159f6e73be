//! A line protocol for Twill, on the SDK's `LineReceiver` (the project
//! `twill new rust NAME` writes starts from this file).
//!
//! Each line the client sends gets one line back: `PING` gets `PONG`,
//! `QUIT` gets `BYE` and the connection closes, anything else comes back in
//! upper case. Lines end with `\r\n` and may be up to 16384 bytes long
//! (Twisted's `LineReceiver` defaults); a longer one closes the connection.

use twill_guest::basic::{LineProtocol, LineReceiver};
use twill_guest::{Factory, Protocol, Transport, export};

/// One connection.
#[derive(Default)]
struct Commands {
    lines: LineReceiver,
}

impl LineProtocol for Commands {
    fn line_receiver(&mut self) -> &mut LineReceiver {
        &mut self.lines
    }

    fn line_received(&mut self, t: &Transport, line: &[u8]) {
        match line {
            b"PING" => self.send_line(t, b"PONG"),
            b"QUIT" => {
                self.send_line(t, b"BYE");
                t.lose_connection();
            }
            _ => self.send_line(t, &line.to_ascii_uppercase()),
        }
    }
}

impl Protocol for Commands {
    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        self.receive_lines(t, data);
    }
}

export!(server: Factory<Commands>);
