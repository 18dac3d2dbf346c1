//! `podflow cost`: the showback of a running podflow (`/api/v1/cost/showback`) as a
//! table, CSV or JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::flows::human_bytes;

/// How `podflow cost` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, totals, the month to date and its projection.
    Table,
    /// The API's CSV, as is.
    Csv,
    /// The API's JSON, pretty.
    Json,
}

/// GETs `path` from `base` (http://host:port), with a bearer token if given; the body.
pub fn get(base: &str, path: &str, token_file: Option<&Path>) -> anyhow::Result<String> {
    let token = token_file
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("--token-file {}", f.display()))
        })
        .transpose()?;
    crate::client::Request {
        base,
        flag: "--server",
        method: "GET",
        path,
        token: token.as_deref(),
        json: None,
        timeout: Duration::from_secs(60),
    }
    .ok()
}

/// The showback's path over the last `since`, ending `now`.
pub fn path(now: i64, since: Duration, by: &str, format: Format) -> String {
    let from = now - since.as_secs() as i64;
    let f = if format == Format::Csv { "csv" } else { "json" };
    format!(
        "/api/v1/cost/showback?from={from}&to={}&by={by}&format={f}",
        now + 1
    )
}

fn usd(v: &Value) -> String {
    format!("${:.2}", v.as_f64().unwrap_or(0.0))
}

/// The showback JSON as a table: one line per row (largest cost first), the total, and
/// the month to date with its projection.
pub fn render(v: &Value) -> anyhow::Result<String> {
    let by: Vec<String> = v["by"]
        .as_array()
        .context("the answer has no `by`")?
        .iter()
        .filter_map(|b| b.as_str().map(str::to_string))
        .collect();
    let rows = v["rows"].as_array().context("the answer has no `rows`")?;
    let mut lines: Vec<Vec<String>> = vec![
        by.iter()
            .map(|b| b.to_uppercase())
            .chain(
                ["BYTES", "TRANSFER", "PROCESSING", "COST", "SHARE"]
                    .iter()
                    .map(|s| s.to_string()),
            )
            .collect(),
    ];
    for r in rows {
        let mut l: Vec<String> = by
            .iter()
            .map(|b| match r["key"][b].as_str() {
                Some("") | None => "-".to_string(),
                Some(s) => s.to_string(),
            })
            .collect();
        l.extend([
            human_bytes(r["bytes"].as_u64().unwrap_or(0)),
            usd(&r["transfer_usd"]),
            usd(&r["processing_usd"]),
            usd(&r["cost_usd"]),
            format!("{:.1}%", r["share"].as_f64().unwrap_or(0.0) * 100.0),
        ]);
        lines.push(l);
    }
    let t = &v["totals"];
    let mut total: Vec<String> = vec!["TOTAL".to_string()];
    total.extend(std::iter::repeat_n(
        String::new(),
        by.len().saturating_sub(1),
    ));
    total.extend([
        human_bytes(t["bytes"].as_u64().unwrap_or(0)),
        usd(&t["transfer_usd"]),
        usd(&t["processing_usd"]),
        usd(&t["cost_usd"]),
        String::new(),
    ]);
    lines.push(total);
    let n = lines[0].len();
    let mut widths = vec![0usize; n];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(j, (c, w))| {
                // Text left, figures right.
                if j < by.len() {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        if i + 1 == lines.len() && !rows.is_empty() {
            out.push('\n');
        }
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no traffic in this range)\n");
    }
    let m = &v["month_to_date"];
    out.push_str(&format!(
        "\n{} to date: {} ({:.0}% of the month); projected for the month: {}\n",
        m["month"].as_str().unwrap_or("?"),
        usd(&m["cost_usd"]),
        m["elapsed_fraction"].as_f64().unwrap_or(0.0) * 100.0,
        usd(&m["projected_usd"]),
    ));
    out.push_str(&format!(
        "Count-once view; each month's blended rate (tiers, allowances, NAT); prices {} as of {}.\n",
        v["prices"]["source"].as_str().unwrap_or("?"),
        v["prices"]["as_of"].as_str().unwrap_or("?"),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_row_the_total_and_the_projection() {
        let v: Value = serde_json::from_str(
            r#"{"by": ["namespace", "workload"],
                "rows": [
                  {"key": {"namespace": "shop", "workload": "web"}, "bytes": 2199023255552,
                   "transfer_usd": 100.5, "processing_usd": 2.25, "cost_usd": 102.75, "share": 0.75},
                  {"key": {"namespace": "", "workload": "node-a"}, "bytes": 1024,
                   "transfer_usd": 34.25, "processing_usd": 0.0, "cost_usd": 34.25, "share": 0.25}],
                "totals": {"bytes": 2199023256576, "transfer_usd": 134.75, "processing_usd": 2.25,
                           "cost_usd": 137.0},
                "month_to_date": {"month": "2025-02", "cost_usd": 50.0, "projected_usd": 100.0,
                                  "elapsed_fraction": 0.5},
                "prices": {"source": "list", "as_of": "2025-01-15"}}"#,
        )
        .expect("json");
        let t = render(&v).expect("table");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  WORKLOAD"), "{t}");
        assert!(lines[1].starts_with("shop       web"), "{t}");
        assert!(
            lines[1].contains("2.0 TiB") && lines[1].ends_with("$102.75  75.0%"),
            "{t}"
        );
        assert!(lines[2].starts_with("-          node-a"), "{t}");
        assert!(
            lines[4].starts_with("TOTAL") && lines[4].contains("$137.00"),
            "{t}"
        );
        assert!(
            t.contains(
                "2025-02 to date: $50.00 (50% of the month); projected for the month: $100.00"
            ),
            "{t}"
        );
        assert_eq!(
            path(
                1_000_000,
                Duration::from_secs(86_400),
                "namespace",
                Format::Csv
            ),
            "/api/v1/cost/showback?from=913600&to=1000001&by=namespace&format=csv"
        );
    }
}
