//! Many agents pushing into one server at once: every batch is acknowledged, the stored
//! totals equal what was sent, and the server's memory stays bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use podflow_model::{Counters, Observation, Protocol, Tuple};
use podflow_proto::{IngestClient, ObservationBatch, VERSION, observation_pb};
use podflow_server::{ServerConfig, serve};
use podflow_store::{FlowQuery, FlowStore, SqliteStore};
use tokio_util::sync::CancellationToken;

const AGENTS: u64 = 40;
const ROUNDS: u64 = 4;
const BATCHES: u64 = 15;
const PER_BATCH: u64 = 300;

fn free(addr: &str) -> SocketAddr {
    std::net::TcpListener::bind(addr)
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn batch(agent: u64, seq: u64, now_ms: i64) -> ObservationBatch {
    let observations = (0..PER_BATCH)
        .map(|i| {
            // A fixed set of 40 × 50 × 6 keys, revisited by every round of batches.
            let src = std::net::IpAddr::from([10, 1, agent as u8, (i % 50) as u8]);
            let dst = std::net::IpAddr::from([10, 2, 0, (i % 6) as u8]);
            observation_pb(&Observation {
                proto: Protocol::TCP,
                orig: Tuple {
                    src,
                    dst,
                    src_port: 40_000 + i as u16,
                    dst_port: 80,
                },
                reply: Tuple {
                    src: dst,
                    dst: src,
                    src_port: 80,
                    dst_port: 40_000 + i as u16,
                },
                delta_orig: Counters {
                    bytes: 100,
                    packets: 1,
                },
                delta_reply: Counters {
                    bytes: 1000,
                    packets: 2,
                },
                opened: true,
                ..Default::default()
            })
        })
        .collect();
    ObservationBatch {
        version: VERSION,
        agent_id: format!("agent-{agent}"),
        seq,
        node: format!("node-{agent}"),
        observed_at_ms: now_ms,
        observations,
        local_addrs: vec![vec![10, 1, agent as u8, 1]],
        probes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_agents_at_once_all_acked_exact_totals_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let grpc = free("127.0.0.1:0");
    let cfg = ServerConfig {
        listen: free("127.0.0.1:0"),
        grpc_listen: grpc,
        data_dir: dir.path().to_path_buf(),
        interval: Duration::from_secs(1),
        retention: Duration::from_secs(86400),
        max_keys: 1_000_000,
        enrich: Default::default(),
        metrics: Default::default(),
        tls: None,
        agent_auth: podflow_server::AgentAuth::None,
        insecure_no_agent_auth: false,
        insecure_plaintext: false,
        agent_rate_limit_mib: 0,
        max_pending_rows: podflow_server::MAX_PENDING_ROWS,
        http: Default::default(),
        netflow_listen: Vec::new(),
        netflow_allow: Default::default(),
        netflow_exporter_labels: false,
        netflow_keep_addresses: false,
        clickhouse: None,
        on_demand: Default::default(),
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = 0;
    let mut rss = Vec::new();
    let t0 = Instant::now();
    for round in 0..ROUNDS {
        total += push_round(grpc, round).await;
        rss.push(podflow_testkit::memory_kib(std::process::id()).0);
    }
    let elapsed = t0.elapsed();
    stop.cancel();
    server.await.expect("join").expect("server");
    assert_eq!(total as u64, ROUNDS * AGENTS * BATCHES);
    let obs = ROUNDS * AGENTS * BATCHES * PER_BATCH;
    // After the first round has warmed every buffer, more load does not grow memory.
    let growth_mib = (rss[ROUNDS as usize - 1].saturating_sub(rss[0])) / 1024;
    eprintln!(
        "{obs} observations from {AGENTS} agents in {ROUNDS} rounds acked in {elapsed:?}; RSS per round (KiB): {rss:?}"
    );
    assert!(
        growth_mib < 48,
        "memory grew {growth_mib} MiB between the first and the last round"
    );

    let store = SqliteStore::open_reader(&dir.path().join("podflow.sqlite")).expect("store");
    let rows = store
        .flows(&FlowQuery {
            from: 0,
            to: i64::MAX,
            limit: 10_000,
        })
        .expect("query");
    let bytes: u64 = rows.iter().map(|r| r.totals.bytes()).sum();
    let opened: u64 = rows.iter().map(|r| r.totals.opened).sum();
    assert_eq!(
        (bytes, opened),
        (obs * 1100, obs),
        "every observation stored exactly once"
    );
    let mut observers: Vec<_> = rows.iter().map(|r| r.observer.clone()).collect();
    observers.sort();
    observers.dedup();
    assert_eq!(observers.len() as u64, AGENTS);
}

/// Every agent pushes `BATCHES` batches at once and waits for all acks.
async fn push_round(grpc: SocketAddr, round: u64) -> usize {
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        agents.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as i64;
            let feeder = tokio::spawn(async move {
                for seq in 1..=BATCHES {
                    tx.send(batch(a, round * BATCHES + seq, now_ms))
                        .await
                        .expect("send");
                }
                // Keep the stream open until the acks are in.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            let mut acks = client
                .push(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("push")
                .into_inner();
            let mut acked = std::collections::BTreeSet::new();
            while acked.len() < BATCHES as usize {
                let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
                    .await
                    .expect("ack in time")
                    .expect("stream")
                    .expect("open");
                assert!(ack.error.is_empty(), "{}", ack.error);
                acked.insert(ack.seq);
            }
            feeder.abort();
            acked.len()
        }));
    }
    let mut total = 0;
    for a in agents {
        total += a.await.expect("agent");
    }
    total
}
