//! Cost as a bill has it, computed when queried over the count-once view:
//! `/api/v1/cost/showback` (per namespace, workload or app, JSON or CSV, with the month
//! to date and its projection) and `/api/v1/cost/bill` (per month and price key: tiers,
//! allowance, NAT gateway and endpoint charges). The pricing is
//! [`podflow_enrich::Biller`]'s; this module reads the sums it needs from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use podflow_enrich::{Biller, Month, MonthBill, PriceKey, Processed, Showback, Usage};
use podflow_model::Class;
use podflow_store::query::{self, Dim, GroupQuery, View};
use podflow_store::{FlowStore, StoreError};
use serde_json::{Value, json};

use crate::AppState;
use crate::limits::Lane;
use crate::params::{bad, only, unix_now};
use crate::reader::with_store;

/// The longest range one request bills: 400 days (13 months and some).
pub const MAX_RANGE_S: i64 = 400 * 86_400;

/// Groups one store query may return before the answer says it is cut.
const MAX_GROUPS: usize = 1_000_000;

/// What showback groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum By {
    /// The local end's namespace.
    Namespace,
    /// Its namespace and workload.
    Workload,
    /// Its app label (the first of the config's `app_labels` the pod has).
    App,
}

impl By {
    /// Parses `namespace`, `workload`, `label:app` (or `app`).
    pub fn parse(s: &str) -> Result<By, String> {
        match s {
            "namespace" => Ok(By::Namespace),
            "workload" => Ok(By::Workload),
            "app" | "label:app" => Ok(By::App),
            l if l.starts_with("label:") => Err(format!(
                "`by={l}`: rows keep one label, the app (the first of the config's app_labels the pod carries): use by=label:app"
            )),
            other => Err(format!(
                "`by` must be namespace, workload or label:app (got {other:?})"
            )),
        }
    }

    /// The key's column names.
    pub fn columns(&self) -> Vec<String> {
        match self {
            By::Namespace => vec!["namespace".into()],
            By::Workload => vec!["namespace".into(), "workload".into()],
            By::App => vec!["app".into()],
        }
    }

    fn dims(&self) -> Vec<&'static str> {
        match self {
            By::Namespace => vec!["local_namespace"],
            By::Workload => vec!["local_namespace", "local_workload"],
            By::App => vec!["local_app"],
        }
    }
}

fn dim(name: &str) -> Dim {
    // Only names of `query::local_dim` or `query::dim` are passed here.
    query::local_dim(name)
        .or_else(|| query::dim(name))
        .unwrap_or_else(|| panic!("no dimension {name}"))
}

/// The stored sums the bill of `[from, to)` needs: every month the range touches, whole,
/// per piece; `owner` names the showback key's dimensions (none for the bill alone).
/// Rows whose local address a NAT gateway's subnets may hold (or whose remote address an
/// endpoint's) come a second time, with the address, as [`Processed`]. The flag says a
/// store query reached [`MAX_GROUPS`] groups (the answer is then cut).
pub fn collect(
    st: &dyn FlowStore,
    biller: &Biller,
    from: i64,
    to: i64,
    owner: &[&str],
) -> Result<(Vec<Usage>, Vec<Processed>, bool), StoreError> {
    let mut usage = Vec::new();
    let mut processed = Vec::new();
    let mut cut = false;
    let owner_dims: Vec<Dim> = owner.iter().map(|n| dim(n)).collect();
    let plan = biller.plan();
    let nat_keys = plan.nat_keys();
    let endpoint_keys = plan.endpoint_keys();
    for piece in podflow_enrich::pieces(from, to) {
        let q = |group_by: Vec<Dim>, filters: Vec<(Dim, String)>| GroupQuery {
            from: piece.from,
            to: piece.to,
            group_by,
            filters,
            limit: MAX_GROUPS,
            view: View::Once,
        };
        let mut by = [
            "local_cloud",
            "local_region",
            "class",
            "remote_kind",
            "local_initiated",
        ]
        .map(dim)
        .to_vec();
        by.extend(owner_dims.iter().copied());
        let rows = st.group(&q(by, Vec::new()))?;
        cut |= rows.len() >= MAX_GROUPS;
        for r in rows {
            let [cloud, region, class, remote_kind, init] =
                [0, 1, 2, 3, 4].map(|i| r.key[i].as_str());
            let key = price_key(class, remote_kind);
            let (bytes_out, bytes_in) = if init == "1" {
                (r.bytes_src_to_dst, r.bytes_dst_to_src)
            } else {
                (r.bytes_dst_to_src, r.bytes_src_to_dst)
            };
            usage.push(Usage {
                month: piece.month,
                part: piece.part,
                cloud: cloud.to_string(),
                region: region.to_string(),
                key,
                owner: r.key[5..].to_vec(),
                bytes_out,
                bytes_in,
                estimate_usd: r.cost_usd,
            });
        }
        for (keys, address) in [(&nat_keys, "local_ip"), (&endpoint_keys, "remote_ip")] {
            let mut cs: Vec<Class> = keys.iter().map(|k| k.class()).collect();
            cs.sort();
            cs.dedup();
            for c in cs {
                let mut by = [address, "remote_kind", "remote_name"].map(dim).to_vec();
                by.extend(owner_dims.iter().copied());
                let rows = st.group(&q(by, vec![(dim("class"), c.as_str().to_string())]))?;
                cut |= rows.len() >= MAX_GROUPS;
                for r in rows {
                    let key = price_key(c.as_str(), &r.key[1]);
                    if !keys.contains(&key) {
                        continue;
                    }
                    let Ok(ip) = r.key[0].parse() else {
                        continue;
                    };
                    let (local, remote) = if address == "local_ip" {
                        (Some(ip), None)
                    } else {
                        (None, Some(ip))
                    };
                    processed.push(Processed {
                        month: piece.month,
                        part: piece.part,
                        key,
                        local,
                        remote,
                        remote_name: r.key[2].clone(),
                        owner: r.key[3..].to_vec(),
                        // Processing is charged both ways.
                        bytes: r.bytes(),
                    });
                }
            }
        }
    }
    Ok((usage, processed, cut))
}

/// The price key of a stored class and remote kind: INTRA_VPC to a cloud range is a
/// cloud service in the cluster's own region (the classifier makes it INTRA_VPC only
/// there), as at ingest.
fn price_key(class: &str, remote_kind: &str) -> PriceKey {
    let class = Class::parse(class).unwrap_or(Class::Unknown);
    PriceKey::of(class, remote_kind == "cloud_range")
}

/// `from` and `to` (Unix seconds): given, else `to` now (the open interval included)
/// and `from` `default_from(to)`; at most [`MAX_RANGE_S`] apart.
fn range(
    p: &HashMap<String, String>,
    default_from: impl Fn(i64) -> i64,
) -> Result<(i64, i64), String> {
    let num = |k: &str| -> Result<Option<i64>, String> {
        p.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("`{k}` must be an integer, Unix seconds (got {v:?})"))
            })
            .transpose()
    };
    let to = num("to")?.unwrap_or_else(|| unix_now() + 1);
    let from = num("from")?.unwrap_or_else(|| default_from(to));
    if from >= to {
        return Err(format!("`from` ({from}) must be before `to` ({to})"));
    }
    if to.saturating_sub(from) > MAX_RANGE_S {
        return Err(format!(
            "the range is {} days: at most {} days are billed at once",
            to.saturating_sub(from) / 86_400,
            MAX_RANGE_S / 86_400
        ));
    }
    Ok((from, to))
}

fn biller(s: &AppState) -> Arc<Biller> {
    s.billing
        .clone()
        .unwrap_or_else(|| Arc::new(Biller::default()))
}

fn prices_json(b: &Biller) -> Value {
    json!({ "source": b.prices().source, "as_of": b.prices().as_of })
}

/// `GET /api/v1/cost/showback?from=&to=&by=namespace|workload|label:app&format=json|csv`.
pub async fn showback(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = only(&p, &["from", "to", "by", "format"]) {
        return bad(e);
    }
    let by = match By::parse(p.get("by").map_or("namespace", String::as_str)) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let csv = match p.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => return bad(format!("`format` must be json or csv (got {f:?})")),
    };
    let (from, to) = match range(&p, |to| to - 30 * 86_400) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let b = biller(&s);
    let bb = Arc::clone(&b);
    let owner = by.dims();
    let now = unix_now();
    let columns = by.columns();
    let cols = columns.clone();
    let answer = with_store(&s, Lane::Expensive, move |st| {
        let (usage, processed, cut) = collect(st, &bb, from, to, &owner)?;
        Ok((bb.showback(cols, &usage, &processed, (from, to), now), cut))
    })
    .await;
    let (sb, cut) = match answer {
        Ok(x) => x,
        Err(r) => return r,
    };
    if csv {
        return (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            showback_csv(&sb),
        )
            .into_response();
    }
    Json(showback_json(&sb, &b, cut)).into_response()
}

/// The showback as JSON: rows keyed by column name.
fn showback_json(sb: &Showback, b: &Biller, cut: bool) -> Value {
    let rows: Vec<Value> = sb
        .rows
        .iter()
        .map(|r| {
            let key: BTreeMap<&str, &str> = sb
                .by
                .iter()
                .map(String::as_str)
                .zip(r.key.iter().map(String::as_str))
                .collect();
            json!({
                "key": key,
                "bytes": r.bytes,
                "bytes_out": r.bytes_out,
                "bytes_in": r.bytes_in,
                "transfer_usd": r.transfer_usd,
                "processing_usd": r.processing_usd,
                "cost_usd": r.cost_usd,
                "share": r.share,
                "estimate_usd": r.estimate_usd,
            })
        })
        .collect();
    json!({
        "from": sb.from,
        "to": sb.to,
        "view": View::Once,
        "by": sb.by,
        "rows": rows,
        "totals": sb.totals,
        "months": sb.months,
        "month_to_date": sb.month_to_date,
        "prices": prices_json(b),
        "truncated": cut,
    })
}

/// One CSV field (RFC 4180: quoted when it holds a comma, a quote or a line break).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The showback as CSV: a header, then one line per row (no total line: the rows sum to
/// the JSON's totals).
pub fn showback_csv(sb: &Showback) -> String {
    let mut out: Vec<String> = sb.by.iter().map(|c| field(c)).collect();
    out.extend(
        [
            "bytes",
            "bytes_out",
            "bytes_in",
            "transfer_usd",
            "processing_usd",
            "cost_usd",
            "share",
        ]
        .map(String::from),
    );
    let mut text = out.join(",") + "\n";
    for r in &sb.rows {
        let mut cells: Vec<String> = r.key.iter().map(|k| field(k)).collect();
        cells.extend([
            r.bytes.to_string(),
            r.bytes_out.to_string(),
            r.bytes_in.to_string(),
            r.transfer_usd.to_string(),
            r.processing_usd.to_string(),
            r.cost_usd.to_string(),
            r.share.to_string(),
        ]);
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

/// `GET /api/v1/cost/bill?from=&to=`: every calendar month the range touches, whole.
pub async fn bill(
    State(s): State<Arc<AppState>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = only(&p, &["from", "to"]) {
        return bad(e);
    }
    let (from, to) = match range(&p, |to| Month::of(to - 1).start()) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let b = biller(&s);
    let bb = Arc::clone(&b);
    let answer = with_store(&s, Lane::Expensive, move |st| {
        let (usage, processed, cut) = collect(st, &bb, from, to, &[])?;
        let months = Month::overlapping(from, to);
        Ok((bb.bills(&months, &usage, &processed), cut))
    })
    .await;
    let (months, cut): (Vec<MonthBill>, bool) = match answer {
        Ok(x) => x,
        Err(r) => return r,
    };
    let total: f64 = months.iter().map(|m| m.total_usd).sum();
    let estimate: f64 = months.iter().map(|m| m.estimate_usd).sum();
    Json(json!({
        "from": from,
        "to": to,
        "view": View::Once,
        "months": months,
        "total_usd": total,
        "estimate_usd": estimate,
        "prices": prices_json(&b),
        "truncated": cut,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        assert_eq!(field("shop"), "shop");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert!(
            By::parse("label:team")
                .expect_err("team")
                .contains("label:app")
        );
        assert_eq!(By::parse("label:app"), Ok(By::App));
    }
}
