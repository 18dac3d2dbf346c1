//! The embedded store's file format: its DDL, its version and the migrations that bring
//! an older file up to it, as SQL text (the store runs them when it opens a file).
//!
//! Version 1 is [`SCHEMA`]; version 2 added the attribution columns (ALTER TABLE, so
//! every file, new or migrated, has the same columns in the same order); version 3 the
//! rollups, filled from the rows already stored; version 4 the node, last-seen time and
//! pending chunks of each agent's mark (whether a node runs an agent comes from them: the
//! count-once view) and the tokens of the chunks written lately; version 5 the Service
//! columns of the avoidable cross-zone traffic (`service_headless`,
//! `service_prefers_close`, `service_zone_local`: ALTER TABLE on `flows`, and the
//! rollups, whose key they join, rebuilt from `flows`); version 6 the prefix lengths of
//! both ends (`local_prefix_len`, `remote_prefix_len`: rows summed per network), which
//! join the key, so `flows` is rebuilt with them, old rows reading full addresses.

use super::rollup::{self, DIMS, LEVELS, SUMS};
use super::sql::{FLOW_SUMS, ONCE_FLOWS};
use crate::columns::LABELS;

/// Schema version stored in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 6;

/// Version 1: the flows and the agents' marks.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flows (
    interval_start  INTEGER NOT NULL,
    interval_s      INTEGER NOT NULL,
    observer        TEXT    NOT NULL,
    proto           INTEGER NOT NULL,
    local_addr      TEXT    NOT NULL,
    remote_addr     TEXT    NOT NULL,
    responder_port  INTEGER NOT NULL,
    local_initiated INTEGER NOT NULL,
    service_addr    TEXT    NOT NULL,
    service_port    INTEGER NOT NULL,
    bytes_out       INTEGER NOT NULL,
    packets_out     INTEGER NOT NULL,
    bytes_in        INTEGER NOT NULL,
    packets_in      INTEGER NOT NULL,
    conns_opened    INTEGER NOT NULL,
    conns_closed    INTEGER NOT NULL,
    PRIMARY KEY (interval_start, observer, proto, local_addr, remote_addr,
                 responder_port, local_initiated, service_addr, service_port)
) WITHOUT ROWID;
-- The highest batch of each agent made durable (written with the rows it carried).
CREATE TABLE IF NOT EXISTS agent_marks (
    agent_id TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The names of the columns `flows` has.
pub(super) const FLOWS_COLUMNS: &str = "SELECT name FROM pragma_table_info('flows')";

/// The names of the columns `agent_marks` has.
pub(super) const MARKS_COLUMNS: &str = "SELECT name FROM pragma_table_info('agent_marks')";

/// Version 4: the statements that add the columns an `agent_marks` table with the
/// columns `have` lacks (marks from before have no node and were never seen: an agent
/// counts as observed again from its next batch).
pub(super) fn add_mark_columns(have: &[String]) -> Vec<(&'static str, String)> {
    let missing = |c: &str| !have.iter().any(|h| h == c);
    let mut out = Vec::new();
    if missing("node") {
        out.push((
            "migrate: add agent_marks.node",
            "ALTER TABLE agent_marks ADD COLUMN node TEXT NOT NULL DEFAULT ''".into(),
        ));
    }
    if missing("last_seen") {
        out.push((
            "migrate: add agent_marks.last_seen",
            "ALTER TABLE agent_marks ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0".into(),
        ));
    }
    if missing("pending") {
        out.push((
            "migrate: add agent_marks.pending",
            "ALTER TABLE agent_marks ADD COLUMN pending TEXT NOT NULL DEFAULT ''".into(),
        ));
    }
    out
}

/// Version 4: the tokens of the chunks written lately (the last [`CHUNKS_KEPT`]), so a
/// chunk written again (a retry after a commit whose answer was lost, or a chunk re-cut
/// after a restart) is skipped, as ClickHouse drops a block whose token it has seen.
pub(super) const WRITTEN_CHUNKS: &str = "
CREATE TABLE IF NOT EXISTS written_chunks (
    token TEXT PRIMARY KEY,
    written_at INTEGER NOT NULL
);";

/// How many chunk tokens `written_chunks` keeps.
pub(super) const CHUNKS_KEPT: i64 = 100_000;

/// How many of the rollup tables exist.
pub(super) fn count_rollups() -> String {
    format!(
        "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('{}')",
        LEVELS.map(|(t, _)| t).join("', '")
    )
}

/// The names of the columns the rollup `table` has (none when it does not exist).
pub(super) fn rollup_columns(table: &str) -> String {
    format!("SELECT name FROM pragma_table_info('{table}')")
}

/// Version 5: whether a rollup table with the columns `have` lacks a dimension (a file
/// from before the Service zone columns): the rollups are then rebuilt.
pub(super) fn rollup_is_stale(have: &[String]) -> bool {
    DIMS.iter().any(|d| !have.iter().any(|h| h == d))
}

/// Version 2: the statements that add the columns a `flows` table with the columns
/// `have` lacks, in order, each with what it does (for an error message).
pub(super) fn add_columns(have: &[String]) -> Vec<(&'static str, String)> {
    let missing = |c: &str| !have.iter().any(|h| h == c);
    let mut out = Vec::new();
    if missing("remote_observed") {
        out.push((
            "migrate: add remote_observed",
            "ALTER TABLE flows ADD COLUMN remote_observed INTEGER NOT NULL DEFAULT 0".into(),
        ));
    }
    if missing("cost_usd") {
        out.push((
            "migrate: add cost_usd",
            "ALTER TABLE flows ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0".into(),
        ));
    }
    // The label columns: `TEXT NOT NULL DEFAULT ''`.
    for c in LABELS.map(|c| c.name) {
        if missing(c) {
            // Rows from before attribution read as UNKNOWN / unknown.
            let default = match c {
                "class" => "UNKNOWN",
                "local_kind" | "remote_kind" => "unknown",
                _ => "",
            };
            out.push((
                "migrate: add label column",
                format!("ALTER TABLE flows ADD COLUMN {c} TEXT NOT NULL DEFAULT '{default}'"),
            ));
        }
    }
    out
}

/// Version 6: the prefix length columns, in the key after the other key columns.
pub(super) const PREFIX_COLUMNS: [&str; 2] = ["local_prefix_len", "remote_prefix_len"];

/// The full length of the address in `column` (stored as text: IPv6 has colons).
fn full_len_of(column: &str) -> String {
    format!("CASE WHEN instr({column}, ':') > 0 THEN 128 ELSE 32 END")
}

/// The columns of `flows` as `pragma_table_info` gives them: name, type, not null,
/// default.
pub(super) const FLOWS_TABLE_INFO: &str =
    "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info('flows') ORDER BY cid";

/// Version 6: the statements that rebuild a `flows` table with the columns `have`
/// (name, type, not null, default; without the prefix lengths) into one with them in
/// its key (SQLite cannot change a key in place), old rows reading full addresses (32
/// or 128). Run in one transaction; on a large file it takes as long as a copy.
pub(super) fn add_prefix_columns(
    have: &[(String, String, bool, Option<String>)],
) -> Vec<(&'static str, String)> {
    let mut defs: Vec<String> = have
        .iter()
        .map(|(name, ty, not_null, dflt)| {
            let mut d = format!("    {name} {ty}");
            if *not_null {
                d.push_str(" NOT NULL");
            }
            if let Some(v) = dflt {
                d.push_str(&format!(" DEFAULT {v}"));
            }
            d
        })
        .collect();
    defs.extend(PREFIX_COLUMNS.map(|c| format!("    {c} INTEGER NOT NULL")));
    let names: Vec<&str> = have.iter().map(|c| c.0.as_str()).collect();
    let create = format!(
        "CREATE TABLE flows_v6 (\n{},\n    PRIMARY KEY (interval_start, observer, proto, local_addr, remote_addr,\n                 \
         responder_port, local_initiated, service_addr, service_port, {})\n) WITHOUT ROWID",
        defs.join(",\n"),
        PREFIX_COLUMNS.join(", ")
    );
    let copy = format!(
        "INSERT INTO flows_v6 ({cols}, {prefix}) SELECT {cols}, {local}, {remote} FROM flows",
        cols = names.join(", "),
        prefix = PREFIX_COLUMNS.join(", "),
        local = full_len_of("local_addr"),
        remote = full_len_of("remote_addr"),
    );
    vec![
        (
            "migrate: drop a half-built flows_v6",
            "DROP TABLE IF EXISTS flows_v6".into(),
        ),
        ("migrate: create flows with the prefix lengths", create),
        ("migrate: copy the rows into it", copy),
        ("migrate: drop the old flows", "DROP TABLE flows".into()),
        (
            "migrate: rename flows_v6 to flows",
            "ALTER TABLE flows_v6 RENAME TO flows".into(),
        ),
    ]
}

/// Versions 3 and 5: the statements that create and fill the rollups from the rows
/// already stored (run in one transaction; all of them again if one is missing, a file
/// edited by hand, or lacks a dimension, a file from before version 5), each with what
/// it does.
pub(super) fn add_rollups() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Finest first: each coarser level is summed from the one below it, so `flows` is
    // read once.
    let mut finer = None;
    for (table, width) in LEVELS.into_iter().rev() {
        // Dropped, not emptied: an older table's key lacks the newer dimensions.
        out.push((
            "migrate: drop a rollup",
            format!("DROP TABLE IF EXISTS {table}"),
        ));
        out.push(("migrate: create a rollup", rollup_table(table)));
        out.push(("migrate: fill a rollup", backfill(table, width, finer)));
        finer = Some(table);
    }
    out
}

/// `CREATE TABLE` for the rollup `table`.
pub(super) fn rollup_table(table: &str) -> String {
    let dims: Vec<String> = DIMS
        .iter()
        .map(|d| format!("    {d} TEXT NOT NULL,\n"))
        .collect();
    let sums: Vec<String> = SUMS
        .iter()
        .map(|s| {
            let ty = if *s == "cost_usd" { "REAL" } else { "INTEGER" };
            format!("    {s} {ty} NOT NULL,\n")
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    bucket_start INTEGER NOT NULL,\n    \
         once INTEGER NOT NULL,\n{}{}    PRIMARY KEY (bucket_start, once, {})\n) WITHOUT ROWID;",
        dims.concat(),
        sums.concat(),
        DIMS.join(", ")
    )
}

/// Fills the rollup `table` of bucket width `width`: from the rows already in `flows`,
/// or from the filled rollup `finer` below it.
fn backfill(table: &str, width: i64, finer: Option<&str>) -> String {
    let (source, time, once, keys, sums): (&str, &str, &str, Vec<String>, Vec<String>) = match finer
    {
        None => (
            "flows",
            "interval_start",
            ONCE_FLOWS,
            DIMS.iter()
                .map(|d| format!("CAST({} AS TEXT)", rollup::dim(d).sql))
                .collect(),
            FLOW_SUMS.iter().map(|s| format!("SUM({s})")).collect(),
        ),
        Some(f) => (
            f,
            "bucket_start",
            "once",
            DIMS.iter().map(|d| d.to_string()).collect(),
            SUMS.iter().map(|s| format!("SUM({s})")).collect(),
        ),
    };
    format!(
        "INSERT INTO {table} (bucket_start, once, {dims}, {sum_cols})
         SELECT ({time} / {width}) * {width}, {once}, {keys}, {sums}
         FROM {source} GROUP BY 1, 2, {groups}",
        dims = DIMS.join(", "),
        sum_cols = SUMS.join(", "),
        keys = keys.join(", "),
        sums = sums.join(", "),
        groups = (3..3 + DIMS.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_table_gets_every_column_in_order_and_a_current_one_none() {
        let v1: Vec<String> = ["interval_start", "conns_closed"].map(String::from).into();
        let adds = add_columns(&v1);
        assert_eq!(adds.len(), 2 + LABELS.len());
        assert!(adds[0].1.contains(" remote_observed INTEGER "), "{adds:?}");
        assert!(adds[1].1.contains(" cost_usd REAL "), "{adds:?}");
        assert_eq!(
            adds[2].1,
            "ALTER TABLE flows ADD COLUMN class TEXT NOT NULL DEFAULT 'UNKNOWN'"
        );
        assert!(
            adds[3]
                .1
                .ends_with("local_kind TEXT NOT NULL DEFAULT 'unknown'")
        );
        assert!(
            adds[4]
                .1
                .ends_with("local_namespace TEXT NOT NULL DEFAULT ''")
        );
        let current: Vec<String> = adds
            .iter()
            .filter_map(|(_, sql)| sql.split_whitespace().nth(5).map(String::from))
            .collect();
        assert!(add_columns(&current).is_empty(), "{current:?}");
    }

    #[test]
    fn rollups_are_created_and_filled_finest_first() {
        let steps = add_rollups();
        assert_eq!(steps.len(), 3 * LEVELS.len());
        assert_eq!(steps[0].1, "DROP TABLE IF EXISTS flows_1m");
        assert!(
            steps[1]
                .1
                .starts_with("CREATE TABLE IF NOT EXISTS flows_1m (")
        );
        assert!(steps[2].1.contains("FROM flows GROUP BY"), "{}", steps[2].1);
        // The hourly level is summed from the 10-minute one, not from `flows`.
        assert!(steps[8].1.starts_with("INSERT INTO flows_hourly"));
        assert!(
            steps[8].1.contains("FROM flows_10m GROUP BY"),
            "{}",
            steps[8].1
        );
        assert_eq!(
            count_rollups(),
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('flows_hourly', 'flows_10m', 'flows_1m')"
        );
    }
}
