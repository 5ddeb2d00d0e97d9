//! What the gateway counts of its answers, for the node's `anycore.stats.RequestStats`
//! (`/metrics`): per release, statuses and the duration and queue-wait histograms on
//! `anycore.stats.BUCKETS`, cumulative since the gateway started, sent in `Stats`. A
//! worker's answers are counted in its own `RelStats` (no lookup per request); a gone
//! worker's, and the gateway's answers to requests no release took, in the service's
//! per-release table (`Core::released`).

/// `anycore.stats.BUCKETS`: upper bounds, the last one infinite.
pub const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    f64::INFINITY,
];

/// `anycore.stats.Histogram`: counts per bucket (not Prometheus-cumulative) and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hist {
    pub counts: [u64; 19],
    pub sum: f64,
}

impl Hist {
    pub fn observe(&mut self, value: f64) {
        let i = BUCKETS.partition_point(|b| *b < value); // Python's bisect_left
        self.counts[i.min(BUCKETS.len() - 1)] += 1;
        self.sum += value;
    }
    pub fn add(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

/// One release's answers, as `anycore.stats.ReleaseStats`: statuses, request duration
/// (arrival to the end of the answer), queue wait (arrival to the last placement on a
/// slot, for requests that were placed). Cumulative since the gateway started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelStats {
    pub statuses: Vec<(u16, u64)>,
    pub duration: Hist,
    pub queue_wait: Hist,
}

impl RelStats {
    pub fn record(&mut self, status: u16, duration: f64, queued: Option<f64>) {
        match self.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((status, 1)),
        }
        self.duration.observe(duration.max(0.0));
        if let Some(q) = queued {
            self.queue_wait.observe(q.max(0.0));
        }
    }
    pub fn add(&mut self, other: &RelStats) {
        for (status, n) in &other.statuses {
            match self.statuses.iter_mut().find(|(s, _)| s == status) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((*status, *n)),
            }
        }
        self.duration.add(&other.duration);
        self.queue_wait.add(&other.queue_wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_as_pythons_bisect_left_and_add_up() {
        let mut h = Hist::default();
        for v in [0.0, 0.0001, 0.00011, 0.5, 60.0, 61.0, f64::INFINITY] {
            h.observe(v);
        }
        let at: Vec<(usize, u64)> = h.counts.iter().copied().enumerate().filter(|(_, n)| *n > 0).collect();
        assert_eq!(at, vec![(0, 2), (1, 1), (11, 1), (17, 1), (18, 2)]);
        let mut a = RelStats::default();
        a.record(200, 0.002, Some(0.0));
        a.record(503, 0.0, None);
        let mut b = RelStats::default();
        b.record(200, 0.2, Some(0.1));
        b.add(&a);
        assert_eq!(b.statuses, vec![(200, 2), (503, 1)]);
        assert_eq!((b.duration.counts.iter().sum::<u64>(), b.queue_wait.counts.iter().sum::<u64>()), (3, 2));
        assert!((b.duration.sum - 0.202).abs() < 1e-12);
    }
}
