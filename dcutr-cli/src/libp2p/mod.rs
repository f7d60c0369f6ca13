//! `dcutr libp2p`: hole punching between rust-libp2p nodes through a libp2p
//! circuit relay (v2), with our DCUtR (dcutr-libp2p) or, with `--stock`,
//! the reference `libp2p::dcutr`.
//!
//! ```text
//! dcutr libp2p relay  --listen /ip4/0.0.0.0/tcp/4001
//! dcutr libp2p listen --relay /ip4/198.51.100.7/tcp/4001/p2p/<relay id>
//! dcutr libp2p dial   --relay /ip4/198.51.100.7/tcp/4001/p2p/<relay id> --peer <listener id>
//! ```
//!
//! - `relay` runs a circuit relay v2 with identify and prints its full
//!   address (with `/p2p/`).
//! - `listen` is the spec's B: it holds a reservation at the relay and
//!   prints its peer id and relayed address, then waits for `--runs`
//!   relayed connections and upgrades each.
//! - `dial` is the spec's A: it dials the listener through the relay
//!   `--runs` times (closing every connection to it in between), upgrades
//!   each relayed connection, and prints the success rate and time to
//!   direct (p50, p90, max).
//! - `id --seed N` prints the peer id that `--seed N` gives.
//! - `listen` and `dial` take `--observer MA` (repeatable): more identify
//!   peers, so that ours classifies its NAT from two or more observers
//!   and declares it in Connect (the `nat` line and the result's `nat`).
//!
//! Peers speak TCP (noise, yamux; dials leave from the listening port, so
//! the relay observes the port the punch uses) and QUIC v1, with
//! identify, the relay client and ping. A run succeeds when a non-relayed
//! connection to the peer came up and a ping went over exactly that
//! connection. Output is a human timeline, or with `--json` one object per
//! line ending in one `result` line; `--metrics ADDR` serves Prometheus
//! text at `http://ADDR/metrics` (ours: dcutr-libp2p's `libp2p_holepunch_*`
//! families; stock records nothing there).
//!
//! Exit codes: 0 when every run made a direct connection, 1 when one did
//! not, 2 on a setup error (no relay, no reservation, a bad address).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde_json::{Value, json};

pub mod http;
mod node;
mod peer;
mod relay;
pub mod stats;

pub use node::Impl;

/// Exit code of a setup error (relay unreachable, no reservation, bad
/// address).
pub const EXIT_SETUP: u8 = 2;

/// Exit code when a run made no direct connection.
pub const EXIT_NO_DIRECT: u8 = 1;

/// Default limit of one upgrade, from the relayed connection (or, on the
/// dialer, from dialling through the relay) to its end: three failing
/// attempts of ours take about 30 s (10 s per step).
pub const DEFAULT_UPGRADE_TIMEOUT_S: f64 = 35.0;

/// Default time the listener waits for each relayed connection: long
/// enough to start the dialer by hand on another machine.
pub const DEFAULT_WAIT_S: f64 = 600.0;

/// Longest `--timeout-s`, `--wait-s` or `--metrics-hold-s`: one day.
const MAX_SECONDS: f64 = 86_400.0;

/// Most runs of one campaign: a day of back-to-back upgrades at about
/// 10 s each; beyond it, run several campaigns.
pub const MAX_RUNS: u32 = 10_000;

/// `dcutr libp2p` arguments.
#[derive(Debug, Clone, Args)]
pub struct Libp2pArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: Libp2pCommand,
}

/// The `dcutr libp2p` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Libp2pCommand {
    /// Run a libp2p circuit relay (v2) with identify; prints its full
    /// address with `/p2p/`.
    Relay(RelayArgs),
    /// Be the spec's B: hold a reservation at the relay, print our peer id
    /// and relayed address, and upgrade each relayed connection.
    Listen(ListenArgs),
    /// Be the spec's A: dial the listener through the relay and upgrade
    /// the relayed connection, `--runs` times.
    Dial(DialArgs),
    /// Print the peer id that `--seed N` gives.
    Id(IdArgs),
}

/// `dcutr libp2p relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Multiaddr to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` or
    /// `/ip4/0.0.0.0/udp/4001/quic-v1`; repeat for several.
    #[arg(long, value_name = "MULTIADDR", required = true)]
    pub listen: Vec<Multiaddr>,
    /// The address peers reach us at, handed out in reservations (default:
    /// the listening addresses); repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    pub external: Vec<Multiaddr>,
    /// Derive the key from this number (labs: fixed peer ids); default a
    /// fresh key.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// One JSON object per line on stdout (each with an "event" key).
    #[arg(long)]
    pub json: bool,
}

/// Options of both peers.
#[derive(Debug, Clone, Args)]
pub struct PeerOpts {
    /// The relay's address, ending in `/p2p/<relay id>` (as `dcutr libp2p
    /// relay` prints it).
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_relay_addr)]
    pub relay: Multiaddr,
    /// Another identify peer to connect to during setup, ending in
    /// `/p2p/<id>` (for example a second `dcutr libp2p relay`); repeat for
    /// several. With the relay, two observers of our listening sockets
    /// tell whether our NAT maps each destination to a new port
    /// (symmetric): ours then declares it in Connect, and two symmetric
    /// peers fail at once instead of timing out. The `nat` line shows what
    /// was detected.
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_relay_addr)]
    pub observer: Vec<Multiaddr>,
    /// Multiaddr to listen on (and punch from); repeat for several
    /// (default: `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Run stock `libp2p::dcutr` (the reference) instead of ours.
    #[arg(long)]
    pub stock: bool,
    /// Derive the key from this number (labs: fixed peer ids); default a
    /// fresh key.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Ours only: which addresses we send and dial, and whether we dial
    /// the peer's public addresses alongside the exchange.
    #[command(flatten)]
    pub reach: crate::ReachFlags,
    /// Limit of each upgrade in seconds, from the relayed connection to a
    /// direct connection pinged over.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_UPGRADE_TIMEOUT_S,
          value_parser = parse_seconds)]
    pub timeout_s: f64,
    /// One JSON object per line on stdout (each with an "event" key; the
    /// last is the result).
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (port 0 picks a
    /// free port; the `metrics` line tells which).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// After the result, keep serving `--metrics` until one scrape was
    /// answered or this many seconds passed.
    #[arg(long, value_name = "S", default_value_t = 0.0, value_parser = parse_seconds,
          requires = "metrics")]
    pub metrics_hold_s: f64,
}

/// `dcutr libp2p listen`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Relay, transports, output.
    #[command(flatten)]
    pub node: PeerOpts,
    /// Relayed connections to upgrade before exiting (a `dial --runs N`
    /// needs `listen --runs N`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_runs)]
    pub runs: u32,
    /// How long to wait for each relayed connection, in seconds.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_WAIT_S, value_parser = parse_seconds)]
    pub wait_s: f64,
}

/// `dcutr libp2p dial`.
#[derive(Debug, Clone, Args)]
pub struct DialArgs {
    /// Relay, transports, output.
    #[command(flatten)]
    pub node: PeerOpts,
    /// The listener's peer id (`dcutr libp2p listen` prints it).
    #[arg(long, value_name = "PEER_ID")]
    pub peer: PeerId,
    /// Upgrades to make, each over a fresh relayed connection (a
    /// measurement campaign: prints the success rate and time to direct).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_runs)]
    pub runs: u32,
}

/// `dcutr libp2p id`.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// The seed (`--seed` of the other commands).
    #[arg(long, value_name = "N")]
    pub seed: u64,
}

fn parse_relay_addr(s: &str) -> Result<Multiaddr, String> {
    let addr = Multiaddr::from_str(s).map_err(|e| format!("not a multiaddr: {e}"))?;
    if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        return Err(format!(
            "{addr} must end in /p2p/<relay id> (copy the address `dcutr libp2p relay` prints)"
        ));
    }
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return Err(format!(
            "{addr} is a relayed address; give the relay's own address"
        ));
    }
    Ok(addr)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!("expected 0 to {MAX_SECONDS} seconds"));
    }
    Ok(v)
}

fn parse_runs(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_RUNS).contains(&v) {
        return Err(format!("expected 1 to {MAX_RUNS} runs"));
    }
    Ok(v)
}

/// Whether `args` asked for JSON lines (for the error line of `main`).
#[must_use]
pub fn wants_json(args: &Libp2pArgs) -> bool {
    match &args.command {
        Libp2pCommand::Relay(a) => a.json,
        Libp2pCommand::Listen(a) => a.node.json,
        Libp2pCommand::Dial(a) => a.node.json,
        Libp2pCommand::Id(_) => false,
    }
}

/// Runs `dcutr libp2p`.
///
/// # Errors
/// Setup errors the command could not report in its own output.
pub async fn run(args: Libp2pArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Libp2pCommand::Id(a) => {
            println!("{}", node::keypair(Some(a.seed)).public().to_peer_id());
            Ok(ExitCode::SUCCESS)
        }
        Libp2pCommand::Relay(a) => relay::run(a).await,
        Libp2pCommand::Listen(a) => {
            peer::run(&a.node, peer::Role::Listen { wait_s: a.wait_s }, a.runs).await
        }
        Libp2pCommand::Dial(a) => {
            peer::run(&a.node, peer::Role::Dial { peer: a.peer }, a.runs).await
        }
    }
}

/// Prints events with the time since start: JSON lines, or a human
/// timeline (`   12.3 ms  event  key=value ...`).
#[derive(Debug, Clone, Copy)]
pub struct Out {
    start: Instant,
    json: bool,
}

impl Out {
    /// Output starting now.
    #[must_use]
    pub fn new(json: bool) -> Self {
        Out {
            start: Instant::now(),
            json,
        }
    }

    /// Time since start, ms, to 0.1 ms.
    fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e4).round() / 10.0
    }

    /// Prints `event` with `fields` (an object).
    pub fn emit(&self, event: &str, fields: Value) {
        println!("{}", self.line(event, fields));
    }

    /// Prints `text` in human mode only (summaries the JSON lines carry
    /// as fields already).
    pub fn human(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    fn line(&self, event: &str, mut fields: Value) -> String {
        let t = self.t_ms();
        if self.json {
            if let Value::Object(map) = &mut fields {
                map.insert("event".into(), event.into());
                map.insert("t_ms".into(), json!(t));
            }
            return fields.to_string();
        }
        let mut line = format!("{t:>9.1} ms  {event:<18}");
        if let Value::Object(map) = &fields {
            for (k, v) in map {
                match v {
                    Value::Null => {}
                    Value::String(s) => line.push_str(&format!(" {k}={s}")),
                    other => line.push_str(&format!(" {k}={other}")),
                }
            }
        }
        line
    }
}

/// A duration in ms, to 0.1 ms, for output.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Libp2pCommand,
    }

    fn parse(args: &[&str]) -> Result<Libp2pCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("libp2p").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    const RELAY: &str =
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    #[test]
    fn the_cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn dial_takes_the_relay_the_peer_and_runs_and_defaults_to_ours() {
        let peer = node::keypair(Some(2)).public().to_peer_id().to_string();
        let Libp2pCommand::Dial(d) = parse(&[
            "dial",
            "--relay",
            RELAY,
            "--peer",
            &peer,
            "--runs",
            "20",
            "--json",
            "--metrics",
            "127.0.0.1:0",
            "--listen",
            "/ip4/0.0.0.0/tcp/5000",
        ])
        .unwrap() else {
            panic!("not dial");
        };
        assert_eq!(d.runs, 20);
        assert_eq!(d.peer.to_string(), peer);
        assert!(!d.node.stock && d.node.json);
        assert_eq!(d.node.listen.len(), 1);
        assert_eq!(d.node.timeout_s, DEFAULT_UPGRADE_TIMEOUT_S);
        assert_eq!(d.node.metrics, Some("127.0.0.1:0".parse().unwrap()));
        assert!(
            parse(&["dial", "--relay", RELAY]).is_err(),
            "--peer is required"
        );
        assert!(parse(&["dial", "--relay", RELAY, "--peer", "nope"]).is_err());
    }

    #[test]
    fn the_relay_address_must_name_the_relay_and_not_be_relayed() {
        let e = parse(&["listen", "--relay", "/ip4/127.0.0.1/tcp/4001"]).unwrap_err();
        assert!(e.to_string().contains("must end in /p2p/<relay id>"), "{e}");
        let relayed = format!(
            "{RELAY}/p2p-circuit/p2p/{}",
            node::keypair(Some(2)).public().to_peer_id()
        );
        let e = parse(&["listen", "--relay", &relayed]).unwrap_err();
        assert!(e.to_string().contains("relayed address"), "{e}");
        let Libp2pCommand::Listen(l) = parse(&["listen", "--relay", RELAY, "--stock"]).unwrap()
        else {
            panic!("not listen");
        };
        assert!(l.node.stock);
        assert_eq!((l.runs, l.wait_s), (1, DEFAULT_WAIT_S));
    }

    #[test]
    fn runs_and_seconds_are_bounded_and_hold_needs_metrics() {
        assert!(parse(&["listen", "--relay", RELAY, "--runs", "0"]).is_err());
        let too_many = (MAX_RUNS + 1).to_string();
        assert!(parse(&["listen", "--relay", RELAY, "--runs", &too_many]).is_err());
        assert!(parse(&["listen", "--relay", RELAY, "--timeout-s", "-1"]).is_err());
        assert!(parse(&["listen", "--relay", RELAY, "--wait-s", "1e9"]).is_err());
        assert!(parse(&["listen", "--relay", RELAY, "--metrics-hold-s", "3"]).is_err());
        assert!(
            parse(&[
                "listen",
                "--relay",
                RELAY,
                "--metrics",
                "127.0.0.1:9464",
                "--metrics-hold-s",
                "3"
            ])
            .is_ok()
        );
    }

    #[test]
    fn relay_needs_a_listen_address_and_id_a_seed() {
        assert!(parse(&["relay"]).is_err());
        let Libp2pCommand::Relay(r) =
            parse(&["relay", "--listen", "/ip4/0.0.0.0/tcp/4001", "--seed", "1"]).unwrap()
        else {
            panic!("not relay");
        };
        assert_eq!((r.seed, r.listen.len()), (Some(1), 1));
        assert!(parse(&["id"]).is_err());
        assert!(matches!(
            parse(&["id", "--seed", "7"]).unwrap(),
            Libp2pCommand::Id(IdArgs { seed: 7 })
        ));
    }

    #[test]
    fn output_is_json_with_event_and_time_or_a_human_line() {
        let json = Out::new(true).line("reserved", json!({"peer_id": "12D3", "none": null}));
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event"], "reserved");
        assert_eq!(v["peer_id"], "12D3");
        assert!(v["t_ms"].as_f64().is_some());
        let human =
            Out::new(false).line("reserved", json!({"peer_id": "12D3", "n": 2, "none": null}));
        assert!(
            human.ends_with("ms  reserved           n=2 peer_id=12D3"),
            "{human:?}"
        );
    }
}
