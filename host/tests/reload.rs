//! Live reload, over real sockets: a reload swaps components for new
//! connections while old ones finish on theirs and the listening socket
//! stays bound (no connection refused); unchanged plugins keep their
//! instances; replaced shared pools hear `stop-factory` and drain;
//! listeners and connectors follow the new config; limits apply to new
//! connections; a reload that fails in any way changes nothing. Then the
//! same through a real `twill run`: SIGHUP, `--watch` (the config, and a
//! component replaced by rename), and `--log-format json`.
//!
//! The two variants: the echo component answers `echo hi` with `echo hi`,
//! the testkit with `hi`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn plugin(name: &str, wasm: &std::path::Path, extra: &str) -> String {
    format!(
        "[plugins.{name}]\ncomponent = {:?}\ncpu = \"2s\"\n{extra}\n",
        wasm.display().to_string()
    )
}

fn listen(name: &str, extra: &str) -> String {
    format!("[[listen]]\nport = 0\nplugin = \"{name}\"\n{extra}\n")
}

/// Config A: the echo component on one listener.
fn config_a() -> String {
    plugin("p", &support::echo_wasm(), &support::memory_line()) + &listen("p", "")
}

/// Config B: the testkit on the same listener.
fn config_b() -> String {
    plugin("p", &support::testkit_wasm(), "") + &listen("p", "")
}

/// A line-based connection.
struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Conn {
            r: BufReader::new(r),
            w,
        }
    }

    /// Sends `line` and reads one line back.
    async fn ask(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut got))
            .await
            .expect("an answer")
            .unwrap();
        got.trim_end().to_string()
    }
}

/// Which variant answers a new connection: "A" (echo) or "B" (testkit).
async fn variant(addr: SocketAddr) -> &'static str {
    match Conn::open(addr).await.ask("echo hi").await.as_str() {
        "echo hi" => "A",
        "hi" => "B",
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_connections_with_the_new_component_and_refuses_none() {
    let r = support::start(&config_a()).await;
    let addr = r.addr();
    let mut old = Conn::open(addr).await;
    assert_eq!(old.ask("echo hi").await, "echo hi");
    // Connections made all through the reload: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, made, failed) = (stop.clone(), made.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = async {
                    let mut c = TcpStream::connect(addr).await.ok()?;
                    c.write_all(b"echo hi\n").await.ok()?;
                    let mut got = Vec::new();
                    c.shutdown().await.ok()?;
                    c.read_to_end(&mut got).await.ok()?;
                    (got == b"echo hi\n" || got == b"hi\n").then_some(())
                }
                .await;
                made.fetch_add(1, Ordering::Relaxed);
                if ok.is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = r.reload(&config_b()).await.unwrap();
    assert_eq!(report.loaded, ["p"]);
    assert_eq!(report.listeners, (1, 0, 0));
    assert_eq!(report.listening, [addr]);
    assert_eq!(variant(addr).await, "B");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (made, failed) = (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(made > 10, "only {made} connections during the reload");
    assert_eq!(
        failed, 0,
        "{failed} of {made} connections failed across the reload"
    );
    // The connection made before goes on with the old component.
    assert_eq!(old.ask("echo again").await, "echo again");
    // And back.
    r.reload(&config_a()).await.unwrap();
    assert_eq!(variant(addr).await, "A");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_follows_a_plugin_between_shared_and_per_connection_instances() {
    let shared = config_b().replace(
        "cpu = \"2s\"\n",
        "cpu = \"2s\"\ninstance = \"shared\"\nshared-instances = 2\n",
    );
    let r = support::start(&config_a()).await;
    let addr = r.addr();
    for (config, want) in [
        (&shared, "B"),
        (&config_a(), "A"),
        (&shared, "B"),
        (&shared.replace("2s", "3s"), "B"),
    ] {
        r.reload(config).await.unwrap();
        for _ in 0..3 {
            assert_eq!(variant(addr).await, want);
        }
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_in_quick_succession_strand_no_connection_on_a_retired_pool() {
    let shared = |cpu: &str| {
        config_b().replace(
            "cpu = \"2s\"\n",
            &format!("cpu = \"{cpu}\"\ninstance = \"shared\"\nshared-instances = 2\n"),
        )
    };
    let r = support::start(&shared("2s")).await;
    let addr = r.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, failed) = (stop.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut made = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut c = TcpStream::connect(addr).await.ok()?;
                    c.write_all(b"echo hi\n").await.ok()?;
                    let mut got = [0; 3];
                    c.read_exact(&mut got).await.ok()?;
                    (&got == b"hi\n").then_some(())
                })
                .await;
                made += 1;
                if !matches!(ok, Ok(Some(()))) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            made
        }));
    }
    for i in 0..30 {
        let cpu = if i % 2 == 0 { "3s" } else { "2s" };
        r.reload(&shared(cpu)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(i % 3 * 10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for w in workers {
        made += w.await.unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    assert!(made > 100, "only {made} connections");
    assert_eq!(failed, 0, "{failed} of {made} connections were stranded");
    r.shutdown().await;
}

/// The live `twill-p-N` threads of this process (shared instances').
fn instance_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "twill-p-0")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_shared_plugin_keeps_its_instance_and_a_replaced_one_drains() {
    let shared = |cpu: &str| {
        format!(
            "[plugins.p]\ncomponent = {:?}\ninstance = \"shared\"\ncpu = \"{cpu}\"\n\n{}",
            support::testkit_wasm().display().to_string(),
            listen("p", "")
        )
    };
    let mut r = support::start(&shared("2s")).await;
    // Only connections may hold the pool that the reload replaces.
    r.pool = None;
    let mut first = Conn::open(r.addr()).await;
    assert!(first.ask("served").await.starts_with("served=1 "));
    let report = r.reload(&shared("2s")).await.unwrap();
    assert_eq!(
        (report.kept.as_slice(), report.loaded.len()),
        (&["p".to_string()][..], 0)
    );
    let mut second = Conn::open(r.addr()).await;
    assert!(
        second.ask("served").await.starts_with("served=2 "),
        "the same instance serves on"
    );
    drop(second);
    assert_eq!(instance_threads(), 1);

    let report = r.reload(&shared("3s")).await.unwrap();
    assert_eq!(report.loaded, ["p"]);
    let mut third = Conn::open(r.addr()).await;
    assert!(
        third.ask("served").await.starts_with("served=1 "),
        "a fresh instance"
    );
    assert!(
        third
            .ask("factory")
            .await
            .starts_with("started=1 stopped=0")
    );
    // The old instance heard stop-factory, and serves its connection on.
    assert!(
        first
            .ask("factory")
            .await
            .starts_with("started=1 stopped=1")
    );
    assert_eq!(first.ask("echo still here").await, "still here");
    assert_eq!(
        instance_threads(),
        2,
        "the old pool's thread runs while it has a connection"
    );
    drop(first);
    let drained = async {
        while instance_threads() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the old pool's thread stops with its last connection");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_in_any_way_changes_nothing() {
    let host = "[host]\nmetrics = \"127.0.0.1:0\"\n\n";
    let good = format!("{host}{}", config_a());
    let r = support::start(&good).await;
    let addr = r.addr();
    let dir = r.path.parent().unwrap().to_path_buf();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let cases: Vec<(String, &str)> = vec![
        (format!("{good}\n[plugins.q\n"), "plugins.toml:"),
        (
            format!(
                "{host}{}",
                plugin("p", &dir.join("missing.wasm"), "") + &listen("p", "")
            ),
            "plugins.p.component",
        ),
        (
            format!("{host}{}", plugin("p", &core, "") + &listen("p", "")),
            "core wasm module",
        ),
        (
            format!(
                "{host}{}",
                plugin(
                    "p",
                    &support::repo().join("host/tests/configs/other-world.wasm"),
                    ""
                ) + &listen("p", "")
            ),
            "built for another world",
        ),
        (
            format!(
                "{good}[[listen]]\nport = 0\nplugin = \"p\"\n[listen.tls]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n"
            ),
            "nope.pem",
        ),
        (
            format!("{good}[[listen]]\nport = {busy_port}\nplugin = \"p\"\n"),
            "address already in use",
        ),
        (
            format!(
                "[host]\nmetrics = \"127.0.0.1:0\"\nthreads = 1\n\n{}",
                config_a()
            ),
            "host.threads: changed from unset to 1, which takes a restart",
        ),
        (
            format!("{good}reuse-port = true\n"),
            "listen[0].reuse-port: changed from false to true, which takes a restart",
        ),
    ];
    let n = cases.len();
    for (text, expect) in cases {
        let err = r.reload(&text).await.expect_err(expect).to_string();
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "{expect:?} not in {err}"
        );
        assert!(err.contains("plugins.toml"), "no file named in {err}");
        // Still served, by the same component, on the same socket.
        assert_eq!(variant(addr).await, "A");
    }
    let metrics = support::http_get(r.metrics.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(&format!("twill_reloads_total{{result=\"failed\"}} {n}")),
        "{metrics}"
    );
    assert!(metrics.contains("twill_reloads_total{result=\"ok\"} 0"));
    drop(busy);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_and_changed_limits_apply_to_new_connections() {
    let one = config_a().replace("plugin = \"p\"\n", "plugin = \"p\"\nmax-connections = 1\n");
    let r = support::start(&one).await;
    let first_addr = r.addr();
    let mut held = Conn::open(first_addr).await;
    assert_eq!(held.ask("echo 1").await, "echo 1");
    // Over the cap: closed at once.
    let mut over = TcpStream::connect(first_addr).await.unwrap();
    let mut buf = Vec::new();
    over.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty());

    let two = config_a().replace("plugin = \"p\"\n", "plugin = \"p\"\nmax-connections = 2\n")
        + &listen("p", "");
    let report = r.reload(&two).await.unwrap();
    assert_eq!(report.listeners, (1, 1, 0));
    assert_eq!(report.listening[0], first_addr);
    let second_addr = report.listening[1];
    let mut another = Conn::open(first_addr).await;
    assert_eq!(
        another.ask("echo 2").await,
        "echo 2",
        "the new cap lets a second in"
    );
    assert_eq!(variant(second_addr).await, "A");

    // Drop the first listener: its connections go on; new ones are refused.
    let only_second = config_a();
    let report = r.reload(&only_second).await.unwrap();
    assert_eq!(report.listeners, (1, 0, 1));
    // The kept one is the first entry of its address: the old first.
    assert_eq!(report.listening, [first_addr]);
    let report = r.reload(&(config_a() + &listen("p", ""))).await.unwrap();
    assert_eq!(report.listeners, (1, 1, 0));
    let added = report.listening[1];
    let report = r
        .reload(
            &(listen("p", "interface = \"127.0.0.2\"")
                + &plugin("p", &support::echo_wasm(), &support::memory_line())),
        )
        .await
        .unwrap();
    assert_eq!(report.listeners, (0, 1, 2));
    for gone in [first_addr, added] {
        assert!(
            TcpStream::connect(gone).await.is_err(),
            "{gone} still accepts"
        );
    }
    assert_eq!(
        held.ask("echo 3").await,
        "echo 3",
        "a removed listener's connection drains"
    );
    assert_eq!(variant(report.listening[0]).await, "A");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_follow_the_new_connect_entries() {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = |port: u16| {
        format!(
            "[[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"p\"\nreconnect = true\ninitial-delay = \"50ms\"\nmax-delay = \"100ms\"\n"
        )
    };
    let base = config_a();
    let r = support::start(&(base.clone() + &connect(a.local_addr().unwrap().port()))).await;
    // The echo client says hello; the server hangs up; it reconnects.
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), a.accept())
        .await
        .unwrap()
        .unwrap();
    let mut hello = [0; 5];
    s.read_exact(&mut hello).await.unwrap();
    drop(s);
    let report = r
        .reload(&(base + &connect(b.local_addr().unwrap().port())))
        .await
        .unwrap();
    assert_eq!(report.connectors, (0, 1, 1));
    tokio::time::timeout(Duration::from_secs(10), b.accept())
        .await
        .expect("the new entry connects")
        .unwrap();
    // The removed entry does not reconnect.
    let again = tokio::time::timeout(Duration::from_millis(600), a.accept()).await;
    assert!(again.is_err(), "the removed connector reconnected");
    r.shutdown().await;
}

/// Waits until the child's log has `n` lines containing `what`.
fn wait_log(child: &support::Child2, what: &str, n: usize) -> String {
    let start = std::time::Instant::now();
    loop {
        let log = support::strip_ansi(&child.stderr.lock().unwrap());
        if log.matches(what).count() >= n {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what:?} in {log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn variant_blocking(addr: SocketAddr) -> &'static str {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(variant(addr))
}

#[test]
fn sighup_reloads_a_running_twill_and_a_bad_config_leaves_it_serving() {
    let path = support::write_config(&config_a());
    let mut child = support::spawn_run(&path, 1);
    let addr = child.addrs[0];
    assert_eq!(variant_blocking(addr), "A");
    std::fs::write(&path, config_b()).unwrap();
    support::signal(&child.child, libc::SIGHUP);
    wait_log(&child, "config reloaded", 1);
    assert_eq!(variant_blocking(addr), "B");
    std::fs::write(&path, "[plugins.p\n").unwrap();
    support::signal(&child.child, libc::SIGHUP);
    let log = wait_log(&child, "reload failed", 1);
    assert!(log.contains("plugins.toml:1"), "{log}");
    assert_eq!(variant_blocking(addr), "B");
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end twill"
    );
    support::signal(&child.child, libc::SIGTERM);
    assert!(support::wait_exit(&mut child.child, Duration::from_secs(20)).success());
}

#[test]
fn watch_reloads_when_the_config_changes() {
    let path = support::write_config(&config_a());
    let mut child = support::spawn_cmd(support::twill().arg("run").arg("--watch").arg(&path), 1);
    let addr = child.addrs[0];
    assert_eq!(variant_blocking(addr), "A");
    wait_log(&child, "watching the config", 1);
    std::fs::write(&path, config_b()).unwrap();
    wait_log(&child, "config reloaded", 1);
    assert_eq!(variant_blocking(addr), "B");
    support::signal(&child.child, libc::SIGTERM);
    assert!(support::wait_exit(&mut child.child, Duration::from_secs(20)).success());
}

#[test]
fn watch_reloads_when_a_component_file_is_replaced() {
    let dir = support::scratch();
    let wasm = dir.join("p.wasm");
    std::fs::copy(support::echo_wasm(), &wasm).unwrap();
    let path = dir.join("plugins.toml");
    std::fs::write(
        &path,
        plugin("p", &wasm, &support::memory_line()) + &listen("p", ""),
    )
    .unwrap();
    let mut child = support::spawn_cmd(support::twill().arg("run").arg("--watch").arg(&path), 1);
    let addr = child.addrs[0];
    assert_eq!(variant_blocking(addr), "A");
    wait_log(&child, "watching the config", 1);
    // As a build tool does: write elsewhere, then rename over it.
    let staged = dir.join("p.wasm.tmp");
    std::fs::copy(support::testkit_wasm(), &staged).unwrap();
    std::fs::rename(&staged, &wasm).unwrap();
    let log = wait_log(&child, "config reloaded", 1);
    assert!(log.contains("loaded [p]"), "{log}");
    assert_eq!(variant_blocking(addr), "B");
    support::signal(&child.child, libc::SIGTERM);
    assert!(support::wait_exit(&mut child.child, Duration::from_secs(20)).success());
}

#[test]
fn json_logs_are_one_object_per_line_and_guest_output_cannot_forge_one() {
    let path = support::write_config(&config_b());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_twill"))
        .args(["--log-format", "json", "run"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = support::pump_stderr(&mut child);
    let addr: SocketAddr = {
        let start = std::time::Instant::now();
        loop {
            let found = stderr.lock().unwrap().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "listening").then(|| v["addr"].as_str()?.parse().ok())?
            });
            if let Some(a) = found {
                break a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = Conn::open(addr).await;
            c.w.write_all(b"print forged {\"level\":\"ERROR\",\"message\":\"x\"}\r\x1b[31m\n")
                .await
                .unwrap();
            assert_eq!(c.ask("echo done").await, "done");
        });
    std::thread::sleep(Duration::from_millis(300));
    support::signal(&child, libc::SIGTERM);
    assert!(support::wait_exit(&mut child, Duration::from_secs(20)).success());
    let log = stderr.lock().unwrap().clone();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let guest: Vec<_> = (records.iter())
        .filter(|r| r["plugin"] == "p" && r["stream"] == "stdout")
        .filter(|r| r["message"].as_str().unwrap().contains("forged"))
        .collect();
    assert_eq!(guest.len(), 1, "{guest:?}");
    let text = guest[0]["message"].as_str().unwrap();
    assert!(text.starts_with("forged {\"level\""), "{text}");
    assert!(
        !log.contains("\"level\":\"ERROR\",\"message\":\"x\"}"),
        "a forged record: {log}"
    );
    assert!(
        !text.contains('\u{1b}') && text.contains("\\x1b"),
        "{text:?}"
    );
}
