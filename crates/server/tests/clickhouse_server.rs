//! `podflow server` writing to a real ClickHouse engine (chdb behind the test front):
//! acks are withheld while ClickHouse is down and released once it is back; the stored
//! totals are exact; the query API and the Node Graph answer from ClickHouse.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{metrics, value};
use podflow_model::{Counters, Observation, Protocol, Tuple};
use podflow_proto::{Ack, IngestClient, ObservationBatch, VERSION, observation_pb};
use podflow_server::{EnrichSettings, InventorySource};
use podflow_server::{ServerConfig, serve};
use podflow_store::{ClickHouseConfig, ClickHouseStore, FlowQuery, FlowStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

type Front = podflow_testkit::ChildGuard;

fn front(data: &Path, port: u16) -> Option<Front> {
    podflow_testkit::clickhouse_front(data, port)
}

async fn next_ack(
    acks: &mut tonic::Streaming<Ack>,
    within: Duration,
) -> Result<Result<Option<Ack>, tonic::Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(within, acks.message()).await
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn batch(seq: u64, n: u64) -> ObservationBatch {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let observations = (0..n)
        .map(|i| {
            let src = std::net::IpAddr::from([10, 1, 0, (i % 20) as u8]);
            let dst = std::net::IpAddr::from([10, 2, 0, (seq % 5) as u8]);
            observation_pb(&Observation {
                proto: Protocol::TCP,
                orig: Tuple {
                    src,
                    dst,
                    src_port: 40_000,
                    dst_port: 443,
                },
                reply: Tuple {
                    src: dst,
                    dst: src,
                    src_port: 443,
                    dst_port: 40_000,
                },
                delta_orig: Counters {
                    bytes: 300,
                    packets: 3,
                },
                delta_reply: Counters {
                    bytes: 700,
                    packets: 4,
                },
                opened: true,
                ..Default::default()
            })
        })
        .collect();
    ObservationBatch {
        version: VERSION,
        agent_id: "agent-1".into(),
        seq,
        node: "node-1".into(),
        observed_at_ms: now_ms,
        observations,
        local_addrs: vec![],
        probes: vec![],
    }
}

/// The chdb front in a fresh folder on a free port, or `None` (the test says SKIPPED
/// loudly) when python3 with chdb is missing.
fn chdb(test: &str) -> Option<(tempfile::TempDir, u16, Front)> {
    let missing = Command::new("python3")
        .args(["-c", "import chdb, lz4, clickhouse_cityhash"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true);
    if missing {
        podflow_testkit::skip(
            test,
            "python3 with chdb is missing (pip install --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash; scripts/test.sh does)",
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let port = free().port();
    let f = front(dir.path(), port).expect("chdb front");
    Some((dir, port, f))
}

/// A ClickHouse config for the front on `port` that gives up quickly.
fn ch_config(port: u16) -> ClickHouseConfig {
    ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        max_retries: 1,
        retry_backoff_ms: 50,
        timeout_s: 5,
        ..Default::default()
    }
}

/// `podflow server` writing to ClickHouse, and an agent's push stream to it.
struct Server {
    http: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), podflow_role::RoleError>>,
    tx: tokio::sync::mpsc::Sender<ObservationBatch>,
    acks: tonic::Streaming<Ack>,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start(ch: &ClickHouseConfig, enrich: EnrichSettings) -> Server {
        Server::start_with(ch, enrich, podflow_server::MAX_PENDING_ROWS).await
    }

    async fn start_with(
        ch: &ClickHouseConfig,
        enrich: EnrichSettings,
        max_pending_rows: usize,
    ) -> Server {
        let data = tempfile::tempdir().expect("tmp");
        let grpc = free();
        let cfg = ServerConfig {
            listen: free(),
            grpc_listen: grpc,
            data_dir: data.path().to_path_buf(),
            interval: Duration::from_secs(1),
            retention: Duration::from_secs(86400),
            max_keys: 100_000,
            enrich,
            metrics: Default::default(),
            tls: None,
            agent_auth: podflow_server::AgentAuth::None,
            insecure_no_agent_auth: false,
            insecure_plaintext: false,
            agent_rate_limit_mib: 0,
            max_pending_rows,
            http: Default::default(),
            netflow_listen: Vec::new(),
            netflow_allow: Default::default(),
            netflow_exporter_labels: false,
            netflow_keep_addresses: false,
            clickhouse: Some(ch.clone()),
            on_demand: Default::default(),
        };
        let http = cfg.listen;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(cfg, stop.clone()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut client = IngestClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acks = client
            .push(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("push")
            .into_inner();
        Server {
            http,
            stop,
            task,
            tx,
            acks,
            _data: data,
        }
    }

    /// The next `n` acks, each within `within`; panics naming `what` if one is late.
    async fn acks(&mut self, n: usize, within: Duration, what: &str) -> Vec<Ack> {
        let mut got = Vec::new();
        while got.len() < n {
            let a = next_ack(&mut self.acks, within)
                .await
                .unwrap_or_else(|_| panic!("{what}: no ack within {within:?}"))
                .expect("stream")
                .expect("open");
            assert!(a.error.is_empty(), "{what}: {}", a.error);
            got.push(a);
        }
        got
    }

    async fn stop(self) {
        drop(self.tx);
        self.stop.cancel();
        self.task.await.expect("join").expect("server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_writes_clickhouse_and_withholds_acks_while_it_is_down() {
    let Some((ch_dir, ch_port, mut ch)) = chdb("server_writes_clickhouse") else {
        return;
    };
    let ch_cfg = ch_config(ch_port);
    let mut srv = Server::start(&ch_cfg, Default::default()).await;
    // Up: acked within a couple of intervals.
    for seq in 1..=3 {
        srv.tx.send(batch(seq, 50)).await.expect("send");
    }
    srv.acks(3, Duration::from_secs(15), "ack while up").await;
    // Down: no ack comes.
    drop(ch);
    for seq in 4..=6 {
        srv.tx.send(batch(seq, 50)).await.expect("send");
    }
    assert!(
        next_ack(&mut srv.acks, Duration::from_secs(4))
            .await
            .is_err(),
        "no ack while ClickHouse is down"
    );
    // Back on the same data: the withheld acks come.
    ch = front(ch_dir.path(), ch_port).expect("chdb front again");
    let mut got: Vec<u64> = srv
        .acks(3, Duration::from_secs(20), "ack after recovery")
        .await
        .iter()
        .map(|a| a.seq)
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![4, 5, 6]);
    srv.stop().await;

    assert_eq!(
        stored_totals(ch_cfg).await,
        (6 * 50 * 1000, 6 * 50),
        "every observation exactly once in ClickHouse"
    );
    drop(ch);
}

/// Bytes and connections opened over every row ClickHouse holds.
async fn stored_totals(ch: ClickHouseConfig) -> (u64, u64) {
    let rows = tokio::task::spawn_blocking(move || {
        let store = ClickHouseStore::open(ch).expect("open");
        store
            .flows(&FlowQuery {
                from: 0,
                to: i64::MAX,
                limit: 10_000,
            })
            .expect("query")
    })
    .await
    .expect("query task");
    let bytes = rows.iter().map(|r| r.totals.bytes()).sum();
    let opened = rows.iter().map(|r| r.totals.opened).sum();
    (bytes, opened)
}

/// ClickHouse down for longer than the write backlog holds: once the rows waiting reach
/// `--max-pending-rows`, the server reads no more batches (they wait in the agent's
/// stream; nothing is dropped, nothing acked); when ClickHouse is back every batch lands
/// once and is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_beyond_the_backlog_bound_pushes_back_and_loses_nothing() {
    let Some((ch_dir, ch_port, ch)) = chdb("clickhouse_down_beyond_the_backlog") else {
        return;
    };
    let ch_cfg = ch_config(ch_port);
    // Each batch below makes 20 keys in its interval: the bound holds two intervals.
    let mut srv = Server::start_with(&ch_cfg, Default::default(), 40).await;
    srv.tx.send(batch(1, 50)).await.expect("send");
    srv.acks(1, Duration::from_secs(15), "ack while up").await;
    drop(ch);
    // Down: one batch per interval, more than the backlog holds.
    for seq in 2..=8 {
        srv.tx.send(batch(seq, 50)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let m = metrics(srv.http).await;
    let applied = value(&m, "podflow_server_batches_total{outcome=\"applied\"}");
    let pending = value(&m, "podflow_store_rows_pending");
    assert!(
        applied < 8.0,
        "the server stopped reading batches at the bound ({applied} of 8 applied, {pending} rows pending)"
    );
    assert!(pending >= 40.0, "the backlog reached its bound: {pending}");
    assert!(
        next_ack(&mut srv.acks, Duration::from_millis(500))
            .await
            .is_err(),
        "nothing acked while ClickHouse is down"
    );
    let _ch = front(ch_dir.path(), ch_port).expect("chdb front again");
    let mut got: Vec<u64> = srv
        .acks(7, Duration::from_secs(40), "ack after recovery")
        .await
        .iter()
        .map(|a| a.seq)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (2..=8).collect::<Vec<u64>>());
    srv.stop().await;
    assert_eq!(
        stored_totals(ch_cfg).await,
        (8 * 50 * 1000, 8 * 50),
        "every observation exactly once in ClickHouse"
    );
}

/// GET on the server's HTTP port: the status and the JSON body.
async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let (status, body) =
            podflow_testkit::http_get(addr.port(), &path).expect("the server answers");
        let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
        (status, v)
    })
    .await
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_and_node_graph_answer_from_clickhouse() {
    let Some((ch_dir, ch_port, _ch)) = chdb("query_api_and_node_graph_answer_from_clickhouse")
    else {
        return;
    };
    // The servers are the pods of StatefulSet shop/api; the clients are unknown.
    let list = ch_dir.path().join("inventory.json");
    let pod = |name: &str, ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": name,
                "ownerReferences": [{"kind": "StatefulSet", "name": "api", "uid": "sts", "controller": true}]},
            "spec": {"nodeName": "node-2"},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
        })
    };
    let items = [pod("api-0", "10.2.0.1"), pod("api-1", "10.2.0.2")];
    std::fs::write(
        &list,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .expect("write the inventory");
    let enrich = EnrichSettings {
        inventory: InventorySource::File(list),
        ..Default::default()
    };
    let mut srv = Server::start(&ch_config(ch_port), enrich).await;
    // 20 clients (10.1.0.0-19) each call 10.2.0.1:443 and 10.2.0.2:443 once.
    for seq in [1, 2] {
        srv.tx.send(batch(seq, 20)).await.expect("send");
    }
    // Acked: the rows are in ClickHouse.
    srv.acks(2, Duration::from_secs(15), "ack").await;
    let now = podflow_inventory::now_ns() as i64 / 1_000_000_000;
    let (from, to) = (now - 600, now + 600);
    let range = format!("from={from}&to={to}");

    let (status, q) = get_json(
        srv.http,
        &format!("/api/v1/query?{range}&group_by=dst_ip,dst_port,proto&view=raw"),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    let mut rows: Vec<(String, u64, u64, u64, u64)> = q["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let k = &r["key"];
            assert_eq!(
                (k["dst_port"].as_str(), k["proto"].as_str()),
                (Some("443"), Some("6")),
                "{r}"
            );
            let n = |f: &str| r[f].as_u64().expect(f);
            (
                k["dst_ip"].as_str().expect("dst_ip").to_string(),
                n("bytes_src_to_dst"),
                n("bytes_dst_to_src"),
                n("packets_src_to_dst"),
                n("connections"),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("10.2.0.1".into(), 20 * 300, 20 * 700, 20 * 3, 20),
            ("10.2.0.2".into(), 20 * 300, 20 * 700, 20 * 3, 20),
        ]
    );
    // A filter and a limit: the top 5 clients of 10.2.0.2, 1000 bytes each.
    let (_, q) = get_json(
        srv.http,
        &format!("/api/v1/query?{range}&group_by=src_ip&dst_ip=10.2.0.2&limit=5"),
    )
    .await;
    let rows = q["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 5, "{q}");
    for r in rows {
        assert!(
            r["key"]["src_ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.1.0.")),
            "{r}"
        );
        assert_eq!(
            r["bytes_src_to_dst"].as_u64().unwrap_or(0)
                + r["bytes_dst_to_src"].as_u64().unwrap_or(0),
            1000
        );
    }
    // "" is "not applicable": no Service was dialled.
    let (_, q) = get_json(
        srv.http,
        &format!("/api/v1/query?{range}&group_by=&service_name="),
    )
    .await;
    assert_eq!(q["rows"][0]["connections"], 40, "{q}");
    let (_, q) = get_json(
        srv.http,
        &format!("/api/v1/query?{range}&group_by=&service_name=x"),
    )
    .await;
    assert_eq!(q["rows"], json!([]), "{q}");

    // The Node Graph: edges from the clients' node to the servers', bytes/s over the range.
    let (status, g) = get_json(
        srv.http,
        &format!("/api/graph/data?from={}&to={}", from * 1000, to * 1000),
    )
    .await;
    assert_eq!(status, 200, "{g}");
    // One edge: the unknown clients -> the api StatefulSet, 20 × 2 connections of
    // 300 bytes up and 700 down; rates are bytes over the range.
    let secs = (to - from + 1) as f64;
    let rate = |v: &serde_json::Value| (v.as_f64().expect("a number") * secs).round();
    let edges = g["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{g}");
    let e = &edges[0];
    assert_eq!(
        (&e["id"], &e["source"], &e["target"]),
        (
            &json!("unknown->shop/api"),
            &json!("unknown"),
            &json!("shop/api")
        )
    );
    assert_eq!(e["detail__connections"], 40);
    assert_eq!(rate(&e["mainStat"]), 40_000.0);
    let api = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == "shop/api")
        .expect("the api node");
    assert_eq!(
        (&api["title"], &api["detail__kind"]),
        (&json!("api"), &json!("pod"))
    );
    assert_eq!(rate(&api["mainStat"]), 28_000.0, "sent");
    assert_eq!(rate(&api["secondaryStat"]), 12_000.0, "received");
    assert_eq!(g["nodes"].as_array().map(Vec::len), Some(2), "{g}");

    // The rows themselves, also from ClickHouse.
    let (status, f) = get_json(srv.http, &format!("/api/v1/flows?{range}&limit=100")).await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f.as_array().map(Vec::len), Some(40), "{f}");
    srv.stop().await;
}
