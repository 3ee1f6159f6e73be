//! Guests cannot hurt the host or each other: every fault the test-kit
//! component can commit stays inside its own connection, while healthy
//! connections on the same listener stay byte-exact.
//!
//! Run with `--nocapture` to see the figures (p99 latency under a runaway
//! guest, RSS growth under a client that never reads).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{server_config, start, testkit_wasm};

const T: Duration = Duration::from_secs(30);

/// A healthy exchange: `echo` commands answered byte-exact.
async fn healthy(addr: SocketAddr, id: usize, rounds: usize) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut n = 0;
    for r in 0..rounds {
        let line = format!(
            "echo healthy {id} round {r} {}\n",
            "y".repeat((id * 31 + r) % 200)
        );
        s.write_all(line.as_bytes()).await.unwrap();
        let want = &line["echo ".len()..];
        let mut back = vec![0u8; want.len()];
        tokio::time::timeout(T, s.read_exact(&mut back))
            .await
            .expect("healthy echo arrives")
            .unwrap();
        assert_eq!(back, want.as_bytes(), "healthy connection {id} round {r}");
        n += back.len();
    }
    n
}

/// Sends a fault command and returns how the connection ended.
async fn fault(addr: SocketAddr, cmd: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .expect("faulting connection ends")?;
    Ok(got)
}

/// Waits until a counter reaches `want` (the client may see the reset a
/// moment before the host counts it).
async fn counter_reaches(c: &std::sync::atomic::AtomicU64, want: u64) -> u64 {
    let t0 = Instant::now();
    while c.load(Ordering::Relaxed) < want && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.load(Ordering::Relaxed)
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_ends_only_its_own_connection() {
    let server = start(&server_config(
        &testkit_wasm(),
        "cpu = \"200ms\"\nmemory = \"16MiB\"\nmax-output = \"4MiB\"",
    ))
    .await;
    let addr = server.addr();
    for cmd in ["panic", "loop", "alloc", "flood"] {
        // Healthy neighbours run while the fault happens.
        let neighbours: Vec<_> = (0..8).map(|i| tokio::spawn(healthy(addr, i, 30))).collect();
        let t0 = Instant::now();
        let r = fault(addr, cmd).await;
        let err =
            r.expect_err("a faulting guest's connection is aborted (reset), not closed cleanly");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{cmd}: {err}"
        );
        println!("{cmd}: connection reset after {:?}", t0.elapsed());
        for n in neighbours {
            assert!(n.await.unwrap() > 0);
        }
    }
    assert_eq!(
        counter_reaches(&server.stats[0].faulted, 4).await,
        4,
        "each fault is counted"
    );
    // Calling the transport after lose-connection is not a fault at all.
    let got = fault(addr, "after-lose").await.unwrap();
    assert_eq!(got, b"before\n");
    assert_eq!(server.stats[0].faulted.load(Ordering::Relaxed), 4);
    // And the listener still serves.
    assert!(healthy(addr, 99, 5).await > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_guest_is_interrupted_within_its_deadline_while_others_answer() {
    let server = start(&server_config(&testkit_wasm(), "cpu = \"100ms\"")).await;
    let addr = server.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut probe = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"loop\n").await.unwrap();
    // While the guest spins, measure another connection's round trips.
    let mut lat = Vec::new();
    let mut buf = [0u8; 5];
    let mut ended = None;
    let mut dead = [0u8; 1];
    while t0.elapsed() < Duration::from_millis(600) {
        let t = Instant::now();
        probe.write_all(b"echo ping\n").await.unwrap();
        probe.read_exact(&mut buf).await.unwrap();
        lat.push(t.elapsed());
        if ended.is_none() {
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut dead)).await
            {
                ended = Some((t0.elapsed(), r));
            } else if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut dead)).await
            {
                ended = Some((t0.elapsed(), 0));
            }
        }
    }
    let (when, _) = ended.expect("the runaway connection ends");
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];
    println!(
        "runaway guest (cpu = 100ms): interrupted after {when:?}; other connection: {} round trips, p50 {p50:?}, p99 {p99:?}, max {:?}",
        lat.len(),
        lat.last().unwrap()
    );
    // One tick of slack for the epoch, one for scheduling, generous for CI.
    assert!(
        when < Duration::from_millis(400),
        "interrupted after {when:?}"
    );
    assert!(lat.len() > 20, "the other connection kept answering");
    // No stall for the length of the runaway callback: another reactor
    // thread drives the sockets meanwhile.
    let max = *lat.last().unwrap();
    assert!(
        max < Duration::from_millis(50),
        "the other connection stalled {max:?}"
    );
    assert_eq!(counter_reaches(&server.stats[0].faulted, 1).await, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_faults_interleaved_with_a_thousand_healthy_connections_lose_nothing() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let addr = server.addr();
    let mut tasks = Vec::new();
    for i in 0..2000usize {
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                (healthy(addr, i, 3).await, 0)
            } else {
                let cmd = ["panic", "alloc", "abort"][i % 3];
                let _ = fault(addr, cmd).await;
                (0, 1)
            }
        }));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let (mut bytes, mut faults) = (0, 0);
    for t in tasks {
        let (b, f) = tokio::time::timeout(T, t).await.unwrap().unwrap();
        bytes += b;
        faults += f;
    }
    let stats = &server.stats[0];
    let expected_faults = (1..2000).step_by(2).filter(|i| i % 3 != 2).count() as u64;
    counter_reaches(&stats.faulted, expected_faults).await;
    println!(
        "1000 faulting + 1000 healthy: {bytes} healthy bytes echoed byte-exact, 0 lost; counters: faulted {}, accepted {}",
        stats.faulted.load(Ordering::Relaxed),
        stats.accepted.load(Ordering::Relaxed)
    );
    assert_eq!(faults, 1000);
    // panic and alloc trap (counted as faults); abort is a clean guest choice.
    assert_eq!(stats.faulted.load(Ordering::Relaxed), expected_faults);
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 2000);
    server.shutdown().await;
}

/// The host runs as its own process here, so its RSS is measured alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_faults_stay_within_the_limit() {
    let cfg = support::write_config(&server_config(&testkit_wasm(), "memory = \"8MiB\""));
    let mut server = support::spawn_run(&cfg, 1);
    let (addr, pid) = (server.addrs[0], server.child.id());
    // Warm up: one fault so pools and caches exist.
    let _ = fault(addr, "alloc").await;
    let before = rss_kib(pid);
    for _ in 0..40 {
        let err = fault(addr, "alloc").await.expect_err("alloc traps");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
    let after = rss_kib(pid);
    println!(
        "40 guests allocating without bound (memory = 8MiB): host RSS {before} KiB -> {after} KiB"
    );
    // Each instance's memory is released when its connection dies; the
    // growth is far below 40 x 8 MiB.
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew {} KiB",
        after.saturating_sub(before)
    );
    assert!(healthy(addr, 1, 3).await > 0);
    assert!(
        server.stderr.lock().unwrap().contains("guest trapped"),
        "the trap is logged"
    );
    support::signal(&server.child, libc::SIGTERM);
    support::wait_exit(&mut server.child, T);
}

/// The host runs as its own process here, so its RSS is measured alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_host_memory() {
    clients_that_never_read("").await;
}

/// The same on one shared instance, whose reads go through batched
/// delivery: a read waits in the instance's queue before the guest sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_host_memory_on_a_shared_instance() {
    clients_that_never_read("instance = \"shared\"\nshared-instances = 1").await;
}

/// 8 clients try to push 1 GiB each without reading, to a host run with
/// `extra` plugin settings; the host's RSS must stay bounded, and every
/// byte it accepted must come back.
async fn clients_that_never_read(extra: &str) {
    let cfg = support::write_config(&server_config(
        &support::echo_wasm(),
        &format!("high-water = \"256KiB\"\nlow-water = \"64KiB\"\n{extra}"),
    ));
    let mut server = support::spawn_run(&cfg, 1);
    let (addr, pid) = (server.addrs[0], server.child.id());
    // Warm up one connection so the pools exist.
    {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    let before = rss_kib(pid);
    let conns = 8;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            static BLOCK: [u8; 1 << 20] = [b'z'; 1 << 20];
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut pushed = 0usize;
            // Try to push 1 GiB without reading a byte; stop once the host
            // has stopped taking data for a while.
            while pushed < 1 << 30 {
                match tokio::time::timeout(Duration::from_millis(500), s.write(&BLOCK[..])).await {
                    Ok(Ok(n)) => pushed += n,
                    Ok(Err(e)) => panic!("write failed: {e}"),
                    Err(_) => break,
                }
            }
            (s, pushed)
        }));
    }
    let mut streams = Vec::new();
    let mut total = 0;
    for t in tasks {
        let (s, pushed) = t.await.unwrap();
        total += pushed;
        streams.push(s);
    }
    let after = rss_kib(pid);
    let growth = after.saturating_sub(before);
    println!(
        "{conns} clients each trying to push 1 GiB without reading: the host accepted {} MiB in all (most of it sits in kernel socket buffers) before backpressure stopped them; host RSS growth {growth} KiB (high-water 256 KiB x {conns} = {} KiB)",
        total >> 20,
        256 * conns
    );
    assert!(
        total < 1 << 30,
        "backpressure stopped the clients long before 1 GiB"
    );
    // high-water (plus up to one read chunk past it) x connections, plus an
    // instance per connection (or a read queued for batched delivery), plus
    // a constant for the allocator's segments and the runtime (and a shared
    // instance's queue, at most 1 MiB): 8 MiB, against the 8 GiB the
    // clients tried to push.
    let bound = (256 + 64 + 64 + 64) * conns as u64 + 8 * 1024;
    assert!(growth < bound, "RSS grew {growth} KiB, bound {bound} KiB");
    // Reading now drains everything that was accepted, byte for byte.
    for mut s in streams {
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.iter().all(|&b| b == b'z'));
        total -= got.len();
    }
    assert_eq!(total, 0, "every accepted byte was echoed");
    support::signal(&server.child, libc::SIGTERM);
    support::wait_exit(&mut server.child, T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_producer_is_paused_and_resumed() {
    let server = start(&server_config(
        &testkit_wasm(),
        "high-water = \"64KiB\"\nlow-water = \"16KiB\"",
    ))
    .await;
    support::producer_streams(server.addr()).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_excess_and_keeps_serving() {
    let cfg = format!(
        "[plugins.p]\ncomponent = {:?}\n[[listen]]\nport = 0\nplugin = \"p\"\nmax-connections = 3\n",
        support::echo_wasm().display().to_string()
    );
    let server = start(&cfg).await;
    let addr = server.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut b = Vec::new();
    let _ = tokio::time::timeout(T, extra.read_to_end(&mut b))
        .await
        .unwrap();
    assert!(b.is_empty(), "the fourth connection is closed at once");
    assert_eq!(
        server.stats[0].rejected_over_limit.load(Ordering::Relaxed),
        1
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    tokio::time::timeout(T, again.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"ok");
    server.shutdown().await;
}

#[test]
fn deny_by_default() {
    use twill::testing::TestComponent;
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    for cmd in ["env", "file", "net", "clock", "stdin"] {
        let mut c = kit.server_connection().unwrap().unwrap();
        c.data_received(format!("{cmd}\n").as_bytes()).unwrap();
        assert_eq!(String::from_utf8(c.value()).unwrap(), "denied\n", "{cmd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_sleeps_traps_instead_of_blocking_the_reactor() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let addr = server.addr();
    let t0 = Instant::now();
    let got = fault(addr, "sleep").await;
    // The sleep never happened: the connection is aborted at once, with
    // nothing written after the blocking call.
    assert!(
        got.as_ref().map_or(true, |b| !b.ends_with(b"slept\n")),
        "{got:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(counter_reaches(&server.stats[0].faulted, 1).await, 1);
    assert!(healthy(addr, 1, 3).await > 0);
    server.shutdown().await;
}

#[tokio::test]
async fn sleeping_in_a_callback_is_a_trap_that_says_why() {
    use twill::testing::TestComponent;
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    let err = c.data_received(b"sleep\n").unwrap_err();
    assert!(err.to_string().contains("must not block"), "{err}");
    assert!(c.value().is_empty(), "nothing after the blocking call");
}

#[test]
fn host_side_traps_report_their_own_message() {
    use twill::testing::TestComponent;
    let limits = twill::runtime::limits::Limits {
        max_output: 1 << 20,
        ..Default::default()
    };
    let kit = TestComponent::load_with(testkit_wasm(), limits).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    let err = c.data_received(b"flood\n").unwrap_err();
    assert!(
        err.to_string().contains("output limit exceeded"),
        "the log names the limit, not just a wasm backtrace: {err}"
    );
}
