//! `natlab`: a real-NAT lab for dcutr-rs.
//!
//! Builds Linux network namespaces joined by a bridge, NATs them with
//! nftables, optionally delays them with a user-space delay line, checks
//! itself with real traffic (`natlab selftest`) and drives the `dcutr` CLI
//! through a matrix of NAT pairs (`natlab matrix`) and broken networks
//! (`natlab broken`). See README.md.

mod birthday;
mod broken;
mod campaign;
mod cmd;
mod contract;
mod delayline;
mod libp2p;
mod matrix;
mod names;
mod nat;
mod probe;
mod proc;
mod rawsock;
mod selftest;
mod stats;
mod stun;
mod topo;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::nat::Site;
use crate::topo::{DelaySpec, Lab, TopologySpec};

/// Real-NAT lab for dcutr-rs.
#[derive(Debug, Parser)]
#[command(name = "natlab", version, about)]
struct Cli {
    /// More logs (repeat for more); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build topologies and check NAT, firewall, delay line and teardown with real traffic.
    Selftest(selftest::Args),
    /// Run the dcutr CLI through the NAT-pair matrix.
    Matrix(matrix::Args),
    /// Run the dcutr CLI on broken networks: packet loss, a relay that cuts
    /// the stream, a peer that vanishes; every run within a bound.
    Broken(broken::Args),
    /// Stock rust-libp2p DCUtR behind one cone NAT and ours (dcutr-libp2p)
    /// behind the other, both roles, over TCP and QUIC (`dcutr libp2p`).
    Libp2p(libp2p::Args),
    /// The birthday punch's raw datagrams through a hard and an easy NAT:
    /// how often and how fast they meet.
    Birthday(birthday::Args),
    /// Remove every leftover lab namespace (nlXXXXXX-*) and the processes in it.
    Cleanup,
    /// Build one topology, print its namespaces, hold it, tear it down.
    Up(Up),
    /// Measure topology build and teardown time.
    Timing {
        /// Topologies to build.
        #[arg(long, default_value_t = 10)]
        iterations: u32,
        /// Put delay lines in front of both sites.
        #[arg(long)]
        with_delay: bool,
    },
    /// Forward frames between two interfaces with a delay (runs inside a lab namespace).
    Delayline(Delayline),
    /// Traffic probes (run inside lab namespaces).
    #[command(subcommand)]
    Probe(Probe),
}

#[derive(Debug, clap::Args)]
struct Up {
    /// Site 1: cone, symmetric, full-cone, address-restricted (each also with
    /// -no-firewall), public.
    #[arg(long, default_value = "cone")]
    site1: Site,
    /// Site 2.
    #[arg(long, default_value = "cone")]
    site2: Site,
    /// One-way delay of a delay line in front of site 1 (none if absent).
    #[arg(long)]
    delay1_ms: Option<f64>,
    /// One-way delay of a delay line in front of site 2.
    #[arg(long)]
    delay2_ms: Option<f64>,
    /// How long to keep it up.
    #[arg(long, default_value_t = 0.0)]
    hold_s: f64,
}

#[derive(Debug, clap::Args)]
struct Delayline {
    /// First interface.
    #[arg(long)]
    a: String,
    /// Second interface.
    #[arg(long)]
    b: String,
    /// One-way delay in ms.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Uniform +/- jitter in ms (no reordering).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Drop probability per frame.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// RNG seed for jitter and loss.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum Probe {
    /// UDP server that answers each request with the source address it saw.
    UdpEcho {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Send one request to this address first (repeatable).
        #[arg(long)]
        hello: Vec<SocketAddr>,
        /// IP TTL of the hello requests (a priming packet's: it must pass
        /// our NAT and expire before the peer's).
        #[arg(long)]
        hello_ttl: Option<u32>,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = probe::SERVER_LIFETIME.as_secs())]
        lifetime_s: u64,
    },
    /// Send UDP requests to each destination from one socket; print RTTs and mappings.
    UdpPing(UdpPing),
    /// TCP server that writes the client's address and closes.
    TcpEcho {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = probe::SERVER_LIFETIME.as_secs())]
        lifetime_s: u64,
    },
    /// Connect to each destination from one local port; print the mapping seen.
    TcpConnect {
        /// Local address (fixes the source port).
        #[arg(long)]
        bind: SocketAddr,
        /// Destination (repeatable).
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        /// Per-connection timeout, ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// The birthday punch's hard side: many sockets, one prime each to
    /// `--to`, then answer probes.
    BirthdayHard {
        /// Local IP (each socket takes an ephemeral port).
        #[arg(long)]
        bind: IpAddr,
        /// The easy side's public address.
        #[arg(long)]
        to: SocketAddr,
        /// Number of sockets.
        #[arg(long, default_value_t = birthday::DEFAULT_SOCKETS)]
        sockets: u16,
        /// Exit after this many ms.
        #[arg(long, default_value_t = 10_000)]
        lifetime_ms: u64,
        /// Connects instead of datagrams.
        #[arg(long)]
        tcp: bool,
    },
    /// The birthday punch's easy side: paced probes to random ports of
    /// `--target` until one is answered; prints one JSON line.
    BirthdayEasy {
        /// Local address (fixes the source port).
        #[arg(long)]
        bind: SocketAddr,
        /// The hard side's public IP.
        #[arg(long)]
        target: IpAddr,
        /// Number of probes.
        #[arg(long, default_value_t = birthday::DEFAULT_PROBES)]
        probes: u32,
        /// Gap between probes, microseconds.
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
        /// Seed of the probe ports.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Connects instead of datagrams.
        #[arg(long)]
        tcp: bool,
    },
}

#[derive(Debug, clap::Args)]
struct UdpPing {
    /// Local address (fixes the source port).
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Destination (repeatable; pinged in order).
    #[arg(long, required = true)]
    to: Vec<SocketAddr>,
    /// Requests per destination.
    #[arg(long, default_value_t = 5)]
    count: u32,
    /// Gap between requests, ms.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Wait for late replies after the last request, ms.
    #[arg(long, default_value_t = 300)]
    linger_ms: u64,
    /// Exit 1 if some destination never answered.
    #[arg(long)]
    require_reply: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "natlab=info",
        1 => "natlab=debug",
        _ => "natlab=trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natlab: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `None` when labs can be built here (root, namespaces and, if `tools`,
/// every lab tool); else says why and gives the exit code: 0 without root
/// (the lab is skipped), 2 when root lacks tools (an error: run
/// scripts/install-natlab-tools.sh).
fn needs_root(tools: bool) -> Option<ExitCode> {
    if !cmd::can_build_labs() {
        println!("natlab: skipped (needs root)");
        return Some(ExitCode::SUCCESS);
    }
    let missing = if tools {
        cmd::missing_tools()
    } else {
        Vec::new()
    };
    if missing.is_empty() {
        return None;
    }
    eprintln!(
        "natlab: error: missing {} (install with scripts/install-natlab-tools.sh)",
        missing.join(", ")
    );
    Some(ExitCode::from(2))
}

impl Command {
    /// Whether the subcommand builds labs (the probes and the delay line
    /// run inside one).
    fn needs_root(&self) -> bool {
        !matches!(self, Command::Delayline(_) | Command::Probe(_))
    }
}

fn run(command: Command) -> Result<ExitCode> {
    if command.needs_root()
        && let Some(code) = needs_root(!matches!(command, Command::Cleanup))
    {
        return Ok(code);
    }
    match command {
        Command::Selftest(args) => selftest::run(&args),
        Command::Matrix(a) => campaign::run_with(a.common.clone(), a, contract::locate_dcutr),
        Command::Broken(a) => campaign::run_with(a.common.clone(), a, contract::locate_dcutr),
        Command::Libp2p(a) => campaign::run_with(a.common.clone(), a, libp2p::locate_dcutr),
        Command::Birthday(a) => birthday::run(&a),
        Command::Cleanup => {
            let removed = topo::cleanup_all()?;
            let list = removed.iter().map(|n| format!(" {n}")).collect::<String>();
            let sep = if removed.is_empty() { "" } else { ":" };
            println!("natlab: removed {} namespace(s){sep}{list}", removed.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(up) => {
            let mut spec = TopologySpec::new(up.site1, up.site2);
            spec.delay = [up.delay1_ms, up.delay2_ms].map(|d| d.map(DelaySpec::fixed));
            let prefix = names::RunNames::random().next_topology();
            let lab = Lab::build(&prefix, spec)?;
            let built = ms(lab.setup_time());
            println!("built in {built:.1} ms: {}", lab.namespaces().join(" "));
            std::thread::sleep(Duration::from_secs_f64(up.hold_s.max(0.0)));
            println!("torn down in {:.1} ms", ms(lab.teardown()?));
            Ok(ExitCode::SUCCESS)
        }
        Command::Timing {
            iterations,
            with_delay,
        } => {
            let t = selftest::measure_setup_teardown(iterations, with_delay)?;
            println!("{}", t.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Delayline(d) => {
            let params = delayline::Params::new(d.delay_ms, d.jitter_ms, d.loss, d.seed)?;
            delayline::run(&d.a, &d.b, params)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe(p) => run_probe(p),
    }
}

/// Prints each report as one JSON line.
fn print_json<T: serde::Serialize>(reports: &[T]) -> Result<()> {
    for r in reports {
        println!("{}", serde_json::to_string(r).context("serialising")?);
    }
    Ok(())
}

fn run_probe(p: Probe) -> Result<ExitCode> {
    let secs = Duration::from_secs;
    let millis = Duration::from_millis;
    match p {
        Probe::UdpEcho {
            listen,
            hello,
            hello_ttl,
            lifetime_s,
        } => probe::udp_echo(listen, &hello, hello_ttl, secs(lifetime_s))?,
        Probe::UdpPing(u) => {
            let (interval, linger) = (millis(u.interval_ms), millis(u.linger_ms));
            let reports = probe::udp_ping(u.bind, &u.to, u.count, interval, linger)?;
            print_json(&reports)?;
            if u.require_reply && reports.iter().any(|r| r.received == 0) {
                return Ok(ExitCode::from(1));
            }
        }
        Probe::TcpEcho { listen, lifetime_s } => probe::tcp_echo(listen, secs(lifetime_s))?,
        Probe::TcpConnect {
            bind,
            to,
            timeout_ms,
        } => print_json(&probe::tcp_connect(bind, &to, millis(timeout_ms))?)?,
        Probe::BirthdayHard {
            bind,
            to,
            sockets,
            lifetime_ms,
            tcp,
        } => {
            let hard = if tcp {
                birthday::hard_tcp
            } else {
                birthday::hard
            };
            hard(bind, to, sockets, millis(lifetime_ms))?
        }
        Probe::BirthdayEasy {
            bind,
            target,
            probes,
            interval_us,
            seed,
            tcp,
        } => {
            let interval = Duration::from_micros(interval_us);
            let easy = if tcp {
                birthday::easy_tcp
            } else {
                birthday::easy
            };
            print_json(&[easy(bind, target, probes, interval, seed)?])?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds of a duration, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A path to the natlab binary itself (probes and delay lines run it).
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the natlab binary")
}
