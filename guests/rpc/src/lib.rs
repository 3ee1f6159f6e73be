//! # guest-rpc: a request/response protocol framed by `Int32StringReceiver`
//!
//! Each request is one Int32-prefixed string (Twisted's
//! `Int32StringReceiver`: a 4-byte big-endian length, then the bytes) of
//! UTF-8 `METHOD ARG...`; each gets one Int32-prefixed reply, in order:
//!
//! - `add N...` → `ok SUM` (64-bit integers; `error` on overflow or a non-number);
//! - `upper TEXT` → `ok TEXT` in upper case;
//! - `bye` → `ok bye`, then the connection closes;
//! - anything else → `error unknown method: ...`.
//!
//! Requests may be up to [`MAX_REQUEST`] bytes; a longer length prefix gets
//! `error request too long` and the connection closes (Twisted's
//! `lengthLimitExceeded`, with a reply first). Binary-safe framing means
//! requests may hold any bytes, newlines included.

use twill_guest::basic::{Int32StringReceiver, StringProtocol};
use twill_guest::{Factory, Protocol, Transport, export};

/// The longest request accepted, in bytes.
pub const MAX_REQUEST: usize = 65536;

/// One connection.
pub struct Rpc {
    strings: Int32StringReceiver,
}

impl Default for Rpc {
    fn default() -> Self {
        Rpc {
            strings: Int32StringReceiver::new(MAX_REQUEST),
        }
    }
}

/// The reply to one request, and whether to close after it.
fn answer(request: &str) -> (String, bool) {
    let (method, args) = request.split_once(' ').unwrap_or((request, ""));
    match method {
        "add" => {
            let sum = args.split_whitespace().try_fold(0i64, |acc, n| {
                n.parse::<i64>()
                    .map_err(|_| format!("not a number: {n}"))
                    .and_then(|n| acc.checked_add(n).ok_or_else(|| "overflow".to_string()))
            });
            match sum {
                Ok(s) => (format!("ok {s}"), false),
                Err(e) => (format!("error {e}"), false),
            }
        }
        "upper" => (format!("ok {}", args.to_uppercase()), false),
        "bye" => ("ok bye".to_string(), true),
        other => (format!("error unknown method: {other}"), false),
    }
}

impl StringProtocol for Rpc {
    type Framing = Int32StringReceiver;

    fn string_receiver(&mut self) -> &mut Int32StringReceiver {
        &mut self.strings
    }

    fn string_received(&mut self, t: &Transport, request: &[u8]) {
        let (reply, close) = match std::str::from_utf8(request) {
            Ok(text) => answer(text),
            Err(_) => ("error request is not UTF-8".to_string(), false),
        };
        // Replies are far below the 4 GiB a 32-bit prefix carries.
        let _ = self.send_string(t, reply.as_bytes());
        if close {
            t.lose_connection();
        }
    }

    fn length_limit_exceeded(&mut self, t: &Transport, _length: u64) {
        let _ = self.send_string(t, b"error request too long");
        t.lose_connection();
    }
}

impl Protocol for Rpc {
    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        self.receive_strings(t, data);
    }
}

export!(server: Factory<Rpc>);
