//! `natlab broken`: the `dcutr` CLI on broken networks. Each run builds a
//! fresh cone/cone topology (A at site 1, B at site 2, as in the matrix) and
//! breaks one thing:
//!
//! - **loss**: a delay line with seeded packet loss on both routers' WAN side
//!   (10 % or 30 % per frame and direction, plus a small delay). The relayed
//!   control traffic is TCP and survives; the punch must retry or fail
//!   cleanly.
//! - **relay cut**: the relay (`dcutr relay --cut-after-bytes N`) closes the
//!   relayed stream right after B's first Connect reached A.
//! - **peer killed / frozen**: A is sent SIGKILL (its sockets close, the
//!   relay passes the close on) or SIGSTOP (it stays connected and silent,
//!   like a host that dropped off the network) as soon as it printed
//!   `peer_addrs`, i.e. once it has B's Connect; B is left alone.
//!
//! Every run is judged against a time bound computed from the core's
//! defaults ([`Bounds`]); nothing may run past it. See README.md.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use tracing::info;

use crate::contract::{self, PeerOutput};
use crate::matrix::{Outcome, PEER_PORT, PeerRun, RELAY_PORT, Transport, dcutr_args, locate_dcutr};
use crate::names::RunNames;
use crate::nat::Site;
use crate::proc::Proc;
use crate::stats::median;
use crate::topo::{DelaySpec, Lab, RELAY_IP, TopologySpec, site_public_ip};

/// Runs per case by default: enough to see a rate at a glance in about
/// five minutes on 2 shared cores; use `--runs 20` for the figures.
pub const DEFAULT_RUNS: u32 = 3;

/// Packet loss rates of the loss cases, in percent per frame and direction
/// on each router's WAN link (a direct packet crosses both links).
pub const LOSS_PERCENTS: [u32; 2] = [10, 30];

/// One-way delay of the lossy delay lines: a small WAN-like latency (the
/// direct RTT becomes ~40 ms, the relayed one ~40 ms) so that retransmit
/// timers and the RTT/2 punch timing see a real round trip.
pub const LOSS_LINK_DELAY_MS: f64 = 10.0;

/// Jitter (+/-, never reordering) of the lossy delay lines.
pub const LOSS_LINK_JITTER_MS: f64 = 2.0;

/// `dcutr peer`'s limit on the round trips that prove the path after the
/// upgrade (direct, or relayed after a failure): `PROOF_TIMEOUT` in
/// dcutr-cli/src/peer.rs. natlab treats the CLI as a black box, so it is
/// mirrored here rather than linked.
pub const CLI_PROOF_TIMEOUT: Duration = Duration::from_secs(30);

/// `dcutr peer`'s wait for QUIC close frames before exiting:
/// `QUIC_DRAIN_LIMIT` in dcutr-cli/src/peer.rs (mirrored, as above).
pub const CLI_QUIC_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long B may take to print `registered` before A is started anyway.
/// Longer than the matrix's 5 s: at 30 % loss a lost SYN to the relay
/// costs 1 s, two cost 3 s, and the UDP observe retries every 500 ms.
pub const PEER_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Time allowed before the upgrade starts (both peers registered and
/// paired), only for the runner's hang guard: the CLI's own limits are a
/// 10 s TCP connect and 10 s per reply from the relay.
pub const RENDEZVOUS_ALLOWANCE: Duration = Duration::from_secs(30);

/// How far past a bound the runner keeps waiting before it kills what
/// still runs: a peer over its bound is measured (and reported with its
/// real duration) rather than cut off exactly at the bound.
pub const OVERRUN_MARGIN: Duration = Duration::from_secs(10);

/// How often the runner polls the peers for their exit; also the
/// resolution of the measured durations.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long the runner lets the reader threads drain an exited peer's
/// pipes before parsing its output (as the matrix does).
const PIPE_DRAIN: Duration = Duration::from_millis(20);

/// How long the runner waits for the relay's `splice_closed` line after
/// the peers exited: the relay closes a cut splice at once, but prints
/// from another task.
const SPLICE_EVENT_WAIT: Duration = Duration::from_secs(2);

/// A's progress event printed when B's Connect arrived (A answers it in
/// the same step): the moment A vanishes in the peer cases.
pub const VANISH_HOOK_EVENT: &str = "peer_addrs";

/// The event each peer prints once the relay paired it: the upgrade starts.
pub const PAIRED_EVENT: &str = "paired";

/// B's progress event for A's Connect (it measured the relayed RTT): must
/// not appear when the relay was cut right after B's Connect.
pub const B_GOT_CONNECT_EVENT: &str = "rtt";

/// The core's outcome events (`dcutr peer` progress): after one of them,
/// the DCUtR upgrade itself is over and only the CLI's proof remains.
pub const CORE_OUTCOME_EVENTS: [&str; 2] = ["upgraded", "failed"];

/// The event `dcutr peer --json` prints before exiting with an error.
pub const ERROR_EVENT: &str = "error";

/// When one peer ended without ever being paired, the other cannot be
/// paired any more (B would wait for the relay's 10-minute pairing limit):
/// it is stopped after this, and the run counts as a rendezvous error.
pub const UNPAIRED_GRACE: Duration = Duration::from_secs(1);

/// The relay's event at the end of a splice, with the bytes it forwarded.
pub const SPLICE_CLOSED_EVENT: &str = "splice_closed";

/// Start of the core's reason when the relayed stream closed
/// (`Failure::RelayClosed`; a unit test ties it to dcutr-core).
pub const RELAY_CLOSED_REASON: &str = "relayed stream closed";

/// `natlab broken` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dcutr CLI (default: `dcutr` next to natlab, else on PATH).
    #[arg(long)]
    pub dcutr: Option<PathBuf>,
    /// Repeat each case this many times.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    pub runs: u32,
    /// Only cases whose name contains this (e.g. "loss30", "relay-cut", "quic").
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON record per run (and a summary) on stdout; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Base seed of the delay lines' loss and jitter (each run derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the lab diagnostics for every run, not only failing ones.
    #[arg(long)]
    pub always_diagnose: bool,
    /// Run id, 4 hex digits (default: random); see `natlab matrix --run-id`.
    #[arg(long, value_name = "HEX")]
    pub run_id: Option<String>,
}

/// The time limits every run is judged against, from the core's config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// The core's `step_timeout`: longest wait for one message.
    pub step_timeout: Duration,
    /// The core's `direct_timeout`: one attempt's direct phase.
    pub direct_timeout: Duration,
    /// The core's `max_attempts`.
    pub max_attempts: u8,
    /// Per peer, from its `paired` line to its exit: every attempt waits at
    /// most one step and one direct phase, then the CLI proves the path
    /// and drains QUIC.
    pub upgrade: Duration,
    /// Relay cut, per peer from `paired` to exit: the close must be noticed
    /// as a close, before any step could time out.
    pub relay_cut: Duration,
    /// Peer gone, from A vanishing to B's exit: the rest of one attempt (a
    /// step and a direct phase) and the relay proof.
    pub vanish: Duration,
}

impl Bounds {
    /// The bounds for `config` (the CLI runs `Config::shared_stream()`).
    pub fn from_config(config: &dcutr_core::Config) -> Self {
        let (step, direct) = (config.step_timeout, config.direct_timeout);
        let attempts = u32::from(config.max_attempts);
        Bounds {
            step_timeout: step,
            direct_timeout: direct,
            max_attempts: config.max_attempts,
            upgrade: (step + direct) * attempts + CLI_PROOF_TIMEOUT + CLI_QUIC_DRAIN_LIMIT,
            relay_cut: step,
            vanish: step + direct + CLI_PROOF_TIMEOUT,
        }
    }

    /// The bound a run of `fault` is judged against.
    pub fn for_fault(&self, fault: Fault) -> Duration {
        match fault {
            Fault::Loss { .. } => self.upgrade,
            Fault::RelayCut => self.relay_cut,
            Fault::PeerKilled | Fault::PeerFrozen => self.vanish,
        }
    }

    /// How each bound is made, for the output.
    pub fn explain(&self) -> String {
        let s = |d: Duration| format!("{:.0} s", d.as_secs_f64());
        format!(
            "bounds from dcutr-core Config::shared_stream() (= default timeouts): step_timeout {}, direct_timeout {}, max_attempts {}\n\
             - loss (per peer, paired -> exit):  {} x (step {} + direct {}) + CLI proof {} + QUIC drain {} = {}\n\
             - relay cut (per peer, paired -> exit): step {} = {} (the close must end it, not a timeout)\n\
             - peer gone (A vanished -> B exit): step {} + direct {} + CLI proof {} = {}\n\
             every run also: no peer still running {} after the other ended or vanished",
            s(self.step_timeout),
            s(self.direct_timeout),
            self.max_attempts,
            self.max_attempts,
            s(self.step_timeout),
            s(self.direct_timeout),
            s(CLI_PROOF_TIMEOUT),
            s(CLI_QUIC_DRAIN_LIMIT),
            s(self.upgrade),
            s(self.step_timeout),
            s(self.relay_cut),
            s(self.step_timeout),
            s(self.direct_timeout),
            s(CLI_PROOF_TIMEOUT),
            s(self.vanish),
            s(self.vanish),
        )
    }
}

/// What is broken in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Seeded loss on both WAN links.
    Loss {
        /// Per frame and direction, per link.
        percent: u32,
    },
    /// The relay closes the relayed stream right after B's first Connect.
    RelayCut,
    /// A is killed (SIGKILL) once it has B's Connect.
    PeerKilled,
    /// A is frozen (SIGSTOP) once it has B's Connect.
    PeerFrozen,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Loss { percent } => write!(f, "loss{percent}"),
            Fault::RelayCut => f.write_str("relay-cut-after-connect"),
            Fault::PeerKilled => f.write_str("peer-killed-after-connect"),
            Fault::PeerFrozen => f.write_str("peer-frozen-after-connect"),
        }
    }
}

/// Where an errored run went wrong (the first peer's error, by phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPhase {
    /// Before `paired`: registering at the relay or pairing (the CLI's
    /// rendezvous, not DCUtR).
    Rendezvous,
    /// Between `paired` and the core's outcome: the upgrade itself.
    Upgrade,
    /// After the core's outcome (`upgraded` / `failed`): the CLI's proof of
    /// the direct path or of the relay.
    Proof,
}

impl fmt::Display for ErrorPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorPhase::Rendezvous => "rendezvous",
            ErrorPhase::Upgrade => "upgrade",
            ErrorPhase::Proof => "proof",
        })
    }
}

/// The phase a peer that did not end cleanly was in.
fn phase_of(output: &PeerOutput) -> ErrorPhase {
    if !has_event(output, PAIRED_EVENT) {
        ErrorPhase::Rendezvous
    } else if CORE_OUTCOME_EVENTS.iter().any(|e| has_event(output, e)) {
        ErrorPhase::Proof
    } else {
        ErrorPhase::Upgrade
    }
}

/// One case: a fault on cone/cone with one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// What is broken.
    pub fault: Fault,
    /// Transport.
    pub transport: Transport,
}

impl Case {
    /// `loss30 cone/cone quic`.
    pub fn name(&self) -> String {
        format!("{} cone/cone {}", self.fault, self.transport)
    }
}

/// Every case, in table order.
pub fn all_cases() -> Vec<Case> {
    let faults = LOSS_PERCENTS
        .iter()
        .map(|&percent| Fault::Loss { percent })
        .chain([Fault::RelayCut, Fault::PeerKilled, Fault::PeerFrozen]);
    faults
        .flat_map(|fault| {
            [Transport::Tcp, Transport::Quic].map(|transport| Case { fault, transport })
        })
        .collect()
}

/// The relay's `--cut-after-bytes` for "right after B's first Connect":
/// both Hello frames (the token check) and B's Connect, which carries B's
/// one observed address, encoded as dcutr-core encodes them.
pub fn cut_after_connect(transport: Transport, b_observed: SocketAddr) -> u64 {
    use dcutr_core::Candidate;
    use dcutr_core::wire::{MAX_MESSAGE_SIZE, TOKEN_LEN, encode_connect, encode_hello};
    let max_attempts = dcutr_core::Config::shared_stream().max_attempts;
    let hello = encode_hello(&[0; TOKEN_LEN], max_attempts).len();
    let candidate = match transport {
        Transport::Tcp => Candidate::tcp(b_observed),
        Transport::Quic => Candidate::quic(b_observed),
    };
    let addr = candidate.to_multiaddr().to_vec();
    let (connect, carried) = encode_connect([addr.as_slice()], MAX_MESSAGE_SIZE);
    debug_assert_eq!(carried, 1);
    (2 * hello + connect.len()) as u64
}

/// The delay-line seeds of run `run` of case number `case` (sites 1, 2):
/// distinct per case, run and site, reproducible from `--seed`.
pub fn seeds(base: u64, case: usize, run: u32) -> [u64; 2] {
    let stem = base
        .wrapping_mul(1_000_003)
        .wrapping_add((case as u64) << 20)
        .wrapping_add(u64::from(run) << 4);
    [stem + 1, stem + 2]
}

/// When things happened in one run, relative to starting B.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Times {
    /// A printed `paired`.
    pub a_paired: Option<Duration>,
    /// B printed `paired`.
    pub b_paired: Option<Duration>,
    /// A exited (by itself; `None` if we stopped it or it never did).
    pub a_exit: Option<Duration>,
    /// B exited.
    pub b_exit: Option<Duration>,
    /// We killed or froze A.
    pub a_vanished: Option<Duration>,
}

/// Everything natlab saw of one run, before judging it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Peer A (its output; its exit code unless we stopped it).
    pub a: PeerRun,
    /// Peer B.
    pub b: PeerRun,
    /// When things happened.
    pub times: Times,
    /// The runner gave up waiting (a bound plus [`OVERRUN_MARGIN`]).
    pub timed_out: bool,
    /// Bytes the relay forwarded on the splice, if it reported them.
    pub relay_forwarded: Option<u64>,
    /// The relay's cut point, when the case cuts.
    pub cut_at: Option<u64>,
    /// A's and B's `error` event reasons, if they printed one.
    pub errors: [Option<String>; 2],
    /// The runner stopped a peer whose partner ended unpaired.
    pub stopped_unpaired: bool,
    /// Lab and runner problems.
    pub problems: Vec<String>,
}

/// One judged run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Case name.
    pub case: String,
    /// The fault.
    pub fault: Fault,
    /// Transport.
    pub transport: Transport,
    /// Run number within the case (1-based).
    pub run: u32,
    /// Delay-line seeds (sites 1 and 2), for the loss cases.
    pub seeds: Option<[u64; 2]>,
    /// How it ended (A stopped by us counts as planned).
    pub outcome: Outcome,
    /// Attempts (B's count, else A's).
    pub attempts: Option<u32>,
    /// A's failure reason.
    pub a_reason: Option<String>,
    /// B's failure reason.
    pub b_reason: Option<String>,
    /// Both peers printed the core's `upgraded` event: DCUtR itself
    /// upgraded, whatever the CLI did afterwards.
    pub core_upgraded: bool,
    /// For errors and timeouts: the phase the first troubled peer was in.
    pub error_phase: Option<ErrorPhase>,
    /// For errors: the `error` reasons the peers printed (A's, B's).
    pub errors: [Option<String>; 2],
    /// What is compared with the bound, ms (see [`Bounds`]).
    pub duration_ms: Option<f64>,
    /// The bound, ms.
    pub bound_ms: f64,
    /// From starting B until the run ended, ms.
    pub run_ms: f64,
    /// Timestamps.
    pub times: Times,
    /// Relay bytes forwarded / cut point.
    pub relay_forwarded: Option<u64>,
    /// The relay's cut point.
    pub cut_at: Option<u64>,
    /// Peer A.
    pub a: PeerRun,
    /// Peer B.
    pub b: PeerRun,
    /// Unmet expectations. Empty = PASS.
    pub violations: Vec<String>,
}

impl Record {
    /// Whether the run met its expectation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn ok(p: &PeerRun) -> bool {
    matches!((p.exit, &p.output.result), (Some(0), Some(r)) if r.ok)
}

fn failed_clean(p: &PeerRun) -> bool {
    matches!((p.exit, &p.output.result), (Some(1), Some(r)) if !r.ok)
}

fn has_event(output: &PeerOutput, name: &str) -> bool {
    output.events.iter().any(|e| e == name)
}

fn reason(p: &PeerRun) -> Option<String> {
    p.output.result.as_ref().and_then(|r| r.reason.clone())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Judge one run (pure: unit-tested without root).
pub fn evaluate(case: &Case, run: u32, bounds: &Bounds, seen: Observed) -> Record {
    let Observed {
        a,
        b,
        times,
        timed_out,
        relay_forwarded,
        cut_at,
        errors,
        stopped_unpaired,
        problems,
    } = seen;
    let bound = bounds.for_fault(case.fault);
    let a_stopped = times.a_vanished.is_some();
    let mut v = problems;
    // The contract, for every peer that ran to its end.
    for (who, p, ran) in [("A", &a, !a_stopped), ("B", &b, true)] {
        if !ran {
            continue;
        }
        v.extend(p.output.problems.iter().map(|e| format!("{who}: {e}")));
        match (p.exit, &p.output.result) {
            (Some(0), Some(r)) if !r.ok => v.push(format!("{who}: exit 0 but result ok=false")),
            (Some(1), Some(r)) if r.ok => v.push(format!("{who}: exit 1 but result ok=true")),
            (Some(code), _) if code != 0 && code != 1 => {
                v.push(format!("{who}: exit code {code} (error)"));
            }
            (None, _) if !timed_out && !stopped_unpaired => {
                v.push(format!("{who}: no exit code (killed by a signal)"));
            }
            _ => {}
        }
        if let Some(r) = &p.output.result
            && r.attempts > u32::from(bounds.max_attempts)
        {
            v.push(format!(
                "{who}: {} attempts, more than the configured {}",
                r.attempts, bounds.max_attempts
            ));
        }
    }
    if timed_out {
        v.push("timed out: a peer was still running past its bound and was killed".into());
    }
    if stopped_unpaired {
        v.push("a peer ended before being paired; the other was stopped".into());
    }
    let per_peer = |paired: Option<Duration>, exit: Option<Duration>| match (paired, exit) {
        (Some(p), Some(e)) => Some(e.saturating_sub(p)),
        _ => None,
    };
    let a_upgrade = per_peer(times.a_paired, times.a_exit);
    let b_upgrade = per_peer(times.b_paired, times.b_exit);

    let (outcome, duration) = match case.fault {
        Fault::Loss { .. } | Fault::RelayCut => {
            let outcome = if timed_out {
                Outcome::Timeout
            } else if ok(&a) && ok(&b) {
                Outcome::Upgraded
            } else if failed_clean(&a) && failed_clean(&b) {
                Outcome::FailedClean
            } else {
                if (ok(&a) && failed_clean(&b)) || (failed_clean(&a) && ok(&b)) {
                    v.push("peers disagree on the outcome".into());
                }
                Outcome::Error
            };
            for (who, paired, d) in [
                ("A", times.a_paired, a_upgrade),
                ("B", times.b_paired, b_upgrade),
            ] {
                if paired.is_none() {
                    v.push(format!(
                        "{who}: never printed {PAIRED_EVENT:?} (no upgrade ran)"
                    ));
                }
                if let Some(d) = d
                    && d > bound
                {
                    v.push(format!(
                        "{who}: {} from paired to exit, over the bound {}",
                        secs(d),
                        secs(bound)
                    ));
                }
            }
            (outcome, a_upgrade.max(b_upgrade))
        }
        Fault::PeerKilled | Fault::PeerFrozen => {
            let outcome = if timed_out {
                Outcome::Timeout
            } else if a_stopped && failed_clean(&b) {
                Outcome::FailedClean
            } else {
                Outcome::Error
            };
            if !a_stopped {
                v.push(format!(
                    "A was not stopped: it ended before printing {VANISH_HOOK_EVENT:?}"
                ));
            }
            if ok(&b) {
                v.push("B reports an upgrade with a peer that vanished".into());
            }
            let d = match (times.a_vanished, times.b_exit) {
                (Some(gone), Some(exit)) => Some(exit.saturating_sub(gone)),
                _ => None,
            };
            if let Some(d) = d
                && d > bound
            {
                v.push(format!(
                    "B: {} from A vanishing to its exit, over the bound {}",
                    secs(d),
                    secs(bound)
                ));
            }
            (outcome, d)
        }
    };

    match case.fault {
        Fault::Loss { .. } => {
            if !matches!(outcome, Outcome::Upgraded | Outcome::FailedClean) {
                v.push(format!(
                    "expected an upgrade or a clean failure, got {outcome}"
                ));
            }
        }
        Fault::RelayCut => {
            if outcome != Outcome::FailedClean {
                v.push(format!("expected a clean failure, got {outcome}"));
            }
            for (who, p) in [("A", &a), ("B", &b)] {
                let Some(r) = &p.output.result else { continue };
                if !r.ok
                    && !r
                        .reason
                        .as_deref()
                        .unwrap_or("")
                        .contains(RELAY_CLOSED_REASON)
                {
                    v.push(format!(
                        "{who}: reason {:?} does not say {RELAY_CLOSED_REASON:?}",
                        r.reason.as_deref().unwrap_or("")
                    ));
                }
                if r.relay_usable {
                    v.push(format!("{who}: relay_usable=true after the relay cut"));
                }
            }
            // The cut hit where it was meant to: A had B's Connect, B never
            // had A's, and the relay forwarded exactly the budget.
            if !has_event(&a.output, VANISH_HOOK_EVENT) {
                v.push(format!(
                    "A never printed {VANISH_HOOK_EVENT:?}: cut before B's Connect"
                ));
            }
            if has_event(&b.output, B_GOT_CONNECT_EVENT) {
                v.push(format!(
                    "B printed {B_GOT_CONNECT_EVENT:?}: A's Connect got through the cut"
                ));
            }
            if relay_forwarded != cut_at {
                v.push(format!(
                    "relay forwarded {relay_forwarded:?} bytes, the cut is at {cut_at:?}"
                ));
            }
        }
        Fault::PeerKilled | Fault::PeerFrozen => {
            if outcome != Outcome::FailedClean {
                v.push(format!("expected B to fail cleanly, got {outcome}"));
            }
        }
    }
    // The two state machines must agree; the CLI's proof comes later.
    let core_said = |p: &PeerRun| {
        CORE_OUTCOME_EVENTS
            .iter()
            .find(|e| has_event(&p.output, e))
            .copied()
    };
    let cores_disagree = !a_stopped
        && matches!(
            (core_said(&a), core_said(&b)),
            (Some(x), Some(y)) if x != y
        );
    if cores_disagree {
        v.push(format!(
            "the cores disagree: A's DCUtR {}, B's {} (a split outcome)",
            core_said(&a).unwrap_or_default(),
            core_said(&b).unwrap_or_default()
        ));
    }
    v.dedup();
    let error_phase = matches!(outcome, Outcome::Error | Outcome::Timeout)
        .then(|| {
            if cores_disagree {
                return Some(ErrorPhase::Upgrade);
            }
            [(&a, !a_stopped), (&b, true)]
                .into_iter()
                .filter(|(p, ran)| *ran && !ok(p) && !failed_clean(p))
                .map(|(p, _)| phase_of(&p.output))
                .min_by_key(|phase| *phase as u8)
        })
        .flatten();

    let run_ms = [times.a_exit, times.b_exit, times.a_vanished]
        .into_iter()
        .flatten()
        .max()
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Record {
        case: case.name(),
        fault: case.fault,
        transport: case.transport,
        run,
        seeds: None,
        outcome,
        attempts: b
            .output
            .result
            .as_ref()
            .or(a.output.result.as_ref())
            .map(|r| r.attempts),
        a_reason: reason(&a),
        b_reason: reason(&b),
        core_upgraded: [&a, &b]
            .iter()
            .all(|p| has_event(&p.output, CORE_OUTCOME_EVENTS[0])),
        error_phase,
        errors,
        duration_ms: duration.map(|d| d.as_secs_f64() * 1e3),
        bound_ms: bound.as_secs_f64() * 1e3,
        run_ms,
        times,
        relay_forwarded,
        cut_at,
        a,
        b,
        violations: v,
    }
}

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Case name.
    pub case: String,
    /// Runs made.
    pub runs: usize,
    /// Runs that upgraded.
    pub upgraded: usize,
    /// Runs in which the core upgraded on both peers.
    pub core_upgraded: usize,
    /// Runs that failed cleanly.
    pub failed_clean: usize,
    /// Errors and timeouts.
    pub errors: usize,
    /// Median of what is compared with the bound, s.
    pub median_s: Option<f64>,
    /// Maximum of it, s.
    pub max_s: Option<f64>,
    /// The bound, s.
    pub bound_s: f64,
    /// PASS or FAIL (n/N).
    pub verdict: String,
    /// Failure reasons seen, with counts.
    pub reasons: Vec<(String, usize)>,
}

/// What the table lists for a run that did not upgrade: the failure
/// reason (B's, else A's), or for an error its phase and what the peers or
/// the runner said.
fn note(r: &Record) -> Option<String> {
    if let Some(split) = r
        .violations
        .iter()
        .find(|v| v.starts_with("the cores disagree"))
    {
        return Some(format!("{} in the upgrade phase: {split}", r.outcome));
    }
    if let Some(phase) = r.error_phase {
        let said = r.errors[1]
            .clone()
            .or_else(|| r.errors[0].clone())
            .or_else(|| r.violations.first().cloned())
            .unwrap_or_default();
        return Some(format!("{} in the {phase} phase: {said}", r.outcome));
    }
    if matches!(r.outcome, Outcome::Error | Outcome::Timeout) {
        return Some(format!(
            "{}: {}",
            r.outcome,
            r.violations.first().cloned().unwrap_or_default()
        ));
    }
    r.b_reason.clone().or_else(|| r.a_reason.clone())
}

/// Group records by case, in first-seen order.
pub fn aggregate(records: &[Record]) -> Vec<Row> {
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.case.as_str()) {
            order.push(&r.case);
        }
    }
    order
        .into_iter()
        .map(|case| {
            let runs: Vec<&Record> = records.iter().filter(|r| r.case == case).collect();
            let count = |o: Outcome| runs.iter().filter(|r| r.outcome == o).count();
            let durations: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.duration_ms.map(|d| d / 1e3))
                .collect();
            let failed = runs.iter().filter(|r| !r.passed()).count();
            let mut reasons: Vec<(String, usize)> = Vec::new();
            for r in &runs {
                let Some(text) = note(r) else {
                    continue;
                };
                match reasons.iter_mut().find(|(t, _)| *t == text) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((text, 1)),
                }
            }
            Row {
                case: case.to_owned(),
                runs: runs.len(),
                upgraded: count(Outcome::Upgraded),
                core_upgraded: runs.iter().filter(|r| r.core_upgraded).count(),
                failed_clean: count(Outcome::FailedClean),
                errors: count(Outcome::Error) + count(Outcome::Timeout),
                median_s: median(&durations),
                max_s: durations.iter().copied().reduce(f64::max),
                bound_s: runs[0].bound_ms / 1e3,
                verdict: if failed == 0 {
                    "PASS".into()
                } else {
                    format!("FAIL ({failed}/{})", runs.len())
                },
                reasons,
            }
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

/// The table, GitHub-flavoured Markdown, with the reasons seen below it.
pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | runs | upgraded | core upgraded | failed-clean | errors | median duration s | max duration s | bound s | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = [
            r.case.replace('|', "\\|"),
            r.runs.to_string(),
            format!("{}/{}", r.upgraded, r.runs),
            format!("{}/{}", r.core_upgraded, r.runs),
            r.failed_clean.to_string(),
            r.errors.to_string(),
            num(r.median_s),
            num(r.max_s),
            format!("{:.0}", r.bound_s),
            r.verdict.clone(),
        ];
        out.push_str("| ");
        out.push_str(&cells.join(" | "));
        out.push_str(" |\n");
    }
    out.push_str(
        "\nupgraded: both peers exited 0 (the CLI proved the direct path); core upgraded: both peers' \
         DCUtR reported `upgraded`. duration: loss and relay-cut cases, the longest of the two peers' \
         time from `paired` to exit; peer cases, from A vanishing to B's exit.\n",
    );
    let with_reasons: Vec<&Row> = rows.iter().filter(|r| !r.reasons.is_empty()).collect();
    if !with_reasons.is_empty() {
        out.push_str("\nnot upgraded, by reason (B's, else A's; errors by phase: rendezvous = before `paired`, upgrade = DCUtR itself, proof = the CLI's round trips after the core's outcome):\n");
        for r in with_reasons {
            for (text, n) in &r.reasons {
                out.push_str(&format!("- {}: {n}x {text}\n", r.case));
            }
        }
    }
    out
}

/// Run the broken-network cases.
pub fn run(args: &Args) -> Result<ExitCode> {
    let dcutr = locate_dcutr(args.dcutr.as_deref())?;
    let bounds = Bounds::from_config(&dcutr_core::Config::shared_stream());
    let cases: Vec<(usize, Case)> = all_cases()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| args.filter.as_deref().is_none_or(|f| c.name().contains(f)))
        .collect();
    if cases.is_empty() {
        bail!(
            "no case matches the filter {:?}",
            args.filter.as_deref().unwrap_or("")
        );
    }
    let explained = bounds.explain();
    if args.json {
        eprintln!("{explained}");
    } else {
        println!("{explained}\n");
    }
    info!(dcutr = %dcutr.display(), cases = cases.len(), runs = args.runs, "broken networks");
    let started = Instant::now();
    let mut names = RunNames::from_arg(args.run_id.as_deref())?;
    let mut records = Vec::new();
    for (index, case) in &cases {
        for run in 1..=args.runs.max(1) {
            let seeds =
                matches!(case.fault, Fault::Loss { .. }).then(|| seeds(args.seed, *index, run));
            let record = run_case(&dcutr, case, run, seeds, &bounds, args, &mut names);
            info!(
                case = %record.case, run, outcome = %record.outcome,
                verdict = if record.passed() { "PASS" } else { "FAIL" },
                duration_s = record.duration_ms.map(|d| d / 1e3),
                "run finished"
            );
            if args.json {
                println!("{}", serde_json::to_string(&record)?);
            }
            records.push(record);
        }
    }
    let total = started.elapsed();
    let table = render_markdown(&aggregate(&records));
    let batch = crate::batch::Batch {
        kind: "broken",
        groups_name: "cases",
        groups: cases.len(),
        runs_per_group: args.runs.max(1),
        runs: records.len(),
        failed: records.iter().filter(|r| !r.passed()).count(),
        total,
        run_prefix: names.run_prefix(),
    };
    let mut extra = serde_json::Map::new();
    extra.insert(
        "bounds_s".into(),
        serde_json::json!({"upgrade": bounds.upgrade.as_secs_f64(),
                           "relay_cut": bounds.relay_cut.as_secs_f64(),
                           "vanish": bounds.vanish.as_secs_f64()}),
    );
    batch.finish(
        &table,
        args.json,
        extra,
        args.markdown.as_deref(),
        Some(&explained),
    )
}

fn topology_for(case: &Case, seeds: Option<[u64; 2]>) -> TopologySpec {
    let mut spec = TopologySpec::new(Site::CONE, Site::CONE);
    if let (Fault::Loss { percent }, Some(seeds)) = (case.fault, seeds) {
        for (slot, seed) in spec.delay.iter_mut().zip(seeds) {
            *slot = Some(DelaySpec {
                delay_ms: LOSS_LINK_DELAY_MS,
                jitter_ms: LOSS_LINK_JITTER_MS,
                loss: f64::from(percent) / 100.0,
                seed,
            });
        }
    }
    spec
}

/// One run in a fresh topology; lab errors become a failing record.
fn run_case(
    dcutr: &Path,
    case: &Case,
    run: u32,
    seeds: Option<[u64; 2]>,
    bounds: &Bounds,
    args: &Args,
    names: &mut RunNames,
) -> Record {
    let prefix = names.next_topology();
    let lab = match Lab::build(&prefix, topology_for(case, seeds)) {
        Ok(lab) => lab,
        Err(e) => {
            let seen = Observed {
                problems: vec![format!("lab: {e:#}")],
                ..Observed::default()
            };
            let mut r = evaluate(case, run, bounds, seen);
            r.outcome = Outcome::Error;
            r.seeds = seeds;
            eprintln!(
                "===== {} run {run}: FAIL (lab could not be built) =====\n{e:#}",
                r.case
            );
            return r;
        }
    };
    let (seen, procs) = drive(dcutr, case, bounds, &lab);
    let mut record = evaluate(case, run, bounds, seen);
    record.seeds = seeds;
    if !record.passed() || args.always_diagnose {
        let verdict = if record.passed() { "PASS" } else { "FAIL" };
        let mut text = format!(
            "===== {} run {run}: {verdict} ({}) =====\n",
            record.case, record.outcome
        );
        if let Some(s) = seeds {
            text.push_str(&format!("  delay-line seeds: {} {}\n", s[0], s[1]));
        }
        for v in &record.violations {
            text.push_str(&format!("  - {v}\n"));
        }
        text.push_str(&lab.diagnostics());
        for p in &procs {
            text.push_str(&p.dump());
        }
        eprintln!("{text}");
    }
    drop(procs);
    if let Err(e) = lab.teardown() {
        record.violations.push(format!("lab teardown: {e:#}"));
    }
    record
}

/// When the JSON event `name` first appeared in `lines`, after `since`.
fn first_event(lines: &[(Instant, String)], name: &str, since: Instant) -> Option<Duration> {
    lines
        .iter()
        .find(|(_, l)| contract::is_event(l, name))
        .map(|(t, _)| t.saturating_duration_since(since))
}

/// The reason of the peer's `error` event, if it printed one.
fn error_reason(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        let (name, v) = contract::parse_event(l).ok()?;
        (name == ERROR_EVENT).then(|| v["reason"].as_str().unwrap_or("").to_owned())
    })
}

/// Bytes the relay says it forwarded on the (only) splice.
fn splice_bytes(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|l| {
        let (name, v) = contract::parse_event(l).ok()?;
        (name == SPLICE_CLOSED_EVENT).then(|| {
            v["to_initiator"].as_u64().unwrap_or(0) + v["to_responder"].as_u64().unwrap_or(0)
        })
    })
}

/// Start relay, B, A; break what the case breaks; wait within the bounds.
/// Returns the processes so their logs can be shown before teardown.
fn drive(dcutr: &Path, case: &Case, bounds: &Bounds, lab: &Lab) -> (Observed, Vec<Proc>) {
    let exe = dcutr.to_string_lossy().into_owned();
    let relay_addr = format!("{RELAY_IP}:{RELAY_PORT}");
    let port = PEER_PORT.to_string();
    let transport_flag = match case.transport {
        Transport::Tcp => "--tcp",
        Transport::Quic => "--quic",
    };
    let mut seen = Observed::default();
    let mut procs: Vec<Proc> = Vec::new();

    let mut relay_args = dcutr_args(&["relay", "--listen", &relay_addr, "--json"]);
    if case.fault == Fault::RelayCut {
        let b_observed = SocketAddr::new(site_public_ip(2, Site::CONE).into(), PEER_PORT);
        let n = cut_after_connect(case.transport, b_observed);
        seen.cut_at = Some(n);
        relay_args.extend(dcutr_args(&["--cut-after-bytes", &n.to_string()]));
    }
    match lab.spawn("relay", &lab.relay_ns(), &exe, &relay_args) {
        Ok(p) => procs.push(p),
        Err(e) => {
            seen.problems.push(format!("relay: {e:#}"));
            return (seen, procs);
        }
    }
    if let Err(e) = procs[0].wait_for_line(
        Instant::now() + crate::matrix::RELAY_READY_TIMEOUT,
        "listening event",
        |l| contract::is_event(l, contract::RELAY_LISTENING_EVENT),
    ) {
        seen.problems.push(format!("relay: {e:#}"));
        return (seen, procs);
    }

    let peer_args = |name: &str, connect: Option<&str>| {
        let mut v = dcutr_args(&["peer", "--relay", &relay_addr, "--name", name]);
        if let Some(other) = connect {
            v.extend(dcutr_args(&["--connect", other]));
        }
        v.extend(dcutr_args(&[transport_flag, &port, "--json"]));
        v
    };
    let started = Instant::now();
    let bound = bounds.for_fault(case.fault);
    // The hang guard: registration, the bound, and the margin.
    let deadline = started + RENDEZVOUS_ALLOWANCE + bounds.upgrade.max(bound) + OVERRUN_MARGIN;
    match lab.spawn("peer B", &lab.host_ns(2), &exe, &peer_args("b", None)) {
        Ok(p) => procs.push(p),
        Err(e) => {
            seen.problems.push(format!("peer B: {e:#}"));
            return (seen, procs);
        }
    }
    if let Err(e) = procs[1].wait_for_line(
        (Instant::now() + PEER_READY_TIMEOUT).min(deadline),
        "registered event",
        |l| contract::is_event(l, contract::PEER_REGISTERED_EVENT),
    ) {
        if matches!(procs[1].try_wait(), Ok(Some(_))) {
            // B is gone without registering: A could only wait for it.
            seen.problems.push(format!("B: {e:#} (A not started)"));
            seen.stopped_unpaired = true;
            seen.times.b_exit = Some(started.elapsed());
            // Let the reader thread drain B's pipe.
            std::thread::sleep(PIPE_DRAIN);
            seen.b = PeerRun {
                exit: procs[1].try_wait().ok().flatten().and_then(|s| s.code()),
                output: contract::parse_output(&procs[1].stdout_lines()),
            };
            seen.errors[1] = error_reason(&procs[1].stdout_lines());
            return (seen, procs);
        }
        seen.problems.push(format!("B: {e:#} (started A anyway)"));
    }
    match lab.spawn("peer A", &lab.host_ns(1), &exe, &peer_args("a", Some("b"))) {
        Ok(p) => procs.push(p),
        Err(e) => {
            seen.problems.push(format!("peer A: {e:#}"));
            return (seen, procs);
        }
    }

    if matches!(case.fault, Fault::PeerKilled | Fault::PeerFrozen) {
        let hooked = procs[2].wait_for_line(deadline, "peer_addrs event", |l| {
            contract::is_event(l, VANISH_HOOK_EVENT)
        });
        if hooked.is_ok() {
            let gone = started.elapsed();
            if case.fault == Fault::PeerKilled {
                procs[2].kill();
                seen.times.a_vanished = Some(gone);
            } else {
                match procs[2].signal(Signal::SIGSTOP) {
                    Ok(()) => seen.times.a_vanished = Some(gone),
                    Err(e) => seen.problems.push(format!("freezing A: {e:#}")),
                }
            }
        }
    }

    // Wait for the peers, within the bounds: once one peer is gone (exited
    // or vanished), the other gets the vanish bound plus the margin.
    let mut exits: [Option<Duration>; 2] = [None, None]; // B, A
    let mut timed_out = false;
    // Whether some peer printed `paired` (checked once one peer is gone).
    let mut paired_any = false;
    loop {
        for (slot, proc) in exits.iter_mut().zip(procs[1..].iter_mut()) {
            if slot.is_none() {
                match proc.try_wait() {
                    Ok(Some(_)) => *slot = Some(started.elapsed()),
                    Ok(None) => {}
                    Err(e) => {
                        seen.problems.push(format!("{e:#}"));
                        *slot = Some(started.elapsed());
                    }
                }
            }
        }
        let a_gone = exits[1].or(seen.times.a_vanished);
        if exits[0].is_some() && a_gone.is_some() {
            break;
        }
        let first_gone = [exits[0], a_gone].into_iter().flatten().min();
        let limit = match first_gone {
            Some(t) => deadline.min(started + t + bounds.vanish + OVERRUN_MARGIN),
            None => deadline,
        };
        if let Some(t) = first_gone
            && !paired_any
            && started.elapsed() >= t + UNPAIRED_GRACE
        {
            paired_any = procs[1..].iter().any(|p| {
                p.stdout_lines()
                    .iter()
                    .any(|l| contract::is_event(l, PAIRED_EVENT))
            });
            if !paired_any {
                // Nobody was paired and one peer is gone: the other can
                // only wait for the relay's pairing limit.
                seen.stopped_unpaired = true;
                break;
            }
        }
        if Instant::now() >= limit {
            timed_out = true;
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    seen.timed_out = timed_out;
    seen.times.b_exit = exits[0];
    seen.times.a_exit = if seen.times.a_vanished.is_some() {
        None
    } else {
        exits[1]
    };
    if let Ok(Some(status)) = procs[0].try_wait() {
        seen.problems
            .push(format!("relay exited during the run ({status})"));
    }
    if case.fault == Fault::RelayCut {
        let until = Instant::now() + SPLICE_EVENT_WAIT;
        while splice_bytes(&procs[0].stdout_lines()).is_none() && Instant::now() < until {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    seen.relay_forwarded = splice_bytes(&procs[0].stdout_lines());
    // Stop whatever still runs (a frozen A, or peers over their bound).
    for p in procs.iter_mut().skip(1) {
        if !matches!(p.try_wait(), Ok(Some(_))) {
            p.kill();
        }
    }
    // Let the reader threads drain the pipes of exited peers.
    std::thread::sleep(PIPE_DRAIN);
    let peer_run = |p: &mut Proc, stopped: bool| PeerRun {
        exit: if stopped {
            None
        } else {
            p.try_wait().ok().flatten().and_then(|s| s.code())
        },
        output: contract::parse_output(&p.stdout_lines()),
    };
    seen.times.b_paired = first_event(&procs[1].stdout_timed(), PAIRED_EVENT, started);
    seen.times.a_paired = first_event(&procs[2].stdout_timed(), PAIRED_EVENT, started);
    seen.b = peer_run(&mut procs[1], false);
    seen.a = peer_run(&mut procs[2], seen.times.a_vanished.is_some());
    seen.errors = [
        error_reason(&procs[2].stdout_lines()),
        error_reason(&procs[1].stdout_lines()),
    ];
    (seen, procs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::PeerResult;

    fn bounds() -> Bounds {
        Bounds::from_config(&dcutr_core::Config::shared_stream())
    }

    fn result(ok: bool, role: &str, attempts: u32, reason: Option<&str>) -> PeerResult {
        PeerResult {
            ok,
            transport: "tcp".into(),
            role: role.into(),
            remote: ok.then(|| "203.0.113.12:5000".into()),
            attempts,
            unilateral: false,
            rtt_ms: Some(40.0),
            time_to_direct_ms: ok.then_some(60.0),
            direct_rtt_ms: ok.then_some(40.0),
            relay_usable: ok,
            reason: reason.map(str::to_owned),
        }
    }

    fn peer(exit: i32, events: &[&str], r: PeerResult) -> PeerRun {
        let mut events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        events.push("result".into());
        PeerRun {
            exit: Some(exit),
            output: PeerOutput {
                events,
                result: Some(r),
                problems: vec![],
            },
        }
    }

    fn case(fault: Fault) -> Case {
        Case {
            fault,
            transport: Transport::Tcp,
        }
    }

    fn s(x: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(x))
    }

    fn both_paired_then_exit(a_exit: f64, b_exit: f64) -> Times {
        Times {
            a_paired: s(0.1),
            b_paired: s(0.1),
            a_exit: s(a_exit),
            b_exit: s(b_exit),
            a_vanished: None,
        }
    }

    const CLOSED: &str = "relayed stream closed at step sync";

    #[test]
    fn the_bounds_come_from_the_core_defaults() {
        let b = bounds();
        assert_eq!(b.step_timeout, Duration::from_secs(10));
        assert_eq!(b.direct_timeout, Duration::from_secs(5));
        assert_eq!(b.max_attempts, 3);
        assert_eq!(b.upgrade, Duration::from_secs(3 * 15 + 30 + 2));
        assert_eq!(b.relay_cut, Duration::from_secs(10));
        assert_eq!(b.vanish, Duration::from_secs(45));
        let text = b.explain();
        assert!(
            text.contains("3 x (step 10 s + direct 5 s) + CLI proof 30 s + QUIC drain 2 s = 77 s"),
            "{text}"
        );
        // A different config moves them.
        let c = dcutr_core::Config {
            max_attempts: 1,
            ..dcutr_core::Config::default()
        };
        assert_eq!(Bounds::from_config(&c).upgrade, Duration::from_secs(47));
    }

    #[test]
    fn the_reason_we_look_for_is_the_cores() {
        for step in [
            dcutr_core::reason::Step::Connect,
            dcutr_core::reason::Step::Sync,
        ] {
            let text = dcutr_core::Failure::RelayClosed { step }.to_string();
            assert!(text.starts_with(RELAY_CLOSED_REASON), "{text}");
        }
    }

    #[test]
    fn the_cut_point_is_two_hellos_and_one_connect() {
        let b: SocketAddr = "203.0.113.12:5000".parse().unwrap();
        // Hello: 1-byte length + (tag, len, 16-byte token) + (tag, attempt
        // limit) = 21 bytes.
        // Connect: 1-byte length + type (2) + one address field: tag, len
        // and 8 bytes for /ip4/../tcp/5000, or 11 for
        // /ip4/../udp/5000/quic-v1 (two-byte protocol codes).
        assert_eq!(cut_after_connect(Transport::Tcp, b), 2 * 21 + 13);
        assert_eq!(cut_after_connect(Transport::Quic, b), 2 * 21 + 16);
    }

    #[test]
    fn cases_have_unique_names_and_seeds_differ() {
        let cases = all_cases();
        assert_eq!(cases.len(), 10);
        let mut names: Vec<String> = cases.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10);
        assert!(names.contains(&"loss30 cone/cone quic".to_string()));
        assert!(names.contains(&"relay-cut-after-connect cone/cone tcp".to_string()));
        let mut all: Vec<u64> = (0..cases.len())
            .flat_map(|c| (1..=20).flat_map(move |r| seeds(7, c, r)))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "seeds repeat");
        assert_eq!(seeds(7, 2, 3), seeds(7, 2, 3));
    }

    #[test]
    fn loss_runs_pass_when_clean_and_within_the_bound() {
        let c = case(Fault::Loss { percent: 30 });
        let up = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: peer(0, &[], result(true, "client", 2, None)),
                b: peer(0, &[], result(true, "server", 2, None)),
                times: both_paired_then_exit(3.0, 3.1),
                ..Observed::default()
            },
        );
        assert_eq!(up.outcome, Outcome::Upgraded);
        assert!(up.passed(), "{:?}", up.violations);
        assert_eq!(up.duration_ms, Some(3000.0));
        assert!(!up.core_upgraded, "no `upgraded` event in this fixture");

        let down = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: peer(
                    1,
                    &[],
                    result(false, "client", 3, Some("all 3 attempts failed")),
                ),
                b: peer(
                    1,
                    &[],
                    result(false, "server", 3, Some("all 3 attempts failed")),
                ),
                times: both_paired_then_exit(46.0, 46.0),
                ..Observed::default()
            },
        );
        assert_eq!(down.outcome, Outcome::FailedClean);
        assert!(down.passed(), "{:?}", down.violations);
    }

    #[test]
    fn loss_runs_fail_over_the_bound_on_errors_and_on_disagreement() {
        let c = case(Fault::Loss { percent: 10 });
        let slow = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: peer(1, &[], result(false, "client", 3, Some("x"))),
                b: peer(1, &[], result(false, "server", 3, Some("x"))),
                times: both_paired_then_exit(78.0, 20.0),
                ..Observed::default()
            },
        );
        assert!(
            slow.violations
                .iter()
                .any(|v| v.starts_with("A: 77.9 s from paired to exit, over the bound 77.0 s")),
            "{:?}",
            slow.violations
        );

        let split = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: peer(0, &[], result(true, "client", 1, None)),
                b: peer(1, &[], result(false, "server", 1, Some("x"))),
                times: both_paired_then_exit(1.0, 1.0),
                ..Observed::default()
            },
        );
        assert_eq!(split.outcome, Outcome::Error);
        assert!(split.violations.iter().any(|v| v.contains("disagree")));

        let crashed = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: PeerRun {
                    exit: Some(2),
                    output: contract::parse_output(&[]),
                },
                b: peer(1, &[], result(false, "server", 1, Some("x"))),
                times: Times {
                    b_paired: s(0.1),
                    b_exit: s(1.0),
                    a_exit: s(0.5),
                    ..Times::default()
                },
                ..Observed::default()
            },
        );
        assert_eq!(crashed.outcome, Outcome::Error);
        let v = crashed.violations.join("\n");
        assert!(v.contains("A: exit code 2 (error)"), "{v}");
        assert!(v.contains("A: never printed \"paired\""), "{v}");

        let too_many = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                a: peer(1, &[], result(false, "client", 4, Some("x"))),
                b: peer(1, &[], result(false, "server", 4, Some("x"))),
                times: both_paired_then_exit(1.0, 1.0),
                ..Observed::default()
            },
        );
        assert!(too_many.violations.iter().any(|v| v.contains("4 attempts")));

        let hung = evaluate(
            &c,
            1,
            &bounds(),
            Observed {
                timed_out: true,
                times: Times {
                    a_paired: s(0.1),
                    b_paired: s(0.1),
                    ..Times::default()
                },
                ..Observed::default()
            },
        );
        assert_eq!(hung.outcome, Outcome::Timeout);
        assert!(!hung.passed());
    }

    fn cut_run(a_events: &[&str], b_events: &[&str], forwarded: u64, b_exit: f64) -> Record {
        evaluate(
            &case(Fault::RelayCut),
            1,
            &bounds(),
            Observed {
                a: peer(1, a_events, result(false, "client", 1, Some(CLOSED))),
                b: peer(1, b_events, result(false, "server", 1, Some(CLOSED))),
                times: both_paired_then_exit(0.2, b_exit),
                relay_forwarded: Some(forwarded),
                cut_at: Some(51),
                ..Observed::default()
            },
        )
    }

    #[test]
    fn a_relay_cut_must_end_both_peers_promptly_with_the_relay_closed() {
        let good = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 0.3);
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);

        // Noticed only by a step timeout: over the bound.
        let slow = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 10.2);
        assert!(
            slow.violations
                .iter()
                .any(|v| v.contains("over the bound 10.0 s"))
        );
        // The cut missed its point.
        let early = cut_run(&["paired"], &["paired"], 38, 0.3);
        let v = early.violations.join("\n");
        assert!(v.contains("cut before B's Connect"), "{v}");
        assert!(v.contains("forwarded Some(38) bytes"), "{v}");
        let late = cut_run(&["paired", "peer_addrs"], &["paired", "rtt"], 51, 0.3);
        assert!(
            late.violations
                .iter()
                .any(|v| v.contains("got through the cut"))
        );
        // A reason that is not the relay's close.
        let mut other = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 0.3);
        other = evaluate(
            &case(Fault::RelayCut),
            1,
            &bounds(),
            Observed {
                a: other.a.clone(),
                b: peer(
                    1,
                    &["paired"],
                    result(false, "server", 1, Some("peer sent nothing")),
                ),
                times: other.times.clone(),
                relay_forwarded: Some(51),
                cut_at: Some(51),
                ..Observed::default()
            },
        );
        assert!(other.violations.iter().any(|v| v.contains("does not say")));
    }

    #[test]
    fn a_vanished_peer_leaves_b_to_fail_cleanly_within_the_bound() {
        let gone = Times {
            a_paired: s(0.1),
            b_paired: s(0.1),
            a_exit: None,
            b_exit: s(10.3),
            a_vanished: s(0.2),
        };
        let killed_a = PeerRun {
            exit: None,
            output: contract::parse_output(&[r#"{"event":"peer_addrs"}"#.to_string()]),
        };
        let b_failed = peer(
            1,
            &[],
            result(false, "server", 1, Some("peer sent nothing")),
        );
        let good = evaluate(
            &case(Fault::PeerFrozen),
            1,
            &bounds(),
            Observed {
                a: killed_a.clone(),
                b: b_failed.clone(),
                times: gone.clone(),
                ..Observed::default()
            },
        );
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);
        assert_eq!(good.duration_ms, Some(10_100.0));

        let late = evaluate(
            &case(Fault::PeerKilled),
            1,
            &bounds(),
            Observed {
                a: killed_a.clone(),
                b: b_failed.clone(),
                times: Times {
                    b_exit: s(46.0),
                    ..gone.clone()
                },
                ..Observed::default()
            },
        );
        assert!(
            late.violations
                .iter()
                .any(|v| v.contains("over the bound 45.0 s"))
        );

        let b_crashed = evaluate(
            &case(Fault::PeerKilled),
            1,
            &bounds(),
            Observed {
                a: killed_a,
                b: PeerRun {
                    exit: Some(101),
                    output: contract::parse_output(&["panicked".to_string()]),
                },
                times: gone.clone(),
                ..Observed::default()
            },
        );
        assert_eq!(b_crashed.outcome, Outcome::Error);

        let never_hooked = evaluate(
            &case(Fault::PeerKilled),
            1,
            &bounds(),
            Observed {
                a: peer(1, &[], result(false, "client", 1, Some("x"))),
                b: b_failed,
                times: Times {
                    a_vanished: None,
                    a_exit: s(1.0),
                    ..gone
                },
                ..Observed::default()
            },
        );
        assert!(
            never_hooked
                .violations
                .iter()
                .any(|v| v.contains("A was not stopped"))
        );
    }

    #[test]
    fn errors_are_placed_in_the_phase_they_happened_in() {
        let c = case(Fault::Loss { percent: 30 });
        let errored = |events: &[&str]| PeerRun {
            exit: Some(2),
            output: contract::parse_output(
                &events
                    .iter()
                    .map(|e| format!(r#"{{"event":"{e}"}}"#))
                    .collect::<Vec<_>>(),
            ),
        };
        let run = |a: PeerRun, b: PeerRun, stopped_unpaired: bool| {
            evaluate(
                &c,
                1,
                &bounds(),
                Observed {
                    a,
                    b,
                    times: both_paired_then_exit(1.0, 1.0),
                    errors: [None, Some("the peer did not answer".into())],
                    stopped_unpaired,
                    ..Observed::default()
                },
            )
        };
        let proof = run(
            errored(&["paired", "upgraded", "timeline", "error"]),
            errored(&["paired", "upgraded", "timeline", "error"]),
            false,
        );
        assert_eq!(proof.error_phase, Some(ErrorPhase::Proof));
        assert!(proof.core_upgraded);
        assert_eq!(
            note(&proof).unwrap(),
            "error in the proof phase: the peer did not answer"
        );
        let upgrade = run(
            errored(&["paired", "attempt"]),
            peer(1, &["paired"], result(false, "server", 1, Some("x"))),
            false,
        );
        assert_eq!(upgrade.error_phase, Some(ErrorPhase::Upgrade));
        // The earliest phase wins; a peer stopped by the runner is no error.
        let unpaired = run(
            errored(&["registered", "error"]),
            PeerRun {
                exit: None,
                output: contract::parse_output(&[r#"{"event":"registered"}"#.into()]),
            },
            true,
        );
        assert_eq!(unpaired.outcome, Outcome::Error);
        assert_eq!(unpaired.error_phase, Some(ErrorPhase::Rendezvous));
        assert!(
            !unpaired
                .violations
                .iter()
                .any(|v| v.contains("killed by a signal")),
            "{:?}",
            unpaired.violations
        );
        assert!(
            unpaired
                .violations
                .iter()
                .any(|v| v.contains("the other was stopped"))
        );
        // One core upgraded, the other failed: a split outcome, placed in
        // the upgrade phase whatever the CLI did next.
        let split = run(
            peer(
                1,
                &["paired", "failed"],
                result(false, "client", 1, Some("peer started no further attempt")),
            ),
            errored(&["paired", "upgraded", "timeline", "error"]),
            false,
        );
        assert_eq!(split.error_phase, Some(ErrorPhase::Upgrade));
        assert!(
            note(&split).unwrap().starts_with(
                "error in the upgrade phase: the cores disagree: A's DCUtR failed, B's upgraded"
            ),
            "{:?}",
            note(&split)
        );
        // Clean runs have no phase.
        let good = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 0.3);
        assert_eq!(good.error_phase, None);
    }

    #[test]
    fn the_table_counts_outcomes_and_lists_reasons() {
        let c = case(Fault::RelayCut);
        let good = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 0.3);
        let slow = cut_run(&["paired", "peer_addrs"], &["paired"], 51, 10.5);
        let rows = aggregate(&[good, slow]);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.case, c.name());
        assert_eq!((r.runs, r.upgraded, r.failed_clean, r.errors), (2, 0, 2, 0));
        assert_eq!(r.verdict, "FAIL (1/2)");
        assert_eq!(r.reasons, vec![(CLOSED.to_string(), 2)]);
        let md = render_markdown(&rows);
        let line = md.lines().nth(2).unwrap();
        assert_eq!(
            line,
            "| relay-cut-after-connect cone/cone tcp | 2 | 0/2 | 0/2 | 2 | 0 | 5.30 | 10.40 | 10 | FAIL (1/2) |"
        );
        assert!(md.contains(&format!("2x {CLOSED}")));
    }
}
