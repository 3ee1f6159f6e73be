//! Shared helpers for the integration tests: component paths, an in-process
//! reactor on ephemeral loopback ports, and the `twill` binary as a child
//! process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twill::{Config, Reactor, RunEnd, Runtime};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The echo component under test.
pub fn echo_wasm() -> PathBuf {
    std::env::var_os("TWILL_ECHO_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("guest-echo/echo.wasm"))
}

/// The memory limit the echo component's tests give each instance: the
/// plugin's `memory` from env `TWILL_TEST_MEMORY` (a size such as `"96MiB"`),
/// or `None` for the host's default (16 MiB). The Rust echo fits the default;
/// interpreter guests (componentize-py, componentize-js) start with 9-13 MiB
/// of linear memory before they see any data, so `scripts/test-polyglot.sh`
/// raises it.
pub fn test_memory() -> Option<String> {
    std::env::var("TWILL_TEST_MEMORY")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// The limits for [`twill::testing::TestComponent::load_with`]: the host's
/// defaults, with the memory from [`test_memory`].
pub fn test_limits() -> twill::runtime::limits::Limits {
    let mut limits = twill::runtime::limits::Limits::default();
    if let Some(m) = test_memory() {
        let bytes = twill::config::parse_size(&m)
            .unwrap_or_else(|e| panic!("TWILL_TEST_MEMORY={m:?}: {e}"));
        limits.memory = usize::try_from(bytes).unwrap();
    }
    limits
}

/// The `memory = ...` line for a plugin table, from [`test_memory`] (empty
/// when unset).
pub fn memory_line() -> String {
    test_memory()
        .map(|m| format!("memory = {m:?}\n"))
        .unwrap_or_default()
}

/// The echo component under test, loaded into the test transport with
/// [`test_limits`].
pub fn load_echo() -> twill::testing::TestComponent {
    twill::testing::TestComponent::load_with(echo_wasm(), test_limits()).unwrap()
}

/// The fault/test-kit component.
/// The chat example component (`guests/chat`, committed).
pub fn chat_wasm() -> PathBuf {
    repo().join("guests/chat/chat.wasm")
}

pub fn testkit_wasm() -> PathBuf {
    std::env::var_os("TWILL_TESTKIT_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("guests/testkit/testkit.wasm"))
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "twill-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` as a config file in a scratch dir and returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let path = scratch().join("plugins.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A config that serves `wasm` on an ephemeral loopback port. Unless
/// `extra_plugin` sets one, the CPU limit is raised to 2s: the limit counts
/// wall-clock ticks while the guest runs, and a debug build under a parallel
/// test load is slow. For the echo component, unless `extra_plugin` sets
/// one, the memory limit is [`test_memory`]'s, if set.
pub fn server_config(wasm: &Path, extra_plugin: &str) -> String {
    let mut extra = if extra_plugin.contains("cpu") {
        extra_plugin.to_string()
    } else {
        format!("cpu = \"2s\"\n{extra_plugin}")
    };
    if !extra_plugin.contains("memory") && wasm == echo_wasm() {
        extra.insert_str(0, &memory_line());
    }
    let extra_plugin = extra.as_str();
    format!(
        "[plugins.p]\ncomponent = {:?}\n{extra_plugin}\n\n[[listen]]\nport = 0\nplugin = \"p\"\n",
        wasm.display().to_string()
    )
}

/// An in-process reactor.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub stop: mpsc::Sender<twill::reactor::Control>,
    /// The config file it runs (rewrite it, then [`Running::reload`]).
    pub path: PathBuf,
    /// The metrics endpoint, with `[host] metrics`.
    pub metrics: Option<SocketAddr>,
    pub task: JoinHandle<RunEnd>,
    pub stats: Vec<std::sync::Arc<twill::listener::ListenerStats>>,
    /// The plugin called `p`, if the config has one.
    pub plugin: Option<std::sync::Arc<twill::runtime::Plugin>>,
    /// Its shared pool, if it has shared instances.
    pub pool: Option<std::sync::Arc<twill::shared::SharedPool>>,
    /// Its outbound counters, if it has `connect` grants.
    pub outbound: Option<std::sync::Arc<twill::outbound::OutboundStats>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Rewrites its config file with `text` and reloads it.
    pub async fn reload(
        &self,
        text: &str,
    ) -> Result<twill::reactor::ReloadReport, twill::reactor::ReloadError> {
        std::fs::write(&self.path, text).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.stop
            .send(twill::reactor::Control::Reload(Some(tx)))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("reload answers")
            .unwrap()
    }

    /// Stops it and returns how the run ended.
    pub async fn shutdown(self) -> RunEnd {
        self.stop.send(twill::reactor::Control::Stop).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("reactor stops")
            .unwrap()
    }
}

/// One HTTP/1.1 GET over a raw socket (to the metrics endpoint): the whole
/// response, status line first.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp
}

/// Routes the library's logs to the test's captured output.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "twill=debug".into()))
        .with_test_writer()
        .try_init();
}

/// Starts a reactor from config text.
pub async fn start(config_text: &str) -> Running {
    logs();
    let path = write_config(config_text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let path = config.path.clone();
    let runtime = Runtime::load(&config).unwrap_or_else(|e| panic!("runtime: {e:?}"));
    let plugin = runtime.plugin("p");
    let reactor = Reactor::bind(config, runtime).unwrap();
    let pool = reactor.instances("p").and_then(|i| i.pool()).cloned();
    let outbound = reactor.outbound_stats("p").cloned();
    let addrs = reactor.listen_addrs();
    let stats = reactor.stats();
    let metrics = reactor.metrics_addr();
    let (stop, rx) = mpsc::channel(2);
    let task = tokio::spawn(reactor.run(rx));
    Running {
        path,
        metrics,
        addrs,
        stop,
        task,
        stats,
        plugin,
        pool,
        outbound,
    }
}

/// The `twill` binary built for this test run.
pub fn twill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twill"));
    c.env_remove("RUST_LOG");
    c
}

/// A running `twill run` child whose listeners' addresses were read from its
/// log.
pub struct Child2 {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub stdout: std::sync::Arc<std::sync::Mutex<String>>,
}

fn pump(r: impl std::io::Read + Send + 'static, into: std::sync::Arc<std::sync::Mutex<String>>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

/// Starts `twill run CONFIG` and waits until `listeners` listeners are up.
pub fn spawn_run(config: &Path, listeners: usize) -> Child2 {
    spawn_cmd(twill().arg("run").arg(config), listeners)
}

/// Starts a prepared `twill` command and waits until `listeners` listeners
/// are up.
pub fn spawn_cmd(cmd: &mut Command, listeners: usize) -> Child2 {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = pump_stderr(&mut child);
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    pump(child.stdout.take().unwrap(), stdout.clone());
    let addrs = wait_listening(&mut child, &stderr, listeners);
    Child2 {
        child,
        addrs,
        stderr,
        stdout,
    }
}

/// Collects a child's stderr, line by line, as it comes.
pub fn pump_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    pump(child.stderr.take().unwrap(), stderr.clone());
    stderr
}

/// Waits until the child's log (collected in `stderr`) shows `listeners`
/// listeners up, and returns their addresses.
pub fn wait_listening(
    child: &mut Child,
    stderr: &std::sync::Mutex<String>,
    listeners: usize,
) -> Vec<SocketAddr> {
    let start = Instant::now();
    loop {
        let addrs: Vec<SocketAddr> = stderr
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| l.split("addr=").nth(1))
            .filter_map(|a| {
                strip_ansi(a)
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse().ok())
            })
            .collect();
        if addrs.len() >= listeners {
            return addrs;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "twill exited early with {status}: {}",
                stderr.lock().unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "twill did not start: {}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address the child's log says `plugin` listens on.
pub fn listening_addr(stderr: &std::sync::Mutex<String>, plugin: &str) -> SocketAddr {
    let log = strip_ansi(&stderr.lock().unwrap());
    log.lines()
        .filter(|l| l.contains("listening") && l.contains(&format!("plugin={plugin} ")))
        .filter_map(|l| l.split("addr=").nth(1))
        .find_map(|a| a.split_whitespace().next().and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no listener for {plugin}: {log}"))
}

/// Removes ANSI colour codes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits for a child to exit, up to `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Asks the test kit to register as a producer writing 251 x 512-byte
/// bursts (so bursts continue the `i % 251` pattern seamlessly), and checks
/// that 20 bursts arrive intact: the host paused and resumed it.
pub async fn producer_streams(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let burst = 251 * 512;
    s.write_all(format!("produce {burst}\n").as_bytes())
        .await
        .unwrap();
    let mut got = vec![0u8; burst * 20];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got))
        .await
        .expect("the producer keeps producing")
        .unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

/// A line-oriented test-kit client.
pub struct Kit {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Kit {
    pub async fn connect(addr: SocketAddr) -> Kit {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Kit {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send(&mut self, cmd: &str) {
        self.w
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut l))
            .await
            .expect("a line arrives")
            .unwrap();
        l
    }

    pub async fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd).await;
        self.line().await
    }

    /// Asks `served` until the answer is `want` (connection teardown on the
    /// server runs after the client sees its end), and checks it got there.
    pub async fn served_becomes(&mut self, want: &str) {
        let mut got = String::new();
        for _ in 0..100 {
            got = self.ask("served").await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(got, want);
    }

    /// Waits for the server to end the connection (EOF or reset), without
    /// sending anything.
    pub async fn ended(&mut self) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), self.r.read_to_end(&mut rest))
            .await
            .is_ok()
    }

    /// Waits for the end of the connection: whether it was a clean EOF.
    pub async fn end(&mut self) -> Result<(), std::io::ErrorKind> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), self.r.read_to_end(&mut rest))
            .await
            .expect("the connection ends")
            .map(drop)
            .map_err(|e| e.kind())
    }
}

/// A throwaway CA and server certificate from scripts/make-test-cert.sh, in
/// a scratch dir (`server.pem`, `server.key`, `test-ca.pem`).
pub fn test_certs() -> PathBuf {
    let certs = scratch();
    let made = Command::new(repo().join("scripts/make-test-cert.sh"))
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    certs
}
