//! `GET /api/v1/cost/services`: avoidable cross-zone traffic per Service, counted once —
//! per Service its bytes and cost, what crossed zones, and what crossed zones while a
//! Ready backend was in the client's zone (docs/api.md; the rule in docs/attribution.md).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use podflow_store::avoidable::{service_costs, service_query};

use crate::AppState;
use crate::params::{bad, only, parse, unix_now};
use crate::reader::group;

/// `GET /api/v1/cost/services?from=&to=&limit=&namespace=`.
pub async fn services(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = only(&p, &["from", "to", "limit", "namespace"]) {
        return bad(e);
    }
    let mut range = p.clone();
    let namespace = range.remove("namespace").filter(|n| !n.is_empty());
    // The range and limit as every data endpoint reads them (last hour, 100 rows).
    let q = match parse(&range, &[], false) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let rows = match group(&s, service_query(q.from, q.to, namespace.as_deref())).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let costs = service_costs(&rows, q.from, q.to, unix_now(), q.limit);
    let mut v = serde_json::to_value(costs).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("view".into(), "once".into());
        o.insert("namespace".into(), namespace.into());
    }
    Json(v).into_response()
}
