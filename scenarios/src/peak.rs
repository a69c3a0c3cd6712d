//! The search for the largest burst that holds a service-level objective: double the number of simultaneous
//! orders from a start until a burst fails or the bound is reached, then bisect between the largest size that
//! held and the smallest that failed until they are within the precision. It assumes that a larger burst never
//! does better than a smaller one; a larger size that holds after a smaller one failed is noise, and the failure is
//! trusted.

use serde::Serialize;
use std::collections::BTreeSet;

/// Where the search stands; [`PeakSearch::next`] says what to try, [`PeakSearch::record`] what happened.
#[derive(Clone, Debug)]
pub struct PeakSearch {
    start: u64,
    users_max: u64,
    /// Stop when the bounds are within this share of the lower one (and at least one user apart).
    precision: f64,
    /// Every size that held (one per burst run, so a few dozen at most).
    held: BTreeSet<u64>,
    smallest_failed: Option<u64>,
}

/// What the search found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Peak {
    /// The largest burst that held the objective, if any did.
    pub largest_held: Option<u64>,
    /// The smallest burst that failed it, if any did.
    pub smallest_failed: Option<u64>,
    /// The search stopped at `--max-users` with every burst holding: the peak is higher than measured.
    pub bounded_by_max: bool,
}

impl PeakSearch {
    pub fn new(start: u64, users_max: u64, precision: f64) -> Self {
        assert!(start >= 1, "a burst has at least one order");
        assert!(start <= users_max, "the start is within the bound");
        assert!(
            precision > 0.0 && precision < 1.0,
            "the precision is a share"
        );
        Self {
            start,
            users_max,
            precision,
            held: BTreeSet::new(),
            smallest_failed: None,
        }
    }

    /// The largest size that held below the smallest that failed: a larger burst that held after a smaller one
    /// failed is noise, and the failure is trusted.
    fn largest_held(&self) -> Option<u64> {
        self.held
            .range(..self.smallest_failed.unwrap_or(u64::MAX))
            .next_back()
            .copied()
    }

    /// The next burst size to run, or `None` when the search is over.
    pub fn next(&self) -> Option<u64> {
        match (self.largest_held(), self.smallest_failed) {
            (None, None) => Some(self.start),
            (Some(held), None) if held >= self.users_max => None,
            (Some(held), None) => Some(held.saturating_mul(2).min(self.users_max)),
            (held, Some(failed)) => {
                let held = held.unwrap_or(0);
                let tolerance = ((held as f64 * self.precision).ceil() as u64).max(1);
                if failed - held <= tolerance {
                    return None;
                }
                let middle = held + (failed - held) / 2;
                assert!(held < middle && middle < failed);
                Some(middle)
            }
        }
    }

    /// Records the outcome of a burst of `users`.
    pub fn record(&mut self, users: u64, held: bool) {
        if held {
            self.held.insert(users);
        } else {
            self.smallest_failed = Some(self.smallest_failed.map_or(users, |n| n.min(users)));
        }
    }

    pub fn result(&self) -> Peak {
        let largest_held = self.largest_held();
        Peak {
            largest_held,
            smallest_failed: self.smallest_failed,
            bounded_by_max: self.smallest_failed.is_none() && largest_held == Some(self.users_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a system that holds every burst up to `threshold` users; returns the sizes tried.
    fn check(start: u64, users_max: u64, threshold: u64, tried: &[u64], peak: Peak) {
        let mut search = PeakSearch::new(start, users_max, 0.01);
        let mut seen = Vec::new();
        while let Some(users) = search.next() {
            assert!(seen.len() < 100, "the search ends");
            seen.push(users);
            search.record(users, users <= threshold);
        }
        assert_eq!(seen, tried, "threshold {threshold}");
        assert_eq!(search.result(), peak, "threshold {threshold}");
    }

    #[test]
    fn doubles_until_a_failure_then_bisects() {
        check(
            1000,
            1_000_000,
            5000,
            &[
                1000, 2000, 4000, 8000, 6000, 5000, 5500, 5250, 5125, 5062, 5031,
            ],
            Peak {
                largest_held: Some(5000),
                smallest_failed: Some(5031),
                bounded_by_max: false,
            },
        );
    }

    #[test]
    fn stops_at_the_bound_when_everything_holds() {
        check(
            1000,
            5000,
            u64::MAX,
            &[1000, 2000, 4000, 5000],
            Peak {
                largest_held: Some(5000),
                smallest_failed: None,
                bounded_by_max: true,
            },
        );
    }

    #[test]
    fn a_failing_start_bisects_below_it() {
        check(
            8,
            100,
            2,
            &[8, 4, 2, 3],
            Peak {
                largest_held: Some(2),
                smallest_failed: Some(3),
                bounded_by_max: false,
            },
        );
        check(
            4,
            100,
            0,
            &[4, 2, 1],
            Peak {
                largest_held: None,
                smallest_failed: Some(1),
                bounded_by_max: false,
            },
        );
    }

    #[test]
    fn noise_keeps_the_bounds_ordered() {
        let mut search = PeakSearch::new(10, 100, 0.01);
        search.record(40, false);
        search.record(60, true);
        let peak = search.result();
        // 60 held after 40 failed: noise. No size below 40 has run, so none is reported as held, and the search
        // goes on below the failure.
        assert_eq!(peak.largest_held, None);
        assert_eq!(peak.smallest_failed, Some(40));
        assert_eq!(search.next(), Some(20));
        search.record(20, true);
        search.record(80, true);
        assert_eq!(search.result().largest_held, Some(20));
        assert_eq!(search.next(), Some(30));
    }
}
