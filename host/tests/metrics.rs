//! `[host] metrics`: real scrapes over HTTP, parsed by prometheus_client's
//! own parser (`peers/scrape.py`), whose values must move as traffic
//! flows; `/healthz` and `/readyz`, including while connections drain; the
//! crash-loop backoff of a shared instance, seen in its counters.
//!
//! Python comes from `TWILL_TEST_PYTHON` (CI points it at a venv with
//! prometheus-client); without it, `python3`, and the scrape tests say
//! they skipped if prometheus_client is not importable.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn python() -> (String, bool) {
    match std::env::var("TWILL_TEST_PYTHON") {
        Ok(p) => (p, true),
        Err(_) => ("python3".into(), false),
    }
}

/// Whether prometheus_client is there; a required one must be.
fn parser_available() -> bool {
    let (py, required) = python();
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || !required, "{py} has no prometheus_client");
    if !ok {
        eprintln!("SKIPPED: no prometheus_client for {py} (set TWILL_TEST_PYTHON)");
    }
    ok
}

/// Scrapes `/metrics` with the Python peer; `accept` sets the header.
async fn scrape(addr: SocketAddr, accept: Option<&str>) -> Value {
    let (py, _) = python();
    let mut cmd = Command::new(py);
    cmd.arg(support::repo().join("host/tests/peers/scrape.py"))
        .arg(format!("http://{addr}/metrics"));
    if let Some(a) = accept {
        cmd.arg(a);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(v: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    v["samples"].as_array().unwrap().iter().find_map(|s| {
        let matches = s[0] == name
            && labels
                .iter()
                .all(|(k, want)| s[1][*k].as_str() == Some(*want));
        matches.then(|| s[2].as_f64().unwrap())
    })
}

/// The status code of a GET.
async fn get(addr: SocketAddr, path: &str) -> u16 {
    let resp = support::http_get(addr, path).await;
    resp.split(' ').nth(1).unwrap().parse().unwrap()
}

fn testkit_config(extra_host: &str) -> String {
    format!(
        "[host]\nmetrics = \"127.0.0.1:0\"\n{extra_host}\n[plugins.p]\ncomponent = {:?}\ninstance = \"shared\"\ncpu = \"2s\"\n\n[[listen]]\nport = 0\nplugin = \"p\"\n",
        support::testkit_wasm().display().to_string()
    )
}

/// Sends `line` on a fresh connection and reads to the end.
async fn exchange(addr: SocketAddr, line: &str) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(line.as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_parsed_by_prometheus_client_moves_with_traffic() {
    if !parser_available() {
        return;
    }
    let r = support::start(&testkit_config("")).await;
    let m = r.metrics.expect("metrics bound");
    let addr = r.addr().to_string();
    let at = [("listener", addr.as_str()), ("plugin", "p")];
    let before = scrape(m, None).await;
    assert_eq!(before["families"]["twill_connections_accepted"], "counter");
    assert_eq!(
        before["families"]["twill_guest_call_duration_seconds"],
        "histogram"
    );
    assert_eq!(before["families"]["twill_connections_active"], "gauge");
    assert_eq!(
        sample(&before, "twill_connections_accepted_total", &at),
        Some(0.0)
    );
    assert_eq!(sample(&before, "twill_build_info", &[]), Some(1.0));
    assert_eq!(sample(&before, "twill_ready", &[]), Some(1.0));
    let calls_before = sample(
        &before,
        "twill_guest_call_duration_seconds_count",
        &[("plugin", "p")],
    )
    .unwrap();

    assert_eq!(exchange(r.addr(), "echo hello\n").await, b"hello\n");
    exchange(r.addr(), "panic\n").await;
    // The connections' tasks count their end just after the peer sees it.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let after = scrape(m, None).await;
    assert_eq!(
        sample(&after, "twill_connections_accepted_total", &at),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, "twill_received_bytes_total", &at),
        Some(17.0)
    );
    assert_eq!(sample(&after, "twill_sent_bytes_total", &at), Some(6.0));
    assert_eq!(sample(&after, "twill_connections_active", &at), Some(0.0));
    assert_eq!(
        sample(&after, "twill_connections_faulted_total", &at),
        Some(1.0)
    );
    let traps = |kind| {
        sample(
            &after,
            "twill_guest_traps_total",
            &[("plugin", "p"), ("kind", kind)],
        )
    };
    assert_eq!(traps("panic"), Some(1.0));
    assert_eq!(traps("cpu"), Some(0.0));
    let calls = sample(
        &after,
        "twill_guest_call_duration_seconds_count",
        &[("plugin", "p")],
    )
    .unwrap();
    assert!(
        calls > calls_before,
        "guest calls {calls_before} -> {calls}"
    );
    let inf = sample(
        &after,
        "twill_guest_call_duration_seconds_bucket",
        &[("plugin", "p"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(calls));
    assert!(sample(&after, "twill_instances_created_total", &[("plugin", "p")]).unwrap() >= 3.0);
    assert!(sample(&after, "twill_guest_batch_reads_count", &[("plugin", "p")]).unwrap() >= 1.0);
    let refused = sample(
        &after,
        "twill_connections_refused_total",
        &[("reason", "max_connections")],
    );
    assert_eq!(refused, Some(0.0));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_is_served_to_a_scraper_that_asks_for_it() {
    if !parser_available() {
        return;
    }
    let r = support::start(&testkit_config("")).await;
    let v = scrape(
        r.metrics.unwrap(),
        Some("application/openmetrics-text;version=1.0.0"),
    )
    .await;
    assert!(
        v["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert_eq!(sample(&v, "twill_ready", &[]), Some(1.0));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_connections_drain_and_healthz_stays_ok() {
    let r = support::start(&testkit_config("shutdown-timeout = \"5s\"\n")).await;
    let m = r.metrics.unwrap();
    assert_eq!(get(m, "/healthz").await, 200);
    assert_eq!(get(m, "/readyz").await, 200);
    assert_eq!(get(m, "/nope").await, 404);
    // A connection that will not close: the shutdown waits for it.
    let mut held = TcpStream::connect(r.addr()).await.unwrap();
    held.write_all(b"echo hi\n").await.unwrap();
    let mut buf = [0; 3];
    held.read_exact(&mut buf).await.unwrap();
    r.stop.send(twill::reactor::Control::Stop).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(m, "/readyz").await, 503);
    assert_eq!(get(m, "/healthz").await, 200);
    drop(held);
    let end = tokio::time::timeout(Duration::from_secs(10), r.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, twill::RunEnd::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_shared_instance_backs_off_and_other_plugins_serve_on() {
    let config = format!(
        "{}\n[plugins.echo]\ncomponent = {:?}\n{}\n[[listen]]\nport = 0\nplugin = \"echo\"\n",
        testkit_config(""),
        support::echo_wasm().display().to_string(),
        support::memory_line()
    );
    let r = support::start(&config).await;
    let (crash, echo) = (r.addrs[0], r.addrs[1]);
    let stats = r.plugin.as_ref().unwrap().stats().clone();
    let created_before = stats.instances_created.get();
    // 2 s of connections that each make the shared instance panic.
    let started = std::time::Instant::now();
    let mut attempts = 0;
    while started.elapsed() < Duration::from_secs(2) {
        exchange(crash, "panic\n").await;
        attempts += 1;
        // The other plugin answers all the while.
        if attempts % 20 == 0 {
            let mut c = TcpStream::connect(echo).await.unwrap();
            c.write_all(b"ping\n").await.unwrap();
            let mut buf = [0; 5];
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
                .await
                .expect("the echo plugin answers during the crash loop")
                .unwrap();
            assert_eq!(&buf, b"ping\n");
        }
    }
    let created = stats.instances_created.get() - created_before;
    let refused = r.stats[0]
        .refused_backoff
        .load(std::sync::atomic::Ordering::Relaxed);
    // Made at once after the first fault, then after 100, 200, 400, 800
    // ms: at most 6 in 2 s (a slow machine makes fewer), not one per
    // attempt.
    assert!(attempts > 50, "only {attempts} attempts");
    assert!(
        (2..=6).contains(&created),
        "{created} instances for {attempts} attempts"
    );
    assert!(
        refused as usize > attempts / 2,
        "{refused} of {attempts} refused"
    );
    assert!(stats.restarts_delayed.get() >= 1);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_are_counted_by_kind() {
    let config = format!(
        "[plugins.p]\ncomponent = {:?}\ncpu = \"100ms\"\nmax-output = \"1MiB\"\n\n[[listen]]\nport = 0\nplugin = \"p\"\n",
        support::testkit_wasm().display().to_string()
    );
    let r = support::start(&config).await;
    for command in ["panic\n", "loop\n", "alloc\n", "flood\n", "panic\n"] {
        exchange(r.addr(), command).await;
    }
    let stats = r.plugin.as_ref().unwrap().stats().clone();
    use twill::stats::FaultKind;
    let counts: Vec<_> = FaultKind::ALL
        .iter()
        .map(|k| (k.label(), stats.traps_of(*k)))
        .collect();
    assert_eq!(
        counts,
        [
            ("panic", 2),
            ("cpu", 1),
            ("memory", 1),
            ("output", 1),
            ("trap", 0)
        ]
    );
    // Each connection's own instance was made and is gone again.
    assert_eq!(
        stats
            .instances_live
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_shared_instance_faults_is_counted_as_faulted_even_after_its_fin() {
    let r = support::start(&testkit_config("")).await;
    for i in 1..=6u64 {
        // "panic" then FIN at once: the loop may see the FIN before the
        // instance's fault signal.
        let mut c = TcpStream::connect(r.addr()).await.unwrap();
        c.write_all(b"panic\n").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        // (The peer may still see a FIN before the reset: see
        // docs/operations.md, the crash-loop section's known limit.)
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
        let faulted = || {
            r.stats[0]
                .faulted
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while faulted() < i && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(faulted(), i, "round {i}");
        // Past the crash-loop backoff's delay (100 ms doubling).
        tokio::time::sleep(Duration::from_millis(50 + (100 << (i - 1)))).await;
    }
    r.shutdown().await;
}

/// The value of the sample line starting with `name` in a scrape.
fn text_sample(scrape: &str, name: &str) -> f64 {
    (scrape.lines())
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_instance_s_growing_memory_is_seen_before_it_faults() {
    let r = support::start(
        &testkit_config("").replace("cpu = \"2s\"\n", "cpu = \"2s\"\nmemory = \"8MiB\"\n"),
    )
    .await;
    let metrics = r.metrics.unwrap();
    let gauge = "twill_guest_memory_bytes{plugin=\"p\"}";
    let near = "twill_guest_memory_near_limit_total{plugin=\"p\"}";
    // The shared instance may start only as the first connection comes.
    assert_eq!(exchange(r.addr(), "echo hi\n").await, b"hi\n");
    let scrape = support::http_get(metrics, "/metrics").await;
    let at_start = text_sample(&scrape, gauge);
    assert!(
        at_start > 0.0,
        "the shared instance's memory is counted: {scrape}"
    );
    assert_eq!(text_sample(&scrape, near), 0.0);
    // Echoing more leaves the memory as it was.
    assert_eq!(exchange(r.addr(), "echo again\n").await, b"again\n");
    let scrape = support::http_get(metrics, "/metrics").await;
    assert_eq!(text_sample(&scrape, gauge), at_start);
    // `alloc` grows without bound: past 75% of the 8 MiB it is counted
    // (and logged) once, then it traps at the limit.
    exchange(r.addr(), "alloc\n").await;
    let scrape = support::http_get(metrics, "/metrics").await;
    assert_eq!(text_sample(&scrape, near), 1.0, "{scrape}");
    let stats = r.plugin.as_ref().unwrap().stats().clone();
    assert_eq!(stats.traps_of(twill::stats::FaultKind::Memory), 1);
    r.shutdown().await;
}
