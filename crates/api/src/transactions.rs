//! K8sConntrack-style `/transactions`: per Service and per endpoint (the backend that
//! answered), new connections, bytes and packets per second over the last window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use podflow_store::query::{self, GroupQuery, View};
use serde_json::{Value, json};

use crate::AppState;
use crate::params::{bad, only, unix_now, window};
use crate::reader::group;

/// `GET /transactions?window=60` (K8sConntrack-style): per Service and per endpoint
/// (the backend that answered), new connections, bytes and packets per second over the
/// last `window` seconds (at most 3600; at most 10000 endpoints).
pub async fn transactions(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = only(&p, &["window"]) {
        return bad(e);
    }
    let window = match window(&p, 3600) {
        Ok(w) => w,
        Err(e) => return bad(e),
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
    let rows = match group(&s, q).await {
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
