//! The `dcutr` command-line tool, as a library so that tests and the peer
//! command can use its parts:
//!
//! - [`relay`]: `dcutr relay`, a small **rendezvous helper** for demos, labs
//!   and two-machine trials (not a libp2p circuit relay): peers register by
//!   name, learn the TCP and UDP addresses the relay observed for them, and
//!   get their two TCP connections spliced into a relayed stream.
//! - [`rendezvous`]: the line-based JSON protocol the relay speaks, and its
//!   client side used by `dcutr peer`.
//! - [`report`]: human or `--json` output, shared by both commands.
//! - [`peer`]: `dcutr peer`, DCUtR over the relayed stream.
//!
//! The command-line arguments are defined here ([`Cli`]) so that the binary
//! and the tests parse them the same way.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::{ArgGroup, Args, Parser, Subcommand};

pub mod demo;
pub mod libp2p;
pub mod netcheck;
pub mod pairing;
pub mod peer;
pub mod relay;
pub mod rendezvous;
pub mod report;

/// Largest one-way relay delay in milliseconds (see [`relay::MAX_DELAY`]);
/// `dcutr demo --rtt-ms` takes twice this.
pub const MAX_DELAY_MS: u64 = relay::MAX_DELAY.as_millis() as u64;

/// `dcutr`: hole punching with libp2p DCUtR over a small rendezvous relay.
#[derive(Debug, Parser)]
#[command(name = "dcutr", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the rendezvous relay (a helper for demos and labs, NOT a libp2p
    /// circuit relay).
    ///
    /// Peers register by name over TCP and learn the TCP and UDP addresses
    /// the relay observed for them; one asks for another, and the relay
    /// splices their two TCP connections into a relayed stream. It speaks a
    /// small line-based JSON protocol of its own (see the dcutr-cli README),
    /// for demos, labs and two-machine trials: it is not a libp2p circuit
    /// relay and has no authentication.
    Relay(RelayArgs),
    /// Register at a relay, ask it for another peer or wait to be asked, and
    /// upgrade to a direct connection with DCUtR.
    ///
    /// Runs DCUtR over the relayed stream with the observed addresses,
    /// prints a timeline, then proves the direct path by a round trip of
    /// data. Exit code 0: upgraded; 1: the upgrade failed cleanly; other:
    /// error.
    Peer(PeerArgs),
    /// Run a relay and two peers on loopback in one process: upgrade over
    /// TCP and over QUIC by hole punching, send data both ways over each
    /// direct connection, print the timelines. No root needed; loopback
    /// has no NAT (see the NAT lab for the real thing).
    Demo(DemoArgs),
    /// Find what NAT this machine is behind with STUN: mapping, port
    /// allocation, filtering, the public addresses each server saw, and
    /// which hole-punching strategies that allows (like `tailscale
    /// netcheck`). Exit code 0: at least one server answered; 2: error.
    Netcheck(netcheck::NetcheckArgs),
    /// Hole-punch between rust-libp2p nodes through a libp2p circuit relay
    /// (v2): `relay`, `listen` (the spec's B), `dial` (A), with our DCUtR
    /// or `--stock` libp2p-dcutr.
    Libp2p(libp2p::Libp2pArgs),
}

/// Arguments of `dcutr demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Relayed round trip to simulate, in milliseconds (the relay holds
    /// each chunk half of it, each way).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=2 * MAX_DELAY_MS))]
    pub rtt_ms: u64,
}

/// Arguments of `dcutr relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address to listen on, TCP and UDP (port 0 picks a free port; the
    /// `listening` line tells which). On a host with several addresses, give
    /// the one peers use, so UDP answers leave from it.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// One JSON object per line on stdout (each with an "event" key).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dcutr peer`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("transport").required(true).multiple(true).args(["tcp", "quic"])))]
pub struct PeerArgs {
    /// The relay's address (`dcutr relay --listen`).
    #[arg(long, value_name = "ADDR")]
    pub relay: SocketAddr,
    /// Wait for a peer with this pairing code (we become DCUtR's B).
    /// Without it, and without --connect, a fresh code is made and printed
    /// first (in --json as the first event, `code`): give it to the peer.
    #[arg(long, value_name = "CODE", value_parser = parse_code, conflicts_with = "connect")]
    pub code: Option<pairing::Code>,
    /// Pair with the peer that waits with this code (we become DCUtR's A).
    #[arg(long, value_name = "CODE", value_parser = parse_code)]
    pub connect: Option<pairing::Code>,
    /// Hole-punch over TCP from this local port (also the port of our
    /// control connection to the relay, so the relay observes its mapping).
    #[arg(long, value_name = "PORT")]
    pub tcp: Option<u16>,
    /// Hole-punch over QUIC from this local UDP port.
    #[arg(long, value_name = "PORT")]
    pub quic: Option<u16>,
    /// Local IP to bind the punch sockets to.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// One JSON object per line on stdout (each with an "event" key; the last
    /// is the result).
    #[arg(long)]
    pub json: bool,
    /// A STUN server, HOST:PORT or HOST (port 3478), to learn our NAT's
    /// behaviour from the punch socket before the upgrade; repeat for more
    /// (two on different IPs, or one with RFC 5780, tell the mapping). The
    /// behaviour travels to the peer, and two NATs that cannot meet fail
    /// at once instead of punching into nothing (see `dcutr netcheck`).
    #[arg(long = "stun", value_name = "HOST:PORT", num_args = 1)]
    pub stun: Vec<String>,
    /// Which addresses we punch towards, and whether we dial first.
    #[command(flatten)]
    pub reach: ReachFlags,
}

/// The address policy and unilateral-dial flags that `dcutr peer` and
/// `dcutr libp2p listen|dial` share.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ReachFlags {
    /// Also send and punch towards private (RFC 1918, unique local)
    /// addresses.
    #[arg(long)]
    pub allow_private: bool,
    /// Also send and punch towards loopback addresses (tests and demos on
    /// one host).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Skip the unilateral direct dial to a peer that looks public and go
    /// straight to hole punching.
    #[arg(long)]
    pub no_unilateral: bool,
}

impl ReachFlags {
    /// `policy` widened by these flags (never narrowed).
    #[must_use]
    pub fn widen(self, mut policy: dcutr_core::AddressPolicy) -> dcutr_core::AddressPolicy {
        policy.allow_private |= self.allow_private;
        policy.allow_loopback |= self.allow_loopback;
        policy
    }
}

fn parse_code(code: &str) -> Result<pairing::Code, String> {
    pairing::Code::parse(code)
}

/// Runs `dcutr relay` with `config` (its `events` are set here): prints
/// the `listening` line, then every relay event, until the relay fails.
/// `config` is the default for `dcutr relay`; the NAT lab's fixture adds
/// a delay and a cut to it.
///
/// # Errors
/// When the listen address cannot be bound, or the relay fails.
pub async fn run_relay(
    args: &RelayArgs,
    mut config: relay::RelayConfig,
) -> anyhow::Result<std::process::ExitCode> {
    let reporter = report::Reporter::new(args.json);
    let listener = relay::RelayListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let (events, mut received) = tokio::sync::mpsc::channel(RELAY_EVENT_QUEUE);
    config.events = Some(events);
    reporter.listening(addr, config.delay.as_millis() as u64);
    tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            reporter.relay_event(&event);
        }
    });
    relay::run(listener, config).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Log filter when `RUST_LOG` is not set: our own progress at info, other
/// crates' warnings only.
pub const DEFAULT_LOG_FILTER: &str = "warn,dcutr_cli=info,dcutr=info";

/// Logs to stderr (never stdout, which holds the output lines), filtered by
/// `RUST_LOG` or [`DEFAULT_LOG_FILTER`].
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs a command on a multi-threaded tokio runtime; an error is reported
/// (also as an `error` line with `json`) and exits with
/// [`report::EXIT_ERROR`].
pub fn block_on_reporting(
    json: bool,
    command: impl std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
) -> std::process::ExitCode {
    let reporter = report::Reporter::new(json);
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::from(e).context("starting the tokio runtime"))
        .and_then(|runtime| runtime.block_on(command));
    outcome.unwrap_or_else(|e| {
        reporter.error(&e);
        std::process::ExitCode::from(report::EXIT_ERROR)
    })
}

/// Relay events queued for printing; beyond this (a flood of connections)
/// events are dropped rather than buffered without bound.
pub const RELAY_EVENT_QUEUE: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dcutr").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn peer_needs_a_transport_and_takes_both() {
        assert!(parse(&["peer", "--relay", "127.0.0.1:4000"]).is_err());
        let cli = parse(&[
            "peer",
            "--relay",
            "127.0.0.1:4000",
            "--connect",
            "1234-abcd-efgh",
            "--tcp",
            "5000",
            "--quic",
            "5001",
        ])
        .unwrap();
        let Command::Peer(args) = cli.command else {
            panic!("not peer")
        };
        assert_eq!(
            args.connect.map(|c| c.to_string()).as_deref(),
            Some("1234-abcd-efgh")
        );
        assert!(args.code.is_none());
        assert_eq!((args.tcp, args.quic), (Some(5000), Some(5001)));
        assert_eq!(args.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(!args.json && !args.reach.allow_private && !args.reach.allow_loopback);
    }

    #[test]
    fn waiting_and_connecting_at_once_is_refused() {
        let both = [
            "peer",
            "--relay",
            "127.0.0.1:1",
            "--code",
            "1-x",
            "--connect",
            "1-x",
            "--tcp",
            "1",
        ];
        assert!(parse(&both).is_err());
    }

    #[test]
    fn bad_codes_and_demo_delays_are_refused() {
        let bad = [
            "peer",
            "--relay",
            "127.0.0.1:1",
            "--code",
            "a b",
            "--tcp",
            "1",
        ];
        assert!(parse(&bad).is_err());
        assert!(parse(&["demo", "--rtt-ms", "100"]).is_ok());
        let too_long = (2 * MAX_DELAY_MS + 1).to_string();
        assert!(parse(&["demo", "--rtt-ms", &too_long]).is_err());
    }

    #[test]
    fn lab_fixtures_are_not_user_options() {
        // The NAT lab's knobs live in its own binary (natlab's lab-dcutr).
        let relay = ["relay", "--listen", "127.0.0.1:0"];
        for extra in [["--delay-ms", "50"], ["--cut-after-bytes", "93"]] {
            assert!(
                parse(&[&relay[..], &extra[..]].concat()).is_err(),
                "{extra:?}"
            );
        }
        let peer = ["peer", "--relay", "127.0.0.1:1", "--tcp", "1"];
        for extra in [["--runtime", "smol"], ["--name", "b"]] {
            assert!(
                parse(&[&peer[..], &extra[..]].concat()).is_err(),
                "{extra:?}"
            );
        }
        assert!(parse(&["demo", "--runtime", "smol"]).is_err());
    }
}
