//! The ClickHouse backend: the same logical table as the embedded store, summed per
//! interval and key by a SummingMergeTree, with kubenetmon's `network_flows_0` column set
//! so its users' queries keep working, plus podflow's own columns (docs/clickhouse.md).
//!
//! The [`FlowStore`] trait is synchronous (the server calls it from `spawn_blocking`), so
//! the store owns a small current-thread tokio runtime and blocks on it. It must not be
//! called from inside an async task: `Runtime::block_on` panics there.
//!
//! Every [`FlowRow`] becomes two ClickHouse rows, as kubenetmon writes them: `direction =
//! 'out'` carries the local → remote bytes and packets in `bytes`/`packets`, `direction =
//! 'in'` the remote → local ones. podflow's counters (`bytes_out`, `bytes_in`,
//! `conns_opened`, `cost_usd`, ...) are split the same way (the `in` row has zero
//! `bytes_out`, connections and cost), so `sum()` of any column over both rows is exact.

use std::fmt;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use ::clickhouse::Client;
use podflow_model::{AgentMark, FlowRow};

use self::row::{ChRow, GroupedRow, MarkRead, MarkRow, SummaryRow, datetime_bound};
use crate::error::StoreError;
use crate::failpoint;
use crate::flow_store::{FlowQuery, FlowStore, FlowSummary, JobWrite};
use crate::query::{GroupQuery, GroupRow};

mod config;
mod dedup;
mod retry;
mod row;
mod schema;
mod sql;

pub use self::config::ClickHouseConfig;
pub use self::dedup::batch_token;
pub use self::schema::create_statements;
pub use crate::error::ClickHouseError;

/// The current-thread runtime a store blocks on.
fn runtime() -> Result<tokio::runtime::Runtime, ClickHouseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("podflow-clickhouse")
        .build()
        .map_err(|e| ClickHouseError::Config(format!("cannot start a runtime: {e}")))
}

/// The ClickHouse store.
pub struct ClickHouseStore {
    client: Client,
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    cfg: ClickHouseConfig,
    /// `database.table`, for messages.
    name: String,
    /// The flows query (built once: it depends on the table only).
    flows_sql: String,
    /// When set, no request (retries included) runs past it: a reader's request time
    /// limit ([`ClickHouseStore::set_deadline`]).
    deadline: Option<std::time::Instant>,
    /// The version of the last mark row written (marks rows only go up).
    mark_version: AtomicU64,
}

impl Drop for ClickHouseStore {
    // No task runs on the runtime (every request is `block_on`), so it can stop without
    // waiting, which also works inside an async task (a plain drop there panics).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("url", &self.cfg.url)
            .field("table", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClickHouseStore {
    /// Connects, then creates or migrates the database and table.
    pub fn open(cfg: ClickHouseConfig) -> Result<ClickHouseStore, StoreError> {
        cfg.check()?;
        let password = cfg.password()?;
        let rt = runtime()?;
        let mut client = Client::default()
            .with_url(cfg.url.clone())
            .with_database(cfg.database.clone())
            .with_compression(::clickhouse::Compression::Lz4)
            .with_product_info("podflow", env!("CARGO_PKG_VERSION"));
        if let Some(u) = &cfg.user {
            client = client.with_user(u.clone());
        }
        if let Some(p) = password {
            client = client.with_password(p);
        }
        let name = format!("{}.{}", cfg.database, cfg.table);
        let flows_sql = sql::flows_sql(&cfg.database, &cfg.table);
        let store = ClickHouseStore {
            client,
            rt: Some(rt),
            cfg,
            name,
            flows_sql,
            deadline: None,
            mark_version: AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClickHouseConfig {
        &self.cfg
    }

    /// A second handle on the same table with a runtime of its own (for queries beside
    /// the writer); the table is not migrated again.
    pub fn reader(&self) -> Result<ClickHouseStore, StoreError> {
        Ok(ClickHouseStore {
            client: self.client.clone(),
            rt: Some(runtime()?),
            cfg: self.cfg.clone(),
            name: self.name.clone(),
            flows_sql: self.flows_sql.clone(),
            deadline: None,
            mark_version: AtomicU64::new(0),
        })
    }

    /// Bounds every later request, its retries included, by `deadline` (`None`: only
    /// the per-request timeout and the retry count bound them).
    pub fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        self.deadline = deadline;
    }

    fn request_err(
        &self,
        op: &'static str,
        attempts: u32,
        source: ::clickhouse::error::Error,
    ) -> StoreError {
        ClickHouseError::Request {
            url: self.cfg.url.clone(),
            table: self.name.clone(),
            op,
            attempts,
            source,
        }
        .into()
    }

    fn invalid(&self, what: String) -> StoreError {
        ClickHouseError::Invalid {
            url: self.cfg.url.clone(),
            table: self.name.clone(),
            what,
        }
        .into()
    }

    /// Runs `f` until it succeeds, fails for good, or runs out of retries.
    fn retrying<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ::clickhouse::error::Error>>,
    {
        let timeout = Duration::from_secs(self.cfg.timeout_s.max(1));
        let rt = self.rt.as_ref().ok_or_else(|| {
            self.invalid("the store's runtime is gone (the store is being dropped)".into())
        })?;
        rt.block_on(async {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let left = self
                    .deadline
                    .map(|d| d.saturating_duration_since(std::time::Instant::now()));
                let timeout = left.map_or(timeout, |l| l.min(timeout));
                let res = match tokio::time::timeout(timeout, f()).await {
                    Ok(r) => r,
                    Err(_) => Err(::clickhouse::error::Error::TimedOut),
                };
                match res {
                    Ok(v) => return Ok(v),
                    Err(e)
                        if attempt <= self.cfg.max_retries
                            && retry::transient(&e)
                            && self.deadline.is_none_or(|d| {
                                let ms = retry::backoff_ms(self.cfg.retry_backoff_ms, attempt);
                                std::time::Instant::now() + Duration::from_millis(ms) < d
                            }) =>
                    {
                        let ms = retry::backoff_ms(self.cfg.retry_backoff_ms, attempt);
                        tracing::warn!(url = %self.cfg.url, table = %self.name, op, attempt,
                            retry_in_ms = ms, error = %e, "ClickHouse request failed, retrying");
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Err(e) => return Err(self.request_err(op, attempt, e)),
                }
            }
        })
    }

    fn execute(&self, op: &'static str, sql: &str) -> Result<(), StoreError> {
        self.retrying(op, || self.client.query(sql).execute())
    }

    /// Creates the database and table if needed and adds columns an older table lacks.
    fn migrate(&self) -> Result<(), StoreError> {
        // The database may not exist yet: run the DDL from `system` (naming it in the
        // `database` parameter would fail on a real server).
        let ddl = self.client.clone().with_database("system");
        for s in schema::create_statements(&self.cfg) {
            self.retrying("create table", || ddl.query(&s).execute())?;
        }
        let have: Vec<String> = self.retrying("read columns", || {
            self.client
                .query(schema::TABLE_COLUMNS)
                .bind(&self.cfg.database)
                .bind(&self.cfg.table)
                .fetch_all::<String>()
        })?;
        for (column, sql) in schema::add_columns(&self.cfg, &have) {
            tracing::info!(table = %self.name, column, "adding a column");
            self.execute("add column", &sql)?;
        }
        Ok(())
    }

    /// Inserts one chunk as one INSERT with the deduplication token `token`.
    fn insert_chunk(&self, rows: &[FlowRow], token: &str) -> Result<(), StoreError> {
        let protos: Vec<_> = rows.iter().map(|r| r.key.proto.name()).collect();
        let mut encoded = Vec::with_capacity(rows.len() * 2);
        for (r, p) in rows.iter().zip(&protos) {
            encoded.extend(row::encode(r, p).map_err(|what| self.invalid(what))?);
        }
        let timeout = Some(Duration::from_secs(self.cfg.timeout_s.max(1)));
        self.retrying("insert", || async {
            let mut ins = self
                .client
                .insert::<ChRow<'_>>(&self.cfg.table)
                .await?
                .with_timeouts(timeout, timeout)
                .with_setting("insert_deduplicate", "1")
                .with_setting("insert_deduplication_token", token);
            for row in &encoded {
                ins.write(row).await?;
            }
            ins.end().await
        })
    }

    /// The next version of a marks row: above every one written (by this process, or
    /// read by [`FlowStore::agents`]), the clock's nanoseconds when it is ahead.
    fn next_version(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut v = 0;
        let _ = self
            .mark_version
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                v = now.max(last.saturating_add(1));
                Some(v)
            });
        v
    }

    /// Inserts marks rows (intents or marks) as one INSERT, all under one new version.
    fn insert_marks(&self, op: &'static str, marks: &[AgentMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let version = self.next_version();
        let rows: Vec<MarkRow> = marks
            .iter()
            .map(|m| MarkRow {
                agent: m.agent.clone(),
                seq: m.seq,
                node: m.node.clone(),
                last_seen: m.last_seen,
                pending: crate::marks::encode(&m.pending),
                version,
            })
            .collect();
        let table = schema::marks_table(&self.cfg.table);
        let timeout = Some(Duration::from_secs(self.cfg.timeout_s.max(1)));
        self.retrying(op, || async {
            let mut ins = self
                .client
                .insert::<MarkRow>(&table)
                .await?
                .with_timeouts(timeout, timeout);
            for r in &rows {
                ins.write(r).await?;
            }
            ins.end().await
        })
    }
}

impl FlowStore for ClickHouseStore {
    /// Intents, then each chunk under its token, then the marks (docs/reliability.md,
    /// "Exactly once"): written again after any failure, each chunk that landed is
    /// dropped by ClickHouse's deduplication and the marks end the same.
    fn write_job(&mut self, job: &JobWrite<'_>) -> Result<(), StoreError> {
        self.insert_marks("write intents", job.intents)?;
        failpoint::check("clickhouse-after-intents")?;
        for c in job.chunks {
            self.insert_chunk(c.rows, &c.id.token)?;
            failpoint::check("clickhouse-after-chunk")?;
        }
        failpoint::check("clickhouse-after-rows")?;
        self.insert_marks("write marks", job.marks)?;
        failpoint::check("clickhouse-after-marks")
    }

    /// The latest marks row of every agent.
    fn agents(&self) -> Result<Vec<AgentMark>, StoreError> {
        let sql = sql::marks_sql(&self.cfg.database, &schema::marks_table(&self.cfg.table));
        let rows: Vec<MarkRead> = self.retrying("read marks", || {
            self.client.query(&sql).fetch_all::<MarkRead>()
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            self.mark_version.fetch_max(r.m_version, Ordering::Relaxed);
            let Some(pending) = crate::marks::decode(&r.agent, &r.m_pending) else {
                return Err(self.invalid(format!(
                    "agent {}'s mark has unreadable pending chunks: {:?}",
                    r.agent, r.m_pending
                )));
            };
            out.push(AgentMark {
                agent: r.agent,
                seq: r.m_seq,
                node: r.m_node,
                last_seen: r.m_last_seen,
                pending,
            });
        }
        Ok(out)
    }

    /// Inserts with a token derived from each chunk's content: writing byte-identical
    /// chunks twice within the deduplication window counts them once (by design: that is
    /// what a retry looks like).
    fn write(&mut self, rows: &[FlowRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(self.cfg.batch_rows) {
            self.insert_chunk(chunk, &batch_token(chunk))?;
        }
        Ok(())
    }

    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowSummary>, StoreError> {
        let limit = u64::try_from(q.limit).unwrap_or(u64::MAX);
        let rows: Vec<SummaryRow> = self.retrying("query flows", || {
            self.client
                .query(&self.flows_sql)
                .bind(datetime_bound(q.from))
                .bind(datetime_bound(q.to))
                .bind(limit)
                .fetch_all::<SummaryRow>()
        })?;
        rows.into_iter()
            .map(|s| s.summary().map_err(|what| self.invalid(what)))
            .collect()
    }

    /// The embedded store's grouped query over this table: both rows of a flow (`out`
    /// and `in`) fall in the same group, and unmerged parts are summed like merged ones.
    fn group(&self, q: &GroupQuery) -> Result<Vec<GroupRow>, StoreError> {
        let sql = sql::group_sql(&self.cfg.database, &self.cfg.table, q)
            .map_err(|d| self.invalid(format!("dimension {d} has no ClickHouse expression")))?;
        let limit = u64::try_from(q.limit).unwrap_or(u64::MAX);
        let rows: Vec<GroupedRow> = self.retrying("grouped query", || {
            let mut c = self
                .client
                .query(&sql)
                .bind(datetime_bound(q.from))
                .bind(datetime_bound(q.to));
            for (_, v) in &q.filters {
                c = c.bind(v.as_str());
            }
            c.bind(limit).fetch_all::<GroupedRow>()
        })?;
        let mut out: Vec<GroupRow> = rows.into_iter().map(GroupRow::from).collect();
        // Without GROUP BY an empty range still yields one all-zero row: drop it, as the
        // embedded store does.
        if q.group_by.is_empty()
            && out
                .first()
                .is_some_and(|r| r.bytes() == 0 && r.connections == 0)
        {
            out.clear();
        }
        Ok(out)
    }

    /// Retention on ClickHouse is the table's TTL (`ttl_days`; 0 keeps rows forever):
    /// the server's retention, made for the embedded store, deletes nothing here, so it
    /// cannot cut a history the TTL keeps (docs/reliability.md, "Retention"). Returns 0;
    /// [`ClickHouseStore::delete_before`] deletes on request.
    fn expire(&mut self, before: i64) -> Result<u64, StoreError> {
        tracing::debug!(table = %self.name, before, ttl_days = self.cfg.ttl_days,
            "retention on ClickHouse is the table's TTL: nothing deleted");
        Ok(0)
    }
}

impl ClickHouseStore {
    /// Deletes the rows that started before `before` with a lightweight DELETE (the TTL
    /// normally does this by whole days); returns the number of flow rows (`out` rows,
    /// before merges) it removed.
    pub fn delete_before(&mut self, before: i64) -> Result<u64, StoreError> {
        let before = datetime_bound(before);
        let count = sql::count_expired(&self.cfg.database, &self.cfg.table);
        let n: u64 = self.retrying("count expired rows", || {
            self.client.query(&count).bind(before).fetch_one::<u64>()
        })?;
        if n > 0 {
            self.execute("expire", &sql::expire(&self.cfg, before))?;
        }
        Ok(n)
    }
}
