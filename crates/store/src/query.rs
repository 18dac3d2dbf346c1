//! The query layer: flows grouped by any set of dimensions over a time range, with
//! filters, top-K, and the raw per-observer view or the count-once view.
//!
//! *Source* is the end that started the connection, *destination* the one that answered
//! (the backend after DNAT). Dimensions are a closed list, so a query is always valid SQL
//! built from known column expressions, with every value bound as a parameter.

use serde::Serialize;

/// A dimension to group or filter by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Dim {
    /// Its name in the API (`src_namespace`, `class`, ...).
    pub name: &'static str,
    /// The SQL expression over the `flows` table.
    pub(crate) sql: &'static str,
}

macro_rules! side_dims {
    ($($name:literal => $col:literal),* $(,)?) => {
        &[
            $(
                Dim { name: concat!("src_", $name), sql: concat!("CASE WHEN local_initiated THEN local_", $col, " ELSE remote_", $col, " END") },
                Dim { name: concat!("dst_", $name), sql: concat!("CASE WHEN local_initiated THEN remote_", $col, " ELSE local_", $col, " END") },
            )*
        ]
    };
}

/// An end's address as text (`local` or `remote`): the address, or `address/length` on a
/// row summed per network (docs/schema.md), so a filter on an exact address matches only
/// rows that keep full addresses.
macro_rules! addr_text {
    ($end:literal) => {
        concat!(
            "CASE WHEN ",
            $end,
            "_prefix_len = (CASE WHEN instr(",
            $end,
            "_addr, ':') > 0 THEN 128 ELSE 32 END) THEN ",
            $end,
            "_addr ELSE ",
            $end,
            "_addr || '/' || ",
            $end,
            "_prefix_len END"
        )
    };
}

const SIDE: &[Dim] = side_dims!(
    "kind" => "kind",
    "namespace" => "namespace",
    "name" => "name",
    "workload_kind" => "workload_kind",
    "app" => "app",
    "node" => "node",
    "zone" => "zone",
    "region" => "region",
    "cloud" => "cloud",
);

const OTHER: &[Dim] = &[
    // The workload of a pod; for other ends the node, network or cloud-service name, else
    // the kind (`internet`, `unknown`): every end has a name to group by.
    Dim {
        name: "src_workload",
        sql: "CASE WHEN local_initiated THEN COALESCE(NULLIF(local_workload, ''), NULLIF(local_name, ''), local_kind) ELSE COALESCE(NULLIF(remote_workload, ''), NULLIF(remote_name, ''), remote_kind) END",
    },
    Dim {
        name: "dst_workload",
        sql: "CASE WHEN local_initiated THEN COALESCE(NULLIF(remote_workload, ''), NULLIF(remote_name, ''), remote_kind) ELSE COALESCE(NULLIF(local_workload, ''), NULLIF(local_name, ''), local_kind) END",
    },
    Dim {
        name: "src_ip",
        sql: concat!(
            "CASE WHEN local_initiated THEN ",
            addr_text!("local"),
            " ELSE ",
            addr_text!("remote"),
            " END"
        ),
    },
    Dim {
        name: "dst_ip",
        sql: concat!(
            "CASE WHEN local_initiated THEN ",
            addr_text!("remote"),
            " ELSE ",
            addr_text!("local"),
            " END"
        ),
    },
    Dim {
        name: "dst_port",
        sql: "responder_port",
    },
    Dim {
        name: "proto",
        sql: "proto",
    },
    Dim {
        name: "class",
        sql: "class",
    },
    Dim {
        name: "observer",
        sql: "observer",
    },
    Dim {
        name: "service_namespace",
        sql: "service_namespace",
    },
    Dim {
        name: "service_name",
        sql: "service_name",
    },
    Dim {
        name: "service_ip",
        sql: "service_addr",
    },
    // Time buckets (Unix seconds of the bucket's start, by interval start): bytes over
    // time. Read from the rows, never from a rollup.
    Dim {
        name: "time_1m",
        sql: "(interval_start / 60) * 60",
    },
    Dim {
        name: "time_10m",
        sql: "(interval_start / 600) * 600",
    },
    Dim {
        name: "time_1h",
        sql: "(interval_start / 3600) * 3600",
    },
    Dim {
        name: "time_1d",
        sql: "(interval_start / 86400) * 86400",
    },
    // The probes' own traffic (both ends labelled `podflow_model::PROBE_APP`): `true` or
    // `false`, so `podflow_probe=false` leaves it out.
    Dim {
        name: "podflow_probe",
        sql: "CASE WHEN local_app = 'podflow-probe' AND remote_app = 'podflow-probe' THEN 'true' ELSE 'false' END",
    },
    // `yes` / `no` for rows through a Service, empty for the others (and `service_zone_local`
    // also when it is not known): see docs/attribution.md, "Avoidable cross-zone traffic".
    Dim {
        name: "service_headless",
        sql: "service_headless",
    },
    Dim {
        name: "service_prefers_close",
        sql: "service_prefers_close",
    },
    Dim {
        name: "service_zone_local",
        sql: "service_zone_local",
    },
];

/// Dimensions by the local end (the observer's side) and the remote end, as stored,
/// rather than by initiator: what the query-time bill needs (the cluster's side decides
/// the cloud, region and direction of a price, and who is charged). Not listed in
/// [`dimensions`] nor accepted by `/api/v1/query`; they read `flows`, never a rollup.
const LOCAL: &[Dim] = &[
    Dim {
        name: "local_cloud",
        sql: "local_cloud",
    },
    Dim {
        name: "local_region",
        sql: "local_region",
    },
    Dim {
        name: "local_namespace",
        sql: "local_namespace",
    },
    Dim {
        name: "local_workload",
        sql: "COALESCE(NULLIF(local_workload, ''), NULLIF(local_name, ''), local_kind)",
    },
    Dim {
        name: "local_app",
        sql: "local_app",
    },
    Dim {
        name: "local_ip",
        sql: addr_text!("local"),
    },
    Dim {
        name: "local_initiated",
        sql: "CASE WHEN local_initiated THEN '1' ELSE '0' END",
    },
    Dim {
        name: "remote_kind",
        sql: "remote_kind",
    },
    Dim {
        name: "remote_name",
        sql: "remote_name",
    },
    Dim {
        name: "remote_ip",
        sql: addr_text!("remote"),
    },
];

/// A dimension by the local or remote end ([`LOCAL`]): `local_cloud`, `local_region`,
/// `local_namespace`, `local_workload`, `local_app`, `local_ip`, `local_initiated`
/// (`1`/`0`), `remote_kind`, `remote_name`, `remote_ip`.
pub fn local_dim(name: &str) -> Option<Dim> {
    LOCAL.iter().find(|d| d.name == name).copied()
}

/// Every dimension, by name.
pub fn dimensions() -> impl Iterator<Item = Dim> {
    SIDE.iter().chain(OTHER).copied()
}

/// The dimension called `name`.
pub fn dim(name: &str) -> Option<Dim> {
    dimensions().find(|d| d.name == name)
}

/// Which rows a query counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// Every observer's rows: a connection between two observed nodes counts on both.
    Raw,
    /// Each connection once: where both ends are observed, only the initiator's row.
    Once,
}

/// A grouped query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupQuery {
    /// Start (Unix seconds, inclusive, by interval start).
    pub from: i64,
    /// End (exclusive).
    pub to: i64,
    /// Dimensions to group by (none: one total row).
    pub group_by: Vec<Dim>,
    /// Equality filters (a value of `""` matches "not applicable").
    pub filters: Vec<(Dim, String)>,
    /// Rows, largest bytes first.
    pub limit: usize,
    /// Raw or count-once.
    pub view: View,
}

/// One group's totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRow {
    /// The group's dimension values, in `group_by` order.
    pub key: Vec<String>,
    /// Bytes source → destination.
    pub bytes_src_to_dst: u64,
    /// Bytes destination → source.
    pub bytes_dst_to_src: u64,
    /// Packets source → destination.
    pub packets_src_to_dst: u64,
    /// Packets destination → source.
    pub packets_dst_to_src: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connections closed.
    pub closed: u64,
    /// Price of the bytes, USD.
    pub cost_usd: f64,
}

impl GroupRow {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_src_to_dst.saturating_add(self.bytes_dst_to_src)
    }
}
