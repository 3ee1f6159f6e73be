//! The `twill` command: a thin CLI over the library.
//!
//! Exit codes: 0 clean end; 1 runtime failure (such as a shutdown deadline
//! passed); 2 bad configuration, a component that does not fit, or a
//! listener that cannot bind; 130 forced by a second signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;
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
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  twill run                      serve ./plugins.toml until Ctrl-C
  twill run examples/echo.toml   serve another config
  twill check plugins.toml       validate the config and its components, bind nothing
  RUST_LOG=twill=debug twill run log every connection";

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every listener and connector in CONFIG; run until SIGINT or
    /// SIGTERM (or, with no listeners, until every connector finished).
    Run {
        /// The config file.
        #[arg(default_value = "plugins.toml")]
        config: PathBuf,
    },
    /// Parse CONFIG, load and type-check every component against its use,
    /// and bind nothing. Exits 0 if all is well, 2 otherwise.
    Check {
        /// The config file.
        #[arg(default_value = "plugins.toml")]
        config: PathBuf,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Loads and validates the config and its components, printing every error.
fn load(path: &std::path::Path) -> Result<(Config, Runtime), ExitCode> {
    let config = Config::load(path).map_err(|errs| {
        eprintln!("{errs}");
        ExitCode::from(2)
    })?;
    let runtime = Runtime::load(&config).map_err(|errs| {
        for e in errs {
            eprintln!("{e:#}");
        }
        ExitCode::from(2)
    })?;
    Ok((config, runtime))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twill: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Check { config } => {
            let _guard = rt.enter();
            match load(&config) {
                Ok((config, _)) => {
                    println!(
                        "{}: ok ({} plugin(s), {} listener(s), {} connector(s))",
                        config.path.display(),
                        config.plugins.len(),
                        config.listen.len(),
                        config.connect.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Run { config } => rt.block_on(run(config)),
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let (config, runtime) = match load(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let reactor = match Reactor::bind(config, runtime) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            if stop_tx.send(()).await.is_err() {
                return;
            }
        }
    });
    match reactor.run(stop_rx).await {
        RunEnd::Clean => ExitCode::SUCCESS,
        RunEnd::DeadlineExceeded => ExitCode::from(1),
        RunEnd::Forced => ExitCode::from(130),
    }
}
