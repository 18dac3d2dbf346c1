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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ::clickhouse::{Client, Row};
use podflow_model::{
    Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, KubenetmonClass, Protocol,
};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::flow_store::{FlowQuery, FlowStore, FlowSummary};
use crate::query::{GroupQuery, GroupRow};

mod config;
mod retry;
mod schema;
mod sql;

pub use self::config::ClickHouseConfig;
pub use self::schema::create_statements;
pub use crate::error::ClickHouseError;

/// One ClickHouse row as inserted; field names are the column names.
#[allow(non_snake_case)]
#[derive(Row, Serialize)]
struct ChRow<'a> {
    date: u16,
    intervalStartTime: u32,
    intervalSeconds: u16,
    proto: &'a str,
    connectionClass: &'static str,
    direction: i8,
    localCloud: &'a str,
    localRegion: &'a str,
    localAvailabilityZone: &'a str,
    localNode: &'a str,
    localNamespace: &'a str,
    localPod: &'a str,
    #[serde(with = "::clickhouse::serde::ipv4")]
    localIPv4: Ipv4Addr,
    localPort: u16,
    localApp: &'a str,
    remoteCloud: &'a str,
    remoteRegion: &'a str,
    remoteAvailabilityZone: &'a str,
    remoteNode: &'a str,
    remoteNamespace: &'a str,
    remotePod: &'a str,
    #[serde(with = "::clickhouse::serde::ipv4")]
    remoteIPv4: Ipv4Addr,
    remotePort: u16,
    remoteApp: &'a str,
    remoteCloudService: &'a str,
    bytes: u64,
    packets: u64,
    observer: &'a str,
    local_addr: Ipv6Addr,
    remote_addr: Ipv6Addr,
    responder_port: u16,
    local_initiated: bool,
    service_addr: Ipv6Addr,
    service_port: u16,
    class: &'static str,
    local_kind: &'static str,
    local_name: &'a str,
    local_workload_kind: &'a str,
    local_workload: &'a str,
    remote_kind: &'static str,
    remote_name: &'a str,
    remote_workload_kind: &'a str,
    remote_workload: &'a str,
    service_namespace: &'a str,
    service_name: &'a str,
    bytes_out: u64,
    packets_out: u64,
    bytes_in: u64,
    packets_in: u64,
    conns_opened: u64,
    conns_closed: u64,
    cost_usd: f64,
    remote_observed: bool,
}

/// `flows()` output row; field names are the SELECT's aliases.
#[derive(Row, Deserialize)]
struct SummaryRow {
    observer: String,
    proto: String,
    local_addr: Ipv6Addr,
    remote_addr: Ipv6Addr,
    responder_port: u16,
    local_initiated: bool,
    service_addr: Ipv6Addr,
    service_port: u16,
    t_bytes_out: u64,
    t_packets_out: u64,
    t_bytes_in: u64,
    t_packets_in: u64,
    t_opened: u64,
    t_closed: u64,
    t_first: i64,
    t_last: i64,
    t_cost_usd: f64,
    l_class: String,
    l_local: [String; 10],
    l_remote: [String; 10],
    l_service_namespace: String,
    l_service_name: String,
    l_remote_observed: bool,
}

/// `group()` output row; field names are the SELECT's aliases.
#[derive(Row, Deserialize)]
struct GroupedRow {
    g_key: Vec<String>,
    g_bytes_sd: u64,
    g_bytes_ds: u64,
    g_packets_sd: u64,
    g_packets_ds: u64,
    g_opened: u64,
    g_closed: u64,
    g_cost_usd: f64,
}

/// IPv4 as IPv4-mapped IPv6 (the key columns hold both families).
fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped(),
        IpAddr::V6(v) => v,
    }
}

fn from_v6(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v) => IpAddr::V4(v),
        None => IpAddr::V6(a),
    }
}

fn v4_or_zero(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// kubenetmon's class from the row's labels (the rule of `Attribution::kubenetmon_class`).
fn kubenetmon_class(l: &FlowLabels) -> &'static str {
    match l.class {
        Class::InterRegion => KubenetmonClass::InterRegion,
        Class::PublicInternet => KubenetmonClass::PublicInternet,
        Class::IntraVpc if l.remote.kind == "cloud_range" => KubenetmonClass::IntraRegion,
        _ => KubenetmonClass::IntraVpc,
    }
    .as_str()
}

/// A stable 128-bit FNV-1a hash (the dedup token must not change between builds).
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Fnv128(Self::OFFSET)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u128::from(x);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// The insert deduplication token of a batch: a hash of everything written, so the same
/// batch sent again (a retry after a lost reply) is dropped by ClickHouse.
pub fn batch_token(rows: &[FlowRow]) -> String {
    let mut h = Fnv128::new();
    h.u64(rows.len() as u64);
    for r in rows {
        h.bytes(&r.interval_start.to_le_bytes());
        h.bytes(&r.interval_s.to_le_bytes());
        h.str(&r.observer);
        let k = &r.key;
        h.bytes(&[k.proto.0, u8::from(k.local_initiated)]);
        h.bytes(&v6(k.local).octets());
        h.bytes(&v6(k.remote).octets());
        h.bytes(&k.responder_port.to_le_bytes());
        match k.service {
            Some((a, p)) => {
                h.bytes(&[1]);
                h.bytes(&v6(a).octets());
                h.bytes(&p.to_le_bytes());
            }
            None => h.bytes(&[0]),
        }
        for v in r.totals.columns() {
            h.u64(v);
        }
        h.u64(r.cost_usd.to_bits());
        let l = &r.labels;
        h.str(l.class.as_str());
        for e in [&l.local, &l.remote] {
            for s in [
                e.kind,
                &e.namespace,
                &e.name,
                &e.workload_kind,
                &e.workload,
                &e.app,
                &e.node,
                &e.zone,
                &e.region,
                &e.cloud,
            ] {
                h.str(s);
            }
        }
        h.str(&l.service_namespace);
        h.str(&l.service_name);
        h.bytes(&[u8::from(l.remote_observed)]);
    }
    format!("podflow-{:032x}", h.0)
}

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
        let store = ClickHouseStore {
            client,
            rt: Some(rt),
            cfg,
            name,
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
        })
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
                let res = match tokio::time::timeout(timeout, f()).await {
                    Ok(r) => r,
                    Err(_) => Err(::clickhouse::error::Error::TimedOut),
                };
                match res {
                    Ok(v) => return Ok(v),
                    Err(e) if attempt <= self.cfg.max_retries && retry::transient(&e) => {
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

    /// The two ClickHouse rows of a flow row, checked before anything is sent.
    fn encode<'a>(&self, r: &'a FlowRow, proto: &'a str) -> Result<[ChRow<'a>; 2], StoreError> {
        let start = u32::try_from(r.interval_start).map_err(|_| {
            self.invalid(format!(
                "interval start {} is outside DateTime's range (1970..2106)",
                r.interval_start
            ))
        })?;
        let seconds = u16::try_from(r.interval_s).map_err(|_| {
            self.invalid(format!(
                "interval of {} s exceeds intervalSeconds' UInt16",
                r.interval_s
            ))
        })?;
        let day = u16::try_from(start / 86_400).map_err(|_| {
            self.invalid(format!(
                "interval start {start} is past the Date type's range"
            ))
        })?;
        let k = &r.key;
        let t = &r.totals;
        let l: &'a FlowLabels = &r.labels;
        let (sa, sp) = match k.service {
            Some((a, p)) => (v6(a), p),
            None => (Ipv6Addr::UNSPECIFIED, 0),
        };
        // kubenetmon's ports: the responder's port on its side; ephemeral ports are not kept.
        let (local_port, remote_port) = if k.local_initiated {
            (0, k.responder_port)
        } else {
            (k.responder_port, 0)
        };
        let pod = |e: &'a EndLabels| if e.kind == "pod" { &*e.name } else { "" };
        let out = ChRow {
            date: day,
            intervalStartTime: start,
            intervalSeconds: seconds,
            proto,
            connectionClass: kubenetmon_class(l),
            direction: 1,
            localCloud: &l.local.cloud,
            localRegion: &l.local.region,
            localAvailabilityZone: &l.local.zone,
            localNode: &l.local.node,
            localNamespace: &l.local.namespace,
            localPod: pod(&l.local),
            localIPv4: v4_or_zero(k.local),
            localPort: local_port,
            localApp: &l.local.app,
            remoteCloud: &l.remote.cloud,
            remoteRegion: &l.remote.region,
            remoteAvailabilityZone: &l.remote.zone,
            remoteNode: &l.remote.node,
            remoteNamespace: &l.remote.namespace,
            remotePod: pod(&l.remote),
            remoteIPv4: v4_or_zero(k.remote),
            remotePort: remote_port,
            remoteApp: &l.remote.app,
            remoteCloudService: if l.remote.kind == "cloud_range" {
                &l.remote.name
            } else {
                ""
            },
            bytes: t.bytes_out,
            packets: t.packets_out,
            observer: &r.observer,
            local_addr: v6(k.local),
            remote_addr: v6(k.remote),
            responder_port: k.responder_port,
            local_initiated: k.local_initiated,
            service_addr: sa,
            service_port: sp,
            class: l.class.as_str(),
            local_kind: l.local.kind,
            local_name: &l.local.name,
            local_workload_kind: &l.local.workload_kind,
            local_workload: &l.local.workload,
            remote_kind: l.remote.kind,
            remote_name: &l.remote.name,
            remote_workload_kind: &l.remote.workload_kind,
            remote_workload: &l.remote.workload,
            service_namespace: &l.service_namespace,
            service_name: &l.service_name,
            bytes_out: t.bytes_out,
            packets_out: t.packets_out,
            bytes_in: 0,
            packets_in: 0,
            conns_opened: t.opened,
            conns_closed: t.closed,
            cost_usd: r.cost_usd,
            remote_observed: l.remote_observed,
        };
        let inb = ChRow {
            direction: 2,
            bytes: t.bytes_in,
            packets: t.packets_in,
            bytes_out: 0,
            packets_out: 0,
            bytes_in: t.bytes_in,
            packets_in: t.packets_in,
            conns_opened: 0,
            conns_closed: 0,
            cost_usd: 0.0,
            ..out
        };
        Ok([out, inb])
    }

    /// Inserts rows as one INSERT per `batch_rows` with the given deduplication token
    /// (suffixed per chunk); a batch sent again with the same token is counted once.
    pub fn write_with_token(&mut self, rows: &[FlowRow], token: &str) -> Result<(), StoreError> {
        for (i, chunk) in rows.chunks(self.cfg.batch_rows).enumerate() {
            self.insert_chunk(chunk, &format!("{token}-{i}"))?;
        }
        Ok(())
    }

    fn insert_chunk(&self, rows: &[FlowRow], token: &str) -> Result<(), StoreError> {
        let protos: Vec<_> = rows.iter().map(|r| r.key.proto.name()).collect();
        let mut encoded = Vec::with_capacity(rows.len() * 2);
        for (r, p) in rows.iter().zip(&protos) {
            encoded.extend(self.encode(r, p)?);
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

    fn summary(&self, s: SummaryRow) -> Result<FlowSummary, StoreError> {
        let proto = Protocol::parse(&s.proto)
            .ok_or_else(|| self.invalid(format!("row has an invalid proto {:?}", s.proto)))?;
        let class = Class::parse(&s.l_class)
            .ok_or_else(|| self.invalid(format!("row has an invalid class {:?}", s.l_class)))?;
        let end = |l: [String; 10]| {
            let [
                kind,
                namespace,
                name,
                workload_kind,
                workload,
                app,
                node,
                zone,
                region,
                cloud,
            ] = l;
            EndLabels {
                kind: crate::columns::kind_static(&kind),
                namespace: namespace.into(),
                name: name.into(),
                workload_kind: workload_kind.into(),
                workload: workload.into(),
                app: app.into(),
                node: node.into(),
                zone: zone.into(),
                region: region.into(),
                cloud: cloud.into(),
            }
        };
        let service = if s.service_addr.is_unspecified() && s.service_port == 0 {
            None
        } else {
            Some((from_v6(s.service_addr), s.service_port))
        };
        Ok(FlowSummary {
            observer: s.observer,
            key: FlowKey {
                proto,
                local: from_v6(s.local_addr),
                remote: from_v6(s.remote_addr),
                responder_port: s.responder_port,
                local_initiated: s.local_initiated,
                service,
            },
            totals: FlowTotals {
                bytes_out: s.t_bytes_out,
                packets_out: s.t_packets_out,
                bytes_in: s.t_bytes_in,
                packets_in: s.t_packets_in,
                opened: s.t_opened,
                closed: s.t_closed,
            },
            labels: Arc::new(FlowLabels {
                class,
                local: end(s.l_local),
                remote: end(s.l_remote),
                service_namespace: s.l_service_namespace.into(),
                service_name: s.l_service_name.into(),
                remote_observed: s.l_remote_observed,
            }),
            cost_usd: s.t_cost_usd,
            first: s.t_first,
            last: s.t_last,
        })
    }
}

/// Clamps Unix seconds into DateTime's range for a query bound.
fn datetime_bound(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

impl FlowStore for ClickHouseStore {
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
        let sql = sql::flows_sql(&self.cfg.database, &self.cfg.table);
        let limit = u64::try_from(q.limit).unwrap_or(u64::MAX);
        let rows: Vec<SummaryRow> = self.retrying("query flows", || {
            self.client
                .query(&sql)
                .bind(datetime_bound(q.from))
                .bind(datetime_bound(q.to))
                .bind(limit)
                .fetch_all::<SummaryRow>()
        })?;
        rows.into_iter().map(|s| self.summary(s)).collect()
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
        let mut out: Vec<GroupRow> = rows
            .into_iter()
            .map(|r| GroupRow {
                key: r.g_key,
                bytes_src_to_dst: r.g_bytes_sd,
                bytes_dst_to_src: r.g_bytes_ds,
                packets_src_to_dst: r.g_packets_sd,
                packets_dst_to_src: r.g_packets_ds,
                connections: r.g_opened,
                closed: r.g_closed,
                cost_usd: r.g_cost_usd,
            })
            .collect();
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

    /// Deletes with a lightweight DELETE (the TTL normally does this by whole days);
    /// returns the number of flow rows (`out` rows, before merges) it removed.
    fn expire(&mut self, before: i64) -> Result<u64, StoreError> {
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
