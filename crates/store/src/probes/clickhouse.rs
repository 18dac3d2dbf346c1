//! Probe history in ClickHouse: `<table>_probes` beside the flows table, a
//! ReplacingMergeTree keyed by (interval, pair, kind, name), so a replayed row replaces
//! the first (queries read it `FINAL`).

use ::clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::{ProbeGroup, ProbeQuery, ProbeRow, ProbeStore};
use crate::clickhouse::ClickHouseConfig;
use crate::error::{ClickHouseError, StoreError};

/// The ClickHouse probe store.
pub struct ClickHouseProbeStore {
    client: Client,
    rt: Option<tokio::runtime::Runtime>,
    url: String,
    /// `database.table_probes`.
    name: String,
}

impl std::fmt::Debug for ClickHouseProbeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseProbeStore")
            .field("url", &self.url)
            .field("table", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ClickHouseProbeStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Row, Serialize)]
struct ChProbe<'a> {
    interval_start: i64,
    interval_s: u32,
    src_node: &'a str,
    dst_node: &'a str,
    src_zone: &'a str,
    dst_zone: &'a str,
    kind: &'a str,
    dns_name: &'a str,
    count: u64,
    failures: u64,
    unavailable: u64,
    sent: u64,
    lost: u64,
    rtt_count: u64,
    rtt_sum_ns: u64,
    rtt_min_ns: u64,
    rtt_max_ns: u64,
    buckets: &'a [u64],
}

/// A group as the query names it (aliases differ from the columns: ClickHouse would
/// read an alias equal to a column name inside the other aggregates).
#[derive(Row, Deserialize)]
struct ChGroup {
    g_key: Vec<String>,
    g_count: u64,
    g_failures: u64,
    g_unavailable: u64,
    g_sent: u64,
    g_lost: u64,
    g_rtt_count: u64,
    g_rtt_sum_ns: u64,
    g_rtt_min_ns: u64,
    g_rtt_max_ns: u64,
    g_buckets: Vec<u64>,
}

/// The table's DDL.
pub fn create_statement(database: &str, table: &str, ttl_days: u32) -> String {
    let ttl = if ttl_days > 0 {
        format!("\nTTL toDateTime(interval_start) + INTERVAL {ttl_days} DAY")
    } else {
        String::new()
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}_probes (
    interval_start Int64,
    interval_s UInt32,
    src_node LowCardinality(String),
    dst_node LowCardinality(String),
    src_zone LowCardinality(String),
    dst_zone LowCardinality(String),
    kind LowCardinality(String),
    dns_name String,
    count UInt64,
    failures UInt64,
    unavailable UInt64,
    sent UInt64,
    lost UInt64,
    rtt_count UInt64,
    rtt_sum_ns UInt64,
    rtt_min_ns UInt64,
    rtt_max_ns UInt64,
    buckets Array(UInt64)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(toDateTime(interval_start))
ORDER BY (interval_start, src_node, dst_node, kind, dns_name){ttl}"
    )
}

impl ClickHouseProbeStore {
    /// Connects with the flow store's settings and creates `<table>_probes` if missing.
    pub fn open(cfg: &ClickHouseConfig) -> Result<ClickHouseProbeStore, StoreError> {
        cfg.check()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("podflow-clickhouse-probes")
            .build()
            .map_err(|e| ClickHouseError::Config(format!("cannot start a runtime: {e}")))?;
        let mut client = Client::default()
            .with_url(cfg.url.clone())
            .with_database(cfg.database.clone())
            .with_compression(::clickhouse::Compression::Lz4)
            .with_product_info("podflow", env!("CARGO_PKG_VERSION"));
        if let Some(u) = &cfg.user {
            client = client.with_user(u.clone());
        }
        if let Some(p) = cfg.password()? {
            client = client.with_password(p);
        }
        let s = ClickHouseProbeStore {
            client,
            rt: Some(rt),
            url: cfg.url.clone(),
            name: format!("{}.{}_probes", cfg.database, cfg.table),
        };
        let ddl = create_statement(&cfg.database, &cfg.table, cfg.ttl_days);
        s.block(s.client.query(&ddl).execute(), "create the probes table")?;
        Ok(s)
    }

    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ::clickhouse::error::Error>>,
        op: &'static str,
    ) -> Result<T, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| ClickHouseError::Config("runtime gone".into()))?;
        rt.block_on(f).map_err(|source| {
            ClickHouseError::Request {
                url: self.url.clone(),
                table: self.name.clone(),
                op,
                attempts: 1,
                source,
            }
            .into()
        })
    }
}

impl ProbeStore for ClickHouseProbeStore {
    fn write_probes(&mut self, rows: &[ProbeRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = self.name.rsplit('.').next().unwrap_or_default().to_string();
        let client = self.client.clone();
        self.block(
            async move {
                let mut ins = client.insert::<ChProbe<'_>>(&table).await?;
                for r in rows {
                    ins.write(&ChProbe {
                        interval_start: r.interval_start,
                        interval_s: r.interval_s,
                        src_node: &r.src_node,
                        dst_node: &r.dst_node,
                        src_zone: &r.src_zone,
                        dst_zone: &r.dst_zone,
                        kind: &r.kind,
                        dns_name: &r.dns_name,
                        count: r.count,
                        failures: r.failures,
                        unavailable: r.unavailable,
                        sent: r.sent,
                        lost: r.lost,
                        rtt_count: r.rtt_count,
                        rtt_sum_ns: r.rtt_sum_ns,
                        rtt_min_ns: r.rtt_min_ns,
                        rtt_max_ns: r.rtt_max_ns,
                        buckets: &r.buckets,
                    })
                    .await?;
                }
                ins.end().await
            },
            "write probes",
        )
    }

    fn probes(&self, q: &ProbeQuery) -> Result<Vec<ProbeGroup>, StoreError> {
        let dims: Vec<&str> = q
            .group_by
            .iter()
            .copied()
            .filter(|d| super::DIMENSIONS.contains(d))
            .collect();
        let key = if dims.is_empty() {
            "CAST([], 'Array(String)')".to_string()
        } else {
            format!(
                "[{}]",
                dims.iter()
                    .map(|d| format!("toString({d})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut filter = String::new();
        for (d, _) in &q.filters {
            if super::DIMENSIONS.contains(d) {
                filter.push_str(&format!(" AND {d} = ?"));
            }
        }
        let group = if dims.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {}", dims.join(", "))
        };
        let sql = format!(
            "SELECT {key} AS g_key, sum(count) AS g_count, sum(failures) AS g_failures,
                    sum(unavailable) AS g_unavailable, sum(sent) AS g_sent, sum(lost) AS g_lost,
                    sum(rtt_count) AS g_rtt_count, sum(rtt_sum_ns) AS g_rtt_sum_ns,
                    minIf(rtt_min_ns, rtt_count > 0) AS g_rtt_min_ns,
                    max(rtt_max_ns) AS g_rtt_max_ns, sumForEach(buckets) AS g_buckets
             FROM {} FINAL WHERE interval_start >= ? AND interval_start < ?{filter}
             {group} ORDER BY g_count DESC",
            self.name
        );
        let mut query = self.client.query(&sql).bind(q.from).bind(q.to);
        for (d, v) in &q.filters {
            if super::DIMENSIONS.contains(d) {
                query = query.bind(v.as_str());
            }
        }
        let rows: Vec<ChGroup> = self.block(query.fetch_all(), "query probes")?;
        Ok(rows
            .into_iter()
            .filter(|g| g.g_count > 0)
            .map(|g| {
                let mut buckets = g.g_buckets;
                buckets.resize(super::BUCKETS, 0);
                ProbeGroup {
                    key: g.g_key,
                    count: g.g_count,
                    failures: g.g_failures,
                    unavailable: g.g_unavailable,
                    sent: g.g_sent,
                    lost: g.g_lost,
                    rtt_count: g.g_rtt_count,
                    rtt_sum_ns: g.g_rtt_sum_ns,
                    rtt_min_ns: g.g_rtt_min_ns,
                    rtt_max_ns: g.g_rtt_max_ns,
                    buckets,
                }
            })
            .collect())
    }

    fn expire_probes(&mut self, _before: i64) -> Result<u64, StoreError> {
        // The table's TTL governs (as for the flows table).
        Ok(0)
    }
}
