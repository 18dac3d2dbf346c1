//! The ClickHouse store's queries as SQL text: the flows query, the grouped query with
//! an expression for each query dimension (giving the embedded store's text), expiry.
//! Values are bound (`?`), never spliced; names come from the checked configuration.

use podflow_model::Protocol;

use super::config::ClickHouseConfig;
use super::schema::{label_column, on_cluster};
use crate::columns::LABELS;
use crate::query::{self, GroupQuery, View};

/// Totals per observer and key over a time range (bound: from, to, limit).
pub(super) fn flows_sql(db: &str, table: &str) -> String {
    // Labels: max() over the group, like the embedded store, so both agree; one tuple
    // in [`LABELS`] order. Aliases differ
    // from column names (an alias equal to a column would shadow it inside the sums).
    format!(
        "SELECT observer, proto, local_addr, remote_addr, responder_port, local_initiated, \
         service_addr, service_port, local_prefix_len, remote_prefix_len, \
         sum(bytes_out) AS t_bytes_out, sum(packets_out) AS t_packets_out, \
         sum(bytes_in) AS t_bytes_in, sum(packets_in) AS t_packets_in, \
         sum(conns_opened) AS t_opened, sum(conns_closed) AS t_closed, \
         min(toInt64(intervalStartTime)) AS t_first, \
         max(toInt64(intervalStartTime) + intervalSeconds) AS t_last, \
         sum(cost_usd) AS t_cost_usd, ({labels}) AS l_labels, \
         max(remote_observed) AS l_remote_observed \
         FROM `{db}`.`{table}` \
         WHERE intervalStartTime >= toDateTime(?) AND intervalStartTime < toDateTime(?) \
         GROUP BY observer, proto, local_addr, remote_addr, responder_port, local_initiated, \
         service_addr, service_port, local_prefix_len, remote_prefix_len \
         ORDER BY t_bytes_out + t_bytes_in DESC, t_opened DESC \
         LIMIT ?",
        labels = LABELS
            .iter()
            .map(|c| format!("max({})", label_column(c.name)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Every agent's latest marks row (aliases apart from the column names, which they
/// would shadow inside `argMax`).
pub(super) fn marks_sql(db: &str, table: &str) -> String {
    format!(
        "SELECT agent, argMax(seq, version) AS m_seq, argMax(node, version) AS m_node, \
         argMax(last_seen, version) AS m_last_seen, argMax(pending, version) AS m_pending, \
         max(version) AS m_version FROM `{db}`.`{table}` GROUP BY agent ORDER BY agent"
    )
}

/// An address column as text, as the embedded store writes it: IPv4 (stored mapped) as a
/// dotted quad, IPv6 in RFC 5952 form.
fn ip_text(column: &str) -> String {
    format!("replaceRegexpOne(IPv6NumToString({column}), '^::ffff:([0-9]+[.][0-9.]+)$', '\\\\1')")
}

/// An end's address as text (`local` or `remote`), as the embedded store gives it: the
/// address, or `address/length` on a row summed per network.
fn end_text(end: &str) -> String {
    let t = ip_text(&format!("{end}_addr"));
    format!("if({end}_prefix_len = 0, {t}, concat({t}, '/', toString({end}_prefix_len)))")
}

/// The columns of one end's attribute (`local_` and `remote_`), as ClickHouse expressions.
fn end_columns(attr: &str) -> Option<(String, String)> {
    match attr {
        // The workload, else the name, else the kind: every end has a name to group by.
        "workload" => {
            let w = |e: &str| {
                format!(
                    "multiIf({e}_workload != '', {e}_workload, {e}_name != '', {e}_name, {e}_kind)"
                )
            };
            Some((w("local"), w("remote")))
        }
        "ip" => Some((end_text("local"), end_text("remote"))),
        // A label column of each end.
        _ => {
            let column = |end: &str| {
                LABELS
                    .iter()
                    .find(|c| {
                        c.name.strip_prefix(end).and_then(|a| a.strip_prefix('_')) == Some(attr)
                    })
                    .map(|c| label_column(c.name).to_string())
            };
            Some((column("local")?, column("remote")?))
        }
    }
}

/// The ClickHouse expression of a query dimension ([`query::Dim`]) over this table,
/// giving the same text as the embedded store's expression over its `flows` table.
fn dim_expr(name: &str) -> Option<String> {
    let e = match name {
        "dst_port" => "toString(responder_port)".to_string(),
        "proto" => {
            // The embedded store keeps the number; this table the name (`tcp`, ...).
            let named: Vec<(String, u8)> = (0..=u8::MAX)
                .map(|n| (Protocol(n).name().into_owned(), n))
                .filter(|(s, n)| *s != n.to_string())
                .collect();
            let names: Vec<String> = named.iter().map(|(s, _)| format!("'{s}'")).collect();
            let numbers: Vec<String> = named.iter().map(|(_, n)| format!("'{n}'")).collect();
            format!(
                "transform(CAST(proto AS String), [{}], [{}], CAST(proto AS String))",
                names.join(", "),
                numbers.join(", ")
            )
        }
        "class"
        | "observer"
        | "service_namespace"
        | "service_name"
        | "service_headless"
        | "service_prefers_close"
        | "service_zone_local" => name.to_string(),
        "time_1m" | "time_10m" | "time_1h" | "time_1d" => {
            let step = match name {
                "time_1m" => 60,
                "time_10m" => 600,
                "time_1h" => 3600,
                _ => 86400,
            };
            format!("intDiv(toInt64(intervalStartTime), {step}) * {step}")
        }
        "podflow_probe" => {
            let (l, r) = end_columns("app")?;
            let app = podflow_model::PROBE_APP;
            format!("if({l} = '{app}' AND {r} = '{app}', 'true', 'false')")
        }
        "service_ip" => format!(
            "if(service_addr = toIPv6('::') AND service_port = 0, '', {})",
            ip_text("service_addr")
        ),
        // The bill's dimensions by the stored ends (`query::local_dim`).
        "local_initiated" => "if(local_initiated, '1', '0')".to_string(),
        _ if name.starts_with("local_") || name.starts_with("remote_") => {
            let (end, attr) = name.split_once('_')?;
            let (local, remote) = end_columns(attr)?;
            if end == "local" { local } else { remote }
        }
        _ => {
            // `src_*` is the initiator's end, `dst_*` the responder's.
            let (src, attr) = match name.split_once('_')? {
                ("src", a) => (true, a),
                ("dst", a) => (false, a),
                _ => return None,
            };
            let (local, remote) = end_columns(attr)?;
            let (a, b) = if src {
                (local, remote)
            } else {
                (remote, local)
            };
            format!("if(local_initiated, {a}, {b})")
        }
    };
    Some(format!("CAST({e} AS String)"))
}

/// The grouped query's SQL, with `?` for, in order: from, to, each filter's value, the
/// limit (values are bound, never spliced). `Err` names a dimension without an
/// expression here.
pub(super) fn group_sql(db: &str, table: &str, q: &GroupQuery) -> Result<String, &'static str> {
    let expr = |d: &query::Dim| dim_expr(d.name).ok_or(d.name);
    let keys = q.group_by.iter().map(expr).collect::<Result<Vec<_>, _>>()?;
    let mut wh = vec![
        "intervalStartTime >= toDateTime(?)".to_string(),
        "intervalStartTime < toDateTime(?)".to_string(),
    ];
    if q.view == View::Once {
        wh.push("NOT (remote_observed AND NOT local_initiated)".into());
    }
    for (d, _) in &q.filters {
        wh.push(format!("{} = ?", expr(d)?));
    }
    let group = if keys.is_empty() {
        ""
    } else {
        " GROUP BY g_key"
    };
    // Aliases differ from column names (an alias equal to a column would shadow it).
    Ok(format!(
        "SELECT CAST([{}] AS Array(String)) AS g_key, \
         sum(if(local_initiated, bytes_out, bytes_in)) AS g_bytes_sd, \
         sum(if(local_initiated, bytes_in, bytes_out)) AS g_bytes_ds, \
         sum(if(local_initiated, packets_out, packets_in)) AS g_packets_sd, \
         sum(if(local_initiated, packets_in, packets_out)) AS g_packets_ds, \
         sum(conns_opened) AS g_opened, sum(conns_closed) AS g_closed, \
         sum(cost_usd) AS g_cost_usd \
         FROM `{db}`.`{table}` WHERE {}{group} \
         ORDER BY sum(bytes_out) + sum(bytes_in) DESC LIMIT ?",
        keys.join(", "),
        wh.join(" AND "),
    ))
}

/// How many flow rows (`out` rows, before merges) started before a time (bound).
pub(super) fn count_expired(db: &str, table: &str) -> String {
    format!(
        "SELECT count() FROM `{db}`.`{table}` \
         WHERE intervalStartTime < toDateTime(?) AND direction = 'out'"
    )
}

/// Deletes the rows that started before `before` (a lightweight DELETE; a number, so
/// spliced: mutations take no parameters here).
pub(super) fn expire(cfg: &ClickHouseConfig, before: u32) -> String {
    format!(
        "DELETE FROM `{}`.`{}`{} WHERE intervalStartTime < toDateTime({before})",
        cfg.database,
        cfg.table,
        on_cluster(cfg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_reads_every_label_in_order() {
        let sql = flows_sql("db", "t");
        let labels = sql
            .split_once("t_cost_usd, (")
            .and_then(|(_, r)| r.split_once(") AS l_labels"))
            .map(|(l, _)| l)
            .expect("labels tuple");
        let want: Vec<String> = LABELS
            .iter()
            .map(|c| format!("max({})", label_column(c.name)))
            .collect();
        assert_eq!(labels, want.join(", "));
        assert!(labels.starts_with("max(class), max(local_kind), max(localNamespace), "));
        assert!(labels.ends_with(
            "max(service_namespace), max(service_name), max(service_headless), \
             max(service_prefers_close), max(service_zone_local)"
        ));
    }

    #[test]
    fn every_dimension_has_a_clickhouse_expression() {
        for d in query::dimensions() {
            let e = dim_expr(d.name).unwrap_or_else(|| panic!("no expression for {}", d.name));
            // `?` is the client's placeholder: an expression must not contain one.
            assert!(!e.contains('?'), "{}: {e}", d.name);
        }
        assert_eq!(dim_expr("src_nope"), None);
        assert_eq!(
            dim_expr("dst_zone").as_deref(),
            Some(
                "CAST(if(local_initiated, remoteAvailabilityZone, localAvailabilityZone) AS String)"
            )
        );
        assert_eq!(
            dim_expr("src_workload_kind").as_deref(),
            Some("CAST(if(local_initiated, local_workload_kind, remote_workload_kind) AS String)")
        );
        assert_eq!(dim_expr("bytes"), None);
    }

    #[test]
    fn grouped_sql_binds_every_value() {
        let d = |n| query::dim(n).expect("dim");
        let q = GroupQuery {
            from: 0,
            to: 10,
            group_by: vec![d("src_workload"), d("proto")],
            filters: vec![
                (d("class"), "x' OR 1 --".into()),
                (d("dst_ip"), String::new()),
            ],
            limit: 5,
            view: View::Once,
        };
        let sql = group_sql("db", "t", &q).expect("sql");
        assert_eq!(sql.matches('?').count(), 5, "{sql}");
        assert!(!sql.contains("OR 1"), "{sql}");
        assert!(sql.contains("'tcp'") && sql.contains("'6'"), "{sql}");
        assert!(sql.contains("GROUP BY g_key") && sql.contains("remote_observed"));
        let total = GroupQuery {
            group_by: vec![],
            view: View::Raw,
            ..q
        };
        let sql = group_sql("db", "t", &total).expect("sql");
        assert!(
            !sql.contains("GROUP BY") && !sql.contains("remote_observed"),
            "{sql}"
        );
    }
}
