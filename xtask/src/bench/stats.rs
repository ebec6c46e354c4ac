//! Summaries of repeated measurements: the median is reported, min, max and p99 show the spread.

use serde::Serialize;

/// A summary of samples (whatever their unit).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Nearest-rank 99th percentile; equals `max` below 100 samples.
    pub p99: f64,
    pub samples: usize,
}

impl Summary {
    /// `None` for no samples (a configuration that could not run).
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        // Nearest rank: the smallest sample with at least 99 % of the samples at or below it.
        let rank = (n * 99).div_ceil(100).max(1);
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            p99: v[rank - 1],
            samples: n,
        })
    }
}

/// Per-repetition ratios `num[i] / den[i]` (the configurations of one repetition ran back to
/// back, so their ratio is less disturbed by drift of the machine than a ratio of medians).
pub fn ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter()
        .zip(den)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| n / d)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Summary, ratios};

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap_or_default();
        assert_eq!(
            (s.median, s.min, s.max, s.p99, s.samples),
            (3.0, 1.0, 5.0, 5.0, 3)
        );
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap_or_default();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn p99_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(Summary::of(&v).map(|s| s.p99), Some(198.0));
    }

    #[test]
    fn ratios_pair_up() {
        assert_eq!(ratios(&[2.0, 9.0], &[1.0, 3.0]), vec![2.0, 3.0]);
        assert!(ratios(&[1.0], &[0.0]).is_empty());
    }
}
