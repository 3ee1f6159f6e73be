//! [`LineReceiver`]: the buffer, delimiter and mode of a line protocol,
//! and the scan that finds lines in it in time linear in the input.

use super::LineEvent;

/// Twisted's default `LineReceiver.delimiter`.
pub const DEFAULT_DELIMITER: &[u8] = b"\r\n";
/// Twisted's default `LineReceiver.MAX_LENGTH`.
pub const DEFAULT_MAX_LINE: usize = 16384;

/// The state of a line protocol: Twisted's `LineReceiver` without the
/// callbacks, which live on [`LineProtocol`](super::LineProtocol).
///
/// Embed one in the protocol (it is `Default`: `\r\n`, 16384 bytes) and
/// return it from [`LineProtocol::line_receiver`](super::LineProtocol::line_receiver).
/// It can also be used on its own, without a transport: [`push`](Self::push)
/// bytes in, take lines out with [`next_frame`](Self::next_frame).
///
/// Finding lines costs time linear in the input however it is chunked: the
/// buffer keeps an offset of what was consumed and of how far it has been
/// searched, so a 16 MiB line delivered one byte at a time is scanned once
/// (Twisted's own rescans its buffer on every call).
#[derive(Clone, Debug)]
pub struct LineReceiver {
    delimiter: Vec<u8>,
    max_length: usize,
    buf: Vec<u8>,
    /// Where the unconsumed data starts in `buf`.
    start: usize,
    /// No delimiter starts before this offset in `buf`.
    scanned: usize,
    raw: bool,
    /// Inside a delivery loop: [`LineProtocol::set_line_mode`](super::LineProtocol::set_line_mode)
    /// then only queues its data.
    pub(super) busy: bool,
}

impl Default for LineReceiver {
    fn default() -> Self {
        LineReceiver::new(DEFAULT_DELIMITER, DEFAULT_MAX_LINE)
    }
}

impl LineReceiver {
    /// A receiver splitting on `delimiter` (not empty) and refusing lines
    /// longer than `max_length` bytes (Twisted's `MAX_LENGTH`).
    ///
    /// # Panics
    ///
    /// If `delimiter` is empty.
    pub fn new(delimiter: &[u8], max_length: usize) -> Self {
        assert!(!delimiter.is_empty(), "a line delimiter cannot be empty");
        LineReceiver {
            delimiter: delimiter.to_vec(),
            max_length,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            raw: false,
            busy: false,
        }
    }

    /// The line delimiter (Twisted's `delimiter`).
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The longest line accepted, in bytes, without its delimiter
    /// (Twisted's `MAX_LENGTH`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Change the longest line accepted.
    pub fn set_max_length(&mut self, max_length: usize) {
        self.max_length = max_length;
    }

    /// Whether the receiver is in raw mode.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Deliver what follows as raw data (Twisted's `setRawMode`): the rest
    /// of the buffer, and every later read, goes to
    /// [`LineProtocol::raw_data_received`](super::LineProtocol::raw_data_received).
    pub fn set_raw_mode(&mut self) {
        self.raw = true;
    }

    /// Back to line mode, with `extra` queued after the unprocessed data,
    /// as Twisted's `setLineMode(extra)` does from inside a callback. To
    /// have `extra` parsed at once when no delivery is under way, call
    /// [`LineProtocol::set_line_mode`](super::LineProtocol::set_line_mode).
    pub fn set_line_mode(&mut self, extra: &[u8]) {
        self.raw = false;
        self.push(extra);
    }

    /// Take the unprocessed data out of the buffer (Twisted's
    /// `clearLineBuffer`).
    pub fn clear_line_buffer(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.reset();
        rest
    }

    /// The unprocessed data.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// `line` with the delimiter, as [`send_line`](super::LineProtocol::send_line)
    /// writes it.
    pub fn frame(&self, line: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + self.delimiter.len());
        out.extend_from_slice(line);
        out.extend_from_slice(&self.delimiter);
        out
    }

    /// Append received bytes. Consumed bytes are dropped lazily, once they
    /// are at least half the buffer, so appending stays linear.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned = self.scanned.saturating_sub(self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
    }

    /// Take the next frame into `out` (cleared first): a line without its
    /// delimiter, the buffered raw data, or, for a line over the limit,
    /// everything buffered (what Twisted passes `lineLengthExceeded`; the
    /// buffer is emptied). `None` when more input is needed.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> Option<LineEvent> {
        out.clear();
        if self.start == self.buf.len() {
            return None;
        }
        if self.raw {
            out.extend_from_slice(&self.buf[self.start..]);
            self.reset();
            return Some(LineEvent::Raw);
        }
        let from = self.scanned.max(self.start);
        match memchr::memmem::find(&self.buf[from..], &self.delimiter) {
            Some(at) => {
                let end = from + at;
                if end - self.start > self.max_length {
                    out.extend_from_slice(&self.buf[self.start..]);
                    self.reset();
                    return Some(LineEvent::TooLong);
                }
                out.extend_from_slice(&self.buf[self.start..end]);
                self.start = end + self.delimiter.len();
                self.scanned = self.start;
                Some(LineEvent::Line)
            }
            None => {
                if self.buf.len() - self.start >= self.max_length + self.delimiter.len() {
                    out.extend_from_slice(&self.buf[self.start..]);
                    self.reset();
                    return Some(LineEvent::TooLong);
                }
                // A delimiter may start in the last len-1 bytes.
                self.scanned = (self.buf.len() + 1).saturating_sub(self.delimiter.len());
                None
            }
        }
    }
}
