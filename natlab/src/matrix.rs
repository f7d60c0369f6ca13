//! `natlab matrix`: the `dcutr` CLI through every NAT pair, transport and
//! relayed RTT, one fresh topology per run.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::campaign::{
    self, Campaign, Common, Driven, Named, Outcome, Record, TRANSPORTS, Transport,
};
use crate::contract::{self, CliResult};
use crate::nat::Site;
use crate::proc::Proc;
use crate::stats::bound_ratio;
use crate::topo::{DelaySpec, Lab, TopologySpec};

/// One-way delay the relay adds per forwarded chunk for the "100 ms relayed
/// RTT" cases (50 ms each way).
pub const RELAY_DELAY_MS: u32 = 50;

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

/// A symmetric/symmetric run must report its clean failure within this: the
/// 3 attempts with per-step timeouts of ~10 s (rust-libp2p's) at most.
pub const FAIL_CLEAN_BOUND: Duration = Duration::from_secs(35);

/// With `--stun`, two NATs that cannot meet must both report it within
/// this: one STUN round trip per server from each punch socket, the
/// pairing, and one Connect exchange (three attempts took about 15 s
/// before the peers knew their NATs).
pub const CANNOT_MEET_BOUND: Duration = Duration::from_secs(10);

/// The whole default matrix should stay under this on 2 cores.
pub const MATRIX_BUDGET: Duration = Duration::from_secs(300);

/// Number of hole-punch attempts the protocol makes before giving up.
pub const PROTOCOL_ATTEMPTS: u32 = 3;

/// The runtime of every pair of the matrix.
pub const DEFAULT_RUNTIME: &str = "tokio";

/// Runtimes that also run the cone/cone cases (the async-io adapter on
/// smol); the full matrix on every runtime would triple its time for little.
pub const EXTRA_RUNTIMES: &[&str] = &["smol"];

/// `natlab matrix` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_CASE_TIMEOUT.as_secs_f64())]
    pub case_timeout_s: f64,
    /// Once one peer exited, how long the other may still run, in seconds.
    #[arg(long, default_value_t = OTHER_PEER_GRACE.as_secs_f64())]
    pub peer_grace_s: f64,
    /// Put a delay line of this one-way delay in front of A's site (raises D and R).
    #[arg(long)]
    pub direct_delay_ms: Option<f64>,
    /// Run coturn on the relay host and give both peers `--stun` to it
    /// (`dcutr peer --stun`): two symmetric NATs must then fail at once,
    /// after one attempt, and say they cannot meet. Needs `turnserver`
    /// (scripts/install-coturn.sh).
    #[arg(long)]
    pub stun: bool,
    /// Also run every ordered pair of the endpoint-independent kinds
    /// ([`EI_KINDS`]) that the default pairs lack: 18 pairs, 72 cases on
    /// tokio, named "A vs B" (issue 13: every such pair must upgrade).
    #[arg(long)]
    pub ei_grid: bool,
    /// Filter ("cone/public", "quic", "rtt100"), output and run id.
    #[command(flatten)]
    pub common: Common,
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
    /// Both peers know each other's NAT (`--stun`) and fail cleanly after
    /// one attempt, within [`CANNOT_MEET_BOUND`], saying the NATs cannot meet.
    CannotMeet,
    /// Report only: upgrade or clean failure, anything but an error.
    Clean,
}

/// Attempts a report-only case ([`Expect::Clean`]) makes, instead of the
/// library's three: its outcome is only reported, and each failing attempt
/// costs about 5 s of the lab's CI budget.
pub const REPORT_ONLY_ATTEMPTS: u8 = 1;

/// A NAT pair: A lives at site 1 (answers the stream, client), B at
/// site 2 (opens it, dials A first if A is public, server).
pub const PAIRS: &[(&str, Site, Site, Expect)] = &[
    (
        "cone/cone",
        Site::CONE,
        Site::CONE,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "cone/cone-no-firewall",
        Site::CONE,
        Site::CONE_NO_FIREWALL,
        Expect::Clean,
    ),
    (
        "cone/public",
        Site::Public,
        Site::CONE,
        Expect::Upgrade { unilateral: true },
    ),
    ("symmetric/cone", Site::SYMMETRIC, Site::CONE, Expect::Clean),
    // The other role of the birthday punch: B (the initiator) is the
    // hard side, against the firewalled (port-restricted) cone. Not
    // named "cone/symmetric": full-cone/symmetric contains that, and
    // `--filter "cone/symmetric "` would pick both pairs.
    (
        "port-restricted/symmetric",
        Site::CONE,
        Site::SYMMETRIC,
        Expect::Clean,
    ),
    (
        "symmetric/symmetric",
        Site::SYMMETRIC,
        Site::SYMMETRIC,
        Expect::FailClean,
    ),
    // Endpoint-independent filtering on one side (issue 13: symmetric
    // against full cone or address-restricted cone must upgrade).
    (
        "symmetric/full-cone",
        Site::SYMMETRIC,
        Site::FULL_CONE,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "full-cone/symmetric",
        Site::FULL_CONE,
        Site::SYMMETRIC,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "symmetric/address-restricted",
        Site::SYMMETRIC,
        Site::ADDRESS_RESTRICTED,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "address-restricted/symmetric",
        Site::ADDRESS_RESTRICTED,
        Site::SYMMETRIC,
        Expect::Upgrade { unilateral: false },
    ),
    // Full cone as B and address-restricted as A: each role once. (Not
    // "full-cone/cone": `--filter cone/cone` must keep meaning cone/cone.)
    (
        "cone/full-cone",
        Site::CONE,
        Site::FULL_CONE,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "address-restricted/cone",
        Site::ADDRESS_RESTRICTED,
        Site::CONE,
        Expect::Upgrade { unilateral: false },
    ),
    // A carrier-grade NAT in front of a home router, in each role and on
    // both sides (issue 13: the CGNAT stack among the endpoint-independent
    // kinds).
    (
        "cgnat/cone",
        Site::Cgnat,
        Site::CONE,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "cone/cgnat",
        Site::CONE,
        Site::Cgnat,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "cgnat/cgnat",
        Site::Cgnat,
        Site::Cgnat,
        Expect::Upgrade { unilateral: false },
    ),
];

/// A pair's name, A's site, B's site and what it must show.
pub type Pair = (&'static str, Site, Site, Expect);

/// Pairs with a sequential symmetric NAT on one side, in each role. They
/// run only with `--stun` (`natlab matrix --stun`): the core predicts the
/// sequential side's next mappings from what the STUN servers saw, so they
/// must upgrade; without discovery there is nothing to predict from, and
/// the outcome would be the symmetric pairs' (report only).
pub const SEQUENTIAL_PAIRS: &[Pair] = &[
    (
        "sequential/cone",
        Site::SEQUENTIAL,
        Site::CONE,
        Expect::Upgrade { unilateral: false },
    ),
    (
        "cone/sequential",
        Site::CONE,
        Site::SEQUENTIAL,
        Expect::Upgrade { unilateral: false },
    ),
];

/// The endpoint-independent kinds (mapping and, but for no-firewall,
/// filtering) whose every pair issue 13 asks to upgrade.
pub const EI_KINDS: [Site; 5] = [
    Site::CONE,
    Site::CONE_NO_FIREWALL,
    Site::FULL_CONE,
    Site::ADDRESS_RESTRICTED,
    Site::Cgnat,
];

/// Every pair the matrix knows: [`PAIRS`] (the default matrix), then each
/// ordered pair of [`EI_KINDS`] that `PAIRS` lacks (`--ei-grid`). A grid
/// pair is named "A vs B", so that `--filter "cone/cone "` keeps matching
/// only cone/cone; it must upgrade, except that a pair with a router
/// without firewall is report only, as cone/cone-no-firewall is (an
/// early packet from the peer can move that router's mapping).
pub fn pairs() -> &'static [Pair] {
    static ALL: std::sync::LazyLock<Vec<Pair>> = std::sync::LazyLock::new(|| {
        let mut all = PAIRS.to_vec();
        all.extend_from_slice(SEQUENTIAL_PAIRS);
        for a in EI_KINDS {
            for b in EI_KINDS {
                if all.iter().any(|p| (p.1, p.2) == (a, b)) {
                    continue;
                }
                let name: &'static str = Box::leak(format!("{a} vs {b}").into_boxed_str());
                let expect = if a == Site::CONE_NO_FIREWALL || b == Site::CONE_NO_FIREWALL {
                    Expect::Clean
                } else {
                    Expect::Upgrade { unilateral: false }
                };
                all.push((name, a, b, expect));
            }
        }
        all
    });
    &ALL
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Index into [`pairs`].
    pub pair: usize,
    pub transport: Transport,
    /// One-way delay the relay adds (0 or [`RELAY_DELAY_MS`]).
    pub relay_delay_ms: u32,
    /// The async runtime both peers run on (`lab-dcutr peer --runtime`).
    pub runtime: &'static str,
    /// coturn runs on the relay host and both peers ask it (`--stun`).
    pub stun: bool,
}

impl Named for Case {
    /// With the runtime appended when it is not tokio.
    fn name(&self) -> String {
        let mut name = format!(
            "{} {} rtt{}",
            pairs()[self.pair].0,
            self.transport,
            2 * self.relay_delay_ms
        );
        if self.runtime != DEFAULT_RUNTIME {
            name = format!("{name} {}", self.runtime);
        }
        if self.stun {
            name.push_str(" stun");
        }
        name
    }
}

impl Case {
    fn expect(&self) -> Expect {
        let (_, a, b, expect) = pairs()[self.pair];
        // Knowing both NATs, the peers see that no punch can meet.
        if self.stun && a == Site::SYMMETRIC && b == Site::SYMMETRIC {
            Expect::CannotMeet
        } else if self.stun
            && matches!(
                (a, b),
                (Site::SYMMETRIC, Site::CONE) | (Site::CONE, Site::SYMMETRIC)
            )
        {
            // Knowing both NATs, the birthday punch must get through,
            // over QUIC (datagrams) and over TCP (simultaneous open).
            Expect::Upgrade { unilateral: false }
        } else if expect == Expect::Clean
            && self.transport == Transport::Quic
            && (a == Site::CONE_NO_FIREWALL || b == Site::CONE_NO_FIREWALL)
        {
            // The low-TTL priming datagram opens our own mapping before
            // the peer's first packet reaches a router without firewall,
            // so QUIC must get through; TCP stays report only (a primed
            // SYN leaves the router's entry with the wrong sequence
            // number).
            Expect::Upgrade { unilateral: false }
        } else {
            expect
        }
    }
}

/// Every case, in table order: every pair on tokio, then cone/cone on the
/// extra runtimes.
pub fn all_cases() -> Vec<Case> {
    let runs = (0..PAIRS.len()).map(|p| (p, DEFAULT_RUNTIME));
    let extra = EXTRA_RUNTIMES.iter().map(|&r| (0, r));
    cells(runs.chain(extra))
}

/// The cases of the pairs [`pairs`] adds to [`PAIRS`] and
/// [`SEQUENTIAL_PAIRS`] (the `--ei-grid`), on tokio.
pub fn grid_cases() -> Vec<Case> {
    let first = PAIRS.len() + SEQUENTIAL_PAIRS.len();
    cells((first..pairs().len()).map(|p| (p, DEFAULT_RUNTIME)))
}

/// The cases of [`SEQUENTIAL_PAIRS`], on tokio, with `--stun`.
pub fn sequential_cases() -> Vec<Case> {
    let pairs = PAIRS.len()..PAIRS.len() + SEQUENTIAL_PAIRS.len();
    let cases = cells(pairs.map(|p| (p, DEFAULT_RUNTIME)));
    cases
        .into_iter()
        .map(|c| Case { stun: true, ..c })
        .collect()
}

/// Each (pair, runtime) over both transports and both relayed RTTs.
fn cells(runs: impl Iterator<Item = (usize, &'static str)>) -> Vec<Case> {
    runs.flat_map(|(pair, runtime)| {
        TRANSPORTS.into_iter().flat_map(move |transport| {
            [0, RELAY_DELAY_MS].map(|relay_delay_ms| Case {
                pair,
                transport,
                relay_delay_ms,
                runtime,
                stun: false,
            })
        })
    })
    .collect()
}

/// The cases `natlab matrix` runs: [`all_cases`], each with `stun` set as
/// given.
pub fn matrix_cases(stun: bool) -> Vec<Case> {
    all_cases()
        .into_iter()
        .map(|case| Case { stun, ..case })
        .collect()
}

/// What driving one run saw (and its record keeps).
pub type Seen = campaign::Pair<CliResult>;

/// What a matrix record keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    pub pair: String,
    pub a_site: String,
    pub b_site: String,
    pub transport: Transport,
    pub runtime: String,
    /// Relayed RTT the relay's delay aims at, ms.
    pub relay_rtt_target_ms: u32,
    pub expect: Expect,
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
    pub unilateral: Option<bool>,
    /// Failure reason (B's, else A's).
    pub reason: Option<String>,
    /// What the runner saw.
    #[serde(flatten)]
    pub seen: Seen,
}

impl Campaign for Driven<Args> {
    type Case = Case;
    type Seen = Seen;
    type Detail = Detail;
    const TABLE: fn(&[Record<Detail>]) -> String = table;
    const KIND: &'static str = "matrix";
    const BUDGET: Option<Duration> = Some(MATRIX_BUDGET);

    fn cases(&self) -> Vec<Case> {
        let mut cases = matrix_cases(self.args.stun);
        if self.args.stun {
            cases.extend(sequential_cases());
        }
        if self.args.ei_grid {
            let stun = self.args.stun;
            cases.extend(grid_cases().into_iter().map(|case| Case { stun, ..case }));
        }
        cases
    }

    fn topology(&self, case: &Case, _run: u32) -> TopologySpec {
        let (_, a, b, _) = pairs()[case.pair];
        let mut spec = TopologySpec::new(a, b);
        spec.delay[0] = self.args.direct_delay_ms.map(DelaySpec::fixed);
        spec
    }

    fn drive(&self, case: &Case, lab: &Lab, procs: &mut Vec<Proc>) -> Seen {
        let mut seen = Seen::default();
        let delay = case.relay_delay_ms.to_string();
        let extra: &[&str] = if case.relay_delay_ms > 0 {
            &["--delay-ms", &delay]
        } else {
            &[]
        };
        if let Err(e) = contract::start_relay(lab, procs, &self.dcutr, extra) {
            seen.problems.push(e);
            return seen;
        }
        // Kept until both peers are done; dropping them stops coturn.
        let _stun = if case.stun {
            match crate::stun::run_dir(&lab.relay_ns())
                .and_then(|dir| crate::stun::start(lab, &dir))
            {
                Ok(procs) => procs,
                Err(e) => {
                    seen.problems.push(format!("coturn: {e:#}"));
                    return seen;
                }
            }
        } else {
            Vec::new()
        };
        let extra = peer_extra_args(case);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(self.args.case_timeout_s.max(0.1));
        let deadline = started + timeout;
        let peers = (case.transport, &extra[..]);
        let ready_by = (Instant::now() + PEER_READY_TIMEOUT).min(deadline);
        let problems = &mut seen.problems;
        if contract::start_peers(lab, procs, &self.dcutr, peers, ready_by, problems)
            == contract::Started::Failed
        {
            seen.duration = started.elapsed();
            return seen;
        }
        let grace = Duration::from_secs_f64(self.args.peer_grace_s.max(0.0));
        campaign::settle(procs, (started, deadline, grace), seen.problems)
    }

    fn judge(&self, case: &Case, run: u32, seen: Seen, problems: Vec<String>) -> Record<Detail> {
        judge(case, run, seen, problems)
    }
}

/// What both peers of `case` get besides the contract's arguments.
fn peer_extra_args(case: &Case) -> Vec<String> {
    let mut extra = vec!["--runtime".to_owned(), case.runtime.to_owned()];
    if case.expect() == Expect::Clean {
        // Report only: one attempt tells as much as three, in a third
        // of the time (a failing attempt waits out its 5 s).
        extra.extend([
            "--max-attempts".to_owned(),
            REPORT_ONLY_ATTEMPTS.to_string(),
        ]);
    }
    if case.stun {
        extra.extend(crate::stun::peer_args());
    }
    extra
}

/// What a clean failure must show on both sides.
struct CleanFailure {
    attempts: u32,
    /// Words the reason must hold; else any non-empty reason does.
    reason_says: Option<&'static str>,
    /// Longest the run may take.
    bound: Duration,
}

impl CleanFailure {
    fn check(
        &self,
        sides: [(&str, Option<&CliResult>); 2],
        duration: Duration,
        v: &mut Vec<String>,
    ) {
        for (who, r) in sides {
            let Some(r) = r else { continue };
            if r.attempts != self.attempts {
                v.push(format!(
                    "{who}: attempts={}, expected {}",
                    r.attempts, self.attempts
                ));
            }
            if !r.relay_usable {
                v.push(format!("{who}: relay_usable=false after a clean failure"));
            }
            let reason = r.reason.as_deref().unwrap_or_default();
            match self.reason_says {
                None if reason.is_empty() => v.push(format!("{who}: no reason for the failure")),
                Some(words) if !reason.contains(words) => {
                    v.push(format!("{who}: the reason does not say {words:?}"));
                }
                _ => {}
            }
        }
        if duration > self.bound {
            v.push(format!(
                "clean failure took {:.1} s, bound {} s",
                duration.as_secs_f64(),
                self.bound.as_secs()
            ));
        }
    }
}

/// Turn what the peers did into a record (pure: unit-tested without root).
pub fn judge(case: &Case, run: u32, seen: Seen, mut v: Vec<String>) -> Record<Detail> {
    let outcome = seen.judged(&mut v);
    let duration = seen.duration;
    let (ra, rb) = (seen.a.result.as_ref(), seen.b.result.as_ref());
    // In a hole punch A is the client and B the server; in the unilateral
    // direct dial B dials A, so B is the client there.
    let unilateral = [ra, rb].iter().flatten().any(|r| r.ok && r.unilateral);
    let roles = if unilateral {
        ["server", "client"]
    } else {
        ["client", "server"]
    };
    for ((who, r), role) in [("A", ra), ("B", rb)].into_iter().zip(roles) {
        let Some(r) = r else { continue };
        if r.role != role {
            v.push(format!("{who} reported role {}, expected {role}", r.role));
        }
        if r.transport != case.transport.to_string() {
            v.push(format!(
                "{who} reported transport {}, expected {}",
                r.transport, case.transport
            ));
        }
    }
    match case.expect() {
        Expect::Upgrade { .. } if outcome != Outcome::Upgraded => {
            v.push(format!("expected an upgrade, got {outcome}"));
        }
        Expect::Upgrade { unilateral: true } => {
            for (who, r) in [("A", ra), ("B", rb)] {
                if r.is_some_and(|r| !r.unilateral) {
                    v.push(format!("{who}: expected unilateral=true (A is public)"));
                }
            }
        }
        Expect::FailClean | Expect::CannotMeet if outcome != Outcome::FailedClean => {
            v.push(format!("expected a clean failure, got {outcome}"));
        }
        Expect::FailClean => {
            let expected = CleanFailure {
                attempts: PROTOCOL_ATTEMPTS,
                reason_says: None,
                bound: FAIL_CLEAN_BOUND,
            };
            expected.check([("A", ra), ("B", rb)], duration, &mut v);
        }
        Expect::CannotMeet => {
            let expected = CleanFailure {
                attempts: 1,
                reason_says: Some("cannot meet"),
                bound: CANNOT_MEET_BOUND,
            };
            expected.check([("A", ra), ("B", rb)], duration, &mut v);
        }
        Expect::Clean if !matches!(outcome, Outcome::Upgraded | Outcome::FailedClean) => {
            v.push(format!(
                "expected an upgrade or a clean failure, got {outcome}"
            ));
        }
        Expect::Upgrade { .. } | Expect::Clean => {}
    }
    let pick = |f: fn(&CliResult) -> Option<f64>| rb.and_then(f).or_else(|| ra.and_then(f));
    let (rtt_ms, direct_rtt_ms) = (pick(|r| r.rtt_ms), pick(|r| r.direct_rtt_ms));
    let time_to_direct_ms = pick(|r| r.time_to_direct_ms);
    let (name, a_site, b_site, _) = pairs()[case.pair];
    let expect = case.expect();
    let detail = Detail {
        pair: name.into(),
        a_site: a_site.to_string(),
        b_site: b_site.to_string(),
        transport: case.transport,
        runtime: case.runtime.to_owned(),
        relay_rtt_target_ms: 2 * case.relay_delay_ms,
        expect,
        attempts: rb.or(ra).map(|r| r.attempts),
        rtt_ms,
        direct_rtt_ms,
        time_to_direct_ms,
        ratio: bound_ratio(time_to_direct_ms, rtt_ms, direct_rtt_ms),
        unilateral: rb.or(ra).map(|r| r.unilateral),
        reason: rb
            .and_then(|r| r.reason.clone())
            .or_else(|| ra.and_then(|r| r.reason.clone())),
        seen,
    };
    Record::new((case.name(), run), outcome, Some(duration), v, detail)
}

/// One row per case, aggregated over its runs.
pub fn table(records: &[Record<Detail>]) -> String {
    type Runs<'a> = [&'a Record<Detail>];
    let med = |runs: &Runs, f: fn(&Record<Detail>) -> Option<f64>, decimals| {
        campaign::median_cell(runs, f, decimals)
    };
    let outcomes = |_: &str, runs: &Runs| match runs {
        [one] => one.outcome.to_string(),
        _ => campaign::tally_text(runs.iter().map(|r| r.outcome.to_string())),
    };
    let verdict = |_: &str, runs: &Runs| {
        let report_only = runs[0].detail.expect == Expect::Clean;
        campaign::verdict(runs, if report_only { "report" } else { "PASS" })
    };
    campaign::table(
        records,
        &[
            ("case", &|case, _| case.to_owned()),
            ("A", &|_, runs| runs[0].detail.a_site.clone()),
            ("B", &|_, runs| runs[0].detail.b_site.clone()),
            ("runtime", &|_, runs| runs[0].detail.runtime.clone()),
            ("NAT seen by A / B", &|_, runs| {
                let seen = |r: &&Record<Detail>| {
                    let nat =
                        |p: &campaign::PeerRun<CliResult>| p.nat.clone().unwrap_or("-".into());
                    format!("{} / {}", nat(&r.detail.seen.a), nat(&r.detail.seen.b))
                };
                campaign::distinct_text(runs.iter().map(seen))
            }),
            ("upgraded", &|_, runs| {
                campaign::share(runs, |r| r.outcome == Outcome::Upgraded)
            }),
            ("outcome", &outcomes),
            ("attempts", &|_, runs| {
                med(runs, |r| r.detail.attempts.map(f64::from), 0)
            }),
            ("R ms", &|_, runs| med(runs, |r| r.detail.rtt_ms, 1)),
            ("D ms", &|_, runs| med(runs, |r| r.detail.direct_rtt_ms, 2)),
            ("time to direct ms", &|_, runs| {
                med(runs, |r| r.detail.time_to_direct_ms, 1)
            }),
            ("ratio", &|_, runs| med(runs, |r| r.detail.ratio, 2)),
            ("duration s", &|_, runs| {
                med(runs, |r| r.duration_ms.map(|d| d / 1e3), 2)
            }),
            ("verdict", &verdict),
        ],
        "ratio = time to direct / (1.5 R + D); medians over runs; R, D, time to direct from B (A if B has none); NAT seen = what each peer's STUN discovery (`--stun`) found for its punch socket (mapping, allocation, filtering in RFC 4787's terms), - without --stun.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{CliRun, fixture};

    /// A peer's run: exit 0 with an upgrade in `role`, or (`attempts` >
    /// 0 and not `ok`) exit 1 with a clean failure.
    fn peer(ok: bool, role: &str, attempts: u32, unilateral: bool) -> CliRun {
        let mut result = fixture::result(ok, role, attempts);
        result.unilateral = unilateral;
        fixture::run(if ok { 0 } else { 1 }, &[], result)
    }

    fn up(role: &str) -> CliRun {
        peer(true, role, 1, false)
    }

    fn down(role: &str, attempts: u32) -> CliRun {
        peer(false, role, attempts, false)
    }

    /// Judge a TCP run of pair `pair` (relayed RTT 100 ms) lasting `secs`.
    fn run(pair: &str, a: CliRun, b: CliRun, secs: u64) -> Record<Detail> {
        run_with(false, pair, a, b, secs)
    }

    /// [`run`], with coturn and `--stun` when `stun`.
    fn run_with(stun: bool, pair: &str, a: CliRun, b: CliRun, secs: u64) -> Record<Detail> {
        let pair = PAIRS.iter().position(|p| p.0 == pair).unwrap();
        let case = Case {
            pair,
            transport: Transport::Tcp,
            relay_delay_ms: 50,
            runtime: DEFAULT_RUNTIME,
            stun,
        };
        let seen = Seen {
            a,
            b,
            duration: Duration::from_secs(secs),
            ..Seen::default()
        };
        judge(&case, 1, seen, vec![])
    }

    /// With `edit` applied to the run's result.
    fn with(mut run: CliRun, edit: impl FnOnce(&mut CliResult)) -> CliRun {
        edit(run.result.as_mut().unwrap());
        run
    }

    #[test]
    fn the_matrix_has_sixty_four_cases_with_unique_names() {
        let mut names: Vec<String> = all_cases().iter().map(Named::name).collect();
        assert_eq!(names.len(), 64, "60 on tokio, 4 cone/cone on smol");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 64);
        for n in [
            "symmetric/symmetric quic rtt100",
            "cone/public tcp rtt0",
            "cone/cone quic rtt100 smol",
            "symmetric/full-cone tcp rtt100",
            "address-restricted/symmetric quic rtt0",
            "cone/full-cone quic rtt0",
            "cgnat/cgnat quic rtt100",
        ] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
    }

    #[test]
    fn the_grid_adds_every_missing_ordered_pair_of_the_independent_kinds() {
        let grid = &pairs()[PAIRS.len() + SEQUENTIAL_PAIRS.len()..];
        // 25 ordered pairs, 7 of them already default pairs.
        assert_eq!(grid.len(), 18);
        for a in EI_KINDS {
            for b in EI_KINDS {
                let n = pairs().iter().filter(|p| (p.1, p.2) == (a, b)).count();
                assert_eq!(n, 1, "{a}/{b}");
            }
        }
        assert_eq!(grid_cases().len(), 72);
        let names: Vec<String> = grid_cases().iter().map(Named::name).collect();
        assert!(names.contains(&"full-cone vs cone quic rtt100".to_owned()));
        assert!(names.iter().all(|n| !n.contains("cone/cone ")));
        for (name, a, b, expect) in grid {
            let no_firewall = *a == Site::CONE_NO_FIREWALL || *b == Site::CONE_NO_FIREWALL;
            let want = if no_firewall {
                Expect::Clean
            } else {
                Expect::Upgrade { unilateral: false }
            };
            assert_eq!(*expect, want, "{name}");
        }
    }

    #[test]
    fn the_sequential_pairs_run_only_with_stun_in_both_roles_and_must_upgrade() {
        let cases = sequential_cases();
        assert_eq!(cases.len(), 2 * 2 * 2, "2 pairs x 2 transports x 2 RTTs");
        assert!(cases.iter().all(|c| c.stun));
        assert!(
            cases
                .iter()
                .all(|c| c.expect() == Expect::Upgrade { unilateral: false })
        );
        let names: Vec<String> = cases.iter().map(Named::name).collect();
        assert!(names.contains(&"sequential/cone tcp rtt0 stun".to_owned()));
        assert!(names.contains(&"cone/sequential quic rtt100 stun".to_owned()));
        let kinds = |c: &Case| (pairs()[c.pair].1, pairs()[c.pair].2);
        assert!(
            cases
                .iter()
                .all(|c| kinds(c) == (Site::SEQUENTIAL, Site::CONE)
                    || kinds(c) == (Site::CONE, Site::SEQUENTIAL))
        );
        let plain = matrix_cases(false);
        assert!(plain.iter().all(|c| !matches!(
            kinds(c).0,
            Site::Nat {
                kind: crate::nat::NatKind::Sequential,
                ..
            }
        ) && !matches!(
            kinds(c).1,
            Site::Nat {
                kind: crate::nat::NatKind::Sequential,
                ..
            }
        )));
    }

    #[test]
    fn a_pair_name_and_a_space_filters_only_that_pair() {
        // The root tests and the README filter by "cone/cone tcp" and the like.
        for (index, (pair, ..)) in PAIRS.iter().enumerate() {
            let filter = format!("{pair} ");
            let others: Vec<String> = all_cases()
                .iter()
                .filter(|c| c.name().contains(&filter) && c.pair != index)
                .map(Named::name)
                .collect();
            assert!(
                others.is_empty(),
                "--filter {filter:?} also matches {others:?}"
            );
        }
        let cone_tcp = all_cases()
            .iter()
            .filter(|c| c.name().contains("cone/cone tcp"))
            .count();
        assert_eq!(cone_tcp, 4, "cone/cone tcp on tokio and smol");
    }

    #[test]
    fn symmetric_b_behind_an_endpoint_independent_a_must_upgrade_over_quic_too() {
        // Once the 4 known gaps (A dialled only B's dead relay mapping);
        // peer-reflexive learning makes them upgrade, and the default
        // matrix runs every case.
        assert_eq!(matrix_cases(false).len(), 64);
        assert!(matrix_cases(true).iter().all(|c| c.stun));
        let mut upgrades = Vec::new();
        for pair in ["full-cone/symmetric", "address-restricted/symmetric"] {
            let pair = PAIRS.iter().position(|p| p.0 == pair).unwrap();
            for case in all_cases().into_iter().filter(|c| c.pair == pair) {
                assert_eq!(
                    case.expect(),
                    Expect::Upgrade { unilateral: false },
                    "{}",
                    case.name()
                );
                upgrades.push(case);
            }
        }
        assert_eq!(upgrades.len(), 8, "both pairs, both transports, both RTTs");
        // A clean failure of such a QUIC case is now a failed case.
        let quic = upgrades
            .iter()
            .find(|c| c.transport == Transport::Quic)
            .copied()
            .unwrap();
        let mut quic_down = Seen {
            a: down("client", 3),
            b: down("server", 3),
            duration: Duration::from_secs(15),
            ..Seen::default()
        };
        for r in [&mut quic_down.a, &mut quic_down.b] {
            r.result.as_mut().unwrap().transport = "quic".into();
        }
        let r = judge(&quic, 1, quic_down, vec![]);
        assert!(!r.passed());
        assert!(
            r.has("expected an upgrade, got failed-clean"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn with_stun_two_symmetric_nats_must_fail_at_once_and_say_why() {
        let said = |run: CliRun| {
            with(run, |r| {
                r.reason = Some("the two NATs cannot meet: both map ...".into());
            })
        };
        let good = run_with(
            true,
            "symmetric/symmetric",
            said(down("client", 1)),
            said(down("server", 1)),
            2,
        );
        assert_eq!(good.detail.expect, Expect::CannotMeet);
        assert!(good.passed(), "{:?}", good.violations);
        // Without --stun the same pair still expects all three attempts.
        let plain = run(
            "symmetric/symmetric",
            down("client", 3),
            down("server", 3),
            20,
        );
        assert_eq!(plain.detail.expect, Expect::FailClean);
        for (a, b, secs, needle) in [
            (
                said(down("client", 3)),
                said(down("server", 1)),
                2,
                "A: attempts=3, expected 1",
            ),
            (
                down("client", 1),
                said(down("server", 1)),
                2,
                "A: the reason does not say",
            ),
            (
                said(down("client", 1)),
                said(down("server", 1)),
                15,
                "clean failure took 15.0 s",
            ),
            (
                up("client"),
                up("server"),
                1,
                "expected a clean failure, got upgraded",
            ),
        ] {
            let r = run_with(true, "symmetric/symmetric", a, b, secs);
            assert!(r.has(needle), "{needle}: {:?}", r.violations);
        }
        // Other pairs keep their expectation with --stun.
        let cone = run_with(true, "cone/cone", up("client"), up("server"), 1);
        assert!(cone.passed(), "{:?}", cone.violations);
    }

    #[test]
    fn with_stun_the_birthday_pairs_must_upgrade_over_both_transports_in_both_roles() {
        for pair in ["symmetric/cone", "port-restricted/symmetric"] {
            let index = PAIRS.iter().position(|p| p.0 == pair).unwrap();
            let cases = matrix_cases(true);
            let cases: Vec<_> = cases.into_iter().filter(|c| c.pair == index).collect();
            assert!(cases.iter().any(|c| c.transport == Transport::Tcp));
            for case in cases {
                let want = Expect::Upgrade { unilateral: false };
                assert_eq!(case.expect(), want, "{}", case.name());
            }
            for case in matrix_cases(false).into_iter().filter(|c| c.pair == index) {
                assert_eq!(case.expect(), Expect::Clean, "{}", case.name());
            }
        }
    }

    #[test]
    fn a_good_cone_upgrade_passes_and_computes_the_ratio() {
        let r = run("cone/cone", up("client"), up("server"), 1);
        assert_eq!(r.outcome, Outcome::Upgraded);
        assert!(r.passed(), "{:?}", r.violations);
        let d = &r.detail;
        assert_eq!((d.ratio, d.attempts), (Some(200.0 / 160.0), Some(1)));
        assert_eq!(r.detail.relay_rtt_target_ms, 100);
    }

    #[test]
    fn swapped_roles_and_transports_fail_even_when_upgraded() {
        let b = with(up("client"), |r| r.transport = "quic".into());
        let r = run("cone/cone", up("server"), b, 1);
        assert_eq!(r.outcome, Outcome::Upgraded);
        assert!(r.has("A reported role server, expected client"));
        assert!(r.has("B reported role client, expected server"));
        assert!(r.has("B reported transport quic, expected tcp"));
    }

    #[test]
    fn the_public_pair_needs_a_unilateral_upgrade() {
        let uni = |role| peer(true, role, 0, true);
        // In the direct dial B dials A: B is the client, A the server.
        let good = run("cone/public", uni("server"), uni("client"), 1);
        assert!(good.passed(), "{:?}", good.violations);
        let not_uni = |role| peer(true, role, 0, false);
        for (a, b, needle) in [
            (
                not_uni("client"),
                not_uni("server"),
                "expected unilateral=true",
            ),
            (
                down("client", 3),
                down("server", 3),
                "expected an upgrade, got failed-clean",
            ),
        ] {
            let r = run("cone/public", a, b, 1);
            assert!(r.has(needle), "{needle}: {:?}", r.violations);
        }
    }

    #[test]
    fn symmetric_pair_must_fail_cleanly_after_three_attempts_within_the_bound() {
        let sym = "symmetric/symmetric";
        let good = run(sym, down("client", 3), down("server", 3), 10);
        assert_eq!(good.outcome, Outcome::FailedClean);
        assert!(good.passed(), "{:?}", good.violations);
        assert_eq!(good.detail.reason.as_deref(), Some("no direct path"));
        let b = || down("server", 3);
        for (a, b, secs, needle) in [
            (down("client", 2), down("server", 2), 10, "attempts=2"),
            (down("client", 3), b(), 36, "bound 35 s"),
            (
                down("client", 3),
                with(b(), |r| r.relay_usable = false),
                10,
                "relay_usable=false",
            ),
            (
                down("client", 3),
                with(b(), |r| r.reason = None),
                10,
                "B: no reason for the failure",
            ),
            (
                up("client"),
                up("server"),
                1,
                "expected a clean failure, got upgraded",
            ),
        ] {
            let r = run(sym, a, b, secs);
            assert!(r.has(needle), "{needle}: {:?}", r.violations);
        }
    }

    #[test]
    fn crashes_timeouts_and_disagreements_are_errors() {
        let crash = CliRun::parse(Some(101), &["thread panicked".to_string()]);
        let r = run("symmetric/cone", crash, down("server", 3), 1);
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.has("exit code 101") && r.has("expected an upgrade or a clean failure"));
        let seen = Seen {
            timed_out: true,
            duration: Duration::from_secs(40),
            ..Seen::default()
        };
        let hung = judge(&all_cases()[0], 1, seen, vec!["lab: x".into()]);
        assert_eq!(hung.outcome, Outcome::Timeout);
        assert_eq!(hung.violations[0], "lab: x");
        assert!(hung.has("timed out after 40.0 s"));
        let split = run("symmetric/cone", up("client"), down("server", 3), 1);
        assert_eq!(split.outcome, Outcome::Error);
        assert!(split.has("disagree"));
        let mut lie = down("client", 3);
        lie.exit = Some(0);
        let r = run("symmetric/cone", lie, down("server", 3), 1);
        assert!(r.has("exit 0 but result ok=false"));
    }

    #[test]
    fn only_report_only_cases_limit_the_attempts() {
        let limited = |case: &Case| {
            let args = peer_extra_args(case);
            args.windows(2)
                .any(|w| w == ["--max-attempts", &REPORT_ONLY_ATTEMPTS.to_string()])
        };
        let cases = all_cases();
        let (clean, rest): (Vec<_>, Vec<_>) =
            cases.iter().partition(|c| c.expect() == Expect::Clean);
        assert!(!clean.is_empty() && !rest.is_empty());
        assert!(clean.iter().all(&limited));
        assert!(rest.iter().all(|c| !limited(c)));
    }

    #[test]
    fn a_router_without_firewall_must_upgrade_over_quic_and_is_reported_over_tcp() {
        let no_firewall = |c: &Case| {
            let (_, a, b, _) = pairs()[c.pair];
            a == Site::CONE_NO_FIREWALL || b == Site::CONE_NO_FIREWALL
        };
        let cases: Vec<Case> = all_cases()
            .into_iter()
            .chain(grid_cases())
            .filter(no_firewall)
            .collect();
        assert_eq!(
            cases.len(),
            4 + 4 * 8,
            "cone/cone-no-firewall and 8 grid pairs, 4 cases each"
        );
        for c in cases {
            let want = match c.transport {
                Transport::Quic => Expect::Upgrade { unilateral: false },
                Transport::Tcp => Expect::Clean,
            };
            assert_eq!(c.expect(), want, "{}", c.name());
        }
    }

    #[test]
    fn report_only_pairs_pass_either_clean_outcome() {
        let pair = "cone/cone-no-firewall";
        let up = run(pair, up("client"), up("server"), 1);
        let down = run(pair, down("client", 3), down("server", 3), 1);
        assert!(up.passed() && down.passed());
        let row = table(&[down]).lines().nth(2).unwrap().to_owned();
        assert!(row.ends_with("| report |"), "{row}");
    }

    #[test]
    fn the_table_has_a_row_per_case_with_medians_and_counts() {
        let ok = || run("cone/cone", up("client"), up("server"), 1);
        let mut slow = ok();
        slow.detail.time_to_direct_ms = Some(400.0);
        let mut hung = ok();
        hung.outcome = Outcome::Timeout;
        hung.violations.push("timed out".into());
        hung.detail.rtt_ms = None;
        let md = table(&[ok(), slow, hung]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("| case | A | B | runtime | NAT seen by A / B | upgraded |"));
        assert_eq!(
            lines[2],
            "| cone/cone tcp rtt100 | cone | cone | tokio | - / - | 2/3 | upgraded 2, timeout 1 | 1 | 100.0 | 10.00 | 200.0 | 1.25 | 1.00 | FAIL (1/3) |"
        );
        assert_eq!(lines[0].matches('|').count(), lines[2].matches('|').count());
    }
}
