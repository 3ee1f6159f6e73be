//! TLS against real peers over real sockets: Python's `ssl` module and
//! Twisted's own TLS (`connectSSL` / `listenSSL`, the seed's echo client
//! and server) on both sides of Twill, `openssl s_client` and `s_server`,
//! and Twill's connectors: a server certificate that is expired or for
//! another name is a `client-connection-failed` saying why, a close
//! without close_notify is a loss, and `start-tls` from the client side.
//!
//! Python comes from `TWILL_TEST_PYTHON` (CI points it at a venv with
//! `twisted[tls]`); without it, `python3`, and the Twisted tests say they
//! skipped if Twisted is not importable. Tests named `starttls_*` run
//! against `TWILL_STARTTLS_WASM` when set, as in `tls.rs`.

#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use pki::{Pki, starttls_memory, starttls_wasm};

fn python() -> (String, bool) {
    match std::env::var("TWILL_TEST_PYTHON") {
        Ok(p) => (p, true),
        Err(_) => ("python3".into(), false),
    }
}

fn peer_script() -> std::path::PathBuf {
    support::repo().join("host/tests/peers/tls_peer.py")
}

/// Whether Twisted with TLS is there; a required one (TWILL_TEST_PYTHON
/// set) must be.
fn twisted_available() -> bool {
    let (py, required) = python();
    let ok = Command::new(&py)
        .args(["-c", "import twisted, OpenSSL, service_identity"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || !required, "{py} has no twisted[tls]");
    if !ok {
        eprintln!("SKIPPED: no twisted[tls] for {py} (set TWILL_TEST_PYTHON)");
    }
    ok
}

fn echo_tls_config(pki: &Pki) -> String {
    format!(
        "{}tls = {{ cert = {:?}, key = {:?} }}\n",
        support::server_config(&support::echo_wasm(), ""),
        pki.path("server.pem"),
        pki.path("server.key")
    )
}

/// A config whose only entry is a `[[connect]]` of `wasm` to
/// 127.0.0.1:`port` with `tls` (the inline table's body).
fn connect_config(wasm: &Path, extra: &str, port: u16, tls: &str) -> std::path::PathBuf {
    support::write_config(&format!(
        "[plugins.p]\ncomponent = {:?}\ncpu = \"2s\"\n{extra}\n[[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"p\"\ntimeout = \"10s\"\ntls = {{ {tls} }}\n",
        wasm.display().to_string()
    ))
}

/// Runs `twill run CONFIG` to its end (a config of connectors only ends
/// when they do); returns stdout and stderr.
async fn run_to_end(config: std::path::PathBuf) -> (String, String) {
    let out = tokio::task::spawn_blocking(move || {
        support::twill()
            .arg("run")
            .arg(&config)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the peer script's client `mode` against 127.0.0.1:`port`, trusting
/// the test CA, to its end.
async fn run_client_peer(mode: &'static str, port: u16, pki: &Pki) -> std::process::Output {
    let (py, ca) = (python().0, pki.path("ca.pem"));
    tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(peer_script())
            .args([mode, &port.to_string()])
            .arg(ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Starts the peer script in `mode`; returns it and the port it printed.
fn spawn_peer(
    mode: &str,
    a: &Path,
    b: &Path,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    u16,
) {
    let mut child = Command::new(python().0)
        .arg(peer_script())
        .args([mode])
        .arg(a)
        .arg(b)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port: {line:?}"));
    (child, out, port)
}

fn rest_of(
    mut out: BufReader<std::process::ChildStdout>,
    mut child: std::process::Child,
) -> String {
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut s);
    let _ = child.wait();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_client_echoes_every_chunking_with_close_notify() {
    let pki = Pki::new();
    let r = support::start(&echo_tls_config(&pki)).await;
    let out = run_client_peer("client", r.addr().port(), &pki).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("ok {}", 997 * 64));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_echoed() {
    let pki = Pki::new();
    let r = support::start(&echo_tls_config(&pki)).await;
    let addr = r.addr().to_string();
    let ca = pki.path("ca.pem");
    let got = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "localhost",
                "-quiet",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed");
        c.stdin
            .as_mut()
            .unwrap()
            .write_all(b"hello from openssl\n")
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let _ = c.kill();
        let _ = c.wait();
        line
    })
    .await
    .unwrap();
    assert_eq!(got, "hello from openssl\n");
    assert_eq!(
        r.stats[0]
            .tls
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_client_in_twisted_over_tls_against_twill() {
    if !twisted_available() {
        return;
    }
    let pki = Pki::new();
    let r = support::start(&echo_tls_config(&pki)).await;
    let out = run_client_peer("twisted-client", r.addr().port(), &pki).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Server said: hello world"), "{stdout}");
    assert!(stdout.contains("Connection lost - goodbye"), "{stdout}");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twills_seed_client_over_tls_against_twisted() {
    if !twisted_available() {
        return;
    }
    let pki = Pki::new();
    let (child, out, port) = spawn_peer(
        "twisted-server",
        &pki.path("server.pem"),
        &pki.path("server.key"),
    );
    let tls = format!("server-name = \"localhost\", ca = {:?}", pki.path("ca.pem"));
    let (stdout, stderr) = run_to_end(connect_config(&support::echo_wasm(), "", port, &tls)).await;
    assert!(
        stdout.contains("Server said: hello world"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Connection lost - goodbye"), "{stdout}");
    // Twill's close had close_notify: Twisted saw a clean close.
    let peer = rest_of(out, child);
    assert!(peer.contains("connection lost: ConnectionDone"), "{peer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twills_connector_against_python_ssl_server() {
    let pki = Pki::new();
    let (child, out, port) = spawn_peer(
        "echo-server",
        &pki.path("server.pem"),
        &pki.path("server.key"),
    );
    let tls = format!("server-name = \"localhost\", ca = {:?}", pki.path("ca.pem"));
    let (stdout, stderr) = run_to_end(connect_config(&support::echo_wasm(), "", port, &tls)).await;
    assert!(
        stdout.contains("Server said: hello world"),
        "{stdout}\n{stderr}"
    );
    let peer = rest_of(out, child);
    assert_eq!(peer.trim(), "served 11 bytes, close_notify received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twills_connector_against_openssl_s_server() {
    let pki = Pki::new();
    let port = support::closed_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &port.to_string(),
            "-naccept",
            "1",
            "-quiet",
            "-cert",
        ])
        .arg(pki.path("server.pem"))
        .arg("-key")
        .arg(pki.path("server.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = server.stdin.take().unwrap();
    let stdout = server.stdout.take().unwrap();
    // Answer once Twill's client said hello.
    let answered = std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"hello world") {
            if std::io::Read::read(&mut out, &mut byte).unwrap_or(0) == 0 {
                break;
            }
            seen.push(byte[0]);
        }
        let _ = stdin.write_all(b"hi from openssl\n");
        String::from_utf8_lossy(&seen).into_owned()
    });
    std::thread::sleep(Duration::from_millis(500)); // s_server binds
    let tls = format!("server-name = \"localhost\", ca = {:?}", pki.path("ca.pem"));
    let (stdout, stderr) = run_to_end(connect_config(&support::echo_wasm(), "", port, &tls)).await;
    assert!(
        stdout.contains("Server said: hi from openssl"),
        "{stdout}\n{stderr}"
    );
    assert!(answered.join().unwrap().ends_with("hello world"));
    let _ = server.kill();
    let _ = server.wait();
}

/// A TLS server (rustls, in this process) with the leaf `name`, whose
/// connections get `then` run on them.
async fn native_server<F, Fut>(pki: &Pki, name: &str, then: F) -> u16
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server(name));
    let then = std::sync::Arc::new(then);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, then) = (acceptor.clone(), then.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    then(tls).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_guest_connector_refuses_expired_and_misnamed_certificates() {
    let pki = Pki::new();
    for (leaf, why) in [("expired", "expired"), ("b", "not valid for name")] {
        let port = native_server(&pki, leaf, |_| async {}).await;
        let tls = format!("server-name = \"localhost\", ca = {:?}", pki.path("ca.pem"));
        let config = connect_config(&starttls_wasm(), &starttls_memory(), port, &tls);
        let (stdout, stderr) = run_to_end(config).await;
        let failed = stdout
            .lines()
            .find(|l| l.contains("client failed:"))
            .unwrap_or_else(|| panic!("no client-connection-failed: {stdout}\n{stderr}"));
        assert!(
            failed.contains("TLS handshake failed") && failed.contains(why),
            "{failed}"
        );
        assert!(
            !stdout.contains("client connected"),
            "no protocol was built: {stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_guest_hears_a_close_without_close_notify_as_a_loss() {
    let pki = Pki::new();
    let port = native_server(&pki, "server", |mut tls| async move {
        // Read what the client sent (unread input would make the close a
        // reset), answer, and drop TCP under TLS.
        let mut buf = [0u8; 64];
        let _ = tls.read(&mut buf).await;
        let _ = tls.write_all(b"hello\r\n").await;
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Drop the TCP connection under TLS: no close_notify.
        let (tcp, _) = tls.into_inner();
        drop(tcp);
    })
    .await;
    let tls = format!("server-name = \"localhost\", ca = {:?}", pki.path("ca.pem"));
    let config = connect_config(&starttls_wasm(), &starttls_memory(), port, &tls);
    let (stdout, stderr) = run_to_end(config).await;
    assert!(stdout.contains("client got: hello"), "{stdout}\n{stderr}");
    let lost = stdout
        .lines()
        .find(|l| l.contains("client lost:"))
        .unwrap_or_default();
    assert!(
        lost.contains("close_notify"),
        "a truncation, not a clean close: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_from_a_connector() {
    let pki = Pki::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server("server"));
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = tokio::io::BufReader::new(s);
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        s.get_mut().write_all(b"OK begin TLS\r\n").await.unwrap();
        let tls = acceptor.accept(s.into_inner()).await.unwrap();
        let mut tls = tokio::io::BufReader::new(tls);
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if tls.read_line(&mut l).await.unwrap() == 0 {
                break;
            }
            if l == "INFO\r\n" {
                tls.get_mut()
                    .write_all(b"INFO from server\r\n")
                    .await
                    .unwrap();
            }
            let quit = l == "QUIT\r\n";
            lines.push(l);
            if quit {
                break;
            }
        }
        tls.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        lines
    });
    let tls = format!(
        "server-name = \"localhost\", ca = {:?}, start-tls = true",
        pki.path("ca.pem")
    );
    let config = connect_config(&starttls_wasm(), &starttls_memory(), port, &tls);
    let (stdout, stderr) = run_to_end(config).await;
    let sha = twill::tls::sha256_hex(pki.server_der.as_ref());
    assert!(
        stdout.contains("client connected: INFO tls=none"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("client got: OK begin TLS"), "{stdout}");
    assert!(stdout.contains("client got: INFO from server"), "{stdout}");
    let sees = stdout
        .lines()
        .find(|l| l.contains("client sees:"))
        .unwrap_or_default();
    assert!(sees.contains("INFO version=TLSv1.3 "), "{sees}");
    assert!(
        sees.ends_with(&format!(
            "sni=localhost alpn=- subject=CN=localhost,O=TwillTests sha256={sha}"
        )),
        "{sees}"
    );
    let lost = stdout
        .lines()
        .find(|l| l.contains("client lost:"))
        .unwrap_or_default();
    assert!(lost.to_lowercase().contains("done"), "{stdout}");
    let got = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec!["INFO\r\n", "QUIT\r\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_tls_problem_with_file_line_and_key() {
    let pki = Pki::new();
    let text = format!(
        r#"[plugins.p]
component = {:?}

[[listen]]
port = 0
plugin = "p"
tls = {{ cert = "server.pem", key = "a.key" }}

[[listen]]
port = 0
plugin = "p"
tls = {{ cert = "expired.pem", key = "expired.key" }}

[[listen]]
port = 0
plugin = "p"
tls = {{ certs = [{{ cert = "a.pem", key = "a.key", names = ["b.example"] }}] }}

[[listen]]
port = 0
plugin = "p"
tls = {{ cert = "server.pem", key = "server.key", client-ca = "missing.pem", client-auth = "maybe" }}

[[listen]]
port = 0
plugin = "p"
tls = {{ certificate = "server.pem" }}

[[connect]]
host = "127.0.0.1"
port = 1
plugin = "p"
tls = {{ ca = "server.key" }}
"#,
        support::echo_wasm().display().to_string()
    );
    let path = pki.path("plugins.toml");
    std::fs::write(&path, text).unwrap();
    let expects = [
        ":7:36: listen[0].tls.key: the key in",
        "does not match the certificate",
        ":12:16: listen[1].tls.cert: the certificate in",
        "expired on",
        ":17:60: listen[2].tls.certs[0].names[0]: the certificate does not cover \"b.example\" (it is for: a.example)",
        ":22:62: listen[3].tls.client-ca: cannot read",
        ":22:91: listen[3].tls.client-auth: \"maybe\": use \"required\"",
        ":27:9: listen[4].tls.certificate: unknown key",
        ": listen[4].tls: has no certificate",
        ":33:14: connect[0].tls.ca:",
        "holds no certificate",
    ];
    for cmd in ["check", "run"] {
        let out = support::twill()
            .arg(cmd)
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("listening"), "nothing is bound: {stderr}");
        for e in expects {
            assert!(
                stderr.contains(e),
                "twill {cmd}: expected {e:?} in:\n{stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_tls_example_checks_and_serves_the_echo() {
    let repo = support::repo();
    let certs = support::test_certs();
    // The shipped config, with its certificates from the script.
    let example = std::fs::read_to_string(repo.join("examples/tls/plugins.toml")).unwrap();
    let dir = support::scratch();
    std::os::unix::fs::symlink(&certs, dir.join("certs")).unwrap();
    let text = example
        .replace(
            "../../guest-echo/echo.wasm",
            &support::echo_wasm().display().to_string(),
        )
        .replace("port = 9443", "port = 0");
    std::fs::write(dir.join("plugins.toml"), &text).unwrap();
    let out = support::twill()
        .arg("check")
        .arg(dir.join("plugins.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("TLS: certificate for localhost, 127.0.0.1, ::1"),
        "{stdout}"
    );
    // Served: openssl trusts the script's CA and gets its line back.
    let mut child = support::spawn_run(&dir.join("plugins.toml"), 1);
    let addr = child.addrs[0].to_string();
    let line = tokio::task::spawn_blocking(move || {
        let mut c = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-quiet",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(certs.join("test-ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.as_mut().unwrap().write_all(b"over TLS\n").unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = c.kill();
        let _ = c.wait();
        line
    })
    .await
    .unwrap();
    assert_eq!(line, "over TLS\n");
    support::signal(&child.child, libc::SIGTERM);
    let status = support::wait_exit(&mut child.child, Duration::from_secs(10));
    assert!(status.success());
}
