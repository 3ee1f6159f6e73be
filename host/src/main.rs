//! The `twill` command: a thin CLI over the library.
//!
//! Exit codes: 0 clean end; 1 runtime failure (such as a shutdown deadline
//! passed); 2 bad configuration, a component that does not fit, or a
//! listener that cannot bind; 130 forced by a second signal.
//!
//! Signals (`twill run`): SIGINT or SIGTERM stop gracefully, a second one
//! forces the end; SIGHUP reloads the config (`docs/operations.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;
use twill::reactor::Control;
use twill::{Config, Reactor, RunEnd, Runtime};

/// Every connection allocates and frees its Store, instance and buffers;
/// mimalloc's per-thread free lists make that churn markedly cheaper than
/// glibc's arenas (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// A Twisted-style network reactor whose protocols are sandboxed
/// WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "twill", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log as text for people, or as JSON for log shippers (one object per
    /// line, with the structured fields; guest output too).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

const EXAMPLES: &str = "\
Examples:
  twill run                      serve ./plugins.toml until Ctrl-C
  twill run --watch              ... and reload when it or a component changes
  kill -HUP PID                  reload a running twill's config
  twill run examples/echo.toml   serve another config
  twill check plugins.toml       validate the config and its components, bind nothing
  twill new rust hello           start a guest project (rust, python or js)
  RUST_LOG=twill=debug twill run log every connection";

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every listener and connector in CONFIG; run until SIGINT or
    /// SIGTERM (or, with no listeners, until every connector finished).
    /// SIGHUP reloads CONFIG without dropping a connection.
    Run {
        /// The config file.
        #[arg(default_value = "plugins.toml")]
        config: PathBuf,
        /// Reload when CONFIG or a component it names changes (for
        /// development).
        #[arg(long)]
        watch: bool,
    },
    /// Parse CONFIG, load and type-check every component against its use,
    /// and bind nothing. Exits 0 if all is well, 2 otherwise.
    Check {
        /// The config file.
        #[arg(default_value = "plugins.toml")]
        config: PathBuf,
    },
    /// Write a new guest project: a line protocol with its build file, a
    /// test, a plugins.toml and a README saying how to build, test and run
    /// it. Works offline.
    New {
        /// The language.
        #[arg(value_enum)]
        lang: twill::new::Lang,
        /// The project's name (its package, plugin and component).
        name: String,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Point the project at this Twill checkout's SDKs (default: the
        /// checkout this binary was built from, if it is still there).
        #[arg(long, conflicts_with = "published")]
        sdk_path: Option<PathBuf>,
        /// Depend on the published SDK packages only.
        #[arg(long)]
        published: bool,
    },
}

/// `twill new`.
fn new_project(
    lang: twill::new::Lang,
    name: &str,
    dir: Option<PathBuf>,
    sdk_path: Option<PathBuf>,
    published: bool,
) -> ExitCode {
    use twill::new::{Sdk, generate, this_checkout};
    let sdk = match (sdk_path, published) {
        (Some(p), _) => Sdk::Checkout(std::path::absolute(&p).unwrap_or(p)),
        (None, false) => this_checkout().map_or(Sdk::Published, Sdk::Checkout),
        (None, true) => Sdk::Published,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match generate(lang, name, &dir, &sdk) {
        Ok(files) => {
            println!("wrote {} ({lang:?}):", dir.display());
            for f in files {
                println!("  {f}");
            }
            if let Sdk::Checkout(root) = &sdk {
                println!(
                    "its SDK dependency points at the Twill checkout {}",
                    root.display()
                );
            }
            println!(
                "next: cd {} and follow README.md (build, test, run)",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let spec = if default == "info" {
            "info,wasmtime=warn,cranelift=warn".to_string()
        } else {
            default.to_string()
        };
        EnvFilter::new(spec)
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Never blocks a reactor thread on a stalled stderr.
        .with_writer(twill::sink::StderrLog);
    match cli.log_format {
        LogFormat::Text => fmt.with_target(false).init(),
        LogFormat::Json => {
            twill::sink::set_guest_output_as_logs(true);
            fmt.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init()
        }
    }
}

/// Parses and validates the config file, printing every error.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| {
        eprintln!("{errs}");
        ExitCode::from(2)
    })
}

/// Loads and type-checks every component the config names, printing every
/// error. Runs inside the reactor's runtime.
fn load_components(config: &Config) -> Result<Runtime, ExitCode> {
    Runtime::load(config).map_err(|errs| {
        for e in errs {
            eprintln!("{e:#}");
        }
        ExitCode::from(2)
    })
}

/// The reactor's runtime: `[host] threads` worker threads (one per CPU by
/// default).
fn reactor_runtime(config: &Config) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.host.threads {
        b.worker_threads(n);
    }
    b.enable_all().build().map_err(|e| {
        eprintln!("twill: cannot start the tokio runtime: {e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let code = twill_main();
    // Bounded: a stalled stdout or stderr cannot hold up the exit.
    twill::sink::flush_at_exit();
    code
}

fn twill_main() -> ExitCode {
    // First, while this is the only thread: it edits the environment.
    let inherited = twill::listener::activation::take_from_env();
    let cli = Cli::parse();
    init_tracing(&cli);
    for (name, addr) in &inherited.sockets {
        tracing::info!(%addr, name = ?name, "the service manager passed a listening socket (LISTEN_FDS)");
    }
    for why in &inherited.rejected {
        tracing::warn!("ignoring a descriptor the service manager passed: {why}");
    }
    let path = match &cli.command {
        Command::New {
            lang,
            name,
            dir,
            sdk_path,
            published,
        } => return new_project(*lang, name, dir.clone(), sdk_path.clone(), *published),
        Command::Check { config } | Command::Run { config, .. } => config,
    };
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match reactor_runtime(&config) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { .. } => {
            let _guard = rt.enter();
            match load_components(&config) {
                Ok(_) => {
                    println!(
                        "{}: ok ({} plugin(s), {} listener(s), {} connector(s))",
                        config.path.display(),
                        config.plugins.len(),
                        config.listen.len(),
                        config.connect.len()
                    );
                    // Deny by default: say what each plugin may reach.
                    for (name, p) in &config.plugins {
                        if p.connect.is_empty() {
                            println!("  plugins.{name}: opens no connections");
                        } else {
                            println!(
                                "  plugins.{name}: may connect to {} (max-outbound {} per instance)",
                                p.connect
                                    .rules()
                                    .iter()
                                    .map(|g| format!("{:?}", g.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                p.limits.max_outbound
                            );
                        }
                    }
                    if let Some(addr) = config.host.metrics {
                        println!("  metrics: http://{addr}/metrics, /healthz, /readyz");
                    }
                    for (i, l) in config.listen.iter().enumerate() {
                        if let Some(tls) = &l.tls {
                            println!("  listen[{i}] (port {}): TLS: {}", l.port, tls.summary);
                        }
                    }
                    for (i, c) in config.connect.iter().enumerate() {
                        if let Some(tls) = &c.tls {
                            println!(
                                "  connect[{i}] ({}:{}): TLS: {}",
                                c.host, c.port, tls.summary
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Run { watch, .. } => rt.block_on(run(config, watch)),
        Command::New { .. } => unreachable!("handled before the config is loaded"),
    }
}

async fn run(config: Config, watch: bool) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed first: SIGHUP's default action would end the process while
    // the components load.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("twill: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let runtime = match load_components(&config) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let config_path = config.path.clone();
    let watched = watch.then(|| config.clone());
    let reactor = match Reactor::bind(config, runtime) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let (control, control_rx) = tokio::sync::mpsc::channel(4);
    if let Some(config) = watched
        && let Err(e) = twill::watch::spawn(&config, control.clone())
    {
        eprintln!("twill: cannot watch {}: {e}", config_path.display());
        return ExitCode::from(1);
    }
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received");
                    Control::Stop
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received");
                    Control::Stop
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config");
                    Control::Reload(None)
                }
            };
            if control.send(msg).await.is_err() {
                return;
            }
        }
    });
    match reactor.run(control_rx).await {
        RunEnd::Clean => ExitCode::SUCCESS,
        RunEnd::DeadlineExceeded => ExitCode::from(1),
        RunEnd::Forced => ExitCode::from(130),
    }
}
