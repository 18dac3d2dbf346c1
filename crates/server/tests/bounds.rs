//! The intake's bounds on what agents send: a node's byte rate (its streams wait, nothing
//! is lost, other nodes go on) and the number of agent ids the server keeps marks for.

mod common;

use std::time::{Duration, Instant};

use common::{batch, config, free, metrics, push, value};
use podflow_proto::{IngestClient, ObservationBatch};
use podflow_server::{AgentAuth, serve};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// A batch of `n` observations (about 50 bytes each once encoded).
fn big(agent: &str, node: &str, seq: u64, n: usize) -> ObservationBatch {
    let mut b = batch(agent, node, seq);
    let one = b.observations[0].clone();
    b.observations = vec![one; n];
    b
}

/// Sends `batches` on one stream and returns when every one is acknowledged as durable,
/// with how long that took.
async fn push_all(ep: &Endpoint, batches: Vec<ObservationBatch>) -> Duration {
    let t0 = Instant::now();
    let ch = ep.connect().await.expect("connect");
    let mut client = IngestClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(batches.len());
    let mut want: std::collections::BTreeSet<u64> = batches.iter().map(|b| b.seq).collect();
    for b in batches {
        tx.send(b).await.expect("queue");
    }
    let mut acks = client
        .push(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("push")
        .into_inner();
    while !want.is_empty() {
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
            .await
            .expect("an ack within 30 s")
            .expect("stream")
            .expect("open");
        assert!(ack.error.is_empty(), "refused: {}", ack.error);
        want.remove(&ack.seq);
    }
    drop(tx);
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_rate_waits_loses_nothing_and_holds_no_other_node_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let grpc = free();
    let mut cfg = config(dir.path(), grpc, AgentAuth::None, None);
    cfg.agent_rate_limit_mib = 1;
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    let ep = Endpoint::from_shared(format!("http://{grpc}")).expect("endpoint");
    metrics(http).await;

    // Node a sends 7 batches of ~1 MiB at once: 4 s of burst, then ~1 s per batch.
    let size = {
        use prost::Message;
        big("a", "a", 1, 25_000).encoded_len()
    };
    let n = 7u64;
    let flood = {
        let ep = ep.clone();
        tokio::spawn(async move {
            let base = (podflow_inventory::now_ns() / 1_000_000) as u64;
            let batches = (1..=n).map(|i| big("a", "a", base + i, 25_000)).collect();
            push_all(&ep, batches).await
        })
    };
    // While a waits, b's batch goes through at once (then its durable ack: an interval).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let seq = (podflow_inventory::now_ns() / 1_000_000) as u64;
    assert_eq!(push(&ep, &[], batch("b", "b", seq)).await, Ok(seq));
    let b_took = t0.elapsed();
    let a_took = flood.await.expect("join");
    let owed = (n as f64 * size as f64 - 4.0 * 1_048_576.0) / 1_048_576.0;
    assert!(
        owed > 2.0,
        "the test sends more than the burst ({owed} MiB owed)"
    );
    assert!(
        a_took.as_secs_f64() >= owed - 0.5,
        "a's {n} batches of {size} B took {a_took:?}; at 1 MiB/s they owe {owed:.1} s"
    );
    assert!(b_took < a_took, "b ({b_took:?}) waited for a ({a_took:?})");
    let m = metrics(http).await;
    let waited = value(&m, "podflow_server_agent_rate_limited_batches_total");
    let secs = value(&m, "podflow_server_agent_rate_limited_seconds_total");
    assert!(waited >= 2.0, "batches that waited: {waited}");
    // (The bucket refills while batches travel, so the waits sum to less than the debt.)
    assert!(secs >= owed / 2.0, "seconds waited: {secs}, owed {owed:.1}");
    // Every batch counted: 7 × 25,000 observations from a, one from b.
    let applied = value(&m, "podflow_server_batches_total{outcome=\"applied\"}");
    assert_eq!(applied, (n + 1) as f64);
    stop.cancel();
    server.await.expect("join").expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_agent_ids_beyond_a_nodes_bound_are_refused_for_now_and_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let grpc = free();
    let cfg = config(dir.path(), grpc, AgentAuth::None, None);
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    let ep = Endpoint::from_shared(format!("http://{grpc}")).expect("endpoint");
    metrics(http).await;
    let seq = (podflow_inventory::now_ns() / 1_000_000) as u64;
    let bound = podflow_pipeline::ledger::MAX_AGENTS_PER_NODE;
    let first: Vec<_> = (0..bound)
        .map(|i| {
            let ep = ep.clone();
            tokio::spawn(async move { push(&ep, &[], batch(&format!("n/{i}"), "n", seq)).await })
        })
        .collect();
    for p in first {
        assert_eq!(p.await.expect("join"), Ok(seq));
    }
    let refused = push(&ep, &[], batch("n/one-too-many", "n", seq)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("node n has 16 agent ids already")),
        "{refused:?}"
    );
    // A known id still writes; another node's first id too.
    assert_eq!(
        push(&ep, &[], batch("n/3", "n", seq + 1)).await,
        Ok(seq + 1)
    );
    assert_eq!(push(&ep, &[], batch("m", "m", seq)).await, Ok(seq));
    let m = metrics(http).await;
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_refusals_total{reason=\"too_many_agents\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "podflow_server_batches_total{outcome=\"busy\"}"),
        1.0
    );
    stop.cancel();
    server.await.expect("join").expect("server");
}
