//! The ClickHouse table: its columns (kubenetmon's, then podflow's), the statements that
//! create it and the ones that add the columns an older table lacks.

use super::config::ClickHouseConfig;

/// The names of the columns a table has (bound: database, table).
pub(super) const TABLE_COLUMNS: &str =
    "SELECT name FROM system.columns WHERE database = ? AND table = ?";

/// A column of the table: name, type, and an optional default expression for the
/// columns podflow does not fill itself.
pub(super) struct Column {
    pub(super) name: &'static str,
    ty: &'static str,
    default: Option<&'static str>,
}

const fn col(name: &'static str, ty: &'static str) -> Column {
    Column {
        name,
        ty,
        default: None,
    }
}

const fn dflt(name: &'static str, ty: &'static str, default: &'static str) -> Column {
    Column {
        name,
        ty,
        default: Some(default),
    }
}

const LCS: &str = "LowCardinality(String) CODEC(ZSTD(1))";
const STR: &str = "String CODEC(ZSTD(1))";
const U64: &str = "UInt64 CODEC(Delta(8), ZSTD(1))";

/// Every column, kubenetmon's first (in its order), then podflow's.
///
/// By hand, not from [`LABELS`](crate::columns::LABELS): kubenetmon's order interleaves the label columns with
/// others, and the table's column order must not change. A test checks that every label
/// column is here under [`label_column`]'s name. Migration adds the
/// ones an existing table lacks; key columns never change (a new key is a new table),
/// except the prefix lengths, appended to the key with the columns ([`add_columns`]).
pub(super) const COLUMNS: &[Column] = &[
    col("date", "Date CODEC(Delta(2), ZSTD(1))"),
    col("intervalStartTime", "DateTime CODEC(Delta(4), ZSTD(1))"),
    col("intervalSeconds", "UInt16 CODEC(Delta(2), ZSTD(1))"),
    dflt("environment", LCS, "''"),
    col("proto", LCS),
    col("connectionClass", LCS),
    dflt(
        "connectionFlags",
        "Map(LowCardinality(String), Bool) CODEC(ZSTD(1))",
        "map('local_initiated', local_initiated)",
    ),
    col("direction", "Enum8('out' = 1, 'in' = 2) CODEC(ZSTD(1))"),
    col("localCloud", LCS),
    col("localRegion", LCS),
    dflt("localCluster", LCS, "''"),
    dflt("localCell", LCS, "''"),
    col("localAvailabilityZone", LCS),
    col("localNode", STR),
    dflt("localInstanceID", STR, "''"),
    col("localNamespace", LCS),
    col("localPod", STR),
    col("localIPv4", "IPv4 CODEC(ZSTD(1))"),
    col("localPort", "UInt16 CODEC(ZSTD(1))"),
    col("localApp", STR),
    col("remoteCloud", LCS),
    col("remoteRegion", LCS),
    dflt("remoteCluster", LCS, "''"),
    dflt("remoteCell", LCS, "''"),
    col("remoteAvailabilityZone", LCS),
    col("remoteNode", STR),
    dflt("remoteInstanceID", STR, "''"),
    col("remoteNamespace", LCS),
    col("remotePod", STR),
    col("remoteIPv4", "IPv4 CODEC(ZSTD(1))"),
    col("remotePort", "UInt16 CODEC(ZSTD(1))"),
    col("remoteApp", STR),
    col("remoteCloudService", LCS),
    col("bytes", U64),
    col("packets", U64),
    // podflow's columns.
    col("observer", LCS),
    col("local_addr", "IPv6 CODEC(ZSTD(1))"),
    col("remote_addr", "IPv6 CODEC(ZSTD(1))"),
    col("responder_port", "UInt16 CODEC(ZSTD(1))"),
    col("local_initiated", "Bool CODEC(ZSTD(1))"),
    col("service_addr", "IPv6 CODEC(ZSTD(1))"),
    col("service_port", "UInt16 CODEC(ZSTD(1))"),
    col("class", LCS),
    col("local_kind", LCS),
    col("local_name", STR),
    col("local_workload_kind", LCS),
    col("local_workload", STR),
    col("remote_kind", LCS),
    col("remote_name", STR),
    col("remote_workload_kind", LCS),
    col("remote_workload", STR),
    col("service_namespace", LCS),
    col("service_name", STR),
    col("bytes_out", U64),
    col("packets_out", U64),
    col("bytes_in", U64),
    col("packets_in", U64),
    col("conns_opened", U64),
    col("conns_closed", U64),
    col("cost_usd", "Float64 CODEC(ZSTD(1))"),
    col("remote_observed", "Bool CODEC(ZSTD(1))"),
    // The Service zone columns (the embedded store's schema version 5): added with
    // `ADD COLUMN IF NOT EXISTS` to older tables, whose rows read them as empty.
    dflt("service_headless", LCS, "''"),
    dflt("service_prefers_close", LCS, "''"),
    dflt("service_zone_local", LCS, "''"),
    // The prefix lengths of both ends on a row summed per network, 0 for a full
    // address (the embedded store's schema version 6, which stores 32/128 there): the
    // last sorting-key columns, so a network never sums into a full address's row. An
    // older table gets them with its key extended ([`PREFIX_COLUMNS`]); ClickHouse allows
    // no default on such a column, so its old rows read 0, full addresses, as they are.
    col("local_prefix_len", "UInt8 CODEC(ZSTD(1))"),
    col("remote_prefix_len", "UInt8 CODEC(ZSTD(1))"),
];

/// The columns added to the sorting key (version 6), in one `ALTER` with the key.
pub(super) const PREFIX_COLUMNS: [&str; 2] = ["local_prefix_len", "remote_prefix_len"];

/// The column holding a label column ([`LABELS`](crate::columns::LABELS)): kubenetmon's where kubenetmon has
/// the label, else podflow's own, named as in the embedded store. Not mechanical:
/// kubenetmon calls a zone `AvailabilityZone` and keeps no kinds, names or workloads.
pub(super) fn label_column(name: &'static str) -> &'static str {
    match name {
        "local_namespace" => "localNamespace",
        "local_app" => "localApp",
        "local_node" => "localNode",
        "local_zone" => "localAvailabilityZone",
        "local_region" => "localRegion",
        "local_cloud" => "localCloud",
        "remote_namespace" => "remoteNamespace",
        "remote_app" => "remoteApp",
        "remote_node" => "remoteNode",
        "remote_zone" => "remoteAvailabilityZone",
        "remote_region" => "remoteRegion",
        "remote_cloud" => "remoteCloud",
        _ => name,
    }
}

/// The columns SummingMergeTree adds up; every other non-key column keeps one row's value.
const SUMMED: &str = "bytes, packets, bytes_out, packets_out, bytes_in, packets_in, conns_opened, conns_closed, cost_usd";

/// The sorting key: interval, observer, direction and podflow's flow key.
const ORDER_BY: &str = "intervalStartTime, observer, direction, proto, local_addr, remote_addr, \
    responder_port, local_initiated, service_addr, service_port, local_prefix_len, remote_prefix_len";

/// ` ON CLUSTER ...` for DDL when a cluster is configured.
pub(super) fn on_cluster(cfg: &ClickHouseConfig) -> String {
    cfg.cluster
        .as_ref()
        .map(|c| format!(" ON CLUSTER `{c}`"))
        .unwrap_or_default()
}

fn column_sql(c: &Column) -> String {
    // A codec goes after DEFAULT in ClickHouse's grammar.
    match (c.default, c.ty.split_once(" CODEC")) {
        (Some(d), Some((ty, codec))) => format!("`{}` {ty} DEFAULT {d} CODEC{codec}", c.name),
        (Some(d), None) => format!("`{}` {} DEFAULT {d}", c.name, c.ty),
        (None, _) => format!("`{}` {}", c.name, c.ty),
    }
}

/// The statements that create the database and the table (pure: shown by docs and tests).
pub fn create_statements(cfg: &ClickHouseConfig) -> Vec<String> {
    let oc = on_cluster(cfg);
    let db = &cfg.database;
    let t = &cfg.table;
    let columns = COLUMNS
        .iter()
        .map(|c| format!("    {}", column_sql(c)))
        .collect::<Vec<_>>()
        .join(",\n");
    let (engine, dedup) = if cfg.cluster.is_some() {
        (
            format!(
                "ReplicatedSummingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', \
                 '{{replica}}', ({SUMMED}))"
            ),
            String::new(),
        )
    } else {
        (
            format!("SummingMergeTree(({SUMMED}))"),
            format!(
                ", non_replicated_deduplication_window = {}",
                cfg.dedup_window
            ),
        )
    };
    let ttl = if cfg.ttl_days > 0 {
        format!("TTL intervalStartTime + toIntervalDay({})\n", cfg.ttl_days)
    } else {
        String::new()
    };
    let marks_engine = if cfg.cluster.is_some() {
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', \
         '{replica}', version)"
    } else {
        "ReplacingMergeTree(version)"
    };
    vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`{oc}"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{t}`{oc}\n(\n{columns}\n)\nENGINE = {engine}\n\
             PARTITION BY date\nORDER BY ({ORDER_BY})\n{ttl}\
             SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{}`{oc}\n(\n{MARKS_COLUMNS}\n)\n\
             ENGINE = {marks_engine}\nORDER BY agent",
            marks_table(t)
        ),
    ]
}

/// The agents' marks beside the flows: the latest row per agent (highest `version`)
/// is its mark; `pending` lists the chunks above the mark that may be in the flows
/// table (docs/reliability.md, "Exactly once").
pub(super) fn marks_table(table: &str) -> String {
    format!("{table}_marks")
}

const MARKS_COLUMNS: &str = "    `agent` String,
    `seq` UInt64,
    `node` String,
    `last_seen` Int64,
    `pending` String,
    `version` UInt64";

/// The statements that add the columns a table with the columns `have` lacks, each
/// with the column's name.
pub(super) fn add_columns(cfg: &ClickHouseConfig, have: &[String]) -> Vec<(&'static str, String)> {
    let missing = |c: &&Column| !have.iter().any(|h| h == c.name);
    let mut out: Vec<(&'static str, String)> = COLUMNS
        .iter()
        .filter(missing)
        .filter(|c| !PREFIX_COLUMNS.contains(&c.name))
        .map(|c| (c.name, add_column_statement(cfg, c)))
        .collect();
    let prefix: Vec<&Column> = COLUMNS
        .iter()
        .filter(missing)
        .filter(|c| PREFIX_COLUMNS.contains(&c.name))
        .collect();
    if !prefix.is_empty() {
        // Key columns: added and put into the sorting key in one ALTER (metadata only).
        let adds: Vec<String> = prefix
            .iter()
            .map(|c| format!("ADD COLUMN IF NOT EXISTS {}", column_sql(c)))
            .collect();
        out.push((
            PREFIX_COLUMNS[0],
            format!(
                "ALTER TABLE `{}`.`{}`{} {}, MODIFY ORDER BY ({ORDER_BY})",
                cfg.database,
                cfg.table,
                on_cluster(cfg),
                adds.join(", ")
            ),
        ));
    }
    out
}

/// The statement that adds a missing column to an existing table.
fn add_column_statement(cfg: &ClickHouseConfig, c: &Column) -> String {
    format!(
        "ALTER TABLE `{}`.`{}`{} ADD COLUMN IF NOT EXISTS {}",
        cfg.database,
        cfg.table,
        on_cluster(cfg),
        column_sql(c)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::LABELS;

    #[test]
    fn every_label_column_is_a_column_of_its_own() {
        let mut seen = Vec::new();
        for c in LABELS {
            let name = label_column(c.name);
            assert!(
                COLUMNS.iter().any(|k| k.name == name),
                "{} as {name}",
                c.name
            );
            assert!(!seen.contains(&name), "{name} twice");
            seen.push(name);
        }
    }

    #[test]
    fn defaults_go_before_codecs() {
        let c = dflt("x", "String CODEC(ZSTD(1))", "''");
        assert_eq!(column_sql(&c), "`x` String DEFAULT '' CODEC(ZSTD(1))");
        assert_eq!(column_sql(&col("y", "UInt8")), "`y` UInt8");
    }
}
