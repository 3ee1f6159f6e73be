//! Several `twill run` processes on one port (`[[listen]] reuse-port`):
//! the kernel spreads connections among them, and one of them can stop
//! (or be replaced by a new binary) under load without a client seeing a
//! failed connection or a lost byte.
//!
//! The test runs itself again inside a network namespace of its own
//! (`unshare -rn`), where `net.ipv4.tcp_migrate_req = 1` can be set
//! without touching the machine: that is the kernel's hand-over of the
//! connections still in a closing listener's queue, which docs/deploying.md
//! tells operators to set.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const INSIDE: &str = "TWILL_TEST_IN_NETNS";

/// Runs the test named `name` of this binary again in a fresh network
/// namespace; true if this already is that run.
fn in_own_netns(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        bring_up_loopback();
        std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
            .expect("set tcp_migrate_req in the test's own network namespace");
        return true;
    }
    let out = Command::new("unshare")
        .args(["-rn", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the run in its own network namespace failed: {text}"
    );
    false
}

/// `ip link set lo up`, by ioctl.
fn bring_up_loopback() {
    // SAFETY: plain socket and ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0);
        libc::close(fd);
    }
}

fn config(port: u16, metrics: u16) -> std::path::PathBuf {
    support::write_config(&format!(
        "[host]\nmetrics = \"127.0.0.1:{metrics}\"\ndrain-timeout = \"3s\"\nshutdown-timeout = \"10s\"\n\n\
         [plugins.echo]\ncomponent = {:?}\n{}instance = \"shared\"\n\n\
         [[listen]]\nport = {port}\ninterface = \"127.0.0.1\"\nplugin = \"echo\"\nreuse-port = true\n",
        support::echo_wasm().display().to_string(),
        support::memory_line(),
    ))
}

/// `twill_connections_accepted` from the metrics endpoint on `port`.
fn accepted(port: u16) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with("twill_connections_accepted"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accepted counter in {body}"))
}

/// What the connect-echo-close clients saw.
#[derive(Default)]
struct Load {
    attempted: AtomicU64,
    failed: AtomicU64,
    lost_bytes: AtomicU64,
}

/// `workers` clients, each in a loop until `stop`: connect, send 64
/// numbered bytes, read the echo, compare, close.
fn run_load(
    addr: SocketAddr,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<std::thread::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let threads = (0..workers)
        .map(|w| {
            let (load, stop) = (load.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    load.attempted.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("{w:04}:{n:059}\n");
                    let result = (|| -> std::io::Result<Vec<u8>> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(msg.as_bytes())?;
                        let mut got = vec![0; msg.len()];
                        s.read_exact(&mut got)?;
                        s.shutdown(std::net::Shutdown::Write)?;
                        let mut rest = Vec::new();
                        s.read_to_end(&mut rest)?;
                        got.extend(rest);
                        Ok(got)
                    })();
                    match result {
                        Ok(got) if got == msg.as_bytes() => {}
                        Ok(got) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            let lost = msg.len().saturating_sub(got.len()) as u64;
                            load.lost_bytes.fetch_add(lost.max(1), Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("connection {w}/{n} failed: {e}");
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            load.lost_bytes
                                .fetch_add(msg.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (load, threads)
}

#[test]
fn a_process_stopping_on_a_shared_port_loses_no_connection() {
    if !in_own_netns("a_process_stopping_on_a_shared_port_loses_no_connection") {
        return;
    }
    let port = support::closed_port();
    let (m_old, m_new) = (support::closed_port(), support::closed_port());
    let mut old = support::spawn_run(&config(port, m_old), 1);
    let mut new = support::spawn_run(&config(port, m_new), 1);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stop = Arc::new(AtomicBool::new(false));
    let (load, threads) = run_load(addr, 16, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let (a, b) = (accepted(m_old), accepted(m_new));
    println!("before the stop: the old process accepted {a}, the new one {b}");
    assert!(
        a > 50 && b > 50,
        "the kernel spreads connections over both: {a} and {b}"
    );

    // The rolling step: SIGTERM the old one while the load goes on.
    let t = Instant::now();
    support::signal(&old.child, libc::SIGTERM);
    let status = support::wait_exit(&mut old.child, Duration::from_secs(15));
    println!("the old process exited {status} after {:?}", t.elapsed());
    let after_exit = accepted(m_new);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let later = accepted(m_new);
    let (attempted, failed, lost) = (
        load.attempted.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.lost_bytes.load(Ordering::Relaxed),
    );
    println!("rolling restart: attempted {attempted}, failed {failed}, bytes lost {lost}");
    assert!(
        status.success(),
        "the old process drains and exits 0: {}",
        old.stderr.lock().unwrap()
    );
    assert_eq!(
        (failed, lost),
        (0, 0),
        "no connection failed or lost a byte"
    );
    assert!(
        later > after_exit + 50,
        "the new process serves on: {after_exit} then {later}"
    );
    support::signal(&new.child, libc::SIGTERM);
    assert!(support::wait_exit(&mut new.child, Duration::from_secs(15)).success());
}
