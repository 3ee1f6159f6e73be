//! The length-prefixed framings: [`Int32StringReceiver`],
//! [`Int16StringReceiver`], [`Int8StringReceiver`] and
//! [`NetstringReceiver`], each a buffer that yields whole strings in time
//! linear in the input, behind the one [`StringFraming`] trait that
//! [`StringProtocol`](super::StringProtocol) drives.

use std::fmt;

use super::StringEvent;

/// Twisted's default `MAX_LENGTH` for length-prefixed strings and
/// netstrings.
pub const DEFAULT_MAX_STRING: usize = 99999;

/// A string too long for its length prefix: Twisted's `StringTooLongError`.
/// Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringTooLongError {
    /// The string's length.
    pub length: usize,
    /// The largest length the prefix can carry.
    pub limit: u64,
}

impl fmt::Display for StringTooLongError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {}-byte string does not fit a prefix whose limit is {}",
            self.length, self.limit
        )
    }
}

impl std::error::Error for StringTooLongError {}

/// A framing of strings in a byte stream. Implemented by the four
/// receivers here; [`StringProtocol`](super::StringProtocol) works with any.
pub trait StringFraming {
    /// Append received bytes.
    fn push(&mut self, data: &[u8]);
    /// Take the next complete string into `out` (cleared first); `None`
    /// when more input is needed. [`StringEvent::TooLong`] leaves the prefix
    /// buffered (asking again reports it again, as Twisted does);
    /// after [`StringEvent::Malformed`] the receiver ignores all further
    /// input.
    fn next_frame(&mut self, out: &mut Vec<u8>) -> Option<StringEvent>;
    /// Append `data`, framed, to `out`.
    fn encode(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StringTooLongError>;
}

/// The bytes of a stream not yet framed, consumed from the front. Consumed
/// bytes are dropped lazily, once they are half the buffer.
#[derive(Clone, Debug, Default)]
struct Buffer {
    buf: Vec<u8>,
    start: usize,
    /// Stopped for good after a malformed frame.
    broken: bool,
}

impl Buffer {
    fn push(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn take(&mut self, skip: usize, len: usize, out: &mut Vec<u8>) {
        let at = self.start + skip;
        out.extend_from_slice(&self.buf[at..at + len]);
        self.start = at + len;
    }

    fn break_off(&mut self) {
        self.broken = true;
        self.buf = Vec::new();
        self.start = 0;
    }
}

/// Strings after a big-endian unsigned length of `N` bytes: Twisted's
/// `IntNStringReceiver`, as [`Int32StringReceiver`],
/// [`Int16StringReceiver`] and [`Int8StringReceiver`].
#[derive(Clone, Debug)]
pub struct IntNStringReceiver<const N: usize> {
    buffer: Buffer,
    max_length: usize,
}

/// Strings after a 4-byte big-endian length: Twisted's `Int32StringReceiver`.
pub type Int32StringReceiver = IntNStringReceiver<4>;
/// Strings after a 2-byte big-endian length: Twisted's `Int16StringReceiver`.
pub type Int16StringReceiver = IntNStringReceiver<2>;
/// Strings after a 1-byte length: Twisted's `Int8StringReceiver`.
pub type Int8StringReceiver = IntNStringReceiver<1>;

impl<const N: usize> Default for IntNStringReceiver<N> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STRING)
    }
}

impl<const N: usize> IntNStringReceiver<N> {
    /// A receiver refusing strings longer than `max_length` bytes
    /// (Twisted's `MAX_LENGTH`, 99999 by default).
    pub fn new(max_length: usize) -> Self {
        IntNStringReceiver {
            buffer: Buffer::default(),
            max_length,
        }
    }

    /// The longest string accepted (Twisted's `MAX_LENGTH`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The largest length the prefix can carry.
    pub fn prefix_limit() -> u64 {
        (1u64 << (8 * N)) - 1
    }
}

impl<const N: usize> StringFraming for IntNStringReceiver<N> {
    fn push(&mut self, data: &[u8]) {
        self.buffer.push(data);
    }

    fn next_frame(&mut self, out: &mut Vec<u8>) -> Option<StringEvent> {
        out.clear();
        let pending = self.buffer.pending();
        if self.buffer.broken || pending.len() < N {
            return None;
        }
        let length = pending[..N]
            .iter()
            .fold(0u64, |n, &b| (n << 8) | u64::from(b));
        if length > self.max_length as u64 {
            // Left buffered, as Twisted does: the next call reports it again.
            return Some(StringEvent::TooLong(length));
        }
        let length = length as usize;
        if pending.len() - N < length {
            return None;
        }
        self.buffer.take(N, length, out);
        Some(StringEvent::String)
    }

    fn encode(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StringTooLongError> {
        let limit = Self::prefix_limit();
        if data.len() as u64 > limit {
            return Err(StringTooLongError {
                length: data.len(),
                limit,
            });
        }
        out.extend_from_slice(&(data.len() as u64).to_be_bytes()[8 - N..]);
        out.extend_from_slice(data);
        Ok(())
    }
}

/// djb's netstrings (`12:hello world!,`): Twisted's `NetstringReceiver`.
///
/// A length that is empty, has a leading zero or a non-digit, or exceeds
/// `MAX_LENGTH` (checked digit by digit, before the colon arrives), or a
/// string not followed by `,`, is [`StringEvent::Malformed`]: the
/// connection is lost, as Twisted's `NetstringParseError` path does.
#[derive(Clone, Debug)]
pub struct NetstringReceiver {
    buffer: Buffer,
    max_length: usize,
    /// The length parsed so far and how many of its digits were read, or
    /// the length of the string being waited for.
    state: Netstate,
}

#[derive(Clone, Copy, Debug)]
enum Netstate {
    Length { value: u64, digits: usize },
    Payload { length: usize },
}

impl Default for NetstringReceiver {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STRING)
    }
}

impl NetstringReceiver {
    /// A receiver refusing strings longer than `max_length` bytes
    /// (Twisted's `MAX_LENGTH`, 99999 by default).
    pub fn new(max_length: usize) -> Self {
        NetstringReceiver {
            buffer: Buffer::default(),
            max_length,
            state: Netstate::Length {
                value: 0,
                digits: 0,
            },
        }
    }

    /// The longest string accepted (Twisted's `MAX_LENGTH`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    fn malformed(&mut self) -> Option<StringEvent> {
        self.buffer.break_off();
        Some(StringEvent::Malformed)
    }
}

impl StringFraming for NetstringReceiver {
    fn push(&mut self, data: &[u8]) {
        self.buffer.push(data);
    }

    fn next_frame(&mut self, out: &mut Vec<u8>) -> Option<StringEvent> {
        out.clear();
        if self.buffer.broken {
            return None;
        }
        loop {
            match self.state {
                Netstate::Length { value, digits } => {
                    // Only bytes not yet seen: the digits read so far were
                    // consumed.
                    let &b = self.buffer.pending().first()?;
                    self.buffer.start += 1;
                    match b {
                        b':' if digits > 0 => {
                            self.state = Netstate::Payload {
                                length: value as usize,
                            };
                        }
                        b'0'..=b'9' if !(digits == 1 && value == 0) => {
                            let value = value * 10 + u64::from(b - b'0');
                            if value > self.max_length as u64 {
                                return self.malformed();
                            }
                            self.state = Netstate::Length {
                                value,
                                digits: digits + 1,
                            };
                        }
                        _ => return self.malformed(),
                    }
                }
                Netstate::Payload { length } => {
                    let pending = self.buffer.pending().len();
                    if pending < length + 1 {
                        return None;
                    }
                    if self.buffer.pending()[length] != b',' {
                        return self.malformed();
                    }
                    self.buffer.take(0, length, out);
                    self.buffer.start += 1;
                    self.state = Netstate::Length {
                        value: 0,
                        digits: 0,
                    };
                    return Some(StringEvent::String);
                }
            }
        }
    }

    fn encode(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StringTooLongError> {
        out.extend_from_slice(data.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(data);
        out.push(b',');
        Ok(())
    }
}
