//! Latency statistics over every sample of a run: exact nearest-rank percentiles (a burst has at most a few
//! hundred thousand samples, so sorting them all is cheaper than being approximately right), equal-width histogram
//! bins, and percentile bands by completion time.

use serde::{Deserialize, Serialize};

/// The figures a report gives for a set of latencies, in the unit of the samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values`, or `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let last = sorted[sorted.len() - 1];
        // Summing can round the mean of equal values just past them.
        let mean = (sorted.iter().sum::<f64>() / sorted.len() as f64).clamp(sorted[0], last);
        let summary = Summary {
            min: sorted[0],
            mean,
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            p99: percentile(&sorted, 0.99),
            max: last,
        };
        assert!(summary.min <= summary.p50 && summary.p50 <= summary.p90);
        assert!(summary.p90 <= summary.p99 && summary.p99 <= summary.max);
        assert!(summary.min <= summary.mean && summary.mean <= summary.max);
        Some(summary)
    }

    /// Every figure rounded to `decimals` places, for a report that is read by people.
    pub fn rounded(self, decimals: i32) -> Summary {
        let round = |value: f64| round_to(value, decimals);
        Summary {
            min: round(self.min),
            mean: round(self.mean),
            p50: round(self.p50),
            p90: round(self.p90),
            p99: round(self.p99),
            max: round(self.max),
        }
    }
}

pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The nearest-rank percentile of ascending `sorted` values: the smallest value such that at least a share `q` of
/// the values are at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "a percentile of nothing");
    assert!((0.0..=1.0).contains(&q), "q is a share");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One bar of a histogram: values in `[low, high)` (the last bin also takes `high`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    pub low: f64,
    pub high: f64,
    pub count: u64,
}

/// `bins_count` equal-width bins over `[low, high]`; a value outside the range counts in the nearest end bin, so
/// that the bars always add up to the number of values.
pub fn histogram(values: &[f64], low: f64, high: f64, bins_count: usize) -> Vec<Bin> {
    assert!(bins_count > 0, "a histogram has bins");
    assert!(high > low, "a histogram spans a range");
    let width = (high - low) / bins_count as f64;
    let mut bins: Vec<Bin> = (0..bins_count)
        .map(|index| Bin {
            low: low + width * index as f64,
            high: low + width * (index + 1) as f64,
            count: 0,
        })
        .collect();
    for value in values {
        let index = ((value - low) / width).floor();
        let index = if index.is_nan() || index < 0.0 {
            0
        } else {
            (index as usize).min(bins_count - 1)
        };
        bins[index].count += 1;
    }
    debug_assert_eq!(
        bins.iter().map(|bin| bin.count).sum::<u64>(),
        values.len() as u64
    );
    bins
}

/// Latency percentiles of the samples that completed within one slice of time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    /// Middle of the slice.
    pub at: f64,
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Cuts `[low, high]` into `slices` equal slices of completion time and gives the percentiles of `value` over the
/// samples `(completed_at, value)` in each; slices without samples are left out.
pub fn bands(samples: &[(f64, f64)], low: f64, high: f64, slices: usize) -> Vec<Band> {
    assert!(slices > 0 && high > low);
    let width = (high - low) / slices as f64;
    let mut per_slice: Vec<Vec<f64>> = vec![Vec::new(); slices];
    for &(at, value) in samples {
        let index = ((at - low) / width).floor().max(0.0) as usize;
        per_slice[index.min(slices - 1)].push(value);
    }
    per_slice
        .into_iter()
        .enumerate()
        .filter(|(_, values)| !values.is_empty())
        .map(|(index, mut values)| {
            values.sort_by(f64::total_cmp);
            Band {
                at: low + width * (index as f64 + 0.5),
                count: values.len() as u64,
                p50: percentile(&values, 0.50),
                p99: percentile(&values, 0.99),
                max: values[values.len() - 1],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_equal_values_is_that_value() {
        // 0.1 + 0.1 + 0.1 sums to a hair over 0.3: the mean would land past the maximum.
        let summary = Summary::of(&[0.1, 0.1, 0.1]).expect("values");
        assert_eq!((summary.min, summary.mean, summary.max), (0.1, 0.1, 0.1));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let check = |values: &[f64], q: f64, expected: f64| {
            assert_eq!(percentile(values, q), expected, "q={q} of {values:?}");
        };
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check(&hundred, 0.50, 50.0);
        check(&hundred, 0.90, 90.0);
        check(&hundred, 0.99, 99.0);
        check(&hundred, 1.0, 100.0);
        check(&hundred, 0.0, 1.0);
        check(&[7.0], 0.5, 7.0);
        check(&[1.0, 2.0], 0.5, 1.0);
        check(&[1.0, 2.0], 0.51, 2.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        check(&ten, 0.99, 10.0);
    }

    #[test]
    fn a_summary_holds_the_extremes_and_the_mean() {
        assert_eq!(Summary::of(&[]), None);
        let summary = Summary::of(&[3.0, 1.0, 2.0, 10.0]).expect("values");
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.max, 10.0);
        assert_eq!(summary.mean, 4.0);
        assert_eq!(summary.p50, 2.0);
        assert_eq!(summary.p99, 10.0);
        let rounded = Summary::of(&[1.23456, 2.34567]).expect("values").rounded(2);
        assert_eq!((rounded.min, rounded.max, rounded.mean), (1.23, 2.35, 1.79));
    }

    #[test]
    fn histogram_bins_count_every_value_once() {
        let bins = histogram(&[0.0, 0.5, 1.0, 2.5, 4.0, 9.0, -1.0], 0.0, 4.0, 4);
        let counts: Vec<u64> = bins.iter().map(|bin| bin.count).collect();
        // -1 joins the first bin, 4 (the upper edge) and 9 the last.
        assert_eq!(counts, [3, 1, 1, 2]);
        assert_eq!((bins[1].low, bins[1].high), (1.0, 2.0));
        assert_eq!(bins[3].high, 4.0);
    }

    #[test]
    fn bands_give_percentiles_per_slice_of_completion_time() {
        let samples: Vec<(f64, f64)> = (0..100)
            .map(|i| (f64::from(i), f64::from(i % 10)))
            .chain([(99.5, 50.0)])
            .collect();
        let bands = bands(&samples, 0.0, 100.0, 2);
        assert_eq!(bands.len(), 2);
        assert_eq!((bands[0].at, bands[0].count), (25.0, 50));
        assert_eq!((bands[0].p50, bands[0].max), (4.0, 9.0));
        assert_eq!((bands[1].count, bands[1].max), (51, 50.0));
        let sparse = super::bands(&[(1.0, 1.0), (9.0, 2.0)], 0.0, 10.0, 10);
        assert_eq!(sparse.len(), 2, "empty slices are left out");
    }
}
