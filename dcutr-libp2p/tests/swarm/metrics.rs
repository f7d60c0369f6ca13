//! A real `prometheus_client` registry per client, filled by
//! `Behaviour::with_metrics` during real upgrades over loopback, scraped
//! as Prometheus text and checked line by line.

use prometheus_client::registry::Registry;

use crate::common::ours::{self, Report};
use crate::common::{
    Dcutr, Net, Pair, Seen, Who, build_client_on, init_tracing, loopback_config, setup_on,
};

/// The scrape's sample lines whose value is not zero, `name{labels} value`,
/// sorted.
fn scrape(registry: &Registry) -> Vec<String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The counter lines of a scrape (`*_total{..}`), and the `_count` lines of
/// its histograms.
fn counts(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("_total{") || l.contains("_count{"))
        .collect()
}

fn metrics() -> (Registry, ours::Metrics) {
    let mut registry = Registry::default();
    let metrics = ours::Metrics::new(&mut registry);
    (registry, metrics)
}

async fn run_to_outcomes(pair: &mut Pair, seen: &mut Seen) {
    pair.dial_relayed();
    pair.run_until(seen, "both outcomes", |s| {
        s.ours_outcome(Who::A).is_some() && s.ours_outcome(Who::B).is_some()
    })
    .await;
}

fn local_addrs(seen: &Seen, who: Who) -> usize {
    match seen.ours_outcome(who) {
        Some(Report::Outcome { addrs, .. }) => addrs.local.len(),
        other => panic!("no outcome on {who:?}: {other:?}"),
    }
}

#[tokio::test]
async fn a_tcp_hole_punch_counts_once_per_side_under_go_libp2p_names() {
    hole_punch(Net::Tcp, "tcp").await;
}

#[tokio::test]
async fn a_quic_hole_punch_counts_once_per_side_under_go_libp2p_names() {
    hole_punch(Net::Quic, "quic-v1").await;
}

async fn hole_punch(net: Net, transport: &str) {
    init_tracing();
    let (reg_a, metrics_a) = metrics();
    let (reg_b, metrics_b) = metrics();
    let a = build_client_on(net, Dcutr::OursWithMetrics(loopback_config(), metrics_a));
    // No unilateral dial: B hole-punches at once.
    let b_config = loopback_config().with_unilateral(false);
    let b = build_client_on(net, Dcutr::OursWithMetrics(b_config, metrics_b));
    let mut pair = setup_on(net, a, b).await;
    let mut seen = Seen::default();
    run_to_outcomes(&mut pair, &mut seen).await;
    assert!(
        seen.ours_ok(Who::A).is_some() && seen.ours_ok(Who::B).is_some(),
        "{seen:#?}"
    );
    // Each side advertised its one observed loopback address.
    assert_eq!(local_addrs(&seen, Who::A), 1, "{seen:#?}");
    assert_eq!(local_addrs(&seen, Who::B), 1, "{seen:#?}");
    for (registry, side) in [(&reg_b, "initiator"), (&reg_a, "receiver")] {
        let lines = scrape(registry);
        let want = [
            format!(
                "libp2p_holepunch_address_outcomes_total{{side=\"{side}\",num_attempts=\"1\",ipv=\"ip4\",transport=\"{transport}\",outcome=\"success\"}} 1"
            ),
            format!(
                "libp2p_holepunch_outcomes_total{{side=\"{side}\",num_attempts=\"1\",outcome=\"success\"}} 1"
            ),
            format!(
                "libp2p_holepunch_relayed_rtt_seconds_count{{side=\"{side}\",transport=\"{transport}\"}} 1"
            ),
            format!(
                "libp2p_holepunch_time_to_direct_seconds_count{{side=\"{side}\",transport=\"{transport}\"}} 1"
            ),
        ];
        assert_eq!(counts(&lines), want, "{side}: {lines:#?}");
        // On loopback the whole upgrade takes well under 10.24 s, the
        // last finite bucket.
        let bucket = format!(
            "libp2p_holepunch_time_to_direct_seconds_bucket{{le=\"10.24\",side=\"{side}\",transport=\"{transport}\"}} 1"
        );
        assert!(lines.contains(&bucket), "{side}: {lines:#?}");
    }
}

/// B dials A's advertised address alongside the punch. Whichever wins,
/// both sides count one success and one time to direct; a unilateral win
/// also counts as a successful direct dial, as in go-libp2p.
#[tokio::test]
async fn a_unilateral_dial_counts_as_a_direct_dial_when_it_wins() {
    init_tracing();
    let (reg_a, metrics_a) = metrics();
    let (reg_b, metrics_b) = metrics();
    let a = build_client_on(
        Net::Tcp,
        Dcutr::OursWithMetrics(loopback_config(), metrics_a),
    );
    let b = build_client_on(
        Net::Tcp,
        Dcutr::OursWithMetrics(loopback_config(), metrics_b),
    );
    let mut pair = setup_on(Net::Tcp, a, b).await;
    let mut seen = Seen::default();
    run_to_outcomes(&mut pair, &mut seen).await;
    assert!(seen.ours_ok(Who::B).is_some(), "{seen:#?}");
    let won_by_unilateral = match seen.ours_outcome(Who::B) {
        Some(Report::Outcome {
            upgraded: Some(up), ..
        }) => up.attempt == 0,
        other => panic!("{other:?}"),
    };
    let b_lines = scrape(&reg_b);
    let b_counts = counts(&b_lines);
    assert!(
        b_counts.contains(
            &"libp2p_holepunch_time_to_direct_seconds_count{side=\"initiator\",transport=\"tcp\"} 1"
        ),
        "{b_counts:#?}"
    );
    assert_eq!(
        b_counts.contains(&"libp2p_holepunch_direct_dials_total{outcome=\"success\"} 1"),
        won_by_unilateral,
        "{b_counts:#?}"
    );
    for lines in [&b_lines, &scrape(&reg_a)] {
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("libp2p_holepunch_failures_total")),
            "{lines:#?}"
        );
    }
    assert!(counts(&scrape(&reg_a)).contains(
        &"libp2p_holepunch_time_to_direct_seconds_count{side=\"receiver\",transport=\"tcp\"} 1"
    ));
}

#[tokio::test]
async fn the_default_policy_on_loopback_counts_no_suitable_address_with_its_reason() {
    init_tracing();
    let (reg_a, metrics_a) = metrics();
    let (reg_b, metrics_b) = metrics();
    let config = || ours::Config::default().with_seed([9; 32]);
    let a = build_client_on(Net::Tcp, Dcutr::OursWithMetrics(config(), metrics_a));
    let b = build_client_on(Net::Tcp, Dcutr::OursWithMetrics(config(), metrics_b));
    let mut pair = setup_on(Net::Tcp, a, b).await;
    let mut seen = Seen::default();
    run_to_outcomes(&mut pair, &mut seen).await;
    assert!(
        seen.ours_err(Who::A).is_some() && seen.ours_err(Who::B).is_some(),
        "{seen:#?}"
    );
    for (registry, who, side) in [(&reg_b, Who::B, "initiator"), (&reg_a, Who::A, "receiver")] {
        // Nothing of ours passed the policy, so no address series.
        assert_eq!(local_addrs(&seen, who), 0, "{seen:#?}");
        let attempts = match seen.ours_outcome(who) {
            Some(Report::Outcome {
                timeline: Some(t), ..
            }) => t.attempts().len(),
            other => panic!("no timeline on {who:?}: {other:?}"),
        };
        // Neither side had an address to send, so both gave up at once:
        // B after opening its first attempt, A before any.
        let expected_attempts = usize::from(who == Who::B);
        assert_eq!(attempts, expected_attempts, "{seen:#?}");
        let lines = scrape(registry);
        let mut want = vec![format!(
            "libp2p_holepunch_failures_total{{side=\"{side}\",reason=\"nothing_to_send\"}} 1"
        )];
        if attempts > 0 {
            want.push(format!(
                "libp2p_holepunch_outcomes_total{{side=\"{side}\",num_attempts=\"{attempts}\",outcome=\"no_suitable_address\"}} 1"
            ));
        }
        assert_eq!(counts(&lines), want, "{side}: {lines:#?}");
    }
}
