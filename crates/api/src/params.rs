//! Query-string parsing every endpoint shares, and the 400 answer naming what was wrong.

use std::collections::HashMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use podflow_store::query::{self, GroupQuery, View};

/// A 400 answer whose body names the parameter that was wrong.
pub(crate) fn bad(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// Now, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `Err` naming the first parameter not in `known`.
pub(crate) fn only(p: &HashMap<String, String>, known: &[&str]) -> Result<(), String> {
    match p.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown parameter `{k}` (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// The `window` parameter, seconds: 60 when absent, else 1..=`max`.
pub(crate) fn window(p: &HashMap<String, String>, max: i64) -> Result<i64, String> {
    match p.get("window").map(|w| w.parse::<i64>()) {
        None => Ok(60),
        Some(Ok(w)) if (1..=max).contains(&w) => Ok(w),
        Some(_) => Err(format!(
            "`window` must be 1..={max} seconds (got {:?})",
            p.get("window")
        )),
    }
}

/// Parses the common parameters; every other parameter must be a dimension filter.
pub(crate) fn parse(
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
        if matches!(k.as_str(), "from" | "to" | "limit" | "view" | "group_by") {
            continue;
        }
        if k == "namespace" {
            return Err(
                "`namespace` is not a filter of this endpoint: use src_namespace= and/or dst_namespace="
                    .into(),
            );
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
