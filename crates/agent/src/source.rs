//! The conntrack source on a thread of its own (blocking netlink I/O), feeding a bounded
//! queue of batches: what the agent sends and what `run` aggregates itself.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use podflow_conntrack::{Source, SourceConfig, SourceOptions, Tracker};
use podflow_model::Observation;
use podflow_role::{Registry, RoleError};
use tokio::sync::mpsc;

use crate::local::local_addresses;

/// Stores the tracker's checkpoint; run on the source thread, which owns the tracker.
pub type CheckpointWriter = Box<dyn FnOnce(&Tracker) + Send>;

/// The source's turn to checkpoint, sent after a dump when [`Continue::checkpoint_wanted`]
/// was set: every batch before it has been handled when the consumer sees it, so the
/// consumer answers with the writer and the source thread runs it on its tracker (the
/// checkpoint goes straight to the log in pieces, never whole in memory). Dropped
/// unanswered: no checkpoint.
pub struct CheckpointTurn(tokio::sync::oneshot::Sender<CheckpointWriter>);

impl CheckpointTurn {
    /// Has the source thread run `writer` on its tracker.
    pub fn write_with(self, writer: CheckpointWriter) {
        let _ = self.0.send(writer);
    }
}

impl std::fmt::Debug for CheckpointTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointTurn")
    }
}

/// A batch from the source thread: observations and, now and then, this node's addresses.
#[derive(Debug)]
pub struct SourceBatch {
    /// Observations (may be empty).
    pub obs: Vec<Observation>,
    /// This node's addresses, when re-read (every 5 s).
    pub local: Option<Arc<HashSet<IpAddr>>>,
    /// When they were read, ns since the Unix epoch.
    pub at_ns: u64,
    /// The source's turn to checkpoint its tracker, which covers every observation of
    /// the batches before this one.
    pub checkpoint: Option<CheckpointTurn>,
}

/// How the source continues: its options, the tracker to start from, and the flag that
/// asks it for a checkpoint after its next dump.
#[derive(Debug, Default)]
pub struct Continue {
    /// Dump and event options.
    pub options: SourceOptions,
    /// A tracker restored from a checkpoint (`None`: a fresh one, whose first dump takes
    /// what is in the table as a baseline).
    pub tracker: Option<Tracker>,
    /// Set by the consumer when it wants a checkpoint; the source clears it and sends
    /// one after its next dump. `None`: never.
    pub checkpoint_wanted: Option<Arc<AtomicBool>>,
}

/// Queue depth between the source thread and its consumer, in batches.
const QUEUE_BATCHES: usize = 64;
/// Observations per batch.
const BATCH: usize = 4096;

/// The source's thread and the queue of its batches.
pub type Spawned = (
    std::thread::JoinHandle<Result<(), RoleError>>,
    mpsc::Receiver<SourceBatch>,
);

/// The conntrack source on its own thread (blocking netlink I/O). It stays in the observed
/// namespace for its whole life, so local addresses are read from there too. Returns once
/// the source is open (or failed to open); the thread ends after its last dump when `stop`
/// is set, closing the queue.
pub async fn spawn(
    cfg: SourceConfig,
    interval: Duration,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
) -> Result<Spawned, RoleError> {
    spawn_with(cfg, Continue::default(), interval, registry, stop).await
}

/// [`spawn`] with options, a tracker to continue from, and checkpoints on request.
pub async fn spawn_with(
    cfg: SourceConfig,
    cont: Continue,
    interval: Duration,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
) -> Result<Spawned, RoleError> {
    let (tx, rx) = mpsc::channel::<SourceBatch>(QUEUE_BATCHES);
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || -> Result<(), RoleError> {
            let first_reply = cfg.first_reply;
            let opened = (|| {
                if let Some(ns) = &cfg.netns {
                    podflow_conntrack::enter_netns(ns)?;
                }
                let tracker = cont
                    .tracker
                    .unwrap_or_else(|| Tracker::new(podflow_inventory::now_ns()));
                Source::open_with(&SourceConfig { netns: None, ..cfg }, &cont.options, tracker)
            })();
            let mut src = match opened {
                Ok(s) => s,
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            let features = src.features();
            for m in features.missing() {
                tracing::warn!("{m}");
            }
            if first_reply && !features.timestamps {
                tracing::warn!(
                    "--first-reply needs net.netfilter.nf_conntrack_timestamp=1 (or \
                     --enable-accounting): without start times no time to first reply is measured"
                );
            }
            let _ = registry.conntrack.set((src.stats(), features));
            let _ = opened_tx.send(Ok(()));
            if cont.options.reliable_events && !src.reliable_events() {
                tracing::warn!("--reliable-events: the kernel did not turn reliable delivery on");
            }
            let mut last_local = Instant::now() - Duration::from_secs(3600);
            let checkpoint_tx = tx.clone();
            let wanted = cont.checkpoint_wanted;
            let mut after_dump = |src: &Source| {
                if let Some(w) = &wanted
                    && w.swap(false, Relaxed)
                {
                    let (turn, writer) = tokio::sync::oneshot::channel();
                    let batch = SourceBatch {
                        obs: Vec::new(),
                        local: None,
                        at_ns: podflow_inventory::now_ns(),
                        checkpoint: Some(CheckpointTurn(turn)),
                    };
                    if checkpoint_tx.blocking_send(batch).is_ok()
                        && let Ok(write) = writer.blocking_recv()
                    {
                        write(src.tracker());
                    }
                }
            };
            let mut sink = |obs: Vec<Observation>| {
                let local = (last_local.elapsed() > Duration::from_secs(5)).then(|| {
                    last_local = Instant::now();
                    // This thread lives in the observed namespace: its table's fill.
                    let read = |f: &str| {
                        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{f}"))
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    };
                    if let (Some(n), Some(max)) =
                        (read("nf_conntrack_count"), read("nf_conntrack_max"))
                    {
                        registry.pipeline.ct_table_entries.store(n, Relaxed);
                        registry.pipeline.ct_table_max.store(max, Relaxed);
                    }
                    Arc::new(local_addresses())
                });
                let batch = SourceBatch {
                    obs,
                    local,
                    at_ns: podflow_inventory::now_ns(),
                    checkpoint: None,
                };
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        registry.pipeline.queue_waits.fetch_add(1, Relaxed);
                        let _ = tx.blocking_send(b);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            };
            // An empty first batch carries the local addresses before any traffic.
            sink(Vec::new());
            src.run_with(interval, BATCH, &stop, &mut sink, &mut after_dump)?;
            Ok(())
        })
        .map_err(|e| RoleError::Task(format!("spawn conntrack thread: {e}")))?;
    match opened_rx.await {
        Ok(Ok(())) => Ok((thread, rx)),
        _ => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(RoleError::Task("conntrack thread ended at start".into())),
            Err(_) => Err(RoleError::Task("conntrack thread panicked".into())),
        },
    }
}
