//! Reactor time at the host level: `[[listen]] idle-timeout` (Twisted's
//! `TimeoutMixin` as a policy) and `[[connect]] reconnect` (Twisted's
//! `ReconnectingClientFactory`), over real sockets, and their config
//! errors.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use twill::config::Reconnect;
use twill::connector::Backoff;
use twill::{Config, RunEnd};

use support::{echo_wasm, server_config, start, twill, write_config};

/// The config with `[[listen]]` given extra keys.
fn listen_config(listen_extra: &str) -> String {
    server_config(&echo_wasm(), "").replace(
        "plugin = \"p\"\n",
        &format!("plugin = \"p\"\n{listen_extra}\n"),
    )
}

/// Reads until EOF or error; how it ended and when.
fn wait_end(s: &mut TcpStream) -> (std::io::Result<usize>, Instant) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (Ok(0), Instant::now()),
            Ok(_) => continue,
            Err(e) => return (Err(e), Instant::now()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_cleanly_and_a_busy_one_is_not() {
    let server = start(&listen_config("idle-timeout = \"300ms\"")).await;
    let addr = server.addr();
    let (quiet, busy) = tokio::task::spawn_blocking(move || {
        // Quiet: one echo, then nothing.
        let mut quiet = TcpStream::connect(addr).unwrap();
        quiet
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        quiet.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        quiet.read_exact(&mut b).unwrap();
        let last = Instant::now();
        let (end, at) = wait_end(&mut quiet);
        let quiet = (end.map_err(|e| e.kind()), at - last);
        // Busy: a byte every 100 ms for 1 s outlives the timeout.
        let mut busy = TcpStream::connect(addr).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut last = Instant::now();
        for i in 0..10 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            busy.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            busy.read_exact(&mut b).unwrap();
            last = Instant::now();
        }
        let (end, at) = wait_end(&mut busy);
        (quiet, (end.map_err(|e| e.kind()), at - last))
    })
    .await
    .unwrap();
    println!("quiet closed after {:?}, busy after {:?}", quiet.1, busy.1);
    assert_eq!(quiet.0, Ok(0), "a clean FIN, not a reset");
    assert!(
        quiet.1 >= Duration::from_millis(290) && quiet.1 < Duration::from_millis(1500),
        "closed {:?} after the last byte",
        quiet.1
    );
    assert_eq!(busy.0, Ok(0));
    assert!(busy.1 >= Duration::from_millis(290), "{:?}", busy.1);
    assert_eq!(server.shutdown().await, RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idle_timeout_a_quiet_connection_stays_open() {
    let server = start(&listen_config("")).await;
    let addr = server.addr();
    let r = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.read(&mut b).map_err(|e| e.kind())
    })
    .await
    .unwrap();
    assert!(
        matches!(
            r,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "{r:?}"
    );
    server.shutdown().await;
}

/// A client with `reconnect = true` against a server restarted 10 times
/// (closed in between, so attempts fail with "refused"): every restart is
/// reconnected to, within the configured maximum delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_survives_ten_server_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = format!(
        "[plugins.c]\ncomponent = {:?}\n\n[[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"c\"\nreconnect = true\ninitial-delay = \"20ms\"\nfactor = 2.0\njitter = 0\nmax-delay = \"200ms\"\n",
        echo_wasm()
    );
    let server = start(&cfg).await;
    let gaps = tokio::task::spawn_blocking(move || {
        let mut listener = Some(listener);
        let mut gaps = Vec::new();
        for i in 0..10 {
            let l = match listener.take() {
                Some(l) => l,
                None => TcpListener::bind(("127.0.0.1", port)).unwrap(),
            };
            let up = Instant::now();
            l.set_nonblocking(true).unwrap();
            let (mut s, _) = loop {
                match l.accept() {
                    Ok(c) => break c,
                    Err(_) if up.elapsed() < Duration::from_secs(5) => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("restart {i}: no reconnect within 5 s: {e}"),
                }
            };
            gaps.push(up.elapsed());
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut hello = [0u8; 11];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(&hello, b"hello world");
            s.write_all(&hello).unwrap();
            // The seed's client hangs up on the echo; the server goes down.
            let (end, _) = wait_end(&mut s);
            assert!(end.is_ok());
            drop(l);
            std::thread::sleep(Duration::from_millis(150));
        }
        gaps
    })
    .await
    .unwrap();
    println!("reconnected after {gaps:?}");
    // Down for 150 ms, retrying at most every 200 ms (max-delay): back
    // within 200 ms of a restart, plus scheduling slack.
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(700)),
        "{gaps:?}"
    );
    assert_eq!(server.shutdown().await, RunEnd::Clean);
}

/// `max-retries = 3` against a closed port: the first attempt and three
/// retries each fail (the factory hears every one), then the connector
/// gives up and, with nothing else to run, the process exits 0.
#[test]
fn a_reconnecting_client_gives_up_after_max_retries() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = write_config(&format!(
        "[plugins.c]\ncomponent = {:?}\n\n[[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"c\"\nreconnect = true\ninitial-delay = \"10ms\"\nmax-retries = 3\n",
        echo_wasm()
    ));
    let started = Instant::now();
    let out = twill()
        .arg("run")
        .arg(&cfg)
        .env("RUST_LOG", "twill=info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.matches("Connection failed - goodbye").count(),
        4,
        "{stdout}"
    );
    assert!(
        stderr.contains("giving up reconnecting: max-retries reached"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("reconnecting after a delay").count(), 3);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn backoff_follows_twisted_reconnecting_client_factory() {
    let policy = Reconnect {
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(10),
        factor: 2.0,
        jitter: 0.0,
        max_retries: Some(5),
    };
    let mut b = Backoff::new(policy.clone(), rand::rngs::StdRng::seed_from_u64(1));
    let secs: Vec<f64> = (0..5)
        .map(|_| b.next_delay().unwrap().as_secs_f64())
        .collect();
    // Twisted multiplies before the first retry, and caps at max-delay.
    assert_eq!(secs, [2.0, 4.0, 8.0, 10.0, 10.0]);
    assert_eq!(b.next_delay(), None, "the sixth retry is past max-retries");
    // A connection made starts over.
    b.reset();
    assert_eq!(b.next_delay(), Some(Duration::from_secs(2)));

    // With Twisted's default jitter the delays scatter around the curve.
    let jittery = Reconnect {
        jitter: twill::config::DEFAULT_JITTER,
        max_retries: None,
        ..policy
    };
    let mut spread = Vec::new();
    for seed in 0..200 {
        let mut b = Backoff::new(jittery.clone(), rand::rngs::StdRng::seed_from_u64(seed));
        spread.push(b.next_delay().unwrap().as_secs_f64());
    }
    let mean = spread.iter().sum::<f64>() / spread.len() as f64;
    let (lo, hi) = spread
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    assert!((1.9..2.1).contains(&mean), "mean {mean}");
    assert!(lo < 1.9 && hi > 2.1, "{lo}..{hi}: jitter applied");
}

#[test]
fn bad_time_settings_are_located_config_errors() {
    let text = format!(
        "[plugins.c]\ncomponent = {:?}\n\n[[listen]]\nport = 0\nplugin = \"c\"\nidle-timeout = \"1ms\"\n\n[[connect]]\nhost = \"localhost\"\nport = 1\nplugin = \"c\"\nfactor = 2.0\n\n[[connect]]\nhost = \"localhost\"\nport = 2\nplugin = \"c\"\nreconnect = true\nfactor = 0.5\njitter = \"lots\"\ninitial-delay = \"2s\"\nmax-delay = \"1s\"\nmax-retries = -1\n",
        echo_wasm()
    );
    let errs = Config::parse(Path::new("/x/plugins.toml"), &text)
        .unwrap_err()
        .0;
    let find = |key: &str| {
        errs.iter()
            .find(|e| e.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no error for {key}: {errs:#?}"))
    };
    assert_eq!(find("listen[0].idle-timeout").line, Some(7));
    assert!(find("listen[0].idle-timeout").message.contains("at least"));
    let f = find("connect[0].factor");
    assert_eq!(f.line, Some(13));
    assert!(f.message.contains("reconnect = true"), "{}", f.message);
    assert!(find("connect[1].factor").message.contains("from 1 to"));
    assert!(find("connect[1].jitter").message.contains("a number"));
    assert!(
        find("connect[1].max-delay")
            .message
            .contains("initial-delay")
    );
    assert!(find("connect[1].max-retries").line.is_some());
    assert_eq!(errs.len(), 6, "{errs:#?}");

    // And the binary says so with exit 2, binding nothing.
    let cfg = write_config(&text);
    let out = twill().arg("run").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugins.toml:7"), "{stderr}");
}
