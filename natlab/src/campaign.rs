//! The one campaign runner behind `natlab matrix`, `broken` and `libp2p`.
//!
//! A campaign only says what its cases are, which topology a case needs,
//! how to drive one run, and what it expects of what it saw
//! ([`Campaign`]). The runner does the rest for all of them: the filter,
//! a fresh topology per run, the diagnostics of a failing run, teardown,
//! the JSON records, the Markdown table and the summary line.
//!
//! Shared pieces of driving live here too: the peers' JSON-lines output
//! ([`PeerRun`]), waiting for two peers within a deadline
//! ([`wait_peers`]), and the outcome both peers' exits make ([`outcome`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::names::RunNames;
use crate::proc::Proc;
use crate::topo::{Lab, TopologySpec};

/// Port every relay of the lab listens on.
pub const RELAY_PORT: u16 = 4000;

/// Port each peer listens on (TCP, or UDP for QUIC).
pub const PEER_PORT: u16 = 5000;

/// How long a relay may take to print that it listens. The bind itself is
/// instant, but the first start of a ~200 MB debug binary (the CLI with
/// libp2p) from a cold page cache on a loaded 2-core machine took over 5 s
/// in a CI run (its own clock said it listened 133 ms after main began).
pub const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the runner polls the peers for their exit; also the
/// resolution of the measured durations.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long the runner waits for a reader thread to see the end of an
/// exited peer's pipe (it is normally at once; a leftover child holding
/// the pipe open must not hang the run).
const READER_JOIN_LIMIT: Duration = Duration::from_secs(2);

/// Options every campaign has.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The CLI to drive (default: `lab-dcutr` next to natlab, for `libp2p`
    /// the user CLI `dcutr`, else on PATH).
    #[arg(long)]
    pub dcutr: Option<PathBuf>,
    /// Repeat each case this many times (default: 3 for `broken`, else 1).
    #[arg(long)]
    pub runs: Option<u32>,
    /// Only cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Print one JSON record per run (and a summary) on stdout; the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Print the lab diagnostics for every run, not only failing ones.
    #[arg(long)]
    pub always_diagnose: bool,
    /// Run id, 4 hex digits (default: random). Every namespace of the run
    /// is then called `nl<id>..-*`; tests use it to find their own.
    #[arg(long, value_name = "HEX")]
    pub run_id: Option<String>,
}

/// Transport under test: the core's own (`tcp`, `quic` in records and
/// command lines).
pub use dcutr_core::Transport;

/// Both transports, in table order.
pub const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Quic];

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Both peers: a direct connection, exit 0.
    Upgraded,
    /// Both peers: a clean failure, exit 1.
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

/// One judged run: the fields every campaign has, and its own `detail`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record<D> {
    pub case: String,
    /// Run number within the case (1-based).
    pub run: u32,
    pub outcome: Outcome,
    /// What the campaign compares with its bound (or the run's length), ms.
    pub duration_ms: Option<f64>,
    /// Topology build time, ms.
    pub setup_ms: f64,
    /// Topology teardown time, ms.
    pub teardown_ms: Option<f64>,
    /// Unmet expectations and lab or contract problems. Empty = PASS.
    pub violations: Vec<String>,
    /// The campaign's own observations.
    #[serde(flatten)]
    pub detail: D,
}

impl<D> Record<D> {
    /// A judged run, before the runner adds the lab's times; a violation
    /// found twice in a row is kept once.
    pub fn new(
        (case, run): (String, u32),
        outcome: Outcome,
        duration: Option<Duration>,
        mut violations: Vec<String>,
        detail: D,
    ) -> Self {
        violations.dedup();
        Record {
            case,
            run,
            outcome,
            duration_ms: duration.map(crate::ms),
            setup_ms: 0.0,
            teardown_ms: None,
            violations,
            detail,
        }
    }

    /// Whether this run met its expectation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether a violation contains `needle`.
    #[cfg(test)]
    pub fn has(&self, needle: &str) -> bool {
        self.violations.iter().any(|v| v.contains(needle))
    }
}

/// A case's name: what `--filter` matches and the table's first column.
pub trait Named {
    /// `cone/cone tcp rtt100`, `loss30 cone/cone quic`.
    fn name(&self) -> String;
}

/// A campaign: cases -> topology -> drive -> observations -> expectations
/// -> violations -> table.
pub trait Campaign {
    /// One cell of the campaign (the runner repeats it `--runs` times).
    type Case: Named;
    /// What driving one run saw.
    type Seen: Default;
    /// What a record keeps beyond [`Record`]'s common fields.
    type Detail: Serialize;
    /// The subcommand, for the summary: `matrix`, `broken`, `libp2p`.
    const KIND: &'static str;
    /// What a case is called in the summary: `cases`, `pairings`.
    const GROUPS: &'static str = "cases";
    /// Runs per case without `--runs`.
    const DEFAULT_RUNS: u32 = 1;
    /// How long all cases, one run each, should take at most (a warning
    /// otherwise).
    const BUDGET: Option<Duration> = None;

    /// The Markdown table of all records.
    const TABLE: fn(&[Record<Self::Detail>]) -> String;

    /// Every case, in table order.
    fn cases(&self) -> Vec<Self::Case>;
    /// The topology of run `run` of `case`.
    fn topology(&self, case: &Self::Case, run: u32) -> TopologySpec;
    /// Start the processes in `lab` (pushed to `procs`, whose logs a
    /// failing run prints), break what the case breaks, wait, observe.
    fn drive(&self, case: &Self::Case, lab: &Lab, procs: &mut Vec<Proc>) -> Self::Seen;
    /// Compare what was seen with what the case expects; `problems` are
    /// the lab's and come first among the violations.
    fn judge(
        &self,
        case: &Self::Case,
        run: u32,
        seen: Self::Seen,
        problems: Vec<String>,
    ) -> Record<Self::Detail>;
    /// Printed first and written above the table (e.g. the bounds).
    fn preamble(&self) -> Option<String> {
        None
    }
    /// Extra lines for a run's diagnostics (e.g. its seeds).
    fn diagnose(&self, _case: &Self::Case, _run: u32) -> String {
        String::new()
    }
    /// Extra fields of the JSON summary line.
    fn summary_fields(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// A campaign's options and the CLI it drives (located before the first
/// run).
pub struct Driven<A> {
    /// The campaign's options.
    pub args: A,
    /// The `dcutr` CLI (or `lab-dcutr`).
    pub dcutr: PathBuf,
}

/// Locate the CLI with `locate` (given `--dcutr`), then [`run`] the
/// campaign of `args`.
pub fn run_with<A>(
    common: Common,
    args: A,
    locate: fn(Option<&Path>) -> Result<PathBuf>,
) -> Result<ExitCode>
where
    Driven<A>: Campaign,
{
    let dcutr = locate(common.dcutr.as_deref())?;
    run(&Driven { args, dcutr }, &common)
}

/// Run every case of `c` that matches the filter; exit code 0 when every
/// run met its expectation, 1 otherwise.
pub fn run<C: Campaign>(c: &C, common: &Common) -> Result<ExitCode> {
    let runs = common.runs.unwrap_or(C::DEFAULT_RUNS).max(1);
    let cases: Vec<C::Case> = c
        .cases()
        .into_iter()
        .filter(|k| {
            common
                .filter
                .as_deref()
                .is_none_or(|f| k.name().contains(f))
        })
        .collect();
    if cases.is_empty() {
        bail!(
            "no case matches the filter {:?}",
            common.filter.as_deref().unwrap_or("")
        );
    }
    let preamble = c.preamble();
    match (&preamble, common.json) {
        (Some(p), true) => eprintln!("{p}"),
        (Some(p), false) => println!("{p}\n"),
        (None, _) => {}
    }
    info!(kind = C::KIND, cases = cases.len(), runs, "campaign");
    let started = Instant::now();
    let mut names = RunNames::from_arg(common.run_id.as_deref())?;
    let mut records = Vec::new();
    for case in &cases {
        for run in 1..=runs {
            let diagnose = common.always_diagnose;
            let record = run_one(c, case, run, &names.next_topology(), diagnose);
            info!(
                case = %record.case, run, outcome = %record.outcome,
                verdict = if record.passed() { "PASS" } else { "FAIL" },
                duration_s = record.duration_ms.map(|d| d / 1e3),
                "run finished"
            );
            if common.json {
                println!("{}", serde_json::to_string(&record)?);
            }
            records.push(record);
        }
    }
    let total = started.elapsed();
    let table = C::TABLE(&records);
    let all = runs == 1 && common.filter.is_none();
    if let Some(budget) = C::BUDGET.filter(|b| all && total > *b) {
        warn!(
            "all of {} took {:.0} s, over its {} s budget",
            C::KIND,
            total.as_secs_f64(),
            budget.as_secs()
        );
    }
    let failed = records.iter().filter(|r| !r.passed()).count();
    let summary = format!(
        "{}: {} runs in {:.1} s ({} {} x {} runs); {} passed, {failed} failed",
        C::KIND,
        records.len(),
        total.as_secs_f64(),
        cases.len(),
        C::GROUPS,
        runs,
        records.len() - failed,
    );
    if common.json {
        eprintln!("{table}");
        let mut line = json!({
            "event": "summary", "runs": records.len(), "passed": records.len() - failed,
            "failed": failed, "duration_s": total.as_secs_f64(),
            "run_prefix": names.run_prefix(),
        });
        if let Value::Object(fields) = &mut line {
            fields.extend(c.summary_fields());
        }
        println!("{line}");
    } else {
        println!("{table}");
    }
    if let Some(path) = &common.markdown {
        let head = preamble.map(|p| format!("{p}\n\n")).unwrap_or_default();
        std::fs::write(path, format!("{head}{table}\n{summary}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("{summary}");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One run in a fresh topology. Never fails: lab errors become an `Error`
/// record (with the lab's state printed), so the campaign always goes on.
fn run_one<C: Campaign>(
    c: &C,
    case: &C::Case,
    run: u32,
    prefix: &str,
    always_diagnose: bool,
) -> Record<C::Detail> {
    let lab = match Lab::build(prefix, c.topology(case, run)) {
        Ok(lab) => lab,
        Err(e) => {
            let mut r = c.judge(case, run, C::Seen::default(), vec![format!("lab: {e:#}")]);
            r.outcome = Outcome::Error;
            eprintln!(
                "===== {} run {run}: FAIL (lab could not be built) =====\n{e:#}",
                r.case
            );
            return r;
        }
    };
    let mut procs = Vec::new();
    let seen = c.drive(case, &lab, &mut procs);
    let mut record = c.judge(case, run, seen, Vec::new());
    record.setup_ms = crate::ms(lab.setup_time());
    if !record.passed() || always_diagnose {
        let verdict = if record.passed() { "PASS" } else { "FAIL" };
        let mut text = format!(
            "===== {} run {run}: {verdict} ({}) =====\n{}",
            record.case,
            record.outcome,
            c.diagnose(case, run)
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
        Ok(t) => record.teardown_ms = Some(crate::ms(t)),
        Err(e) => record.violations.push(format!("lab teardown: {e:#}")),
    }
    record
}

/// A binary next to natlab (`dir` below it, e.g. `examples`), else on
/// PATH when `path_ok`; `explicit` wins. `hint` says how to build it.
pub fn locate(explicit: Option<&Path>, dir: &str, name: &str, hint: &str) -> Result<PathBuf> {
    let candidate = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => crate::self_exe()?
            .parent()
            .map(|d| d.join(dir).join(name))
            .filter(|p| p.is_file())
            .or_else(|| {
                dir.is_empty()
                    .then(|| crate::cmd::find_tool(name))
                    .flatten()
            }),
    };
    let Some(path) = candidate.filter(|p| p.is_file()) else {
        bail!("no {name} found next to natlab: {hint}");
    };
    std::fs::canonicalize(&path).with_context(|| format!("{name} at {}", path.display()))
}

/// Owned strings of `parts`, for a command line.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Start `label` in `ns` and wait for its JSON event `ready`; returns the
/// line. The process is pushed to `procs` whether or not it got ready.
pub fn start(
    lab: &Lab,
    procs: &mut Vec<Proc>,
    (label, ns): (&str, &str),
    exe: &Path,
    argv: &[String],
    (ready, deadline): (&str, Instant),
) -> Result<String> {
    let p = lab.spawn(label, ns, &exe.to_string_lossy(), argv)?;
    procs.push(p);
    let p = procs.last().expect("just pushed");
    p.wait_for_line(deadline, &format!("{ready} event"), |l| is_event(l, ready))
}

/// The final `result` object of a peer's output.
pub trait PeerResult: DeserializeOwned + Default {
    /// Whether the peer reports a direct connection.
    fn ok(&self) -> bool;
    /// Values that break the output contract (e.g. `ok` without a remote).
    fn problems(&self) -> Vec<String>;
}

/// Event name of a peer's final line.
pub const RESULT_EVENT: &str = "result";

/// What one peer did: its exit code and its stdout, read against the
/// contract every lab peer speaks (one JSON object per line, each with a
/// string `"event"`; the `result` last; unknown events and fields are fine).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerRun<R> {
    /// Exit code (`None`: killed, stopped by the runner, or never exited).
    pub exit: Option<i32>,
    pub events: Vec<String>,
    /// The result, if a valid one was printed.
    pub result: Option<R>,
    /// What the peer's NAT discovery found ([`nat_summary`] of its
    /// `nat_observed` line, or `unknown` after `nat_unknown`); `None` when
    /// it did not run (no `--stun`).
    pub nat: Option<String>,
    /// Contract violations found in the output.
    pub problems: Vec<String>,
}

impl<R: PeerResult> PeerRun<R> {
    /// Read `lines` against the contract.
    pub fn parse(exit: Option<i32>, lines: &[String]) -> Self {
        let mut out = PeerRun {
            exit,
            ..PeerRun::default()
        };
        for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            let (name, value) = match parse_event(line) {
                Ok(x) => x,
                Err(e) => {
                    out.problems.push(e);
                    continue;
                }
            };
            if out.result.is_some() {
                out.problems.push(format!(
                    "event {name:?} after the result (the result must be last)"
                ));
            }
            match name.as_str() {
                NAT_OBSERVED_EVENT => out.nat = Some(nat_summary(&value)),
                NAT_UNKNOWN_EVENT => out.nat = Some("unknown".into()),
                _ => {}
            }
            if name == RESULT_EVENT {
                match serde_json::from_value::<R>(value) {
                    Ok(r) if out.result.is_none() => out.result = Some(r),
                    Ok(_) => out.problems.push("more than one result".into()),
                    Err(e) => out.problems.push(format!("malformed result ({e}): {line}")),
                }
            }
            out.events.push(name);
        }
        if out.result.is_none() && !out.problems.iter().any(|p| p.contains("result")) {
            out.problems.push("no result line".into());
        }
        out
    }

    /// The exit code and the output of `p`, once its readers are done
    /// (`stopped`: the runner stopped it, so its exit code says nothing).
    pub fn collect(p: &mut Proc, stopped: bool) -> Self {
        let exit = p.try_wait().ok().flatten().and_then(|s| s.code());
        p.join_readers(READER_JOIN_LIMIT);
        Self::parse(exit.filter(|_| !stopped), &p.stdout_lines())
    }

    /// Exit 0 with an ok result.
    pub fn upgraded(&self) -> bool {
        self.exit == Some(0) && self.result.as_ref().is_some_and(R::ok)
    }

    /// Exit 1 with a result that is not ok.
    pub fn failed_clean(&self) -> bool {
        self.exit == Some(1) && self.result.as_ref().is_some_and(|r| !r.ok())
    }

    /// Whether the peer printed the event `name`.
    pub fn has(&self, name: &str) -> bool {
        self.events.iter().any(|e| e == name)
    }

    /// The output problems, the result's own ([`PeerResult::problems`]),
    /// then exit codes that break the contract (0 = ok, 1 = clean
    /// failure, anything else an error), each with `who`.
    pub fn violations(&self, who: &str) -> Vec<String> {
        let own = self.result.iter().flat_map(R::problems);
        let all = self.problems.iter().cloned().chain(own);
        let mut v: Vec<String> = all.map(|e| format!("{who}: {e}")).collect();
        match (self.exit, self.result.as_ref().map(R::ok)) {
            (Some(0), Some(false)) => v.push(format!("{who}: exit 0 but result ok=false")),
            (Some(1), Some(true)) => v.push(format!("{who}: exit 1 but result ok=true")),
            (Some(code), _) if code != 0 && code != 1 => {
                v.push(format!("{who}: exit code {code} (error)"));
            }
            _ => {}
        }
        v
    }
}

/// The outcome of two peers' runs; a disagreement adds a violation.
pub fn outcome<R: PeerResult>(
    a: &PeerRun<R>,
    b: &PeerRun<R>,
    timed_out: bool,
    v: &mut Vec<String>,
) -> Outcome {
    if timed_out {
        Outcome::Timeout
    } else if a.upgraded() && b.upgraded() {
        Outcome::Upgraded
    } else if a.failed_clean() && b.failed_clean() {
        Outcome::FailedClean
    } else {
        if (a.upgraded() && b.failed_clean()) || (a.failed_clean() && b.upgraded()) {
            v.push("peers disagree on the outcome".into());
        }
        Outcome::Error
    }
}

/// The line a peer prints when STUN found its NAT's behaviour.
pub const NAT_OBSERVED_EVENT: &str = "nat_observed";
/// The line a peer prints when no STUN server answered.
pub const NAT_UNKNOWN_EVENT: &str = "nat_unknown";

/// A `nat_observed` line in a table cell's few words, RFC 4787's
/// abbreviations: mapping (`EIM`, `EDM`), allocation (`preserving`,
/// `seq+N`, `random`) and, when known, filtering (`EIF`, `ADF`, `APDF`);
/// `?` for what the observations could not tell.
pub fn nat_summary(line: &Value) -> String {
    let field = |name: &str| line.get(name).and_then(Value::as_str).unwrap_or("unknown");
    let mapping = match field("mapping") {
        "endpoint-independent" => "EIM".to_owned(),
        "endpoint-dependent" => "EDM".to_owned(),
        _ => "?".to_owned(),
    };
    let allocation = match (
        field("allocation"),
        line.get("allocation_delta").and_then(Value::as_i64),
    ) {
        ("sequential", Some(delta)) => format!("seq{delta:+}"),
        ("port-preserving", _) => "preserving".to_owned(),
        ("unknown", _) => "?".to_owned(),
        (other, _) => other.to_owned(),
    };
    let mut words = vec![mapping, allocation];
    match field("filtering") {
        "endpoint-independent" => words.push("EIF".into()),
        "address-dependent" => words.push("ADF".into()),
        "address-and-port-dependent" => words.push("APDF".into()),
        _ => {}
    }
    words.join(" ")
}

/// The event name of one stdout line, and the parsed object.
pub fn parse_event(line: &str) -> Result<(String, Value), String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:?}"))?;
    let name = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JSON line without a string \"event\": {line:?}"))?
        .to_owned();
    Ok((name, value))
}

/// The first JSON event `name` among `lines`.
pub fn find_event(lines: &[String], name: &str) -> Option<Value> {
    let named = |l: &String| parse_event(l).ok().filter(|(n, _)| n == name);
    lines.iter().find_map(|l| named(l).map(|(_, v)| v))
}

/// Whether `line` is the JSON event `name`.
pub fn is_event(line: &str, name: &str) -> bool {
    matches!(parse_event(line), Ok((n, _)) if n == name)
}

/// When the two peers ended, relative to `started`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Waited {
    /// When each peer exited by itself (B, A).
    pub exits: [Option<Duration>; 2],
    /// The deadline passed with a peer still running.
    pub timed_out: bool,
    /// `stop_early` ended the wait.
    pub stopped_early: bool,
}

/// Wait until both `peers` (B, A) are gone or `deadline` passes. A peer is
/// gone when it exited, or (A) from `a_gone` on, when the runner stopped
/// it. Once one is gone, the other gets at most `grace`, and from
/// `early_after` later on `stop_early` may end the wait. Bounded by
/// `deadline`; kills nothing.
pub fn wait_peers(
    peers: &mut [Proc],
    started: Instant,
    deadline: Instant,
    a_gone: Option<Duration>,
    grace: Duration,
    (early_after, mut stop_early): (Duration, impl FnMut(&[Proc]) -> bool),
) -> Result<Waited> {
    let mut w = Waited::default();
    let mut asked = false;
    loop {
        for (slot, p) in w.exits.iter_mut().zip(peers.iter_mut()) {
            if slot.is_none() && p.try_wait()?.is_some() {
                *slot = Some(started.elapsed());
            }
        }
        let gone = [w.exits[0], w.exits.get(1).copied().flatten().or(a_gone)];
        let gone = &gone[..peers.len()];
        if gone.iter().all(Option::is_some) {
            return Ok(w);
        }
        let first = gone.iter().flatten().min().copied();
        if let Some(t) = first
            && !asked
            && started.elapsed() >= t.saturating_add(early_after)
        {
            asked = true;
            if stop_early(peers) {
                w.stopped_early = true;
                return Ok(w);
            }
        }
        let limit = first.map_or(deadline, |t| deadline.min(started + t + grace));
        if Instant::now() >= limit {
            w.timed_out = true;
            return Ok(w);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// What the runner saw of a plain run's two peers (see [`settle`]); the
/// matrix records it as it is, the other campaigns take it apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pair<R> {
    pub a: PeerRun<R>,
    pub b: PeerRun<R>,
    /// The deadline (or the grace after the first exit) passed.
    pub timed_out: bool,
    /// From starting B until both peers exited or the time ran out; the
    /// record has it as `duration_ms`.
    #[serde(skip)]
    pub duration: Duration,
    /// The lab's and the runner's problems: the first violations.
    pub problems: Vec<String>,
}

impl<R: PeerResult> Pair<R> {
    /// The outcome both peers make together, after the problems and both
    /// peers' contract violations (then a timeout) in `v`.
    pub fn judged(&self, v: &mut Vec<String>) -> Outcome {
        v.extend(self.problems.iter().cloned());
        v.extend(self.a.violations("A"));
        v.extend(self.b.violations("B"));
        let outcome = outcome(&self.a, &self.b, self.timed_out, v);
        if self.timed_out {
            let secs = self.duration.as_secs_f64();
            v.push(format!("timed out after {secs:.1} s"));
        }
        outcome
    }
}

/// Wait for the peers `procs[1..]` (B, then A if started; `procs[0]` is
/// the relay), giving the other `grace` once one exited; note a relay that
/// exited meanwhile among the `problems`, kill the peers if time ran out,
/// and collect their output (an A that never started says so).
pub fn settle<R: PeerResult>(
    procs: &mut [Proc],
    (started, deadline, grace): (Instant, Instant, Duration),
    mut problems: Vec<String>,
) -> Pair<R> {
    let never = (Duration::MAX, |_: &[Proc]| false);
    let timed_out = match wait_peers(&mut procs[1..], started, deadline, None, grace, never) {
        Ok(w) => w.timed_out,
        Err(e) => {
            problems.push(format!("{e:#}"));
            true
        }
    };
    let duration = started.elapsed();
    if let Ok(Some(status)) = procs[0].try_wait() {
        problems.push(format!("relay exited during the run ({status})"));
    }
    if timed_out {
        procs.iter_mut().skip(1).for_each(Proc::kill);
    }
    let never_started = || PeerRun {
        problems: vec!["never started".into()],
        ..PeerRun::default()
    };
    Pair {
        b: PeerRun::collect(&mut procs[1], false),
        a: procs
            .get_mut(2)
            .map_or_else(never_started, |p| PeerRun::collect(p, false)),
        timed_out,
        duration,
        problems,
    }
}

/// Records grouped by case name, in first-seen order.
pub fn by_case<D>(records: &[Record<D>]) -> Vec<(&str, Vec<&Record<D>>)> {
    let mut groups: Vec<(&str, Vec<&Record<D>>)> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|(c, _)| *c == r.case) {
            Some((_, v)) => v.push(r),
            None => groups.push((&r.case, vec![r])),
        }
    }
    groups
}

/// Labels with their counts, in first-seen order.
pub fn tally(labels: impl IntoIterator<Item = String>) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for l in labels {
        match counts.iter_mut().find(|(x, _)| *x == l) {
            Some((_, n)) => *n += 1,
            None => counts.push((l, 1)),
        }
    }
    counts
}

/// `ok 3, none 2`.
pub fn tally_text(labels: impl IntoIterator<Item = String>) -> String {
    counted(&tally(labels))
}

fn counted(tally: &[(String, usize)]) -> String {
    let words: Vec<String> = tally.iter().map(|(l, n)| format!("{l} {n}")).collect();
    words.join(", ")
}

/// The one label when all agree, else [`tally_text`] (`a 3, b 1`).
pub fn distinct_text(labels: impl IntoIterator<Item = String>) -> String {
    match &tally(labels)[..] {
        [(only, _)] => only.clone(),
        many => counted(many),
    }
}

/// `FAIL (n/N)` when some of `runs` failed, else `pass`.
pub fn verdict<D>(runs: &[&Record<D>], pass: &str) -> String {
    let failed = runs.iter().filter(|r| !r.passed()).count();
    if failed == 0 {
        pass.to_owned()
    } else {
        format!("FAIL ({failed}/{})", runs.len())
    }
}

/// A number with `decimals`, or `-` when missing.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".into(),
    }
}

/// One column of a per-case table: its header, and its cell from the
/// case's name and runs.
pub type Column<'a, D> = (&'static str, &'a dyn Fn(&str, &[&Record<D>]) -> String);

/// The header and one row per case (in first-seen order) of `columns`.
pub fn rows<D>(
    records: &[Record<D>],
    columns: &[Column<D>],
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let cells = |(case, runs): (&str, Vec<&Record<D>>)| {
        columns.iter().map(|c| (c.1)(case, &runs)).collect()
    };
    let header = columns.iter().map(|c| c.0).collect();
    (header, by_case(records).into_iter().map(cells).collect())
}

/// The Markdown table of `columns`, one row per case, then `note`.
pub fn table<D>(records: &[Record<D>], columns: &[Column<D>], note: &str) -> String {
    let (header, rows) = rows(records, columns);
    markdown(&header, &rows, note)
}

/// The median over `runs` of `f` with `decimals`, `-` when none has one.
pub fn median_cell<D>(
    runs: &[&Record<D>],
    f: impl Fn(&Record<D>) -> Option<f64>,
    decimals: usize,
) -> String {
    let values: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    num(crate::stats::median(&values), decimals)
}

/// `n/N` of `runs` for which `f` holds.
pub fn share<D>(runs: &[&Record<D>], f: impl Fn(&Record<D>) -> bool) -> String {
    let n = runs.iter().filter(|r| f(r)).count();
    format!("{n}/{}", runs.len())
}

/// A GitHub-flavoured Markdown table (cells escaped), then `note`.
pub fn markdown(header: &[&str], rows: &[Vec<String>], note: &str) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.replace('|', "\\|").replace('\n', " "))
            .collect();
        out.push_str(&line(&cells));
    }
    out.push('\n');
    out.push_str(note);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq, Serialize)]
    struct R {
        ok: bool,
    }
    impl PeerResult for R {
        fn ok(&self) -> bool {
            self.ok
        }
        fn problems(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_parses_in_order_and_flags_contract_breaks() {
        let good = PeerRun::<R>::parse(
            Some(0),
            &lines(&[
                r#"{"event":"registered"}"#,
                "",
                r#"{"event":"result","ok":true,"x":1}"#,
            ]),
        );
        assert_eq!(good.events, ["registered", "result"]);
        assert!(good.problems.is_empty() && good.upgraded() && good.has("registered"));
        let noise = PeerRun::<R>::parse(None, &lines(&["hello", r#"{"no_event":1}"#]));
        assert_eq!(noise.problems.len(), 3, "{:?}", noise.problems);
        assert!(noise.problems[0].starts_with("not JSON"));
        assert!(noise.problems[1].contains("without a string \"event\""));
        assert_eq!(noise.problems[2], "no result line");
        let ok = r#"{"event":"result","ok":true}"#;
        let late = PeerRun::<R>::parse(Some(0), &lines(&[ok, r#"{"event":"late"}"#, ok]));
        assert!(late.problems.iter().any(|p| p.contains("after the result")));
        assert!(late.problems.iter().any(|p| p == "more than one result"));
        let bad = PeerRun::<R>::parse(Some(0), &lines(&[r#"{"event":"result"}"#]));
        assert!(bad.problems[0].starts_with("malformed result"));
        assert!(is_event(r#"{"event":"listening","a":1}"#, "listening"));
        assert!(!is_event(r#"{"event":"listening2"}"#, "listening") && !is_event("x", "x"));
    }

    #[test]
    fn the_nat_a_peer_found_is_read_from_the_clis_own_line() {
        use dcutr_cli::report::Line;
        let observed = |mapping: &str, allocation: &str, delta, filtering: &str| {
            dcutr_cli::report::json_line(&Line::NatObserved {
                transport: dcutr_core::Transport::Quic,
                public: vec!["203.0.113.11:4000".parse().unwrap()],
                mapping: mapping.into(),
                allocation: allocation.into(),
                allocation_delta: delta,
                filtering: filtering.into(),
            })
        };
        let ok = r#"{"event":"result","ok":true}"#.to_owned();
        let nat_of = |line: String| PeerRun::<R>::parse(Some(0), &[line, ok.clone()]).nat;
        let hard = observed(
            "endpoint-dependent",
            "random",
            None,
            "address-and-port-dependent",
        );
        assert_eq!(nat_of(hard).as_deref(), Some("EDM random APDF"));
        let seq = observed("endpoint-dependent", "sequential", Some(2), "unknown");
        assert_eq!(nat_of(seq).as_deref(), Some("EDM seq+2"));
        let easy = observed(
            "endpoint-independent",
            "port-preserving",
            None,
            "endpoint-independent",
        );
        assert_eq!(nat_of(easy).as_deref(), Some("EIM preserving EIF"));
        let unknown = dcutr_cli::report::json_line(&Line::NatUnknown {
            reason: "no answer".into(),
        });
        assert_eq!(nat_of(unknown).as_deref(), Some("unknown"));
        assert_eq!(
            PeerRun::<R>::parse(Some(0), std::slice::from_ref(&ok)).nat,
            None
        );
        assert_eq!(distinct_text(["x".to_owned(), "x".to_owned()]), "x");
        assert_eq!(
            distinct_text(["x".to_owned(), "y".to_owned(), "x".to_owned()]),
            "x 2, y 1"
        );
    }

    #[test]
    fn exits_must_agree_with_results_and_make_the_outcome() {
        let run = |exit, ok| PeerRun {
            exit: Some(exit),
            result: Some(R { ok }),
            ..PeerRun::default()
        };
        assert_eq!(
            run(0, false).violations("A"),
            ["A: exit 0 but result ok=false"]
        );
        assert_eq!(
            run(1, true).violations("B"),
            ["B: exit 1 but result ok=true"]
        );
        assert_eq!(run(101, true).violations("A"), ["A: exit code 101 (error)"]);
        let mut v = Vec::new();
        assert_eq!(
            outcome(&run(0, true), &run(0, true), false, &mut v),
            Outcome::Upgraded
        );
        assert_eq!(
            outcome(&run(1, false), &run(1, false), false, &mut v),
            Outcome::FailedClean
        );
        assert_eq!(
            outcome(&run(0, true), &run(0, true), true, &mut v),
            Outcome::Timeout
        );
        assert!(v.is_empty());
        assert_eq!(
            outcome(&run(0, true), &run(1, false), false, &mut v),
            Outcome::Error
        );
        assert_eq!(v, ["peers disagree on the outcome"]);
    }

    #[test]
    fn tables_group_by_case_count_and_escape() {
        let rec = |case: &str, pass: bool| {
            let v = if pass { vec![] } else { vec!["x".into()] };
            Record::new((case.into(), 1), Outcome::Upgraded, None, v, ())
        };
        let recs = [rec("a", true), rec("b", true), rec("a", false)];
        let groups = by_case(&recs);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].0, groups[0].1.len()), ("a", 2));
        assert_eq!(verdict(&groups[0].1, "PASS"), "FAIL (1/2)");
        assert_eq!(verdict(&groups[1].1, "PASS"), "PASS");
        let labels = ["ok", "none", "ok"].map(String::from);
        assert_eq!(tally_text(labels), "ok 2, none 1");
        assert_eq!(
            (num(None, 1), num(Some(1.234), 2)),
            ("-".into(), "1.23".into())
        );
        let md = markdown(&["x", "y"], &[vec!["a|b".into(), "c".into()]], "note");
        assert_eq!(md, "| x | y |\n|---|---|\n| a\\|b | c |\n\nnote\n");
    }
}
