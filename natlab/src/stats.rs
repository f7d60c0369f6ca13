//! Small numeric helpers shared by the probes, the selftest and the matrix.

/// Median of `values` (any order); `None` when empty. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The `q` quantile (0..=1, nearest rank) of `values`; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Time-to-direct as a ratio of the protocol's lower bound `1.5·R + D`
/// (PROTOCOL.md "Timing bound"): 1.0 means as fast as physically possible.
/// `None` when an input is missing or the bound is not positive.
pub fn bound_ratio(
    time_to_direct_ms: Option<f64>,
    relayed_rtt_ms: Option<f64>,
    direct_rtt_ms: Option<f64>,
) -> Option<f64> {
    let (t, r, d) = (time_to_direct_ms?, relayed_rtt_ms?, direct_rtt_ms?);
    let bound = 1.5 * r + d;
    (bound > 0.0 && t.is_finite() && bound.is_finite()).then(|| t / bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&v, 1.5), None);
    }

    #[test]
    fn ratio_divides_by_one_and_a_half_relayed_rtt_plus_direct_rtt() {
        // R = 100, D = 10: bound 160 ms.
        assert_eq!(bound_ratio(Some(320.0), Some(100.0), Some(10.0)), Some(2.0));
        assert_eq!(bound_ratio(Some(160.0), Some(100.0), Some(10.0)), Some(1.0));
    }

    #[test]
    fn ratio_needs_every_input_and_a_positive_bound() {
        assert_eq!(bound_ratio(None, Some(1.0), Some(1.0)), None);
        assert_eq!(bound_ratio(Some(1.0), None, Some(1.0)), None);
        assert_eq!(bound_ratio(Some(1.0), Some(1.0), None), None);
        assert_eq!(bound_ratio(Some(1.0), Some(0.0), Some(0.0)), None);
        assert_eq!(bound_ratio(Some(f64::NAN), Some(1.0), Some(0.0)), None);
    }
}
