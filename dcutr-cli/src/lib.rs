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

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

pub mod demo;
pub mod libp2p;
pub mod netcheck;
pub mod pairing;
pub mod peer;
pub mod relay;
pub mod rendezvous;
pub mod report;

/// Largest `--delay-ms` (see [`relay::MAX_DELAY`]).
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
    /// Async runtime of both peers.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

/// Arguments of `dcutr relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address to listen on, TCP and UDP (port 0 picks a free port; the
    /// `listening` line tells which). On a host with several addresses, give
    /// the one peers use, so UDP answers leave from it.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Hold every forwarded chunk this many milliseconds (one way), so the
    /// relayed round trip grows by about twice this.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub delay_ms: u64,
    /// One JSON object per line on stdout (each with an "event" key).
    #[arg(long)]
    pub json: bool,
    /// FAULT INJECTION, for labs and tests only: close both connections of
    /// every relayed stream once N bytes were forwarded on it (both
    /// directions together), as a relay failing mid-protocol would. 0 closes
    /// them right after `paired`.
    #[arg(long, value_name = "N")]
    pub cut_after_bytes: Option<u64>,
}

/// The async runtime `dcutr peer` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// tokio, through `dcutr-tokio`.
    Tokio,
    /// smol, through `dcutr-async-std` (the recommended async-io runtime).
    Smol,
    /// async-std, through `dcutr-async-std` (async-std is discontinued
    /// upstream; prefer smol).
    AsyncStd,
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
    /// DEPRECATED, kept for one release: the name of the old interface.
    /// Waiting (without --connect) it is the code; with --connect it is
    /// ignored. A name has no secret part, so the relay could guess it:
    /// use --code or a generated code.
    #[arg(long, hide = true, value_parser = parse_name)]
    pub name: Option<String>,
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
    /// Also punch towards private (RFC 1918, unique local) addresses.
    #[arg(long)]
    pub allow_private: bool,
    /// Also punch towards loopback addresses (tests and demos on one host).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Skip the unilateral direct dial to a peer that looks public and go
    /// straight to hole punching.
    #[arg(long)]
    pub no_unilateral: bool,
    /// Async runtime to run on.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    pub runtime: Runtime,
}

fn parse_code(code: &str) -> Result<pairing::Code, String> {
    pairing::Code::parse(code)
}

fn parse_name(name: &str) -> Result<String, String> {
    rendezvous::validate_name(name)?;
    Ok(name.to_owned())
}

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
        assert!(args.code.is_none() && args.name.is_none());
        assert_eq!((args.tcp, args.quic), (Some(5000), Some(5001)));
        assert_eq!(args.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(args.runtime, Runtime::Tokio);
        assert!(!args.json && !args.allow_private && !args.allow_loopback);
    }

    #[test]
    fn the_old_name_interface_still_parses() {
        // natlab's invocation until it moves to codes.
        let Command::Peer(b) = parse(&[
            "peer",
            "--relay",
            "127.0.0.1:1",
            "--name",
            "b",
            "--tcp",
            "1",
        ])
        .unwrap()
        .command
        else {
            panic!("not peer")
        };
        assert_eq!(b.name.as_deref(), Some("b"));
        let a = parse(&[
            "peer",
            "--relay",
            "127.0.0.1:1",
            "--name",
            "a",
            "--connect",
            "b",
            "--tcp",
            "1",
        ]);
        assert!(a.is_ok());
        assert!(
            parse(&[
                "peer",
                "--relay",
                "127.0.0.1:1",
                "--code",
                "1-x",
                "--connect",
                "1-x",
                "--tcp",
                "1"
            ])
            .is_err(),
            "waiting and connecting at once"
        );
    }

    #[test]
    fn bad_names_codes_and_delays_are_refused() {
        assert!(
            parse(&[
                "peer",
                "--relay",
                "127.0.0.1:1",
                "--name",
                "a b",
                "--tcp",
                "1"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "peer",
                "--relay",
                "127.0.0.1:1",
                "--code",
                "a b",
                "--tcp",
                "1"
            ])
            .is_err()
        );
        assert!(parse(&["relay", "--listen", "127.0.0.1:0", "--delay-ms", "50"]).is_ok());
        assert!(parse(&["relay", "--listen", "127.0.0.1:0", "--delay-ms", "60001"]).is_err());
    }

    #[test]
    fn the_relay_cut_is_off_unless_asked_for() {
        let Command::Relay(args) = parse(&["relay", "--listen", "127.0.0.1:0"])
            .unwrap()
            .command
        else {
            panic!("not relay")
        };
        assert_eq!(args.cut_after_bytes, None);
        let Command::Relay(args) = parse(&[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--cut-after-bytes",
            "93",
        ])
        .unwrap()
        .command
        else {
            panic!("not relay")
        };
        assert_eq!(args.cut_after_bytes, Some(93));
        assert!(
            parse(&[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--cut-after-bytes",
                "-1"
            ])
            .is_err()
        );
    }
}
