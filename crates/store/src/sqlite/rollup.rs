//! The embedded store's rollups: the same rows summed per hour, per 10 minutes and per
//! minute and per workload-level key, written in the transaction that writes the rows,
//! so grouped queries over long ranges read thousands of rollup rows instead of millions
//! of flows.
//!
//! A grouped query can use them when every dimension it groups or filters by is one of
//! [`DIMS`] (workload level: no pods, nodes, addresses or ports). Its range is then cut
//! into whole hours (from the hourly table), the whole 10 minutes and minutes around
//! them (from the finer tables), and the ragged edges under a minute (from `flows`);
//! all parts go through one outer `GROUP BY`, so the answer is the one `flows` alone
//! gives. Buckets older than the oldest row left in `flows` (the retention boundary)
//! are read from finer levels and finally `flows`, so all agree after expiry.

use hashbrown::HashMap;

use podflow_model::{EndLabels, FlowLabels, FlowRow};

use crate::query::{Dim, GroupQuery};

/// The rollup tables and their bucket widths (seconds), coarsest first; each width
/// divides the one before.
pub(super) const LEVELS: [(&str, i64); 3] =
    [("flows_hourly", 3600), ("flows_10m", 600), ("flows_1m", 60)];

/// A dimension kept in the rollup: a query dimension's name, also its column in the
/// rollup tables, and its value for a row from the row's labels and its source and
/// destination ends.
#[derive(Clone, Copy)]
struct RollupDim {
    name: &'static str,
    value: for<'a> fn(&'a FlowLabels, &'a EndLabels, &'a EndLabels) -> &'a str,
}

const fn dim_of(
    name: &'static str,
    value: for<'a> fn(&'a FlowLabels, &'a EndLabels, &'a EndLabels) -> &'a str,
) -> RollupDim {
    RollupDim { name, value }
}

/// The dimensions kept in the rollup, in column order.
const DIMENSIONS: [RollupDim; 22] = [
    dim_of("src_kind", |_, s, _| s.kind),
    dim_of("dst_kind", |_, _, d| d.kind),
    dim_of("src_namespace", |_, s, _| &s.namespace),
    dim_of("dst_namespace", |_, _, d| &d.namespace),
    dim_of("src_workload", |_, s, _| s.workload_or_name()),
    dim_of("dst_workload", |_, _, d| d.workload_or_name()),
    dim_of("src_workload_kind", |_, s, _| &s.workload_kind),
    dim_of("dst_workload_kind", |_, _, d| &d.workload_kind),
    dim_of("src_app", |_, s, _| &s.app),
    dim_of("dst_app", |_, _, d| &d.app),
    dim_of("src_zone", |_, s, _| &s.zone),
    dim_of("dst_zone", |_, _, d| &d.zone),
    dim_of("src_region", |_, s, _| &s.region),
    dim_of("dst_region", |_, _, d| &d.region),
    dim_of("src_cloud", |_, s, _| &s.cloud),
    dim_of("dst_cloud", |_, _, d| &d.cloud),
    dim_of("class", |l, _, _| l.class.as_str()),
    dim_of("service_namespace", |l, _, _| &l.service_namespace),
    dim_of("service_name", |l, _, _| &l.service_name),
    // Schema version 5: the avoidable cross-zone traffic per Service reads these.
    dim_of("service_headless", |l, _, _| l.service_headless_str()),
    dim_of("service_prefers_close", |l, _, _| {
        l.service_prefers_close_str()
    }),
    dim_of("service_zone_local", |l, _, _| l.service_zone_local_str()),
];

/// The rollup dimensions' names (their columns), in [`DIMENSIONS`] order.
pub(super) const DIMS: [&str; DIMENSIONS.len()] = {
    let mut names = [""; DIMENSIONS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = DIMENSIONS[i].name;
        i += 1;
    }
    names
};

/// Summed columns, in the order [`Sums`] holds them.
pub(super) const SUMS: [&str; 7] = [
    "bytes_s2d",
    "bytes_d2s",
    "packets_s2d",
    "packets_d2s",
    "conns_opened",
    "conns_closed",
    "cost_usd",
];

/// The query dimension of a rollup dimension.
pub(super) fn dim(name: &str) -> Dim {
    // DIMS only names dimensions of the query layer (a unit test checks every one).
    crate::query::dim(name).unwrap_or_else(|| panic!("rollup dimension {name} is unknown"))
}

/// Bytes, packets, connections (source → destination first) and cost of one rollup key.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Sums {
    pub(super) counts: [u64; 6],
    pub(super) cost_usd: f64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        for (acc, v) in self.counts.iter_mut().zip(other.counts) {
            *acc = acc.saturating_add(v);
        }
        self.cost_usd += other.cost_usd;
    }
}

/// A rollup key: bucket start, counts-once flag, and the [`DIMS`] values in order.
pub(super) type Key<'a> = (i64, bool, [&'a str; DIMS.len()]);

/// Sums `rows` per rollup key of every level, as (table, sums): the finest level from
/// the rows, each coarser one from the level below (a batch of rows shares few
/// workload pairs, so the coarser passes are short).
pub(super) fn aggregate_levels<'a>(
    rows: &[&'a FlowRow],
) -> Vec<(&'static str, HashMap<Key<'a>, Sums>)> {
    let mut out: Vec<(&'static str, HashMap<Key<'a>, Sums>)> = Vec::new();
    for &(table, width) in LEVELS.iter().rev() {
        let sums = match out.last() {
            None => aggregate(rows, width),
            Some((_, finer)) => {
                let mut m: HashMap<Key<'a>, Sums> = HashMap::with_capacity(finer.len());
                for ((bucket, once, dims), s) in finer {
                    m.entry((bucket.div_euclid(width) * width, *once, *dims))
                        .or_default()
                        .add(s);
                }
                m
            }
        };
        out.push((table, sums));
    }
    out
}

/// Sums `rows` per rollup key of bucket width `width`.
///
/// Rows whose labels are one shared `Arc` (the aggregator shares equal labels) have the
/// same dimensions: they are summed per (bucket, labels, initiator) first, by address,
/// so the 22 dimension strings are hashed and compared once per group instead of once
/// per row.
fn aggregate<'a>(rows: &[&'a FlowRow], width: i64) -> HashMap<Key<'a>, Sums> {
    let mut index: HashMap<(i64, *const FlowLabels, bool), usize> = HashMap::new();
    let mut groups: Vec<(&'a FlowRow, i64, Sums)> = Vec::new();
    for &r in rows {
        let init = r.key.local_initiated;
        let bucket = r.interval_start.div_euclid(width) * width;
        let t = &r.totals;
        let (bs, bd, ps, pd) = if init {
            (t.bytes_out, t.bytes_in, t.packets_out, t.packets_in)
        } else {
            (t.bytes_in, t.bytes_out, t.packets_in, t.packets_out)
        };
        let sums = Sums {
            counts: [bs, bd, ps, pd, t.opened, t.closed],
            cost_usd: r.cost_usd,
        };
        let at = *index
            .entry((bucket, std::sync::Arc::as_ptr(&r.labels), init))
            .or_insert_with(|| {
                groups.push((r, bucket, Sums::default()));
                groups.len() - 1
            });
        groups[at].2.add(&sums);
    }
    let mut out: HashMap<Key<'a>, Sums> = HashMap::with_capacity(groups.len());
    for (r, bucket, sums) in groups {
        let l = &r.labels;
        let init = r.key.local_initiated;
        let (s, d) = if init {
            (&l.local, &l.remote)
        } else {
            (&l.remote, &l.local)
        };
        let key: Key<'_> = (
            bucket,
            !l.remote_observed || init,
            DIMENSIONS.map(|dim| (dim.value)(l, s, d)),
        );
        out.entry(key).or_default().add(&sums);
    }
    out
}

/// Whether a query groups and filters only by rollup dimensions.
fn eligible(q: &GroupQuery) -> bool {
    q.group_by
        .iter()
        .chain(q.filters.iter().map(|(d, _)| d))
        .all(|d| DIMS.contains(&d.name))
}

/// Where a part of a query's range is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The rows.
    Flows,
    /// A rollup table.
    Rollup(&'static str),
}

/// Cuts `[from, to)` into whole buckets of the coarsest level that fits, then of finer
/// levels around them, then rows; buckets before `oldest` are left to finer levels.
fn plan(
    from: i64,
    to: i64,
    oldest: i64,
    levels: &[(&'static str, i64)],
    out: &mut Vec<(Source, i64, i64)>,
) {
    if from >= to {
        return;
    }
    let Some((&(table, w), finer)) = levels.split_first() else {
        out.push((Source::Flows, from, to));
        return;
    };
    let a = (from.max(oldest) + w - 1).div_euclid(w) * w;
    let b = to.div_euclid(w) * w;
    if a < b {
        plan(from, a, oldest, finer, out);
        out.push((Source::Rollup(table), a, b));
        plan(b, to, oldest, finer, out);
    } else {
        plan(from, to, oldest, finer, out);
    }
}

/// The parts of a grouped query's range, each with where it is read from.
///
/// `oldest` is the earliest `interval_start` left in `flows` (None when empty): buckets
/// that start before it are read from finer levels or `flows`, where retention has cut
/// them, and an empty `flows` answers alone.
pub(super) fn parts(q: &GroupQuery, oldest: Option<i64>) -> Vec<(Source, i64, i64)> {
    let (from, to) = (clamp_time(q.from), clamp_time(q.to));
    let mut ranges = Vec::new();
    match oldest {
        Some(oldest) if eligible(q) => plan(from, to, clamp_time(oldest), &LEVELS, &mut ranges),
        // An empty `flows` (all expired) reads nothing from the rollups' last buckets.
        _ => plan(from, to, i64::MAX, &[], &mut ranges),
    }
    if ranges.is_empty() {
        // An empty range: one part that matches nothing keeps the shape of the answer.
        ranges.push((Source::Flows, from, from));
    }
    ranges
}

/// The earliest and latest times a query range is cut at (±2^40 s, some 35,000 years
/// around 1970): every time a row can have lies inside, and the bucket arithmetic
/// cannot overflow however far out a query's `from` and `to` are.
const TIME_BOUND: i64 = 1 << 40;

fn clamp_time(t: i64) -> i64 {
    t.clamp(-TIME_BOUND, TIME_BOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rollup_dimension_is_a_query_dimension() {
        for d in DIMS {
            assert!(crate::query::dim(d).is_some(), "{d}");
        }
    }
}
