//! Framing: Twisted's `twisted.protocols.basic` for Twill protocols.
//!
//! # Layout
//!
//! - [`LineProtocol`] + [`LineReceiver`]: lines (`line_received`,
//!   `send_line`, `MAX_LENGTH`, raw mode) — `lines.rs`;
//! - [`StringProtocol`] + [`Int32StringReceiver`], [`Int16StringReceiver`],
//!   [`Int8StringReceiver`], [`NetstringReceiver`]: length-prefixed strings
//!   — `strings.rs`;
//! - the delivery loops both traits share, here.
//!
//! The receivers are plain buffers you embed in your protocol; the traits
//! carry Twisted's callbacks, each with Twisted's default. A line protocol:
//!
//! ```ignore
//! use twill_guest::basic::{LineProtocol, LineReceiver};
//! use twill_guest::{Protocol, Transport};
//!
//! #[derive(Default)]
//! struct Upper {
//!     lines: LineReceiver, // "\r\n", MAX_LENGTH 16384
//! }
//!
//! impl LineProtocol for Upper {
//!     fn line_receiver(&mut self) -> &mut LineReceiver {
//!         &mut self.lines
//!     }
//!     fn line_received(&mut self, t: &Transport, line: &[u8]) {
//!         self.send_line(t, &line.to_ascii_uppercase());
//!     }
//! }
//!
//! impl Protocol for Upper {
//!     fn data_received(&mut self, t: &Transport, data: &[u8]) {
//!         self.receive_lines(t, data);
//!     }
//! }
//! ```
//!
//! Behaviour follows Twisted, checked against the shared vectors in
//! `test-vectors/basic.json` (which Twisted itself passes) through every
//! chunking of each input, with one deliberate difference: once the
//! transport is [`disconnecting`](crate::Transport::disconnecting), nothing
//! more is delivered (Twisted's `IntNStringReceiver` and
//! `NetstringReceiver` keep going; Twill's host would deliver no more
//! data). Parsing is linear in the input, whatever its chunking.

mod lines;
mod strings;
#[cfg(test)]
mod tests;

pub use lines::{DEFAULT_DELIMITER, DEFAULT_MAX_LINE, LineReceiver};
pub use strings::{
    DEFAULT_MAX_STRING, Int8StringReceiver, Int16StringReceiver, Int32StringReceiver,
    IntNStringReceiver, NetstringReceiver, StringFraming, StringTooLongError,
};

use crate::Transport;

/// What [`LineReceiver::next_frame`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line (without its delimiter).
    Line,
    /// Data received in raw mode.
    Raw,
    /// A line longer than `MAX_LENGTH`; the buffer was emptied.
    TooLong,
}

/// What a [`StringFraming`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringEvent {
    /// A complete string.
    String,
    /// A length prefix over `MAX_LENGTH` (Twisted's
    /// `lengthLimitExceeded(length)`).
    TooLong(u64),
    /// A malformed netstring.
    Malformed,
}

/// The callbacks of a line protocol: Twisted's `LineReceiver`.
///
/// Implement [`line_receiver`](Self::line_receiver) and
/// [`line_received`](Self::line_received), and call
/// [`receive_lines`](Self::receive_lines) from
/// [`Protocol::data_received`](crate::Protocol::data_received).
pub trait LineProtocol {
    /// The protocol's [`LineReceiver`] (a field of it).
    fn line_receiver(&mut self) -> &mut LineReceiver;

    /// A complete line arrived, without its delimiter.
    fn line_received(&mut self, transport: &Transport, line: &[u8]);

    /// Data arrived in raw mode (after [`LineReceiver::set_raw_mode`]).
    /// Ignored by default.
    fn raw_data_received(&mut self, transport: &Transport, data: &[u8]) {
        let _ = (transport, data);
    }

    /// A line longer than `MAX_LENGTH` arrived (or that many bytes with no
    /// delimiter); `line` is everything that was buffered. The default
    /// loses the connection, as Twisted's does.
    fn line_length_exceeded(&mut self, transport: &Transport, line: &[u8]) {
        let _ = line;
        transport.lose_connection();
    }

    /// Feed received data: call this from `data_received`. Delivers every
    /// complete line (or raw data) in order, stopping once the transport
    /// is disconnecting.
    fn receive_lines(&mut self, transport: &Transport, data: &[u8])
    where
        Self: Sized,
    {
        drive_lines(
            self,
            data,
            &|| transport.disconnecting(),
            &mut |p, event, bytes| match event {
                LineEvent::Line => p.line_received(transport, bytes),
                LineEvent::Raw => p.raw_data_received(transport, bytes),
                LineEvent::TooLong => p.line_length_exceeded(transport, bytes),
            },
        );
    }

    /// Write `line` followed by the delimiter, in one write: Twisted's
    /// `sendLine`.
    fn send_line(&mut self, transport: &Transport, line: &[u8]) {
        transport.write(&self.line_receiver().frame(line));
    }

    /// Back to line mode and parse `extra` as if received: Twisted's
    /// `setLineMode(extra)`. From inside a callback, `extra` is queued
    /// after what is still buffered and parsed when the callback returns;
    /// elsewhere (a timer), at once.
    fn set_line_mode(&mut self, transport: &Transport, extra: &[u8])
    where
        Self: Sized,
    {
        let receiver = self.line_receiver();
        receiver.set_line_mode(extra);
        if !receiver.busy {
            self.receive_lines(transport, &[]);
        }
    }
}

/// The callbacks of a length-prefixed string protocol: Twisted's
/// `IntNStringReceiver` and `NetstringReceiver`.
///
/// Implement [`string_receiver`](Self::string_receiver) and
/// [`string_received`](Self::string_received), and call
/// [`receive_strings`](Self::receive_strings) from
/// [`Protocol::data_received`](crate::Protocol::data_received).
pub trait StringProtocol {
    /// The framing: an [`Int32StringReceiver`], [`Int16StringReceiver`],
    /// [`Int8StringReceiver`] or [`NetstringReceiver`].
    type Framing: StringFraming;

    /// The protocol's receiver (a field of it).
    fn string_receiver(&mut self) -> &mut Self::Framing;

    /// A complete string arrived.
    fn string_received(&mut self, transport: &Transport, data: &[u8]);

    /// A length prefix over `MAX_LENGTH` arrived. The default loses the
    /// connection, as Twisted's does; an override that keeps it open is
    /// called again on the next data, since the prefix stays buffered (as
    /// in Twisted). (A malformed netstring always loses the connection.)
    fn length_limit_exceeded(&mut self, transport: &Transport, length: u64) {
        let _ = length;
        transport.lose_connection();
    }

    /// Feed received data: call this from `data_received`. Delivers every
    /// complete string in order, stopping once the transport is
    /// disconnecting.
    fn receive_strings(&mut self, transport: &Transport, data: &[u8])
    where
        Self: Sized,
    {
        drive_strings(
            self,
            data,
            &|| transport.disconnecting(),
            &mut |p, event, bytes| match event {
                StringEvent::String => p.string_received(transport, bytes),
                StringEvent::TooLong(n) => p.length_limit_exceeded(transport, n),
                StringEvent::Malformed => transport.lose_connection(),
            },
        );
    }

    /// Write `data` framed, in one write: Twisted's `sendString`. A string
    /// too long for the prefix is refused and nothing is written.
    fn send_string(
        &mut self,
        transport: &Transport,
        data: &[u8],
    ) -> Result<(), StringTooLongError> {
        let mut out = Vec::new();
        self.string_receiver().encode(data, &mut out)?;
        transport.write(&out);
        Ok(())
    }
}

/// The delivery loop of [`LineProtocol::receive_lines`], apart from the
/// transport so that the tests drive it with a fake one.
fn drive_lines<P: LineProtocol>(
    p: &mut P,
    data: &[u8],
    closing: &dyn Fn() -> bool,
    deliver: &mut dyn FnMut(&mut P, LineEvent, &[u8]),
) {
    if closing() {
        return;
    }
    let receiver = p.line_receiver();
    if receiver.busy {
        // Data fed from inside a callback: queued, like Twisted's
        // `_busyReceiving`.
        receiver.push(data);
        return;
    }
    receiver.busy = true;
    // Raw data with nothing buffered goes straight through, uncopied.
    if receiver.is_raw() && receiver.buffered().is_empty() && !data.is_empty() {
        deliver(p, LineEvent::Raw, data);
    } else {
        receiver.push(data);
    }
    let mut frame = Vec::new();
    while !closing() {
        let Some(event) = p.line_receiver().next_frame(&mut frame) else {
            break;
        };
        deliver(p, event, &frame);
    }
    p.line_receiver().busy = false;
}

/// The delivery loop of [`StringProtocol::receive_strings`].
fn drive_strings<P: StringProtocol>(
    p: &mut P,
    data: &[u8],
    closing: &dyn Fn() -> bool,
    deliver: &mut dyn FnMut(&mut P, StringEvent, &[u8]),
) {
    if closing() {
        return;
    }
    p.string_receiver().push(data);
    let mut frame = Vec::new();
    while !closing() {
        let Some(event) = p.string_receiver().next_frame(&mut frame) else {
            break;
        };
        deliver(p, event, &frame);
        if matches!(event, StringEvent::TooLong(_)) {
            // Twisted returns after `lengthLimitExceeded`.
            break;
        }
    }
}
