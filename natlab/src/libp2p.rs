//! `natlab libp2p`: stock rust-libp2p (`libp2p::dcutr`) behind one cone NAT
//! and ours (`dcutr_libp2p`) behind the other, in both roles, over TCP and
//! over QUIC.
//!
//! Each run builds a fresh cone/cone topology (firewall on both routers)
//! and starts the lab node of `dcutr-libp2p` (`examples/lab_node.rs`)
//! three times: a libp2p circuit relay on the relay host, the listener
//! (holds the reservation; the spec's B) at site 2, the dialer (dials the
//! listener's relayed address; the spec's A) at site 1. Both peers must
//! report a non-relayed connection to each other and bytes echoed over it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use crate::contract::parse_event;
use crate::matrix::{
    OTHER_PEER_GRACE, PEER_PORT, RELAY_PORT, RELAY_READY_TIMEOUT, Transport, wait_peers,
};
use crate::names::RunNames;
use crate::nat::Site;
use crate::proc::Proc;
use crate::stats::median;
use crate::topo::{DelaySpec, Lab, RELAY_IP, TopologySpec};

/// Seeds of the three nodes' keys (their peer ids follow from them).
const RELAY_SEED: u64 = 1;
const LISTENER_SEED: u64 = 2;
const DIALER_SEED: u64 = 3;

/// How long each peer node may run, from its start to its result: ours
/// gives up after three attempts of at most 10 s per step.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(35);

/// How long the listener may take to print `reserved`: the node's own
/// setup limit (10 s: relay, reservation, observed address) plus slack.
pub const LISTENER_READY_TIMEOUT: Duration = Duration::from_secs(12);

/// Default limit for one run, from starting the listener until both peers
/// exited: the listener's setup, then the dialer's whole run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(50);

/// Lets the reader threads drain the pipes of peers that just exited.
const PIPE_DRAIN_PAUSE: Duration = Duration::from_millis(20);

/// Event the relay prints once it listens (with its `peer_id`).
const RELAY_LISTENING_EVENT: &str = "listening";

/// Event the listener prints once it can be dialled through the relay.
const LISTENER_RESERVED_EVENT: &str = "reserved";

/// Event name of a node's final line.
const RESULT_EVENT: &str = "result";

/// `natlab libp2p` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lab node (default: `examples/lab_node` next to natlab, i.e.
    /// `target/debug/examples/lab_node` after
    /// `cargo build --workspace --lib --bins --examples`).
    #[arg(long)]
    pub node: Option<PathBuf>,
    /// Runs per pairing.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Also run the reference pairings, stock/stock and ours/ours.
    #[arg(long)]
    pub reference: bool,
    /// Only pairings whose name contains this (e.g. "stock-B" or "quic").
    #[arg(long)]
    pub filter: Option<String>,
    /// The transports to run every pairing over, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tcp,quic", value_parser = parse_transport)]
    pub transports: Vec<Transport>,
    /// Put a delay line of this one-way delay in front of both sites: adds
    /// 4x this to the relayed RTT and to the direct one.
    #[arg(long)]
    pub delay_ms: Option<f64>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON record per run (and a summary) on stdout; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_RUN_TIMEOUT.as_secs_f64())]
    pub run_timeout_s: f64,
    /// Print the lab diagnostics for every run, not only failing ones.
    #[arg(long)]
    pub always_diagnose: bool,
    /// Run id, 4 hex digits (default: random): every namespace of the run
    /// is then called `nl<id>..-*`.
    #[arg(long, value_name = "HEX")]
    pub run_id: Option<String>,
}

/// Which DCUtR a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impl {
    /// `libp2p::dcutr` (libp2p-dcutr).
    Stock,
    /// `dcutr_libp2p`.
    Ours,
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Impl::Stock => "stock",
            Impl::Ours => "ours",
        })
    }
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    match s {
        "tcp" => Ok(Transport::Tcp),
        "quic" => Ok(Transport::Quic),
        other => Err(format!("unknown transport {other:?} (tcp or quic)")),
    }
}

/// Who runs what over which transport: B listens (holds the
/// reservation), A dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    /// The listener's DCUtR (site 2).
    pub b: Impl,
    /// The dialer's DCUtR (site 1).
    pub a: Impl,
    /// The transport of the relay connections and of the punch.
    pub transport: Transport,
}

impl Pairing {
    /// `stock-B/ours-A tcp`.
    pub fn name(&self) -> String {
        format!("{}-B/{}-A {}", self.b, self.a, self.transport)
    }

    /// The same pairing over `transport`.
    #[must_use]
    pub fn over(self, transport: Transport) -> Self {
        Pairing { transport, ..self }
    }

    /// A node's listening address on `ip` and `port` over this transport.
    fn listen_addr(&self, ip: &str, port: u16) -> String {
        match self.transport {
            Transport::Tcp => format!("/ip4/{ip}/tcp/{port}"),
            Transport::Quic => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        }
    }
}

/// The pairings the task is about: stock against ours, both roles.
pub const MIXED: [Pairing; 2] = [
    Pairing {
        b: Impl::Stock,
        a: Impl::Ours,
        transport: Transport::Tcp,
    },
    Pairing {
        b: Impl::Ours,
        a: Impl::Stock,
        transport: Transport::Tcp,
    },
];

/// Same-implementation pairings, for reference (`--reference`).
pub const REFERENCE: [Pairing; 2] = [
    Pairing {
        b: Impl::Stock,
        a: Impl::Stock,
        transport: Transport::Tcp,
    },
    Pairing {
        b: Impl::Ours,
        a: Impl::Ours,
        transport: Transport::Tcp,
    },
];

/// A node's `result` line (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    /// Direct connection up and echoed over.
    pub ok: bool,
    /// A non-relayed connection to the peer came up.
    pub direct: bool,
    /// Why not ok.
    pub reason: Option<String>,
    /// The direct connection's remote address.
    pub remote: Option<String>,
    /// `dialer` or `listener` at the transport level.
    pub endpoint: Option<String>,
    /// `client` or `server` in security and muxer negotiation.
    pub role: Option<String>,
    /// From the relayed connection to the direct one, ms.
    pub time_to_direct_ms: Option<f64>,
    /// Bytes echoed over the direct connection.
    pub echo: bool,
    /// The DCUtR behaviour's own event: `ok`, `error`, or none.
    pub dcutr_outcome: Option<String>,
    /// Its error text.
    pub dcutr_error: Option<String>,
}

/// What natlab took from one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeRun {
    /// Exit code (`None`: killed or never exited).
    pub exit: Option<i32>,
    /// Event names in order.
    pub events: Vec<String>,
    /// The result line.
    pub result: Option<NodeResult>,
    /// Output that breaks the node's contract.
    pub problems: Vec<String>,
}

/// Read a node's stdout: JSON lines with an `event`, the `result` last.
pub fn parse_node_output(lines: &[String]) -> NodeRun {
    let mut run = NodeRun::default();
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let (name, value) = match parse_event(line) {
            Ok(x) => x,
            Err(e) => {
                run.problems.push(e);
                continue;
            }
        };
        if run.result.is_some() {
            run.problems
                .push(format!("event {name:?} after the result"));
        }
        if name == RESULT_EVENT {
            match serde_json::from_value::<NodeResult>(value) {
                Ok(r) if run.result.is_none() => run.result = Some(r),
                Ok(_) => run.problems.push("more than one result".into()),
                Err(e) => run.problems.push(format!("malformed result ({e}): {line}")),
            }
        }
        run.events.push(name);
    }
    if run.result.is_none() {
        run.problems.push("no result line".into());
    }
    run
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Both peers: a direct connection, echoed over, exit 0.
    Direct,
    /// Both peers exited 1: no direct connection (or no echo over it).
    NoDirect,
    /// Anything else: crash, setup failure, disagreement.
    Error,
    /// The run hit its time limit.
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Direct => "direct",
            Outcome::NoDirect => "no-direct",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        })
    }
}

/// Everything recorded about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Pairing name.
    pub pairing: String,
    /// The listener's DCUtR.
    pub b_impl: Impl,
    /// The dialer's DCUtR.
    pub a_impl: Impl,
    /// Run number within the pairing (1-based).
    pub run: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The listener.
    pub b: NodeRun,
    /// The dialer.
    pub a: NodeRun,
    /// The dialer's time from relayed to direct connection (B's if A has none), ms.
    pub time_to_direct_ms: Option<f64>,
    /// From starting B until both peers exited, ms.
    pub duration_ms: f64,
    /// Topology build time, ms.
    pub setup_ms: f64,
    /// Topology teardown time, ms.
    pub teardown_ms: Option<f64>,
    /// Unmet expectations. Empty = PASS.
    pub violations: Vec<String>,
}

impl RunRecord {
    /// Whether the run met its expectation: a direct connection on both sides.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judge one run (pure: unit-tested without root).
pub fn evaluate(
    pairing: Pairing,
    run: u32,
    a: NodeRun,
    b: NodeRun,
    timed_out: bool,
    duration: Duration,
    lab_problems: Vec<String>,
) -> RunRecord {
    let mut violations = lab_problems;
    let ok = |n: &NodeRun| matches!((n.exit, &n.result), (Some(0), Some(r)) if r.ok);
    let clean_fail = |n: &NodeRun| matches!((n.exit, &n.result), (Some(1), Some(r)) if !r.ok);
    for (who, n) in [("B", &b), ("A", &a)] {
        violations.extend(n.problems.iter().map(|p| format!("{who}: {p}")));
        match (n.exit, &n.result) {
            (Some(0), Some(r)) if !r.ok => violations.push(format!("{who}: exit 0 but ok=false")),
            (Some(1), Some(r)) if r.ok => violations.push(format!("{who}: exit 1 but ok=true")),
            (Some(code), _) if code != 0 && code != 1 => {
                violations.push(format!("{who}: exit code {code} (error)"));
            }
            _ => {}
        }
        let Some(r) = &n.result else { continue };
        if r.ok {
            // The node's own checks, double-checked from its report.
            if !r.direct || !r.echo {
                violations.push(format!("{who}: ok without a direct connection echoed over"));
            }
            if r.remote
                .as_deref()
                .is_none_or(|s| s.contains("p2p-circuit"))
            {
                violations.push(format!(
                    "{who}: the direct connection's remote {:?} is not a direct address",
                    r.remote
                ));
            }
        } else {
            violations.push(format!(
                "{who} ({}): no direct connection: {}",
                if who == "B" { pairing.b } else { pairing.a },
                r.reason.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    let outcome = if timed_out {
        violations.push(format!("timed out after {:.1} s", duration.as_secs_f64()));
        Outcome::Timeout
    } else if ok(&a) && ok(&b) {
        Outcome::Direct
    } else if clean_fail(&a) && clean_fail(&b) {
        Outcome::NoDirect
    } else {
        Outcome::Error
    };
    if outcome != Outcome::Direct {
        violations.push(format!(
            "expected a direct connection on both sides, got {outcome}"
        ));
    }
    violations.dedup();
    let ttd = |n: &NodeRun| n.result.as_ref().and_then(|r| r.time_to_direct_ms);
    RunRecord {
        pairing: pairing.name(),
        b_impl: pairing.b,
        a_impl: pairing.a,
        run,
        outcome,
        time_to_direct_ms: ttd(&a).or_else(|| ttd(&b)),
        b,
        a,
        duration_ms: duration.as_secs_f64() * 1e3,
        setup_ms: 0.0,
        teardown_ms: None,
        violations,
    }
}

/// How the DCUtR behaviours themselves reported, counted: `ok 3, none 2`.
fn dcutr_outcomes(records: &[&RunRecord], side: impl Fn(&RunRecord) -> &NodeRun) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in records {
        let label = side(r)
            .result
            .as_ref()
            .map_or("no result", |res| {
                res.dcutr_outcome.as_deref().unwrap_or("none")
            })
            .to_owned();
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts
        .iter()
        .map(|(l, n)| format!("{l} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown table: one row per pairing.
pub fn render_markdown(records: &[RunRecord]) -> String {
    let mut out = String::from(
        "| pairing | B (listener, site 2) | A (dialer, site 1) | runs | direct connections (both sides) | median time to direct ms | B's dcutr event | A's dcutr event | verdict |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.pairing.as_str()) {
            order.push(&r.pairing);
        }
    }
    for name in order {
        let runs: Vec<&RunRecord> = records.iter().filter(|r| r.pairing == name).collect();
        let first = runs[0];
        let direct = runs.iter().filter(|r| r.outcome == Outcome::Direct).count();
        let ttd = median(
            &runs
                .iter()
                .filter_map(|r| r.time_to_direct_ms)
                .collect::<Vec<_>>(),
        );
        let failed = runs.iter().filter(|r| !r.passed()).count();
        let verdict = if failed == 0 {
            "PASS".to_owned()
        } else {
            format!("FAIL ({failed}/{})", runs.len())
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {direct}/{} | {} | {} | {} | {verdict} |\n",
            first.b_impl,
            first.a_impl,
            runs.len(),
            runs.len(),
            ttd.map_or("-".into(), |t| format!("{t:.1}")),
            dcutr_outcomes(&runs, |r| &r.b),
            dcutr_outcomes(&runs, |r| &r.a),
        ));
    }
    out.push_str(
        "\ncone/cone, firewall on both routers, over the transport named in the pairing; time to direct = the dialer's, from its relayed connection to its first direct one; dcutr event = the behaviour's own outcome event (none: it reported nothing).\n",
    );
    out
}

/// Find the lab node: `--node`, else `examples/lab_node` next to natlab.
fn locate_node(explicit: Option<&Path>) -> Result<PathBuf> {
    let candidate = match explicit {
        Some(p) => p.to_path_buf(),
        None => crate::self_exe()?
            .parent()
            .context("natlab has no parent directory")?
            .join("examples")
            .join("lab_node"),
    };
    if !candidate.is_file() {
        bail!(
            "no lab node at {}; build it with `cargo build --workspace --lib --bins --examples` or pass --node PATH",
            candidate.display()
        );
    }
    std::fs::canonicalize(&candidate).with_context(|| format!("lab node {}", candidate.display()))
}

/// Run `natlab libp2p`.
pub fn run(args: &Args) -> Result<ExitCode> {
    if let Some(code) = crate::needs_root() {
        return Ok(code);
    }
    crate::cmd::ensure_tools()?;
    let node = locate_node(args.node.as_deref())?;
    let timeout = Duration::from_secs_f64(args.run_timeout_s.max(0.1));
    let mut base: Vec<Pairing> = MIXED.to_vec();
    if args.reference {
        base.extend(REFERENCE);
    }
    let mut pairings: Vec<Pairing> = Vec::new();
    for &transport in &args.transports {
        pairings.extend(base.iter().map(|p| p.over(transport)));
    }
    pairings.retain(|p| args.filter.as_deref().is_none_or(|f| p.name().contains(f)));
    if pairings.is_empty() {
        bail!("no pairing matches the filter {:?}", args.filter);
    }
    info!(node = %node.display(), pairings = pairings.len(), runs = args.runs, "libp2p");
    let started = Instant::now();
    let mut names = RunNames::from_arg(args.run_id.as_deref())?;
    let mut records = Vec::new();
    for &pairing in &pairings {
        for run in 1..=args.runs.max(1) {
            let record = run_one(&node, pairing, run, timeout, args, &mut names);
            info!(
                pairing = %record.pairing, run, outcome = %record.outcome,
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
    let table = render_markdown(&records);
    let batch = crate::batch::Batch {
        kind: "libp2p",
        groups_name: "pairings",
        groups: pairings.len(),
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

/// One run in a fresh topology. Never fails: lab errors become an `Error`
/// record, printed with the lab's state.
fn run_one(
    node: &Path,
    pairing: Pairing,
    run: u32,
    timeout: Duration,
    args: &Args,
    names: &mut RunNames,
) -> RunRecord {
    let prefix = names.next_topology();
    let mut spec = TopologySpec::new(Site::CONE, Site::CONE);
    if let Some(d) = args.delay_ms {
        spec.delay = [Some(DelaySpec::fixed(d)), Some(DelaySpec::fixed(d))];
    }
    let failed_record = |msg: String| {
        evaluate(
            pairing,
            run,
            NodeRun::default(),
            NodeRun::default(),
            false,
            Duration::ZERO,
            vec![msg],
        )
    };
    let lab = match Lab::build(&prefix, spec) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!(
                "===== {} run {run}: FAIL (lab could not be built) =====\n{e:#}",
                pairing.name()
            );
            return failed_record(format!("lab: {e:#}"));
        }
    };
    let (mut record, procs) = drive(node, pairing, run, timeout, &lab);
    record.setup_ms = lab.setup_time().as_secs_f64() * 1e3;
    if !record.passed() || args.always_diagnose {
        let mut text = format!(
            "===== {} run {run}: {} ({}) =====\n",
            record.pairing,
            if record.passed() { "PASS" } else { "FAIL" },
            record.outcome
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
        Err(e) => record.violations.push(format!("lab teardown: {e:#}")),
    }
    record
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The `peer_id` field of a JSON event line.
fn peer_id_of(line: &str) -> Result<String> {
    let (_, value) = parse_event(line).map_err(anyhow::Error::msg)?;
    value
        .get("peer_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no peer_id in {line}"))
}

/// Start relay, B, A; wait; evaluate. Returns the processes so the caller
/// can dump their output before teardown.
fn drive(
    node: &Path,
    pairing: Pairing,
    run: u32,
    timeout: Duration,
    lab: &Lab,
) -> (RunRecord, Vec<Proc>) {
    let exe = node.to_string_lossy().into_owned();
    let mut procs: Vec<Proc> = Vec::new();
    let fail = |msg: String, procs: Vec<Proc>, elapsed: Duration| {
        let r = evaluate(
            pairing,
            run,
            NodeRun::default(),
            NodeRun::default(),
            false,
            elapsed,
            vec![msg],
        );
        (r, procs)
    };

    let relay_listen = pairing.listen_addr(&RELAY_IP.to_string(), RELAY_PORT);
    let relay_args = strings(&[
        "relay",
        "--seed",
        &RELAY_SEED.to_string(),
        "--listen",
        &relay_listen,
    ]);
    match lab.spawn("relay", &lab.relay_ns(), &exe, &relay_args) {
        Ok(p) => procs.push(p),
        Err(e) => return fail(format!("relay: {e:#}"), procs, Duration::ZERO),
    }
    let relay_id = match procs[0]
        .wait_for_line(
            Instant::now() + RELAY_READY_TIMEOUT,
            "listening event",
            |l| crate::contract::is_event(l, RELAY_LISTENING_EVENT),
        )
        .and_then(|l| peer_id_of(&l))
    {
        Ok(id) => id,
        Err(e) => return fail(format!("relay: {e:#}"), procs, Duration::ZERO),
    };
    let relay_addr = format!("{relay_listen}/p2p/{relay_id}");
    let peer_listen = pairing.listen_addr("0.0.0.0", PEER_PORT);
    let node_timeout = NODE_TIMEOUT.as_secs_f64().to_string();

    let started = Instant::now();
    let deadline = started + timeout;
    let mut lab_problems = Vec::new();
    let b_args = strings(&[
        "listen",
        "--seed",
        &LISTENER_SEED.to_string(),
        "--dcutr",
        &pairing.b.to_string(),
        "--listen",
        &peer_listen,
        "--relay",
        &relay_addr,
        "--timeout-s",
        &node_timeout,
    ]);
    match lab.spawn("listener B", &lab.host_ns(2), &exe, &b_args) {
        Ok(p) => procs.push(p),
        Err(e) => return fail(format!("listener B: {e:#}"), procs, started.elapsed()),
    }
    let ready_by = (Instant::now() + LISTENER_READY_TIMEOUT).min(deadline);
    let b_id = match procs[1]
        .wait_for_line(ready_by, "reserved event", |l| {
            crate::contract::is_event(l, LISTENER_RESERVED_EVENT)
        })
        .and_then(|l| peer_id_of(&l))
    {
        Ok(id) => Some(id),
        Err(e) => {
            lab_problems.push(format!("B: {e:#}"));
            None
        }
    };
    if let Some(b_id) = b_id {
        let a_args = strings(&[
            "dial",
            "--seed",
            &DIALER_SEED.to_string(),
            "--dcutr",
            &pairing.a.to_string(),
            "--listen",
            &peer_listen,
            "--relay",
            &relay_addr,
            "--peer",
            &b_id,
            "--timeout-s",
            &node_timeout,
        ]);
        match lab.spawn("dialer A", &lab.host_ns(1), &exe, &a_args) {
            Ok(p) => procs.push(p),
            Err(e) => lab_problems.push(format!("dialer A: {e:#}")),
        }
    }

    let timed_out = match wait_peers(&mut procs[1..], deadline, OTHER_PEER_GRACE) {
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
    std::thread::sleep(PIPE_DRAIN_PAUSE);
    let node_run = |p: &mut Proc| {
        let mut n = parse_node_output(&p.stdout_lines());
        n.exit = p.try_wait().ok().flatten().and_then(|s| s.code());
        n
    };
    let b = node_run(&mut procs[1]);
    let a = match procs.get_mut(2) {
        Some(p) => node_run(p),
        None => NodeRun {
            problems: vec!["never started".into()],
            ..NodeRun::default()
        },
    };
    let record = evaluate(pairing, run, a, b, timed_out, duration, lab_problems);
    (record, procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool, remote: Option<&str>, dcutr: Option<&str>) -> NodeResult {
        NodeResult {
            ok,
            direct: ok,
            reason: (!ok).then(|| "no direct connection".into()),
            remote: remote.map(str::to_owned),
            endpoint: ok.then(|| "dialer".into()),
            role: ok.then(|| "client".into()),
            time_to_direct_ms: ok.then_some(9.0),
            echo: ok,
            dcutr_outcome: dcutr.map(str::to_owned),
            dcutr_error: None,
        }
    }

    fn node(exit: i32, r: NodeResult) -> NodeRun {
        NodeRun {
            exit: Some(exit),
            events: vec!["result".into()],
            result: Some(r),
            problems: vec![],
        }
    }

    const DIRECT: Option<&str> = Some("/ip4/203.0.113.12/tcp/5000/p2p/12D3KooW");

    #[test]
    fn a_direct_connection_on_both_sides_passes() {
        let r = evaluate(
            MIXED[0],
            1,
            node(0, result(true, DIRECT, Some("ok"))),
            node(0, result(true, DIRECT, None)),
            false,
            Duration::from_secs(2),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Direct);
        assert!(r.passed(), "{:?}", r.violations);
        assert_eq!(r.pairing, "stock-B/ours-A tcp");
        assert_eq!(r.time_to_direct_ms, Some(9.0));
    }

    #[test]
    fn one_side_without_a_direct_connection_fails_and_says_which() {
        let r = evaluate(
            MIXED[1],
            1,
            node(1, result(false, None, Some("error"))),
            node(0, result(true, DIRECT, Some("ok"))),
            false,
            Duration::from_secs(2),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Error);
        assert!(
            r.violations
                .iter()
                .any(|v| v.starts_with("A (stock): no direct connection")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_relayed_remote_or_a_missing_echo_is_not_direct() {
        let mut no_echo = result(true, DIRECT, None);
        no_echo.echo = false;
        let r = evaluate(
            MIXED[0],
            1,
            node(
                0,
                result(
                    true,
                    Some("/ip4/203.0.113.1/tcp/4000/p2p/R/p2p-circuit/p2p/B"),
                    None,
                ),
            ),
            node(0, no_echo),
            false,
            Duration::from_secs(2),
            vec![],
        );
        assert!(!r.passed());
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("not a direct address"))
        );
        assert!(r.violations.iter().any(|v| v.contains("echoed over")));
    }

    #[test]
    fn timeouts_crashes_and_bad_output_fail() {
        let r = evaluate(
            MIXED[0],
            1,
            NodeRun::default(),
            NodeRun::default(),
            true,
            DEFAULT_RUN_TIMEOUT,
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Timeout);
        assert!(!r.passed());
        let crashed = NodeRun {
            exit: Some(101),
            ..parse_node_output(&["thread 'main' panicked".to_owned()])
        };
        assert_eq!(crashed.problems.len(), 2, "{:?}", crashed.problems);
        let r = evaluate(
            MIXED[0],
            1,
            crashed,
            node(0, result(true, DIRECT, None)),
            false,
            Duration::from_secs(1),
            vec![],
        );
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.violations.iter().any(|v| v.contains("exit code 101")));
    }

    #[test]
    fn node_output_parses_the_result_and_flags_late_events() {
        let lines: Vec<String> = [
            r#"{"event":"reserved","peer_id":"x"}"#,
            r#"{"event":"result","ok":true,"direct":true,"reason":null,"remote":"/ip4/203.0.113.11/tcp/5000","endpoint":"dialer","role":"server","time_to_direct_ms":9.3,"echo":true,"dcutr_outcome":"ok","dcutr_error":null,"extra":1}"#,
            r#"{"event":"late"}"#,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let n = parse_node_output(&lines);
        assert_eq!(n.events, ["reserved", "result", "late"]);
        let r = n.result.unwrap();
        assert!(r.ok && r.direct && r.echo);
        assert_eq!(r.role.as_deref(), Some("server"));
        assert_eq!(n.problems, ["event \"late\" after the result"]);
        assert_eq!(
            peer_id_of(r#"{"event":"listening","peer_id":"12D3"}"#).unwrap(),
            "12D3"
        );
    }

    #[test]
    fn the_table_has_a_row_per_pairing_with_counts_and_medians() {
        let rec = |p: Pairing, ok: bool, ttd: f64| {
            let mut r = evaluate(
                p,
                1,
                node(
                    if ok { 0 } else { 1 },
                    result(ok, ok.then_some(DIRECT.unwrap()), Some("ok")),
                ),
                node(0, result(true, DIRECT, None)),
                false,
                Duration::from_secs(1),
                vec![],
            );
            r.time_to_direct_ms = Some(ttd);
            r
        };
        let md = render_markdown(&[
            rec(MIXED[0], true, 10.0),
            rec(MIXED[1], true, 5.0),
            rec(MIXED[0], true, 20.0),
            rec(MIXED[0], false, 30.0),
        ]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("| pairing |"));
        assert_eq!(
            lines[2],
            "| stock-B/ours-A tcp | stock | ours | 3 | 2/3 | 20.0 | none 3 | ok 3 | FAIL (1/3) |"
        );
        assert_eq!(
            lines[3],
            "| ours-B/stock-A tcp | ours | stock | 1 | 1/1 | 5.0 | none 1 | ok 1 | PASS |"
        );
    }

    #[test]
    fn pairing_names_say_who_listens() {
        assert_eq!(MIXED[1].name(), "ours-B/stock-A tcp");
        assert_eq!(
            REFERENCE[0].over(Transport::Quic).name(),
            "stock-B/stock-A quic"
        );
    }
}
