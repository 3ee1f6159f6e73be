//! Guests that open connections (`reactor.connect-tcp`), over real
//! sockets: the portforward example relaying in the guest and spliced by
//! the host, with every chunking, half-close through the proxy, a client
//! that does not read while the backend floods, the grants (refused,
//! allowed by address, counted), a closed port, a black-holed backend, the
//! `max-outbound` cap, no grants at all, descriptors and instances back to
//! their baseline, shutdown with proxied connections in flight, and the
//! router example.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The port forwarder under test: the Rust example, or, with
/// `TWILL_FORWARD_WASM`, another language's (scripts/test-polyglot.sh).
fn portforward_wasm() -> std::path::PathBuf {
    match std::env::var_os("TWILL_FORWARD_WASM") {
        Some(p) => p.into(),
        None => support::repo().join("guests/portforward/portforward.wasm"),
    }
}

fn router_wasm() -> std::path::PathBuf {
    support::repo().join("guests/router/router.wasm")
}

/// An echo backend: echoes every byte, and answers the client's FIN with
/// its own once everything was echoed (half-close aware).
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A backend that reads until the client's FIN, then answers `reply:`
/// and the byte count, and closes: correct only through a proxy that
/// passes half-closes on.
async fn reply_after_eof_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = s.write_all(format!("reply:{}", all.len()).as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A backend that writes `n` bytes of a pattern, then closes.
async fn flood_backend(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A portforward config to `backend`, granted `grant` (with the memory a
/// Python or JavaScript forwarder needs, [`forward_memory`]).
fn forward_config(backend: &str, grant: &str, extra: &str) -> String {
    let plugin = format!(
        "{}connect = [{grant:?}]\nenv = {{ BACKEND = {backend:?}{extra} }}\n",
        forward_memory()
    );
    support::server_config(&portforward_wasm(), &plugin)
}

/// The memory line for a Python or JavaScript forwarder
/// (`TWILL_TEST_MEMORY`, set by scripts/test-polyglot.sh).
fn forward_memory() -> String {
    match std::env::var("TWILL_FORWARD_WASM") {
        Ok(_) => support::memory_line(),
        Err(_) => String::new(),
    }
}

/// Reads until EOF, failing on a reset or after `limit`.
async fn read_all(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut got))
        .await
        .expect("EOF in time")
        .expect("a clean close, not a reset");
    got
}

/// Sends `data` in `chunk`-byte writes while reading the echo, then
/// half-closes and reads to EOF: the echo must be exact.
async fn echo_through(addr: SocketAddr, data: &[u8], chunk: usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        for c in sent.chunks(chunk) {
            w.write_all(c).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("EOF in time")
        .expect("clean close");
    writer.await.unwrap();
    assert_eq!(got.len(), data.len(), "chunk {chunk}");
    assert!(got == data, "chunk {chunk}: bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_splice_echo_every_chunking_and_pass_the_fin_on() {
    let backend = echo_backend().await.to_string();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    for splice in ["", ", SPLICE = \"1\""] {
        let r = support::start(&forward_config(&backend, &backend, splice)).await;
        for chunk in [1, 7, 1000, 65536, 200_000] {
            let n = if chunk == 1 { 3000 } else { data.len() };
            echo_through(r.addr(), &data[..n], chunk).await;
        }
        let opened = r.outbound.as_ref().unwrap().opened.load(Ordering::Relaxed);
        assert_eq!(opened, 5, "splice {splice:?}");
        assert_eq!(r.shutdown().await, twill::reactor::RunEnd::Clean);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_goes_through_the_proxy_both_ways() {
    let backend = reply_after_eof_backend().await.to_string();
    for splice in ["", ", SPLICE = \"1\""] {
        let r = support::start(&forward_config(&backend, &backend, splice)).await;
        let mut s = TcpStream::connect(r.addr()).await.unwrap();
        s.write_all(&[b'x'; 5000]).await.unwrap();
        s.shutdown().await.unwrap();
        let got = read_all(&mut s, Duration::from_secs(10)).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "reply:5000",
            "splice {splice:?}"
        );
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_while_the_backend_floods_loses_nothing() {
    const N: usize = 24 << 20;
    let backend = flood_backend(N).await.to_string();
    // A small max-output: without flow control between the two
    // connections, the relay would pass it and fault its instance.
    let limits = "high-water = \"64KiB\"\nlow-water = \"16KiB\"\nmax-output = \"1MiB\"\n";
    for splice in ["", ", SPLICE = \"1\""] {
        // One reactor thread: the relaying callback runs many reads in a
        // row before the slow side's task runs; the pause must not wait for
        // it.
        let text = forward_config(&backend, &backend, splice)
            .replace("connect =", &format!("{limits}connect ="));
        let r = support::start(&format!("[host]\nthreads = 1\n{text}")).await;
        let mut s = TcpStream::connect(r.addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = read_all(&mut s, Duration::from_secs(60)).await;
        assert_eq!(got.len(), N, "splice {splice:?}");
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "splice {splice:?}: bytes differ"
        );
        let faulted = r.stats[0].faulted.load(Ordering::Relaxed);
        assert_eq!(faulted, 0, "splice {splice:?}");
        r.shutdown().await;
    }
}

/// The client is closed without a byte (the guest lost its connection
/// after the attempt failed).
async fn closed_without_data(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let got = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_refuse_what_they_do_not_cover_and_count_it() {
    let backend = echo_backend().await;
    let port = backend.port();
    // Granted another port: refused without a connection.
    let other = format!("127.0.0.1:{}", support::closed_port());
    let r = support::start(&forward_config(&backend.to_string(), &other, "")).await;
    closed_without_data(r.addr()).await;
    let stats = r.outbound.clone().unwrap();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.opened.load(Ordering::Relaxed), 0);
    r.shutdown().await;

    // A name granted by name on another port: refused.
    let other = format!("localhost:{}", support::closed_port());
    refused_once(&format!("localhost:{port}"), &other).await;

    // A name not granted by name, resolving to a granted address: allowed.
    let r = support::start(&forward_config(
        &format!("localhost:{port}"),
        &format!("127.0.0.0/8:{port}"),
        "",
    ))
    .await;
    echo_through(r.addr(), b"by address", 3).await;
    r.shutdown().await;

    // A name resolving outside the grants: refused after the lookup.
    refused_once(&format!("localhost:{port}"), &format!("10.0.0.0/8:{port}")).await;
}

/// A forwarder to `backend` granted only `grant`: its client is closed
/// without a byte, and the refusal is counted once.
async fn refused_once(backend: &str, grant: &str) {
    let r = support::start(&forward_config(backend, grant, "")).await;
    closed_without_data(r.addr()).await;
    let refused = r.outbound.as_ref().unwrap().refused.load(Ordering::Relaxed);
    assert_eq!(refused, 1, "{backend} granted {grant}");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_and_a_black_hole_fail_through_the_factory() {
    let closed = format!("127.0.0.1:{}", support::closed_port());
    let r = support::start(&forward_config(&closed, &closed, "")).await;
    closed_without_data(r.addr()).await;
    assert_eq!(
        r.outbound.as_ref().unwrap().failed.load(Ordering::Relaxed),
        1
    );
    r.shutdown().await;

    // A listener whose accept queue is full and that never accepts: the
    // kernel drops further SYNs, so a connect hangs until its timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let hole = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hole)).await
        {
            fillers.push(s);
        }
    }
    let hole = hole.to_string();
    let r = support::start(&forward_config(&hole, &hole, ", TIMEOUT = \"0.5\"")).await;
    let started = std::time::Instant::now();
    closed_without_data(r.addr()).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        r.outbound.as_ref().unwrap().failed.load(Ordering::Relaxed),
        1
    );
    r.shutdown().await;
    drop((fillers, sock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outbound_caps_one_instance() {
    let backend = echo_backend().await.to_string();
    let text = forward_config(&backend, &backend, "").replace(
        "connect =",
        "instance = \"shared\"\nmax-outbound = 1\nconnect =",
    );
    let r = support::start(&text).await;
    let mut a = TcpStream::connect(r.addr()).await.unwrap();
    a.write_all(b"first").await.unwrap();
    let mut buf = [0u8; 5];
    a.read_exact(&mut buf).await.unwrap();
    // The instance's one outbound connection is taken: the next is closed.
    closed_without_data(r.addr()).await;
    // The first still works, and once it ends its place is free again.
    a.write_all(b"again").await.unwrap();
    a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    a.shutdown().await.unwrap();
    read_all(&mut a, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo_through(r.addr(), b"third", 2).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_grants_a_guest_cannot_connect() {
    let backend = echo_backend().await.to_string();
    let plugin = format!("{}env = {{ BACKEND = {backend:?} }}\n", forward_memory());
    let r = support::start(&support::server_config(&portforward_wasm(), &plugin)).await;
    assert!(r.outbound.is_none());
    closed_without_data(r.addr()).await;
    r.shutdown().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_and_instances_return_to_their_baseline() {
    let backend = echo_backend().await.to_string();
    let r = support::start(&forward_config(&backend, &backend, "")).await;
    let plugin = r.plugin.clone().unwrap();
    echo_through(r.addr(), b"warm", 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fds = open_fds();
    let n = 10_000;
    for i in 0..n {
        echo_through(r.addr(), format!("ping {i}").as_bytes(), 64).await;
    }
    // Closed connections' instances and sockets go once their tasks end.
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if plugin.instance_cap().live() == 0 && open_fds() <= fds + 2 {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "after {n} proxied connections: {} live instances, {} descriptors (baseline {fds})",
        plugin.instance_cap().live(),
        open_fds()
    );
    assert_eq!(
        r.outbound.as_ref().unwrap().opened.load(Ordering::Relaxed),
        n + 1
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_proxied_connections_on_both_legs() {
    let backend = flood_backend(4 << 20).await.to_string();
    for splice in ["", ", SPLICE = \"1\""] {
        let r = support::start(&forward_config(&backend, &backend, splice)).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(r.addr()).await.unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).await.unwrap();
            clients.push(s);
        }
        // Stop while the backends' floods are in flight; the clients read.
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move { read_all(&mut s, Duration::from_secs(20)).await })
            })
            .collect();
        assert_eq!(
            r.shutdown().await,
            twill::reactor::RunEnd::Clean,
            "splice {splice:?}"
        );
        for reader in readers {
            // A clean close after an intact prefix of the flood: what the
            // proxy read, it delivered.
            let got = reader.await.unwrap();
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, &b)| b == ((i + 1) % 251) as u8),
                "splice {splice:?}: bytes differ"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_splices_to_the_route_a_line_or_a_proxy_header_names() {
    let backend = echo_backend().await;
    let routes = format!("echo={backend}");
    let plugin = format!(
        "connect = [{:?}]\nenv = {{ ROUTES = {routes:?} }}\n",
        backend.to_string()
    );
    let r = support::start(&support::server_config(&router_wasm(), &plugin)).await;

    // By name, with bytes after the line in the same segment.
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    s.write_all(b"echo\r\nhello").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    s.write_all(b" world").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s, Duration::from_secs(5)).await, b" world");

    // By a PROXY v1 header naming the backend's address.
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    let header = format!(
        "PROXY TCP4 192.0.2.1 {} 5555 {}\r\n",
        backend.ip(),
        backend.port()
    );
    s.write_all(header.as_bytes()).await.unwrap();
    s.write_all(b"proxied").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s, Duration::from_secs(5)).await, b"proxied");

    // An unknown route, and an over-long line: an error, then the close.
    for first in [b"nope\n".to_vec(), vec![b'a'; 2000]] {
        let mut s = TcpStream::connect(r.addr()).await.unwrap();
        s.write_all(&first).await.unwrap();
        let got = read_all(&mut s, Duration::from_secs(5)).await;
        assert!(
            got.starts_with(b"-ERR "),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_before_connect_tcp_still_serves() {
    let wasm = support::repo().join("host/tests/configs/echo-before-connect.wasm");
    let r = support::start(&support::server_config(&wasm, "")).await;
    echo_through(r.addr(), b"old component", 5).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_before_the_splice_took_effect_reach_the_backend() {
    let backend = echo_backend().await;
    let routes = format!("echo={backend}");
    for instance in ["per-connection", "shared"] {
        let plugin = format!(
            "instance = {instance:?}\nconnect = [{:?}]\nenv = {{ ROUTES = {routes:?} }}\n",
            backend.to_string()
        );
        let r = support::start(&support::server_config(&router_wasm(), &plugin)).await;
        for _ in 0..5 {
            // The line and 2 MiB behind it at once: the host reads ahead of
            // the guest's splice, on a shared instance in batches.
            let data: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 241) as u8).collect();
            let mut first = b"echo\n".to_vec();
            first.extend_from_slice(&data);
            let s = TcpStream::connect(r.addr()).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                wr.write_all(&first).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), data.len(), "{instance}");
            assert!(got == data, "{instance}: bytes differ");
        }
        r.shutdown().await;
    }
}

/// A backend that writes `n` bytes and then resets the connection.
async fn resetting_backend(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&vec![b'r'; n]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let backend = resetting_backend(1000).await.to_string();
    for splice in ["", ", SPLICE = \"1\""] {
        let r = support::start(&forward_config(&backend, &backend, splice)).await;
        let mut s = TcpStream::connect(r.addr()).await.unwrap();
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the end in time");
        assert!(
            got.len() <= 1000 && got.iter().all(|&b| b == b'r'),
            "{got:?}"
        );
        let e = end.expect_err("a reset, not a clean close");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "splice {splice:?}"
        );
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splicing_to_itself_twice_or_then_writing_changes_nothing() {
    let backend = echo_backend().await;
    let plugin = format!(
        "instance = \"shared\"\nconnect = [{:?}]\n",
        backend.to_string()
    );
    let r = support::start(&support::server_config(&support::testkit_wasm(), &plugin)).await;
    let mut ctl = support::Kit::connect(r.addr()).await;
    ctl.send("join").await;
    let mut c = support::Kit::connect(r.addr()).await;
    let connect = format!("connect {} {}", backend.ip(), backend.port());
    assert_eq!(c.ask(&connect).await.trim_end(), "connected");
    // Splicing a transport to itself is refused, and the connection goes on.
    c.send("splice-self").await;
    let line = ctl.line().await;
    assert!(
        line.starts_with("splice-self: Err(SpliceError(\"a transport cannot be spliced to itself"),
        "{line}"
    );
    assert_eq!(c.ask("echo still here").await.trim_end(), "still here");
    // The splice, then a second one each way: refused; a write after it:
    // ignored.
    c.send("splice-out").await;
    assert_eq!(ctl.line().await.trim_end(), "splice: Ok(())");
    let again = ctl.line().await;
    assert!(
        again
            .starts_with("again: Err(SpliceError(\"cannot splice: a connection is already spliced"),
        "{again}"
    );
    let reverse = ctl.line().await;
    assert!(
        reverse.starts_with("reverse: Err(SpliceError(\"cannot splice"),
        "{reverse}"
    );
    // Now the client talks to the echo backend through the host's pump,
    // and the write after the splice never came.
    assert_eq!(c.ask("raw bytes").await.trim_end(), "raw bytes");
    c.w.shutdown().await.unwrap();
    let mut rest = String::new();
    c.r.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_keeps_within_its_limits_while_both_sides_stream() {
    // A client that writes and reads at once, as fast as it can, through a
    // relay in a `twill run` with one reactor thread: the relaying callback
    // runs many reads in a row before the other side's task runs, so each
    // side must be paused as soon as the other's output is backed up, not
    // when that side's task next runs (else the relay passes max-output
    // and its instance faults).
    let backend = echo_backend().await.to_string();
    for (limits, splice) in [
        ("", ""),
        (
            "high-water = \"64KiB\"\nlow-water = \"16KiB\"\nmax-output = \"1MiB\"\n",
            "",
        ),
        ("", ", SPLICE = \"1\""),
    ] {
        let text = forward_config(&backend, &backend, splice)
            .replace("connect =", &format!("{limits}connect ="));
        let config = support::write_config(&format!("[host]\nthreads = 1\n{text}"));
        let mut child = support::spawn_run(&config, 1);
        let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 239) as u8).collect();
        let s = TcpStream::connect(child.addrs[0]).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for c in sent.chunks(16384) {
                if wr.write_all(c).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut got = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got))
            .await
            .expect("EOF in time");
        writer.await.unwrap();
        support::signal(&child.child, libc::SIGTERM);
        support::wait_exit(&mut child.child, Duration::from_secs(10));
        let log = child.stderr.lock().unwrap().clone();
        assert!(end.is_ok(), "{limits}{splice}: {end:?}\n{log}");
        assert_eq!(got.len(), data.len(), "{limits}{splice}\n{log}");
        assert!(got == data, "{limits}{splice}: bytes differ");
        assert!(!log.contains("faulted"), "{log}");
    }
}
