//! `podflow agent`, the role on every node: the node's conntrack source → numbered
//! batches → a bounded buffer (memory, then a spill file) → a server over gRPC, replayed
//! until acknowledged.
//!
//! Delivery is at-least-once from here and exactly-once in the store: every batch has
//! (agent id, seq); the server acks once the batch is durable and recognises replays.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_api::{AppState, StoreReader};
use podflow_proto::{ObservationBatch, VERSION, ip_bytes, observation_pb};
use podflow_role::netflow::{Intake, by_observer};
use podflow_role::{AgentStats, Registry, RoleError, data_dir, serve_http};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::outbox::Outbox;

mod buffer;
mod config;
mod local;
mod outbox;
mod sender;
pub mod source;

pub use config::{AgentConfig, ClientTls};

pub use local::local_addresses;

/// Runs until `shutdown`; then makes a last dump and keeps sending for up to
/// `2 × interval + 5 s` so the last batches are acknowledged.
pub async fn agent(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RoleError> {
    data_dir(&cfg.data_dir)?;
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(AgentStats::default());
    let _ = registry.agent.set(Arc::clone(&stats));
    let state = Arc::new(AppState {
        exposition: Arc::clone(&registry) as _,
        store: StoreReader::None,
        interval_s: cfg.interval.as_secs().max(1) as u32,
    });
    let http_stop = CancellationToken::new();
    let http = serve_http(cfg.listen, state, http_stop.clone()).await?;
    let channel = sender::endpoint(&cfg)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (source_thread, mut rx) = source::spawn(
        cfg.source.clone(),
        cfg.interval,
        Arc::clone(&registry),
        Arc::clone(&stop),
    )
    .await?;
    let shared = Arc::new(Outbox {
        buffer: Mutex::new(Buffer::new(
            cfg.max_memory,
            &cfg.data_dir.join("agent-spill.bin"),
            cfg.max_spill,
        )),
        more: Notify::new(),
        stats: Arc::clone(&stats),
    });
    tracing::info!(server = %cfg.server, node = %cfg.node, "podflow agent: streaming to the server");

    // Producer: numbered, encoded batches into the buffer.
    // NetFlow/IPFIX records received here travel in their own batches, their observer
    // being the exporter (`"<ip>/<domain>"`) instead of this node.
    let mut netflow = Intake::start(&cfg.netflow_listen, &registry, false, None)?;
    let producer = {
        let shared = Arc::clone(&shared);
        let (agent_id, node) = (cfg.agent_id.clone(), cfg.node.clone());
        tokio::spawn(async move {
            // Sequence numbers start at the wall clock (ms), so a restarted agent never reuses
            // one the server already made durable.
            let mut seq = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
            let mut addrs: Vec<Vec<u8>> = Vec::new();
            let mut push = |observer: &str,
                            addrs: &[Vec<u8>],
                            obs: &[podflow_model::Observation],
                            at_ns: u64| {
                seq += 1;
                let msg = ObservationBatch {
                    version: VERSION,
                    agent_id: agent_id.clone(),
                    seq,
                    node: observer.to_string(),
                    observed_at_ms: (at_ns / 1_000_000) as i64,
                    observations: obs.iter().map(observation_pb).collect(),
                    local_addrs: addrs.to_vec(),
                };
                let Ok(mut buf) = shared.buffer.lock() else {
                    return false;
                };
                if let Err(e) = buf.push(seq, msg.encode_to_vec()) {
                    tracing::error!(error = %e, "spill file write failed; batch dropped");
                    shared.stats.dropped.fetch_add(1, Relaxed);
                }
                shared.publish(&buf);
                drop(buf);
                shared.more.notify_one();
                true
            };
            loop {
                tokio::select! {
                    b = rx.recv() => {
                        let Some(b) = b else { break };
                        if let Some(l) = &b.local {
                            addrs = l.iter().map(|a| ip_bytes(*a)).collect();
                        }
                        if !b.obs.is_empty() && !push(&node, &addrs, &b.obs, b.at_ns) {
                            break;
                        }
                    }
                    Some(batch) = netflow.recv() => {
                        let now = podflow_inventory::now_ns();
                        for (who, obs) in by_observer(batch) {
                            push(&who, &[], &obs, now);
                        }
                    }
                }
            }
        })
    };

    let sender_stop = CancellationToken::new();
    let sender = {
        let shared = Arc::clone(&shared);
        let cfg = cfg.clone();
        let stop = sender_stop.clone();
        tokio::spawn(async move { sender::send_loop(channel, cfg, shared, stop).await })
    };

    shutdown.cancelled().await;
    tracing::info!("podflow agent: last dump, then waiting for acks");
    stop.store(true, Relaxed);
    let source_result = tokio::task::spawn_blocking(move || source_thread.join())
        .await
        .map_err(|e| RoleError::Task(e.to_string()))?
        .map_err(|_| RoleError::Task("conntrack thread panicked".into()))?;
    let _ = producer.await;
    let deadline = Instant::now() + cfg.interval * 2 + Duration::from_secs(5);
    while Instant::now() < deadline && shared.buffer.lock().map(|b| !b.is_empty()).unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = shared.buffer.lock().map(|b| b.len()).unwrap_or(0);
    if left > 0 {
        tracing::warn!(
            batches = left,
            "stopping with unacknowledged batches (the server is unreachable)"
        );
    }
    sender_stop.cancel();
    let _ = sender.await;
    http_stop.cancel();
    let _ = http.await;
    source_result
}
