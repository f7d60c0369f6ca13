//! `natlab libp2p`: stock rust-libp2p (`libp2p::dcutr`) behind one cone NAT
//! and ours (`dcutr_libp2p`) behind the other, in both roles, over TCP and
//! over QUIC.
//!
//! Each run builds a fresh cone/cone topology (firewall on both routers)
//! and starts the `dcutr` CLI three times: `dcutr libp2p relay` (a libp2p
//! circuit relay v2) on the relay host, `dcutr libp2p listen` (holds the
//! reservation; the spec's B) at site 2, `dcutr libp2p dial` (dials the
//! listener's relayed address; the spec's A) at site 1, ours or `--stock`.
//! Both peers must report, in their `--json` result line, a non-relayed
//! connection to each other with a ping over it. Each peer also serves
//! `--metrics` on its own loopback; natlab scrapes it (from inside the
//! peer's namespace) once the peer printed its result, and checks that
//! ours counted the upgrade in `libp2p_holepunch_outcomes_total` and that
//! stock, which records nothing there, has no `libp2p_holepunch_` family.
//!
//! `--symmetric` runs the symmetric/symmetric case instead (issue 14's
//! "fails fast"): both routers `masquerade fully-random`, a second relay
//! on the relay host (`--observer`) so that two identify peers observe
//! each listening socket, ours/ours and stock/stock. Both sides must fail,
//! and ours' median time from the relayed connection to each side's
//! result must be at most [`SYMMETRIC_MAX_RATIO`] of stock's.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::campaign::{
    self, Campaign, Column, Common, Driven, Named, Outcome, PEER_PORT, PeerRun, RELAY_PORT,
    RELAY_READY_TIMEOUT, Record, Transport, args, parse_event,
};
use crate::nat::Site;
use crate::proc::Proc;
use crate::stats::median;
use crate::topo::{DelaySpec, Lab, RELAY_IP, TopologySpec};

/// Seeds of the three nodes' keys (their peer ids follow from them).
const RELAY_SEED: u64 = 1;
const LISTENER_SEED: u64 = 2;
const DIALER_SEED: u64 = 3;
/// Seed of the second relay, the identify observer of `--symmetric`.
const OBSERVER_SEED: u64 = 4;

/// The observer's port on the relay host (`--symmetric`): another
/// destination, so that a symmetric NAT maps it to another port.
pub const OBSERVER_PORT: u16 = RELAY_PORT + 1;

/// Largest ratio of ours' median time to failure to stock's in the
/// symmetric/symmetric case (issue 14: "in at most half of stock's
/// time").
pub const SYMMETRIC_MAX_RATIO: f64 = 0.5;

/// Each peer's limit of its upgrade (`--timeout-s`), after its setup (at
/// most 10 s): ours gives up after three attempts of at most 10 s per step.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(35);

/// Each peer's `--timeout-s` in symmetric runs: long enough that stock B
/// ends its three attempts itself (about 30 s over TCP, 15 s over QUIC)
/// instead of being cut at [`NODE_TIMEOUT`], so that its time to failure
/// is its own.
pub const SYMMETRIC_NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Least per-run limit of symmetric runs: both setups (22 s),
/// [`SYMMETRIC_NODE_TIMEOUT`] and [`OTHER_NODE_GRACE`] for a stock A that
/// never learns.
pub const SYMMETRIC_RUN_TIMEOUT: Duration = Duration::from_secs(95);

/// Where each peer serves `--metrics`: its own namespace's loopback.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// How long a peer keeps `--metrics` up after its result, for the scrape
/// (`--metrics-hold-s`; it leaves as soon as natlab scraped).
pub const METRICS_HOLD: Duration = Duration::from_secs(5);

/// Limit of one scrape: connecting, the request and the answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest metrics answer read.
const MAX_SCRAPE_BYTES: u64 = 1 << 20;

/// The family whose samples prove ours counted the upgrade.
pub const OUTCOMES_FAMILY: &str = "libp2p_holepunch_outcomes_total";

/// How long the listener may take to print `reserved`: the node's own
/// setup limit (10 s: relay, reservation, observed address) plus slack.
pub const LISTENER_READY_TIMEOUT: Duration = Duration::from_secs(12);

/// Default limit for one run, from starting the listener until both peers
/// exited: the listener's setup (12 s), the dialer's setup (10 s) and
/// upgrade ([`NODE_TIMEOUT`]), and the scrape.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(65);

/// Once one node has exited, the other must follow within this (as in the
/// matrix: the relayed connection closes when a side leaves).
pub const OTHER_NODE_GRACE: Duration = Duration::from_secs(10);

/// Event the relay prints once it listens (with its `peer_id`).
const RELAY_LISTENING_EVENT: &str = "listening";

/// Event the listener prints once it can be dialled through the relay.
const LISTENER_RESERVED_EVENT: &str = "reserved";

/// `natlab libp2p` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also run the reference pairings, stock/stock and ours/ours.
    #[arg(long)]
    pub reference: bool,
    /// The transports to run every pairing over, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tcp,quic", value_parser = parse_transport)]
    pub transports: Vec<Transport>,
    /// Put a delay line of this one-way delay in front of both sites: adds
    /// 4x this to the relayed RTT and to the direct one.
    #[arg(long)]
    pub delay_ms: Option<f64>,
    /// Per-run limit in seconds.
    #[arg(long, default_value_t = DEFAULT_RUN_TIMEOUT.as_secs_f64())]
    pub run_timeout_s: f64,
    /// Run the symmetric/symmetric case instead: both routers
    /// `masquerade fully-random`, a second relay as identify observer,
    /// ours/ours and stock/stock; both sides must fail, ours in at most
    /// half of stock's median time.
    #[arg(long)]
    pub symmetric: bool,
    /// Filter ("stock-B", "quic"), output and run id.
    #[command(flatten)]
    pub common: Common,
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
    /// Both routers symmetric (`masquerade fully-random`), an observer.
    pub symmetric: bool,
}

impl Named for Pairing {
    fn name(&self) -> String {
        let sym = if self.symmetric { " sym/sym" } else { "" };
        format!("{}-B/{}-A {}{sym}", self.b, self.a, self.transport)
    }
}

impl Pairing {
    /// The same pairing behind two symmetric NATs.
    #[must_use]
    pub fn symmetric(self) -> Self {
        Pairing {
            symmetric: true,
            ..self
        }
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

const fn pairing(b: Impl, a: Impl) -> Pairing {
    Pairing {
        b,
        a,
        transport: Transport::Tcp,
        symmetric: false,
    }
}

/// The pairings the task is about: stock against ours, both roles.
pub const MIXED: [Pairing; 2] = [
    pairing(Impl::Stock, Impl::Ours),
    pairing(Impl::Ours, Impl::Stock),
];

/// Same-implementation pairings, for reference (`--reference`).
pub const REFERENCE: [Pairing; 2] = [
    pairing(Impl::Stock, Impl::Stock),
    pairing(Impl::Ours, Impl::Ours),
];

/// A `dcutr libp2p listen|dial --json` `result` line (unknown fields
/// ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    /// Direct connection up and pinged over.
    pub ok: bool,
    /// A non-relayed connection to the peer came up.
    pub direct: bool,
    pub reason: Option<String>,
    /// The direct connection's remote address.
    pub remote: Option<String>,
    /// `dialer` or `listener` at the transport level.
    pub endpoint: Option<String>,
    /// `client` or `server` in security and muxer negotiation.
    pub role: Option<String>,
    /// From the relayed connection to the direct one, ms.
    pub time_to_direct_ms: Option<f64>,
    /// A ping went over the direct connection.
    pub ping: bool,
    /// From the relayed connection to this result, ms.
    #[serde(default)]
    pub time_to_outcome_ms: Option<f64>,
    /// What ours detected of its NAT (`declared`, `sockets`); null for
    /// stock.
    #[serde(default)]
    pub nat: Option<Value>,
    /// The DCUtR behaviour's own event: `ok`, `error`, or none.
    pub dcutr_outcome: Option<String>,
    pub dcutr_error: Option<String>,
}

impl campaign::PeerResult for NodeResult {
    fn ok(&self) -> bool {
        self.ok
    }

    /// The node's own checks, double-checked from its report.
    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.ok && (!self.direct || !self.ping) {
            v.push("ok without a direct connection pinged over".into());
        }
        if !self.ok && self.reason.as_deref().is_none_or(str::is_empty) {
            v.push("failed result without a reason".into());
        }
        if self.ok
            && self
                .remote
                .as_deref()
                .is_none_or(|s| s.contains("p2p-circuit"))
        {
            v.push(format!(
                "the direct connection's remote {:?} is not a direct address",
                self.remote
            ));
        }
        v
    }
}

/// What natlab took from one node.
pub type NodeRun = PeerRun<NodeResult>;

/// What driving one run saw (and its record keeps).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Seen {
    pub a: NodeRun,
    pub b: NodeRun,
    /// The run hit its time limit.
    pub timed_out: bool,
    /// What B's and A's `--metrics` showed after their results.
    pub metrics: [Option<MetricsSeen>; 2],
    /// From starting B until both peers exited (`duration_ms`).
    #[serde(skip)]
    pub duration: Duration,
    pub problems: Vec<String>,
}

/// What one scrape of a peer's `--metrics` showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSeen {
    /// The scrape failed: why.
    pub error: Option<String>,
    /// The sum of the `libp2p_holepunch_outcomes_total` samples with
    /// `outcome="success"` on the side this peer plays.
    pub successes: Option<f64>,
    /// Any `libp2p_holepunch_` family present.
    pub holepunch_families: bool,
}

impl MetricsSeen {
    /// Reads a scraped body: `side` is go-libp2p's label of the peer's role
    /// (`initiator` for B, `receiver` for A).
    pub fn from_body(body: &str, side: &str) -> Self {
        let wanted = [format!("side=\"{side}\""), "outcome=\"success\"".to_owned()];
        let successes = body
            .lines()
            .filter(|l| l.starts_with(OUTCOMES_FAMILY) && wanted.iter().all(|w| l.contains(w)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b);
        MetricsSeen {
            error: None,
            successes,
            holepunch_families: body.lines().any(|l| l.contains("libp2p_holepunch_")),
        }
    }

    /// Problems of `who` (running `dcutr`) with these metrics, for a run
    /// whose peer made a direct connection.
    pub fn problems(&self, who: &str, dcutr: Impl) -> Vec<String> {
        if let Some(e) = &self.error {
            return vec![format!("{who} ({dcutr}): --metrics: {e}")];
        }
        match dcutr {
            Impl::Ours if self.successes.is_none_or(|n| n < 1.0) => vec![format!(
                "{who} (ours): --metrics has no {OUTCOMES_FAMILY} success sample ({:?})",
                self.successes
            )],
            Impl::Stock if self.holepunch_families => vec![format!(
                "{who} (stock): --metrics has libp2p_holepunch_ families, which only ours records"
            )],
            _ => vec![],
        }
    }
}

/// `GET /metrics` from `addr` inside network namespace `ns`: a thread
/// enters the namespace (only that thread) and makes the request.
pub fn scrape_in(ns: &str, addr: SocketAddr) -> Result<String> {
    let path = PathBuf::from("/run/netns").join(ns);
    let handle = std::thread::spawn(move || -> Result<String> {
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter {}", path.display()))?;
        let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.take(MAX_SCRAPE_BYTES).read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("not an HTTP answer")?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 200"),
            "{}",
            head.lines().next().unwrap_or("")
        );
        Ok(body.to_owned())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the scrape thread panicked"))?
}

/// What a libp2p record keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    pub b_impl: Impl,
    pub a_impl: Impl,
    /// The dialer's time from relayed to direct connection (B's if A has none), ms.
    pub time_to_direct_ms: Option<f64>,
    /// What the runner saw.
    #[serde(flatten)]
    pub seen: Seen,
}

/// Stock A printed no result while stock B reported a failure without a
/// direct connection.
fn stock_a_never(pairing: Pairing, seen: &Seen) -> bool {
    pairing.a == Impl::Stock
        && seen.a.result.is_none()
        && seen.b.result.as_ref().is_some_and(|r| !r.direct)
}

/// Judge one symmetric/symmetric run: both sides fail cleanly, each with
/// its time to the outcome; ours declares an endpoint-dependent mapping
/// and fails with the two NATs' reason.
fn judge_symmetric(pairing: Pairing, run: u32, seen: Seen, mut v: Vec<String>) -> Record<Detail> {
    v.extend(seen.problems.iter().cloned());
    // Stock A is never told (issue 14: stock fails on B only, "never on
    // A"): when B reported and A was stopped without a result, that is
    // stock's known behaviour, shown as "never", not a violation.
    let stock_a_never = stock_a_never(pairing, &seen);
    let sides = [("B", &seen.b, pairing.b), ("A", &seen.a, pairing.a)];
    for (who, n, dcutr) in sides {
        if !(who == "A" && stock_a_never) {
            v.extend(n.violations(who));
        }
        let Some(r) = n.result.as_ref() else { continue };
        if r.ok || r.direct {
            v.push(format!(
                "{who} ({dcutr}): a direct connection through two symmetric NATs"
            ));
        }
        if r.time_to_outcome_ms.is_none() {
            v.push(format!(
                "{who} ({dcutr}): no time_to_outcome_ms in its result"
            ));
        }
        if dcutr == Impl::Ours {
            let declared = r
                .nat
                .as_ref()
                .and_then(|n| n["declared"]["mapping"].as_str().map(str::to_owned));
            if declared.as_deref() != Some("endpoint-dependent") {
                v.push(format!(
                    "{who} (ours): declared {declared:?}, not an endpoint-dependent mapping"
                ));
            }
            let error = r.dcutr_error.as_deref().unwrap_or("");
            if !error.contains("cannot meet") {
                v.push(format!(
                    "{who} (ours): failed without the NATs' reason: {error:?}"
                ));
            }
        }
    }
    let outcome = campaign::outcome(&seen.a, &seen.b, seen.timed_out, &mut v);
    if outcome != Outcome::FailedClean && !stock_a_never {
        v.push(format!(
            "expected a clean failure on both sides, got {outcome}"
        ));
    }
    record((pairing, run), outcome, None, seen, v)
}

/// The record of run `run` of `pairing`, with the dialer's time to direct.
fn record(
    (pairing, run): (Pairing, u32),
    outcome: Outcome,
    time_to_direct_ms: Option<f64>,
    seen: Seen,
    v: Vec<String>,
) -> Record<Detail> {
    let duration = Some(seen.duration);
    let detail = Detail {
        b_impl: pairing.b,
        a_impl: pairing.a,
        time_to_direct_ms,
        seen,
    };
    Record::new((pairing.name(), run), outcome, duration, v, detail)
}

/// Judge one run (pure: unit-tested without root).
pub fn judge(pairing: Pairing, run: u32, seen: Seen, mut v: Vec<String>) -> Record<Detail> {
    if pairing.symmetric {
        return judge_symmetric(pairing, run, seen, v);
    }
    v.extend(seen.problems.iter().cloned());
    let sides = [("B", &seen.b, pairing.b), ("A", &seen.a, pairing.a)];
    for ((who, n, dcutr), metrics) in sides.into_iter().zip(&seen.metrics) {
        v.extend(n.violations(who));
        match n.result.as_ref() {
            Some(r) if !r.ok => {
                let reason = r.reason.as_deref().unwrap_or("no reason given");
                v.push(format!("{who} ({dcutr}): no direct connection: {reason}"));
            }
            Some(_) => match metrics {
                Some(m) => v.extend(m.problems(who, dcutr)),
                None => v.push(format!("{who} ({dcutr}): --metrics was not scraped")),
            },
            None => {}
        }
    }
    let outcome = campaign::outcome(&seen.a, &seen.b, seen.timed_out, &mut v);
    if seen.timed_out {
        v.push(format!(
            "timed out after {:.1} s",
            seen.duration.as_secs_f64()
        ));
    }
    if outcome != Outcome::Upgraded {
        v.push(format!(
            "expected a direct connection on both sides, got {outcome}"
        ));
    }
    let ttd = |n: &NodeRun| n.result.as_ref().and_then(|r| r.time_to_direct_ms);
    let time_to_direct = ttd(&seen.a).or_else(|| ttd(&seen.b));
    record((pairing, run), outcome, time_to_direct, seen, v)
}

/// Each side's time from its relayed connection to its result, ms.
fn time_to_outcome(n: &NodeRun) -> Option<f64> {
    n.result.as_ref().and_then(|r| r.time_to_outcome_ms)
}

/// The later side's time to its outcome: when both know. A stock A that
/// never learns counts with B's time, a lower bound of "never" (which
/// only makes the ratio against ours harder to meet).
fn both_know(d: &Detail) -> Option<f64> {
    let b = time_to_outcome(&d.seen.b)?;
    match time_to_outcome(&d.seen.a) {
        Some(a) => Some(a.max(b)),
        None if d.a_impl == Impl::Stock => Some(b),
        None => None,
    }
}

/// The columns both tables start with: the pairing, who runs what, runs.
const PAIRING_COLUMNS: [Column<'static, Detail>; 4] = [
    ("pairing", &|name, _| name.to_owned()),
    ("B (listener, site 2)", &|_, runs| {
        runs[0].detail.b_impl.to_string()
    }),
    ("A (dialer, site 1)", &|_, runs| {
        runs[0].detail.a_impl.to_string()
    }),
    ("runs", &|_, runs| runs.len().to_string()),
];

/// The symmetric/symmetric table: per pairing, each side's median time to
/// failure; then, per transport, ours' median (both sides knowing) over
/// stock's against [`SYMMETRIC_MAX_RATIO`].
pub fn symmetric_table(records: &[Record<Detail>]) -> String {
    let groups = campaign::by_case(records);
    let median_of = |runs: &[&Record<Detail>], f: &dyn Fn(&Detail) -> Option<f64>| {
        median(&runs.iter().filter_map(|r| f(&r.detail)).collect::<Vec<_>>())
    };
    let a_time = |_: &str, runs: &[&Record<Detail>]| {
        let never = runs
            .iter()
            .filter(|r| time_to_outcome(&r.detail.seen.a).is_none())
            .count();
        let t = campaign::median_cell(runs, |r| time_to_outcome(&r.detail.seen.a), 1);
        match never {
            0 => t,
            _ => format!("{t}; never in {never}/{}", runs.len()),
        }
    };
    let (header, mut rows) = campaign::rows(
        records,
        &[
            &PAIRING_COLUMNS[..],
            &[
                ("failed cleanly on both sides", &|_, runs| {
                    campaign::share(runs, |r| r.outcome == Outcome::FailedClean)
                }),
                ("B's median time to failure ms", &|_, runs| {
                    campaign::median_cell(runs, |r| time_to_outcome(&r.detail.seen.b), 1)
                }),
                ("A's median time to failure ms", &a_time),
                ("median time until both know ms", &|_, runs| {
                    campaign::median_cell(runs, |r| both_know(&r.detail), 1)
                }),
                ("verdict", &|_, runs| campaign::verdict(runs, "PASS")),
            ],
        ]
        .concat(),
    );
    for t in [Transport::Tcp, Transport::Quic] {
        let of = |i: Impl| {
            let name = Pairing {
                b: i,
                a: i,
                transport: t,
                symmetric: true,
            }
            .name();
            groups
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, runs)| median_of(runs, &both_know))
        };
        if let (Some(ours), Some(stock)) = (of(Impl::Ours), of(Impl::Stock)) {
            let ratio = ours / stock;
            let verdict = if ratio <= SYMMETRIC_MAX_RATIO {
                "PASS"
            } else {
                "FAIL"
            };
            let mut row = vec![String::new(); header.len()];
            row[0] = format!("ours/stock {t}");
            row[7] = format!("{ratio:.3} (≤ {SYMMETRIC_MAX_RATIO})");
            row[8] = verdict.to_owned();
            rows.push(row);
        }
    }
    campaign::markdown(
        &header,
        &rows,
        "symmetric/symmetric (masquerade fully-random, firewall on both routers), the relay and a second relay as identify observers; time to failure = from the peer's relayed connection to its result line; never = no result until natlab stopped it (stock A); the ours/stock rows divide the medians of the later side's time, a stock A that never learns counted with B's time; stock's times are capped by the peers' --timeout-s (60 s here).",
    )
}

/// The Markdown table: one row per pairing.
pub fn table(records: &[Record<Detail>]) -> String {
    if records
        .first()
        .is_some_and(|r| r.case.ends_with(" sym/sym"))
    {
        return symmetric_table(records);
    }
    let event = |runs: &[&Record<Detail>], side: fn(&Detail) -> &NodeRun| {
        campaign::tally_text(runs.iter().map(|r| {
            let result = side(&r.detail).result.as_ref();
            result
                .map_or("no result", |res| {
                    res.dcutr_outcome.as_deref().unwrap_or("none")
                })
                .to_owned()
        }))
    };
    campaign::table(
        records,
        &[
            &PAIRING_COLUMNS[..],
            &[
                ("direct connections (both sides)", &|_, runs| {
                    campaign::share(runs, |r| r.outcome == Outcome::Upgraded)
                }),
                ("median time to direct ms", &|_, runs| {
                    campaign::median_cell(runs, |r| r.detail.time_to_direct_ms, 1)
                }),
                ("B's dcutr event", &|_, runs| event(runs, |d| &d.seen.b)),
                ("A's dcutr event", &|_, runs| event(runs, |d| &d.seen.a)),
                ("verdict", &|_, runs| campaign::verdict(runs, "PASS")),
            ],
        ]
        .concat(),
        "cone/cone, firewall on both routers, over the transport named in the pairing; time to direct = the dialer's, from its relayed connection to its first direct one; dcutr event = the behaviour's own outcome event (none: it reported nothing).",
    )
}

/// The CLI `natlab libp2p` drives: `--dcutr`, else `dcutr` next to natlab
/// (`dcutr libp2p` is a user feature: the real CLI, not lab-dcutr), else
/// on PATH.
pub fn locate_dcutr(explicit: Option<&Path>) -> Result<PathBuf> {
    let hint = "build it (cargo build -p dcutr-cli) or pass --dcutr PATH";
    campaign::locate(explicit, "", "dcutr", hint)
}

/// The string field `name` of a JSON event line.
fn field_of(line: &str, name: &str) -> Result<String> {
    let (_, value) = parse_event(line).map_err(anyhow::Error::msg)?;
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {name} in {line}"))
}

impl Driven<Args> {
    /// Start a circuit relay with key `seed` on the relay host, listening
    /// on `listen`, as `label` (pushed to `procs`); the address it printed.
    fn start_relay(
        &self,
        lab: &Lab,
        procs: &mut Vec<Proc>,
        (label, seed): (&str, u64),
        listen: &str,
    ) -> Result<String, String> {
        let seed = seed.to_string();
        let argv = args(&[
            "libp2p", "relay", "--seed", &seed, "--listen", listen, "--json",
        ]);
        let ready = (RELAY_LISTENING_EVENT, Instant::now() + RELAY_READY_TIMEOUT);
        let ns = lab.relay_ns();
        campaign::start(lab, procs, (label, &ns), &self.dcutr, &argv, ready)
            .and_then(|l| field_of(&l, "addr"))
            .map_err(|e| format!("{label}: {e:#}"))
    }
}

impl Campaign for Driven<Args> {
    type Case = Pairing;
    type Seen = Seen;
    type Detail = Detail;
    const TABLE: fn(&[Record<Detail>]) -> String = table;
    const KIND: &'static str = "libp2p";
    const GROUPS: &'static str = "pairings";

    fn cases(&self) -> Vec<Pairing> {
        let mut base: Vec<Pairing> = MIXED.to_vec();
        if self.args.reference {
            base.extend(REFERENCE);
        }
        if self.args.symmetric {
            base = REFERENCE.iter().map(|p| p.symmetric()).collect();
        }
        let over = |&t: &Transport| base.iter().map(move |p| p.over(t));
        self.args.transports.iter().flat_map(over).collect()
    }

    fn topology(&self, p: &Pairing, _run: u32) -> TopologySpec {
        let site = if p.symmetric {
            Site::SYMMETRIC
        } else {
            Site::CONE
        };
        let mut spec = TopologySpec::new(site, site);
        if let Some(d) = self.args.delay_ms {
            spec.delay = [Some(DelaySpec::fixed(d)), Some(DelaySpec::fixed(d))];
        }
        spec
    }

    fn drive(&self, pairing: &Pairing, lab: &Lab, procs: &mut Vec<Proc>) -> Seen {
        let mut seen = Seen::default();
        let relay_listen = pairing.listen_addr(&RELAY_IP.to_string(), RELAY_PORT);
        let relay = self.start_relay(lab, procs, ("relay", RELAY_SEED), &relay_listen);
        let relay_addr = match relay {
            Ok(addr) => addr,
            Err(e) => {
                seen.problems.push(e);
                return seen;
            }
        };
        if !relay_addr.starts_with(&relay_listen) || !relay_addr.contains("/p2p/") {
            seen.problems.push(format!(
                "relay: printed {relay_addr}, not {relay_listen}/p2p/<id>"
            ));
        }
        // The second relay, only an identify observer (`--symmetric`);
        // kept out of `procs`, whose layout is relay, B, A. Killed when
        // this returns.
        let mut observer_procs = Vec::new();
        let mut observer_addr = None;
        if pairing.symmetric {
            let listen = pairing.listen_addr(&RELAY_IP.to_string(), OBSERVER_PORT);
            let observer = ("observer", OBSERVER_SEED);
            match self.start_relay(lab, &mut observer_procs, observer, &listen) {
                Ok(addr) => observer_addr = Some(addr),
                Err(e) => {
                    seen.problems.push(e);
                    return seen;
                }
            }
        }
        let listen = pairing.listen_addr("0.0.0.0", PEER_PORT);
        let node_timeout = if pairing.symmetric {
            SYMMETRIC_NODE_TIMEOUT
        } else {
            NODE_TIMEOUT
        }
        .as_secs_f64()
        .to_string();
        let hold = METRICS_HOLD.as_secs_f64().to_string();
        let node = |mode: &str, seed: u64, dcutr: Impl| {
            let seed = seed.to_string();
            let mut v = args(&[
                "libp2p",
                mode,
                "--seed",
                &seed,
                "--listen",
                &listen,
                "--relay",
                &relay_addr,
                "--json",
                "--timeout-s",
                &node_timeout,
            ]);
            // Symmetric runs judge the time to failure: no metrics hold
            // may keep a peer (and its relayed connection) up.
            if !pairing.symmetric {
                v.extend(args(&[
                    "--metrics",
                    METRICS_ADDR,
                    "--metrics-hold-s",
                    &hold,
                ]));
            }
            if dcutr == Impl::Stock {
                v.push("--stock".into());
            }
            if let Some(o) = &observer_addr {
                v.extend(args(&["--observer", o]));
            }
            v
        };
        let started = Instant::now();
        let mut run_timeout = Duration::from_secs_f64(self.args.run_timeout_s.max(0.1));
        if pairing.symmetric {
            run_timeout = run_timeout.max(SYMMETRIC_RUN_TIMEOUT);
        }
        let deadline = started + run_timeout;
        let mut b = node("listen", LISTENER_SEED, pairing.b);
        b.extend(args(&["--wait-s", &node_timeout]));
        let ready = (
            LISTENER_RESERVED_EVENT,
            (Instant::now() + LISTENER_READY_TIMEOUT).min(deadline),
        );
        let ns = lab.host_ns(2);
        let b_id = campaign::start(lab, procs, ("listener B", &ns), &self.dcutr, &b, ready);
        match b_id.and_then(|l| field_of(&l, "peer_id")) {
            Err(e) if procs.len() < 2 => {
                seen.problems.push(format!("listener B: {e:#}"));
                return seen;
            }
            Err(e) => seen.problems.push(format!("B: {e:#}")),
            Ok(b_id) => {
                let mut a = node("dial", DIALER_SEED, pairing.a);
                a.extend(args(&["--peer", &b_id]));
                match lab.spawn(
                    "dialer A",
                    &lab.host_ns(1),
                    &self.dcutr.to_string_lossy(),
                    &a,
                ) {
                    Ok(p) => procs.push(p),
                    Err(e) => seen.problems.push(format!("dialer A: {e:#}")),
                }
            }
        }
        // Each peer's metrics, scraped once it printed its result (it
        // holds them up until then): A first, as it usually ends first.
        let metrics_addr: SocketAddr = METRICS_ADDR.parse().expect("a socket address");
        for (slot, idx, site, side) in [(1, 2, 1, "receiver"), (0, 1, 2, "initiator")] {
            let Some(p) = procs.get(idx).filter(|_| !pairing.symmetric) else {
                continue;
            };
            let got = p
                .wait_for_line(deadline, "result", |l| campaign::is_event(l, "result"))
                .and_then(|_| scrape_in(&lab.host_ns(site), metrics_addr));
            seen.metrics[slot] = Some(match got {
                Ok(body) => MetricsSeen::from_body(&body, side),
                Err(e) => MetricsSeen {
                    error: Some(format!("{e:#}")),
                    ..MetricsSeen::default()
                },
            });
        }
        let limits = (started, deadline, OTHER_NODE_GRACE);
        let end = campaign::settle(procs, limits, std::mem::take(&mut seen.problems));
        drop(observer_procs);
        (seen.a, seen.b, seen.problems) = (end.a, end.b, end.problems);
        (seen.timed_out, seen.duration) = (end.timed_out, end.duration);
        seen
    }

    fn judge(&self, p: &Pairing, run: u32, seen: Seen, problems: Vec<String>) -> Record<Detail> {
        judge(*p, run, seen, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECT: &str = "/ip4/203.0.113.12/tcp/5000/p2p/12D3KooW";

    /// A node's run: exit 0 with a direct connection to `remote`, or exit
    /// 1 without one; `dcutr` is the behaviour's own event.
    fn node(ok: bool, remote: Option<&str>, dcutr: Option<&str>) -> NodeRun {
        let result = NodeResult {
            ok,
            direct: ok,
            reason: (!ok).then(|| "no direct connection".into()),
            remote: remote.map(str::to_owned),
            endpoint: ok.then(|| "dialer".into()),
            role: ok.then(|| "client".into()),
            time_to_direct_ms: ok.then_some(9.0),
            ping: ok,
            dcutr_outcome: dcutr.map(str::to_owned),
            ..NodeResult::default()
        };
        let exit = Some(if ok { 0 } else { 1 });
        NodeRun {
            exit,
            events: vec!["result".into()],
            result: Some(result),
            nat: None,
            problems: vec![],
        }
    }

    fn direct(dcutr: Option<&str>) -> NodeRun {
        node(true, Some(DIRECT), dcutr)
    }

    /// What a peer running `dcutr` shows at /metrics after one upgrade.
    fn metrics(dcutr: Impl, side: &str) -> MetricsSeen {
        let body = match dcutr {
            Impl::Ours => format!(
                "# TYPE {OUTCOMES_FAMILY} counter\n{OUTCOMES_FAMILY}{{side=\"{side}\",num_attempts=\"1\",outcome=\"success\"}} 1\n\
                 {OUTCOMES_FAMILY}{{side=\"{side}\",num_attempts=\"2\",outcome=\"success\"}} 0\n# EOF\n"
            ),
            Impl::Stock => "# EOF\n".to_owned(),
        };
        MetricsSeen::from_body(&body, side)
    }

    fn run(p: Pairing, a: NodeRun, b: NodeRun) -> Record<Detail> {
        let seen = Seen {
            a,
            b,
            duration: Duration::from_secs(2),
            metrics: [
                Some(metrics(p.b, "initiator")),
                Some(metrics(p.a, "receiver")),
            ],
            ..Seen::default()
        };
        judge(p, 1, seen, vec![])
    }

    #[test]
    fn a_direct_connection_on_both_sides_passes() {
        let r = run(MIXED[0], direct(Some("ok")), direct(None));
        assert_eq!(r.outcome, Outcome::Upgraded);
        assert!(r.passed(), "{:?}", r.violations);
        assert_eq!(r.case, "stock-B/ours-A tcp");
        assert_eq!(r.detail.time_to_direct_ms, Some(9.0));
    }

    #[test]
    fn one_side_without_a_direct_connection_fails_and_says_which() {
        let r = run(
            MIXED[1],
            node(false, None, Some("error")),
            direct(Some("ok")),
        );
        assert_eq!(r.outcome, Outcome::Error);
        let which = "A (stock): no direct connection: no direct connection";
        assert!(
            r.violations.iter().any(|v| v.starts_with(which)),
            "{:?}",
            r.violations
        );
        assert!(r.has("expected a direct connection on both sides, got error"));
    }

    #[test]
    fn a_relayed_remote_or_a_missing_ping_is_not_direct() {
        let relayed = node(
            true,
            Some("/ip4/203.0.113.1/tcp/4000/p2p/R/p2p-circuit/p2p/B"),
            None,
        );
        let mut no_ping = direct(None);
        no_ping.result.as_mut().unwrap().ping = false;
        let r = run(MIXED[0], relayed, no_ping);
        assert!(r.has("A: the direct connection's remote") && r.has("is not a direct address"));
        assert!(r.has("B: ok without a direct connection pinged over"));
    }

    #[test]
    fn timeouts_crashes_and_bad_output_fail() {
        let seen = Seen {
            timed_out: true,
            duration: DEFAULT_RUN_TIMEOUT,
            ..Seen::default()
        };
        let hung = judge(MIXED[0], 1, seen, vec![]);
        assert_eq!(hung.outcome, Outcome::Timeout);
        assert!(hung.has("timed out after 65.0 s"));
        let crashed = NodeRun::parse(Some(101), &["thread 'main' panicked".to_owned()]);
        assert_eq!(crashed.problems.len(), 2, "{:?}", crashed.problems);
        let r = run(MIXED[0], crashed, direct(None));
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.has("A: exit code 101"));
    }

    #[test]
    fn node_output_parses_the_result_and_flags_late_events() {
        let lines: Vec<String> = [
            r#"{"event":"reserved","peer_id":"x"}"#,
            r#"{"event":"result","ok":true,"direct":true,"reason":null,"remote":"/ip4/203.0.113.11/tcp/5000","endpoint":"dialer","role":"server","time_to_direct_ms":9.3,"ping":true,"dcutr_outcome":"ok","dcutr_error":null,"extra":1}"#,
            r#"{"event":"late"}"#,
        ]
        .map(str::to_owned)
        .to_vec();
        let n = NodeRun::parse(Some(0), &lines);
        assert_eq!(n.events, ["reserved", "result", "late"]);
        let r = n.result.as_ref().unwrap();
        assert!(r.ok && r.direct && r.ping);
        assert_eq!(r.role.as_deref(), Some("server"));
        assert_eq!(
            n.violations("A"),
            ["A: event \"late\" after the result (the result must be last)"]
        );
        let id = field_of(r#"{"event":"listening","peer_id":"12D3"}"#, "peer_id").unwrap();
        assert_eq!(id, "12D3");
        assert!(field_of(r#"{"event":"listening"}"#, "peer_id").is_err());
    }

    #[test]
    fn the_table_has_a_row_per_pairing_with_counts_and_medians() {
        let rec = |p: Pairing, ok: bool, ttd: f64| {
            let a = node(ok, ok.then_some(DIRECT), Some("ok"));
            let mut r = run(p, a, direct(None));
            r.detail.time_to_direct_ms = Some(ttd);
            r
        };
        let md = table(&[
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
    fn metrics_must_show_ours_success_and_no_holepunch_family_for_stock() {
        let ours = metrics(Impl::Ours, "receiver");
        assert_eq!(ours.successes, Some(1.0), "the sum over num_attempts");
        assert!(ours.problems("A", Impl::Ours).is_empty());
        let wrong_side = metrics(Impl::Ours, "initiator");
        let p = MetricsSeen::from_body(
            &format!(
                "{OUTCOMES_FAMILY}{{side=\"initiator\",num_attempts=\"1\",outcome=\"success\"}} 1\n"
            ),
            "receiver",
        );
        assert_eq!(p.successes, None);
        assert!(
            p.problems("A", Impl::Ours)[0]
                .contains("no libp2p_holepunch_outcomes_total success sample")
        );
        assert!(wrong_side.holepunch_families);
        // Stock with our families, or a failed scrape, is a violation.
        let stock = metrics(Impl::Stock, "receiver");
        assert!(stock.problems("A", Impl::Stock).is_empty());
        assert_eq!(ours.problems("A", Impl::Stock).len(), 1);
        let failed = MetricsSeen {
            error: Some("connect: refused".into()),
            ..MetricsSeen::default()
        };
        assert_eq!(
            failed.problems("B", Impl::Stock),
            ["B (stock): --metrics: connect: refused"]
        );
        // A judged run without a scrape fails.
        let seen = Seen {
            a: direct(Some("ok")),
            b: direct(None),
            duration: Duration::from_secs(2),
            ..Seen::default()
        };
        let r = judge(MIXED[0], 1, seen, vec![]);
        assert!(r.has("--metrics was not scraped"), "{:?}", r.violations);
    }

    #[test]
    fn pairings_cover_both_roles_over_every_transport() {
        assert_eq!(MIXED[1].name(), "ours-B/stock-A tcp");
        assert_eq!(
            REFERENCE[0].over(Transport::Quic).name(),
            "stock-B/stock-A quic"
        );
        assert_eq!(
            MIXED[0].listen_addr("0.0.0.0", 5000),
            "/ip4/0.0.0.0/tcp/5000"
        );
        let quic = MIXED[0].over(Transport::Quic);
        assert_eq!(
            quic.listen_addr("203.0.113.1", 4000),
            "/ip4/203.0.113.1/udp/4000/quic-v1"
        );
    }

    /// A symmetric/symmetric side's run: a clean failure after `ms`;
    /// ours with its declared mapping and the NATs' reason.
    fn failed_after(dcutr: Impl, ms: f64) -> NodeRun {
        let mut n = node(false, None, Some("error"));
        let r = n.result.as_mut().unwrap();
        r.time_to_outcome_ms = Some(ms);
        if dcutr == Impl::Ours {
            r.nat = Some(serde_json::json!({"declared": {"mapping": "endpoint-dependent"}}));
            r.dcutr_error = Some("the two NATs cannot meet: ...".into());
        }
        n
    }

    fn sym_run(p: Pairing, run_no: u32, a: NodeRun, b: NodeRun) -> Record<Detail> {
        let seen = Seen {
            a,
            b,
            duration: Duration::from_secs(2),
            ..Seen::default()
        };
        judge(p, run_no, seen, vec![])
    }

    #[test]
    fn a_symmetric_run_passes_only_as_a_clean_failure_with_ours_naming_the_nats() {
        let ours = REFERENCE[1].symmetric();
        assert_eq!(ours.name(), "ours-B/ours-A tcp sym/sym");
        let ok = sym_run(
            ours,
            1,
            failed_after(Impl::Ours, 12.0),
            failed_after(Impl::Ours, 15.0),
        );
        assert_eq!(ok.outcome, Outcome::FailedClean);
        assert!(ok.passed(), "{:?}", ok.violations);
        // Ours failing for another reason, or declaring nothing, fails.
        let mut vague = failed_after(Impl::Ours, 12.0);
        vague.result.as_mut().unwrap().nat = None;
        vague.result.as_mut().unwrap().dcutr_error = Some("timeout".into());
        let r = sym_run(ours, 1, vague, failed_after(Impl::Ours, 15.0));
        assert!(r.has("A (ours): declared None"), "{:?}", r.violations);
        assert!(r.has("without the NATs' reason"), "{:?}", r.violations);
        // A direct connection is not the expected outcome.
        let r = sym_run(ours, 1, direct(Some("ok")), direct(Some("ok")));
        assert!(r.has("expected a clean failure"), "{:?}", r.violations);
        // Stock needs neither (it has no classifier), but a time.
        let stock = REFERENCE[0].symmetric();
        let mut untimed = failed_after(Impl::Stock, 1.0);
        untimed.result.as_mut().unwrap().time_to_outcome_ms = None;
        let r = sym_run(stock, 1, untimed, failed_after(Impl::Stock, 30_000.0));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.has("no time_to_outcome_ms"));
        // Stock A that never reports, once B did, is stock's known
        // behaviour; ours A that never reports is a violation.
        let silent = NodeRun {
            exit: None,
            ..NodeRun::default()
        };
        let mut seen = Seen {
            a: silent.clone(),
            b: failed_after(Impl::Stock, 15_000.0),
            timed_out: true,
            ..Seen::default()
        };
        let r = judge(stock, 1, seen.clone(), vec![]);
        assert!(r.passed(), "{:?}", r.violations);
        assert_eq!(both_know(&r.detail), Some(15_000.0));
        seen.b = failed_after(Impl::Ours, 15.0);
        let r = judge(ours, 1, seen, vec![]);
        assert!(!r.passed());
        assert_eq!(both_know(&r.detail), None);
    }

    #[test]
    fn the_symmetric_table_compares_the_later_sides_medians_against_half() {
        let (ours, stock) = (REFERENCE[1].symmetric(), REFERENCE[0].symmetric());
        let mut records = Vec::new();
        for i in 1..=3 {
            let t = f64::from(i);
            records.push(sym_run(
                stock,
                i,
                failed_after(Impl::Stock, 31_000.0 + t),
                failed_after(Impl::Stock, 30_000.0 + t),
            ));
            records.push(sym_run(
                ours,
                i,
                failed_after(Impl::Ours, 10.0 * t),
                failed_after(Impl::Ours, 20.0 * t),
            ));
        }
        let table = table(&records);
        assert!(
            table.contains(
                "| ours-B/ours-A tcp sym/sym | ours | ours | 3 | 3/3 | 40.0 | 20.0 | 40.0 | PASS |"
            ),
            "{table}"
        );
        assert!(table.contains("| 0.001 (≤ 0.5) | PASS |"), "{table}");
        // Ours as slow as stock fails the ratio.
        let slow: Vec<_> = records
            .iter()
            .cloned()
            .map(|mut r| {
                if r.detail.a_impl == Impl::Ours {
                    r.detail.seen.a = failed_after(Impl::Ours, 31_002.0);
                }
                r
            })
            .collect();
        let table = symmetric_table(&slow);
        assert!(table.contains("| 1.000 (≤ 0.5) | FAIL |"), "{table}");
        assert!(!table.contains("ours/stock quic"), "{table}");
    }
}
