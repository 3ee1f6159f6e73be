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
/// 10 MB stream short behind a clean close. It now reloads the config
/// (unchanged here: the plugin keeps its instances), and the stream goes
/// on.
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
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(log.contains("config reloaded"), "{log}");
}

/// A value from `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends `cmd` and returns the first reply line, or `None` if the
/// connection ended (closed or reset) first.
fn first_line(s: &mut TcpStream, cmd: &str) -> Option<String> {
    s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
    read_line(s)
}

/// The next line (without its `\n`), or `None` if the connection ended.
fn read_line(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&got).into()),
            Ok(1) => got.push(b[0]),
            _ => return None,
        }
    }
}

/// Defect 2: every WASI resource a guest creates lives in the host's
/// resource table, outside the guest's `memory` limit: 20 connections
/// each leaking 20,000 streams held ~100 MiB of host memory. Now an
/// instance holds at most `max-resources` (default 1,000) and the call
/// past it traps, ending only that connection.
#[test]
fn host_side_resources_are_bounded_per_instance() {
    let cfg = write_config(&support::server_config(&testkit_wasm(), ""));
    let mut server = spawn_run(&cfg, 1);
    let pid = server.child.id();
    let before = status_kib(pid, "VmRSS");
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.addrs[0]).unwrap())
        .collect();
    let replies: Vec<Option<String>> = conns
        .iter_mut()
        .map(|s| first_line(s, "leak 20000"))
        .collect();
    let grown = status_kib(pid, "VmRSS").saturating_sub(before);
    let mut ok = TcpStream::connect(server.addrs[0]).unwrap();
    assert_eq!(first_line(&mut ok, "echo fine").as_deref(), Some("fine"));
    let log = server.stderr.lock().unwrap().clone();
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
    eprintln!(
        "20 x leak 20000: RSS grew {grown} KiB; replies {:?}",
        &replies[..2]
    );
    assert!(
        replies.iter().all(Option::is_none),
        "every leaking connection is ended: {replies:?}"
    );
    assert!(grown < 48 << 10, "host RSS grew {grown} KiB");
    assert!(log.contains("guest trapped"), "{log}");
}

/// Defect 2: `write-sequence` with 1,000 entries pointing at one 1 MiB
/// buffer made the host copy 1,000 MiB before `max-output` (16 MiB) was
/// checked. Now the total is checked before a byte is copied.
#[test]
fn write_sequence_is_checked_against_max_output_before_copying() {
    let cfg = write_config(&support::server_config(&testkit_wasm(), ""));
    let mut server = spawn_run(&cfg, 1);
    let pid = server.child.id();
    let before = status_kib(pid, "VmHWM");
    let mut s = TcpStream::connect(server.addrs[0]).unwrap();
    let reply = first_line(&mut s, "amplify 1048576 1000");
    let peak = status_kib(pid, "VmHWM").saturating_sub(before);
    // A sequence within the limit still goes through, byte-exact.
    let mut s2 = TcpStream::connect(server.addrs[0]).unwrap();
    s2.write_all(b"seq 1000 50\necho end\n").unwrap();
    let mut got = vec![0u8; 50_000 + 4];
    s2.read_exact(&mut got).unwrap();
    assert!(is_pattern(&got[..50_000], 0) && &got[50_000..] == b"end\n");
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
    eprintln!("amplify 1 MiB x 1000: peak RSS grew {peak} KiB");
    assert_eq!(reply, None, "the guest traps on max-output");
    assert!(peak < 64 << 10, "host peak RSS grew {peak} KiB");
    assert!(
        server
            .stderr
            .lock()
            .unwrap()
            .contains("output limit exceeded")
    );
}

/// Defect 2: 12 clients that never read, each making the guest queue
/// 12 MB, held 144 MB of host memory with no cap across connections. With
/// `[host] max-queued-output`, the connections past the ceiling that hold
/// more than their high-water mark are reset; the others are served whole.
#[test]
fn queued_output_across_connections_has_a_ceiling() {
    let cfg = write_config(&format!(
        "[host]\nmax-queued-output = \"32MiB\"\n{}",
        support::server_config(&testkit_wasm(), "")
    ));
    let mut server = spawn_run(&cfg, 1);
    let pid = server.child.id();
    let before = status_kib(pid, "VmRSS");
    let mut conns: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(server.addrs[0]).unwrap();
            s.write_all(b"big 12000000\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let grown = status_kib(pid, "VmRSS").saturating_sub(before);
    let (mut whole, mut reset) = (0, 0);
    for s in &mut conns {
        let (got, end) = read_all(s);
        assert!(is_pattern(&got, 0));
        match end {
            Ok(()) => {
                assert_eq!(got.len(), 12_000_000, "a clean end means every byte");
                whole += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                reset += 1;
            }
        }
    }
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
    eprintln!(
        "12 x 12 MB unread, ceiling 32 MiB: RSS grew {grown} KiB; {whole} whole, {reset} reset"
    );
    assert!(whole >= 1 && reset >= 1, "{whole} whole, {reset} reset");
    assert!(grown < 80 << 10, "host RSS grew {grown} KiB");
    assert!(
        server
            .stderr
            .lock()
            .unwrap()
            .contains("reached max-queued-output")
    );
}

/// Defect 3: the instance pool was shared by all plugins, so 200 idle
/// clients on plugin A made plugin B's connections fail. Each plugin now
/// has a cap (an equal share of the pool by default), and a connection
/// over it is refused when accepted, with a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_cannot_starve_another_of_instances() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = echo_wasm().display().to_string();
    let running = support::start(&format!(
        "[host]\nmax-instances = 20\n\n\
         [plugins.p]\ncomponent = {echo:?}\n{mem}\n\
         [plugins.q]\ncomponent = {echo:?}\n{mem}\n\
         [[listen]]\nport = 0\nplugin = \"p\"\n\n\
         [[listen]]\nport = 0\nplugin = \"q\"\n",
        mem = support::memory_line(),
    ))
    .await;
    let (a, b) = (running.addrs[0], running.addrs[1]);
    // 30 idle clients on p: its share is 10.
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(tokio::net::TcpStream::connect(a).await.unwrap());
    }
    let t0 = Instant::now();
    while running.stats[0]
        .rejected_at_capacity
        .load(std::sync::atomic::Ordering::Relaxed)
        < 20
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "refusals counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // q still serves 10 connections at once.
    let mut served = Vec::new();
    for i in 0..10 {
        let mut s = tokio::net::TcpStream::connect(b).await.unwrap();
        let msg = format!("q {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("q answers")
            .unwrap();
        assert_eq!(back, msg.as_bytes());
        served.push(s);
    }
    let refused = running.stats[0]
        .rejected_at_capacity
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 20);
    drop((idle, served));
    running.shutdown().await;
}

/// Defect 6: `twill check` passed a component that cannot start within
/// its own plugin's `memory` when another plugin had a larger limit; every
/// connection then failed at run time.
#[test]
fn check_tries_each_component_against_its_own_plugins_limits() {
    let echo = echo_wasm().display().to_string();
    let cfg = write_config(&format!(
        "[plugins.small]\ncomponent = {echo:?}\nmemory = \"1MiB\"\n\n\
         [plugins.big]\ncomponent = {echo:?}\nmemory = \"64MiB\"\n\n\
         [[listen]]\nport = 0\nplugin = \"small\"\n\n\
         [[listen]]\nport = 0\nplugin = \"big\"\n"
    ));
    let out = twill().arg("check").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(":1: plugins.small.component"), "{err}");
    assert!(
        err.contains("needs at least") && err.contains("plugins.small.memory"),
        "{err}"
    );
    assert!(!err.contains("plugins.big"), "{err}");
}

/// `twill check` on the echo served with `[host] HOST` and `memory`, under
/// `ulimit -v KIB` if given: its exit code and stderr.
fn check_pool(host: &str, memory: &str, ulimit_kib: Option<u64>) -> (Option<i32>, String) {
    let cfg = write_config(&format!(
        "[host]\n{host}\n\n[plugins.p]\ncomponent = {:?}\nmemory = {memory:?}\n\n\
         [[listen]]\nport = 0\nplugin = \"p\"\n",
        echo_wasm().display().to_string()
    ));
    let limit = ulimit_kib.map_or_else(String::new, |k| format!("ulimit -v {k} && "));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{limit}exec {:?} check {:?}",
            env!("CARGO_BIN_EXE_twill"),
            cfg
        ))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The pool size a `max-instances` error suggests.
fn suggested_pool(err: &str) -> String {
    err.split("lower max-instances to at most ")
        .nth(1)
        .unwrap_or_else(|| panic!("no suggestion: {err}"))
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// Defect 6: an instance pool the system cannot hold failed at run time
/// (`Cannot allocate memory` from the 6,365th connection, or mmap jargon at
/// start). `twill check` now names the key, the limit, and what to raise.
#[test]
fn check_rejects_an_instance_pool_the_system_cannot_hold() {
    let run = |host: &str, memory: &str| check_pool(host, memory, None);
    // Address space: 20,000 slots of 2 x 4 GiB is 160 TiB.
    let (code, err) = run("max-instances = 20000", "4GiB");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("plugins.toml:2:1: host.max-instances") && err.contains("address space"),
        "{err}"
    );
    // The default pool shrinks to fit instead, and says what it reserves.
    let (code, err) = run("", "4GiB");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("instance pool"), "{err}");
    // Memory maps: past vm.max_map_count.
    let maps: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let too_many = maps / 4;
    if too_many <= 1_000_000 {
        let (code, err) = run(&format!("max-instances = {too_many}"), "16MiB");
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("plugins.toml:2:1: host.max-instances")
                && err.contains("vm.max_map_count")
                && err.contains("sysctl -w vm.max_map_count="),
            "{err}"
        );
        // The value it suggests passes.
        let fits = suggested_pool(&err);
        let (code, err) = run(&format!("max-instances = {fits}"), "16MiB");
        assert_eq!(code, Some(0), "{err}");
    } else {
        eprintln!("vm.max_map_count is {maps}: no pool within range exceeds it");
    }
}

/// Defect 7: `instance = "shared"` without `shared-instances` split guest
/// state over one instance per reactor thread, so six clients of a shared
/// keyspace saw two different rooms. The default is now one instance.
#[test]
fn a_shared_plugin_is_one_instance_unless_told_otherwise() {
    let cfg = write_config(&format!(
        "[host]\nthreads = 2\n{}",
        support::server_config(&testkit_wasm(), "instance = \"shared\"\n")
    ));
    let mut server = spawn_run(&cfg, 1);
    let mut conns: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(server.addrs[0]).unwrap())
        .collect();
    for s in &mut conns {
        assert_eq!(
            first_line(s, "join\necho joined").as_deref(),
            Some("joined")
        );
    }
    // Every connection sees the same room of six.
    for s in &mut conns {
        let line = first_line(s, "served").unwrap();
        assert!(line.ends_with("room=6"), "{line}");
    }
    signal(&server.child, libc::SIGTERM);
    assert!(wait_exit(&mut server.child, Duration::from_secs(10)).success());
}

/// Defect 7: a shared instance that dies takes every connection's guest
/// state with it; that was logged per connection at WARN. It is now one
/// ERROR line with the number of connections aborted.
#[test]
fn a_shared_instance_that_dies_is_an_error_with_its_connection_count() {
    let cfg = write_config(&support::server_config(
        &testkit_wasm(),
        "instance = \"shared\"\n",
    ));
    let mut server = spawn_run(&cfg, 1);
    let mut conns: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(server.addrs[0]).unwrap())
        .collect();
    for s in &mut conns {
        assert_eq!(first_line(s, "echo up").as_deref(), Some("up"));
    }
    assert_eq!(first_line(&mut conns[0], "panic"), None);
    for s in &mut conns[1..] {
        let (_, end) = read_all(s);
        assert!(end.is_err(), "the others are aborted, not closed cleanly");
    }
    let t0 = Instant::now();
    let line = loop {
        let log = support::strip_ansi(&server.stderr.lock().unwrap());
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("a shared instance faulted"))
        {
            break l.to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("its 5 connection(s) are aborted"), "{line}");
    assert!(line.contains("guest trapped"), "{line}");
}

/// Defect 7: a server-only Rust guest passes `check` as a `[[connect]]`
/// plugin (the SDK always exports a client factory), and at run time its
/// connection was dropped with only a DEBUG line. It is now a WARN that
/// says why.
#[test]
fn a_connector_whose_factory_builds_nothing_is_a_warning() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = write_config(&format!(
        "[plugins.p]\ncomponent = {:?}\n\n[[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"p\"\n",
        testkit_wasm().display().to_string()
    ));
    let out = twill()
        .arg("run")
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("client factory built no protocol"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("WARN") && line.contains("export!(client"),
        "{line}"
    );
    drop(listener);
}

/// Defect 7: the shipped chat kept every byte of a line until its newline,
/// so one client sending ~6 MiB without one ran the shared instance out of
/// memory and every user lost the room. It now has Twisted's
/// `LineReceiver.MAX_LENGTH` (16,384): the sender is told and dropped.
#[test]
fn one_chat_user_without_newlines_cannot_take_the_room_down() {
    let cfg = support::repo().join("guests/chat/chat.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("chat.wasm", &support::chat_wasm().display().to_string())
        .replace("port = 9002", "port = 0");
    let mut server = spawn_run(&write_config(&text), 1);
    let addr = server.addrs[0];
    let join = |name: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        assert_eq!(
            first_line(&mut s, name).as_deref(),
            Some("What's your name?\r")
        );
        s
    };
    let mut alice = join("alice");
    let mut bob = join("bob");
    let mut mallory = join("mallory");
    let _ = mallory.write_all(&vec![b'x'; 6 << 20]);
    let (got, _) = read_all(&mut mallory);
    assert!(String::from_utf8_lossy(&got).contains("Line too long."));
    // The room is still there.
    bob.write_all(b"hi alice\n").unwrap();
    let mut line = String::new();
    while !line.contains("<bob> hi alice") {
        line = read_line(&mut alice).expect("alice is still connected");
    }
    signal(&server.child, libc::SIGTERM);
    wait_exit(&mut server.child, Duration::from_secs(10));
}

/// Defect 6: a pool that cannot be reserved (here under `ulimit -v`) gave
/// mmap jargon with no key. Now the pool is sized to the address-space
/// limit: an explicit `max-instances` past it names the key and a value
/// that fits, and the default pool shrinks to fit.
#[test]
fn a_pool_is_sized_to_the_address_space_limit() {
    let check = |host: &str, ulimit_kib: u64| check_pool(host, "16MiB", Some(ulimit_kib));
    // 8 GiB of address space: less than 1,000 slots of 2 x 16 MiB.
    let (code, err) = check("max-instances = 1000", 8 << 20);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("plugins.toml:2:1: host.max-instances: 1000 instance slots")
            && err.contains("ulimit -v"),
        "{err}"
    );
    let fits = suggested_pool(&err);
    let (code, err) = check(&format!("max-instances = {fits}"), 8 << 20);
    assert_eq!(code, Some(0), "the suggested {fits} fits: {err}");
    // The default pool shrinks to fit, and says so.
    let (code, err) = check("", 16 << 20);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("instance pool:"), "{err}");
}
