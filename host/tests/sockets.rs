//! The reactor over real sockets on ephemeral loopback ports, with the
//! bundled echo component and the test-kit component.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{echo_wasm, server_config, start, testkit_wasm};

const T: Duration = Duration::from_secs(30);

/// Writes `data` in the given chunk sizes while reading the echo back
/// concurrently; returns what came back.
async fn echo_roundtrip(addr: SocketAddr, data: Vec<u8>, chunks: Vec<usize>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut r, mut w) = stream.into_split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        let mut off = 0;
        for c in chunks {
            let end = (off + c).min(len);
            w.write_all(&data[off..end]).await.unwrap();
            off = end;
            if off == len {
                break;
            }
        }
        w.write_all(&data[off..]).await.unwrap();
        w
    });
    let mut got = vec![0u8; len];
    tokio::time::timeout(T, r.read_exact(&mut got))
        .await
        .expect("echo arrives")
        .unwrap();
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    // After our FIN the server flushes, closes, and we see EOF.
    let mut rest = Vec::new();
    tokio::time::timeout(T, r.read_to_end(&mut rest))
        .await
        .expect("server closes")
        .unwrap();
    assert!(rest.is_empty(), "no extra bytes after the echo");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_byte_exact_under_random_chunkings() {
    let server = start(&server_config(&echo_wasm(), "")).await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..24 {
        let len = match round % 4 {
            0 => rng.random_range(1..64),
            1 => rng.random_range(64..4096),
            2 => rng.random_range(4096..300_000),
            _ => rng.random_range(1..2_000_000),
        };
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let max_chunk = [1, 7, 512, 65_536][round % 4];
        let chunks: Vec<usize> = (0..len).map(|_| rng.random_range(1..=max_chunk)).collect();
        let got = echo_roundtrip(server.addr(), data.clone(), chunks).await;
        assert!(
            got == data,
            "round {round} (seed {seed}, {len} bytes): echo differs"
        );
    }
    // One byte at a time, explicitly.
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
    assert_eq!(
        echo_roundtrip(server.addr(), data.clone(), vec![1; data.len()]).await,
        data
    );
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients() {
    let server = start(&server_config(&echo_wasm(), "")).await;
    let addr = server.addr();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut expected = Vec::new();
            for round in 0..20u32 {
                let msg = format!(
                    "client {i} round {round} {}\n",
                    "x".repeat((i * round % 97) as usize)
                );
                s.write_all(msg.as_bytes()).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg.as_bytes());
                expected.extend(back);
            }
            expected.len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += tokio::time::timeout(T, t)
            .await
            .expect("client finishes")
            .unwrap();
    }
    assert!(total > 200 * 20 * 20);
    assert_eq!(
        server.stats[0]
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    assert_eq!(server.shutdown().await, twill::RunEnd::Clean);
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lose_connection_flushes_a_large_pending_write_before_closing() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let n = 8 << 20; // far more than the socket buffers hold
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(format!("big {n}\n").as_bytes()).await.unwrap();
    // Let the server's output back up before we read anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .expect("server closes")
        .unwrap();
    assert_eq!(
        got.len(),
        n,
        "every byte written before lose-connection arrives"
    );
    assert!(got == pattern(n), "in order");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_sequence_keeps_order() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"seq 1000 300\nlose\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == pattern(300_000));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_lose_connection_are_ignored() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"after-lose\n").await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "before\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_connection_resets() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"abort\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .unwrap();
    let err = r.expect_err("an aborted connection is reset, not closed cleanly");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    server.shutdown().await;
}

async fn addr_line(addr: SocketAddr) -> (String, SocketAddr, SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (local, remote) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    s.write_all(b"addr\nlose\n").await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    (got, local, remote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_peer_and_get_host_are_the_real_addresses_v4_and_v6() {
    let cfg = format!(
        "[plugins.p]\ncomponent = {:?}\n\n[[listen]]\nport = 0\nplugin = \"p\"\n\n[[listen]]\nport = 0\nplugin = \"p\"\ninterface = \"::1\"\n",
        testkit_wasm().display().to_string()
    );
    let server = start(&cfg).await;
    let (line, local, remote) = addr_line(server.addrs[0]).await;
    assert_eq!(
        line,
        format!(
            "peer=127.0.0.1:{} host=127.0.0.1:{}\n",
            local.port(),
            remote.port()
        )
    );
    match TcpStream::connect(server.addrs[1]).await {
        Ok(_) => {
            let (line, local, remote) = addr_line(server.addrs[1]).await;
            assert_eq!(
                line,
                format!("peer=[::1]:{} host=[::1]:{}\n", local.port(), remote.port())
            );
        }
        Err(e) => println!("skipping IPv6 half: {e}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_returning_none_refuses_only_that_connection() {
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.66:0".parse().unwrap()).unwrap();
    let mut refused = sock.connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, refused.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(buf.is_empty(), "a refused connection gets no data");
    let (line, _, _) = addr_line(server.addr()).await;
    assert!(
        line.starts_with("peer=127.0.0.1:"),
        "others are served: {line}"
    );
    assert_eq!(
        server.stats[0]
            .refused_by_factory
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_and_closes_open_connections() {
    let server = start(&server_config(&echo_wasm(), "")).await;
    let mut conns = Vec::new();
    for i in 0..10 {
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(format!("conn {i}\n").as_bytes()).await.unwrap();
        let mut back = vec![0u8; 7];
        s.read_exact(&mut back).await.unwrap();
        conns.push(s);
    }
    let end = server.shutdown().await;
    assert_eq!(end, twill::RunEnd::Clean);
    for mut s in conns {
        let mut rest = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "each connection gets a clean FIN");
    }
}
