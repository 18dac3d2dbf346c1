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
use crate::query::{self, GroupQuery, GroupRow, View};

mod config;
mod retry;

pub use self::config::ClickHouseConfig;
pub use crate::error::ClickHouseError;

/// A column of the table: name, type, and an optional default expression for the
/// columns podflow does not fill itself.
struct Column {
    name: &'static str,
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

/// Every column, kubenetmon's first (in its order), then podflow's. Migration adds the
/// ones an existing table lacks; key columns never change (a new key is a new table).
const COLUMNS: &[Column] = &[
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
];

/// The columns SummingMergeTree adds up; every other non-key column keeps one row's value.
const SUMMED: &str = "bytes, packets, bytes_out, packets_out, bytes_in, packets_in, conns_opened, conns_closed, cost_usd";

/// The sorting key: interval, observer, direction and podflow's flow key.
const ORDER_BY: &str = "intervalStartTime, observer, direction, proto, local_addr, remote_addr, \
    responder_port, local_initiated, service_addr, service_port";

fn on_cluster(cfg: &ClickHouseConfig) -> String {
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
    vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`{oc}"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{t}`{oc}\n(\n{columns}\n)\nENGINE = {engine}\n\
             PARTITION BY date\nORDER BY ({ORDER_BY})\n{ttl}\
             SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1{dedup}"
        ),
    ]
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

/// The label columns of one end, in `EndLabels` field order (kind, namespace, name,
/// workload kind, workload, app, node, zone, region, cloud).
fn end_select(side: &str) -> String {
    let camel = |s: &str| format!("{side}{s}");
    [
        format!("{side}_kind"),
        camel("Namespace"),
        format!("{side}_name"),
        format!("{side}_workload_kind"),
        format!("{side}_workload"),
        camel("App"),
        camel("Node"),
        camel("AvailabilityZone"),
        camel("Region"),
        camel("Cloud"),
    ]
    .iter()
    .map(|c| format!("max({c})"))
    .collect::<Vec<_>>()
    .join(", ")
}

fn flows_sql(db: &str, table: &str) -> String {
    // Labels: max() over the group, like the embedded store, so both agree. Aliases differ
    // from column names (an alias equal to a column would shadow it inside the sums).
    format!(
        "SELECT observer, proto, local_addr, remote_addr, responder_port, local_initiated, \
         service_addr, service_port, \
         sum(bytes_out) AS t_bytes_out, sum(packets_out) AS t_packets_out, \
         sum(bytes_in) AS t_bytes_in, sum(packets_in) AS t_packets_in, \
         sum(conns_opened) AS t_opened, sum(conns_closed) AS t_closed, \
         min(toInt64(intervalStartTime)) AS t_first, \
         max(toInt64(intervalStartTime) + intervalSeconds) AS t_last, \
         sum(cost_usd) AS t_cost_usd, max(class) AS l_class, \
         ({local}) AS l_local, ({remote}) AS l_remote, \
         max(service_namespace) AS l_service_namespace, max(service_name) AS l_service_name, \
         max(remote_observed) AS l_remote_observed \
         FROM `{db}`.`{table}` \
         WHERE intervalStartTime >= toDateTime(?) AND intervalStartTime < toDateTime(?) \
         GROUP BY observer, proto, local_addr, remote_addr, responder_port, local_initiated, \
         service_addr, service_port \
         ORDER BY t_bytes_out + t_bytes_in DESC, t_opened DESC \
         LIMIT ?",
        local = end_select("local"),
        remote = end_select("remote"),
    )
}

/// An address column as text, as the embedded store writes it: IPv4 (stored mapped) as a
/// dotted quad, IPv6 in RFC 5952 form.
fn ip_text(column: &str) -> String {
    format!("replaceRegexpOne(IPv6NumToString({column}), '^::ffff:([0-9]+[.][0-9.]+)$', '\\\\1')")
}

/// The columns of one end's attribute (`local_` and `remote_`), as ClickHouse expressions.
fn end_columns(attr: &str) -> Option<(String, String)> {
    let pair = |l: &str, r: &str| Some((l.to_string(), r.to_string()));
    match attr {
        "kind" | "name" | "workload_kind" => {
            pair(&format!("local_{attr}"), &format!("remote_{attr}"))
        }
        "namespace" => pair("localNamespace", "remoteNamespace"),
        "app" => pair("localApp", "remoteApp"),
        "node" => pair("localNode", "remoteNode"),
        "zone" => pair("localAvailabilityZone", "remoteAvailabilityZone"),
        "region" => pair("localRegion", "remoteRegion"),
        "cloud" => pair("localCloud", "remoteCloud"),
        // The workload, else the name, else the kind: every end has a name to group by.
        "workload" => {
            let w = |e: &str| {
                format!(
                    "multiIf({e}_workload != '', {e}_workload, {e}_name != '', {e}_name, {e}_kind)"
                )
            };
            Some((w("local"), w("remote")))
        }
        "ip" => Some((ip_text("local_addr"), ip_text("remote_addr"))),
        _ => None,
    }
}

/// The ClickHouse expression of a query dimension ([`query::Dim`]) over this table,
/// giving the same text as the embedded store's expression over its `flows` table.
fn dim_expr(name: &str) -> Option<String> {
    let e = match name {
        "dst_port" => "toString(responder_port)".to_string(),
        "proto" => {
            // The embedded store keeps the number; this table the name (`tcp`, ...).
            let named: Vec<(String, u8)> = (0..=u8::MAX)
                .map(|n| (Protocol(n).name().into_owned(), n))
                .filter(|(s, n)| *s != n.to_string())
                .collect();
            let names: Vec<String> = named.iter().map(|(s, _)| format!("'{s}'")).collect();
            let numbers: Vec<String> = named.iter().map(|(_, n)| format!("'{n}'")).collect();
            format!(
                "transform(CAST(proto AS String), [{}], [{}], CAST(proto AS String))",
                names.join(", "),
                numbers.join(", ")
            )
        }
        "class" | "observer" | "service_namespace" | "service_name" => name.to_string(),
        "service_ip" => format!(
            "if(service_addr = toIPv6('::') AND service_port = 0, '', {})",
            ip_text("service_addr")
        ),
        _ => {
            // `src_*` is the initiator's end, `dst_*` the responder's.
            let (src, attr) = match name.split_once('_')? {
                ("src", a) => (true, a),
                ("dst", a) => (false, a),
                _ => return None,
            };
            let (local, remote) = end_columns(attr)?;
            let (a, b) = if src {
                (local, remote)
            } else {
                (remote, local)
            };
            format!("if(local_initiated, {a}, {b})")
        }
    };
    Some(format!("CAST({e} AS String)"))
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

/// The grouped query's SQL, with `?` for, in order: from, to, each filter's value, the
/// limit (values are bound, never spliced). `Err` names a dimension without an
/// expression here.
fn group_sql(db: &str, table: &str, q: &GroupQuery) -> Result<String, &'static str> {
    let expr = |d: &query::Dim| dim_expr(d.name).ok_or(d.name);
    let keys = q.group_by.iter().map(expr).collect::<Result<Vec<_>, _>>()?;
    let mut wh = vec![
        "intervalStartTime >= toDateTime(?)".to_string(),
        "intervalStartTime < toDateTime(?)".to_string(),
    ];
    if q.view == View::Once {
        wh.push("NOT (remote_observed AND NOT local_initiated)".into());
    }
    for (d, _) in &q.filters {
        wh.push(format!("{} = ?", expr(d)?));
    }
    let group = if keys.is_empty() {
        ""
    } else {
        " GROUP BY g_key"
    };
    // Aliases differ from column names (an alias equal to a column would shadow it).
    Ok(format!(
        "SELECT CAST([{}] AS Array(String)) AS g_key, \
         sum(if(local_initiated, bytes_out, bytes_in)) AS g_bytes_sd, \
         sum(if(local_initiated, bytes_in, bytes_out)) AS g_bytes_ds, \
         sum(if(local_initiated, packets_out, packets_in)) AS g_packets_sd, \
         sum(if(local_initiated, packets_in, packets_out)) AS g_packets_ds, \
         sum(conns_opened) AS g_opened, sum(conns_closed) AS g_closed, \
         sum(cost_usd) AS g_cost_usd \
         FROM `{db}`.`{table}` WHERE {}{group} \
         ORDER BY sum(bytes_out) + sum(bytes_in) DESC LIMIT ?",
        keys.join(", "),
        wh.join(" AND "),
    ))
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
        for s in create_statements(&self.cfg) {
            self.retrying("create table", || ddl.query(&s).execute())?;
        }
        let have: Vec<String> = self.retrying("read columns", || {
            self.client
                .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                .bind(&self.cfg.database)
                .bind(&self.cfg.table)
                .fetch_all::<String>()
        })?;
        for c in COLUMNS {
            if !have.iter().any(|h| h == c.name) {
                tracing::info!(table = %self.name, column = c.name, "adding a column");
                self.execute("add column", &add_column_statement(&self.cfg, c))?;
            }
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
        let sql = flows_sql(&self.cfg.database, &self.cfg.table);
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
        let sql = group_sql(&self.cfg.database, &self.cfg.table, q)
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
        let (db, t) = (&self.cfg.database, &self.cfg.table);
        let n: u64 = self.retrying("count expired rows", || {
            self.client
                .query(&format!(
                    "SELECT count() FROM `{db}`.`{t}` \
                     WHERE intervalStartTime < toDateTime(?) AND direction = 'out'"
                ))
                .bind(before)
                .fetch_one::<u64>()
        })?;
        if n > 0 {
            let sql = format!(
                "DELETE FROM `{db}`.`{t}`{} WHERE intervalStartTime < toDateTime({before})",
                on_cluster(&self.cfg)
            );
            self.execute("expire", &sql)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_go_before_codecs() {
        let c = dflt("x", "String CODEC(ZSTD(1))", "''");
        assert_eq!(column_sql(&c), "`x` String DEFAULT '' CODEC(ZSTD(1))");
        assert_eq!(column_sql(&col("y", "UInt8")), "`y` UInt8");
    }

    #[test]
    fn every_dimension_has_a_clickhouse_expression() {
        for d in query::dimensions() {
            let e = dim_expr(d.name).unwrap_or_else(|| panic!("no expression for {}", d.name));
            // `?` is the client's placeholder: an expression must not contain one.
            assert!(!e.contains('?'), "{}: {e}", d.name);
        }
        assert_eq!(dim_expr("src_nope"), None);
        assert_eq!(dim_expr("bytes"), None);
    }

    #[test]
    fn grouped_sql_binds_every_value() {
        let d = |n| query::dim(n).expect("dim");
        let q = GroupQuery {
            from: 0,
            to: 10,
            group_by: vec![d("src_workload"), d("proto")],
            filters: vec![
                (d("class"), "x' OR 1 --".into()),
                (d("dst_ip"), String::new()),
            ],
            limit: 5,
            view: View::Once,
        };
        let sql = group_sql("db", "t", &q).expect("sql");
        assert_eq!(sql.matches('?').count(), 5, "{sql}");
        assert!(!sql.contains("OR 1"), "{sql}");
        assert!(sql.contains("'tcp'") && sql.contains("'6'"), "{sql}");
        assert!(sql.contains("GROUP BY g_key") && sql.contains("remote_observed"));
        let total = GroupQuery {
            group_by: vec![],
            view: View::Raw,
            ..q
        };
        let sql = group_sql("db", "t", &total).expect("sql");
        assert!(
            !sql.contains("GROUP BY") && !sql.contains("remote_observed"),
            "{sql}"
        );
    }
}
