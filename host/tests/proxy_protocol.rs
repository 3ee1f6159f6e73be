//! `[[listen]] proxy-protocol` and `proxy-from`: the original client
//! named by a PROXY header reaches `get-peer` / `get-host`; a missing,
//! malformed, slow or untrusted header closes the connection without an
//! answer and is counted. Peers: HAProxy itself in front (`send-proxy`,
//! `send-proxy-v2`), and `peers/proxy_sender.py`, which builds valid and
//! malformed headers by hand from the spec.
//!
//! HAProxy comes from Debian's `haproxy` package (`.ci/run` installs it);
//! without it, and outside CI, the HAProxy test says it skipped.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{server_config, start, testkit_wasm};

fn sender() -> std::path::PathBuf {
    support::repo().join("host/tests/peers/proxy_sender.py")
}

/// The testkit behind a listener that reads `versions` headers from
/// `from`.
fn config(versions: &str, from: &str) -> String {
    format!(
        "{}proxy-protocol = \"{versions}\"\nproxy-from = [{from}]\n",
        server_config(&testkit_wasm(), "")
    )
}

/// Runs `proxy_sender.py` for each case at once; their JSON results, in
/// order.
fn send(addr: SocketAddr, cases: &[&str]) -> Vec<Value> {
    let children: Vec<_> = (cases.iter())
        .map(|case| {
            Command::new("python3")
                .arg(sender())
                .args([
                    addr.ip().to_string(),
                    addr.port().to_string(),
                    case.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 runs")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_headers_name_the_original_client_whole_or_in_pieces() {
    let server = start(&config("any", "\"127.0.0.1/32\"")).await;
    let addr = server.addr();
    let cases = [
        ("v1", "peer=203.0.113.7:51000 host=192.0.2.1:443\n"),
        (
            "v1-tcp6",
            "peer=[2001:db8::7]:51000 host=[2001:db8::1]:443\n",
        ),
        ("v1-split", "peer=203.0.113.7:51000 host=192.0.2.1:443\n"),
        ("v2", "peer=198.51.100.9:4000 host=192.0.2.1:80\n"),
        (
            "v2-ipv6",
            "peer=[2001:db8::7]:51000 host=[2001:db8::1]:443\n",
        ),
        ("v2-tlvs", "peer=198.51.100.9:4000 host=192.0.2.1:80\n"),
        ("v2-split", "peer=198.51.100.9:4000 host=192.0.2.1:80\n"),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let got = tokio::task::spawn_blocking(move || send(addr, &names))
        .await
        .unwrap();
    for ((case, want), got) in cases.iter().zip(&got) {
        assert_eq!(got["answer"], *want, "{case}: {got}");
    }
    // UNKNOWN and LOCAL: the balancer's own connection; the socket's
    // addresses stand.
    let own = tokio::task::spawn_blocking(move || send(addr, &["v1-unknown", "v2-local"]))
        .await
        .unwrap();
    for got in &own {
        let answer = got["answer"].as_str().unwrap();
        assert!(
            answer.starts_with("peer=127.0.0.1:") && answer.contains(&format!("host={addr}")),
            "{got}"
        );
    }
    let stats = &server.stats[0];
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 9);
    assert_eq!(stats.proxy_header.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_missing_and_wrong_version_headers_are_closed_and_counted() {
    let server = start(&format!(
        "{}\n[host]\nmetrics = \"127.0.0.1:0\"\n",
        config("any", "\"127.0.0.1/32\"")
    ))
    .await;
    let v1_only = start(&config("v1", "\"127.0.0.1\"")).await;
    let (addr, addr_v1) = (server.addr(), v1_only.addr());
    let malformed = [
        "none",
        "http",
        "v1-bad-address",
        "v1-bad-port",
        "v1-too-long",
        "v1-lf-only",
        "v2-bad-version",
        "v2-bad-family",
        "v2-short-addresses",
        "v2-oversize",
        "v2-truncated",
        "v1-truncated",
    ];
    let t = Instant::now();
    let got = tokio::task::spawn_blocking(move || send(addr, &malformed))
        .await
        .unwrap();
    for (case, got) in malformed.iter().zip(&got) {
        assert_eq!(got["answer"], "", "{case}: {got}");
        assert_ne!(got["end"], "timeout", "{case} is closed at once: {got}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "no case waited for the timeout"
    );
    let wrong = tokio::task::spawn_blocking(move || send(addr_v1, &["v2", "v1"]))
        .await
        .unwrap();
    assert_eq!(wrong[0]["answer"], "", "{}", wrong[0]);
    assert_eq!(
        wrong[1]["answer"],
        "peer=203.0.113.7:51000 host=192.0.2.1:443\n"
    );

    let stats = &server.stats[0];
    assert_eq!(
        stats.proxy_header.load(Ordering::Relaxed),
        malformed.len() as u64
    );
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        0,
        "no protocol was built"
    );
    assert_eq!(v1_only.stats[0].proxy_header.load(Ordering::Relaxed), 1);
    let scrape = support::http_get(server.metrics.unwrap(), "/metrics").await;
    let line = (scrape.lines())
        .find(|l| {
            l.starts_with("twill_connections_refused") && l.contains("reason=\"proxy_header\"")
        })
        .unwrap_or_else(|| panic!("{scrape}"));
    assert!(line.ends_with(&format!(" {}", malformed.len())), "{line}");
    server.shutdown().await;
    v1_only.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let server = start(&config("v2", "\"127.0.0.1/32\"")).await;
    let addr = server.addr();
    let got = tokio::task::spawn_blocking(move || send(addr, &["silent"]))
        .await
        .unwrap();
    let secs = got[0]["seconds"].as_f64().unwrap();
    assert_eq!(got[0]["answer"], "");
    assert!(
        (4.5..8.0).contains(&secs),
        "closed after the 5 s header timeout: {}",
        got[0]
    );
    assert_eq!(server.stats[0].proxy_header.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_outside_proxy_from_is_never_read() {
    // The test connects from 127.0.0.1, which this listener does not trust.
    let server = start(&config("any", "\"10.0.0.0/8\", \"::1\"")).await;
    let addr = server.addr();
    let got = tokio::task::spawn_blocking(move || send(addr, &["v1", "v2"]))
        .await
        .unwrap();
    for g in &got {
        assert_eq!(g["answer"], "", "{g}");
    }
    let stats = &server.stats[0];
    assert_eq!(stats.proxy_untrusted.load(Ordering::Relaxed), 2);
    assert_eq!(stats.proxy_header.load(Ordering::Relaxed), 0);
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

/// Whether HAProxy is installed; in CI it must be.
fn haproxy_available() -> bool {
    let ok = Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI installs haproxy"
    );
    if !ok {
        eprintln!("SKIPPED: no haproxy (apt-get install haproxy)");
    }
    ok
}

/// Sends `addr` through HAProxy's frontend on `port` and returns the
/// answer and the client's own address.
fn through(port: u16) -> (String, SocketAddr) {
    let start = Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<(String, SocketAddr)> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let me = s.local_addr()?;
            s.write_all(b"addr\n")?;
            let mut answer = String::new();
            let mut buf = [0; 256];
            while !answer.ends_with('\n') {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            Ok((answer, me))
        })();
        match attempt {
            Ok((a, me)) if !a.is_empty() => return (a, me),
            _ if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("nothing through HAProxy on {port}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_send_proxy_and_send_proxy_v2() {
    if !haproxy_available() {
        return;
    }
    let server = start(&config("any", "\"127.0.0.1/32\"")).await;
    let backend = server.addr();
    let (v1_port, v2_port) = (support::closed_port(), support::closed_port());
    let cfg = support::scratch().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format short local0 warning\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend v1\n  bind 127.0.0.1:{v1_port}\n  default_backend twill_v1\n\
             frontend v2\n  bind 127.0.0.1:{v2_port}\n  default_backend twill_v2\n\
             backend twill_v1\n  server twill {backend} send-proxy\n\
             backend twill_v2\n  server twill {backend} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let mut haproxy = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let results = tokio::task::spawn_blocking(move || [through(v1_port), through(v2_port)])
        .await
        .unwrap();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    for ((answer, me), port) in results.iter().zip([v1_port, v2_port]) {
        // The client's own address and port, and HAProxy's frontend as
        // the address it connected to: never HAProxy's side of the hop.
        assert_eq!(*answer, format!("peer={me} host=127.0.0.1:{port}\n"));
    }
    let stats = &server.stats[0];
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
    assert_eq!(stats.proxy_header.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}
