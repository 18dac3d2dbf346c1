//! The embedded store's SQL text (not its DDL: see `schema`): pure functions and
//! constants, no connection.

use std::sync::LazyLock;

use super::rollup::{self, DIMS, SUMS, Source};
use super::schema::PREFIX_COLUMNS;
use crate::columns::LABELS;
use crate::query::{Dim, GroupQuery, View};

/// `flows`' key after the interval start, in stored order: what [`FLOWS`] groups by.
const FLOW_KEY: [&str; 8] = [
    "observer",
    "proto",
    "local_addr",
    "remote_addr",
    "responder_port",
    "local_initiated",
    "service_addr",
    "service_port",
];

/// The counters of `flows`, in `FlowTotals::columns` order.
const COUNTERS: [&str; 6] = [
    "bytes_out",
    "packets_out",
    "bytes_in",
    "packets_in",
    "conns_opened",
    "conns_closed",
];

/// [`UPSERT`]'s parameter of the first label column; the others follow in [`LABELS`]
/// order, then `remote_observed`. The ones before: the interval, the key, the counters,
/// the cost.
pub(super) const LABELS_PARAM: usize = 2 + FLOW_KEY.len() + COUNTERS.len() + 2;

/// [`UPSERT`]'s parameter of `remote_observed`.
pub(super) const REMOTE_OBSERVED_PARAM: usize = LABELS_PARAM + LABELS.len();

/// [`UPSERT`]'s parameter of `local_prefix_len` (key columns of version 6, last);
/// `remote_prefix_len` follows.
pub(super) const PREFIX_PARAM: usize = REMOTE_OBSERVED_PARAM + 1;

/// Adds one row to `flows`: parameters ?1.. in the order `interval_start`, `interval_s`,
/// the key, the counters, `cost_usd`, the labels, `remote_observed`, the prefix lengths.
pub(super) static UPSERT: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = ["interval_start", "interval_s"]
        .into_iter()
        .chain(FLOW_KEY)
        .chain(COUNTERS)
        .chain(["cost_usd"])
        .chain(LABELS.map(|c| c.name))
        .chain(["remote_observed"])
        .chain(PREFIX_COLUMNS)
        .collect();
    let summed: Vec<&str> = ["cost_usd"].into_iter().chain(COUNTERS).collect();
    upsert("flows", &cols, &summed)
});

/// [`FLOWS`]' column of the first counter (the key's columns come before, in
/// [`FLOW_KEY`] order).
pub(super) const FLOWS_COUNTERS_AT: usize = FLOW_KEY.len();

/// [`FLOWS`]' column of the first label (after the counters, two columns each: see
/// [`split_sum`], the first and last interval and the cost); the others follow in
/// [`LABELS`] order, then `remote_observed`.
pub(super) const FLOWS_LABELS_AT: usize = FLOWS_COUNTERS_AT + 2 * COUNTERS.len() + 3;

/// Totals per observer and key over `[?1, ?2)`, at most ?3 of them, largest first; labels
/// by `MAX` over the key's rows; the prefix lengths last (after `remote_observed`).
pub(super) static FLOWS: LazyLock<String> = LazyLock::new(|| {
    let key = FLOW_KEY.join(", ");
    let prefix = PREFIX_COLUMNS.join(", ");
    let sums: Vec<String> = COUNTERS.iter().map(|c| split_sum(c)).collect();
    let labels: Vec<String> = LABELS.iter().map(|c| format!("MAX({})", c.name)).collect();
    format!(
        "SELECT {key}, {}, MIN(interval_start), MAX(interval_start + interval_s), \
         SUM(cost_usd), {}, MAX(remote_observed), {prefix} \
         FROM flows WHERE interval_start >= ?1 AND interval_start < ?2 \
         GROUP BY {key}, {prefix} \
         ORDER BY TOTAL(bytes_out) + TOTAL(bytes_in) DESC, TOTAL(conns_opened) DESC LIMIT ?3",
        sums.join(", "),
        labels.join(", "),
    )
});

/// An upsert into `table` of `cols` (parameters ?1.. in that order) that adds the
/// `summed` columns to those of a row with the same key; integer sums saturate at
/// `i64::MAX` (SQLite's `+` would turn to floating point past it).
fn upsert(table: &str, cols: &[&str], summed: &[&str]) -> String {
    let params: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let adds: Vec<String> = summed
        .iter()
        .map(|s| {
            if *s == "cost_usd" {
                format!("{s} = {s} + excluded.{s}")
            } else {
                format!(
                    "{s} = CASE WHEN {s} > {max} - excluded.{s} THEN {max} ELSE {s} + excluded.{s} END",
                    max = i64::MAX
                )
            }
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO UPDATE SET {}",
        cols.join(", "),
        params.join(", "),
        adds.join(", ")
    )
}

/// Records an agent's mark (?1 agent, ?2 seq, ?3 node, ?4 last seen, ?5 pending chunks);
/// a mark and the last-seen time only go up, the pending chunks are the latest job's.
pub(super) const MARK: &str = "INSERT INTO agent_marks (agent_id, seq, node, last_seen, pending) \
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO UPDATE SET seq = MAX(seq, excluded.seq), \
    node = CASE WHEN excluded.node <> '' THEN excluded.node ELSE node END, \
    last_seen = MAX(last_seen, excluded.last_seen), pending = excluded.pending";

/// Every agent's mark, node, last-seen time and pending chunks.
pub(super) const MARKS: &str = "SELECT agent_id, seq, node, last_seen, pending FROM agent_marks";

/// Records a chunk's token (?1, ?2 the time); changes no row when it was written before.
pub(super) const CHUNK: &str =
    "INSERT OR IGNORE INTO written_chunks (token, written_at) VALUES (?1, ?2)";

/// Forgets the chunk tokens before the last ?1.
pub(super) const PRUNE_CHUNKS: &str =
    "DELETE FROM written_chunks WHERE rowid <= (SELECT MAX(rowid) FROM written_chunks) - ?1";

/// An integer sum that cannot overflow whatever the rows: the high and the low 32 bits
/// of each value (non-negative, at most `i64::MAX`) summed apart, as two columns; see
/// [`join_sum`].
fn split_sum(e: &str) -> String {
    format!("SUM(({e}) >> 32), SUM(({e}) & 4294967295)")
}

/// The sum of [`split_sum`]'s two columns, saturating at `u64::MAX`.
pub(super) fn join_sum(hi: Option<i64>, lo: Option<i64>) -> u64 {
    let (hi, lo) = (
        hi.unwrap_or(0).max(0) as u128,
        lo.unwrap_or(0).max(0) as u128,
    );
    u64::try_from((hi << 32) + lo).unwrap_or(u64::MAX)
}

/// The oldest row left (the first key column: one index lookup).
pub(super) const OLDEST: &str = "SELECT MIN(interval_start) FROM flows";

/// Deletes the rows of intervals that started before ?1.
pub(super) const EXPIRE: &str = "DELETE FROM flows WHERE interval_start < ?1";

/// Deletes the rollup `table`'s buckets of width ?2 that end by ?1: whole buckets only,
/// the one holding ?1 is answered from `flows`.
pub(super) fn expire_rollup(table: &str) -> String {
    format!("DELETE FROM {table} WHERE bucket_start + ?2 <= ?1")
}

/// The rollups' sums ([`SUMS`]) over `flows`, oriented source (initiator) → destination.
pub(super) const FLOW_SUMS: [&str; 7] = [
    "CASE WHEN local_initiated THEN bytes_out ELSE bytes_in END",
    "CASE WHEN local_initiated THEN bytes_in ELSE bytes_out END",
    "CASE WHEN local_initiated THEN packets_out ELSE packets_in END",
    "CASE WHEN local_initiated THEN packets_in ELSE packets_out END",
    "conns_opened",
    "conns_closed",
    "cost_usd",
];

/// A row counts in the count-once view unless its other end is observed too and did
/// not initiate (then the initiator's row counts).
pub(super) const ONCE_FLOWS: &str = "NOT (remote_observed = 1 AND local_initiated = 0)";

/// The upsert that adds one row to the rollup `table`.
pub(super) fn rollup_upsert(table: &str) -> String {
    let cols: Vec<&str> = ["bucket_start", "once"]
        .into_iter()
        .chain(DIMS)
        .chain(SUMS)
        .collect();
    upsert(table, &cols, &SUMS)
}

/// The SQL of a grouped query and its parameters (values bound, never spliced): each
/// part of the range from the table [`rollup::parts`] chose, under one outer `GROUP BY`.
pub(super) fn group_sql(q: &GroupQuery, oldest: Option<i64>) -> (String, Vec<String>) {
    let ranges = rollup::parts(q, oldest);
    // ?1..?k: the filter values, shared by every part; then each part's range.
    let mut params: Vec<String> = q.filters.iter().map(|(_, v)| v.clone()).collect();
    let n = q.group_by.len();
    let mut parts = Vec::new();
    for (source, from, to) in ranges {
        params.push(from.to_string());
        params.push(to.to_string());
        let (a, b) = (params.len() - 1, params.len());
        let (table, time, once, sums) = match source {
            Source::Flows => ("flows", "interval_start", ONCE_FLOWS, FLOW_SUMS),
            Source::Rollup(t) => (t, "bucket_start", "once = 1", SUMS),
        };
        // A dimension is an expression over `flows`, a column of its own in a rollup.
        let key = |d: &Dim| match source {
            Source::Flows => format!("CAST({} AS TEXT)", d.sql),
            Source::Rollup(_) => d.name.to_string(),
        };
        let mut cols: Vec<String> = q
            .group_by
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{} AS k{i}", key(d)))
            .collect();
        cols.extend(sums.iter().enumerate().map(|(i, s)| format!("{s} AS s{i}")));
        let mut wh = vec![
            format!("{time} >= CAST(?{a} AS INTEGER)"),
            format!("{time} < CAST(?{b} AS INTEGER)"),
        ];
        if q.view == View::Once {
            wh.push(once.into());
        }
        wh.extend(
            q.filters
                .iter()
                .enumerate()
                .map(|(i, (d, _))| format!("{} = ?{}", key(d), i + 1)),
        );
        parts.push(format!(
            "SELECT {} FROM {table} WHERE {}",
            cols.join(", "),
            wh.join(" AND ")
        ));
    }
    // Integer sums two columns each (they cannot overflow), the cost one.
    let mut select: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    select.extend((0..SUMS.len()).map(|i| {
        if SUMS[i] == "cost_usd" {
            format!("SUM(s{i})")
        } else {
            split_sum(&format!("s{i}"))
        }
    }));
    let mut sql = format!(
        "SELECT {} FROM ({})",
        select.join(", "),
        parts.join(" UNION ALL ")
    );
    let keys: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    if n > 0 {
        sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
    }
    // Largest first; equal totals in key order, so the answer does not depend on
    // which table a part came from.
    sql.push_str(" ORDER BY TOTAL(s0) + TOTAL(s1) DESC");
    for k in &keys {
        sql.push_str(&format!(", {k}"));
    }
    sql.push_str(&format!(" LIMIT {}", q.limit));
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::rollup::dim;

    #[test]
    fn the_upsert_has_the_labels_where_the_writer_binds_them() {
        let cols: Vec<&str> = UPSERT
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(c, _)| c.split(", ").collect())
            .expect("column list");
        assert_eq!(cols.len(), PREFIX_PARAM + 1);
        assert_eq!(cols[PREFIX_PARAM - 1..], PREFIX_COLUMNS);
        assert_eq!(cols[..2], ["interval_start", "interval_s"]);
        assert_eq!(cols[16], "cost_usd", "parameter 17");
        assert_eq!(cols[LABELS_PARAM - 1], "class");
        assert_eq!(cols[REMOTE_OBSERVED_PARAM - 1], "remote_observed");
        assert!(UPSERT.contains(&format!(", ?{}) ON CONFLICT", PREFIX_PARAM + 1)));
        assert!(UPSERT.ends_with(
            "conns_closed = CASE WHEN conns_closed > 9223372036854775807 - excluded.conns_closed \
             THEN 9223372036854775807 ELSE conns_closed + excluded.conns_closed END"
        ));
    }

    #[test]
    fn flows_selects_the_labels_where_the_reader_reads_them() {
        let select = FLOWS.split(" FROM ").next().expect("select");
        let cols: Vec<&str> = select.trim_start_matches("SELECT ").split(", ").collect();
        assert_eq!(cols[FLOWS_COUNTERS_AT], "SUM((bytes_out) >> 32)");
        assert_eq!(cols[FLOWS_COUNTERS_AT + 1], "SUM((bytes_out) & 4294967295)");
        assert_eq!(cols[FLOWS_LABELS_AT - 1], "SUM(cost_usd)");
        assert_eq!(cols[FLOWS_LABELS_AT], "MAX(class)");
        assert_eq!(cols.len(), FLOWS_LABELS_AT + LABELS.len() + 3);
        assert_eq!(cols[cols.len() - 3], "MAX(remote_observed)");
        assert_eq!(cols[cols.len() - 2..], PREFIX_COLUMNS);
    }

    #[test]
    fn only_workload_level_queries_over_whole_buckets_read_the_rollups() {
        const HOUR: i64 = 3600;
        let q = |group: &[&str], from, to| GroupQuery {
            from,
            to,
            group_by: group.iter().map(|g| dim(g)).collect(),
            filters: Vec::new(),
            limit: 5,
            view: View::Raw,
        };
        let (sql, params) = group_sql(&q(&["src_workload"], 1799, 4 * HOUR + 660), Some(0));
        assert!(sql.contains("flows_hourly"), "{sql}");
        // [1799, 1800) from flows, [1800, 3600) from 10-minute buckets, [3600, 14400)
        // hourly, [14400, 15000) 10-minute again, [15000, 15060) per minute.
        assert_eq!(
            params,
            [
                "1799", "1800", "1800", "3600", "3600", "14400", "14400", "15000", "15000", "15060"
            ]
        );
        assert_eq!(sql.matches("FROM flows_10m").count(), 2, "{sql}");
        let (sql, _) = group_sql(&q(&["src_ip"], 0, 10 * HOUR), Some(0));
        assert!(!sql.contains("flows_"), "{sql}");
        let (sql, params) = group_sql(&q(&["class"], 100, 130), Some(0));
        assert!(!sql.contains("flows_"), "under a minute: {sql}");
        assert_eq!(params, ["100", "130"]);
        // Retention left rows from 7300 on: buckets before 7320 come from flows.
        let (_, params) = group_sql(&q(&["class"], 0, 5 * HOUR), Some(7300));
        assert_eq!(
            params,
            [
                "0", "7320", "7320", "7800", "7800", "10800", "10800", "18000"
            ]
        );
        let (sql, _) = group_sql(&q(&["class"], 0, 5 * HOUR), None);
        assert!(!sql.contains("flows_"), "empty flows: {sql}");
    }
}
