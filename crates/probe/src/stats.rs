//! Probe results summed per interval and (source, destination, kind) (pure, time
//! passed in). [`PairStats`] is what the server stores per interval and node pair and
//! what [`crate::metrics`] keeps as cumulative counters: plain, serializable, with
//! [`PairStats::merge`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::result::{Outcome, ProbeKind, ProbeResult};

/// Upper bounds of the RTT histogram buckets, seconds (a last bucket, +Inf, follows).
pub const RTT_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The same bounds in ns.
fn bound_ns(i: usize) -> u64 {
    (RTT_BUCKETS_S[i] * 1e9).round() as u64
}

/// Which bucket an RTT falls in (index into [`PairStats::buckets`]).
pub fn bucket_of(rtt_ns: u64) -> usize {
    (0..RTT_BUCKETS_S.len())
        .find(|&i| rtt_ns <= bound_ns(i))
        .unwrap_or(RTT_BUCKETS_S.len())
}

/// What identifies a row: the pair, the kind, and for DNS the name asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairKey {
    /// Probing node.
    pub src_node: String,
    /// Probed node (DNS: the resolver).
    pub dst_node: String,
    /// The kind.
    pub kind: ProbeKind,
    /// DNS name (empty otherwise).
    pub dns_name: String,
    /// Probing node's zone.
    pub src_zone: String,
    /// Probed node's zone.
    pub dst_zone: String,
}

impl PairKey {
    /// The key of a result.
    pub fn of(r: &ProbeResult) -> PairKey {
        PairKey {
            src_node: r.src_node.clone(),
            dst_node: r.dst_node.clone(),
            kind: r.kind,
            dns_name: r.dns_name.clone(),
            src_zone: r.src_zone.clone(),
            dst_zone: r.dst_zone.clone(),
        }
    }
}

/// Sums over a set of probe results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStats {
    /// Probes.
    pub count: u64,
    /// Of those, failed.
    pub failures: u64,
    /// Of those, unavailable on the probing node.
    pub unavailable: u64,
    /// Packets (attempts) sent.
    pub sent: u64,
    /// Packets (attempts) lost.
    pub lost: u64,
    /// Duplicate replies.
    pub duplicates: u64,
    /// Late replies.
    pub late: u64,
    /// RTT samples.
    pub rtt_count: u64,
    /// Their sum, ns.
    pub rtt_sum_ns: u64,
    /// The smallest, ns (0 when none).
    pub rtt_min_ns: u64,
    /// The largest, ns.
    pub rtt_max_ns: u64,
    /// Samples per bucket of [`RTT_BUCKETS_S`], plus +Inf last (not cumulative).
    pub buckets: Vec<u64>,
    /// Times from the user-space clock for lack of a kernel stamp.
    pub timestamp_fallbacks: u64,
}

impl Default for PairStats {
    fn default() -> Self {
        PairStats {
            count: 0,
            failures: 0,
            unavailable: 0,
            sent: 0,
            lost: 0,
            duplicates: 0,
            late: 0,
            rtt_count: 0,
            rtt_sum_ns: 0,
            rtt_min_ns: 0,
            rtt_max_ns: 0,
            buckets: vec![0; RTT_BUCKETS_S.len() + 1],
            timestamp_fallbacks: 0,
        }
    }
}

impl PairStats {
    /// Adds one result.
    pub fn observe(&mut self, r: &ProbeResult) {
        self.count += 1;
        match r.outcome {
            Outcome::Ok => {}
            Outcome::Fail => self.failures += 1,
            Outcome::Unavailable => self.unavailable += 1,
        }
        self.sent += u64::from(r.sent);
        self.lost += u64::from(r.lost);
        self.duplicates += u64::from(r.duplicates);
        self.late += u64::from(r.late);
        self.timestamp_fallbacks += u64::from(r.timestamp_fallbacks);
        self.buckets.resize(RTT_BUCKETS_S.len() + 1, 0);
        for &t in &r.rtt_ns {
            if self.rtt_count == 0 || t < self.rtt_min_ns {
                self.rtt_min_ns = t;
            }
            self.rtt_max_ns = self.rtt_max_ns.max(t);
            self.rtt_count += 1;
            self.rtt_sum_ns = self.rtt_sum_ns.saturating_add(t);
            self.buckets[bucket_of(t)] += 1;
        }
    }

    /// Adds another row's sums (associative and commutative).
    pub fn merge(&mut self, o: &PairStats) {
        self.count += o.count;
        self.failures += o.failures;
        self.unavailable += o.unavailable;
        self.sent += o.sent;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.late += o.late;
        self.timestamp_fallbacks += o.timestamp_fallbacks;
        if o.rtt_count > 0 {
            if self.rtt_count == 0 || o.rtt_min_ns < self.rtt_min_ns {
                self.rtt_min_ns = o.rtt_min_ns;
            }
            self.rtt_max_ns = self.rtt_max_ns.max(o.rtt_max_ns);
        }
        self.rtt_count += o.rtt_count;
        self.rtt_sum_ns = self.rtt_sum_ns.saturating_add(o.rtt_sum_ns);
        let n = self
            .buckets
            .len()
            .max(o.buckets.len())
            .max(RTT_BUCKETS_S.len() + 1);
        self.buckets.resize(n, 0);
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }

    /// Probes that worked.
    pub fn ok(&self) -> u64 {
        self.count - self.failures - self.unavailable
    }
}

/// One closed interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalStats {
    /// Start, seconds since the Unix epoch (a multiple of `len_s`).
    pub start_unix_s: u64,
    /// Length, seconds.
    pub len_s: u64,
    /// One row per key.
    pub rows: Vec<(PairKey, PairStats)>,
}

/// Sums results into fixed intervals by their start time; bounded.
#[derive(Debug)]
pub struct Aggregator {
    len_s: u64,
    max_keys: usize,
    open: BTreeMap<u64, BTreeMap<PairKey, PairStats>>,
    closed_before: u64,
    dropped_keys: u64,
    dropped_late: u64,
}

/// The most intervals kept open at once (results older than that are late).
const OPEN_MAX: usize = 3;

impl Aggregator {
    /// Intervals of `len_s` seconds, at most `max_keys` rows each.
    pub fn new(len_s: u64, max_keys: usize) -> Aggregator {
        Aggregator {
            len_s: len_s.max(1),
            max_keys,
            open: BTreeMap::new(),
            closed_before: 0,
            dropped_keys: 0,
            dropped_late: 0,
        }
    }

    /// Adds a result; false (and counted) when its interval is closed or full.
    pub fn record(&mut self, r: &ProbeResult) -> bool {
        let start = r.started_unix_ns / 1_000_000_000 / self.len_s * self.len_s;
        if start < self.closed_before {
            self.dropped_late += 1;
            return false;
        }
        if !self.open.contains_key(&start) && self.open.len() >= OPEN_MAX {
            self.dropped_late += 1;
            return false;
        }
        let rows = self.open.entry(start).or_default();
        let key = PairKey::of(r);
        if !rows.contains_key(&key) && rows.len() >= self.max_keys {
            self.dropped_keys += 1;
            return false;
        }
        rows.entry(key).or_default().observe(r);
        true
    }

    /// Closes and returns every interval that ended at or before `now_unix_s`.
    pub fn flush(&mut self, now_unix_s: u64) -> Vec<IntervalStats> {
        let mut out = Vec::new();
        while let Some((&start, _)) = self.open.first_key_value() {
            if start + self.len_s > now_unix_s {
                break;
            }
            let rows = self.open.remove(&start).unwrap_or_default();
            self.closed_before = start + self.len_s;
            out.push(IntervalStats {
                start_unix_s: start,
                len_s: self.len_s,
                rows: rows.into_iter().collect(),
            });
        }
        self.closed_before = self
            .closed_before
            .max(now_unix_s.saturating_sub(self.len_s * OPEN_MAX as u64));
        out
    }

    /// Results dropped because an interval had `max_keys` rows.
    pub fn dropped_keys(&self) -> u64 {
        self.dropped_keys
    }

    /// Results dropped because their interval was already closed.
    pub fn dropped_late(&self) -> u64 {
        self.dropped_late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(dst: &str, kind: ProbeKind, ok: bool, rtts: &[u64], at_s: u64) -> ProbeResult {
        let mut r = ProbeResult::new(kind, ("a", "z1"), (dst, "z2"), at_s * 1_000_000_000);
        r.outcome = if ok { Outcome::Ok } else { Outcome::Fail };
        r.sent = 5;
        r.lost = 5 - rtts.len() as u32;
        r.rtt_ns = rtts.to_vec();
        r
    }

    #[test]
    fn buckets_are_upper_bounds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100_000), 0);
        assert_eq!(bucket_of(100_001), 1);
        assert_eq!(bucket_of(20_000_000), 7); // 20 ms <= 25 ms
        assert_eq!(bucket_of(3_000_000_000), RTT_BUCKETS_S.len());
    }

    #[test]
    fn intervals_close_in_order_and_late_results_are_counted() {
        let mut a = Aggregator::new(60, 10);
        assert!(a.record(&res("b", ProbeKind::Udp, true, &[1_000, 3_000], 61)));
        assert!(a.record(&res("b", ProbeKind::Udp, false, &[2_000], 100)));
        assert!(a.record(&res("c", ProbeKind::Udp, true, &[5_000], 125)));
        assert!(a.flush(119).is_empty());
        let out = a.flush(120);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start_unix_s, 60);
        let (k, s) = &out[0].rows[0];
        assert_eq!(
            (k.dst_node.as_str(), s.count, s.failures, s.sent, s.lost),
            ("b", 2, 1, 10, 7)
        );
        assert_eq!(
            (s.rtt_count, s.rtt_sum_ns, s.rtt_min_ns, s.rtt_max_ns),
            (3, 6_000, 1_000, 3_000)
        );
        assert!(
            !a.record(&res("b", ProbeKind::Udp, true, &[1], 90)),
            "interval closed"
        );
        assert_eq!(a.dropped_late(), 1);
    }

    #[test]
    fn rows_are_bounded() {
        let mut a = Aggregator::new(60, 2);
        assert!(a.record(&res("b", ProbeKind::Udp, true, &[], 0)));
        assert!(a.record(&res("c", ProbeKind::Udp, true, &[], 0)));
        assert!(!a.record(&res("d", ProbeKind::Udp, true, &[], 0)));
        assert!(
            a.record(&res("b", ProbeKind::Udp, true, &[], 0)),
            "existing rows still add up"
        );
        assert_eq!(a.dropped_keys(), 1);
    }

    proptest! {
        /// Summing results one by one equals merging partial sums in any split.
        #[test]
        fn merge_equals_observe(rs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(0u64..3_000_000_000, 0..5)), 0..30), cut in 0usize..30) {
            let results: Vec<ProbeResult> = rs.iter().map(|(ok, t)| res("b", ProbeKind::Udp, *ok, t, 0)).collect();
            let mut whole = PairStats::default();
            results.iter().for_each(|r| whole.observe(r));
            let cut = cut.min(results.len());
            let (mut left, mut right) = (PairStats::default(), PairStats::default());
            results[..cut].iter().for_each(|r| left.observe(r));
            results[cut..].iter().for_each(|r| right.observe(r));
            right.merge(&left);
            prop_assert_eq!(&right, &whole);
            prop_assert_eq!(whole.buckets.iter().sum::<u64>(), whole.rtt_count);
            let json = serde_json::to_string(&whole).expect("json");
            prop_assert_eq!(serde_json::from_str::<PairStats>(&json).expect("back"), whole);
        }
    }
}
