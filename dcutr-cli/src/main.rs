//! The `dcutr` binary: `dcutr relay`, `dcutr peer`, `dcutr demo` and
//! `dcutr netcheck` (see `dcutr --help`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dcutr_cli::relay::{self, RelayConfig, RelayListener};
use dcutr_cli::report::{EXIT_ERROR, Reporter};
use dcutr_cli::{Cli, Command, RelayArgs, demo, netcheck, peer};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is not set: our own progress at info, other
/// crates' warnings only.
const DEFAULT_LOG_FILTER: &str = "warn,dcutr_cli=info,dcutr=info";

/// Relay events queued for printing; beyond this (a flood of connections)
/// events are dropped rather than buffered without bound.
const RELAY_EVENT_QUEUE: usize = 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let json = match &cli.command {
        Command::Relay(args) => args.json,
        Command::Peer(args) => args.json,
        Command::Demo(_) => false,
        Command::Netcheck(args) => args.json,
        Command::Libp2p(args) => dcutr_cli::libp2p::wants_json(args),
    };
    let reporter = Reporter::new(json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            reporter.error(&anyhow::Error::from(e).context("starting the tokio runtime"));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Relay(args) => run_relay(args, reporter).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Netcheck(args) => netcheck::run(args).await,
            Command::Libp2p(args) => dcutr_cli::libp2p::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            reporter.error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run_relay(args: RelayArgs, reporter: Reporter) -> anyhow::Result<ExitCode> {
    let listener = RelayListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let (events, mut received) = mpsc::channel(RELAY_EVENT_QUEUE);
    let config = RelayConfig {
        delay: Duration::from_millis(args.delay_ms),
        events: Some(events),
        cut_after_bytes: args.cut_after_bytes,
        ..RelayConfig::default()
    };
    if let Some(n) = args.cut_after_bytes {
        tracing::warn!(
            "fault injection: every relayed stream is cut after {n} bytes (--cut-after-bytes)"
        );
    }
    reporter.listening(addr, args.delay_ms);
    tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            reporter.relay_event(&event);
        }
    });
    relay::run(listener, config).await?;
    Ok(ExitCode::SUCCESS)
}
