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
use podflow_conntrack::Tracker;
use podflow_proto::{At, ObservationBatch, VERSION, ip_bytes, observation_from, observation_pb};
use podflow_role::netflow::{Intake, by_observer};
use podflow_role::{AgentStats, Registry, RoleError, data_dir, serve_http};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::buffer::{Buffer, Recovered};
use crate::outbox::Outbox;

mod buffer;
mod config;
mod local;
mod outbox;
pub mod probes;
mod sender;
pub mod source;

pub use config::{AgentConfig, ClientTls};
pub use probes::ProbeSettings;

pub use local::local_addresses;

/// The buffer's log in the data directory.
const LOG_FILE: &str = "outbox.log";
/// The lock that keeps a second agent out of the data directory.
const LOCK_FILE: &str = "agent.lock";

/// Takes the data directory's lock, waiting while another agent (a surge, a pod still
/// terminating) holds it; `/live` answers meanwhile and `/ready` says what it waits for.
async fn lock_data_dir(
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, RoleError> {
    let path = dir.join(LOCK_FILE);
    let mut warned = false;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| RoleError::DataDir {
                path: path.clone(),
                source,
            })?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if !warned {
                    tracing::warn!(path = %path.display(), "another agent holds the data directory; waiting for it to stop");
                    warned = true;
                }
            }
            Err((_, e)) => {
                return Err(RoleError::DataDir {
                    path,
                    source: e.into(),
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A checkpoint is due once the conntrack batches logged since the last one weigh as much
/// as it does, and at least this much (see [`Buffer::checkpoint_due`]).
const MIN_CHECKPOINT_GAP: u64 = 64 << 10;

/// The tracker's state after every conntrack batch pushed so far (the queue is in order,
/// and the source waited for its turn): it covers every sequence number given until now.
/// Run on the source thread, streamed into the log.
fn write_checkpoint(shared: &Outbox, tracker: &podflow_conntrack::Tracker) {
    let Ok(mut buf) = shared.buffer.lock() else {
        return;
    };
    let covered = buf.last_seq();
    match buf.checkpoint_with(covered, &mut |out| tracker.checkpoint_to(out)) {
        Ok(()) => {
            let bytes = buf.checkpoint_bytes();
            tracing::debug!(covered_seq = covered, bytes, "tracker checkpoint written");
            shared.stats.checkpoints.fetch_add(1, Relaxed);
            shared.stats.checkpoint_bytes.store(bytes, Relaxed);
        }
        Err(e) => {
            shared.stats.checkpoint_errors.fetch_add(1, Relaxed);
            shared.checkpoint_wanted.store(true, Relaxed);
            tracing::warn!(error = %e, "writing the tracker checkpoint failed; trying again after the next dump");
        }
    }
    shared.publish(&buf);
}

/// The tracker as the last run left it: its latest checkpoint plus every conntrack batch
/// logged after it, so the first dump continues where the last report left off. `None` (a
/// fresh tracker, whose first dump is a baseline) without a checkpoint or when it cannot
/// be read; the second value is the connections it remembers.
fn restore_tracker(agent: &str, rec: &Recovered) -> (Option<Tracker>, usize) {
    let Some((covered, bytes)) = &rec.checkpoint else {
        return (None, 0);
    };
    let mut t = match Tracker::restore(bytes) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "the buffer's tracker checkpoint is unreadable; starting afresh (the first dump is a baseline)");
            return (None, 0);
        }
    };
    let (mut applied, mut skipped) = (0u64, 0u64);
    for b in &rec.replay {
        let Ok(m) = ObservationBatch::decode(b.as_slice()) else {
            skipped += 1;
            continue;
        };
        for (index, p) in m.observations.iter().enumerate() {
            let at = At {
                agent,
                seq: m.seq,
                index,
            };
            match observation_from(p, at) {
                Ok(o) => {
                    t.apply(&o);
                    applied += 1;
                }
                Err(_) => skipped += 1,
            }
        }
    }
    let n = t.len();
    tracing::info!(
        covered_seq = covered,
        connections = n,
        replayed_batches = rec.replay.len(),
        replayed_observations = applied,
        skipped,
        "continuing the conntrack tracker from the buffer's checkpoint"
    );
    (Some(t), n)
}

/// Now, ms since the Unix epoch: where a fresh data directory starts numbering, far above
/// whatever an earlier incarnation on this node reached.
fn now_ms() -> u64 {
    podflow_inventory::now_ns() / 1_000_000
}

/// Runs until `shutdown`; then makes a last dump and keeps sending for up to
/// `2 × interval + 5 s` so the last batches are acknowledged. Everything not acknowledged
/// stays in the buffer's log and is sent after a restart.
pub async fn agent(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RoleError> {
    data_dir(&cfg.data_dir)?;
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(AgentStats::default());
    let _ = registry.agent.set(Arc::clone(&stats));
    let locked = Arc::new(AtomicBool::new(false));
    {
        let l = Arc::clone(&locked);
        registry
            .health
            .require("the data directory's lock", move || l.load(Relaxed));
        let r = Arc::clone(&registry);
        registry
            .health
            .require("the first conntrack dump", move || {
                r.conntrack
                    .get()
                    .is_some_and(|(st, _)| st.dumps.load(Relaxed) > 0)
            });
        // Connected, or able to buffer until the server is back.
        let st = Arc::clone(&stats);
        registry
            .health
            .require("the server or a writable buffer", move || {
                st.connected.load(Relaxed) == 1 || st.disk_errors_recent.load(Relaxed) == 0
            });
    }
    let state = Arc::new(AppState {
        exposition: Arc::clone(&registry) as _,
        store: StoreReader::None,
        interval_s: cfg.interval.as_secs().max(1) as u32,
        probes: None,
        billing: None,
        on_demand: None,
    });
    let http_stop = CancellationToken::new();
    let http = serve_http(cfg.listen, state, cfg.http.clone(), http_stop.clone()).await?;
    let channel = sender::endpoint(&cfg)?;
    let Some(_lock) = lock_data_dir(&cfg.data_dir, &shutdown).await? else {
        http_stop.cancel();
        let _ = http.await;
        return Ok(());
    };
    locked.store(true, Relaxed);

    let log = cfg.data_dir.join(LOG_FILE);
    let (mut buffer, recovered) =
        Buffer::open(&log, cfg.max_memory, cfg.max_spill).map_err(|source| RoleError::DataDir {
            path: log.clone(),
            source,
        })?;
    if recovered.last_seq.is_none() {
        buffer
            .start_at(now_ms())
            .map_err(|source| RoleError::DataDir {
                path: log.clone(),
                source,
            })?;
    }
    stats.recovered.store(recovered.batches as u64, Relaxed);
    let (tracker, restored) = restore_tracker(&cfg.agent_id, &recovered);
    stats.restored_connections.store(restored as u64, Relaxed);
    stats
        .checkpoint_bytes
        .store(buffer.checkpoint_bytes(), Relaxed);
    if recovered.batches > 0 || recovered.torn_bytes > 0 {
        tracing::info!(batches = recovered.batches, torn_bytes = recovered.torn_bytes, path = %log.display(), "read back the buffer of unacknowledged batches");
    }
    drop(recovered);

    let stop = Arc::new(AtomicBool::new(false));
    // The first dump's state is always checkpointed (a fresh tracker's baselines, or what
    // a restored one found gone); later ones when due.
    let checkpoint_wanted = Arc::new(AtomicBool::new(true));
    let (source_thread, mut rx) = source::spawn_with(
        cfg.source.clone(),
        source::Continue {
            options: cfg.source_options.clone(),
            tracker,
            checkpoint_wanted: Some(Arc::clone(&checkpoint_wanted)),
        },
        cfg.interval,
        Arc::clone(&registry),
        Arc::clone(&stop),
    )
    .await?;
    let probe_stop = CancellationToken::new();
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel(16);
    let probes = match &cfg.probes {
        Some(p) => Some(
            probes::start(
                p,
                &cfg.node,
                cfg.source.netns.clone(),
                &registry,
                probe_tx,
                probe_stop.clone(),
            )
            .await?,
        ),
        None => {
            drop(probe_tx);
            None
        }
    };
    let shared = Arc::new(Outbox {
        buffer: Mutex::new(buffer),
        more: Notify::new(),
        stats: Arc::clone(&stats),
        probes,
        node: cfg.node.clone(),
        checkpoint_wanted: Arc::clone(&checkpoint_wanted),
    });
    if let Ok(b) = shared.buffer.lock() {
        shared.publish(&b);
    }
    tracing::info!(server = %cfg.server, node = %cfg.node, "podflow agent: streaming to the server");

    // Producer: numbered, encoded batches into the buffer (on disk before the next).
    // NetFlow/IPFIX records received here travel in their own batches, their observer
    // being the exporter (`"<ip>/<domain>"`) instead of this node.
    let mut netflow = Intake::start(
        &cfg.netflow_listen,
        &cfg.netflow_allow,
        &registry,
        false,
        None,
    )?;
    let producer = {
        let shared = Arc::clone(&shared);
        let (agent_id, node) = (cfg.agent_id.clone(), cfg.node.clone());
        tokio::spawn(async move {
            let mut addrs: Vec<Vec<u8>> = Vec::new();
            let push = |observer: &str,
                        conntrack: bool,
                        addrs: &[Vec<u8>],
                        obs: &[podflow_model::Observation],
                        probes: Vec<podflow_proto::ProbeStats>,
                        at_ns: u64| {
                let Ok(mut buf) = shared.buffer.lock() else {
                    return false;
                };
                // Numbers only grow: the log keeps the highest ever given.
                let seq = buf.last_seq() + 1;
                let msg = ObservationBatch {
                    version: VERSION,
                    agent_id: agent_id.clone(),
                    seq,
                    node: observer.to_string(),
                    observed_at_ms: (at_ns / 1_000_000) as i64,
                    observations: obs.iter().map(observation_pb).collect(),
                    local_addrs: addrs.to_vec(),
                    probes,
                };
                let errors = buf.counts.disk_errors;
                buf.push(seq, conntrack, msg.encode_to_vec());
                // Until this run's first checkpoint is written one is already asked for.
                if conntrack
                    && shared.stats.checkpoints.load(Relaxed) > 0
                    && buf.checkpoint_due(MIN_CHECKPOINT_GAP)
                {
                    shared.checkpoint_wanted.store(true, Relaxed);
                }
                let failed = buf.counts.disk_errors > errors;
                shared
                    .stats
                    .disk_errors_recent
                    .store(u64::from(failed), Relaxed);
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
                        if !b.obs.is_empty() && !push(&node, true, &addrs, &b.obs, Vec::new(), b.at_ns) {
                            break;
                        }
                        if let Some(turn) = b.checkpoint {
                            let shared = Arc::clone(&shared);
                            turn.write_with(Box::new(move |t| write_checkpoint(&shared, t)));
                        }
                    }
                    Some(batch) = netflow.recv() => {
                        let now = podflow_inventory::now_ns();
                        for (who, obs) in by_observer(batch) {
                            push(&who, false, &[], &obs, Vec::new(), now);
                        }
                    }
                    Some(stats) = probe_rx.recv() => {
                        let now = podflow_inventory::now_ns();
                        push(&node, false, &addrs, &[], stats, now);
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
    // A checkpoint after the last dump: the next start replays nothing.
    checkpoint_wanted.store(true, Relaxed);
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
            "stopping with unacknowledged batches; they stay in the buffer's log for the next start"
        );
    }
    sender_stop.cancel();
    probe_stop.cancel();
    let _ = sender.await;
    http_stop.cancel();
    let _ = http.await;
    source_result
}
