//! `/api/v1/flows` (rows per observer and key over a range) and K8sConntrack-style
//! `/flows` (the last `window` seconds).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use podflow_store::FlowQuery;
use serde::Deserialize;

use crate::AppState;
use crate::json::FlowJson;
use crate::limits::Lane;
use crate::params::{bad, only, unix_now, window};
use crate::reader::with_store;

/// `/api/v1/flows` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowParams {
    /// Start, Unix seconds (default: an hour ago).
    pub from: Option<i64>,
    /// End, Unix seconds, exclusive (default: now, open interval included).
    pub to: Option<i64>,
    /// Maximum rows, 1..=10000 (default 100).
    pub limit: Option<usize>,
}

/// `GET /flows?window=60&limit=100` (K8sConntrack-style): the conversations of the last
/// `window` seconds, the same rows as `/api/v1/flows`.
pub(crate) async fn recent_flows(
    State(s): State<Arc<AppState>>,
    Query(p): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(e) = only(&p, &["window", "limit"]) {
        return bad(e);
    }
    let window = match window(&p, 86_400) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let limit = match p.get("limit").map(|l| l.parse::<usize>()) {
        None => Some(100),
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            return bad(format!(
                "`limit` must be a number (got {:?})",
                p.get("limit")
            ));
        }
    };
    let now = unix_now();
    flows(
        State(s),
        Ok(Query(FlowParams {
            from: Some(now - window),
            to: Some(now + 1),
            limit,
        })),
    )
    .await
}

pub(crate) async fn flows(
    State(s): State<Arc<AppState>>,
    q: Result<Query<FlowParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return bad(format!("bad query string: {}", e.body_text())),
    };
    let now = unix_now();
    let to = p.to.unwrap_or(now + 1);
    let from = p.from.unwrap_or(now - 3600);
    let limit = p.limit.unwrap_or(100);
    if from >= to {
        return bad(format!("`from` ({from}) must be before `to` ({to})"));
    }
    if !(1..=10_000).contains(&limit) {
        return bad(format!("`limit` ({limit}) must be between 1 and 10000"));
    }
    match with_store(&s, Lane::Cheap, move |st| {
        st.flows(&FlowQuery { from, to, limit })
    })
    .await
    {
        Ok(rows) => Json(rows.into_iter().map(FlowJson::from).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}
