//! `POST /api/v1/probe` on a real `podflow server` (in process, real sockets on
//! 127.0.0.0/8): the HTTP API's bearer token guards it, it probes only nodes the
//! inventory names (at the inventory's address), it is rate limited, and a real probe
//! against a real responder on 127.0.0.1 answers with an RTT while a node whose packets
//! all vanish answers with 100% loss.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{config, free, metrics, value};
use podflow_probe::{Ports, Responder, ResponderConfig};
use podflow_server::{AgentAuth, InventorySource, OnDemandConfig, serve};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "probe-s3cret";

/// A POST to `addr`: status, headers, body.
fn post(addr: SocketAddr, body: &str, token: Option<&str>, ctype: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /api/v1/probe HTTP/1.0\r\nHost: x\r\nContent-Type: {ctype}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// HTTP settings under which the API wants [`TOKEN`]; the file lives as long as `dir`.
fn token_required(dir: &std::path::Path) -> podflow_role::HttpSettings {
    let file = dir.join("token");
    std::fs::write(&file, TOKEN).expect("token");
    podflow_role::HttpSettings {
        token_file: Some(file),
        ..Default::default()
    }
}

fn inventory(path: &std::path::Path, nodes: &[(&str, &str, &str)]) {
    let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, zone, ip) in nodes {
        text.push_str(&format!(
            "- kind: Node\n  metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n  status: {{addresses: [{{type: InternalIP, address: {ip}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        ));
    }
    std::fs::write(path, text).expect("inventory");
}

fn probe(addr: SocketAddr, target: &str, kind: &str) -> (u16, String, Value) {
    let body = serde_json::json!({ "target": target, "type": kind }).to_string();
    let (status, head, text) = post(addr, &body, Some(TOKEN), "application/json");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    (status, head, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_probe_needs_the_token_probes_only_known_nodes_and_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // A real responder on 127.0.0.1; on 127.0.0.3 a socket on the same UDP port that
    // reads and never answers (every packet lost, no ICMP error either).
    let stop = CancellationToken::new();
    let responder = Responder::start(
        &ResponderConfig {
            bind: [127, 0, 0, 1].into(),
            ports: Ports {
                udp: 0,
                tcp: 0,
                http: 0,
            },
            ..Default::default()
        },
        stop.clone(),
    )
    .expect("responder");
    let ports = responder.ports();
    let dark = std::net::UdpSocket::bind(("127.0.0.3", ports.udp)).expect("bind 127.0.0.3");
    let inv = d.join("inventory.yaml");
    inventory(
        &inv,
        &[
            ("node-lo", "zone-a", "127.0.0.1"),
            ("node-dark", "zone-b", "127.0.0.3"),
        ],
    );
    let mut cfg = config(d, free(), AgentAuth::None, None);
    cfg.enrich.inventory = InventorySource::File(inv);
    cfg.http = token_required(d);
    cfg.on_demand = OnDemandConfig {
        ports,
        rate_per_s: 0.01,
        burst: 5,
    };
    let http = cfg.listen;
    let server = tokio::spawn(serve(cfg, stop.clone()));
    metrics(http).await;

    podflow_testkit::wait_until("the server ready", Duration::from_secs(20), || {
        podflow_testkit::http_get(http.port(), "/ready").is_some_and(|(s, _)| s == 200)
    });
    let r = tokio::task::spawn_blocking(move || {
        let (status, _, _) = post(
            http,
            r#"{"target":"x","type":"tcp"}"#,
            None,
            "application/json",
        );
        assert_eq!(status, 401, "no token: 401 before anything else");
        let unknown = probe(http, "node-nope", "udp");
        let wrong = post(
            http,
            r#"{"target":"node-lo"}"#,
            Some("not-it"),
            "application/json",
        );
        let plain = post(http, r#"{"target":"node-lo"}"#, Some(TOKEN), "text/plain");
        let bad_type = probe(http, "node-lo", "carrier-pigeon");
        let udp = probe(http, "node-lo", "udp");
        let tcp = probe(http, "node-lo", "tcp");
        let lossy = probe(http, "node-dark", "udp");
        let limited = probe(http, "node-lo", "udp");
        (unknown, wrong, plain, bad_type, udp, tcp, lossy, limited)
    })
    .await
    .expect("join");
    let (unknown, wrong, plain, bad_type, udp, tcp, lossy, limited) = r;
    let (s, _, v) = &unknown;
    assert_eq!(*s, 404, "{v}");
    assert!(
        v["error"].as_str().expect("error").contains("`node-nope`"),
        "{v}"
    );
    assert_eq!(wrong.0, 401, "{wrong:?}");
    assert_eq!(plain.0, 415, "{plain:?}");
    assert_eq!(bad_type.0, 400, "{bad_type:?}");
    assert!(
        bad_type.2["error"]
            .as_str()
            .expect("error")
            .contains("carrier-pigeon")
    );

    let (s, _, v) = &udp;
    assert_eq!(*s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["address"], "127.0.0.1", "the inventory's address: {v}");
    assert_eq!(v["type"], "udp");
    assert_eq!(v["sent"], 5, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["loss"], 0.0, "{v}");
    let rtt = v["rtt_seconds"].as_f64().expect("an RTT");
    assert!(rtt > 0.0 && rtt < 0.25, "{v}");
    assert!(
        v["rtt_min_seconds"].as_f64() <= Some(rtt) && v["rtt_max_seconds"].as_f64() >= Some(rtt),
        "{v}"
    );

    let (s, _, v) = &tcp;
    assert_eq!(*s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["rtt_seconds"].as_f64().is_some_and(|r| r > 0.0), "{v}");

    let (s, _, v) = &lossy;
    assert_eq!(*s, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["outcome"], "fail", "{v}");
    assert_eq!(v["address"], "127.0.0.3", "{v}");
    assert_eq!(
        (v["sent"].as_u64(), v["lost"].as_u64()),
        (Some(5), Some(5)),
        "{v}"
    );
    assert_eq!(v["loss"], 1.0, "{v}");
    assert!(v["rtt_seconds"].is_null(), "{v}");

    // Five tokens (the unknown node, the bad type, udp, tcp, the dark node; 401 and 415
    // take none), a refill of 0.01 a second: the sixth is refused.
    let (s, head, v) = &limited;
    assert_eq!(*s, 429, "{v}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Retry-After");
    assert!((1..=100).contains(&retry), "{retry}");
    let m = metrics(http).await;
    assert_eq!(
        value(
            &m,
            "podflow_http_requests_rejected_total{reason=\"probe_rate\"}"
        ),
        1.0
    );
    assert!(
        value(
            &m,
            "podflow_http_requests_rejected_total{reason=\"unauthorized\"}"
        ) >= 2.0
    );

    stop.cancel();
    let _ = server.await;
    responder.stop().await;
    drop(dark);
}

/// A GET with the token: status and JSON body.
fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}")),
    )
}

fn observation(
    proto: podflow_model::Protocol,
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    bytes: u64,
) -> podflow_model::Observation {
    let t = |s: [u8; 4], d: [u8; 4], sp, dp| podflow_model::Tuple {
        src: s.into(),
        dst: d.into(),
        src_port: sp,
        dst_port: dp,
    };
    let c = podflow_model::Counters { bytes, packets: 1 };
    podflow_model::Observation {
        proto,
        orig: t(src, dst, 40000, dport),
        reply: t(dst, src, dport, 40000),
        delta_orig: c,
        delta_reply: c,
        opened: true,
        ..Default::default()
    }
}

/// Node-to-node flows to the agents' probe ports (UDP and TCP 9471, HTTP on TCP 9472)
/// carry the app label `podflow-probe` on both ends; other node-to-node traffic, and
/// traffic to a probe port of an address that is no node, does not. Both nodes run
/// agents (each has sent a batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_own_flows_between_agents_nodes_are_marked_podflow_probe() {
    use podflow_model::Protocol;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let inv = d.join("inventory.yaml");
    inventory(
        &inv,
        &[
            ("node-a", "zone-a", "10.0.0.1"),
            ("node-b", "zone-b", "10.0.0.2"),
        ],
    );
    let grpc = free();
    let mut cfg = config(d, grpc, AgentAuth::None, None);
    cfg.enrich.inventory = InventorySource::File(inv);
    cfg.http = token_required(d);
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    metrics(http).await;
    let ep = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc.port()))
        .expect("url")
        .connect_timeout(Duration::from_secs(5));
    let (a, b, other) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 9, 9, 9]);
    let mut first = common::batch("node-b", "node-b", 1);
    first.observations = vec![podflow_proto::observation_pb(&observation(
        Protocol::TCP,
        b,
        a,
        22,
        100,
    ))];
    // The gRPC port opens once the driver is up.
    let mut pushed = Err(String::new());
    for _ in 0..100 {
        pushed = common::push(&ep, &[], first.clone()).await;
        if pushed.as_ref().is_ok() || !pushed.as_ref().is_err_and(|e| e.starts_with("connect")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pushed, Ok(1));
    let mut batch = common::batch("node-a", "node-a", 1);
    batch.observations = [
        observation(Protocol::UDP, a, b, 9471, 1000),
        observation(Protocol::TCP, a, b, 9471, 2000),
        observation(Protocol::TCP, a, b, 9472, 3000),
        observation(Protocol::UDP, a, b, 9472, 4000),
        observation(Protocol::TCP, a, b, 22, 5000),
        observation(Protocol::UDP, a, other, 9471, 6000),
    ]
    .iter()
    .map(podflow_proto::observation_pb)
    .collect();
    assert_eq!(common::push(&ep, &[], batch).await, Ok(1));
    let (rows, only, without, split) = tokio::task::spawn_blocking(move || {
        let q = "/api/v1/query?view=raw&observer=node-a&group_by=proto,dst_port,src_app,dst_app,dst_kind&limit=100";
        (
            get_json(http, q),
            get_json(http, &format!("{q}&dst_app=podflow-probe")),
            get_json(http, &format!("{q}&podflow_probe=false")),
            get_json(
                http,
                "/api/v1/query?view=raw&observer=node-a&group_by=podflow_probe",
            ),
        )
    })
    .await
    .expect("join");
    assert_eq!(rows.0, 200, "{}", rows.1);
    let mut got: Vec<[String; 5]> = rows.1["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            ["proto", "dst_port", "src_app", "dst_app", "dst_kind"]
                .map(|n| r["key"][n].as_str().unwrap_or_default().to_string())
        })
        .collect();
    got.sort();
    let row =
        |p: &str, port: &str, app: &str, kind: &str| [p, port, app, app, kind].map(String::from);
    // proto by number (6 TCP, 17 UDP); 10.9.9.9 is no node (a private address no rule names).
    let mut want = vec![
        row("6", "22", "", "node"),
        row("6", "9471", "podflow-probe", "node"),
        row("6", "9472", "podflow-probe", "node"),
        row("17", "9471", "", "unknown"),
        row("17", "9471", "podflow-probe", "node"),
        row("17", "9472", "", "node"),
    ];
    want.sort();
    assert_eq!(got, want, "{}", rows.1);
    assert_eq!(only.0, 200, "{}", only.1);
    let marked = only.1["rows"].as_array().expect("rows");
    assert_eq!(marked.len(), 3, "{}", only.1);
    let bytes: u64 = marked
        .iter()
        .map(|r| {
            r["bytes_src_to_dst"].as_u64().unwrap_or(0)
                + r["bytes_dst_to_src"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(bytes, 2 * (1000 + 2000 + 3000), "{}", only.1);
    // Left out with podflow_probe=false; its own dimension splits the totals.
    assert_eq!(without.0, 200, "{}", without.1);
    let ports: Vec<&str> = without.1["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["key"]["dst_port"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ports, ["9471", "22", "9472"], "{}", without.1);
    assert_eq!(split.0, 200, "{}", split.1);
    let by: Vec<(String, u64)> = split.1["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["key"]["podflow_probe"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["bytes_src_to_dst"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("false".to_string(), 6000 + 5000 + 4000),
            ("true".to_string(), 1000 + 2000 + 3000)
        ],
        "{}",
        split.1
    );
    stop.cancel();
    let _ = server.await;
}
