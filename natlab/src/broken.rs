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
//!   `remote_addrs`, i.e. once it has B's Connect; B is left alone.
//!
//! Every run is judged against a time bound computed from the core's
//! defaults ([`Bounds`]); nothing may run past it. See README.md.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::campaign::{
    self, Campaign, Common, Driven, Named, Outcome, PEER_PORT, Record, TRANSPORTS, Transport,
    find_event, is_event,
};
use crate::contract::{self, CliRun};
use crate::nat::Site;
use crate::proc::Proc;
use crate::topo::{DelaySpec, Lab, TopologySpec, site_public_ip};

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
/// upgrade (direct, or relayed after a failure).
pub const CLI_PROOF_TIMEOUT: Duration = dcutr_cli::peer::PROOF_TIMEOUT;

/// `dcutr peer`'s wait for QUIC close frames before exiting.
pub const CLI_QUIC_DRAIN_LIMIT: Duration = dcutr_cli::peer::QUIC_DRAIN_LIMIT;

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

/// How long the runner waits for the relay's `splice_closed` line after
/// the peers exited: the relay closes a cut splice at once, but prints
/// from another task.
const SPLICE_EVENT_WAIT: Duration = Duration::from_secs(2);

/// A's progress event printed when B's Connect arrived (A answers it in
/// the same step): the moment A vanishes in the peer cases.
pub const VANISH_HOOK_EVENT: &str = "remote_addrs";

/// The event each peer prints once the relay paired it: the upgrade starts.
pub const PAIRED_EVENT: &str = "paired";

/// B's progress event for A's Connect (it measured the relayed RTT): must
/// not appear when the relay was cut right after B's Connect.
pub const B_GOT_CONNECT_EVENT: &str = "rtt_measured";

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
    /// Base seed of the delay lines' loss and jitter (each run derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Filter ("loss30", "relay-cut", "quic"), output and run id.
    #[command(flatten)]
    pub common: Common,
}

/// The bounds of `dcutr peer`'s config, `Config::default()`.
pub fn bounds() -> Bounds {
    Bounds::from_config(&dcutr_core::Config::default())
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
    /// The bounds for `config` (the CLI runs `Config::default()`).
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
        let (step, direct, n) = (
            s(self.step_timeout),
            s(self.direct_timeout),
            self.max_attempts,
        );
        let (proof, drain) = (s(CLI_PROOF_TIMEOUT), s(CLI_QUIC_DRAIN_LIMIT));
        let (upgrade, cut, vanish) = (s(self.upgrade), s(self.relay_cut), s(self.vanish));
        format!(
            "bounds from dcutr-core Config::default(): step_timeout {step}, direct_timeout {direct}, max_attempts {n}\n\
             - loss (per peer, paired -> exit):  {n} x (step {step} + direct {direct}) + CLI proof {proof} + QUIC drain {drain} = {upgrade}\n\
             - relay cut (per peer, paired -> exit): step {step} = {cut} (the close must end it, not a timeout)\n\
             - peer gone (A vanished -> B exit): step {step} + direct {direct} + CLI proof {proof} = {vanish}\n\
             every run also: no peer still running {vanish} after the other ended or vanished"
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
fn phase_of(output: &CliRun) -> ErrorPhase {
    if !output.has(PAIRED_EVENT) {
        ErrorPhase::Rendezvous
    } else if CORE_OUTCOME_EVENTS.iter().any(|e| output.has(e)) {
        ErrorPhase::Proof
    } else {
        ErrorPhase::Upgrade
    }
}

/// The relay's `--cut-after-bytes` for "right after B's first Connect":
/// both sides' pairing (the PAKE message and the authenticated
/// fingerprint, `dcutr_cli::pairing::PAIRING_BYTES_EACH_WAY` each way),
/// both Hello frames and B's Connect, which carries B's one observed
/// address, encoded as dcutr-core encodes them.
pub fn cut_after_connect(transport: Transport, b_observed: SocketAddr) -> u64 {
    use dcutr_core::wire::{FINGERPRINT_LEN, MAX_MESSAGE_SIZE, encode_connect, encode_hello};
    use dcutr_core::{Candidate, Side};
    let max_attempts = dcutr_core::Config::default().max_attempts;
    let hello = encode_hello(max_attempts, Side::Initiator, &[0; FINGERPRINT_LEN]).len();
    let candidate = match transport {
        Transport::Tcp => Candidate::tcp(b_observed),
        Transport::Quic => Candidate::quic(b_observed),
    };
    let addr = candidate.to_multiaddr().to_vec();
    let (connect, carried) = encode_connect([addr.as_slice()], MAX_MESSAGE_SIZE);
    debug_assert_eq!(carried, 1);
    let pairing = 2 * dcutr_cli::pairing::PAIRING_BYTES_EACH_WAY;
    (pairing + 2 * hello + connect.len()) as u64
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
    pub a_paired: Option<Duration>,
    pub b_paired: Option<Duration>,
    /// A exited (by itself; `None` if we stopped it or it never did).
    pub a_exit: Option<Duration>,
    pub b_exit: Option<Duration>,
    /// We killed or froze A.
    pub a_vanished: Option<Duration>,
}

/// One case: a fault on cone/cone with one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Position in [`all_cases`] (the seeds derive from it).
    pub index: usize,
    pub fault: Fault,
    pub transport: Transport,
}

impl Named for Case {
    fn name(&self) -> String {
        format!("{} cone/cone {}", self.fault, self.transport)
    }
}

impl Case {
    /// The delay-line seeds of run `run`, for the loss cases.
    fn seeds(&self, base: u64, run: u32) -> Option<[u64; 2]> {
        matches!(self.fault, Fault::Loss { .. }).then(|| seeds(base, self.index, run))
    }
}

/// Every case, in table order.
pub fn all_cases() -> Vec<Case> {
    LOSS_PERCENTS
        .iter()
        .map(|&percent| Fault::Loss { percent })
        .chain([Fault::RelayCut, Fault::PeerKilled, Fault::PeerFrozen])
        .flat_map(|fault| TRANSPORTS.map(|transport| (fault, transport)))
        .enumerate()
        .map(|(index, (fault, transport))| Case {
            index,
            fault,
            transport,
        })
        .collect()
}

/// Everything natlab saw of one run, before judging it (and kept in its
/// record).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Seen {
    /// Peer A (its output; its exit code unless we stopped it).
    pub a: CliRun,
    pub b: CliRun,
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
    pub problems: Vec<String>,
}

/// What a broken-network record keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    pub fault: Fault,
    pub transport: Transport,
    /// Delay-line seeds (sites 1 and 2), for the loss cases.
    pub seeds: Option<[u64; 2]>,
    /// Attempts (B's count, else A's).
    pub attempts: Option<u32>,
    pub a_reason: Option<String>,
    pub b_reason: Option<String>,
    /// Both peers printed the core's `upgraded` event: DCUtR itself
    /// upgraded, whatever the CLI did afterwards.
    pub core_upgraded: bool,
    /// For errors and timeouts: the phase the first troubled peer was in.
    pub error_phase: Option<ErrorPhase>,
    /// The bound `duration_ms` is compared with, ms.
    pub bound_ms: f64,
    /// From starting B until the run ended, ms.
    pub run_ms: f64,
    /// What the runner saw.
    #[serde(flatten)]
    pub seen: Seen,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The contract, for every peer that ran to its end.
fn contract_violations(who: &str, p: &CliRun, bounds: &Bounds, seen: &Seen) -> Vec<String> {
    let mut v = p.violations(who);
    if p.exit.is_none() && !seen.timed_out && !seen.stopped_unpaired {
        v.push(format!("{who}: no exit code (killed by a signal)"));
    }
    if let Some(r) = &p.result
        && r.attempts > u32::from(bounds.max_attempts)
    {
        v.push(format!(
            "{who}: {} attempts, more than the configured {}",
            r.attempts, bounds.max_attempts
        ));
    }
    v
}

/// What the core said: `upgraded`, `failed` or nothing.
fn core_said(p: &CliRun) -> Option<&'static str> {
    CORE_OUTCOME_EVENTS.iter().find(|e| p.has(e)).copied()
}

/// The outcome of a loss or relay-cut run and the longer `paired` -> exit.
fn judge_paired(seen: &Seen, bound: Duration, v: &mut Vec<String>) -> (Outcome, Option<Duration>) {
    let outcome = campaign::outcome(&seen.a, &seen.b, seen.timed_out, v);
    let t = &seen.times;
    let mut longest = None;
    for (who, paired, exit) in [("A", t.a_paired, t.a_exit), ("B", t.b_paired, t.b_exit)] {
        if paired.is_none() {
            v.push(format!(
                "{who}: never printed {PAIRED_EVENT:?} (no upgrade ran)"
            ));
        }
        let Some(d) = paired.zip(exit).map(|(p, e)| e.saturating_sub(p)) else {
            continue;
        };
        if d > bound {
            v.push(format!(
                "{who}: {} from paired to exit, over the bound {}",
                secs(d),
                secs(bound)
            ));
        }
        longest = longest.max(Some(d));
    }
    (outcome, longest)
}

/// The outcome of a vanished-peer run and A vanishing -> B's exit.
fn judge_vanished(
    seen: &Seen,
    bound: Duration,
    v: &mut Vec<String>,
) -> (Outcome, Option<Duration>) {
    let a_stopped = seen.times.a_vanished.is_some();
    let outcome = if seen.timed_out {
        Outcome::Timeout
    } else if a_stopped && seen.b.failed_clean() {
        Outcome::FailedClean
    } else {
        Outcome::Error
    };
    if !a_stopped {
        v.push(format!(
            "A was not stopped: it ended before printing {VANISH_HOOK_EVENT:?}"
        ));
    }
    if seen.b.upgraded() {
        v.push("B reports an upgrade with a peer that vanished".into());
    }
    let d = seen
        .times
        .a_vanished
        .zip(seen.times.b_exit)
        .map(|(g, e)| e.saturating_sub(g));
    if let Some(d) = d.filter(|d| *d > bound) {
        v.push(format!(
            "B: {} from A vanishing to its exit, over the bound {}",
            secs(d),
            secs(bound)
        ));
    }
    (outcome, d)
}

/// The relay cut must end both peers with the relay's close, at its point.
fn judge_cut(seen: &Seen, outcome: Outcome, v: &mut Vec<String>) {
    if outcome != Outcome::FailedClean {
        v.push(format!("expected a clean failure, got {outcome}"));
    }
    for (who, p) in [("A", &seen.a), ("B", &seen.b)] {
        let Some(r) = &p.result else { continue };
        let reason = r.reason.as_deref().unwrap_or("");
        if !r.ok && !reason.contains(RELAY_CLOSED_REASON) {
            v.push(format!(
                "{who}: reason {reason:?} does not say {RELAY_CLOSED_REASON:?}"
            ));
        }
        if r.relay_usable {
            v.push(format!("{who}: relay_usable=true after the relay cut"));
        }
    }
    // The cut hit where it was meant to: A had B's Connect, B never had
    // A's, and the relay forwarded exactly the budget.
    if !seen.a.has(VANISH_HOOK_EVENT) {
        v.push(format!(
            "A never printed {VANISH_HOOK_EVENT:?}: cut before B's Connect"
        ));
    }
    if seen.b.has(B_GOT_CONNECT_EVENT) {
        v.push(format!(
            "B printed {B_GOT_CONNECT_EVENT:?}: A's Connect got through the cut"
        ));
    }
    if seen.relay_forwarded != seen.cut_at {
        v.push(format!(
            "relay forwarded {:?} bytes, the cut is at {:?}",
            seen.relay_forwarded, seen.cut_at
        ));
    }
}

/// Judge one run (pure: unit-tested without root).
pub fn judge(
    case: &Case,
    run: u32,
    bounds: &Bounds,
    seen: Seen,
    mut v: Vec<String>,
) -> Record<Detail> {
    let bound = bounds.for_fault(case.fault);
    let a_stopped = seen.times.a_vanished.is_some();
    v.extend(seen.problems.iter().cloned());
    if !a_stopped {
        v.extend(contract_violations("A", &seen.a, bounds, &seen));
    }
    v.extend(contract_violations("B", &seen.b, bounds, &seen));
    if seen.timed_out {
        v.push("timed out: a peer was still running past its bound and was killed".into());
    }
    if seen.stopped_unpaired {
        v.push("a peer ended before being paired; the other was stopped".into());
    }
    let (outcome, duration) = match case.fault {
        Fault::Loss { .. } | Fault::RelayCut => judge_paired(&seen, bound, &mut v),
        Fault::PeerKilled | Fault::PeerFrozen => judge_vanished(&seen, bound, &mut v),
    };
    match case.fault {
        Fault::Loss { .. } if !matches!(outcome, Outcome::Upgraded | Outcome::FailedClean) => {
            v.push(format!(
                "expected an upgrade or a clean failure, got {outcome}"
            ));
        }
        Fault::RelayCut => judge_cut(&seen, outcome, &mut v),
        Fault::PeerKilled | Fault::PeerFrozen if outcome != Outcome::FailedClean => {
            v.push(format!("expected B to fail cleanly, got {outcome}"));
        }
        _ => {}
    }
    // The two state machines must agree; the CLI's proof comes later.
    let (a, b) = (&seen.a, &seen.b);
    let cores_disagree =
        !a_stopped && matches!((core_said(a), core_said(b)), (Some(x), Some(y)) if x != y);
    if cores_disagree {
        v.push(format!(
            "the cores disagree: A's DCUtR {}, B's {} (a split outcome)",
            core_said(a).unwrap_or_default(),
            core_said(b).unwrap_or_default()
        ));
    }
    let error_phase = if !matches!(outcome, Outcome::Error | Outcome::Timeout) {
        None
    } else if cores_disagree {
        Some(ErrorPhase::Upgrade)
    } else {
        [(a, !a_stopped), (b, true)]
            .into_iter()
            .filter(|(p, ran)| *ran && !p.upgraded() && !p.failed_clean())
            .map(|(p, _)| phase_of(p))
            .min_by_key(|phase| *phase as u8)
    };
    let t = &seen.times;
    let run_ms = [t.a_exit, t.b_exit, t.a_vanished]
        .into_iter()
        .flatten()
        .max();
    let reason = |p: &CliRun| p.result.as_ref().and_then(|r| r.reason.clone());
    let detail = Detail {
        fault: case.fault,
        transport: case.transport,
        seeds: None,
        attempts: b.result.as_ref().or(a.result.as_ref()).map(|r| r.attempts),
        a_reason: reason(a),
        b_reason: reason(b),
        core_upgraded: [a, b].iter().all(|p| p.has(CORE_OUTCOME_EVENTS[0])),
        error_phase,
        bound_ms: crate::ms(bound),
        run_ms: run_ms.map_or(0.0, crate::ms),
        seen,
    };
    Record::new((case.name(), run), outcome, duration, v, detail)
}

/// What the table lists for a run that did not upgrade: the failure
/// reason (B's, else A's), or for an error its phase and what the peers or
/// the runner said.
fn note(r: &Record<Detail>) -> Option<String> {
    let d = &r.detail;
    let first = || r.violations.first().cloned().unwrap_or_default();
    if let Some(split) = r
        .violations
        .iter()
        .find(|v| v.starts_with("the cores disagree"))
    {
        Some(format!("{} in the upgrade phase: {split}", r.outcome))
    } else if let Some(phase) = d.error_phase {
        let said = d.seen.errors[1]
            .clone()
            .or_else(|| d.seen.errors[0].clone())
            .unwrap_or_else(first);
        Some(format!("{} in the {phase} phase: {said}", r.outcome))
    } else if matches!(r.outcome, Outcome::Error | Outcome::Timeout) {
        Some(format!("{}: {}", r.outcome, first()))
    } else {
        d.b_reason.clone().or_else(|| d.a_reason.clone())
    }
}

/// The table, GitHub-flavoured Markdown, with the reasons seen below it.
pub fn table(records: &[Record<Detail>]) -> String {
    type Runs<'a> = [&'a Record<Detail>];
    let count = |runs: &Runs, f: fn(&Record<Detail>) -> bool| runs.iter().filter(|r| f(r)).count();
    let secs = |runs: &Runs| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| r.duration_ms.map(|d| d / 1e3))
            .collect()
    };
    let mut out = campaign::table(
        records,
        &[
            ("case", &|case, _| case.to_owned()),
            ("runs", &|_, runs| runs.len().to_string()),
            ("upgraded", &|_, runs| {
                campaign::share(runs, |r| r.outcome == Outcome::Upgraded)
            }),
            ("core upgraded", &|_, runs| {
                campaign::share(runs, |r| r.detail.core_upgraded)
            }),
            ("failed-clean", &|_, runs| {
                count(runs, |r| r.outcome == Outcome::FailedClean).to_string()
            }),
            ("errors", &|_, runs| {
                count(runs, |r| {
                    matches!(r.outcome, Outcome::Error | Outcome::Timeout)
                })
                .to_string()
            }),
            ("median duration s", &|_, runs| {
                campaign::median_cell(runs, |r| r.duration_ms.map(|d| d / 1e3), 2)
            }),
            ("max duration s", &|_, runs| {
                campaign::num(secs(runs).into_iter().reduce(f64::max), 2)
            }),
            ("bound s", &|_, runs| {
                format!("{:.0}", runs[0].detail.bound_ms / 1e3)
            }),
            ("verdict", &|_, runs| campaign::verdict(runs, "PASS")),
        ],
        "upgraded: both peers exited 0 (the CLI proved the direct path); core upgraded: both peers' \
         DCUtR reported `upgraded`. duration: loss and relay-cut cases, the longest of the two peers' \
         time from `paired` to exit; peer cases, from A vanishing to B's exit.",
    );
    let mut reasons = String::new();
    for (case, runs) in &campaign::by_case(records) {
        for (text, n) in campaign::tally(runs.iter().filter_map(|r| note(r))) {
            reasons.push_str(&format!("- {case}: {n}x {text}\n"));
        }
    }
    if !reasons.is_empty() {
        out.push_str("\nnot upgraded, by reason (B's, else A's; errors by phase: rendezvous = before `paired`, upgrade = DCUtR itself, proof = the CLI's round trips after the core's outcome):\n");
        out.push_str(&reasons);
    }
    out
}

impl Campaign for Driven<Args> {
    type Case = Case;
    type Seen = Seen;
    type Detail = Detail;
    const TABLE: fn(&[Record<Detail>]) -> String = table;
    const KIND: &'static str = "broken";
    const DEFAULT_RUNS: u32 = DEFAULT_RUNS;

    fn cases(&self) -> Vec<Case> {
        all_cases()
    }

    fn topology(&self, case: &Case, run: u32) -> TopologySpec {
        let mut spec = TopologySpec::new(Site::CONE, Site::CONE);
        if let (Fault::Loss { percent }, Some(seeds)) =
            (case.fault, case.seeds(self.args.seed, run))
        {
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

    fn drive(&self, case: &Case, lab: &Lab, procs: &mut Vec<Proc>) -> Seen {
        drive(&self.dcutr, case, &bounds(), lab, procs)
    }

    fn judge(&self, case: &Case, run: u32, seen: Seen, problems: Vec<String>) -> Record<Detail> {
        let mut r = judge(case, run, &bounds(), seen, problems);
        r.detail.seeds = case.seeds(self.args.seed, run);
        r
    }

    fn preamble(&self) -> Option<String> {
        Some(bounds().explain())
    }

    fn diagnose(&self, case: &Case, run: u32) -> String {
        case.seeds(self.args.seed, run)
            .map(|s| format!("  delay-line seeds: {} {}\n", s[0], s[1]))
            .unwrap_or_default()
    }

    fn summary_fields(&self) -> Map<String, Value> {
        let b = bounds();
        let mut m = Map::new();
        m.insert(
            "bounds_s".into(),
            json!({"upgrade": b.upgrade.as_secs_f64(), "relay_cut": b.relay_cut.as_secs_f64(),
                   "vanish": b.vanish.as_secs_f64()}),
        );
        m
    }
}

/// When the JSON event `name` first appeared in `lines`, after `since`.
fn first_event(lines: &[(Instant, String)], name: &str, since: Instant) -> Option<Duration> {
    lines
        .iter()
        .find(|(_, l)| is_event(l, name))
        .map(|(t, _)| t.saturating_duration_since(since))
}

/// The reason of the peer's `error` event, if it printed one.
fn error_reason(p: &Proc) -> Option<String> {
    let v = find_event(&p.stdout_lines(), ERROR_EVENT)?;
    Some(v["reason"].as_str().unwrap_or("").to_owned())
}

/// Bytes the relay says it forwarded on the (only) splice.
fn splice_bytes(p: &Proc) -> Option<u64> {
    let v = find_event(&p.stdout_lines(), SPLICE_CLOSED_EVENT)?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Some(n("to_initiator") + n("to_responder"))
}

/// Start relay, B, A; break what the case breaks; wait within the bounds.
fn drive(
    dcutr: &std::path::Path,
    case: &Case,
    bounds: &Bounds,
    lab: &Lab,
    procs: &mut Vec<Proc>,
) -> Seen {
    let mut seen = Seen::default();
    let mut cut = Vec::new();
    if case.fault == Fault::RelayCut {
        let b_observed = SocketAddr::new(site_public_ip(2, Site::CONE).into(), PEER_PORT);
        let n = cut_after_connect(case.transport, b_observed);
        seen.cut_at = Some(n);
        cut = vec!["--cut-after-bytes".to_owned(), n.to_string()];
    }
    let cut: Vec<&str> = cut.iter().map(String::as_str).collect();
    if let Err(e) = contract::start_relay(lab, procs, dcutr, &cut) {
        seen.problems.push(e);
        return seen;
    }
    let started = Instant::now();
    let bound = bounds.for_fault(case.fault);
    // The hang guard: registration, the bound, and the margin.
    let deadline = started + RENDEZVOUS_ALLOWANCE + bounds.upgrade.max(bound) + OVERRUN_MARGIN;
    let ready_by = (Instant::now() + PEER_READY_TIMEOUT).min(deadline);
    let peers = (case.transport, &[][..]);
    match contract::start_peers(lab, procs, dcutr, peers, ready_by, &mut seen.problems) {
        contract::Started::Both => {}
        contract::Started::Failed => return seen,
        contract::Started::BGone => {
            seen.stopped_unpaired = true;
            seen.times.b_exit = Some(started.elapsed());
            seen.b = CliRun::collect(&mut procs[1], false);
            seen.errors[1] = error_reason(&procs[1]);
            return seen;
        }
    }
    if matches!(case.fault, Fault::PeerKilled | Fault::PeerFrozen)
        && procs[2]
            .wait_for_line(deadline, "remote_addrs event", |l| {
                is_event(l, VANISH_HOOK_EVENT)
            })
            .is_ok()
    {
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
    // Once one peer is gone (exited or vanished), the other gets the
    // vanish bound plus the margin; if nobody was paired by then, the
    // other can only wait for the relay's pairing limit: stop it.
    let grace = bounds.vanish + OVERRUN_MARGIN;
    let unpaired = |peers: &[Proc]| {
        !peers
            .iter()
            .any(|p| p.stdout_lines().iter().any(|l| is_event(l, PAIRED_EVENT)))
    };
    let vanished = seen.times.a_vanished;
    let early = (UNPAIRED_GRACE, unpaired);
    match campaign::wait_peers(&mut procs[1..3], started, deadline, vanished, grace, early) {
        Ok(w) => {
            seen.timed_out = w.timed_out;
            seen.stopped_unpaired = w.stopped_early;
            seen.times.b_exit = w.exits[0];
            seen.times.a_exit = w.exits[1].filter(|_| vanished.is_none());
        }
        Err(e) => {
            seen.problems.push(format!("{e:#}"));
            seen.timed_out = true;
        }
    }
    if let Ok(Some(status)) = procs[0].try_wait() {
        seen.problems
            .push(format!("relay exited during the run ({status})"));
    }
    if case.fault == Fault::RelayCut {
        // The relay closes a cut splice at once, but prints from another task.
        let until = Instant::now() + SPLICE_EVENT_WAIT;
        let _ = procs[0].wait_for_line(until, "splice_closed event", |l| {
            is_event(l, SPLICE_CLOSED_EVENT)
        });
    }
    seen.relay_forwarded = splice_bytes(&procs[0]);
    // Stop whatever still runs (a frozen A, or peers over their bound).
    procs.iter_mut().skip(1).for_each(Proc::kill);
    seen.times.b_paired = first_event(&procs[1].stdout_timed(), PAIRED_EVENT, started);
    seen.times.a_paired = first_event(&procs[2].stdout_timed(), PAIRED_EVENT, started);
    seen.b = CliRun::collect(&mut procs[1], false);
    seen.a = CliRun::collect(&mut procs[2], vanished.is_some());
    seen.errors = [error_reason(&procs[2]), error_reason(&procs[1])];
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{CliResult, fixture};

    fn evaluate(c: &Case, run: u32, b: &Bounds, seen: Seen) -> Record<Detail> {
        judge(c, run, b, seen, vec![])
    }

    fn result(ok: bool, role: &str, attempts: u32, reason: Option<&str>) -> CliResult {
        let mut r = fixture::result(ok, role, attempts);
        (r.relay_usable, r.reason) = (ok, reason.map(str::to_owned));
        r
    }

    use crate::contract::fixture::run as peer;

    fn case(fault: Fault) -> Case {
        Case {
            index: 0,
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
    fn the_cut_point_is_the_pairing_two_hellos_and_one_connect() {
        let b: SocketAddr = "203.0.113.12:5000".parse().unwrap();
        // Pairing: 105 bytes each way (magic, SPAKE2 message, fingerprint,
        // MAC).
        // Hello (wire v3): 1-byte length + (tag, attempt limit) + (tag,
        // side) + (tag, len, 32-byte fingerprint) + (tag, version) = 41
        // bytes.
        // Connect: 1-byte length + type (2) + one address field: tag, len
        // and 8 bytes for /ip4/../tcp/5000, or 11 for
        // /ip4/../udp/5000/quic-v1 (two-byte protocol codes).
        assert_eq!(cut_after_connect(Transport::Tcp, b), 2 * 105 + 2 * 41 + 13);
        assert_eq!(cut_after_connect(Transport::Quic, b), 2 * 105 + 2 * 41 + 16);
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

    /// Judge a run of `fault` with A, B and their times.
    fn run(fault: Fault, a: CliRun, b: CliRun, times: Times) -> Record<Detail> {
        let seen = Seen {
            a,
            b,
            times,
            ..Seen::default()
        };
        evaluate(&case(fault), 1, &bounds(), seen)
    }

    fn down(role: &str, attempts: u32, reason: &str) -> CliRun {
        peer(1, &[], result(false, role, attempts, Some(reason)))
    }

    #[test]
    fn loss_runs_pass_when_clean_and_within_the_bound() {
        let loss30 = Fault::Loss { percent: 30 };
        let (a, b) = (
            result(true, "client", 2, None),
            result(true, "server", 2, None),
        );
        let up = run(
            loss30,
            peer(0, &[], a),
            peer(0, &[], b),
            both_paired_then_exit(3.0, 3.1),
        );
        assert_eq!(up.outcome, Outcome::Upgraded);
        assert!(up.passed(), "{:?}", up.violations);
        assert_eq!(up.duration_ms, Some(3000.0));
        assert!(
            !up.detail.core_upgraded,
            "no `upgraded` event in this fixture"
        );
        let failed = "all 3 attempts failed";
        let (a, b) = (down("client", 3, failed), down("server", 3, failed));
        let down = run(loss30, a, b, both_paired_then_exit(46.0, 46.0));
        assert_eq!(down.outcome, Outcome::FailedClean);
        assert!(down.passed(), "{:?}", down.violations);
    }

    #[test]
    fn loss_runs_fail_over_the_bound_on_errors_and_on_disagreement() {
        let loss10 = Fault::Loss { percent: 10 };
        let times = both_paired_then_exit(78.0, 20.0);
        let slow = run(
            loss10,
            down("client", 3, "x"),
            down("server", 3, "x"),
            times,
        );
        let over = "A: 77.9 s from paired to exit, over the bound 77.0 s";
        assert!(
            slow.violations.iter().any(|v| v.starts_with(over)),
            "{:?}",
            slow.violations
        );

        let (x, crash) = (|w| down(w, 1, "x"), CliRun::parse(Some(2), &[]));
        let b_only = Times {
            b_paired: s(0.1),
            b_exit: s(1.0),
            a_exit: s(0.5),
            ..Times::default()
        };
        let up = peer(0, &[], result(true, "client", 1, None));
        let t = both_paired_then_exit(1.0, 1.0);
        for (a, b, times, outcome, needles) in [
            (
                up,
                x("server"),
                t.clone(),
                Outcome::Error,
                &["disagree"][..],
            ),
            (
                crash,
                x("server"),
                b_only,
                Outcome::Error,
                &["A: exit code 2 (error)", "A: never printed \"paired\""],
            ),
            (
                down("client", 4, "x"),
                down("server", 4, "x"),
                t,
                Outcome::FailedClean,
                &["4 attempts"],
            ),
        ] {
            let r = run(loss10, a, b, times);
            assert_eq!(r.outcome, outcome, "{:?}", r.violations);
            assert!(
                needles.iter().all(|n| r.has(n)),
                "{needles:?}: {:?}",
                r.violations
            );
        }

        let times = Times {
            a_paired: s(0.1),
            b_paired: s(0.1),
            ..Times::default()
        };
        let seen = Seen {
            timed_out: true,
            times,
            ..Seen::default()
        };
        let hung = evaluate(&case(loss10), 1, &bounds(), seen);
        assert_eq!(hung.outcome, Outcome::Timeout);
        assert!(hung.has("timed out: a peer was still running"));
        // A lab failure alone makes the run fail.
        let lab = judge(
            &case(loss10),
            1,
            &bounds(),
            Seen::default(),
            vec!["lab: boom".into()],
        );
        assert_eq!(lab.violations[0], "lab: boom");
    }

    fn cut_run(
        a_events: &[&str],
        b_events: &[&str],
        forwarded: u64,
        b_exit: f64,
    ) -> Record<Detail> {
        let a = peer(1, a_events, result(false, "client", 1, Some(CLOSED)));
        let b = peer(1, b_events, result(false, "server", 1, Some(CLOSED)));
        let times = both_paired_then_exit(0.2, b_exit);
        let seen = Seen {
            a,
            b,
            times,
            relay_forwarded: Some(forwarded),
            cut_at: Some(51),
            ..Seen::default()
        };
        evaluate(&case(Fault::RelayCut), 1, &bounds(), seen)
    }

    #[test]
    fn a_relay_cut_must_end_both_peers_promptly_with_the_relay_closed() {
        let good = cut_run(&["paired", "remote_addrs"], &["paired"], 51, 0.3);
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);
        // Noticed only by a step timeout: over the bound.
        let slow = cut_run(&["paired", "remote_addrs"], &["paired"], 51, 10.2);
        assert!(slow.has("over the bound 10.0 s"));
        // The cut missed its point.
        let early = cut_run(&["paired"], &["paired"], 38, 0.3);
        assert!(early.has("cut before B's Connect") && early.has("forwarded Some(38) bytes"));
        let late = cut_run(
            &["paired", "remote_addrs"],
            &["paired", "rtt_measured"],
            51,
            0.3,
        );
        assert!(late.has("got through the cut"));
        // A reason that is not the relay's close, and a relay still usable.
        let mut seen = Seen {
            a: good.detail.seen.a.clone(),
            times: good.detail.seen.times.clone(),
            ..Seen::default()
        };
        seen.b = peer(
            1,
            &["paired"],
            result(false, "server", 1, Some("peer sent nothing")),
        );
        seen.b.result.as_mut().unwrap().relay_usable = true;
        (seen.relay_forwarded, seen.cut_at) = (Some(51), Some(51));
        let other = evaluate(&case(Fault::RelayCut), 1, &bounds(), seen);
        assert!(other.has("does not say") && other.has("B: relay_usable=true after the relay cut"));
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
        let vanished_a = || CliRun::parse(None, &[r#"{"event":"remote_addrs"}"#.to_string()]);
        let b_failed = || down("server", 1, "peer sent nothing");
        let good = run(Fault::PeerFrozen, vanished_a(), b_failed(), gone.clone());
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);
        assert_eq!(good.duration_ms, Some(10_100.0));

        let late = Times {
            b_exit: s(46.0),
            ..gone.clone()
        };
        let never_hooked = Times {
            a_vanished: None,
            a_exit: s(1.0),
            ..gone.clone()
        };
        let b_crashed = CliRun::parse(Some(101), &["panicked".to_string()]);
        let b_up = peer(0, &[], result(true, "server", 1, None));
        for (a, b, times, needle) in [
            (vanished_a(), b_failed(), late, "over the bound 45.0 s"),
            (
                vanished_a(),
                b_crashed,
                gone.clone(),
                "expected B to fail cleanly, got error",
            ),
            (
                vanished_a(),
                b_up,
                gone,
                "B reports an upgrade with a peer that vanished",
            ),
            (
                down("client", 1, "x"),
                b_failed(),
                never_hooked,
                "A was not stopped",
            ),
        ] {
            let r = run(Fault::PeerKilled, a, b, times);
            assert!(r.has(needle), "{needle}: {:?}", r.violations);
        }
    }

    #[test]
    fn errors_are_placed_in_the_phase_they_happened_in() {
        let errored = |events: &[&str]| {
            let lines: Vec<String> = events
                .iter()
                .map(|e| format!(r#"{{"event":"{e}"}}"#))
                .collect();
            CliRun::parse(Some(2), &lines)
        };
        let run = |a: CliRun, b: CliRun, stopped_unpaired: bool| {
            let times = both_paired_then_exit(1.0, 1.0);
            let errors = [None, Some("the peer did not answer".into())];
            let seen = Seen {
                a,
                b,
                times,
                errors,
                stopped_unpaired,
                ..Seen::default()
            };
            evaluate(&case(Fault::Loss { percent: 30 }), 1, &bounds(), seen)
        };
        let proof_events = ["paired", "upgraded", "timeline", "error"];
        let proof = run(errored(&proof_events), errored(&proof_events), false);
        assert_eq!(proof.detail.error_phase, Some(ErrorPhase::Proof));
        assert!(proof.detail.core_upgraded);
        assert_eq!(
            note(&proof).unwrap(),
            "error in the proof phase: the peer did not answer"
        );
        let b = peer(1, &["paired"], result(false, "server", 1, Some("x")));
        let upgrade = run(errored(&["paired", "attempt_started"]), b, false);
        assert_eq!(upgrade.detail.error_phase, Some(ErrorPhase::Upgrade));
        // The earliest phase wins; a peer stopped by the runner is no error.
        let registered = CliRun::parse(None, &[r#"{"event":"registered"}"#.into()]);
        let unpaired = run(errored(&["registered", "error"]), registered, true);
        assert_eq!(unpaired.outcome, Outcome::Error);
        assert_eq!(unpaired.detail.error_phase, Some(ErrorPhase::Rendezvous));
        assert!(
            !unpaired.has("killed by a signal"),
            "{:?}",
            unpaired.violations
        );
        assert!(unpaired.has("the other was stopped"));
        // One core upgraded, the other failed: a split outcome, placed in
        // the upgrade phase whatever the CLI did next.
        let why = "peer started no further attempt";
        let a = peer(
            1,
            &["paired", "failed"],
            result(false, "client", 1, Some(why)),
        );
        let split = run(a, errored(&proof_events), false);
        assert_eq!(split.detail.error_phase, Some(ErrorPhase::Upgrade));
        let said = "error in the upgrade phase: the cores disagree: A's DCUtR failed, B's upgraded";
        assert!(
            note(&split).unwrap().starts_with(said),
            "{:?}",
            note(&split)
        );
        // Clean runs have no phase; their note is the reason.
        let good = cut_run(&["paired", "remote_addrs"], &["paired"], 51, 0.3);
        assert_eq!(
            (good.detail.error_phase, note(&good).as_deref()),
            (None, Some(CLOSED))
        );
    }

    #[test]
    fn the_table_counts_outcomes_and_lists_reasons() {
        let c = case(Fault::RelayCut);
        let good = cut_run(&["paired", "remote_addrs"], &["paired"], 51, 0.3);
        let slow = cut_run(&["paired", "remote_addrs"], &["paired"], 51, 10.5);
        let md = table(&[good, slow]);
        let line = md.lines().nth(2).unwrap();
        assert_eq!(
            line,
            "| relay-cut-after-connect cone/cone tcp | 2 | 0/2 | 0/2 | 2 | 0 | 5.30 | 10.40 | 10 | FAIL (1/2) |"
        );
        assert!(line.starts_with(&format!("| {} |", c.name())));
        assert!(md.contains(&format!("- {}: 2x {CLOSED}", c.name())));
    }
}
