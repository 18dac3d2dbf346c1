//! Probe history: per interval, node pair and probe kind, what the agents' probes
//! measured (count, failures, loss, RTT sums and buckets), and the grouped queries over
//! it (`/api/v1/probes`). A row is written once per (interval, pair, kind) by the agent
//! that probed: a replayed batch carries the same row, so rows *replace* (idempotent),
//! they are not added.

mod clickhouse;
mod sqlite;

pub use self::clickhouse::ClickHouseProbeStore;
pub use self::sqlite::SqliteProbeStore;

use serde::Serialize;

use crate::error::StoreError;

/// RTT bucket upper bounds, seconds (the probe crate's; the last bucket is past them).
pub const RTT_BOUNDS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets per row.
pub const BUCKETS: usize = RTT_BOUNDS_S.len() + 1;

/// One stored interval of one probe kind between two nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeRow {
    /// Interval start, Unix seconds.
    pub interval_start: i64,
    /// Interval length, seconds.
    pub interval_s: u32,
    /// The probing node.
    pub src_node: String,
    /// The probed node (DNS: the resolver).
    pub dst_node: String,
    /// Zones of both.
    pub src_zone: String,
    /// Zone of the probed node.
    pub dst_zone: String,
    /// `udp`, `udp_mtu`, `tcp`, `http`, `icmp`, `dns`.
    pub kind: String,
    /// DNS: the name looked up.
    pub dns_name: String,
    /// Probes.
    pub count: u64,
    /// Probes that failed.
    pub failures: u64,
    /// Probes that could not run (e.g. ICMP without CAP_NET_RAW).
    pub unavailable: u64,
    /// Packets sent (bursts).
    pub sent: u64,
    /// Packets lost.
    pub lost: u64,
    /// RTT samples.
    pub rtt_count: u64,
    /// Their sum, ns.
    pub rtt_sum_ns: u64,
    /// Smallest, ns.
    pub rtt_min_ns: u64,
    /// Largest, ns.
    pub rtt_max_ns: u64,
    /// Samples per bucket ([`BUCKETS`] of them).
    pub buckets: Vec<u64>,
}

/// Dimensions probe history can be grouped by.
pub const DIMENSIONS: [&str; 5] = ["src_zone", "dst_zone", "src_node", "dst_node", "kind"];

/// A grouped query over a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeQuery {
    /// Start, Unix seconds, inclusive.
    pub from: i64,
    /// End, exclusive.
    pub to: i64,
    /// Dimensions (from [`DIMENSIONS`]).
    pub group_by: Vec<&'static str>,
    /// Equality filters on dimensions.
    pub filters: Vec<(&'static str, String)>,
}

/// Sums of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProbeGroup {
    /// The group's dimension values, in `group_by` order.
    pub key: Vec<String>,
    /// Probes.
    pub count: u64,
    /// Failed.
    pub failures: u64,
    /// Could not run.
    pub unavailable: u64,
    /// Packets sent.
    pub sent: u64,
    /// Packets lost.
    pub lost: u64,
    /// RTT samples.
    pub rtt_count: u64,
    /// Their sum, ns.
    pub rtt_sum_ns: u64,
    /// Smallest, ns (0: none).
    pub rtt_min_ns: u64,
    /// Largest, ns.
    pub rtt_max_ns: u64,
    /// Samples per bucket.
    pub buckets: Vec<u64>,
}

impl ProbeGroup {
    /// Lost packets over sent ones (0 when none was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }

    /// The `q` quantile of the RTT, seconds, from the buckets (linear inside a bucket,
    /// bounded by the observed min and max); `None` without samples.
    pub fn rtt_quantile_s(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (min, max) = (self.rtt_min_ns as f64 / 1e9, self.rtt_max_ns as f64 / 1e9);
        let mut seen = 0.0;
        for (i, c) in self.buckets.iter().enumerate() {
            let c = *c as f64;
            if c > 0.0 && seen + c >= rank {
                let lo = if i == 0 { 0.0 } else { RTT_BOUNDS_S[i - 1] }.max(min);
                let hi = RTT_BOUNDS_S.get(i).copied().unwrap_or(max).min(max).max(lo);
                return Some(lo + (hi - lo) * ((rank - seen) / c).clamp(0.0, 1.0));
            }
            seen += c;
        }
        Some(max)
    }

    /// Mean RTT, seconds.
    pub fn rtt_mean_s(&self) -> Option<f64> {
        (self.rtt_count > 0).then(|| self.rtt_sum_ns as f64 / self.rtt_count as f64 / 1e9)
    }

    fn add(&mut self, r: &ProbeRow) {
        self.count += r.count;
        self.failures += r.failures;
        self.unavailable += r.unavailable;
        self.sent += r.sent;
        self.lost += r.lost;
        if r.rtt_count > 0 {
            if self.rtt_count == 0 || r.rtt_min_ns < self.rtt_min_ns {
                self.rtt_min_ns = r.rtt_min_ns;
            }
            self.rtt_max_ns = self.rtt_max_ns.max(r.rtt_max_ns);
        }
        self.rtt_count += r.rtt_count;
        self.rtt_sum_ns = self.rtt_sum_ns.saturating_add(r.rtt_sum_ns);
        self.buckets.resize(BUCKETS, 0);
        for (a, b) in self.buckets.iter_mut().zip(&r.buckets) {
            *a += b;
        }
    }
}

/// The value of dimension `d` of a row.
fn dim<'r>(r: &'r ProbeRow, d: &str) -> &'r str {
    match d {
        "src_zone" => &r.src_zone,
        "dst_zone" => &r.dst_zone,
        "src_node" => &r.src_node,
        "dst_node" => &r.dst_node,
        "kind" => &r.kind,
        _ => "",
    }
}

/// Groups `rows` (those of the query's range) as `q` asks, largest count first.
pub fn group(rows: impl IntoIterator<Item = ProbeRow>, q: &ProbeQuery) -> Vec<ProbeGroup> {
    let mut groups: std::collections::BTreeMap<Vec<String>, ProbeGroup> = Default::default();
    for r in rows {
        if q.filters.iter().any(|(d, v)| dim(&r, d) != v) {
            continue;
        }
        let key: Vec<String> = q.group_by.iter().map(|d| dim(&r, d).to_string()).collect();
        let g = groups.entry(key.clone()).or_insert_with(|| ProbeGroup {
            key,
            buckets: vec![0; BUCKETS],
            ..Default::default()
        });
        g.add(&r);
    }
    let mut out: Vec<ProbeGroup> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    out
}

/// Where probe history lives.
pub trait ProbeStore: Send + std::fmt::Debug {
    /// Writes rows, replacing any row of the same (interval, pair, kind, name).
    fn write_probes(&mut self, rows: &[ProbeRow]) -> Result<(), StoreError>;
    /// Groups the rows of a range.
    fn probes(&self, q: &ProbeQuery) -> Result<Vec<ProbeGroup>, StoreError>;
    /// Deletes rows older than `before` (Unix seconds); how many.
    fn expire_probes(&mut self, before: i64) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(t: i64, src: &str, dst: &str, kind: &str, rtts_us: &[u64]) -> ProbeRow {
        let mut r = ProbeRow {
            interval_start: t,
            interval_s: 60,
            src_node: src.into(),
            dst_node: dst.into(),
            src_zone: format!("z-{}", &src[..1]),
            dst_zone: format!("z-{}", &dst[..1]),
            kind: kind.into(),
            count: 1,
            sent: rtts_us.len() as u64 + 1,
            lost: 1,
            buckets: vec![0; BUCKETS],
            ..Default::default()
        };
        for us in rtts_us {
            let ns = us * 1000;
            let i = RTT_BOUNDS_S
                .iter()
                .position(|b| ns as f64 <= b * 1e9)
                .unwrap_or(RTT_BOUNDS_S.len());
            r.buckets[i] += 1;
            if r.rtt_count == 0 || ns < r.rtt_min_ns {
                r.rtt_min_ns = ns;
            }
            r.rtt_max_ns = r.rtt_max_ns.max(ns);
            r.rtt_count += 1;
            r.rtt_sum_ns += ns;
        }
        r
    }

    #[test]
    fn groups_sum_and_quantiles_come_from_the_buckets() {
        let rows = vec![
            row(0, "a1", "b1", "udp", &[20_000, 21_000, 22_000]),
            row(60, "a2", "b1", "udp", &[19_000]),
            row(60, "a1", "a2", "udp", &[100]),
        ];
        let q = ProbeQuery {
            from: 0,
            to: 120,
            group_by: vec!["src_zone", "dst_zone"],
            filters: vec![("kind", "udp".into())],
        };
        let g = group(rows, &q);
        assert_eq!(g.len(), 2);
        let ab = g.iter().find(|g| g.key == ["z-a", "z-b"]).expect("a→b");
        assert_eq!((ab.count, ab.sent, ab.lost, ab.rtt_count), (2, 6, 2, 4));
        assert_eq!((ab.rtt_min_ns, ab.rtt_max_ns), (19_000_000, 22_000_000));
        let p50 = ab.rtt_quantile_s(0.5).expect("samples");
        assert!((0.019..=0.022).contains(&p50), "{p50}");
        assert!((ab.loss() - 2.0 / 6.0).abs() < 1e-9);
        let aa = g.iter().find(|g| g.key == ["z-a", "z-a"]).expect("a→a");
        assert!(aa.rtt_quantile_s(0.99).expect("one") <= 0.0001 + 1e-12);
    }
}
