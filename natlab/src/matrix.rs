//! `natlab matrix`: the `dcutr` CLI through every NAT pair, transport and
//! relayed RTT, one fresh topology per run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tracing::{info, warn};

use crate::contract::{self, PeerOutput, PeerResult};
use crate::names::RunNames;
use crate::nat::Site;
use crate::proc::Proc;
use crate::report;
use crate::stats::bound_ratio;
use crate::topo::{DelaySpec, Lab, RELAY_IP, TopologySpec};

/// Port the relay listens on.
pub const RELAY_PORT: u16 = 4000;

/// Port each peer listens on (TCP or UDP for QUIC).
pub const PEER_PORT: u16 = 5000;

/// One-way delay the relay adds per forwarded chunk for the "100 ms relayed
/// RTT" cases (50 ms each way).
pub const RELAY_DELAY_MS: u32 = 50;

/// How long the relay may take to print `listening`: a local bind.
pub const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long B may take to print `registered` before A is started anyway (and
/// the missing event noted): a reservation is one relayed round trip.
pub const PEER_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Default limit for one run, from starting B until both peers exited. Three
/// failing attempts must fit (see [`FAIL_CLEAN_BOUND`]) plus setup slack; 20
/// runs must fit in [`MATRIX_BUDGET`] when most of them succeed quickly.
pub const DEFAULT_CASE_TIMEOUT: Duration = Duration::from_secs(40);

/// Once one peer has exited, the other must follow within this: both learn
/// the outcome within a relayed round trip or two (the relay closes when a
/// side leaves), and a crashed peer should not cost the whole case timeout.
pub const OTHER_PEER_GRACE: Duration = Duration::from_secs(10);

/// How often the runner polls the peers for their exit.
const PEER_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A symmetric/symmetric run must report its clean failure within this: the
/// 3 attempts with per-step timeouts of ~10 s (rust-libp2p's) at most.
pub const FAIL_CLEAN_BOUND: Duration = Duration::from_secs(35);

/// The whole default matrix (20 runs) should stay under this on 2 cores.
pub const MATRIX_BUDGET: Duration = Duration::from_secs(300);

/// Number of hole-punch attempts the protocol makes before giving up.
pub const PROTOCOL_ATTEMPTS: u32 = 3;

/// `natlab matrix` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dcutr CLI (default: `dcutr` next to natlab, else on PATH).
    #[arg(long)]
    pub dcutr: Option<PathBuf>,
    /// Repeat each case this many times.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Only cases whose name contains this (e.g. "cone/public", "quic", "rtt100").
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON record per run (and a summary) on stdout; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_CASE_TIMEOUT.as_secs_f64())]
    pub case_timeout_s: f64,
    /// Once one peer exited, how long the other may still run, in seconds.
    #[arg(long, default_value_t = OTHER_PEER_GRACE.as_secs_f64())]
    pub peer_grace_s: f64,
    /// Put a delay line of this one-way delay in front of A's site (raises D and R).
    #[arg(long)]
    pub direct_delay_ms: Option<f64>,
    /// Print the lab diagnostics for every run, not only failing ones.
    #[arg(long)]
    pub always_diagnose: bool,
    /// Run id, 4 hex digits (default: random). Every namespace of the run
    /// is then called `nl<id>..-*`; tests use it to find their own.
    #[arg(long, value_name = "HEX")]
    pub run_id: Option<String>,
}

/// Transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP simultaneous open.
    Tcp,
    /// QUIC with B spraying UDP.
    Quic,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        })
    }
}

/// What a pair must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Both peers report an upgrade (and, if set, a unilateral one).
    Upgrade {
        /// The upgrade must come from B's direct dial.
        unilateral: bool,
    },
    /// Both peers report a clean failure after all attempts, relay still usable.
    FailClean,
    /// Report only: upgrade or clean failure, anything but an error.
    Clean,
}

/// A NAT pair: where A and B live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Name in the table.
    pub name: &'static str,
    /// A's site (site 1 of the topology): answers the DCUtR stream, client.
    pub a: Site,
    /// B's site (site 2): opens the stream, dials A first if A is public, server.
    pub b: Site,
    /// What must happen.
    pub expect: Expect,
}

/// The pairs of the matrix.
pub const PAIRS: &[Pair] = &[
    Pair {
        name: "cone/cone",
        a: Site::CONE,
        b: Site::CONE,
        expect: Expect::Upgrade { unilateral: false },
    },
    Pair {
        name: "cone/cone-no-firewall",
        a: Site::CONE,
        b: Site::CONE_NO_FIREWALL,
        expect: Expect::Clean,
    },
    Pair {
        name: "cone/public",
        a: Site::Public,
        b: Site::CONE,
        expect: Expect::Upgrade { unilateral: true },
    },
    Pair {
        name: "symmetric/cone",
        a: Site::SYMMETRIC,
        b: Site::CONE,
        expect: Expect::Clean,
    },
    Pair {
        name: "symmetric/symmetric",
        a: Site::SYMMETRIC,
        b: Site::SYMMETRIC,
        expect: Expect::FailClean,
    },
];

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// NAT pair.
    pub pair: Pair,
    /// Transport.
    pub transport: Transport,
    /// One-way delay the relay adds (0 or [`RELAY_DELAY_MS`]).
    pub relay_delay_ms: u32,
    /// The async runtime both peers run on (`dcutr peer --runtime`).
    pub runtime: &'static str,
}

impl Case {
    /// `cone/cone tcp rtt100` (with the runtime appended when it is not
    /// tokio: `cone/cone tcp rtt100 smol`).
    pub fn name(&self) -> String {
        let mut name = format!(
            "{} {} rtt{}",
            self.pair.name,
            self.transport,
            2 * self.relay_delay_ms
        );
        if self.runtime != DEFAULT_RUNTIME {
            name.push(' ');
            name.push_str(self.runtime);
        }
        name
    }
}

/// The runtime of every pair of the matrix.
pub const DEFAULT_RUNTIME: &str = "tokio";

/// Runtimes that also run the cone/cone cases (the async-io adapter on
/// smol); the full matrix on every runtime would triple its time for little.
pub const EXTRA_RUNTIMES: &[&str] = &["smol"];

/// Every case, in table order.
pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &pair in PAIRS {
        for transport in [Transport::Tcp, Transport::Quic] {
            for relay_delay_ms in [0, RELAY_DELAY_MS] {
                cases.push(Case {
                    pair,
                    transport,
                    relay_delay_ms,
                    runtime: DEFAULT_RUNTIME,
                });
            }
        }
    }
    let cone = *PAIRS
        .iter()
        .find(|p| p.name == "cone/cone")
        .expect("the matrix has a cone/cone pair");
    for &runtime in EXTRA_RUNTIMES {
        for transport in [Transport::Tcp, Transport::Quic] {
            for relay_delay_ms in [0, RELAY_DELAY_MS] {
                cases.push(Case {
                    pair: cone,
                    transport,
                    relay_delay_ms,
                    runtime,
                });
            }
        }
    }
    cases
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Both peers: result ok, exit 0.
    Upgraded,
    /// Both peers: result not ok, exit 1.
    FailedClean,
    /// Anything else: crash, missing or inconsistent results, lab failure.
    Error,
    /// The run hit its time limit; everything was killed.
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Upgraded => "upgraded",
            Outcome::FailedClean => "failed-clean",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        })
    }
}

/// What one peer did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerRun {
    /// Exit code (`None`: killed or never exited).
    pub exit: Option<i32>,
    /// Parsed stdout.
    pub output: PeerOutput,
}

/// Everything recorded about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Case name.
    pub case: String,
    /// Pair name.
    pub pair: String,
    /// A's site.
    pub a_site: String,
    /// B's site.
    pub b_site: String,
    /// Transport.
    pub transport: Transport,
    /// Runtime of both peers.
    pub runtime: String,
    /// Relayed RTT the relay's delay aims at, ms.
    pub relay_rtt_target_ms: u32,
    /// Run number within the case (1-based).
    pub run: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// What was expected.
    pub expect: Expect,
    /// Peer A.
    pub a: PeerRun,
    /// Peer B.
    pub b: PeerRun,
    /// Attempts (B's count, else A's).
    pub attempts: Option<u32>,
    /// Relayed RTT R, ms.
    pub rtt_ms: Option<f64>,
    /// Direct RTT D, ms.
    pub direct_rtt_ms: Option<f64>,
    /// Time to direct, ms.
    pub time_to_direct_ms: Option<f64>,
    /// time_to_direct / (1.5 R + D).
    pub ratio: Option<f64>,
    /// B's unilateral flag.
    pub unilateral: Option<bool>,
    /// Failure reason (B's, else A's).
    pub reason: Option<String>,
    /// From starting B until both peers exited (or the timeout), ms.
    pub duration_ms: f64,
    /// Topology build time, ms.
    pub setup_ms: f64,
    /// Topology teardown time, ms.
    pub teardown_ms: Option<f64>,
    /// Contract violations and lab errors.
    pub problems: Vec<String>,
    /// Unmet expectations (includes every problem). Empty = PASS.
    pub violations: Vec<String>,
}

impl RunRecord {
    /// Whether this run met its expectation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Turn what the peers did into a record (pure: unit-tested without root).
pub fn evaluate(
    case: &Case,
    run: u32,
    a: PeerRun,
    b: PeerRun,
    timed_out: bool,
    duration: Duration,
    lab_problems: Vec<String>,
) -> RunRecord {
    let mut problems = lab_problems;
    for (who, p) in [("A", &a), ("B", &b)] {
        problems.extend(p.output.problems.iter().map(|e| format!("{who}: {e}")));
    }
    let (ra, rb) = (a.output.result.as_ref(), b.output.result.as_ref());
    let peer_ok = |p: &PeerRun| matches!((p.exit, &p.output.result), (Some(0), Some(r)) if r.ok);
    let peer_failed =
        |p: &PeerRun| matches!((p.exit, &p.output.result), (Some(1), Some(r)) if !r.ok);
    for (who, p) in [("A", &a), ("B", &b)] {
        match (p.exit, &p.output.result) {
            (Some(0), Some(r)) if !r.ok => {
                problems.push(format!("{who}: exit 0 but result ok=false"))
            }
            (Some(1), Some(r)) if r.ok => {
                problems.push(format!("{who}: exit 1 but result ok=true"))
            }
            (Some(code), _) if code != 0 && code != 1 => {
                problems.push(format!("{who}: exit code {code} (error)"))
            }
            _ => {}
        }
    }
    let outcome = if timed_out {
        Outcome::Timeout
    } else if peer_ok(&a) && peer_ok(&b) {
        Outcome::Upgraded
    } else if peer_failed(&a) && peer_failed(&b) {
        Outcome::FailedClean
    } else {
        if (peer_ok(&a) && peer_failed(&b)) || (peer_failed(&a) && peer_ok(&b)) {
            problems.push("peers disagree on the outcome".into());
        }
        Outcome::Error
    };

    let pick = |f: fn(&PeerResult) -> Option<f64>| rb.and_then(f).or_else(|| ra.and_then(f));
    let rtt_ms = pick(|r| r.rtt_ms);
    let direct_rtt_ms = pick(|r| r.direct_rtt_ms);
    let time_to_direct_ms = pick(|r| r.time_to_direct_ms);

    let mut violations: Vec<String> = problems.clone();
    if timed_out {
        violations.push(format!("timed out after {:.1} s", duration.as_secs_f64()));
    }
    // In a hole punch A is the client and B the server; in the unilateral
    // direct dial B dials A, so B is the client there.
    let unilateral = [ra, rb].iter().flatten().any(|r| r.ok && r.unilateral);
    let (a_role, b_role) = if unilateral {
        ("server", "client")
    } else {
        ("client", "server")
    };
    for (who, r, role) in [("A", ra, a_role), ("B", rb, b_role)] {
        if let Some(r) = r {
            if r.role != role {
                violations.push(format!("{who} reported role {}, expected {role}", r.role));
            }
            if r.transport != case.transport.to_string() {
                violations.push(format!(
                    "{who} reported transport {}, expected {}",
                    r.transport, case.transport
                ));
            }
        }
    }
    match case.pair.expect {
        Expect::Upgrade { unilateral } => {
            if outcome != Outcome::Upgraded {
                violations.push(format!("expected an upgrade, got {outcome}"));
            } else if unilateral {
                for (who, r) in [("A", ra), ("B", rb)] {
                    if r.is_some_and(|r| !r.unilateral) {
                        violations.push(format!("{who}: expected unilateral=true (A is public)"));
                    }
                }
            }
        }
        Expect::FailClean => {
            if outcome != Outcome::FailedClean {
                violations.push(format!("expected a clean failure, got {outcome}"));
            } else {
                for (who, r) in [("A", ra), ("B", rb)] {
                    let Some(r) = r else { continue };
                    if r.attempts != PROTOCOL_ATTEMPTS {
                        violations.push(format!(
                            "{who}: attempts={}, expected {PROTOCOL_ATTEMPTS}",
                            r.attempts
                        ));
                    }
                    if !r.relay_usable {
                        violations.push(format!("{who}: relay_usable=false after a clean failure"));
                    }
                    if r.reason.as_deref().is_none_or(str::is_empty) {
                        violations.push(format!("{who}: no reason for the failure"));
                    }
                }
                if duration > FAIL_CLEAN_BOUND {
                    violations.push(format!(
                        "clean failure took {:.1} s, bound {} s",
                        duration.as_secs_f64(),
                        FAIL_CLEAN_BOUND.as_secs()
                    ));
                }
            }
        }
        Expect::Clean => {
            if !matches!(outcome, Outcome::Upgraded | Outcome::FailedClean) {
                violations.push(format!(
                    "expected an upgrade or a clean failure, got {outcome}"
                ));
            }
        }
    }
    violations.dedup();

    RunRecord {
        case: case.name(),
        pair: case.pair.name.into(),
        a_site: case.pair.a.to_string(),
        b_site: case.pair.b.to_string(),
        transport: case.transport,
        runtime: case.runtime.to_owned(),
        relay_rtt_target_ms: 2 * case.relay_delay_ms,
        run,
        outcome,
        expect: case.pair.expect,
        attempts: rb.or(ra).map(|r| r.attempts),
        rtt_ms,
        direct_rtt_ms,
        time_to_direct_ms,
        ratio: bound_ratio(time_to_direct_ms, rtt_ms, direct_rtt_ms),
        unilateral: rb.or(ra).map(|r| r.unilateral),
        reason: rb
            .and_then(|r| r.reason.clone())
            .or_else(|| ra.and_then(|r| r.reason.clone())),
        duration_ms: duration.as_secs_f64() * 1e3,
        setup_ms: 0.0,
        teardown_ms: None,
        problems,
        violations,
        a,
        b,
    }
}

/// Find the dcutr binary: `--dcutr`, else next to natlab, else on PATH.
pub(crate) fn locate_dcutr(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidate = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("dcutr")))
            .filter(|p| p.is_file())
            .or_else(|| crate::cmd::find_tool("dcutr")),
    };
    let Some(path) = candidate else {
        bail!(
            "no dcutr CLI found next to natlab or on PATH; build it (cargo build -p dcutr-cli) or pass --dcutr PATH"
        );
    };
    let path =
        std::fs::canonicalize(&path).with_context(|| format!("dcutr CLI {}", path.display()))?;
    if !path.is_file() {
        bail!("dcutr CLI {} is not a file", path.display());
    }
    Ok(path)
}

/// Run the matrix.
pub fn run(args: &Args) -> Result<ExitCode> {
    let dcutr = locate_dcutr(args.dcutr.as_deref())?;
    let case_timeout = Duration::from_secs_f64(args.case_timeout_s.max(0.1));
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name().contains(f)))
        .collect();
    if cases.is_empty() {
        bail!(
            "no case matches the filter {:?}",
            args.filter.as_deref().unwrap_or("")
        );
    }
    info!(dcutr = %dcutr.display(), cases = cases.len(), runs = args.runs, "matrix");
    let started = Instant::now();
    let mut names = RunNames::from_arg(args.run_id.as_deref())?;
    let mut records = Vec::new();
    for case in &cases {
        for run in 1..=args.runs.max(1) {
            let record = run_case(&dcutr, case, run, case_timeout, args, &mut names);
            info!(
                case = %record.case, run, outcome = %record.outcome,
                verdict = if record.passed() { "PASS" } else { "FAIL" },
                duration_s = record.duration_ms / 1e3,
                "run finished"
            );
            if args.json {
                println!("{}", serde_json::to_string(&record)?);
            }
            records.push(record);
        }
    }
    let total = started.elapsed();
    let rows = report::aggregate(&records);
    let table = report::render_markdown(&rows);
    if args.runs <= 1 && cases.len() == all_cases().len() && total > MATRIX_BUDGET {
        warn!(
            "the full matrix took {:.0} s, over its {} s budget",
            total.as_secs_f64(),
            MATRIX_BUDGET.as_secs()
        );
    }
    let batch = crate::batch::Batch {
        kind: "matrix",
        groups_name: "cases",
        groups: cases.len(),
        runs_per_group: args.runs.max(1),
        runs: records.len(),
        failed: records.iter().filter(|r| !r.passed()).count(),
        total,
        run_prefix: names.run_prefix(),
    };
    batch.finish(
        &table,
        args.json,
        serde_json::Map::new(),
        args.markdown.as_deref(),
        None,
    )
}

fn topology_for(case: &Case, args: &Args) -> TopologySpec {
    let mut spec = TopologySpec::new(case.pair.a, case.pair.b);
    spec.delay[0] = args.direct_delay_ms.map(DelaySpec::fixed);
    spec
}

/// One run in a fresh topology. Never fails: lab errors become an `Error`
/// record (with the lab's state printed), so the matrix always goes on.
fn run_case(
    dcutr: &Path,
    case: &Case,
    run: u32,
    timeout: Duration,
    args: &Args,
    names: &mut RunNames,
) -> RunRecord {
    let prefix = names.next_topology();
    let spec = topology_for(case, args);
    let lab = match Lab::build(&prefix, spec) {
        Ok(lab) => lab,
        Err(e) => {
            let mut r = evaluate(
                case,
                run,
                PeerRun::default(),
                PeerRun::default(),
                false,
                Duration::ZERO,
                vec![format!("lab: {e:#}")],
            );
            r.outcome = Outcome::Error;
            eprintln!(
                "===== {} run {run}: FAIL (lab could not be built) =====\n{e:#}",
                r.case
            );
            return r;
        }
    };
    let setup_ms = lab.setup_time().as_secs_f64() * 1e3;
    let (mut record, procs) = drive(dcutr, case, run, timeout, args, &lab);
    record.setup_ms = setup_ms;
    if !record.passed() || args.always_diagnose {
        let verdict = if record.passed() { "PASS" } else { "FAIL" };
        let mut text = format!(
            "===== {} run {run}: {verdict} ({}) =====\n",
            record.case, record.outcome
        );
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
    match lab.teardown() {
        Ok(t) => record.teardown_ms = Some(t.as_secs_f64() * 1e3),
        Err(e) => {
            record.problems.push(format!("lab teardown: {e:#}"));
            record.violations.push(format!("lab teardown: {e:#}"));
        }
    }
    record
}

/// Wait until both peers exit or `deadline`; once one has exited the other
/// gets at most `grace` ([`OTHER_PEER_GRACE`] by default). Returns whether time ran out.
pub(crate) fn wait_peers(peers: &mut [Proc], deadline: Instant, grace: Duration) -> Result<bool> {
    let mut deadline = deadline;
    let mut grace_started = false;
    loop {
        let mut exited = 0;
        for p in peers.iter_mut() {
            if p.try_wait()?.is_some() {
                exited += 1;
            }
        }
        if exited == peers.len() {
            return Ok(false);
        }
        if exited > 0 && !grace_started {
            grace_started = true;
            deadline = deadline.min(Instant::now() + grace);
        }
        if Instant::now() >= deadline {
            return Ok(true);
        }
        std::thread::sleep(PEER_POLL_INTERVAL);
    }
}

pub(crate) fn dcutr_args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Start relay, B, A; wait; evaluate. Returns the processes (still alive or
/// not) so the caller can dump their logs before teardown.
fn drive(
    dcutr: &Path,
    case: &Case,
    run: u32,
    timeout: Duration,
    args: &Args,
    lab: &Lab,
) -> (RunRecord, Vec<Proc>) {
    let exe = dcutr.to_string_lossy().into_owned();
    let relay_addr = format!("{RELAY_IP}:{RELAY_PORT}");
    let port = PEER_PORT.to_string();
    let transport_flag = match case.transport {
        Transport::Tcp => "--tcp",
        Transport::Quic => "--quic",
    };
    let mut procs: Vec<Proc> = Vec::new();
    let fail = |msg: String, procs: Vec<Proc>, elapsed: Duration| {
        let r = evaluate(
            case,
            run,
            PeerRun::default(),
            PeerRun::default(),
            false,
            elapsed,
            vec![msg],
        );
        (r, procs)
    };

    let mut relay_args = dcutr_args(&["relay", "--listen", &relay_addr, "--json"]);
    if case.relay_delay_ms > 0 {
        relay_args.extend(dcutr_args(&[
            "--delay-ms",
            &case.relay_delay_ms.to_string(),
        ]));
    }
    match lab.spawn("relay", &lab.relay_ns(), &exe, &relay_args) {
        Ok(p) => procs.push(p),
        Err(e) => return fail(format!("relay: {e:#}"), procs, Duration::ZERO),
    }
    if let Err(e) = procs[0].wait_for_line(
        Instant::now() + RELAY_READY_TIMEOUT,
        "listening event",
        |l| contract::is_event(l, contract::RELAY_LISTENING_EVENT),
    ) {
        return fail(format!("relay: {e:#}"), procs, Duration::ZERO);
    }

    let started = Instant::now();
    let deadline = started + timeout;
    let mut lab_problems = Vec::new();
    let b_args = dcutr_args(&[
        "peer",
        "--relay",
        &relay_addr,
        "--name",
        "b",
        transport_flag,
        &port,
        "--json",
        "--runtime",
        case.runtime,
    ]);
    match lab.spawn("peer B", &lab.host_ns(2), &exe, &b_args) {
        Ok(p) => procs.push(p),
        Err(e) => return fail(format!("peer B: {e:#}"), procs, started.elapsed()),
    }
    let ready_by = (Instant::now() + PEER_READY_TIMEOUT).min(deadline);
    if let Err(e) = procs[1].wait_for_line(ready_by, "registered event", |l| {
        contract::is_event(l, contract::PEER_REGISTERED_EVENT)
    }) {
        // Not fatal: B's result will tell. A starts anyway.
        lab_problems.push(format!("B: {e:#} (started A anyway)"));
    }
    let a_args = dcutr_args(&[
        "peer",
        "--relay",
        &relay_addr,
        "--name",
        "a",
        "--connect",
        "b",
        transport_flag,
        &port,
        "--json",
        "--runtime",
        case.runtime,
    ]);
    match lab.spawn("peer A", &lab.host_ns(1), &exe, &a_args) {
        Ok(p) => procs.push(p),
        Err(e) => return fail(format!("peer A: {e:#}"), procs, started.elapsed()),
    }

    let grace = Duration::from_secs_f64(args.peer_grace_s.max(0.0));
    let timed_out = match wait_peers(&mut procs[1..3], deadline, grace) {
        Ok(t) => t,
        Err(e) => {
            lab_problems.push(format!("{e:#}"));
            true
        }
    };
    let duration = started.elapsed();
    if let Ok(Some(status)) = procs[0].try_wait() {
        lab_problems.push(format!("relay exited during the run ({status})"));
    }
    if timed_out {
        for p in procs.iter_mut().skip(1) {
            p.kill();
        }
    }
    // Give the reader threads a moment to drain the pipes of exited peers.
    std::thread::sleep(Duration::from_millis(20));
    let peer_run = |p: &mut Proc| PeerRun {
        exit: p.try_wait().ok().flatten().and_then(|s| s.code()),
        output: contract::parse_output(&p.stdout_lines()),
    };
    let b = peer_run(&mut procs[1]);
    let a = peer_run(&mut procs[2]);
    let record = evaluate(case, run, a, b, timed_out, duration, lab_problems);
    (record, procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        ok: bool,
        role: &str,
        transport: &str,
        attempts: u32,
        unilateral: bool,
    ) -> PeerResult {
        PeerResult {
            ok,
            transport: transport.into(),
            role: role.into(),
            remote: ok.then(|| "203.0.113.12:5000".into()),
            attempts,
            unilateral,
            rtt_ms: Some(100.0),
            time_to_direct_ms: ok.then_some(200.0),
            direct_rtt_ms: ok.then_some(10.0),
            relay_usable: true,
            reason: (!ok).then(|| "no direct path".into()),
        }
    }

    fn peer(exit: i32, r: PeerResult) -> PeerRun {
        PeerRun {
            exit: Some(exit),
            output: PeerOutput {
                events: vec!["result".into()],
                result: Some(r),
                problems: vec![],
            },
        }
    }

    fn case(name: &str, transport: Transport) -> Case {
        Case {
            pair: *PAIRS.iter().find(|p| p.name == name).unwrap(),
            transport,
            relay_delay_ms: 50,
            runtime: DEFAULT_RUNTIME,
        }
    }

    #[test]
    fn the_matrix_has_twenty_four_cases_with_unique_names() {
        let cases = all_cases();
        assert_eq!(cases.len(), 24, "20 on tokio, 4 cone/cone on smol");
        let mut names: Vec<String> = cases.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 24);
        assert!(names.contains(&"symmetric/symmetric quic rtt100".to_string()));
        assert!(names.contains(&"cone/public tcp rtt0".to_string()));
        assert!(names.contains(&"cone/cone quic rtt100 smol".to_string()));
    }

    #[test]
    fn a_good_cone_upgrade_passes_and_computes_the_ratio() {
        let c = case("cone/cone", Transport::Tcp);
        let r = evaluate(
            &c,
            1,
            peer(0, result(true, "client", "tcp", 1, false)),
            peer(0, result(true, "server", "tcp", 1, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Upgraded);
        assert!(r.passed(), "{:?}", r.violations);
        assert_eq!(r.ratio, Some(200.0 / 160.0));
        assert_eq!(r.attempts, Some(1));
        assert_eq!(r.relay_rtt_target_ms, 100);
    }

    #[test]
    fn swapped_roles_fail_even_when_upgraded() {
        let c = case("cone/cone", Transport::Quic);
        let r = evaluate(
            &c,
            1,
            peer(0, result(true, "server", "quic", 1, false)),
            peer(0, result(true, "client", "quic", 1, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Upgraded);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("A reported role server"))
        );
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("B reported role client"))
        );
    }

    #[test]
    fn the_public_pair_needs_a_unilateral_upgrade() {
        let c = case("cone/public", Transport::Tcp);
        let not_uni = evaluate(
            &c,
            1,
            peer(0, result(true, "client", "tcp", 0, false)),
            peer(0, result(true, "server", "tcp", 0, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert!(!not_uni.passed());
        // In the direct dial B dials A: B is the client, A the server.
        let uni = evaluate(
            &c,
            1,
            peer(0, result(true, "server", "tcp", 0, true)),
            peer(0, result(true, "client", "tcp", 0, true)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert!(uni.passed(), "{:?}", uni.violations);
    }

    #[test]
    fn symmetric_pair_must_fail_cleanly_after_three_attempts_within_the_bound() {
        let c = case("symmetric/symmetric", Transport::Tcp);
        let good = evaluate(
            &c,
            1,
            peer(1, result(false, "client", "tcp", 3, false)),
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            Duration::from_secs(10),
            vec![],
        );
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);
        assert_eq!(good.reason.as_deref(), Some("no direct path"));

        let two = evaluate(
            &c,
            1,
            peer(1, result(false, "client", "tcp", 2, false)),
            peer(1, result(false, "server", "tcp", 2, false)),
            false,
            Duration::from_secs(10),
            vec![],
        );
        assert!(two.violations.iter().any(|v| v.contains("attempts=2")));

        let slow = evaluate(
            &c,
            1,
            peer(1, result(false, "client", "tcp", 3, false)),
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            FAIL_CLEAN_BOUND + Duration::from_secs(1),
            vec![],
        );
        assert!(slow.violations.iter().any(|v| v.contains("bound")));

        let mut broken = result(false, "server", "tcp", 3, false);
        broken.relay_usable = false;
        let r = evaluate(
            &c,
            1,
            peer(1, result(false, "client", "tcp", 3, false)),
            peer(1, broken),
            false,
            Duration::from_secs(10),
            vec![],
        );
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("relay_usable=false"))
        );
    }

    #[test]
    fn crashes_timeouts_and_disagreements_are_errors() {
        let c = case("symmetric/cone", Transport::Tcp);
        let crash = PeerRun {
            exit: Some(101),
            output: contract::parse_output(&["thread panicked".to_string()]),
        };
        let r = evaluate(
            &c,
            1,
            crash,
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.violations.iter().any(|v| v.contains("exit code 101")));

        let r = evaluate(
            &c,
            1,
            PeerRun::default(),
            PeerRun::default(),
            true,
            Duration::from_secs(40),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Timeout);
        assert!(!r.passed());

        let r = evaluate(
            &c,
            1,
            peer(0, result(true, "client", "tcp", 1, false)),
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.problems.iter().any(|p| p.contains("disagree")));
    }

    #[test]
    fn report_only_pairs_pass_either_clean_outcome() {
        let c = case("cone/cone-no-firewall", Transport::Tcp);
        let up = evaluate(
            &c,
            1,
            peer(0, result(true, "client", "tcp", 2, false)),
            peer(0, result(true, "server", "tcp", 2, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        let down = evaluate(
            &c,
            1,
            peer(1, result(false, "client", "tcp", 3, false)),
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert!(up.passed() && down.passed());
    }

    #[test]
    fn exit_codes_must_agree_with_the_result() {
        let c = case("symmetric/cone", Transport::Tcp);
        let r = evaluate(
            &c,
            1,
            peer(0, result(false, "client", "tcp", 3, false)),
            peer(1, result(false, "server", "tcp", 3, false)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("exit 0 but result ok=false"))
        );
        assert_eq!(r.outcome, Outcome::Error);
    }
}
