//! The `twill` binary as a user runs it: real processes, real signals, real
//! sockets.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use support::{closed_port, echo_wasm, spawn_run, testkit_wasm, twill, wait_exit, write_config};

fn run_to_end(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = twill()
        .args(args)
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_shows_examples() {
    let out = twill().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("twill run") && text.contains("twill check"),
        "{text}"
    );
}

#[test]
fn check_accepts_the_shipped_config() {
    let (code, stdout, stderr) = run_to_end(&["check"], &support::repo().join("plugins.toml"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (1 plugin(s), 1 listener(s), 1 connector(s))"),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_chat_example_config() {
    let (code, stdout, stderr) =
        run_to_end(&["check"], &support::repo().join("guests/chat/chat.toml"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (1 plugin(s), 1 listener(s), 0 connector(s))"),
        "{stdout}"
    );
}

/// Every file in tests/configs is broken in one way; `# expect:` lines say
/// what the error must mention (file, line, column, key, message).
#[test]
fn broken_configs_are_rejected_with_file_line_and_key() {
    let dir = support::repo().join("host/tests/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: line",
            path.display()
        );
        for cmd in ["check", "run"] {
            let (code, stdout, stderr) = run_to_end(&[cmd], &path);
            assert_eq!(
                code,
                2,
                "twill {cmd} {}: exit {code}\n{stderr}",
                path.display()
            );
            assert!(
                !stderr.contains("listening"),
                "twill {cmd} bound a port: {stderr}"
            );
            assert!(stdout.is_empty(), "{stdout}");
            for e in &expects {
                assert!(
                    stderr.contains(e),
                    "twill {cmd} {}: expected {e:?} in:\n{stderr}",
                    path.display()
                );
            }
        }
        n += 1;
    }
    assert!(n >= 15, "the corpus has {n} broken configs");
}

/// One run reports every problem of a file with many, in file order, each
/// on one line with its file, line, column and key.
#[test]
fn check_reports_every_problem_at_once() {
    let path = support::repo().join("host/tests/configs/many-problems.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let expects: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .collect();
    assert_eq!(expects.len(), 7);
    let (code, stdout, stderr) = run_to_end(&["check"], &path);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expects.len(), "{stderr}");
    for (line, expect) in lines.iter().zip(&expects) {
        assert!(line.contains(expect), "expected {expect:?} in {line:?}");
    }
}

/// A component path naming a device is refused for what it is, without
/// reading it.
#[test]
fn a_device_as_component_is_not_a_regular_file() {
    let cfg = write_config(
        "[plugins.echo]\ncomponent = \"/dev/zero\"\n[[listen]]\nport = 0\nplugin = \"echo\"\n",
    );
    let t0 = Instant::now();
    let (code, _, stderr) = run_to_end(&["check"], &cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(":2:13: plugins.echo.component: component file /dev/zero is not a regular file (it is a character device)"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// A 10 MB value is not echoed back: the error is one short line.
#[test]
fn a_huge_value_gives_a_short_error() {
    let huge = "9".repeat(10_000_000);
    let cfg = write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\nmemory = \"{huge}x\"\n[[listen]]\nport = 0\nplugin = \"echo\"\n",
        echo_wasm().display().to_string(),
    ));
    let (code, _, stderr) = run_to_end(&["check"], &cfg);
    assert_eq!(code, 2, "{}", &stderr[..stderr.len().min(500)]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", &stderr[..stderr.len().min(500)]);
    assert!(lines[0].len() < 300, "{} chars", lines[0].len());
    assert!(
        lines[0].contains(":3:10: plugins.echo.memory: size \"9999")
            && lines[0].contains("…\" (10000001 bytes)"),
        "{}",
        lines[0]
    );
}

#[test]
fn missing_config_file_is_exit_2() {
    let (code, _, stderr) = run_to_end(&["run"], Path::new("/nonexistent/plugins.toml"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/plugins.toml: cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_is_a_clear_error_and_exit_2() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let cfg = write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}[[listen]]\nport = {port}\nplugin = \"echo\"\n",
        echo_wasm().display().to_string(),
        support::memory_line()
    ));
    let (code, _, stderr) = run_to_end(&["run"], &cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for plugin \"echo\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("another process is using the port"),
        "{stderr}"
    );
}

fn client_config(port: u16) -> std::path::PathBuf {
    write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}[[connect]]\nhost = \"localhost\"\nport = {port}\nplugin = \"echo\"\ntimeout = \"5s\"\n",
        echo_wasm().display().to_string(),
        support::memory_line()
    ))
}

#[test]
fn the_seed_client_talks_to_a_twill_listener_and_exits_0() {
    let server_cfg = write_config(&support::server_config(&echo_wasm(), ""));
    let mut server = spawn_run(&server_cfg, 1);
    let port = server.addrs[0].port();
    let (code, stdout, stderr) = run_to_end(&["run"], &client_config(port));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "[echo] Server said: hello world\n[echo] Connection lost\n[echo] Connection lost - goodbye\n",
        "{stderr}"
    );
    support::signal(&server.child, libc::SIGTERM);
    assert!(wait_exit(&mut server.child, Duration::from_secs(10)).success());
}

#[test]
fn the_seed_client_against_a_closed_port_says_goodbye_and_exits_0() {
    let (code, stdout, stderr) = run_to_end(&["run"], &client_config(closed_port()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "[echo] Connection failed - goodbye\n", "{stderr}");
    assert!(
        stderr.contains("Connection refused"),
        "the log says why: {stderr}"
    );
}

#[test]
fn an_unresolvable_name_fails_the_connection() {
    let cfg = write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}[[connect]]\nhost = \"no-such-host.invalid\"\nport = 9\nplugin = \"echo\"\ntimeout = \"5s\"\n",
        echo_wasm().display().to_string(),
        support::memory_line()
    ));
    let (code, stdout, stderr) = run_to_end(&["run"], &cfg);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "[echo] Connection failed - goodbye\n", "{stderr}");
    assert!(stderr.contains("cannot resolve"), "{stderr}");
}

#[test]
fn sigterm_closes_open_connections_cleanly_and_exits_0() {
    let cfg = write_config(&support::server_config(&echo_wasm(), ""));
    let mut server = spawn_run(&cfg, 1);
    let mut conns = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(server.addrs[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = format!("hello {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
        conns.push(s);
    }
    let t0 = Instant::now();
    support::signal(&server.child, libc::SIGTERM);
    for mut s in conns {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("a clean FIN, not a reset");
        assert!(rest.is_empty());
    }
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.stderr.lock().unwrap());
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Nothing listens any more.
    assert!(TcpStream::connect(server.addrs[0]).is_err());
}

/// A connection whose peer never reads cannot finish its flush: the shutdown
/// deadline ends the run (exit 1), and a second signal ends it sooner
/// (exit 130).
#[test]
fn shutdown_deadline_and_second_signal() {
    for (second_signal, want) in [(false, 1), (true, 130)] {
        let cfg = write_config(&format!(
            "[host]\nshutdown-timeout = \"{}\"\n{}",
            if second_signal { "30s" } else { "1s" },
            support::server_config(&testkit_wasm(), "")
        ));
        let mut server = spawn_run(&cfg, 1);
        let mut s = TcpStream::connect(server.addrs[0]).unwrap();
        s.write_all(b"big 12000000\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        support::signal(&server.child, libc::SIGTERM);
        if second_signal {
            std::thread::sleep(Duration::from_millis(300));
            support::signal(&server.child, libc::SIGINT);
        }
        let status = wait_exit(&mut server.child, Duration::from_secs(15));
        assert_eq!(
            status.code(),
            Some(want),
            "{}",
            server.stderr.lock().unwrap()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        drop(s);
    }
}

/// Runs `config`, whose connector runs the seed's client against its own
/// listener on `port`: checks the client's three lines, that the server
/// half keeps serving afterwards, and a clean exit on SIGINT.
fn seed_runs_both_halves(config: &Path, port: u16) {
    let mut run = spawn_run(config, 1);
    let t0 = Instant::now();
    while !run
        .stdout
        .lock()
        .unwrap()
        .contains("Connection lost - goodbye")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no goodbye: {}",
            run.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server half keeps serving after the client half is done.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    support::signal(&run.child, libc::SIGINT);
    assert_eq!(
        wait_exit(&mut run.child, Duration::from_secs(10)).code(),
        Some(0)
    );
    assert_eq!(
        *run.stdout.lock().unwrap(),
        "[echo] Server said: hello world\n[echo] Connection lost\n[echo] Connection lost - goodbye\n"
    );
}

/// The shipped plugins.toml shows both halves of the seed from one command.
#[test]
fn shipped_plugins_toml_runs_both_halves_of_the_seed() {
    if TcpListener::bind("127.0.0.1:9000").is_err() {
        eprintln!("port 9000 is busy here; skipping the shipped-config demo");
        return;
    }
    seed_runs_both_halves(&support::repo().join("plugins.toml"), 9000);
}

#[test]
fn an_interface_with_no_such_address_is_exit_2() {
    let cfg = write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}[[listen]]\nport = 0\nplugin = \"echo\"\ninterface = \"192.0.2.1\"\n",
        echo_wasm().display().to_string(),
        support::memory_line()
    ));
    let (code, _, stderr) = run_to_end(&["run"], &cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot listen on 192.0.2.1:0"), "{stderr}");
    assert!(
        stderr.contains("no local interface has that address"),
        "{stderr}"
    );
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; after_comm starts at field 3.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Out of file descriptors, the accept loop backs off instead of spinning,
/// and serves the waiting connections once descriptors free up.
#[test]
fn accept_backs_off_on_emfile_without_busy_looping() {
    use std::os::unix::process::CommandExt;
    let cfg = write_config(&support::server_config(&echo_wasm(), ""));
    let mut cmd = twill();
    // SAFETY: setrlimit is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = support::spawn_cmd(cmd.arg("run").arg(&cfg), 1);
    let addr = server.addrs[0];
    let pid = server.child.id();
    // Hold connections until the server runs out of descriptors.
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(b"?").unwrap();
        let mut b = [0u8; 1];
        let served = s.read_exact(&mut b).is_ok();
        held.push(s);
        if !served {
            break;
        }
    }
    assert!(held.len() < 100, "the server ran out of descriptors");
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("out of resources; backing off"), "{log}");
    // While exhausted, the accept loop sleeps rather than spins. Two
    // windows, the quieter counts: a spinning loop spins in both, while a
    // one-off (the compile cache's worker writing a fresh entry) is in one.
    let window = || {
        let c0 = cpu_secs(pid);
        std::thread::sleep(Duration::from_secs(1));
        cpu_secs(pid) - c0
    };
    let used = window().min(window());
    println!("CPU used in 1 s while out of descriptors: {used:.3} s");
    assert!(
        used < 0.25,
        "accept loop is spinning: {used} s of CPU in 1 s"
    );
    // Free descriptors: the connection that was waiting gets its echo.
    let mut waiting = held.pop().unwrap();
    held.truncate(held.len() / 2);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 1];
    waiting.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"?");
    support::signal(&server.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut server.child, Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// Both halves of the seed on one shared instance: the connector's
/// client-factory calls and the listener's protocols all run in it.
#[test]
fn both_halves_of_the_seed_on_one_shared_instance() {
    let port = closed_port();
    let cfg = write_config(&format!(
        "[plugins.echo]\ncomponent = {:?}\n{}instance = \"shared\"\nshared-instances = 1\n\n\
         [[listen]]\nport = {port}\nplugin = \"echo\"\n\n\
         [[connect]]\nhost = \"127.0.0.1\"\nport = {port}\nplugin = \"echo\"\ntimeout = \"5s\"\n",
        echo_wasm().display().to_string(),
        support::memory_line(),
    ));
    seed_runs_both_halves(&cfg, port);
}

/// The reactor threads a process runs: tokio's worker threads, which are
/// all its threads named `tokio-rt-worker` until a blocking task starts.
fn reactor_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tokio-rt-worker")
        .count()
}

/// `[host] threads` sets how many reactor threads run; one thread (Twisted's
/// model) serves connections like any other count.
#[test]
fn host_threads_sets_the_reactor_thread_count() {
    for threads in [1, 3] {
        let cfg = write_config(&format!(
            "[host]\nthreads = {threads}\n\n{}",
            support::server_config(&echo_wasm(), "")
        ));
        let mut server = spawn_run(&cfg, 1);
        assert_eq!(reactor_threads(server.child.id()), threads);
        let mut conns: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(server.addrs[0]).unwrap())
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("hello from {i} on {threads} thread(s)");
            c.write_all(msg.as_bytes()).unwrap();
            let mut got = vec![0; msg.len()];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg.as_bytes());
        }
        support::signal(&server.child, libc::SIGTERM);
        assert!(wait_exit(&mut server.child, Duration::from_secs(10)).success());
    }
}

/// Bad grants are each reported with file:line:column:key and a hint, all
/// at once, exit 2; good ones are listed by `twill check`.
#[test]
fn check_reports_bad_grants_and_lists_good_ones() {
    let wasm = support::repo().join("guests/portforward/portforward.wasm");
    let cfg = write_config(&format!(
        "[plugins.fwd]\ncomponent = {:?}\nconnect = [\"127.0.0.1\", \"*:80\", \"10.0.0.0/33:*\", 5]\nmax-outbound = 0\nenv = {{ A = 1 }}\n[[listen]]\nport = 0\nplugin = \"fwd\"\n",
        wasm.display().to_string()
    ));
    let (code, stdout, stderr) = run_to_end(&["check"], &cfg);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for expect in [
        ":3:12: plugins.fwd.connect[0]: \"127.0.0.1\": a grant is HOST:PORT",
        ":3:25: plugins.fwd.connect[1]: \"*:80\": * would let the guest reach any address",
        ":3:33: plugins.fwd.connect[2]: \"10.0.0.0/33:*\": \"10.0.0.0/33\" is not a network",
        ":3:50: plugins.fwd.connect[3]:",
        ":4:16: plugins.fwd.max-outbound:",
        ":5:13: plugins.fwd.env.A:",
    ] {
        assert!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 6, "{stderr}");

    let cfg = write_config(&format!(
        "[plugins.fwd]\ncomponent = {:?}\nconnect = [\"127.0.0.1:6379\", \"*.svc.cluster.local:443\"]\nmax-outbound = 7\n[plugins.echo]\ncomponent = {:?}\n[[listen]]\nport = 0\nplugin = \"fwd\"\n[[listen]]\nport = 0\nplugin = \"echo\"\n",
        wasm.display().to_string(),
        echo_wasm().display().to_string()
    ));
    let (code, stdout, stderr) = run_to_end(&["check"], &cfg);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "plugins.fwd: may connect to \"127.0.0.1:6379\", \"*.svc.cluster.local:443\" (max-outbound 7 per instance)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("plugins.echo: opens no connections"),
        "{stdout}"
    );
}

/// `twill new` writes a project offline, and refuses a bad name or a
/// non-empty directory with exit 2, writing nothing.
#[test]
fn twill_new_writes_a_project_or_refuses_with_a_hint() {
    let dir = support::scratch();
    for lang in ["rust", "python", "js"] {
        let target = dir.join(lang);
        let out = support::twill()
            .args(["new", lang, "hello-there", "--published", "--dir"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let readme = std::fs::read_to_string(target.join("README.md")).unwrap();
        assert!(readme.starts_with("# hello-there"), "{lang}: {readme}");
        let config = std::fs::read_to_string(target.join("plugins.toml")).unwrap();
        assert!(config.contains("[plugins.hello-there]"), "{lang}: {config}");
        // --published: no override to a checkout in the build files.
        for f in ["Cargo.toml", "requirements.txt", "package.json"] {
            if let Ok(text) = std::fs::read_to_string(target.join(f)) {
                assert!(!text.contains("guest-sdk"), "{lang} {f}: {text}");
            }
        }
        let again = support::twill()
            .args(["new", lang, "hello-there", "--dir"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(again.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists and is not empty"));
    }
    let bad = support::twill()
        .args(["new", "rust", "Bad Name", "--dir"])
        .arg(dir.join("bad"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hint: use lower-case letters"));
    assert!(!dir.join("bad").exists(), "nothing written");
}
