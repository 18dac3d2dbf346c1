//! The query API (`/api/v1/query`, `/api/v1/dimensions`) and the Grafana Node Graph API
//! datasource endpoints (`/api/health`, `/api/graph/fields`, `/api/graph/data`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use podflow_store::query::{self, GroupQuery, GroupRow, View};
use serde_json::{Value, json};

use crate::http::AppState;

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

fn unix_now() -> i64 {
    crate::pipeline::unix_now()
}

/// Runs a grouped query on the store's reader connection.
async fn run_query(s: &Arc<AppState>, q: GroupQuery) -> Result<Vec<GroupRow>, Response> {
    crate::http::with_store(s, move |st| st.group(&q)).await
}

/// Parses the common parameters; every other parameter must be a dimension filter.
fn parse(
    p: &HashMap<String, String>,
    default_group: &[&str],
    unit_ms: bool,
) -> Result<GroupQuery, String> {
    let num = |k: &str| -> Result<Option<i64>, String> {
        p.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("`{k}` must be an integer (got {v:?})"))
            })
            .transpose()
    };
    let scale = if unit_ms { 1000 } else { 1 };
    let now = unix_now();
    let from = num("from")?.map(|v| v / scale).unwrap_or(now - 3600);
    let to = num("to")?
        .map(|v| v / scale + i64::from(unit_ms))
        .unwrap_or(now + 1);
    if from >= to {
        return Err(format!("`from` ({from}) must be before `to` ({to})"));
    }
    let limit = num("limit")?.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(format!("`limit` ({limit}) must be between 1 and 10000"));
    }
    let view = match p.get("view").map(String::as_str) {
        None | Some("once") => View::Once,
        Some("raw") => View::Raw,
        Some(v) => return Err(format!("`view` must be raw or once (got {v:?})")),
    };
    let names: Vec<&str> = match p.get("group_by") {
        Some(g) => g
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => default_group.to_vec(),
    };
    let mut group_by = Vec::new();
    for n in names {
        group_by.push(query::dim(n).ok_or_else(|| {
            format!("unknown dimension `{n}` in group_by (see /api/v1/dimensions)")
        })?);
    }
    let mut filters = Vec::new();
    for (k, v) in p {
        if matches!(
            k.as_str(),
            "from" | "to" | "limit" | "view" | "group_by" | "namespace"
        ) {
            continue;
        }
        let d = query::dim(k).ok_or_else(|| {
            format!(
                "unknown parameter `{k}` (a filter must be a dimension, see /api/v1/dimensions)"
            )
        })?;
        filters.push((d, v.clone()));
    }
    filters.sort_by_key(|(d, _)| d.name);
    Ok(GroupQuery {
        from,
        to,
        group_by,
        filters,
        limit: limit as usize,
        view,
    })
}

/// `GET /api/v1/dimensions`.
pub async fn dimensions() -> Json<Value> {
    Json(json!(
        query::dimensions().map(|d| d.name).collect::<Vec<_>>()
    ))
}

/// `GET /api/v1/query`.
pub async fn query(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let q = match parse(
        &p,
        &[
            "src_namespace",
            "src_workload",
            "dst_namespace",
            "dst_workload",
            "class",
        ],
        false,
    ) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let rows = match run_query(&s, q.clone()).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let names: Vec<&str> = q.group_by.iter().map(|d| d.name).collect();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let key: BTreeMap<&str, &String> = names.iter().copied().zip(r.key.iter()).collect();
            json!({
                "key": key,
                "bytes_src_to_dst": r.bytes_src_to_dst,
                "bytes_dst_to_src": r.bytes_dst_to_src,
                "packets_src_to_dst": r.packets_src_to_dst,
                "packets_dst_to_src": r.packets_dst_to_src,
                "connections": r.connections,
                "connections_closed": r.closed,
                "cost_usd": r.cost_usd,
            })
        })
        .collect();
    Json(json!({ "from": q.from, "to": q.to, "view": q.view, "group_by": names, "rows": rows }))
        .into_response()
}

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
    let rows = match run_query(&s, q.clone()).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let ns_filter = p.get("namespace").filter(|n| !n.is_empty());
    let secs = (q.to - q.from).max(1) as f64;
    let mut nodes: BTreeMap<String, NodeAcc> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), (u64, u64, f64, String)> = BTreeMap::new();
    for r in rows {
        let k = &r.key;
        if ns_filter.is_some_and(|n| &k[1] != n && &k[4] != n) {
            continue;
        }
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

/// `GET /transactions?window=60` (K8sConntrack-style): per Service and per endpoint
/// (the backend that answered), new connections, bytes and packets per second over the
/// last `window` seconds (at most 3600; at most 10000 endpoints).
pub async fn transactions(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let window = match p.get("window").map(|w| w.parse::<i64>()) {
        None => 60,
        Some(Ok(w)) if (1..=3600).contains(&w) => w,
        Some(_) => {
            return bad(format!(
                "`window` must be 1..=3600 seconds (got {:?})",
                p.get("window")
            ));
        }
    };
    let now = unix_now();
    let group_by = [
        "service_namespace",
        "service_name",
        "dst_name",
        "dst_ip",
        "dst_port",
    ]
    .iter()
    .filter_map(|n| query::dim(n))
    .collect();
    let q = GroupQuery {
        from: now - window,
        to: now + 1,
        group_by,
        filters: Vec::new(),
        limit: 10_000,
        view: View::Once,
    };
    let rows = match run_query(&s, q).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let secs = window as f64;
    let mut services: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.key[1].is_empty()) {
        services
            .entry((r.key[0].clone(), r.key[1].clone()))
            .or_default()
            .push(json!({
                "pod": r.key[2],
                "ip": r.key[3],
                "port": r.key[4].parse::<u16>().unwrap_or(0),
                "connections": r.connections,
                "connections_per_sec": r.connections as f64 / secs,
                "bytes_per_sec": r.bytes() as f64 / secs,
                "packets_per_sec": (r.packets_src_to_dst + r.packets_dst_to_src) as f64 / secs,
            }));
    }
    let services: Vec<Value> = services
        .into_iter()
        .map(|((ns, name), endpoints)| json!({ "namespace": ns, "name": name, "endpoints": endpoints }))
        .collect();
    Json(json!({ "window_seconds": window, "services": services })).into_response()
}
