//! The statistics of a `dcutr libp2p dial --runs N` campaign: success rate
//! and time to direct, as ProbeLab's punchr reports them.

use serde::Serialize;

/// What a campaign of hole-punch runs amounts to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Runs made.
    pub runs: u32,
    /// Runs that ended with a direct connection pinged over.
    pub successes: u32,
    /// `successes / runs` (0 when there were no runs).
    pub success_rate: f64,
    /// Median time from the relayed connection to the direct one, over the
    /// successful runs, ms.
    pub time_to_direct_p50_ms: Option<f64>,
    /// Its 90th percentile, ms.
    pub time_to_direct_p90_ms: Option<f64>,
    /// Its largest value, ms.
    pub time_to_direct_max_ms: Option<f64>,
}

impl Summary {
    /// The summary of `runs` runs, of which the successful ones took
    /// `times_to_direct_ms` (one value each) to their direct connection.
    #[must_use]
    pub fn new(runs: u32, times_to_direct_ms: &[f64]) -> Self {
        let mut sorted: Vec<f64> = times_to_direct_ms
            .iter()
            .copied()
            .filter(|t| t.is_finite())
            .collect();
        sorted.sort_by(f64::total_cmp);
        let successes = u32::try_from(times_to_direct_ms.len()).unwrap_or(u32::MAX);
        Summary {
            runs,
            successes,
            success_rate: if runs == 0 {
                0.0
            } else {
                f64::from(successes) / f64::from(runs)
            },
            time_to_direct_p50_ms: percentile(&sorted, 50),
            time_to_direct_p90_ms: percentile(&sorted, 90),
            time_to_direct_max_ms: sorted.last().copied(),
        }
    }
}

/// The `p`-th percentile of ascending `sorted` by the nearest-rank method:
/// the smallest value with at least `p` percent of the values at or below
/// it (always one of the values; `None` when there are none).
#[must_use]
pub fn percentile(sorted: &[f64], p: u8) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = usize::from(p.min(100));
    // ceil(p * n / 100), at least 1: the rank, 1-based.
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_values_of_the_sample() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50), Some(5.0));
        assert_eq!(percentile(&ten, 90), Some(9.0));
        assert_eq!(percentile(&ten, 91), Some(10.0));
        assert_eq!(percentile(&ten, 100), Some(10.0));
        assert_eq!(percentile(&ten, 0), Some(1.0));
        assert_eq!(percentile(&[7.5], 90), Some(7.5));
        assert_eq!(percentile(&[], 50), None);
        let three = [10.0, 20.0, 30.0];
        assert_eq!(percentile(&three, 50), Some(20.0));
        assert_eq!(percentile(&three, 90), Some(30.0));
    }

    #[test]
    fn the_summary_counts_successes_and_sorts_the_times() {
        let s = Summary::new(4, &[300.0, 100.0, 200.0]);
        assert_eq!(s.runs, 4);
        assert_eq!(s.successes, 3);
        assert!((s.success_rate - 0.75).abs() < 1e-12);
        assert_eq!(s.time_to_direct_p50_ms, Some(200.0));
        assert_eq!(s.time_to_direct_p90_ms, Some(300.0));
        assert_eq!(s.time_to_direct_max_ms, Some(300.0));
    }

    #[test]
    fn a_campaign_without_successes_has_no_times() {
        let s = Summary::new(3, &[]);
        assert_eq!((s.successes, s.success_rate), (0, 0.0));
        assert_eq!(s.time_to_direct_p50_ms, None);
        assert_eq!(s.time_to_direct_max_ms, None);
        assert_eq!(Summary::new(0, &[]).success_rate, 0.0);
    }
}
