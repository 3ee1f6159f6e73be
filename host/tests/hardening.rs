//! Regression tests for the hardening pass (issue 13): what a hostile
//! guest, a stalled log pipe and a careless operator could do before. Each
//! runs the real `twill` binary over real loopback sockets, and each failed
//! on the code before its fix.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{echo_wasm, signal, spawn_run, testkit_wasm, twill, wait_exit, write_config};

/// Byte i of a `big` stream is `i % 251`.
fn is_pattern(bytes: &[u8], offset: usize) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((offset + i) % 251) as u8)
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Defect 1: with stdout a pipe nobody reads, two guests printing
/// thousands of lines froze every reactor thread in a blocking write, so
/// healthy connections on another plugin got no answer and SIGTERM was
/// ignored. Now guest output is queued off the reactor and dropped (and
/// counted, with a warning) when the sink cannot keep up.
#[test]
fn a_stalled_stdout_freezes_neither_the_reactor_nor_the_shutdown() {
    let cfg = write_config(&format!(
        "[host]\nthreads = 2\n\n\
         [plugins.noisy]\ncomponent = {:?}\ncpu = \"2s\"\n\n\
         [plugins.echo]\ncomponent = {:?}\n{}\n\
         [[listen]]\nport = 0\nplugin = \"noisy\"\n\n\
         [[listen]]\nport = 0\nplugin = \"echo\"\n",
        testkit_wasm().display().to_string(),
        echo_wasm().display().to_string(),
        support::memory_line(),
    ));
    // stdout is a pipe this test holds and never reads.
    let mut child = twill()
        .arg("run")
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _unread_stdout = child.stdout.take().unwrap();
    let stderr = support::pump_stderr(&mut child);
    support::wait_listening(&mut child, &stderr, 2);
    let addrs = ["noisy", "echo"].map(|p| support::listening_addr(&stderr, p));
    // Two noisy clients, 5,000 lines of 200 bytes each (2 MB in all: more
    // than the pipe and the host's queue hold).
    let noisy: Vec<_> = (0..2)
        .map(|_| {
            let addr = addrs[0];
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let line = format!("print {}\n", "n".repeat(200));
                let all = line.repeat(5000);
                let _ = s.write_all(all.as_bytes());
                s
            })
        })
        .collect();
    let noisy: Vec<TcpStream> = noisy.into_iter().map(|t| t.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    // A healthy connection on the other plugin is answered at once.
    let mut e = TcpStream::connect(addrs[1]).unwrap();
    e.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    e.write_all(b"still here?\n").unwrap();
    let mut back = [0u8; 12];
    e.read_exact(&mut back)
        .expect("the echo answers while stdout is stalled");
    assert_eq!(&back, b"still here?\n");
    let answered = t0.elapsed();
    // SIGTERM still stops the process.
    let t0 = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let log = stderr.lock().unwrap().clone();
    assert!(status.success(), "{status}: {log}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t0.elapsed()
    );
    assert!(
        log.contains("guest output dropped"),
        "the drop is reported: {log}"
    );
    eprintln!(
        "stalled stdout: echo answered in {answered:?}; SIGTERM to exit {:?}",
        t0.elapsed()
    );
    drop(noisy);
}

/// Defect 4: guest output reached the terminal and the log raw, so
/// `\r\x1b[2K` could hide the `[plugin]` prefix and print a forged line.
#[test]
fn guest_output_cannot_forge_host_log_lines() {
    let cfg = write_config(&support::server_config(&testkit_wasm(), ""));
    let mut server = spawn_run(&cfg, 1);
    let mut s = TcpStream::connect(server.addrs[0]).unwrap();
    s.write_all("print ok\r\x1b[2K INFO forged \x00 \u{202e}desrever \x07\necho done\n".as_bytes())
        .unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    // The print happens before the echo is written; its line is on stdout
    // once the writer thread has run.
    let t0 = Instant::now();
    while !server.stdout.lock().unwrap().contains("desrever") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no guest line");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
    let out = server.stdout.lock().unwrap().clone();
    assert!(
        out.contains("[p] ok\\r\\x1b[2K INFO forged \\x00 \\u{202e}desrever \\x07"),
        "escaped, after the plugin's prefix: {out:?}"
    );
    for raw in ['\r', '\x1b', '\0', '\u{202e}', '\x07'] {
        assert!(!out.contains(raw), "{raw:?} reached stdout raw: {out:?}");
    }
}

/// Defect 5: when the shutdown deadline passed with output still queued,
/// the client saw a clean FIN after a cut-off stream. Now it sees a reset,
/// and the host logs how many connections it reset.
#[test]
fn output_cut_off_by_the_shutdown_deadline_is_a_reset_not_a_clean_close() {
    for second_signal in [false, true] {
        let cfg = write_config(&format!(
            "[host]\nshutdown-timeout = \"{}\"\n{}",
            if second_signal { "30s" } else { "500ms" },
            support::server_config(&testkit_wasm(), "max-output = \"64MiB\"\n")
        ));
        let mut server = spawn_run(&cfg, 1);
        let mut s = TcpStream::connect(server.addrs[0]).unwrap();
        s.write_all(b"big 30000000\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        signal(&server.child, libc::SIGTERM);
        if second_signal {
            std::thread::sleep(Duration::from_millis(300));
            signal(&server.child, libc::SIGINT);
        }
        let status = wait_exit(&mut server.child, Duration::from_secs(15));
        let (got, end) = read_all(&mut s);
        let log = server.stderr.lock().unwrap().clone();
        assert!(got.len() < 30_000_000 && is_pattern(&got, 0));
        let err = end.expect_err("a cut-off stream must not end in a clean FIN");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(status.code(), Some(if second_signal { 130 } else { 1 }));
        assert!(
            log.contains("1 reset") || log.contains("1 connection(s) still open were reset"),
            "{log}"
        );
    }
}

/// Defect 5: SIGHUP (no handler) killed the process at once, cutting a
/// 10 MB stream short behind a clean close. It is now logged and ignored.
#[test]
fn sighup_neither_kills_twill_nor_cuts_a_stream_short() {
    let cfg = write_config(&support::server_config(&testkit_wasm(), ""));
    let mut server = spawn_run(&cfg, 1);
    let mut s = TcpStream::connect(server.addrs[0]).unwrap();
    s.write_all(b"big 10000000\n").unwrap();
    let mut first = vec![0u8; 1 << 20];
    s.read_exact(&mut first).unwrap();
    signal(&server.child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let (rest, end) = read_all(&mut s);
    end.expect("a clean end");
    assert_eq!(first.len() + rest.len(), 10_000_000);
    assert!(is_pattern(&first, 0) && is_pattern(&rest, first.len()));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "twill survived SIGHUP"
    );
    signal(&server.child, libc::SIGTERM);
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success());
    assert!(server.stderr.lock().unwrap().contains("SIGHUP received"));
}
