//! The Grafana Node Graph API datasource: `/api/health`, `/api/graph/fields`,
//! `/api/graph/data` (workloads as nodes, their traffic as edges).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use podflow_store::query;
use serde_json::{Value, json};

use crate::AppState;
use crate::params::{bad, parse};
use crate::reader::group;

/// `GET /api/health`: the datasource's Save & Test accepts exactly 200.
pub async fn health() -> &'static str {
    "ok\n"
}

/// `GET /api/graph/fields`.
pub async fn fields() -> Json<Value> {
    Json(json!({
        "nodes_fields": [
            {"field_name": "id", "type": "string"},
            {"field_name": "title", "type": "string"},
            {"field_name": "subTitle", "type": "string"},
            {"field_name": "mainStat", "type": "number", "displayName": "Sent (B/s)"},
            {"field_name": "secondaryStat", "type": "number", "displayName": "Received (B/s)"},
            {"field_name": "arc__intra", "type": "number", "color": "green", "displayName": "Same zone"},
            {"field_name": "arc__cross", "type": "number", "color": "orange", "displayName": "Cross zone/region"},
            {"field_name": "arc__external", "type": "number", "color": "red", "displayName": "Internet / other"},
            {"field_name": "detail__kind", "type": "string", "displayName": "Kind"},
            {"field_name": "detail__namespace", "type": "string", "displayName": "Namespace"},
        ],
        "edges_fields": [
            {"field_name": "id", "type": "string"},
            {"field_name": "source", "type": "string"},
            {"field_name": "target", "type": "string"},
            {"field_name": "mainStat", "type": "number", "displayName": "Bytes/s"},
            {"field_name": "secondaryStat", "type": "string", "displayName": "Class"},
            {"field_name": "detail__connections", "type": "number", "displayName": "Connections"},
            {"field_name": "detail__cost_usd", "type": "number", "displayName": "Cost (USD)"},
            {"field_name": "color", "type": "string"},
        ],
    }))
}

fn node_id(kind: &str, ns: &str, workload: &str) -> String {
    match (ns.is_empty(), workload.is_empty()) {
        (false, _) => format!("{ns}/{workload}"),
        (true, false) => workload.to_string(),
        (true, true) => kind.to_string(),
    }
}

fn class_color(class: &str) -> &'static str {
    match class {
        "INTRA_NODE" | "INTRA_ZONE" => "green",
        "INTER_ZONE" | "INTRA_VPC" => "orange",
        "INTER_REGION" | "PUBLIC_INTERNET" => "red",
        _ => "gray",
    }
}

/// The largest `q.limit` rows with either end in namespace `ns`, filtered in the store
/// before the limit: the rows from each side (each its own largest `limit`, which
/// holds the largest of the union), a row inside `ns` on both sides kept once. Exact
/// because the grouping holds both namespaces.
async fn touching(
    s: &Arc<AppState>,
    q: &query::GroupQuery,
    ns: &str,
) -> Result<Vec<query::GroupRow>, Response> {
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for side in ["src_namespace", "dst_namespace"] {
        let mut q = q.clone();
        if let Some(d) = query::dim(side) {
            q.filters.push((d, ns.to_string()));
        }
        for r in group(s, q).await? {
            if seen.insert(r.key.clone()) {
                rows.push(r);
            }
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.bytes()));
    rows.truncate(q.limit);
    Ok(rows)
}

#[derive(Default)]
struct NodeAcc {
    kind: String,
    ns: String,
    title: String,
    sent: u64,
    received: u64,
    intra: u64,
    cross: u64,
    external: u64,
}

/// `GET /api/graph/data?from=&to=` (epoch ms, as Grafana's `$__from`/`$__to`; default:
/// the last hour) `&namespace=` (edges touching it), `&view=raw|once`, `&limit=`.
pub async fn data(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    // `namespace` (edges touching it) is ours: the rest is the common parameters.
    let mut p = p;
    let ns_filter = p.remove("namespace").filter(|n| !n.is_empty());
    let mut q = match parse(&p, &[], true) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    if !p.contains_key("limit") {
        q.limit = 2000;
    }
    q.group_by = [
        "src_kind",
        "src_namespace",
        "src_workload",
        "dst_kind",
        "dst_namespace",
        "dst_workload",
        "class",
    ]
    .iter()
    .filter_map(|n| query::dim(n))
    .collect();
    let rows = match ns_filter {
        None => match group(&s, q.clone()).await {
            Ok(r) => r,
            Err(r) => return r,
        },
        Some(ns) => match touching(&s, &q, &ns).await {
            Ok(r) => r,
            Err(r) => return r,
        },
    };
    let secs = (q.to - q.from).max(1) as f64;
    let mut nodes: BTreeMap<String, NodeAcc> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), (u64, u64, f64, String)> = BTreeMap::new();
    for r in rows {
        let k = &r.key;
        let (src, dst) = (node_id(&k[0], &k[1], &k[2]), node_id(&k[3], &k[4], &k[5]));
        let class = k[6].as_str();
        for (id, kind, ns, title, sent, received) in [
            (
                &src,
                &k[0],
                &k[1],
                &k[2],
                r.bytes_src_to_dst,
                r.bytes_dst_to_src,
            ),
            (
                &dst,
                &k[3],
                &k[4],
                &k[5],
                r.bytes_dst_to_src,
                r.bytes_src_to_dst,
            ),
        ] {
            let n = nodes.entry(id.clone()).or_default();
            n.kind.clone_from(kind);
            n.ns.clone_from(ns);
            n.title = if title.is_empty() {
                kind.clone()
            } else {
                title.clone()
            };
            n.sent += sent;
            n.received += received;
            let b = sent + received;
            match class {
                "INTRA_NODE" | "INTRA_ZONE" => n.intra += b,
                "INTER_ZONE" | "INTER_REGION" => n.cross += b,
                _ => n.external += b,
            }
        }
        let e = edges
            .entry((src, dst))
            .or_insert_with(|| (0, 0, 0.0, class.to_string()));
        e.0 += r.bytes();
        e.1 += r.connections;
        e.2 += r.cost_usd;
        if e.3 != class {
            e.3 = "MIXED".into();
        }
    }
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|(id, n)| {
            let total = (n.intra + n.cross + n.external).max(1) as f64;
            json!({
                "id": id,
                "title": n.title,
                "subTitle": if n.ns.is_empty() { n.kind.clone() } else { n.ns.clone() },
                "mainStat": n.sent as f64 / secs,
                "secondaryStat": n.received as f64 / secs,
                "arc__intra": n.intra as f64 / total,
                "arc__cross": n.cross as f64 / total,
                "arc__external": n.external as f64 / total,
                "detail__kind": n.kind,
                "detail__namespace": n.ns,
            })
        })
        .collect();
    let edges: Vec<Value> = edges
        .into_iter()
        .map(|((src, dst), (bytes, conns, cost, class))| {
            json!({
                "id": format!("{src}->{dst}"),
                "source": src,
                "target": dst,
                "mainStat": bytes as f64 / secs,
                "secondaryStat": class,
                "detail__connections": conns,
                "detail__cost_usd": cost,
                "color": class_color(&class),
            })
        })
        .collect();
    Json(json!({ "nodes": nodes, "edges": edges })).into_response()
}
