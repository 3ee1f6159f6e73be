//! systemd socket activation, with Debian's `systemd-socket-activate` as
//! the service manager: it listens, and on the first connection execs
//! `twill run` with the socket as fd 3 (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`). Twill serves the entries the sockets match and binds
//! nothing for them.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn echo_config(port: u16) -> std::path::PathBuf {
    support::write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}\n[[listen]]\nport = {port}\ninterface = \"127.0.0.1\"\nplugin = \"echo\"\n",
        support::echo_wasm().display().to_string(),
        support::memory_line(),
    ))
}

/// `systemd-socket-activate -l ADDR [--fdname=NAME] twill run CONFIG`,
/// once it listens; its stderr (the activator's, then twill's) is
/// collected.
fn activate(
    addr: SocketAddr,
    fdname: Option<&str>,
    config: &std::path::Path,
) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen={addr}"));
    if let Some(name) = fdname {
        cmd.arg(format!("--fdname={name}"));
    }
    let mut child = cmd
        .arg(env!("CARGO_BIN_EXE_twill"))
        .arg("run")
        .arg(config)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package) runs");
    let stderr = support::pump_stderr(&mut child);
    let start = Instant::now();
    while !stderr.lock().unwrap().contains("Listening on") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the activator never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stderr)
}

/// Connects (which makes the activator exec twill), echoes, and returns
/// twill's log once it served the connection.
fn echo_through(addr: SocketAddr, child: &mut Child, stderr: &std::sync::Mutex<String>) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"activated").unwrap();
    let mut got = [0u8; 9];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"activated");
    drop(s);
    support::signal(child, libc::SIGTERM);
    let status = support::wait_exit(child, Duration::from_secs(20));
    let log = support::strip_ansi(&stderr.lock().unwrap());
    assert!(status.success(), "twill exited {status}: {log}");
    log
}

#[test]
fn an_inherited_socket_is_served_by_plugin_name_and_nothing_is_bound() {
    let (activated, configured) = (support::closed_port(), support::closed_port());
    let addr: SocketAddr = format!("127.0.0.1:{activated}").parse().unwrap();
    // The entry names another port: only the name can match.
    let (mut child, stderr) = activate(addr, Some("echo"), &echo_config(configured));
    let log = echo_through(addr, &mut child, &stderr);
    assert!(
        log.contains("the service manager passed a listening socket (LISTEN_FDS)"),
        "{log}"
    );
    assert!(log.contains("bound nothing plugin=echo"), "{log}");
    assert!(
        TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "the entry's own port was not bound"
    );
}

#[test]
fn an_inherited_socket_is_served_by_port() {
    let port = support::closed_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Binding the port itself would fail: the inherited socket holds it.
    let (mut child, stderr) = activate(addr, None, &echo_config(port));
    let log = echo_through(addr, &mut child, &stderr);
    assert!(log.contains("bound nothing plugin=echo"), "{log}");
}

#[test]
fn an_inherited_socket_no_entry_matches_is_closed_with_a_warning() {
    let (activated, configured) = (support::closed_port(), support::closed_port());
    let addr: SocketAddr = format!("127.0.0.1:{activated}").parse().unwrap();
    let (mut child, stderr) = activate(addr, Some("other"), &echo_config(configured));
    // The first connection starts twill, which serves its own port and
    // closes the passed one: the connection that woke it is reset or closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 1];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "nothing serves it"
    );
    let start = Instant::now();
    while !stderr
        .lock()
        .unwrap()
        .contains("no [[listen]] entry matches it")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut e = TcpStream::connect(("127.0.0.1", configured)).unwrap();
    e.write_all(b"own").unwrap();
    let mut got = [0u8; 3];
    e.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"own");
    support::signal(&child, libc::SIGTERM);
    assert!(support::wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// The shipped units (deploy/systemd) pass `systemd-analyze verify`, with
/// ExecStart pointing at this build.
#[test]
fn the_shipped_units_verify() {
    let dir = support::scratch();
    for unit in ["twill.socket", "twill.service"] {
        let text = std::fs::read_to_string(support::repo().join("deploy/systemd").join(unit))
            .unwrap()
            .replace("/usr/local/bin/twill", env!("CARGO_BIN_EXE_twill"));
        std::fs::write(dir.join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("twill.socket"))
        .arg(dir.join("twill.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package) runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
