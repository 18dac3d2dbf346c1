//! The grouped query API: `/api/v1/query` (flows grouped by any dimensions, counted once
//! or per observer) and `/api/v1/dimensions`.

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
    let rows = match group(&s, q.clone()).await {
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
