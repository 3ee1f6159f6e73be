//! TLS over real sockets, served by an in-process reactor: echo byte-exact
//! under every chunking (an instance per connection and shared), the
//! close_notify both ways, SNI certificates, ALPN, client certificates,
//! `tls-info`, `start-tls` (and its refusal), TLS in front of a splice,
//! an old component behind TLS, and the bad input of the issue: plaintext
//! to a TLS port, a trickled ClientHello, an unknown SNI name, a client
//! certificate from another CA; each counted, none costing more than its
//! connection. Real peers (Python's ssl, openssl, Twisted) and connectors
//! are in `tls_peers.rs`.
//!
//! Tests named `starttls_*` run against `TWILL_STARTTLS_WASM` when set
//! (scripts/test-polyglot.sh points it at the Python and JavaScript
//! versions of guests/starttls).

#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use twill::tls::Failure;

use pki::{Pki, name, starttls_memory, starttls_wasm};

/// `wasm` served on port 0 with `tls` (the inline table's body) and the
/// plugin lines `extra`.
fn tls_config(wasm: &std::path::Path, extra: &str, tls: &str) -> String {
    format!("{}tls = {{ {tls} }}\n", support::server_config(wasm, extra))
}

fn server_tls(pki: &Pki) -> String {
    format!(
        "cert = {:?}, key = {:?}",
        pki.path("server.pem"),
        pki.path("server.key")
    )
}

async fn dial(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name(sni), tcp)
        .await
}

/// Sends `payload` in chunks of `chunk` while reading the echo; checks it
/// byte for byte, then closes (close_notify, FIN) and expects the server's
/// close_notify: a read of 0, not `UnexpectedEof`.
async fn echo_exact(s: TlsStream<TcpStream>, payload: &[u8], chunk: usize) {
    let (mut r, mut w) = tokio::io::split(s);
    let want = payload.len();
    let reader = tokio::spawn(async move {
        let mut got = vec![0; want];
        r.read_exact(&mut got).await.unwrap();
        (r, got)
    });
    for c in payload.chunks(chunk) {
        w.write_all(c).await.unwrap();
        w.flush().await.unwrap();
    }
    let (mut r, got) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("echoed in time")
        .unwrap();
    assert!(got == payload, "echo differs (chunk {chunk})");
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(
        end.is_ok(),
        "the server's close has no close_notify: {end:?}"
    );
    assert!(rest.is_empty());
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tls_is_byte_exact_under_every_chunking() {
    let pki = Pki::new();
    let r = support::start(&tls_config(&support::echo_wasm(), "", &server_tls(&pki))).await;
    let payload = pattern(97, 7);
    for chunk in 1..=97 {
        let s = dial(r.addr(), pki.client(None, &[]), "localhost")
            .await
            .unwrap();
        echo_exact(s, &payload, chunk).await;
    }
    let big = pattern(1 << 20, 3);
    let s = dial(r.addr(), pki.client(None, &[]), "127.0.0.1")
        .await
        .unwrap();
    echo_exact(s, &big, 7919).await;
    let tls = &r.stats[0].tls;
    assert_eq!(tls.handshakes.load(Ordering::Relaxed), 98);
    assert_eq!(r.stats[0].accepted.load(Ordering::Relaxed), 98);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tls_on_shared_instances() {
    let pki = Pki::new();
    let extra = "instance = \"shared\"\nshared-instances = 2\n";
    let r = support::start(&tls_config(&support::echo_wasm(), extra, &server_tls(&pki))).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let (addr, config) = (r.addr(), pki.client(None, &[]));
        clients.push(tokio::spawn(async move {
            let s = dial(addr, config, "localhost").await.unwrap();
            echo_exact(s, &pattern(65536 + i * 101, i), 1 + i * 379).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(r.stats[0].tls.handshakes.load(Ordering::Relaxed), 20);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_before_tls_is_served_over_tls() {
    let pki = Pki::new();
    let old = support::repo().join("host/tests/configs/echo-before-tls.wasm");
    let r = support::start(&tls_config(&old, "", &server_tls(&pki))).await;
    let s = dial(r.addr(), pki.client(None, &[]), "localhost")
        .await
        .unwrap();
    echo_exact(s, &pattern(300_000, 1), 4096).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_port_costs_only_its_connection() {
    let pki = Pki::new();
    let metrics = "[host]\nmetrics = \"127.0.0.1:0\"\n\n";
    let config = tls_config(&support::echo_wasm(), "", &server_tls(&pki));
    let r = support::start(&format!("{metrics}{config}")).await;
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(end.is_ok(), "the connection is closed at once");
    assert!(!got.starts_with(b"GET"), "plaintext is never echoed");
    let stats = &r.stats[0];
    assert_eq!(stats.tls.failed(Failure::NotTls), 1);
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        0,
        "no protocol was built"
    );
    // The listener serves on.
    let s = dial(r.addr(), pki.client(None, &[]), "localhost")
        .await
        .unwrap();
    echo_exact(s, b"still here", 3).await;
    // Both outcomes are on /metrics, by listener and result.
    let text = support::http_get(r.metrics.unwrap(), "/metrics").await;
    let at = format!("listener=\"{}\",plugin=\"p\"", r.addr());
    for (result, n) in [("ok", 1), ("not_tls", 1), ("timeout", 0)] {
        let line = format!("twill_tls_handshakes_total{{{at},result=\"{result}\"}} {n}\n");
        assert!(text.contains(&line), "no {line:?} in {text}");
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_client_hello_meets_the_handshake_deadline() {
    let pki = Pki::new();
    let tls = format!("{}, handshake-timeout = \"1s\"", server_tls(&pki));
    let r = support::start(&tls_config(&support::echo_wasm(), "", &tls)).await;
    let mut hello = Vec::new();
    rustls::ClientConnection::new(pki.client(None, &[]), name("localhost"))
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    let mut s = TcpStream::connect(r.addr()).await.unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    for b in &hello {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(250), s.read(&mut probe)).await {
            Err(_) => {}
            Ok(_) => break, // closed (or an alert): the deadline acted
        }
    }
    let elapsed = t0.elapsed();
    assert!(sent < hello.len(), "the whole hello went out: no deadline");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}"
    );
    assert_eq!(r.stats[0].tls.failed(Failure::Timeout), 1);
    r.shutdown().await;
}

/// A starttls-guest line exchange over any stream.
async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
) -> String {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    s.get_mut().flush().await.unwrap();
    read_line(s).await
}

async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut BufReader<S>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_line(&mut l))
        .await
        .expect("a line in time")
        .unwrap();
    l.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_guest_sees_the_sni_certificate_and_an_unknown_name_is_refused() {
    let pki = Pki::new();
    let tls = format!(
        "certs = [{{ cert = {:?}, key = {:?}, names = [\"a.example\"] }}, {{ cert = {:?}, key = {:?}, names = [\"b.example\"] }}]",
        pki.path("a.pem"),
        pki.path("a.key"),
        pki.path("b.pem"),
        pki.path("b.key")
    );
    let r = support::start(&tls_config(&starttls_wasm(), &starttls_memory(), &tls)).await;
    for host in ["a.example", "b.example"] {
        let s = dial(r.addr(), pki.client(None, &[]), host).await.unwrap();
        let served = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        let names = twill::tls::load::names_of(&served);
        assert_eq!(names, vec![host.to_string()]);
        let mut s = BufReader::new(s);
        let info = ask(&mut s, "INFO").await;
        assert!(info.contains(&format!("sni={host} ")), "{info}");
    }
    let refused = dial(r.addr(), pki.client(None, &[]), "c.example").await;
    assert!(refused.is_err(), "no certificate for c.example");
    assert_eq!(r.stats[0].tls.failed(Failure::UnknownName), 1);
    assert_eq!(r.stats[0].tls.handshakes.load(Ordering::Relaxed), 2);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_guest_sees_required_and_verified_client_certificates() {
    let pki = Pki::new();
    let tls = format!(
        "{}, client-ca = {:?}, alpn = [\"x-proto\", \"h2\"]",
        server_tls(&pki),
        pki.path("client-ca.pem")
    );
    let r = support::start(&tls_config(&starttls_wasm(), &starttls_memory(), &tls)).await;
    let s = dial(r.addr(), pki.client(Some("alice"), &["h2"]), "localhost")
        .await
        .unwrap();
    let mut s = BufReader::new(s);
    let info = ask(&mut s, "INFO").await;
    let sha = twill::tls::sha256_hex(pki.alice_der.as_ref());
    assert!(
        info.starts_with("INFO version=TLSv1.3 cipher=TLS13_"),
        "{info}"
    );
    assert!(
        info.ends_with(&format!(
            "sni=localhost alpn=h2 subject=CN=alice,O=TwillTests sha256={sha}"
        )),
        "{info}"
    );
    // A certificate from another CA, and none at all: refused by the
    // server (in TLS 1.3 the client hears it on its first read).
    for who in [Some("mallory"), None] {
        if let Ok(s) = dial(r.addr(), pki.client(who, &[]), "localhost").await {
            let mut s = BufReader::new(s);
            let _ = s.get_mut().write_all(b"INFO\r\n").await;
            let mut l = String::new();
            let got = tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut l)).await;
            assert!(matches!(got, Ok(Err(_)) | Ok(Ok(0))), "{who:?} got {l:?}");
        }
    }
    assert_eq!(r.stats[0].tls.failed(Failure::ClientCertificate), 2);
    assert_eq!(r.stats[0].accepted.load(Ordering::Relaxed), 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_without_a_tls_table_is_refused_and_counted() {
    let r = support::start(&support::server_config(
        &starttls_wasm(),
        &starttls_memory(),
    ))
    .await;
    let mut s = BufReader::new(TcpStream::connect(r.addr()).await.unwrap());
    assert_eq!(ask(&mut s, "STARTTLS").await, "OK begin TLS");
    let err = read_line(&mut s).await;
    assert!(
        err.starts_with("ERR ") && err.contains("start-tls = true"),
        "{err}"
    );
    assert_eq!(ask(&mut s, "INFO").await, "INFO tls=none");
    assert_eq!(ask(&mut s, "still plain").await, "ECHO still plain");
    assert_eq!(r.stats[0].tls.start_tls_refused.load(Ordering::Relaxed), 1);
    r.shutdown().await;
}

/// The STARTTLS exchange against a `start-tls = true` listener at `addr`.
async fn starttls_exchange(pki: &Pki, addr: SocketAddr) {
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(ask(&mut s, "hello").await, "ECHO hello");
    assert_eq!(ask(&mut s, "INFO").await, "INFO tls=none");
    assert_eq!(ask(&mut s, "STARTTLS").await, "OK begin TLS");
    let tcp = s.into_inner();
    let tls = tokio_rustls::TlsConnector::from(pki.client(None, &["x-proto"]))
        .connect(name("localhost"), tcp)
        .await
        .expect("the handshake after STARTTLS");
    let mut s = BufReader::new(tls);
    let info = ask(&mut s, "INFO").await;
    assert!(info.starts_with("INFO version=TLSv1.3 "), "{info}");
    assert!(
        info.ends_with("sni=localhost alpn=x-proto subject=- sha256=-"),
        "{info}"
    );
    assert_eq!(ask(&mut s, "encrypted now").await, "ECHO encrypted now");
    assert_eq!(ask(&mut s, "STARTTLS").await, "OK begin TLS");
    assert_eq!(
        read_line(&mut s).await,
        "ERR the connection is already encrypted"
    );
    s.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(_))),
        "a clean close with close_notify: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_a_plaintext_connection() {
    let pki = Pki::new();
    let tls = format!(
        "{}, start-tls = true, alpn = [\"x-proto\"]",
        server_tls(&pki)
    );
    let r = support::start(&tls_config(&starttls_wasm(), &starttls_memory(), &tls)).await;
    starttls_exchange(&pki, r.addr()).await;
    let stats = &r.stats[0].tls;
    assert_eq!(stats.handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.start_tls_refused.load(Ordering::Relaxed), 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_on_a_shared_instance() {
    let pki = Pki::new();
    let tls = format!(
        "{}, start-tls = true, alpn = [\"x-proto\"]",
        server_tls(&pki)
    );
    let extra = format!("{}instance = \"shared\"\n", starttls_memory());
    let r = support::start(&tls_config(&starttls_wasm(), &extra, &tls)).await;
    let mut all = Vec::new();
    for _ in 0..8 {
        let (pki_dir, addr) = (&pki, r.addr());
        all.push(starttls_exchange(pki_dir, addr));
    }
    futures_join(all).await;
    assert_eq!(r.stats[0].tls.handshakes.load(Ordering::Relaxed), 8);
    r.shutdown().await;
}

async fn futures_join<F: std::future::Future<Output = ()>>(all: Vec<F>) {
    for f in all {
        f.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_a_failed_handshake_ends_only_that_connection() {
    let pki = Pki::new();
    let tls = format!(
        "{}, start-tls = true, alpn = [\"x-proto\"]",
        server_tls(&pki)
    );
    let r = support::start(&tls_config(&starttls_wasm(), &starttls_memory(), &tls)).await;
    let mut s = BufReader::new(TcpStream::connect(r.addr()).await.unwrap());
    assert_eq!(ask(&mut s, "STARTTLS").await, "OK begin TLS");
    s.get_mut()
        .write_all(b"this is not a ClientHello\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "closed");
    assert!(!String::from_utf8_lossy(&rest).contains("ECHO"));
    assert_eq!(r.stats[0].tls.failed(Failure::NotTls), 1);
    starttls_exchange(&pki, r.addr()).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_drops_plaintext_pipelined_after_the_command() {
    let pki = Pki::new();
    let tls = format!("{}, start-tls = true", server_tls(&pki));
    let extra = format!("{}instance = \"shared\"\n", starttls_memory());
    let r = support::start(&tls_config(&starttls_wasm(), &extra, &tls)).await;
    // In one write, and in a second write right behind the first.
    for split in [false, true] {
        let mut s = BufReader::new(TcpStream::connect(r.addr()).await.unwrap());
        if split {
            s.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
            s.get_mut()
                .write_all(b"INFO\r\ninjected\r\n")
                .await
                .unwrap();
        } else {
            s.get_mut()
                .write_all(b"STARTTLS\r\nINFO\r\ninjected\r\n")
                .await
                .unwrap();
        }
        assert_eq!(read_line(&mut s).await, "OK begin TLS");
        let tls = tokio_rustls::TlsConnector::from(pki.client(None, &[]))
            .connect(name("localhost"), s.into_inner())
            .await
            .expect("the handshake after STARTTLS");
        let mut s = BufReader::new(tls);
        // The first answer inside TLS is to this INFO, not to the
        // plaintext ones.
        let info = ask(&mut s, "INFO").await;
        assert!(
            info.starts_with("INFO version=TLSv1.3 "),
            "split {split}: {info}"
        );
        assert_eq!(ask(&mut s, "after").await, "ECHO after");
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_in_front_of_a_splice() {
    let pki = Pki::new();
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let plugin =
        format!("connect = [\"{baddr}\"]\nenv = {{ BACKEND = \"{baddr}\", SPLICE = \"1\" }}\n");
    let wasm = support::repo().join("guests/portforward/portforward.wasm");
    let r = support::start(&tls_config(&wasm, &plugin, &server_tls(&pki))).await;
    for (size, chunk) in [(1usize, 1usize), (5000, 7), (400_000, 16384)] {
        let s = dial(r.addr(), pki.client(None, &[]), "localhost")
            .await
            .unwrap();
        echo_exact(s, &pattern(size, size), chunk).await;
    }
    r.shutdown().await;
}
