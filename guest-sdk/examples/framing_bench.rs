//! Framing throughput with input delivered one byte at a time, to show the
//! receivers in `twill_guest::basic` stay linear (the 16 MiB / 4 MiB time
//! ratio near 4; quadratic would be 16). Native, release build:
//!
//! ```sh
//! cargo run --release --example framing_bench    # in guest-sdk/
//! ```
//!
//! The same scenarios run in the Python (`guest-sdk/python/bench_basic.py`)
//! and JavaScript (`guest-sdk/js/bench/basic.bench.mjs`) SDKs;
//! `bench/framing.sh` runs all three.

use std::hint::black_box;
use std::time::Instant;

use twill_guest::basic::{
    Int32StringReceiver, LineEvent, LineReceiver, NetstringReceiver, StringEvent, StringFraming,
};

const MIB: usize = 1 << 20;

fn lines_64(size: usize) -> (usize, f64) {
    let mut input = Vec::with_capacity(size);
    while input.len() + 64 <= size {
        input.extend_from_slice(&[b'a'; 62]);
        input.extend_from_slice(b"\r\n");
    }
    let mut r = LineReceiver::default();
    let mut out = Vec::new();
    let mut n = 0;
    let t = Instant::now();
    for b in &input {
        r.push(std::slice::from_ref(b));
        while let Some(LineEvent::Line) = r.next_frame(&mut out) {
            n += 1;
        }
    }
    assert_eq!(n, size / 64);
    (input.len(), t.elapsed().as_secs_f64())
}

fn one_line(size: usize) -> (usize, f64) {
    let mut r = LineReceiver::new(b"\r\n", 32 * MIB);
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..size {
        r.push(b"x");
        black_box(r.next_frame(&mut out));
    }
    r.push(b"\r\n");
    assert_eq!(r.next_frame(&mut out), Some(LineEvent::Line));
    assert_eq!(out.len(), size);
    (size + 2, t.elapsed().as_secs_f64())
}

fn one_string<F: StringFraming>(mut r: F, size: usize) -> (usize, f64) {
    let mut input = Vec::new();
    r.encode(&vec![b'y'; size], &mut input).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    for b in &input {
        r.push(std::slice::from_ref(b));
        if let Some(e) = r.next_frame(&mut out) {
            assert_eq!(e, StringEvent::String);
        }
    }
    assert_eq!(out.len(), size);
    (input.len(), t.elapsed().as_secs_f64())
}

fn main() {
    type Scenario = (&'static str, fn(usize) -> (usize, f64));
    let scenarios: [Scenario; 4] = [
        ("64-byte lines", lines_64),
        ("one line", one_line),
        ("one int32 string", |s| {
            one_string(Int32StringReceiver::new(32 * MIB), s)
        }),
        ("one netstring", |s| {
            one_string(NetstringReceiver::new(32 * MIB), s)
        }),
    ];
    println!("| SDK | scenario | MiB | seconds | MiB/s | time ratio 16/4 MiB |");
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for (name, f) in scenarios {
        let mut t4 = 0.0;
        for mib in [1, 4, 16] {
            let (bytes, secs) = f(mib * MIB);
            let ratio = if mib == 16 {
                format!("{:.2}", secs / t4)
            } else {
                String::new()
            };
            if mib == 4 {
                t4 = secs;
            }
            println!(
                "| rust | {name} | {mib} | {secs:.3} | {:.1} | {ratio} |",
                bytes as f64 / MIB as f64 / secs
            );
            if mib == 16 {
                summary.push(format!(
                    "{{\"sdk\":\"rust\",\"scenario\":\"{name}\",\"mib_per_s\":{:.1},\"ratio_16_4\":{:.2}}}",
                    bytes as f64 / MIB as f64 / secs,
                    secs / t4
                ));
            }
        }
    }
    println!("[{}]", summary.join(","));
}
