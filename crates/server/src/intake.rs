//! The gRPC intake: agents' streams of batches in, acknowledgements out, and the checks
//! a batch passes before the driver sees it.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use podflow_pipeline::ledger::{BatchId, Offer};
use podflow_proto::{Ack, At, Ingest, ObservationBatch, VERSION, ip_from, observation_from};
use podflow_role::{Outcome, Registry};
use podflow_store::probes::ProbeRow;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{Driver, Marks};
use crate::peers::PeerBook;

/// The metadata key naming the agent of a stream (sent by agents that read the durable
/// mark in the stream's first message).
pub const AGENT_ID_HEADER: &str = "podflow-agent-id";
/// The metadata key naming the agent's node.
pub const NODE_HEADER: &str = "podflow-node";
/// Pause asked of an agent when the write backlog is full, ms.
const RETRY_BUSY_MS: u64 = 5_000;
/// Pause asked of an agent newer than this server, ms.
const RETRY_NEWER_MS: u64 = 30_000;

/// One batch on its way from a connection to the pipeline.
pub(crate) struct Ingress {
    batch: ObservationBatch,
    ack: mpsc::Sender<Ack>,
}

/// Batches queued between the connections and the pipeline (back-pressure beyond: the
/// agents' streams stall, HTTP/2 flow control holds them).
pub(crate) const INGRESS_QUEUE: usize = 256;
/// Acks queued per connection.
const ACK_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub(crate) struct IngestSvc {
    pub(crate) tx: mpsc::Sender<Ingress>,
    pub(crate) marks: Marks,
    pub(crate) peers: Arc<PeerBook>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) registry: Arc<Registry>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

/// Decrements the open-connection gauge when a stream ends.
struct ConnGuard(Arc<Registry>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.server.connections.fetch_sub(1, Relaxed);
    }
}

#[tonic::async_trait]
impl Ingest for IngestSvc {
    type PushStream = AckStream;

    async fn push(
        &self,
        req: Request<Streaming<ObservationBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        if let Some(want) = &self.token {
            let got = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(&format!("Bearer {want}")) {
                return Err(Status::unauthenticated("missing or wrong bearer token"));
            }
        }
        let peer = req.remote_addr();
        let agent = req
            .metadata()
            .get(AGENT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The agent's node joins the probes' peer set as soon as it connects.
        if let Some(node) = req
            .metadata()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            self.peers.seen(node, &[]);
            self.peers.refresh_now();
        }
        let mut inbound = req.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel::<Ack>(ACK_QUEUE);
        // The first message: what this server holds as durable for the agent, so an agent
        // whose numbers are behind (a wiped disk, a reused node name) renumbers first.
        if let Some(agent) = agent {
            let durable_seq = self
                .marks
                .read()
                .ok()
                .and_then(|m| m.get(agent.as_str()).copied())
                .unwrap_or(0);
            let _ = ack_tx.try_send(Ack {
                durable_seq,
                peers: Some(self.peers.subscribe().borrow().clone()),
                ..Default::default()
            });
            // Later peer sets follow on the same stream, until it closes.
            let mut set = self.peers.subscribe();
            set.mark_unchanged();
            let tx = ack_tx.clone();
            tokio::spawn(async move {
                while set.changed().await.is_ok() {
                    let peers = Some(set.borrow_and_update().clone());
                    if tx
                        .send(Ack {
                            peers,
                            ..Default::default()
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        let tx = self.tx.clone();
        self.registry.server.connections.fetch_add(1, Relaxed);
        let guard = ConnGuard(Arc::clone(&self.registry));
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        if tx
                            .send(Ingress {
                                batch,
                                ack: ack_tx.clone(),
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(?peer, error = %e, "agent stream ended");
                        break;
                    }
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(ack_rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Checks a batch from a connection and offers it to the driver.
pub(crate) fn admit<S: podflow_store::FlowStore + 'static>(
    driver: &mut Driver<S>,
    r: &Registry,
    side: &Side,
    m: Ingress,
) {
    let b = m.batch;
    let reject = |why: String| {
        r.server.batch(Outcome::Rejected);
        tracing::warn!(agent = %b.agent_id, seq = b.seq, "refusing batch: {why}");
        let _ = m.ack.try_send(Ack {
            seq: b.seq,
            error: why,
            ..Default::default()
        });
    };
    if b.version > VERSION {
        // A newer agent than this server (agents rolled before servers): not final; the
        // agent keeps the batch until a server that speaks its version answers.
        r.server.batch(Outcome::Busy);
        let _ = m.ack.try_send(Ack {
            seq: b.seq,
            error: format!(
                "protocol version {} (this server speaks 1..={VERSION}); retry",
                b.version
            ),
            retry_after_ms: RETRY_NEWER_MS,
            ..Default::default()
        });
        return;
    }
    if b.version == 0 {
        return reject("protocol version 0".into());
    }
    if b.agent_id.is_empty() || b.node.is_empty() {
        return reject("agent_id and node must be set".into());
    }
    let mut obs = Vec::with_capacity(b.observations.len());
    for (index, o) in b.observations.iter().enumerate() {
        match observation_from(
            o,
            At {
                agent: &b.agent_id,
                seq: b.seq,
                index,
            },
        ) {
            Ok(o) => obs.push(o),
            Err(e) => return reject(e.to_string()),
        }
    }
    let addrs: HashSet<_> = b.local_addrs.iter().filter_map(|a| ip_from(a)).collect();
    // An agent's clock ahead of ours would park its rows (and acks) in a future interval:
    // never later than now.
    let at_ns = u64::try_from(b.observed_at_ms)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .min(podflow_inventory::now_ns());
    r.server.seen(
        &b.agent_id,
        (podflow_inventory::now_ns() / 1_000_000_000) as i64,
    );
    side.peers
        .seen(&b.node, &addrs.iter().copied().collect::<Vec<_>>());
    let node: Arc<str> = Arc::from(b.node.as_str());
    let id = BatchId {
        agent: Arc::from(b.agent_id.as_str()),
        seq: b.seq,
    };
    let addrs = (!addrs.is_empty()).then(|| Arc::new(addrs));
    let late = driver.is_late(at_ns);
    let outcome = match driver.offer(id, m.ack, &node, addrs, &obs, at_ns) {
        Offer::Count { .. } => {
            side.probes(r, &b.node, &b.probes);
            let counter = if late {
                &r.server.observations_replayed
            } else {
                &r.server.observations
            };
            counter.fetch_add(obs.len() as u64, Relaxed);
            Outcome::Applied
        }
        Offer::Duplicate(tx) => {
            let _ = tx.try_send(Ack {
                seq: b.seq,
                ..Default::default()
            });
            Outcome::Duplicate
        }
        Offer::InFlight => Outcome::InFlight,
        // Not final: the agent keeps it and sends it again after the pause. (The serve loop
        // reads no batch while the backlog is full, so this is rare.)
        Offer::Busy(tx) => {
            let _ = tx.try_send(Ack {
                seq: b.seq,
                error: "busy: the server's write backlog is full".into(),
                retry_after_ms: RETRY_BUSY_MS,
                ..Default::default()
            });
            Outcome::Busy
        }
    };
    r.server.batch(outcome);
}

/// What batches feed besides the driver: the peer book and the probe history.
#[derive(Debug)]
pub(crate) struct Side {
    /// Which nodes agents probe.
    pub(crate) peers: Arc<PeerBook>,
    /// Probe rows to the probe store's writer (bounded; full: dropped, counted).
    pub(crate) probe_rows: Option<mpsc::Sender<Vec<ProbeRow>>>,
}

impl Side {
    /// A batch's probe results, for the probe store: only its own node's (an agent
    /// reports what its node probed), each field bounded.
    fn probes(&self, r: &Registry, node: &str, stats: &[podflow_proto::ProbeStats]) {
        let Some(tx) = &self.probe_rows else { return };
        if stats.is_empty() {
            return;
        }
        let mut rows = Vec::with_capacity(stats.len());
        for p in stats {
            if p.src_node != node
                || p.buckets.len() > podflow_store::probes::BUCKETS
                || p.interval_s == 0
            {
                r.server.probe_rows_refused.fetch_add(1, Relaxed);
                continue;
            }
            rows.push(ProbeRow {
                interval_start: p.interval_start,
                interval_s: p.interval_s,
                src_node: p.src_node.clone(),
                dst_node: p.dst_node.clone(),
                src_zone: p.src_zone.clone(),
                dst_zone: p.dst_zone.clone(),
                kind: p.kind.clone(),
                dns_name: p.dns_name.clone(),
                count: p.count,
                failures: p.failures,
                unavailable: p.unavailable,
                sent: p.sent,
                lost: p.lost,
                rtt_count: p.rtt_count,
                rtt_sum_ns: p.rtt_sum_ns,
                rtt_min_ns: p.rtt_min_ns,
                rtt_max_ns: p.rtt_max_ns,
                buckets: p.buckets.clone(),
            });
        }
        let n = rows.len() as u64;
        if n > 0 && tx.try_send(rows).is_err() {
            r.server.probe_rows_dropped.fetch_add(n, Relaxed);
        }
    }
}
