//! Network health beside the traffic: `/api/v1/probes` (probe history grouped by zone
//! or node pair and kind) and `/api/v1/pairs` (per zone or node pair: bytes each way,
//! connections and cost, counted once, next to RTT p50/p99, loss and failures over the
//! same range).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use podflow_store::probes::{self as store_probes, ProbeGroup, ProbeQuery};
use podflow_store::query::{self, GroupQuery, View};
use serde_json::{Value, json};

use crate::AppState;
use crate::limits::{Failure, Lane, bounded};
use crate::params::{bad, unix_now};
use crate::reader::group;

/// The range parameters (`from`, `to`: Unix seconds; default the last hour).
fn range(p: &HashMap<String, String>) -> Result<(i64, i64), String> {
    let num = |k: &str| -> Result<Option<i64>, String> {
        p.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("`{k}` must be an integer (got {v:?})"))
            })
            .transpose()
    };
    let now = unix_now();
    let from = num("from")?.unwrap_or(now - 3600);
    let to = num("to")?.unwrap_or(now + 1);
    if from >= to {
        return Err(format!("`from` ({from}) must be before `to` ({to})"));
    }
    Ok((from, to))
}

fn dims(list: &str) -> Result<Vec<&'static str>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| {
            store_probes::DIMENSIONS
                .iter()
                .find(|x| **x == d)
                .copied()
                .ok_or_else(|| {
                    format!(
                        "unknown dimension `{d}` (known: {})",
                        store_probes::DIMENSIONS.join(", ")
                    )
                })
        })
        .collect()
}

/// Runs a probe query on the state's probe reader, on a blocking thread in the
/// expensive lane.
async fn run(s: &Arc<AppState>, q: ProbeQuery) -> Result<Vec<ProbeGroup>, Response> {
    let st = Arc::clone(s);
    bounded(Lane::Expensive, move |_, _| {
        let reader = st.probes.as_ref().ok_or(Failure::NotServed(
            "this process keeps no probe history (probes are stored by the server)",
        ))?;
        match reader.lock() {
            Ok(r) => r.probes(&q).map_err(|e| Failure::Store(e.to_string())),
            Err(_) => Err(Failure::Store("probe reader lock poisoned".into())),
        }
    })
    .await
}

/// A group's health figures as JSON.
fn health(g: &ProbeGroup) -> Value {
    json!({
        "probes": g.count,
        "failures": g.failures,
        "unavailable": g.unavailable,
        "packets_sent": g.sent,
        "packets_lost": g.lost,
        "loss": g.loss(),
        "rtt_p50_seconds": g.rtt_quantile_s(0.5),
        "rtt_p99_seconds": g.rtt_quantile_s(0.99),
        "rtt_mean_seconds": g.rtt_mean_s(),
        "rtt_min_seconds": (g.rtt_count > 0).then(|| g.rtt_min_ns as f64 / 1e9),
        "rtt_max_seconds": (g.rtt_count > 0).then(|| g.rtt_max_ns as f64 / 1e9),
    })
}

/// `GET /api/v1/probes?group_by=src_zone,dst_zone&from=&to=&kind=udp&src_node=...`.
pub async fn probes(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let (from, to) = match range(&p) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let group_by = match dims(p.get("group_by").map_or("src_zone,dst_zone", |g| g)) {
        Ok(d) => d,
        Err(e) => return bad(e),
    };
    let mut filters = Vec::new();
    for (k, v) in &p {
        if matches!(k.as_str(), "from" | "to" | "group_by") {
            continue;
        }
        match store_probes::DIMENSIONS.iter().find(|d| **d == k) {
            Some(d) => filters.push((*d, v.clone())),
            None => {
                return bad(format!(
                    "unknown parameter `{k}` (from, to, group_by, or a dimension: {})",
                    store_probes::DIMENSIONS.join(", ")
                ));
            }
        }
    }
    filters.sort();
    let q = ProbeQuery {
        from,
        to,
        group_by: group_by.clone(),
        filters,
    };
    let rows = match run(&s, q).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let rows: Vec<Value> = rows
        .iter()
        .map(|g| {
            let key: BTreeMap<&str, &String> = group_by.iter().copied().zip(&g.key).collect();
            let mut v = health(g);
            v["key"] = json!(key);
            v
        })
        .collect();
    Json(json!({ "from": from, "to": to, "group_by": group_by, "rows": rows })).into_response()
}

/// `GET /api/v1/pairs?level=zone|node&from=&to=&src_zone=&dst_zone=`: traffic and
/// health per pair (the zone filters keep the pairs whose ends are in those zones: a
/// zone pair's node pairs).
pub async fn pairs(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    for k in p.keys() {
        if !matches!(
            k.as_str(),
            "from" | "to" | "level" | "src_zone" | "dst_zone"
        ) {
            return bad(format!(
                "unknown parameter `{k}` (from, to, level, src_zone, dst_zone)"
            ));
        }
    }
    let mut zone_filters: Vec<(&'static str, String)> = Vec::new();
    for k in ["src_zone", "dst_zone"] {
        if let Some(v) = p.get(k) {
            zone_filters.push((k, v.clone()));
        }
    }
    let (from, to) = match range(&p) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let level = match p.get("level").map(String::as_str) {
        None | Some("zone") => "zone",
        Some("node") => "node",
        Some(l) => return bad(format!("`level` must be zone or node (got {l:?})")),
    };
    let (src, dst): (&'static str, &'static str) = if level == "zone" {
        ("src_zone", "dst_zone")
    } else {
        ("src_node", "dst_node")
    };
    let flow_q = GroupQuery {
        from,
        to,
        group_by: [src, dst].iter().filter_map(|n| query::dim(n)).collect(),
        filters: zone_filters
            .iter()
            .filter_map(|(k, v)| Some((query::dim(k)?, v.clone())))
            .collect(),
        limit: 10_000,
        view: View::Once,
    };
    let flows = match group(&s, flow_q).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let health_q = |kind: Option<&str>| ProbeQuery {
        from,
        to,
        group_by: vec![src, dst],
        filters: {
            let mut f = zone_filters.clone();
            if let Some(k) = kind {
                f.push(("kind", k.to_string()));
            }
            f.sort();
            f
        },
    };
    // RTT and loss from the UDP bursts; failures over every kind. A process that keeps
    // no probe history (`podflow run`) answers the traffic alone.
    let (udp, all) = if s.probes.is_none() {
        (Vec::new(), Vec::new())
    } else {
        match (
            run(&s, health_q(Some("udp"))).await,
            run(&s, health_q(None)).await,
        ) {
            (Ok(u), Ok(a)) => (u, a),
            (Err(r), _) | (_, Err(r)) => return r,
        }
    };
    let mut out: BTreeMap<(String, String), Value> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<(String, String), Value>, a: &str, b: &str| {
        out.entry((a.to_string(), b.to_string()))
            .or_insert_with(|| {
                json!({
                    "src": a, "dst": b,
                    "bytes_src_to_dst": 0, "bytes_dst_to_src": 0, "connections": 0, "cost_usd": 0.0,
                    "probes": 0, "failures": 0, "loss": null,
                    "rtt_p50_seconds": null, "rtt_p99_seconds": null,
                })
            })
            .clone()
    };
    for f in &flows {
        let (a, b) = (&f.key[0], &f.key[1]);
        let mut v = entry(&mut out, a, b);
        v["bytes_src_to_dst"] = json!(f.bytes_src_to_dst);
        v["bytes_dst_to_src"] = json!(f.bytes_dst_to_src);
        v["connections"] = json!(f.connections);
        v["cost_usd"] = json!(f.cost_usd);
        out.insert((a.clone(), b.clone()), v);
    }
    for g in &all {
        let mut v = entry(&mut out, &g.key[0], &g.key[1]);
        v["probes"] = json!(g.count);
        v["failures"] = json!(g.failures);
        out.insert((g.key[0].clone(), g.key[1].clone()), v);
    }
    for g in &udp {
        let mut v = entry(&mut out, &g.key[0], &g.key[1]);
        v["loss"] = json!(g.loss());
        v["packets_sent"] = json!(g.sent);
        v["packets_lost"] = json!(g.lost);
        v["rtt_p50_seconds"] = json!(g.rtt_quantile_s(0.5));
        v["rtt_p99_seconds"] = json!(g.rtt_quantile_s(0.99));
        out.insert((g.key[0].clone(), g.key[1].clone()), v);
    }
    let pairs: Vec<Value> = out.into_values().collect();
    Json(json!({ "from": from, "to": to, "level": level, "pairs": pairs })).into_response()
}
