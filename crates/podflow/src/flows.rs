//! `podflow flows`: the top conversations of a running podflow, as a table.

use std::time::Duration;

use anyhow::Context;
use podflow_api::{EndJson, FlowJson};

/// Fetches `/api/v1/flows` from `base` (http://host:port) over the last `since`.
pub fn fetch(base: &str, since: Duration, limit: usize) -> anyhow::Result<Vec<FlowJson>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let from = now - since.as_secs() as i64;
    let path = format!("/api/v1/flows?from={from}&to={}&limit={limit}", now + 1);
    let body = crate::client::Request {
        base,
        flag: "--url",
        method: "GET",
        path: &path,
        token: None,
        json: None,
        timeout: Duration::from_secs(30),
    }
    .ok()?;
    serde_json::from_str(&body).with_context(|| format!("{base}{path}: unexpected JSON"))
}

/// Human bytes: 1.5 KiB, 3.2 MiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A row end by name when the inventory knows it (`namespace/pod`, a node, a cloud
/// service), else by address.
fn who(addr: &str, meta: &EndJson) -> String {
    match meta.kind.as_str() {
        "pod" | "service" => format!("{}/{}", meta.namespace, meta.name),
        "node" | "known_network" | "cloud_range" if !meta.name.is_empty() => {
            format!("{} ({addr})", meta.name)
        }
        _ => addr.to_string(),
    }
}

fn endpoint(addr: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if addr.contains(':') => format!("[{addr}]:{p}"),
        Some(p) => format!("{addr}:{p}"),
        None => addr.to_string(),
    }
}

/// The table: initiator → responder, protocol, bytes each way, connections.
pub fn render(rows: &[FlowJson]) -> String {
    let mut lines = vec![[
        "INITIATOR".to_string(),
        "RESPONDER".to_string(),
        "PROTO".to_string(),
        "SENT".to_string(),
        "RECEIVED".to_string(),
        "CONNS".to_string(),
        "CLASS".to_string(),
        "COST".to_string(),
        "VIA SERVICE".to_string(),
    ]];
    for r in rows {
        let port = (r.responder_port != 0).then_some(r.responder_port);
        let local = who(&r.local, &r.local_meta);
        let remote = who(&r.remote, &r.remote_meta);
        let (init, resp, sent, recv) = if r.local_initiated {
            (local, endpoint(&remote, port), r.bytes_out, r.bytes_in)
        } else {
            (remote, endpoint(&local, port), r.bytes_in, r.bytes_out)
        };
        lines.push([
            init,
            resp,
            r.proto.clone(),
            human_bytes(sent),
            human_bytes(recv),
            r.connections_opened.to_string(),
            r.class.clone(),
            format!("${:.4}", r.cost_usd),
            r.service_name
                .clone()
                .or_else(|| r.service.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 9];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no flows in this range)\n");
    }
    out
}

/// POSTs `body` (JSON) to `base` (http://host:port) + `path`, with `token` as the bearer
/// token if given; the status and body of the answer.
pub fn post_json(
    base: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    crate::client::Request {
        base,
        flag: "--server",
        method: "POST",
        path,
        token,
        json: Some(body),
        timeout: Duration::from_secs(30),
    }
    .send()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reads_initiator_to_responder() {
        let row = FlowJson {
            observer: "n".into(),
            proto: "tcp".into(),
            local: "10.0.0.1".into(),
            remote: "10.0.0.2".into(),
            responder_port: 22,
            local_initiated: false,
            service: None,
            bytes_out: 2048,
            packets_out: 2,
            bytes_in: 10,
            packets_in: 1,
            connections_opened: 3,
            connections_closed: 3,
            first: 0,
            last: 10,
            class: "INTRA_ZONE".into(),
            cost_usd: 0.0,
            local_meta: EndJson::default(),
            remote_meta: EndJson {
                kind: "pod".into(),
                namespace: "shop".into(),
                name: "web-1".into(),
                ..Default::default()
            },
            service_name: None,
        };
        let t = render(&[row]);
        let line = t.lines().nth(1).expect("row");
        assert!(line.starts_with("shop/web-1"), "{line}");
        assert!(line.contains("INTRA_ZONE"), "{line}");
        assert!(line.contains("10.0.0.1:22"));
        assert!(line.contains("10 B") && line.contains("2.0 KiB"), "{line}");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
