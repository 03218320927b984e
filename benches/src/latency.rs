//! Latency distributions: every timed operation recorded in an HDR
//! histogram (3 significant digits, so a reported percentile is within
//! 0.1 % of the exact one), read back as percentiles.

use hdrhistogram::Histogram;

/// The latencies of one kind of operation, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty distribution.
    pub fn new() -> Latencies {
        // Three significant digits is within hdrhistogram's range (0..=5):
        // the constructor cannot fail.
        let histogram = Histogram::new(3).expect("3 significant digits are valid");
        Latencies { histogram }
    }

    /// Records one operation of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        // `record` grows the histogram as needed (`saturating_record` would
        // not); only a value it cannot grow to (beyond u64::MAX / 2) fails,
        // and is then counted as the largest trackable.
        if self.histogram.record(ns).is_err() {
            self.histogram.saturating_record(ns);
        }
    }

    /// How many operations were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The `p`-th percentile (0 to 100) in nanoseconds: the smallest
    /// recorded value (to 3 significant digits) that `p` % of the
    /// operations do not exceed; `None` when nothing was recorded.
    pub fn percentile_ns(&self, p: f64) -> Option<u64> {
        (!self.histogram.is_empty()).then(|| self.histogram.value_at_percentile(p))
    }
}

impl FromIterator<u64> for Latencies {
    fn from_iter<I: IntoIterator<Item = u64>>(ns: I) -> Latencies {
        let mut latencies = Latencies::new();
        for ns in ns {
            latencies.record(ns);
        }
        latencies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_ranks_to_three_digits() {
        let l: Latencies = (1..=1000u64).map(|i| i * 1000).collect();
        assert_eq!(l.count(), 1000);
        for (p, exact) in [
            (50.0, 500_000u64),
            (90.0, 900_000),
            (99.0, 990_000),
            (100.0, 1_000_000),
        ] {
            let got = l.percentile_ns(p).unwrap();
            assert!(got.abs_diff(exact) * 1000 <= exact, "p{p}: {got} against {exact}");
        }
        assert_eq!(Latencies::new().percentile_ns(50.0), None);
    }

    #[test]
    fn small_values_are_exact() {
        let l: Latencies = [0u64, 1, 2, 3, 4, 5, 6, 7, 8, 9].into_iter().collect();
        assert_eq!(l.percentile_ns(50.0), Some(4));
        assert_eq!(l.percentile_ns(100.0), Some(9));
    }
}
