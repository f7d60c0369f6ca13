//! Prometheus metrics of hole punching, under the names go-libp2p's
//! dashboards read (`libp2p_holepunch_*`), plus what no implementation
//! exports: time to direct, the relayed round trip and a failure reason.
//!
//! Follows the pattern of `libp2p-metrics`: [`Metrics::new`] registers the
//! families in a [`Registry`], [`Metrics::record`] takes one [`Report`].
//! [`Behaviour::with_metrics`](crate::Behaviour::with_metrics) calls it for
//! every outcome, so code that keeps the stock-shaped [`Event`](crate::Event)
//! needs no call of its own. [`Metrics::record_upgrade`] takes the core's
//! types only, for drivers other than this behaviour.
//!
//! # Families and when they count
//! All are counted once per upgrade (one relayed connection), when its
//! outcome is known.
//!
//! | family | labels | counted |
//! |---|---|---|
//! | `libp2p_holepunch_direct_dials_total` | `outcome=success\|failed` | upgrades in which the unilateral direct dial ran; `success` when it made the direct connection |
//! | `libp2p_holepunch_outcomes_total` | `side`, `num_attempts`, `outcome=success\|failed\|no_suitable_address` | upgrades that made at least one hole-punch attempt |
//! | `libp2p_holepunch_address_outcomes_total` | `side`, `num_attempts`, `ipv=ip4\|ip6`, `transport=tcp\|quic-v1`, `outcome=success\|failed\|cancelled\|no_suitable_address` | the same upgrades, once per address of ours in the last attempt |
//! | `libp2p_holepunch_failures_total` | `side`, `reason` | every upgrade without a direct connection |
//! | `libp2p_holepunch_time_to_direct_seconds` | `side`, `transport` | every upgrade with a direct connection: start of the upgrade to the winner |
//! | `libp2p_holepunch_relayed_rtt_seconds` | `side`, `transport` | upgrades in which a relayed round trip was measured (last attempt's); `transport` is the direct connection's, or `none` |
//!
//! Time to direct runs from the core's start, which on both sides is the
//! moment the relayed connection exists.
//!
//! `side` is `initiator` for the spec's B (our
//! [`Side::Initiator`]) and `receiver` for A, as in go-libp2p.
//! `num_attempts` is `"1"` to `"5"`, then `"> 5"`. The per-address outcome
//! follows go-libp2p: for each address of ours, `no_suitable_address` when
//! the peer sent none of the same IP version and transport; otherwise
//! `success` when the direct connection is of that version and transport,
//! `cancelled` when it is of another, `failed` when there is none. The
//! overall `no_suitable_address` means no address of ours had a match.
//!
//! Two deliberate differences from go-libp2p: its receiver counts each
//! incoming attempt on its own with `num_attempts="1"`, where ours counts
//! the upgrade once with the number of attempts, so that both sides'
//! rates describe the same thing; and an attempt that failed before the
//! punch (no addresses, a protocol error) still counts here, where
//! go-libp2p skips it.
//!
//! The series of the three go-libp2p families are created at zero for
//! `num_attempts` 1 to 3 (the default attempt limit), as go-libp2p does,
//! so that the first increment shows in `rate()`.

use std::net::SocketAddr;
use std::time::Duration;

use dcutr_core::{
    AttemptFailure, Candidate, Failure, ProtocolError, Side, Transport, record::Timeline,
};
use dcutr_core::{Outcome, Upgraded};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::event::{AttemptAddrs, Error, Report};

/// The prefix of every family, go-libp2p's namespace.
pub const METRICS_PREFIX: &str = "libp2p_holepunch";

/// Lower bound of the time-to-direct histogram, in seconds: 10 ms, below a
/// hole punch on loopback.
const TIME_TO_DIRECT_START: f64 = 0.01;
/// Buckets of the time-to-direct histogram, each twice the last: 10 ms to
/// 20.48 s, past the 3 attempts × 10 s step timeout only in the tail.
const TIME_TO_DIRECT_BUCKETS: u16 = 12;
/// Lower bound of the relayed-RTT histogram, in seconds: 1 ms (loopback).
const RTT_START: f64 = 0.001;
/// Buckets of the relayed-RTT histogram, each twice the last: 1 ms to
/// 8.192 s, beyond any relay worth using.
const RTT_BUCKETS: u16 = 14;
/// Attempt counts whose series are created at zero (the core's default
/// attempt limit).
const PREFILLED_ATTEMPTS: u8 = 3;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    side: &'static str,
    num_attempts: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    side: &'static str,
    num_attempts: &'static str,
    ipv: &'static str,
    transport: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    side: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimingLabels {
    side: &'static str,
    transport: &'static str,
}

type HistogramFamily = Family<TimingLabels, Histogram, fn() -> Histogram>;

/// The hole-punching metrics; cheap to clone (the families are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    direct_dials: Family<DialLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    address_outcomes: Family<AddressLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    time_to_direct: HistogramFamily,
    relayed_rtt: HistogramFamily,
}

/// One finished upgrade, in the core's terms: what
/// [`Metrics::record_upgrade`] needs.
#[derive(Clone, Copy, Debug)]
pub struct UpgradeRecord<'a> {
    /// Our role.
    pub side: Side,
    /// The upgrade's record; `None` when it never started.
    pub timeline: Option<&'a Timeline>,
    /// How it ended; `None` when the relayed connection closed before the
    /// upgrade started.
    pub outcome: Option<&'a Outcome>,
    /// The addresses of its last attempt.
    pub addrs: &'a AttemptAddrs,
}

impl Metrics {
    /// Registers the families under [`METRICS_PREFIX`] in `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix(METRICS_PREFIX);
        let metrics = Metrics {
            direct_dials: Family::default(),
            outcomes: Family::default(),
            address_outcomes: Family::default(),
            failures: Family::default(),
            time_to_direct: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(
                    TIME_TO_DIRECT_START,
                    2.0,
                    TIME_TO_DIRECT_BUCKETS,
                ))
            }),
            relayed_rtt: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(RTT_START, 2.0, RTT_BUCKETS))
            }),
        };
        sub.register(
            "direct_dials",
            "Unilateral direct dials before hole punching, by outcome",
            metrics.direct_dials.clone(),
        );
        sub.register(
            "outcomes",
            "Hole punch outcomes overall, once per upgrade",
            metrics.outcomes.clone(),
        );
        sub.register(
            "address_outcomes",
            "Hole punch outcomes per address of ours, by IP version and transport",
            metrics.address_outcomes.clone(),
        );
        sub.register(
            "failures",
            "Upgrades that ended without a direct connection, by reason",
            metrics.failures.clone(),
        );
        sub.register_with_unit(
            "time_to_direct",
            "From the start of the upgrade to its direct connection",
            Unit::Seconds,
            metrics.time_to_direct.clone(),
        );
        sub.register_with_unit(
            "relayed_rtt",
            "Round trip over the relay, as the last attempt measured it",
            Unit::Seconds,
            metrics.relayed_rtt.clone(),
        );
        metrics.prefill();
        metrics
    }

    fn prefill(&self) {
        for outcome in ["success", "failed"] {
            drop(self.direct_dials.get_or_create(&DialLabels { outcome }));
        }
        for side in [Side::Initiator, Side::Responder].map(side_label) {
            for n in 1..=PREFILLED_ATTEMPTS {
                let num_attempts = attempts_label(usize::from(n));
                for outcome in ["success", "failed", "no_suitable_address"] {
                    drop(self.outcomes.get_or_create(&OutcomeLabels {
                        side,
                        num_attempts,
                        outcome,
                    }));
                }
                for outcome in ["success", "failed", "cancelled", "no_suitable_address"] {
                    for ipv in ["ip4", "ip6"] {
                        for transport in [Transport::Tcp, Transport::Quic].map(transport_label) {
                            drop(self.address_outcomes.get_or_create(&AddressLabels {
                                side,
                                num_attempts,
                                ipv,
                                transport,
                                outcome,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// Records one report of the behaviour. Only outcomes count;
    /// progress reports are ignored.
    pub fn record(&self, report: &Report) {
        let Report::Outcome {
            event,
            side,
            timeline,
            upgraded,
            addrs,
            ..
        } = report
        else {
            return;
        };
        let outcome = match (&event.result, upgraded) {
            (Ok(_), Some(up)) => Some(Outcome::Upgraded(*up)),
            (Err(Error::Failed(failure)), _) => Some(Outcome::Failed(failure.clone())),
            _ => None,
        };
        self.record_upgrade(&UpgradeRecord {
            side: *side,
            timeline: timeline.as_deref(),
            outcome: outcome.as_ref(),
            addrs,
        });
    }

    /// Records one finished upgrade.
    pub fn record_upgrade(&self, record: &UpgradeRecord<'_>) {
        let side = side_label(record.side);
        let upgraded = match record.outcome {
            Some(Outcome::Upgraded(up)) => Some(up),
            _ => None,
        };
        let transport = upgraded.map_or("none", |up| transport_label(up.transport));
        if let Some(t) = record.timeline {
            if t.unilateral().is_some() {
                let outcome = if upgraded.is_some_and(|up| up.attempt == 0) {
                    "success"
                } else {
                    "failed"
                };
                self.direct_dials
                    .get_or_create(&DialLabels { outcome })
                    .inc();
            }
            if !t.attempts().is_empty() {
                self.record_attempts(side, t.attempts().len(), upgraded, record.addrs);
            }
            if let (Some(_), Some(took)) = (upgraded, t.duration()) {
                self.time_to_direct
                    .get_or_create(&TimingLabels { side, transport })
                    .observe(took.as_secs_f64());
            }
            if let Some(rtt) = relayed_rtt(t) {
                self.relayed_rtt
                    .get_or_create(&TimingLabels { side, transport })
                    .observe(rtt.as_secs_f64());
            }
        }
        if upgraded.is_none() {
            let reason = match record.outcome {
                Some(Outcome::Failed(failure)) => failure_reason(failure),
                _ => "relayed_connection_closed",
            };
            self.failures
                .get_or_create(&FailureLabels { side, reason })
                .inc();
        }
    }

    fn record_attempts(
        &self,
        side: &'static str,
        attempts: usize,
        upgraded: Option<&Upgraded>,
        addrs: &AttemptAddrs,
    ) {
        let num_attempts = attempts_label(attempts);
        // As in go-libp2p, any direct connection counts, also one that the
        // unilateral dial, still running, made during an attempt.
        let direct = upgraded.map(|up| Kind {
            ipv: ipv_label(&up.remote),
            transport: transport_label(up.transport),
        });
        let mut matched = 0usize;
        for ours in &addrs.local {
            let kind = Kind::of(ours);
            let outcome = if addrs.remote.iter().any(|theirs| Kind::of(theirs) == kind) {
                matched += 1;
                match direct {
                    Some(d) if d == kind => "success",
                    Some(_) => "cancelled",
                    None => "failed",
                }
            } else {
                "no_suitable_address"
            };
            self.address_outcomes
                .get_or_create(&AddressLabels {
                    side,
                    num_attempts,
                    ipv: kind.ipv,
                    transport: kind.transport,
                    outcome,
                })
                .inc();
        }
        let outcome = if upgraded.is_some() {
            "success"
        } else if matched == 0 {
            "no_suitable_address"
        } else {
            "failed"
        };
        self.outcomes
            .get_or_create(&OutcomeLabels {
                side,
                num_attempts,
                outcome,
            })
            .inc();
    }
}

/// IP version and transport of an address: what go-libp2p matches on.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Kind {
    ipv: &'static str,
    transport: &'static str,
}

impl Kind {
    fn of(c: &Candidate) -> Self {
        Kind {
            ipv: ipv_label(&c.addr),
            transport: transport_label(c.transport),
        }
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::Initiator => "initiator",
        Side::Responder => "receiver",
    }
}

fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Quic => "quic-v1",
    }
}

fn ipv_label(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "ip4" } else { "ip6" }
}

/// go-libp2p's `num_attempts` values.
fn attempts_label(n: usize) -> &'static str {
    const LABELS: [&str; 6] = ["0", "1", "2", "3", "4", "5"];
    LABELS.get(n).copied().unwrap_or("> 5")
}

/// The last relayed round trip: measured by the initiator; on the
/// receiver, from its Connect leaving to Sync arriving, as go-libp2p's
/// receiver measures it.
fn relayed_rtt(t: &Timeline) -> Option<Duration> {
    t.attempts().iter().rev().find_map(|a| {
        a.rtt().or_else(|| {
            let (sent, sync) = (a.connect_sent()?, a.sync()?);
            (sync >= sent).then(|| sync.duration_since(sent))
        })
    })
}

/// The `reason` label of a failed upgrade: the last attempt's reason when
/// attempts failed.
#[must_use]
pub fn failure_reason(failure: &Failure) -> &'static str {
    match failure {
        Failure::AllAttemptsFailed { attempts }
        | Failure::PeerGaveUp { attempts }
        | Failure::GaveUp { attempts } => match attempts.last() {
            Some(last) => attempt_reason(last),
            None if matches!(failure, Failure::PeerGaveUp { .. }) => "peer_gave_up",
            None => "other",
        },
        Failure::Protocol(p) => protocol_reason(p),
        Failure::RelayClosed { .. } => "relay_closed",
        _ => "other",
    }
}

fn attempt_reason(failure: &AttemptFailure) -> &'static str {
    match failure {
        AttemptFailure::Protocol(p) => protocol_reason(p),
        AttemptFailure::NothingToSend { .. } => "nothing_to_send",
        AttemptFailure::NothingToDial { .. } => "nothing_to_dial",
        AttemptFailure::AllDialsFailed { .. } => "all_dials_failed",
        AttemptFailure::DirectTimeout { .. } => "direct_timeout",
        AttemptFailure::Superseded => "superseded",
        _ => "other",
    }
}

fn protocol_reason(p: &ProtocolError) -> &'static str {
    match p {
        ProtocolError::Codec(_) | ProtocolError::TrailingBytes { .. } => "malformed_message",
        ProtocolError::UnexpectedMessage { .. } => "unexpected_message",
        ProtocolError::StreamClosed { .. } => "stream_closed",
        ProtocolError::StreamOpenFailed => "stream_open_failed",
        ProtocolError::StepTimeout { .. } => "step_timeout",
        ProtocolError::TooManyAttempts { .. } => "too_many_attempts",
        _ => "other",
    }
}

#[cfg(feature = "libp2p-metrics")]
impl libp2p_metrics::Recorder<Report> for Metrics {
    fn record(&self, report: &Report) {
        Metrics::record(self, report);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use dcutr_core::{Role, record::AttemptRecord};

    use super::*;

    /// Every sample line with a non-zero value, `name{labels}` → value.
    fn nonzero(registry: &Registry) -> Vec<(String, String)> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(_, v)| *v != "0")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn attempt(number: u8, at: Instant, rtt: Option<Duration>) -> AttemptRecord {
        AttemptRecord::fixture(
            number,
            at,
            Some(at),
            rtt,
            Some(at + Duration::from_millis(40)),
            1,
        )
    }

    fn tcp4(port: u16) -> Candidate {
        Candidate::tcp(SocketAddr::from(([198, 51, 100, 1], port)))
    }

    fn quic4(port: u16) -> Candidate {
        Candidate::quic(SocketAddr::from(([198, 51, 100, 1], port)))
    }

    fn tcp6(port: u16) -> Candidate {
        Candidate::tcp(SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], port)))
    }

    #[test]
    fn a_punch_over_tcp_counts_each_address_as_go_libp2p_does() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let t0 = Instant::now();
        let timeline = Timeline::fixture(
            t0,
            Some((t0, Some(t0))),
            vec![
                attempt(1, t0, Some(Duration::from_millis(30))),
                attempt(2, t0, Some(Duration::from_millis(20))),
            ],
            Some(t0 + Duration::from_millis(150)),
        );
        let outcome = Outcome::Upgraded(Upgraded {
            id: dcutr_core::DirectId(3),
            transport: Transport::Tcp,
            remote: tcp4(4001).addr,
            role: Role::Server,
            attempt: 2,
        });
        // Ours: TCP and QUIC over IPv4, TCP over IPv6; the peer's: TCP and
        // QUIC over IPv4.
        let addrs = AttemptAddrs::new(
            vec![tcp4(1), quic4(2), tcp6(3)],
            vec![tcp4(4001), quic4(4001)],
        );
        metrics.record_upgrade(&UpgradeRecord {
            side: Side::Initiator,
            timeline: Some(&timeline),
            outcome: Some(&outcome),
            addrs: &addrs,
        });
        let seen = nonzero(&registry);
        let want = [
            (
                "libp2p_holepunch_direct_dials_total{outcome=\"failed\"}",
                "1",
            ),
            (
                "libp2p_holepunch_outcomes_total{side=\"initiator\",num_attempts=\"2\",outcome=\"success\"}",
                "1",
            ),
            (
                "libp2p_holepunch_address_outcomes_total{side=\"initiator\",num_attempts=\"2\",ipv=\"ip4\",transport=\"tcp\",outcome=\"success\"}",
                "1",
            ),
            (
                "libp2p_holepunch_address_outcomes_total{side=\"initiator\",num_attempts=\"2\",ipv=\"ip4\",transport=\"quic-v1\",outcome=\"cancelled\"}",
                "1",
            ),
            (
                "libp2p_holepunch_address_outcomes_total{side=\"initiator\",num_attempts=\"2\",ipv=\"ip6\",transport=\"tcp\",outcome=\"no_suitable_address\"}",
                "1",
            ),
        ];
        for (k, v) in want {
            assert!(
                seen.iter().any(|(sk, sv)| sk == k && sv == v),
                "{k} = {v} missing in {seen:#?}"
            );
        }
        let counters: Vec<_> = seen.iter().filter(|(k, _)| k.contains("_total{")).collect();
        assert_eq!(counters.len(), want.len(), "{counters:#?}");
        // 150 ms falls into the 160 ms bucket; the last RTT is 20 ms.
        assert!(seen.iter().any(|(k, v)| k == "libp2p_holepunch_time_to_direct_seconds_bucket{le=\"0.16\",side=\"initiator\",transport=\"tcp\"}" && v == "1"), "{seen:#?}");
        assert!(!seen.iter().any(|(k, _)| k == "libp2p_holepunch_time_to_direct_seconds_bucket{le=\"0.08\",side=\"initiator\",transport=\"tcp\"}"), "{seen:#?}");
        assert!(
            seen.iter().any(|(k, v)| k
                == "libp2p_holepunch_relayed_rtt_seconds_sum{side=\"initiator\",transport=\"tcp\"}"
                && v == "0.02"),
            "{seen:#?}"
        );
    }

    #[test]
    fn a_failure_without_matching_addresses_is_no_suitable_address_with_its_reason() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let t0 = Instant::now();
        // The receiver measures Connect sent to Sync received: 40 ms.
        let timeline = Timeline::fixture(
            t0,
            None,
            vec![attempt(1, t0, None)],
            Some(t0 + Duration::from_secs(1)),
        );
        let failure = Failure::PeerGaveUp {
            attempts: vec![AttemptFailure::AllDialsFailed { dials: 1 }],
        };
        let outcome = Outcome::Failed(failure);
        let addrs = AttemptAddrs::new(vec![tcp6(1)], vec![tcp4(4001)]);
        metrics.record_upgrade(&UpgradeRecord {
            side: Side::Responder,
            timeline: Some(&timeline),
            outcome: Some(&outcome),
            addrs: &addrs,
        });
        // The relayed connection closed before anything started.
        metrics.record_upgrade(&UpgradeRecord {
            side: Side::Initiator,
            timeline: None,
            outcome: None,
            addrs: &AttemptAddrs::default(),
        });
        let seen = nonzero(&registry);
        let mut counters: Vec<(&str, &str)> = seen
            .iter()
            .filter(|(k, _)| k.contains("_total{"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        counters.sort_unstable();
        let mut want = vec![
            (
                "libp2p_holepunch_outcomes_total{side=\"receiver\",num_attempts=\"1\",outcome=\"no_suitable_address\"}",
                "1",
            ),
            (
                "libp2p_holepunch_address_outcomes_total{side=\"receiver\",num_attempts=\"1\",ipv=\"ip6\",transport=\"tcp\",outcome=\"no_suitable_address\"}",
                "1",
            ),
            (
                "libp2p_holepunch_failures_total{side=\"receiver\",reason=\"all_dials_failed\"}",
                "1",
            ),
            (
                "libp2p_holepunch_failures_total{side=\"initiator\",reason=\"relayed_connection_closed\"}",
                "1",
            ),
        ];
        want.sort_unstable();
        assert_eq!(counters, want);
        assert!(
            seen.iter().any(|(k, v)| k
                == "libp2p_holepunch_relayed_rtt_seconds_sum{side=\"receiver\",transport=\"none\"}"
                && v == "0.04"),
            "{seen:#?}"
        );
        assert!(
            !seen
                .iter()
                .any(|(k, _)| k.starts_with("libp2p_holepunch_time_to_direct")),
            "{seen:#?}"
        );
    }

    #[test]
    fn matching_addresses_without_a_direct_connection_are_failed() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let t0 = Instant::now();
        let timeline = Timeline::fixture(
            t0,
            None,
            (1..=3)
                .map(|n| attempt(n, t0, Some(Duration::from_millis(10))))
                .collect(),
            Some(t0 + Duration::from_secs(30)),
        );
        let after = Duration::from_secs(10);
        let outcome = Outcome::Failed(Failure::AllAttemptsFailed {
            attempts: vec![AttemptFailure::DirectTimeout { after }; 3],
        });
        let addrs = AttemptAddrs::new(vec![tcp4(1), quic4(1)], vec![tcp4(2), quic4(2)]);
        metrics.record_upgrade(&UpgradeRecord {
            side: Side::Initiator,
            timeline: Some(&timeline),
            outcome: Some(&outcome),
            addrs: &addrs,
        });
        let mut counters: Vec<(String, String)> = nonzero(&registry)
            .into_iter()
            .filter(|(k, _)| k.contains("_total{"))
            .collect();
        counters.sort_unstable();
        let mut want: Vec<(String, String)> = [
            "libp2p_holepunch_address_outcomes_total{side=\"initiator\",num_attempts=\"3\",ipv=\"ip4\",transport=\"tcp\",outcome=\"failed\"}",
            "libp2p_holepunch_address_outcomes_total{side=\"initiator\",num_attempts=\"3\",ipv=\"ip4\",transport=\"quic-v1\",outcome=\"failed\"}",
            "libp2p_holepunch_outcomes_total{side=\"initiator\",num_attempts=\"3\",outcome=\"failed\"}",
            "libp2p_holepunch_failures_total{side=\"initiator\",reason=\"direct_timeout\"}",
        ]
        .into_iter()
        .map(|k| (k.to_owned(), "1".to_owned()))
        .collect();
        want.sort_unstable();
        assert_eq!(counters, want);
    }

    #[test]
    fn attempt_counts_are_labelled_as_go_libp2p_does() {
        assert_eq!(attempts_label(1), "1");
        assert_eq!(attempts_label(5), "5");
        assert_eq!(attempts_label(6), "> 5");
    }
}
