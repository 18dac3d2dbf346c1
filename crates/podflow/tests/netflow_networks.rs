//! NetFlow flows with no end in the cluster, through the real `podflow server` (its UDP
//! listener, the per-flow sums, attribution, aggregation) into its SQLite file: summed
//! per network (/24, /48) with exact totals by default, kept per address with
//! `--netflow-keep-addresses`; flows with an end in the cluster keep their addresses
//! either way, and an exact-address query never matches a network's row. A connection
//! metered both ways (request and reply records) is one row, its connection counted once.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use podflow_netflow::encode::{Ie, Message, Value, ie};
use podflow_store::{FlowQuery, FlowStore, FlowSummary, SqliteStore};
use podflow_testkit::{ChildGuard, free_port, http_get as get, wait_until};

/// A node and one pod on it: the cluster's only ends.
const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
  status:
    addresses: [{type: InternalIP, address: 10.9.0.1}]
- apiVersion: v1
  kind: Pod
  metadata: {name: web-1, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
  spec: {nodeName: node-a}
  status: {phase: Running, podIP: 10.9.0.10, podIPs: [{ip: 10.9.0.10}]}
"#;

const V4: [Ie; 7] = [
    ie(8, 4),
    ie(12, 4),
    ie(7, 2),
    ie(11, 2),
    ie(4, 1),
    ie(1, 8),
    ie(2, 8),
];
const V6: [Ie; 7] = [
    ie(27, 16),
    ie(28, 16),
    ie(7, 2),
    ie(11, 2),
    ie(4, 1),
    ie(1, 8),
    ie(2, 8),
];

/// One TCP record: `src:sport > dst:dport`, `bytes` in one packet.
fn record(src: &str, sport: u64, dst: &str, dport: u64, bytes: u64) -> Vec<Value> {
    let ip = |s: &str| Value::Ip(s.parse::<IpAddr>().expect("test address"));
    vec![
        ip(src),
        ip(dst),
        Value::U(sport),
        Value::U(dport),
        Value::U(6),
        Value::U(bytes),
        Value::U(1),
    ]
}

/// The flows sent: one with a pod at its end, the rest with none.
fn datagram() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as u32;
    let mut m = Message::ipfix(now, 0, 1);
    m.template(256, &V4).template(257, &V6);
    m.data(
        256,
        &V4,
        &[
            record("10.9.0.10", 40000, "8.8.8.8", 443, 5000),
            record("198.51.100.7", 40000, "203.0.113.9", 443, 1000),
            record("198.51.100.8", 40001, "203.0.113.10", 443, 2000),
            record("198.51.100.9", 40002, "203.0.113.11", 80, 4000),
            record("192.0.2.1", 40003, "203.0.113.9", 443, 300),
        ],
    );
    m.data(
        257,
        &V6,
        &[
            record("2001:db8:1:1::5", 40000, "2001:db8:2:7::1", 443, 70),
            record("2001:db8:1:2::6", 40001, "2001:db8:2:8::1", 443, 30),
        ],
    );
    m.build()
}

/// (local, remote, local prefix, remote prefix, port, bytes out) of every stored row.
type Stored = Vec<(String, String, u8, u8, u16, u64)>;

fn rows_of(db: &Path) -> Vec<FlowSummary> {
    let Ok(store) = SqliteStore::open_reader(db) else {
        return Vec::new();
    };
    let q = FlowQuery {
        from: 0,
        to: i64::MAX,
        limit: 100,
    };
    store.flows(&q).unwrap_or_default()
}

fn stored(db: &Path) -> Stored {
    let mut rows: Stored = rows_of(db)
        .iter()
        .map(|f| {
            let k = &f.key;
            (
                k.local.to_string(),
                k.remote.to_string(),
                k.local_prefix_len(),
                k.remote_prefix_len(),
                k.responder_port,
                f.totals.bytes_out,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Runs a server with `extra` flags, sends the datagram, waits for all its bytes to be
/// stored; returns the rows and the server's HTTP port (the server still running).
fn run(extra: &[&str]) -> (Stored, u16, ChildGuard, tempfile::TempDir) {
    let total = 5000 + 1000 + 2000 + 4000 + 300 + 70 + 30;
    let (db, http, server, data) = serve(extra, &datagram(), |rows| {
        rows.iter().map(|r| r.totals.bytes_out).sum::<u64>() == total
    });
    (stored(&db), http, server, data)
}

/// Runs a server with `extra` flags, sends `datagram`, waits until the stored rows are
/// `done`; returns the database's path and the server's HTTP port (still running).
fn serve(
    extra: &[&str],
    datagram: &[u8],
    done: impl Fn(&[FlowSummary]) -> bool,
) -> (std::path::PathBuf, u16, ChildGuard, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tmp");
    let inv = data.path().join("inventory.yaml");
    std::fs::write(&inv, INVENTORY).expect("inventory");
    let (http, grpc, nf) = (free_port(), free_port(), free_port());
    let server = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["server", "--interval", "1s", "--listen"])
            .arg(format!("127.0.0.1:{http}"))
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--netflow-listen")
            .arg(format!("127.0.0.1:{nf}"))
            .arg("--inventory")
            .arg(&inv)
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start server"),
    );
    wait_until("the server", Duration::from_secs(20), || {
        get(http, "/ready").is_some_and(|(s, _)| s == 200)
    });
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .send_to(datagram, ("127.0.0.1", nf))
        .expect("send");
    let db = data.path().join("podflow.sqlite");
    wait_until("every byte stored", Duration::from_secs(20), || {
        done(&rows_of(&db))
    });
    (db, http, server, data)
}

fn row(
    l: &str,
    r: &str,
    lp: u8,
    rp: u8,
    port: u16,
    bytes: u64,
) -> (String, String, u8, u8, u16, u64) {
    (l.into(), r.into(), lp, rp, port, bytes)
}

/// The bytes `/api/v1/query` counts with one filter.
fn query_bytes(http: u16, filter: &str) -> u64 {
    let (status, body) = get(http, &format!("/api/v1/query?{filter}")).expect("query");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["bytes_src_to_dst"].as_u64().unwrap_or(0))
        .sum()
}

fn metric(http: u16, name: &str) -> Option<u64> {
    let (_, body) = get(http, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn outside_flows_are_summed_per_network_with_exact_totals() {
    let (rows, http, _server, _data) = run(&[]);
    assert_eq!(
        rows,
        vec![
            row("10.9.0.10", "8.8.8.8", 32, 32, 443, 5000),
            row("192.0.2.0", "203.0.113.0", 24, 24, 443, 300),
            row("198.51.100.0", "203.0.113.0", 24, 24, 80, 4000),
            row("198.51.100.0", "203.0.113.0", 24, 24, 443, 3000),
            row("2001:db8:1::", "2001:db8:2::", 48, 48, 443, 100),
        ]
    );
    // An exact address never matches a network's row; the network's text does.
    assert_eq!(query_bytes(http, "src_ip=198.51.100.7"), 0);
    assert_eq!(query_bytes(http, "src_ip=198.51.100.0"), 0);
    assert_eq!(query_bytes(http, "src_ip=198.51.100.0/24"), 7000);
    assert_eq!(query_bytes(http, "dst_ip=2001:db8:2::/48"), 100);
    assert_eq!(query_bytes(http, "src_ip=10.9.0.10"), 5000);
    wait_until("the metric", Duration::from_secs(5), || {
        metric(http, "podflow_netflow_flows_summed_per_network_total") == Some(6)
    });
}

#[test]
fn keep_addresses_stores_every_pair() {
    let (rows, http, _server, _data) = run(&["--netflow-keep-addresses"]);
    assert_eq!(
        rows,
        vec![
            row("10.9.0.10", "8.8.8.8", 32, 32, 443, 5000),
            row("192.0.2.1", "203.0.113.9", 32, 32, 443, 300),
            row("198.51.100.7", "203.0.113.9", 32, 32, 443, 1000),
            row("198.51.100.8", "203.0.113.10", 32, 32, 443, 2000),
            row("198.51.100.9", "203.0.113.11", 32, 32, 80, 4000),
            row("2001:db8:1:1::5", "2001:db8:2:7::1", 128, 128, 443, 70),
            row("2001:db8:1:2::6", "2001:db8:2:8::1", 128, 128, 443, 30),
        ]
    );
    assert_eq!(query_bytes(http, "src_ip=198.51.100.7"), 1000);
    assert_eq!(
        metric(http, "podflow_netflow_flows_summed_per_network_total"),
        Some(0)
    );
}

/// Two connections of the pod to 8.8.8.8:443, each metered both ways (request and
/// reply, SYN and FIN on both records): one row, the requests' bytes out, the replies'
/// in, responder port 443 (not a client port), each connection opened and closed once.
#[test]
fn a_connection_metered_both_ways_is_one_row_counted_once() {
    const FLAGS: [Ie; 8] = [
        ie(8, 4),
        ie(12, 4),
        ie(7, 2),
        ie(11, 2),
        ie(4, 1),
        ie(6, 1),
        ie(1, 8),
        ie(2, 8),
    ];
    let rec = |src: &str, sport: u64, dst: &str, dport: u64, bytes: u64| {
        let mut v = record(src, sport, dst, dport, bytes);
        v.insert(5, Value::U(0x13)); // FIN, SYN, ACK
        v
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as u32;
    let mut m = Message::ipfix(now, 0, 1);
    m.template(256, &FLAGS).data(
        256,
        &FLAGS,
        &[
            rec("10.9.0.10", 40000, "8.8.8.8", 443, 5000),
            rec("8.8.8.8", 443, "10.9.0.10", 40000, 9000),
            rec("10.9.0.10", 40001, "8.8.8.8", 443, 1000),
            rec("8.8.8.8", 443, "10.9.0.10", 40001, 2000),
        ],
    );
    let (db, _http, _server, _data) = serve(&[], &m.build(), |rows| {
        let t = rows.iter().fold((0, 0), |(o, i), r| {
            (o + r.totals.bytes_out, i + r.totals.bytes_in)
        });
        t == (6000, 11_000)
    });
    let rows = rows_of(&db);
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            let (k, t) = (&r.key, &r.totals);
            (
                k.local.to_string(),
                k.remote.to_string(),
                k.responder_port,
                k.local_initiated,
                (t.bytes_out, t.packets_out, t.bytes_in, t.packets_in),
                (t.opened, t.closed),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(
            "10.9.0.10".to_string(),
            "8.8.8.8".to_string(),
            443,
            true,
            (6000, 2, 11_000, 2),
            (2, 2),
        )],
        "{rows:?}"
    );
}
