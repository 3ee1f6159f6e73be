//! Guest time (`twill:protocol/reactor`): `call-later` and its
//! `delayed-call`, `LoopingCall`, `TimeoutMixin` and the factory hooks, on
//! the test transport's deterministic clock and over real sockets, on an
//! instance per connection and on shared instances; and the limits:
//! `max-timers`, a call that reschedules itself forever, a call that traps.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill::runtime::GuestFault;
use twill::runtime::limits::Limits;
use twill::testing::{TestComponent, TestConnection};

use support::{Kit, server_config, start, testkit_wasm};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sends one command line on a test connection; returns what it wrote.
fn cmd(c: &mut TestConnection, line: &str) -> String {
    c.data_received(format!("{line}\n").as_bytes()).unwrap();
    String::from_utf8(c.value()).unwrap()
}

#[test]
fn call_later_fires_on_the_deterministic_clock_and_follows_idelayedcall() {
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(cmd(&mut c, "seconds"), "seconds=0\n");
    cmd(&mut c, "later 100 hi");
    assert_eq!(kit.advance(ms(99)).unwrap(), 0);
    assert_eq!(c.value(), b"");
    assert_eq!(cmd(&mut c, "active"), "active=true\n");
    assert_eq!(kit.advance(ms(1)).unwrap(), 1);
    assert_eq!(c.value(), b"hi\n");
    assert_eq!(cmd(&mut c, "active"), "active=false\n");
    assert_eq!(cmd(&mut c, "cancel"), "Called\n", "Twisted's AlreadyCalled");
    assert_eq!(cmd(&mut c, "seconds"), "seconds=0.1\n");

    // cancel
    cmd(&mut c, "later 50 never");
    assert_eq!(cmd(&mut c, "cancel"), "ok\n");
    assert_eq!(cmd(&mut c, "reset 10"), "Cancelled\n");
    kit.advance(ms(1000)).unwrap();
    assert_eq!(c.value(), b"");

    // reset (later, then earlier) and delay
    cmd(&mut c, "later 100 moved");
    assert_eq!(cmd(&mut c, "reset 300"), "ok\n");
    kit.advance(ms(200)).unwrap();
    assert_eq!(c.value(), b"", "reset to later");
    assert_eq!(cmd(&mut c, "reset 10"), "ok\n");
    kit.advance(ms(10)).unwrap();
    assert_eq!(c.value(), b"moved\n", "reset to earlier");
    cmd(&mut c, "later 100 delayed");
    assert_eq!(cmd(&mut c, "delay 50"), "ok\n");
    kit.advance(ms(149)).unwrap();
    assert_eq!(c.value(), b"");
    kit.advance(ms(1)).unwrap();
    assert_eq!(c.value(), b"delayed\n");
}

/// The shared vectors (guest-sdk/test-vectors/time.json), which the
/// Python and JavaScript SDKs' tests run too, through the test kit.
fn vectors() -> serde_json::Value {
    let path = support::repo().join("guest-sdk/test-vectors/time.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ticks(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("tick ")).count()
}

#[test]
fn the_shared_time_vectors_hold_on_the_deterministic_clock() {
    let v = vectors();
    for case in v["looping"].as_array().unwrap() {
        let kit = TestComponent::load(testkit_wasm()).unwrap();
        let mut c = kit.server_connection().unwrap().unwrap();
        let later = if case["now"].as_bool().unwrap() {
            ""
        } else {
            " later"
        };
        let mut seen = ticks(&cmd(
            &mut c,
            &format!("every {}{later}", case["interval_ms"]),
        ));
        for step in case["steps"].as_array().unwrap() {
            kit.advance(ms(step[0].as_u64().unwrap())).unwrap();
            seen += ticks(&String::from_utf8(c.value()).unwrap());
            assert_eq!(seen as u64, step[1].as_u64().unwrap(), "{}", case["name"]);
        }
    }
    for case in v["timeout"].as_array().unwrap() {
        let kit = TestComponent::load(testkit_wasm()).unwrap();
        let mut c = kit.server_connection().unwrap().unwrap();
        cmd(&mut c, &format!("timeout {}", case["period_ms"]));
        for step in case["steps"].as_array().unwrap() {
            match step[0].as_str().unwrap() {
                "advance" => drop(kit.advance(ms(step[1].as_u64().unwrap())).unwrap()),
                "touch" => assert_eq!(cmd(&mut c, "touch"), "touched\n"),
                "open" => assert!(!c.disconnecting(), "{}", case["name"]),
                "closed" => assert!(c.disconnecting(), "{}", case["name"]),
                other => panic!("unknown step {other}"),
            }
        }
    }
    for case in v["call_later"].as_array().unwrap() {
        let kit = TestComponent::load(testkit_wasm()).unwrap();
        let mut c = kit.server_connection().unwrap().unwrap();
        cmd(&mut c, &format!("later {} x", case["delay_ms"]));
        for step in case["steps"].as_array().unwrap() {
            let n = step.get(1).and_then(serde_json::Value::as_u64).unwrap_or(0);
            match step[0].as_str().unwrap() {
                "advance" => drop(kit.advance(ms(n)).unwrap()),
                "reset" => assert_eq!(cmd(&mut c, &format!("reset {n}")), "ok\n"),
                "delay" => assert_eq!(cmd(&mut c, &format!("delay {n}")), "ok\n"),
                "cancel" => assert_eq!(cmd(&mut c, "cancel"), "ok\n"),
                "pending" => assert_eq!(c.value(), b"", "{}", case["name"]),
                "fired" => assert_eq!(c.value(), b"x\n", "{}", case["name"]),
                other => panic!("unknown step {other}"),
            }
        }
    }
}

#[test]
fn a_stopped_looping_call_stays_stopped() {
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(
        cmd(&mut c, "every 100"),
        "tick 1\n",
        "now=True runs at once"
    );
    assert_eq!(cmd(&mut c, "stop"), "stopped\n");
    kit.advance(ms(1000)).unwrap();
    assert_eq!(c.value(), b"", "a stopped loop stays stopped");
}

#[test]
fn the_factory_hooks_run_once_per_instance_and_start_a_loop_before_any_connection() {
    // A shared instance starts at load: its LoopingCall ticks with no
    // connection (first at once, then every second).
    let kit = TestComponent::load_shared(testkit_wasm()).unwrap();
    for _ in 0..3 {
        kit.advance(Duration::from_secs(1)).unwrap();
    }
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(cmd(&mut c, "factory"), "started=1 stopped=0 ticks=4\n");
    // An instance of its own is its own factory: started before its
    // protocol, stopped after its connection.
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(cmd(&mut c, "factory"), "started=1 stopped=0 ticks=1\n");
    c.connection_lost(twill::runtime::bindings::Reason::Done)
        .unwrap();
    assert!(kit.output().contains("testkit: stop-factory"));
}

/// As with Twisted's one `task.Clock`, calls fire in due order across
/// instances: here three connections, each on an instance of its own.
#[test]
fn the_test_clock_fires_calls_in_due_order_across_instances() {
    let kit = TestComponent::load(testkit_wasm()).unwrap();
    let mut a = kit.server_connection().unwrap().unwrap();
    let mut b = kit.server_connection().unwrap().unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    cmd(&mut a, "later-print 300 a300");
    cmd(&mut b, "later-print 100 b100");
    cmd(&mut c, "later-print 200 c200");
    cmd(&mut a, "later-print 50 a50");
    cmd(&mut b, "later-print 250 b250");
    // (Before the factory loops' next tick, at 1 s.)
    assert_eq!(kit.advance(ms(500)).unwrap(), 5);
    let order: Vec<String> = kit
        .output()
        .lines()
        .filter(|l| l.starts_with(['a', 'b', 'c']))
        .map(str::to_string)
        .collect();
    assert_eq!(order, ["a50", "b100", "c200", "b250", "a300"]);
}

#[test]
fn max_timers_traps_the_call_past_it() {
    let limits = Limits {
        max_timers: 100,
        ..Limits::default()
    };
    let kit = TestComponent::load_with(testkit_wasm(), limits).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(cmd(&mut c, "timers 99"), "scheduled 99\n");
    let err = c.data_received(b"timers 1\n").unwrap_err();
    match err {
        GuestFault::Trap(m) => assert!(m.contains("max-timers"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn shared() -> &'static str {
    "instance = \"shared\"\nshared-instances = 1"
}

/// The component for the real-socket timer test: the test kit, or with
/// `TWILL_CLOCK_WASM` the Python or JavaScript clock guest (which answer
/// the same commands; scripts/test-polyglot.sh sets it, and the memory).
fn clock_wasm() -> std::path::PathBuf {
    std::env::var_os("TWILL_CLOCK_WASM").map_or_else(testkit_wasm, Into::into)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_calls_fire_on_time_over_real_sockets_in_both_modes() {
    for extra in ["", shared()] {
        let extra = format!("{}{extra}", support::memory_line());
        let server = start(&server_config(&clock_wasm(), &extra)).await;
        let mut k = Kit::connect(server.addr()).await;
        let t0 = Instant::now();
        k.send("later 100 hello").await;
        assert_eq!(k.line().await, "hello\n", "{extra}");
        let took = t0.elapsed();
        assert!(took >= ms(95) && took < ms(1000), "{extra}: {took:?}");
        // The loop writes without being asked.
        k.send("every 50").await;
        for i in 1..=4 {
            assert_eq!(k.line().await, format!("tick {i}\n"));
        }
        assert_eq!(k.ask("stop").await, "stopped\n");
        // A Timeout closes a quiet connection cleanly.
        k.send("timeout 150").await;
        let t0 = Instant::now();
        assert_eq!(k.end().await, Ok(()), "{extra}");
        assert!(t0.elapsed() >= ms(140), "{:?}", t0.elapsed());
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_rescheduling_itself_forever_starves_no_connection() {
    for extra in ["", shared()] {
        let server = start(&server_config(&testkit_wasm(), extra)).await;
        let mut spinner = Kit::connect(server.addr()).await;
        assert_eq!(spinner.ask("spin").await, "spinning\n");
        // The spinning connection itself and another one are both served.
        let mut other = Kit::connect(server.addr()).await;
        let mut worst = Duration::ZERO;
        for i in 0..50 {
            let t0 = Instant::now();
            assert_eq!(other.ask(&format!("echo {i}")).await, format!("{i}\n"));
            worst = worst.max(t0.elapsed());
        }
        let t0 = Instant::now();
        let spins = spinner.ask("spins").await;
        worst = worst.max(t0.elapsed());
        println!("{extra:?}: worst echo {worst:?} while spinning; {spins}");
        assert!(worst < ms(500), "{worst:?}");
        let count = |s: &str| -> u64 { s.trim().trim_start_matches("spins=").parse().unwrap() };
        // It keeps running meanwhile: more spins 200 ms later.
        tokio::time::sleep(ms(200)).await;
        let (n1, n2) = (count(&spins), count(&spinner.ask("spins").await));
        assert!(
            n1 > 0 && n2 > n1 + 10,
            "the spinning call keeps running: {n1}, then {n2}"
        );
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_call_that_traps_costs_its_instance_only() {
    // An instance of its own: its connection is aborted, others served.
    let server = start(&server_config(&testkit_wasm(), "")).await;
    let mut a = Kit::connect(server.addr()).await;
    let mut b = Kit::connect(server.addr()).await;
    a.send("panic-later 50").await;
    assert!(a.end().await.is_err(), "aborted, not a clean close");
    assert_eq!(b.ask("echo still").await, "still\n");
    server.shutdown().await;

    // A shared instance: its connections go; the next gets a fresh one.
    let server = start(&server_config(&testkit_wasm(), shared())).await;
    let mut a = Kit::connect(server.addr()).await;
    let mut b = Kit::connect(server.addr()).await;
    assert_eq!(b.ask("echo up").await, "up\n");
    a.send("panic-later 50").await;
    assert!(a.end().await.is_err());
    assert!(b.end().await.is_err(), "the whole instance faulted");
    let mut c = Kit::connect(server.addr()).await;
    let factory = c.ask("factory").await;
    assert!(
        factory.starts_with("started=1 stopped=0"),
        "fresh: {factory}"
    );
    server.shutdown().await;
}

#[test]
fn a_shared_instance_hears_stop_factory_at_shutdown() {
    let cfg = support::write_config(&server_config(&testkit_wasm(), shared()));
    let mut server = support::spawn_run(&cfg, 1);
    // Its factory loop ran before any connection.
    std::thread::sleep(ms(300));
    let mut s = std::net::TcpStream::connect(server.addrs[0]).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(b"factory\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.starts_with("started=1 stopped=0 ticks="), "{line}");
    drop(s);
    // SIGTERM: stop-factory runs once the connections are done.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success());
    // The pump thread reads the child's stdout to its end.
    let t0 = Instant::now();
    let mut out = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        out = server.stdout.lock().unwrap().clone();
        if out.contains("testkit: stop-factory") {
            break;
        }
        std::thread::sleep(ms(20));
    }
    assert_eq!(out.matches("testkit: stop-factory").count(), 1, "{out}");
}

/// Components built before `reactor` existed (one before `batch` too) keep
/// loading and serving, on an instance each and on a shared instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_before_the_reactor_interface_keep_working() {
    for old in ["echo-before-reactor.wasm", "echo-without-batch.wasm"] {
        let wasm = support::repo().join("host/tests/configs").join(old);
        for extra in ["", shared()] {
            let server = start(&server_config(&wasm, extra)).await;
            let mut s = TcpStream::connect(server.addr()).await.unwrap();
            s.write_all(b"still here").await.unwrap();
            let mut buf = [0u8; 10];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"still here", "{old} {extra}");
            server.shutdown().await;
        }
    }
}

/// A looping call on a shared instance makes a delayed call per tick, many
/// times `max-resources` of them: the guest drops each call's handle once it
/// fired or was cancelled. (The Python and JavaScript SDKs once kept them;
/// the instance faulted with "resource table has no free keys".)
/// scripts/test-polyglot.sh runs it against both clock guests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_call_on_a_shared_instance_outlives_max_resources() {
    let extra = format!("{}{}\nmax-resources = 16", support::memory_line(), shared());
    let server = start(&server_config(&clock_wasm(), &extra)).await;
    let mut k = Kit::connect(server.addr()).await;
    k.send("every 1").await;
    for i in 1..=100 {
        assert_eq!(k.line().await, format!("tick {i}\n"));
    }
    k.send("stop").await;
    // Ticks already written come first.
    let mut n = 0;
    while k.line().await != "stopped\n" {
        n += 1;
        assert!(n < 10_000, "no `stopped`");
    }
    // And one-shot calls, each fired.
    for i in 0..40 {
        k.send(&format!("later 0 t{i}")).await;
        assert_eq!(k.line().await, format!("t{i}\n"));
    }
    server.shutdown().await;
}

/// The handle of an active call is bounded by `max-timers`, not by
/// `max-resources`: a shared instance whose every connection keeps a
/// timeout serves more connections than `max-resources` (a bench with
/// 10,000 such connections found the instance faulting at the 1,001st).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_per_connection_on_a_shared_instance_is_not_capped_by_max_resources() {
    let extra = format!("{}\nmax-resources = 16\nmax-timers = 100", shared());
    let server = start(&server_config(&testkit_wasm(), &extra)).await;
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut k = Kit::connect(server.addr()).await;
        k.send("timeout 60000").await;
        assert_eq!(k.ask(&format!("echo {i}")).await, format!("{i}\n"));
        conns.push(k);
    }
    let mut last = Kit::connect(server.addr()).await;
    let f = last.ask("factory").await;
    assert!(f.starts_with("started=1 "), "the same instance: {f}");
    server.shutdown().await;
}
