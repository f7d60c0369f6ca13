//! The matrix's Markdown table: one row per case, aggregated over its runs.

use crate::matrix::{Expect, Outcome, RunRecord};
use crate::stats::median;

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Case name.
    pub case: String,
    /// A's site.
    pub a_site: String,
    /// B's site.
    pub b_site: String,
    /// Runtime of both peers.
    pub runtime: String,
    /// Runs made.
    pub runs: usize,
    /// Runs that upgraded.
    pub upgraded: usize,
    /// Outcome counts, e.g. `upgraded` or `upgraded 2, timeout 1`.
    pub outcomes: String,
    /// Median attempts.
    pub attempts: Option<f64>,
    /// Median relayed RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Median direct RTT, ms.
    pub direct_rtt_ms: Option<f64>,
    /// Median time to direct, ms.
    pub time_to_direct_ms: Option<f64>,
    /// Median ratio to the bound.
    pub ratio: Option<f64>,
    /// Median run duration, s.
    pub duration_s: Option<f64>,
    /// PASS, FAIL, or "report" for pairs with no expectation beyond clean.
    pub verdict: String,
}

/// Group records by case (in first-seen order) into rows.
pub fn aggregate(records: &[RunRecord]) -> Vec<Row> {
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.case.as_str()) {
            order.push(&r.case);
        }
    }
    order
        .into_iter()
        .map(|case| {
            let runs: Vec<&RunRecord> = records.iter().filter(|r| r.case == case).collect();
            let first = runs[0];
            let med = |f: fn(&RunRecord) -> Option<f64>| {
                median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let mut counts: Vec<(Outcome, usize)> = Vec::new();
            for r in &runs {
                match counts.iter_mut().find(|(o, _)| *o == r.outcome) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((r.outcome, 1)),
                }
            }
            let outcomes = if counts.len() == 1 && runs.len() == 1 {
                counts[0].0.to_string()
            } else {
                counts
                    .iter()
                    .map(|(o, n)| format!("{o} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let failed = runs.iter().filter(|r| !r.passed()).count();
            let verdict = if failed > 0 {
                format!("FAIL ({failed}/{})", runs.len())
            } else if first.expect == Expect::Clean {
                "report".to_string()
            } else {
                "PASS".to_string()
            };
            Row {
                case: case.to_owned(),
                a_site: first.a_site.clone(),
                b_site: first.b_site.clone(),
                runtime: first.runtime.clone(),
                runs: runs.len(),
                upgraded: runs
                    .iter()
                    .filter(|r| r.outcome == Outcome::Upgraded)
                    .count(),
                outcomes,
                attempts: med(|r| r.attempts.map(f64::from)),
                rtt_ms: med(|r| r.rtt_ms),
                direct_rtt_ms: med(|r| r.direct_rtt_ms),
                time_to_direct_ms: med(|r| r.time_to_direct_ms),
                ratio: med(|r| r.ratio),
                duration_s: med(|r| Some(r.duration_ms / 1e3)),
                verdict,
            }
        })
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The table, GitHub-flavoured Markdown.
pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | A | B | runtime | upgraded | outcome | attempts | R ms | D ms | time to direct ms | ratio | duration s | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cells = [
            cell(&r.case),
            cell(&r.a_site),
            cell(&r.b_site),
            cell(&r.runtime),
            format!("{}/{}", r.upgraded, r.runs),
            cell(&r.outcomes),
            num(r.attempts, 0),
            num(r.rtt_ms, 1),
            num(r.direct_rtt_ms, 2),
            num(r.time_to_direct_ms, 1),
            num(r.ratio, 2),
            num(r.duration_s, 2),
            cell(&r.verdict),
        ];
        out.push_str("| ");
        out.push_str(&cells.join(" | "));
        out.push_str(" |\n");
    }
    out.push_str("\nratio = time to direct / (1.5 R + D); medians over runs; R, D, time to direct from B (A if B has none).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{PeerRun, RunRecord, Transport};

    fn record(
        case: &str,
        outcome: Outcome,
        ttd: Option<f64>,
        violations: Vec<String>,
        expect: Expect,
    ) -> RunRecord {
        RunRecord {
            case: case.into(),
            pair: case.split(' ').next().unwrap().into(),
            a_site: "cone".into(),
            b_site: "cone".into(),
            transport: Transport::Tcp,
            runtime: "tokio".into(),
            relay_rtt_target_ms: 100,
            run: 1,
            outcome,
            expect,
            a: PeerRun::default(),
            b: PeerRun::default(),
            attempts: Some(1),
            rtt_ms: Some(100.0),
            direct_rtt_ms: Some(0.25),
            time_to_direct_ms: ttd,
            ratio: ttd.map(|t| t / 150.25),
            unilateral: Some(false),
            reason: None,
            duration_ms: 1234.0,
            setup_ms: 100.0,
            teardown_ms: Some(50.0),
            problems: vec![],
            violations,
        }
    }

    #[test]
    fn rows_aggregate_runs_per_case_in_order_with_medians() {
        let up = Expect::Upgrade { unilateral: false };
        let recs = vec![
            record(
                "cone/cone tcp rtt100",
                Outcome::Upgraded,
                Some(150.0),
                vec![],
                up,
            ),
            record(
                "cone/public tcp rtt0",
                Outcome::Upgraded,
                Some(5.0),
                vec![],
                up,
            ),
            record(
                "cone/cone tcp rtt100",
                Outcome::Upgraded,
                Some(170.0),
                vec![],
                up,
            ),
            record(
                "cone/cone tcp rtt100",
                Outcome::Timeout,
                None,
                vec!["timed out".into()],
                up,
            ),
        ];
        let rows = aggregate(&recs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].case, "cone/cone tcp rtt100");
        assert_eq!((rows[0].runs, rows[0].upgraded), (3, 2));
        assert_eq!(rows[0].outcomes, "upgraded 2, timeout 1");
        assert_eq!(rows[0].time_to_direct_ms, Some(160.0));
        assert_eq!(rows[0].verdict, "FAIL (1/3)");
        assert_eq!(rows[1].outcomes, "upgraded");
        assert_eq!(rows[1].verdict, "PASS");
    }

    #[test]
    fn report_only_cases_say_report_when_clean() {
        let rows = aggregate(&[record(
            "cone/cone-no-firewall tcp rtt0",
            Outcome::FailedClean,
            None,
            vec![],
            Expect::Clean,
        )]);
        assert_eq!(rows[0].verdict, "report");
    }

    #[test]
    fn markdown_has_a_header_a_row_per_case_and_escapes_pipes() {
        let rows = aggregate(&[record(
            "a|b tcp rtt0",
            Outcome::Upgraded,
            Some(150.25),
            vec![],
            Expect::Upgrade { unilateral: false },
        )]);
        let md = render_markdown(&rows);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("| case | A | B | runtime | upgraded |"));
        assert!(lines[1].starts_with("|---|"));
        assert_eq!(
            lines[2],
            "| a\\|b tcp rtt0 | cone | cone | tokio | 1/1 | upgraded | 1 | 100.0 | 0.25 | 150.2 | 1.00 | 1.23 | PASS |"
        );
        assert_eq!(
            lines[0].matches('|').count(),
            lines[2].matches('|').count() - 1
        );
    }

    #[test]
    fn missing_numbers_render_as_dashes() {
        let mut r = record(
            "x tcp rtt0",
            Outcome::Error,
            None,
            vec!["boom".into()],
            Expect::Clean,
        );
        r.rtt_ms = None;
        r.attempts = None;
        let md = render_markdown(&aggregate(&[r]));
        assert!(
            md.lines()
                .nth(2)
                .unwrap()
                .contains("| error | - | - | 0.25 | - | - | 1.23 | FAIL (1/1) |")
        );
    }
}
