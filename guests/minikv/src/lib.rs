//! # guest-minikv: a tiny Redis subset, with expiry on the reactor's clock
//!
//! `PING [message]`, `SET key value [EX seconds | PX milliseconds]`,
//! `GET key`, `DEL key...`, `EXISTS key...`, `EXPIRE key seconds` and
//! `TTL key`, spoken in RESP (what `redis-cli` and every Redis client
//! send) or inline (`PING` typed into `nc`). One shared instance holds the
//! keyspace for every connection. A key with a time to live has a
//! [`call_later`] that deletes it when it falls due; `SET` without `EX` or
//! a `DEL` cancels it, and `EXPIRE` moves it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use twill_guest::reactor::{DelayedCall, call_later, seconds};
use twill_guest::{Factory, Protocol, Transport, export};

/// The longest request accepted (bytes buffered without a complete one).
pub const MAX_REQUEST: usize = 1 << 20;

/// One key's value and, if it has a time to live, its expiry.
struct Entry {
    value: Vec<u8>,
    expiry: Option<DelayedCall>,
}

thread_local! {
    static KEYS: RefCell<HashMap<Vec<u8>, Entry>> = RefCell::new(HashMap::new());
}

/// Cancels an entry's expiry, if it has one.
fn forget(e: &Entry) {
    if let Some(c) = &e.expiry {
        let _ = c.cancel();
    }
}

/// Arms `key`'s expiry `ttl` from now.
fn expire_in(key: &[u8], ttl: Duration) -> DelayedCall {
    let k = key.to_vec();
    call_later(ttl, move || {
        KEYS.with(|m| m.borrow_mut().remove(&k));
    })
}

/// One Redis-style connection.
#[derive(Default)]
pub struct Kv {
    buf: Vec<u8>,
}

/// A reply, in RESP.
enum Reply {
    Ok,
    Simple(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Err(String),
}

impl Reply {
    fn write(self, t: &Transport) {
        match self {
            Reply::Ok => t.write(b"+OK\r\n"),
            Reply::Simple(s) => t.write_sequence([&b"+"[..], &s, b"\r\n"]),
            Reply::Int(n) => t.write(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => t.write(b"$-1\r\n"),
            Reply::Bulk(Some(v)) => {
                t.write_sequence([format!("${}\r\n", v.len()).as_bytes(), &v, b"\r\n"])
            }
            Reply::Err(m) => t.write(format!("-{m}\r\n").as_bytes()),
        }
    }
}

/// A parsed request: its arguments, and how many bytes it took.
type Request = (Vec<Vec<u8>>, usize);

/// Parses one request from the front of `buf`: its arguments and length,
/// `Ok(None)` if incomplete, an error for a malformed one.
fn parse(buf: &[u8]) -> Result<Option<Request>, String> {
    let line = |from: usize| -> Option<(usize, usize)> {
        let end = buf[from..].windows(2).position(|w| w == b"\r\n")?;
        Some((from + end, from + end + 2))
    };
    let number = |b: &[u8]| -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "ERR Protocol error: invalid length".to_string())
    };
    if buf.first() != Some(&b'*') {
        // Inline: words up to the end of the line.
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let args = buf[..end]
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Ok(Some((args, end + 1)));
    }
    let Some((end, mut at)) = line(1) else {
        return Ok(None);
    };
    let n = number(&buf[1..end])?;
    if !(0..=1024).contains(&n) {
        return Err("ERR Protocol error: too many arguments".into());
    }
    let mut args = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err("ERR Protocol error: expected '$'".into());
        }
        let Some((end, start)) = line(at + 1) else {
            return Ok(None);
        };
        let len = number(&buf[at + 1..end])?;
        if !(0..=MAX_REQUEST as i64).contains(&len) {
            return Err("ERR Protocol error: invalid bulk length".into());
        }
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        args.push(buf[start..stop].to_vec());
        at = stop + 2;
    }
    Ok(Some((args, at)))
}

fn int_arg(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Runs one command.
fn command(args: &[Vec<u8>]) -> Reply {
    let Some(name) = args.first() else {
        return Reply::Err("ERR empty command".into());
    };
    let name = name.to_ascii_uppercase();
    let wrong = || {
        Reply::Err(format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(&name).to_lowercase()
        ))
    };
    match (&name[..], args.len()) {
        (b"PING", 1) => Reply::Simple(b"PONG".to_vec()),
        (b"PING", 2) => Reply::Bulk(Some(args[1].clone())),
        (b"GET", 2) => {
            KEYS.with(|m| Reply::Bulk(m.borrow().get(&args[1]).map(|e| e.value.clone())))
        }
        (b"SET", 3 | 5) => {
            let ttl = if args.len() == 5 {
                let unit = args[3].to_ascii_uppercase();
                match (&unit[..], int_arg(&args[4])) {
                    (b"EX", Some(n)) if n > 0 => Some(Duration::from_secs(n as u64)),
                    (b"PX", Some(n)) if n > 0 => Some(Duration::from_millis(n as u64)),
                    (b"EX" | b"PX", _) => {
                        return Reply::Err("ERR invalid expire time in 'set' command".into());
                    }
                    _ => return Reply::Err("ERR syntax error".into()),
                }
            } else {
                None
            };
            let expiry = ttl.map(|d| expire_in(&args[1], d));
            KEYS.with(|m| {
                if let Some(old) = m.borrow_mut().insert(
                    args[1].clone(),
                    Entry {
                        value: args[2].clone(),
                        expiry,
                    },
                ) {
                    forget(&old);
                }
            });
            Reply::Ok
        }
        (b"DEL", n) if n >= 2 => KEYS.with(|m| {
            let mut m = m.borrow_mut();
            let gone = args[1..]
                .iter()
                .filter_map(|k| m.remove(k))
                .inspect(forget)
                .count();
            Reply::Int(gone as i64)
        }),
        (b"EXISTS", n) if n >= 2 => KEYS.with(|m| {
            let m = m.borrow();
            Reply::Int(args[1..].iter().filter(|k| m.contains_key(*k)).count() as i64)
        }),
        (b"EXPIRE", 3) => {
            let Some(secs) = int_arg(&args[2]) else {
                return Reply::Err("ERR value is not an integer or out of range".into());
            };
            KEYS.with(|m| {
                let mut m = m.borrow_mut();
                let Some(e) = m.get_mut(&args[1]) else {
                    return Reply::Int(0);
                };
                if secs <= 0 {
                    let e = m.remove(&args[1]).expect("present");
                    forget(&e);
                    return Reply::Int(1);
                }
                let ttl = Duration::from_secs(secs as u64);
                match &e.expiry {
                    Some(c) if c.reset(ttl).is_ok() => {}
                    _ => e.expiry = Some(expire_in(&args[1], ttl)),
                }
                Reply::Int(1)
            })
        }
        (b"TTL", 2) => KEYS.with(|m| {
            Reply::Int(match m.borrow().get(&args[1]) {
                None => -2,
                Some(Entry { expiry: None, .. }) => -1,
                Some(Entry {
                    expiry: Some(c), ..
                }) => (c.get_time() - seconds()).round().max(0.0) as i64,
            })
        }),
        (b"PING" | b"GET" | b"SET" | b"DEL" | b"EXISTS" | b"EXPIRE" | b"TTL", _) => wrong(),
        _ => Reply::Err(format!(
            "ERR unknown command '{}'",
            String::from_utf8_lossy(&args[0])
        )),
    }
}

impl Protocol for Kv {
    fn data_received(&mut self, t: &Transport, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let mut used = 0;
        loop {
            match parse(&self.buf[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    if !args.is_empty() {
                        command(&args).write(t);
                    }
                }
                Ok(None) => break,
                Err(m) => {
                    Reply::Err(m).write(t);
                    t.lose_connection();
                    return;
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_REQUEST + 64 {
            Reply::Err("ERR Protocol error: request too large".into()).write(t);
            t.lose_connection();
        }
    }
}

export!(server: Factory<Kv>);
