//! `instance = "shared"`: long-lived instances that each serve many
//! connections, one protocol resource per connection, over real sockets.
//!
//! What must hold: every connection's bytes stay its own under any
//! chunking; one instance's guest state spans its connections (a write to
//! another connection's transport is delivered without that connection
//! doing anything); closed connections' protocols are dropped; and a fault
//! aborts exactly the connections on the faulting instance, after which the
//! next connection gets a fresh instance.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Kit, echo_wasm, server_config, start, testkit_wasm};

const T: Duration = Duration::from_secs(30);

fn shared(n: u32) -> String {
    format!("instance = \"shared\"\nshared-instances = {n}")
}

/// Connects to `addr`, writes `data` in pieces of `piece(bytes left)`
/// bytes, half-closes, and returns everything the server sends until it
/// closes.
async fn echo_through(
    addr: SocketAddr,
    data: Vec<u8>,
    mut piece: impl FnMut(usize) -> usize + Send + 'static,
) -> Vec<u8> {
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        let mut off = 0;
        while off < data.len() {
            let n = piece(data.len() - off);
            w.write_all(&data[off..off + n]).await.unwrap();
            off += n;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(T, r.read_to_end(&mut got))
        .await
        .expect("echo and close")
        .unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_echo_is_byte_exact_for_concurrent_clients_under_random_chunkings() {
    let server = start(&server_config(&echo_wasm(), &shared(2))).await;
    let addr = server.addr();
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ i);
            let len = rng.random_range(1..60_000);
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            // Every tenth client writes one byte at a time.
            let max_chunk = if i % 10 == 0 { 1 } else { 1 << (i % 12) };
            let got = echo_through(addr, data.clone(), move |left| {
                rng.random_range(1..=max_chunk).min(left)
            })
            .await;
            assert!(got == data, "client {i} (seed {seed}): echo differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.stats[0].accepted.load(Ordering::Relaxed), 100);
    assert_eq!(server.stats[0].faulted.load(Ordering::Relaxed), 0);
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_serves_every_connection_and_delivers_cross_connection_writes() {
    let server = start(&server_config(&testkit_wasm(), &shared(1))).await;
    let addr = server.addr();
    let mut a = Kit::connect(addr).await;
    assert_eq!(a.ask("served").await, "served=1 live=1 room=0\n");
    let mut b = Kit::connect(addr).await;
    assert_eq!(b.ask("served").await, "served=2 live=2 room=0\n");
    a.send("join").await;
    b.send("join").await;
    assert_eq!(b.ask("served").await, "served=2 live=2 room=2\n");
    // A's callback writes to B's transport; B gets it without sending a
    // byte, so the host woke B's connection for it.
    a.send("say hello from a").await;
    assert_eq!(a.line().await, "hello from a\n");
    assert_eq!(b.line().await, "hello from a\n");
    // B leaves: its connection-lost runs and its protocol is dropped.
    drop(b);
    a.served_becomes("served=2 live=1 room=1\n").await;
    a.send("say only a").await;
    assert_eq!(a.line().await, "only a\n");
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_drop_their_protocols_on_a_shared_instance() {
    let server = start(&server_config(&testkit_wasm(), &shared(1))).await;
    let addr = server.addr();
    for i in 0..300 {
        let mut k = Kit::connect(addr).await;
        k.send("join").await;
        assert_eq!(k.ask("echo x").await, "x\n", "connection {i}");
        k.w.shutdown().await.unwrap();
        assert!(k.ended().await);
    }
    let mut last = Kit::connect(addr).await;
    last.served_becomes("served=301 live=1 room=0\n").await;
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

/// Connections made one after another on a shared instance, many times
/// `max-resources` of them, are all served: the guest drops each ended
/// connection's `transport` handle. (The Python and JavaScript SDKs once
/// kept them all; their instances faulted with "resource table has no free
/// keys" at the 1,001st connection of a connection-rate benchmark.)
/// scripts/test-polyglot.sh runs it against both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_on_a_shared_instance_outlives_max_resources() {
    let server = start(&server_config(
        &echo_wasm(),
        &format!("{}\nmax-resources = 16", shared(1)),
    ))
    .await;
    let addr = server.addr();
    for i in 0..100 {
        let msg = format!("ping {i}").into_bytes();
        let got = echo_through(addr, msg.clone(), |n| n).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&msg),
            "connection {i}"
        );
    }
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_aborts_the_connections_on_its_instance_and_the_next_gets_a_fresh_one() {
    let server = start(&server_config(&testkit_wasm(), &shared(1))).await;
    let addr = server.addr();
    let mut a = Kit::connect(addr).await;
    let mut b = Kit::connect(addr).await;
    assert_eq!(b.ask("echo b is up").await, "b is up\n");
    assert_eq!(a.ask("served").await, "served=2 live=2 room=0\n");
    a.send("panic").await;
    assert!(a.ended().await, "the faulting connection is aborted");
    // B sends nothing: the instance's fault signal ends it.
    assert!(
        b.ended().await,
        "a connection on the same instance is aborted"
    );
    let mut c = Kit::connect(addr).await;
    assert_eq!(
        c.ask("served").await,
        "served=1 live=1 room=0\n",
        "a fresh instance"
    );
    let faulted = &server.stats[0].faulted;
    for _ in 0..100 {
        if faulted.load(Ordering::Relaxed) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(faulted.load(Ordering::Relaxed), 2);
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

/// Three connections on two shared instances: A and B on different ones
/// (a connection goes to the least busy instance), and C with one of them,
/// found through the room, which A's instance alone has a member of.
/// Returns A, B, C, and whether C is on A's instance.
async fn three_on_two_instances(addr: SocketAddr) -> (Kit, Kit, Kit, bool) {
    let mut a = Kit::connect(addr).await;
    assert_eq!(a.ask("served").await, "served=1 live=1 room=0\n");
    let mut b = Kit::connect(addr).await;
    assert_eq!(
        b.ask("served").await,
        "served=1 live=1 room=0\n",
        "B goes to the instance with no connection"
    );
    a.send("join").await;
    assert_eq!(a.ask("served").await, "served=1 live=1 room=1\n");
    let mut c = Kit::connect(addr).await;
    let with_a = match c.ask("served").await.as_str() {
        "served=2 live=2 room=1\n" => true,
        "served=2 live=2 room=0\n" => false,
        other => panic!("C is on neither instance: {other}"),
    };
    (a, b, c, with_a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_instances_and_a_fault_stays_in_its_instance() {
    let server = start(&server_config(&testkit_wasm(), &shared(2))).await;
    let (a, b, mut c, with_a) = three_on_two_instances(server.addr()).await;
    let (mut mate, mut other) = if with_a { (a, b) } else { (b, a) };
    mate.send("panic").await;
    assert!(mate.ended().await);
    assert!(c.ended().await, "C shared the faulting instance");
    assert_eq!(other.ask("echo other lives").await, "other lives\n");
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_made_one_after_another_are_spread_evenly() {
    let server = start(&server_config(&testkit_wasm(), &shared(2))).await;
    let mut kits = Vec::new();
    for _ in 0..40 {
        let mut k = Kit::connect(server.addr()).await;
        assert_eq!(k.ask("echo up").await, "up\n");
        kits.push(k);
    }
    let mut live = std::collections::BTreeMap::new();
    for k in &mut kits {
        let served = k.ask("served").await;
        *live.entry(served).or_insert(0) += 1;
    }
    assert_eq!(
        live.into_iter().collect::<Vec<_>>(),
        [("served=20 live=20 room=0\n".to_string(), 40)],
        "two instances with 20 connections each"
    );
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_on_a_shared_instance_is_paused_and_resumed() {
    let server = start(&server_config(
        &testkit_wasm(),
        &format!(
            "{}\nhigh-water = \"64KiB\"\nlow-water = \"16KiB\"",
            shared(1)
        ),
    ))
    .await;
    let addr = server.addr();
    let mut other = Kit::connect(addr).await;
    support::producer_streams(addr).await;
    // The instance still answers its other connection.
    assert_eq!(other.ask("echo still here").await, "still here\n");
    server.shutdown().await;
}

/// A chat client: reads CRLF lines.
async fn chat_line(k: &mut Kit) -> String {
    let l = k.line().await;
    l.trim_end_matches("\r\n").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_relays_lines_between_users() {
    let cfg = format!(
        "[plugins.chat]\ncomponent = {:?}\ninstance = \"shared\"\nshared-instances = 1\n\n[[listen]]\nport = 0\nplugin = \"chat\"\n",
        support::chat_wasm().display().to_string()
    );
    let server = start(&cfg).await;
    let addr = server.addr();
    let mut alice = Kit::connect(addr).await;
    assert_eq!(chat_line(&mut alice).await, "What's your name?");
    alice.send("alice").await;
    assert_eq!(chat_line(&mut alice).await, "Welcome, alice!");
    let mut bob = Kit::connect(addr).await;
    assert_eq!(chat_line(&mut bob).await, "What's your name?");
    // A name in use is refused; the line can arrive in pieces.
    bob.w.write_all(b"ali").await.unwrap();
    bob.w.write_all(b"ce\r\n").await.unwrap();
    assert_eq!(
        chat_line(&mut bob).await,
        "Name taken, please choose another."
    );
    bob.send("bob").await;
    assert_eq!(chat_line(&mut bob).await, "Welcome, bob!");
    bob.send("hi alice").await;
    assert_eq!(chat_line(&mut alice).await, "<bob> hi alice");
    alice.send("hello bob").await;
    assert_eq!(chat_line(&mut bob).await, "<alice> hello bob");
    // When alice leaves, her name is free again.
    drop(alice);
    let mut carol = Kit::connect(addr).await;
    assert_eq!(chat_line(&mut carol).await, "What's your name?");
    let mut welcomed = false;
    for _ in 0..50 {
        carol.send("alice").await;
        if chat_line(&mut carol).await == "Welcome, alice!" {
            welcomed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(welcomed, "the name is released when its connection is lost");
    carol.send("it's carol").await;
    assert_eq!(chat_line(&mut bob).await, "<alice> it's carol");
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_guest_stalls_only_its_own_instance() {
    let server = start(&server_config(
        &testkit_wasm(),
        &format!("{}\ncpu = \"300ms\"", shared(2)),
    ))
    .await;
    // A runs away on the instance C shares; B is on the other one.
    let (a, b, mut c, with_a) = three_on_two_instances(server.addr()).await;
    let (mut a, mut b) = if with_a { (a, b) } else { (b, a) };
    let t0 = std::time::Instant::now();
    a.send("loop").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // C's callback must wait for A's: they share an instance and its thread.
    c.send("echo c waited").await;
    // B, on the other instance, keeps answering meanwhile.
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_millis(250) {
        let t = std::time::Instant::now();
        assert_eq!(b.ask("echo b").await, "b\n");
        worst = worst.max(t.elapsed());
        rounds += 1;
    }
    println!("B during A's runaway callback: {rounds} round trips, worst {worst:?}");
    assert!(
        worst < Duration::from_millis(100),
        "B stalled {worst:?} behind another instance's runaway guest"
    );
    // A's instance traps at its CPU limit; C was on it and is aborted too.
    assert!(a.ended().await);
    assert!(c.ended().await);
    assert_eq!(b.ask("echo b still").await, "b still\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_kept_after_its_connection_ended_reaches_nothing() {
    let server = start(&server_config(&testkit_wasm(), &shared(1))).await;
    let addr = server.addr();
    let mut a = Kit::connect(addr).await;
    a.send("keep").await;
    assert_eq!(a.ask("echo kept").await, "kept\n");
    a.w.shutdown().await.unwrap();
    assert!(a.ended().await);
    // Wait until A's protocol is gone, so that B can take its place.
    let mut b = Kit::connect(addr).await;
    b.served_becomes("served=2 live=1 room=0\n").await;
    // B writes through A's old transport: nothing may arrive on B.
    b.send("say-kept not for b").await;
    assert_eq!(b.ask("echo only this").await, "only this\n");
    // B keeps its own transport too; that one still works.
    b.send("keep").await;
    b.send("say-kept for b").await;
    assert_eq!(b.line().await, "for b\n");
    server.shutdown().await;
}

/// This test process's threads named `name` (the kernel keeps 15 bytes).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shared_instance_has_a_thread_until_the_reactor_stops() {
    // A plugin name no other test uses: its threads are `twill-lifecycle-N`.
    let name = "twill-lifecycle";
    assert_eq!(threads_named(name), 0);
    let server = start(&format!(
        "[plugins.lifecycle]\ncomponent = {:?}\n{}instance = \"shared\"\nshared-instances = 2\n\n\
         [[listen]]\nport = 0\nplugin = \"lifecycle\"\n",
        echo_wasm().display().to_string(),
        support::memory_line(),
    ))
    .await;
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut got = [0; 4];
    tokio::time::timeout(T, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(threads_named(name), 2, "one thread per shared instance");
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
    let t0 = std::time::Instant::now();
    while threads_named(name) > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(threads_named(name), 0, "the threads end with the plugin");
}

/// Sends `msg` and reads its echo back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(T, s.read_exact(&mut got))
        .await
        .expect("echo arrives")
        .unwrap();
    got
}

/// 50 clients, each doing `rounds` 64-byte round trips at the same time.
async fn ping_pong_together(addr: SocketAddr, rounds: usize) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            barrier.wait().await;
            for r in 0..rounds {
                let msg = [i.wrapping_mul(7).wrapping_add(r as u8); 64];
                assert_eq!(round_trip(&mut s, &msg).await, msg, "client {i} round {r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_arrive_together_are_delivered_in_batches() {
    let server = start(&server_config(&echo_wasm(), &shared(1))).await;
    let plugin = server.plugin.clone().unwrap();
    assert!(plugin.has_batch(), "the echo component exports batch");
    ping_pong_together(server.addr(), 20).await;
    let stats = server.pool.clone().unwrap().batch_stats().clone();
    let (calls, reads) = (
        stats.calls.load(Ordering::Relaxed),
        stats.reads.load(Ordering::Relaxed),
    );
    println!("{reads} reads in {calls} calls");
    // Every message arrives in one read or more.
    assert!(reads >= 50 * 20, "{reads} reads");
    assert!(
        calls < reads,
        "some call carried several reads: {reads} reads in {calls} calls"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_without_batch_is_served_one_call_per_read() {
    let old = support::repo().join("host/tests/configs/echo-without-batch.wasm");
    let server = start(&server_config(&old, &shared(1))).await;
    let plugin = server.plugin.clone().unwrap();
    assert!(!plugin.has_batch());
    ping_pong_together(server.addr(), 5).await;
    let stats = server.pool.clone().unwrap().batch_stats().clone();
    assert_eq!(stats.calls.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_callback_in_a_batch_is_stopped_and_the_next_connection_is_served() {
    let server = start(&server_config(
        &testkit_wasm(),
        &format!("cpu = \"300ms\"\n{}", shared(1)),
    ))
    .await;
    let mut a = Kit::connect(server.addr()).await;
    assert_eq!(a.ask("echo up").await, "up\n");
    a.send("loop").await;
    assert!(a.ended().await, "the looping connection is aborted");
    let mut b = Kit::connect(server.addr()).await;
    assert_eq!(b.ask("echo after").await, "after\n");
    assert_eq!(
        b.ask("served").await,
        "served=1 live=1 room=0\n",
        "a fresh instance"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_from_many_clients_at_once_is_byte_exact_through_batches() {
    // 40 clients each send 1 MiB at once and read it back: one instance's
    // queue fills with many 64 KiB reads, past what one call carries and
    // past what a queue holds before the reading task delivers it itself.
    let server = start(&server_config(&echo_wasm(), &shared(1))).await;
    let addr = server.addr();
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..1u32 << 20)
                .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                .collect();
            let got = echo_through(addr, data.clone(), |left| left).await;
            assert!(
                got == data,
                "client {i}: {} bytes back of {}",
                got.len(),
                data.len()
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = server.pool.clone().unwrap().batch_stats().clone();
    println!(
        "{} reads in {} calls",
        stats.reads.load(Ordering::Relaxed),
        stats.calls.load(Ordering::Relaxed)
    );
    server.shutdown().await;
}
