//! The shared framing vectors (`test-vectors/basic.json`, which the Python
//! and JavaScript SDKs' tests and Twisted itself also pass), through every
//! chunking, against the delivery loops with a fake transport; plus the
//! cases the vectors cannot express.

use std::cell::{Cell, RefCell};

use serde_json::Value;

use super::*;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../test-vectors/basic.json")).unwrap()
}

/// A vector byte string: latin-1 characters, or a list of parts.
fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap())
            .collect(),
        Value::Array(parts) => parts
            .iter()
            .flat_map(|p| match p {
                Value::String(_) => bytes(p),
                _ => bytes(&p["repeat"]).repeat(p["count"].as_u64().unwrap() as usize),
            })
            .collect(),
        _ => panic!("not bytes: {v}"),
    }
}

/// The vectors' chunking rule (see "about").
fn chunkings(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let n = data.len();
    let mut out = Vec::new();
    if n == 0 {
        return vec![vec![data]];
    }
    if n <= 12 {
        for mask in 0u32..(1 << (n - 1)) {
            let (mut pieces, mut start) = (Vec::new(), 0);
            for i in 1..n {
                if mask & (1 << (i - 1)) != 0 {
                    pieces.push(&data[start..i]);
                    start = i;
                }
            }
            pieces.push(&data[start..]);
            out.push(pieces);
        }
        return out;
    }
    let sizes: Vec<usize> = if n <= 512 {
        (1..=n).collect()
    } else {
        let mut s = vec![1, 2, 3, 7, 64, 1000, 4096, n];
        s.sort_unstable();
        s.dedup();
        s
    };
    for k in sizes {
        out.push(data.chunks(k).collect());
    }
    let cuts: Vec<usize> = if n <= 512 {
        (1..n).collect()
    } else {
        let mut c: Vec<usize> = (1..17).map(|j| (n * j / 17).max(1)).collect();
        c.dedup();
        c
    };
    for i in cuts {
        out.push(vec![&data[..i], &data[i..]]);
    }
    out
}

#[derive(Debug, PartialEq)]
enum Ev {
    Line(Vec<u8>),
    Raw(Vec<u8>),
    String(Vec<u8>),
    Exceeded(Option<u64>),
    Lose,
}

fn expected(case: &Value) -> Vec<Ev> {
    case["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e[0].as_str().unwrap() {
            "line" => Ev::Line(bytes(&e[1])),
            "raw" => Ev::Raw(bytes(&e[1])),
            "string" => Ev::String(bytes(&e[1])),
            "exceeded" => Ev::Exceeded(e.get(1).map(|n| n.as_u64().unwrap())),
            "lose" => Ev::Lose,
            other => panic!("unknown event {other}"),
        })
        .collect()
}

/// The fake transport: a closing flag, the events, what was written.
#[derive(Default)]
struct Fake {
    closing: Cell<bool>,
    events: RefCell<Vec<Ev>>,
    written: RefCell<Vec<u8>>,
}

impl Fake {
    fn lose(&self) {
        if !self.closing.replace(true) {
            self.events.borrow_mut().push(Ev::Lose);
        }
    }
    fn record(&self, e: Ev) {
        let mut evs = self.events.borrow_mut();
        match (evs.last_mut(), e) {
            (Some(Ev::Raw(prev)), Ev::Raw(more)) => prev.extend(more),
            (_, e) => evs.push(e),
        }
    }
}

struct Lines {
    lines: LineReceiver,
    raw: Vec<u8>,
}

impl LineProtocol for Lines {
    fn line_receiver(&mut self) -> &mut LineReceiver {
        &mut self.lines
    }
    fn line_received(&mut self, _: &Transport, _: &[u8]) {
        unreachable!("the tests deliver through drive_lines")
    }
}

struct Strings<F>(F);

impl<F: StringFraming> StringProtocol for Strings<F> {
    type Framing = F;
    fn string_receiver(&mut self) -> &mut F {
        &mut self.0
    }
    fn string_received(&mut self, _: &Transport, _: &[u8]) {
        unreachable!("the tests deliver through drive_strings")
    }
}

fn action<'a>(case: &'a Value, key: &str, data: &[u8]) -> Option<&'a str> {
    let name: String = data.iter().map(|&b| char::from(b)).collect();
    case.get(key)?.get(&name)?.as_str()
}

fn run_lines(case: &Value, pieces: &[&[u8]], fake: &Fake) {
    let mut p = Lines {
        lines: LineReceiver::new(
            &case.get("delimiter").map(bytes).unwrap_or(b"\r\n".to_vec()),
            case["max_length"].as_u64().unwrap_or(16384) as usize,
        ),
        raw: Vec::new(),
    };
    let raw_length = case["raw_length"].as_u64().map(|n| n as usize);
    for piece in pieces {
        drive_lines(
            &mut p,
            piece,
            &|| fake.closing.get(),
            &mut |p, event, data| match event {
                LineEvent::Line => {
                    fake.record(Ev::Line(data.to_vec()));
                    match action(case, "on_line", data) {
                        Some("raw") => p.lines.set_raw_mode(),
                        Some("lose") => fake.lose(),
                        Some("echo") => fake.written.borrow_mut().extend(p.lines.frame(data)),
                        _ => {}
                    }
                }
                LineEvent::Raw => match raw_length {
                    None => fake.record(Ev::Raw(data.to_vec())),
                    Some(n) => {
                        p.raw.extend_from_slice(data);
                        if p.raw.len() >= n {
                            let rest = p.raw.split_off(n);
                            fake.events
                                .borrow_mut()
                                .push(Ev::Raw(std::mem::take(&mut p.raw)));
                            p.lines.set_line_mode(&rest);
                        }
                    }
                },
                LineEvent::TooLong => {
                    fake.record(Ev::Exceeded(None));
                    fake.lose();
                }
            },
        );
    }
}

fn run_strings<F: StringFraming>(case: &Value, framing: F, pieces: &[&[u8]], fake: &Fake) {
    let mut p = Strings(framing);
    for piece in pieces {
        drive_strings(
            &mut p,
            piece,
            &|| fake.closing.get(),
            &mut |p, event, data| match event {
                StringEvent::String => {
                    fake.record(Ev::String(data.to_vec()));
                    match action(case, "on_string", data) {
                        Some("lose") => fake.lose(),
                        Some("echo") => p.0.encode(data, &mut fake.written.borrow_mut()).unwrap(),
                        _ => {}
                    }
                }
                StringEvent::TooLong(n) => {
                    fake.record(Ev::Exceeded(Some(n)));
                    fake.lose();
                }
                StringEvent::Malformed => fake.lose(),
            },
        );
    }
}

fn max(case: &Value) -> usize {
    case["max_length"]
        .as_u64()
        .unwrap_or(DEFAULT_MAX_STRING as u64) as usize
}

#[test]
fn shared_vectors_every_chunking() {
    let v = vectors();
    let (mut cases, mut runs) = (0, 0);
    for case in v["cases"].as_array().unwrap() {
        let input = bytes(&case["input"]);
        let want = expected(case);
        let written = case.get("written").map(bytes).unwrap_or_default();
        for pieces in chunkings(&input) {
            let fake = Fake::default();
            match case["kind"].as_str().unwrap() {
                "line" => run_lines(case, &pieces, &fake),
                "int32" => run_strings(case, Int32StringReceiver::new(max(case)), &pieces, &fake),
                "int16" => run_strings(case, Int16StringReceiver::new(max(case)), &pieces, &fake),
                "int8" => run_strings(case, Int8StringReceiver::new(max(case)), &pieces, &fake),
                "netstring" => run_strings(case, NetstringReceiver::new(max(case)), &pieces, &fake),
                k => panic!("unknown kind {k}"),
            }
            let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).take(8).collect();
            assert_eq!(
                *fake.events.borrow(),
                want,
                "{} (chunks {sizes:?})",
                case["name"]
            );
            assert_eq!(*fake.written.borrow(), written, "{} written", case["name"]);
            runs += 1;
        }
        cases += 1;
    }
    assert!(cases >= 50 && runs > 3000, "{cases} cases, {runs} runs");
}

#[test]
fn shared_vectors_encode() {
    for e in vectors()["encode"].as_array().unwrap() {
        let data = bytes(&e["data"]);
        let mut out = Vec::new();
        let result = match e["kind"].as_str().unwrap() {
            "line" => {
                let d = e.get("delimiter").map(bytes).unwrap_or(b"\r\n".to_vec());
                out = LineReceiver::new(&d, 16384).frame(&data);
                Ok(())
            }
            "int32" => Int32StringReceiver::default().encode(&data, &mut out),
            "int16" => Int16StringReceiver::default().encode(&data, &mut out),
            "int8" => Int8StringReceiver::default().encode(&data, &mut out),
            "netstring" => NetstringReceiver::default().encode(&data, &mut out),
            k => panic!("unknown kind {k}"),
        };
        if e["error"].as_bool() == Some(true) {
            assert!(result.is_err(), "{e}");
            assert!(out.is_empty());
        } else {
            result.unwrap();
            assert_eq!(out, bytes(&e["frame"]), "{}", e["kind"]);
        }
    }
}

#[test]
fn clear_line_buffer_returns_what_was_unprocessed() {
    let mut r = LineReceiver::default();
    r.push(b"one\r\ntwo\r\nthr");
    let mut out = Vec::new();
    assert_eq!(r.next_frame(&mut out), Some(LineEvent::Line));
    assert_eq!(r.clear_line_buffer(), b"two\r\nthr");
    assert_eq!(r.next_frame(&mut out), None);
    r.push(b"ee\r\n");
    assert_eq!(r.next_frame(&mut out), Some(LineEvent::Line));
    assert_eq!(out, b"ee");
}

#[test]
fn a_long_delimiter_split_across_every_push_is_found() {
    let mut r = LineReceiver::new(b"<END>", 100);
    let mut out = Vec::new();
    for b in b"ab<EN<END>" {
        assert_eq!(r.next_frame(&mut out), None);
        r.push(std::slice::from_ref(b));
    }
    assert_eq!(r.next_frame(&mut out), Some(LineEvent::Line));
    assert_eq!(out, b"ab<EN");
}

/// An oversized prefix stays buffered: an override of
/// `length_limit_exceeded` that keeps the connection hears it once per
/// call, as in Twisted, and nothing after it is delivered.
#[test]
fn an_oversized_prefix_is_reported_once_per_call() {
    let mut p = Strings(Int16StringReceiver::new(3));
    let mut seen = Vec::new();
    for data in [&b"\x00\x01a\x00\x09abc"[..], b"\x00\x01z"] {
        drive_strings(&mut p, data, &|| false, &mut |_, event, bytes| {
            seen.push((event, bytes.to_vec()))
        });
    }
    assert_eq!(
        seen,
        [
            (StringEvent::String, b"a".to_vec()),
            (StringEvent::TooLong(9), vec![]),
            (StringEvent::TooLong(9), vec![]),
        ]
    );
}

/// One 4 MiB line and one 4 MiB Int32 string fed one byte at a time finish
/// with each byte looked at a bounded number of times: the receivers keep
/// only offsets, so no rescans or buffer shifts per push. (The bench,
/// `examples/framing_bench.rs`, has the timings.)
#[test]
fn one_byte_at_a_time_keeps_the_buffer_compact() {
    const N: usize = 4 << 20;
    let mut r = LineReceiver::new(b"\r\n", N);
    let mut out = Vec::new();
    for _ in 0..N {
        r.push(b"x");
        assert_eq!(r.next_frame(&mut out), None);
    }
    r.push(b"\r\n");
    assert_eq!(r.next_frame(&mut out), Some(LineEvent::Line));
    assert_eq!(out.len(), N);

    let mut s = Int32StringReceiver::new(N);
    s.push(&(N as u32).to_be_bytes());
    for _ in 0..N {
        assert_eq!(s.next_frame(&mut out), None);
        s.push(b"y");
    }
    assert_eq!(s.next_frame(&mut out), Some(StringEvent::String));
    assert_eq!(out.len(), N);
}
