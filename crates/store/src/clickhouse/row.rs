//! The rows as they cross the wire (RowBinary): the two ClickHouse rows a flow row is
//! written as, kubenetmon's columns filled from podflow's, and the rows the queries
//! answer with, read back into the store's types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ::clickhouse::Row;
use podflow_model::{
    Class, EndLabels, FlowKey, FlowLabels, FlowRow, FlowTotals, KubenetmonClass, Prefixes, Protocol,
};
use serde::{Deserialize, Serialize};

use crate::columns::{self, LABELS};
use crate::flow_store::FlowSummary;
use crate::query::GroupRow;

/// A row of the marks table as inserted (`schema::marks_table`).
#[derive(Row, Serialize)]
pub(super) struct MarkRow {
    pub(super) agent: String,
    pub(super) seq: u64,
    pub(super) node: String,
    pub(super) last_seen: i64,
    pub(super) pending: String,
    pub(super) version: u64,
}

/// An agent's latest marks row as `sql::marks_sql` reads it.
#[derive(Row, Deserialize)]
pub(super) struct MarkRead {
    pub(super) agent: String,
    pub(super) m_seq: u64,
    pub(super) m_node: String,
    pub(super) m_last_seen: i64,
    pub(super) m_pending: String,
    pub(super) m_version: u64,
}

/// One ClickHouse row as inserted; field names are the column names. Its label fields
/// are listed by hand, not from [`LABELS`]: the `Row` derive needs a field per column,
/// named as the table (kubenetmon's names, see `schema::label_column`); the chdb tests
/// check the fields against the table.
#[allow(non_snake_case)]
#[derive(Row, Serialize)]
pub(super) struct ChRow<'a> {
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
    service_headless: &'static str,
    service_prefers_close: &'static str,
    service_zone_local: &'static str,
    local_prefix_len: u8,
    remote_prefix_len: u8,
}

/// `flows()` output row; field names are the SELECT's aliases.
#[derive(Row, Deserialize)]
pub(super) struct SummaryRow {
    observer: String,
    proto: String,
    local_addr: Ipv6Addr,
    remote_addr: Ipv6Addr,
    responder_port: u16,
    local_initiated: bool,
    service_addr: Ipv6Addr,
    service_port: u16,
    local_prefix_len: u8,
    remote_prefix_len: u8,
    t_bytes_out: u64,
    t_packets_out: u64,
    t_bytes_in: u64,
    t_packets_in: u64,
    t_opened: u64,
    t_closed: u64,
    t_first: i64,
    t_last: i64,
    t_cost_usd: f64,
    l_labels: [String; LABELS.len()],
    l_remote_observed: bool,
}

/// `group()` output row; field names are the SELECT's aliases.
#[derive(Row, Deserialize)]
pub(super) struct GroupedRow {
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
pub(super) fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped(),
        IpAddr::V6(v) => v,
    }
}

pub(super) fn from_v6(a: Ipv6Addr) -> IpAddr {
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

/// The two ClickHouse rows of a flow row, checked before anything is sent.
pub(super) fn encode<'a>(r: &'a FlowRow, proto: &'a str) -> Result<[ChRow<'a>; 2], String> {
    let start = u32::try_from(r.interval_start).map_err(|_| {
        format!(
            "interval start {} is outside DateTime's range (1970..2106)",
            r.interval_start
        )
    })?;
    let seconds = u16::try_from(r.interval_s).map_err(|_| {
        format!(
            "interval of {} s exceeds intervalSeconds' UInt16",
            r.interval_s
        )
    })?;
    let day = u16::try_from(start / 86_400)
        .map_err(|_| format!("interval start {start} is past the Date type's range"))?;
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
        service_headless: l.service_headless_str(),
        service_prefers_close: l.service_prefers_close_str(),
        service_zone_local: l.service_zone_local_str(),
        // 0: a full address (the table's encoding, docs/clickhouse.md).
        local_prefix_len: k.prefixes.local.unwrap_or(0),
        remote_prefix_len: k.prefixes.remote.unwrap_or(0),
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

impl SummaryRow {
    /// The summary this row reads as; `Err` says which value is invalid.
    pub(super) fn summary(self) -> Result<FlowSummary, String> {
        let s = self;
        let proto = Protocol::parse(&s.proto)
            .ok_or_else(|| format!("row has an invalid proto {:?}", s.proto))?;
        let mut labels = columns::from_values(s.l_labels)
            .map_err(|(column, value)| format!("row has an invalid {column} {value:?}"))?;
        labels.remote_observed = s.l_remote_observed;
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
                prefixes: Prefixes {
                    local: (s.local_prefix_len != 0).then_some(s.local_prefix_len),
                    remote: (s.remote_prefix_len != 0).then_some(s.remote_prefix_len),
                },
            },
            totals: FlowTotals {
                bytes_out: s.t_bytes_out,
                packets_out: s.t_packets_out,
                bytes_in: s.t_bytes_in,
                packets_in: s.t_packets_in,
                opened: s.t_opened,
                closed: s.t_closed,
            },
            labels: Arc::new(labels),
            cost_usd: s.t_cost_usd,
            first: s.t_first,
            last: s.t_last,
        })
    }
}

impl From<GroupedRow> for GroupRow {
    fn from(r: GroupedRow) -> GroupRow {
        GroupRow {
            key: r.g_key,
            bytes_src_to_dst: r.g_bytes_sd,
            bytes_dst_to_src: r.g_bytes_ds,
            packets_src_to_dst: r.g_packets_sd,
            packets_dst_to_src: r.g_packets_ds,
            connections: r.g_opened,
            closed: r.g_closed,
            cost_usd: r.g_cost_usd,
        }
    }
}

/// Clamps Unix seconds into DateTime's range for a query bound.
pub(super) fn datetime_bound(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}
