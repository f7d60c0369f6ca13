//! The `dcutr` binary: `dcutr relay`, `dcutr peer`, `dcutr demo` and
//! `dcutr netcheck` (see `dcutr --help`).

use std::process::ExitCode;

use clap::Parser;
use dcutr_cli::relay::RelayConfig;
use dcutr_cli::{Cli, Command, demo, netcheck, peer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    dcutr_cli::init_tracing();
    let json = match &cli.command {
        Command::Relay(args) => args.json,
        Command::Peer(args) => args.json,
        Command::Demo(_) => false,
        Command::Netcheck(args) => args.json,
        Command::Libp2p(args) => dcutr_cli::libp2p::wants_json(args),
    };
    dcutr_cli::block_on_reporting(json, async {
        match cli.command {
            Command::Relay(args) => dcutr_cli::run_relay(&args, RelayConfig::default()).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Netcheck(args) => netcheck::run(args).await,
            Command::Libp2p(args) => dcutr_cli::libp2p::run(args).await,
        }
    })
}
