//! The gRPC intake: agents' streams of batches in, acknowledgements out, and the checks
//! a batch passes before the driver sees it.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use podflow_inventory::SharedIndex;
use podflow_pipeline::ledger::{BatchId, Offer, TooMany};
use podflow_proto::{Ack, At, Ingest, ObservationBatch, VERSION, ip_from, observation_from};
use podflow_role::{Outcome, Refusal, Registry};
use podflow_store::probes::ProbeRow;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Authenticator;
use crate::driver::{Driver, Marks};
use crate::peers::PeerBook;
use crate::rate::NodeRates;

/// The metadata key naming the agent of a stream (sent by agents that read the durable
/// mark in the stream's first message).
pub const AGENT_ID_HEADER: &str = "podflow-agent-id";
/// The metadata key naming the agent's node.
pub const NODE_HEADER: &str = "podflow-node";
/// Pause asked of an agent when the write backlog is full, ms.
const RETRY_BUSY_MS: u64 = 5_000;
/// Pause asked of an agent newer than this server, ms.
const RETRY_NEWER_MS: u64 = 30_000;
/// Pause asked of a new agent beyond the ledger's bounds, ms.
const RETRY_TOO_MANY_MS: u64 = 60_000;
/// How far a batch's sequence number may be ahead of both the agent's mark and the
/// clock in ms (agents start numbering at the wall clock in ms and count one per batch):
/// further, and one batch would make every later real one look like a duplicate.
pub const SEQ_WINDOW: u64 = 1_000_000_000;

/// One batch on its way from a connection to the pipeline.
pub(crate) struct Ingress {
    batch: ObservationBatch,
    ack: mpsc::Sender<Ack>,
    /// The node the stream's credentials name (`None`: not bound, see [`crate::auth`]).
    bound: Option<Arc<str>>,
    /// Its share of [`INGRESS_BYTES`], given back when it has been admitted.
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

/// Bytes of batches (encoded size, KiB) queued between the connections and the pipeline:
/// 256 MiB, whatever their count.
pub(crate) const INGRESS_KIB: usize = 256 << 10;
/// The largest batch a connection may send.
pub(crate) const MAX_BATCH_BYTES: usize = 64 << 20;

/// Whether an agent bound to `bound` may write as `agent_id` for `node`: its own node,
/// under the node's name or `<node>/<suffix>`.
pub(crate) fn may_write(bound: &str, agent_id: &str, node: &str) -> bool {
    node == bound
        && agent_id
            .strip_prefix(bound)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    pub(crate) auth: Arc<Authenticator>,
    /// For tokens that name their pod but not their node.
    pub(crate) inventory: SharedIndex,
    /// [`INGRESS_KIB`] permits.
    pub(crate) ingress_kib: Arc<tokio::sync::Semaphore>,
    pub(crate) registry: Arc<Registry>,
    /// Per-node byte rates (`None`: unlimited).
    pub(crate) rates: Option<Arc<NodeRates>>,
}

impl IngestSvc {
    /// Who opened the stream, and the node it is bound to.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Option<Arc<str>>, Status> {
        let certs = req.peer_certs();
        let id = self
            .auth
            .identify(req.metadata(), certs.as_deref().map(|c| c.as_slice()))
            .await?;
        match (id.node, id.pod) {
            (Some(node), _) => Ok(Some(Arc::from(node))),
            (None, Some((ns, pod))) => match self.inventory.load().node_of_pod(&ns, &pod) {
                Some(node) => Ok(Some(Arc::from(node))),
                None => Err(Status::unauthenticated(format!(
                    "the token's pod {ns}/{pod} is on no node the inventory knows"
                ))),
            },
            (None, None) => Ok(None),
        }
    }
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
        let peer = req.remote_addr();
        let bound = match self.authenticate(&req).await {
            Ok(b) => b,
            Err(e) => {
                self.registry.server.refuse(Refusal::Unauthenticated);
                tracing::warn!(?peer, reason = e.message(), "agent refused");
                return Err(e);
            }
        };
        let header = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (agent, node) = (header(AGENT_ID_HEADER), header(NODE_HEADER));
        if let Some(b) = &bound {
            let ok = node.as_deref().is_none_or(|n| n == &**b)
                && agent.as_deref().is_none_or(|a| may_write(b, a, b));
            if !ok {
                self.registry.server.refuse(Refusal::NotItsNode);
                tracing::warn!(?peer, bound = %b, ?agent, ?node, "agent refused: not its node");
                return Err(Status::permission_denied(format!(
                    "these credentials are node {b}'s"
                )));
            }
        }
        // The agent's node joins the probes' peer set as soon as it connects.
        if let Some(node) = &node {
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
        let budget = Arc::clone(&self.ingress_kib);
        let rates = self.rates.clone();
        let registry = Arc::clone(&self.registry);
        self.registry.server.connections.fetch_add(1, Relaxed);
        let guard = ConnGuard(Arc::clone(&self.registry));
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        use prost::Message;
                        let len = batch.encoded_len();
                        if let Some(rates) = &rates {
                            // The bound node's bucket; an unbound stream's named node.
                            let key = bound.as_deref().unwrap_or(batch.node.as_str());
                            let wait = rates.take(key, len as u64, std::time::Instant::now());
                            if !wait.is_zero() {
                                let s = &registry.server;
                                s.rate_limited.fetch_add(1, Relaxed);
                                s.rate_limited_ns.fetch_add(wait.as_nanos() as u64, Relaxed);
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    // The server is stopping: leave the batch to the agent.
                                    _ = tx.closed() => break,
                                }
                            }
                        }
                        let kib = (len / 1024 + 1).min(MAX_BATCH_BYTES >> 10);
                        let Ok(bytes) = Arc::clone(&budget).acquire_many_owned(kib as u32).await
                        else {
                            break;
                        };
                        if tx
                            .send(Ingress {
                                batch,
                                ack: ack_tx.clone(),
                                bound: bound.clone(),
                                _bytes: bytes,
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
    if let Some(bound) = &m.bound
        && (!may_write(bound, &b.agent_id, &b.node)
            || b.probes.iter().any(|p| p.src_node != **bound))
    {
        r.server.refuse(Refusal::NotItsNode);
        return reject(format!(
            "agent {} and node {} are not this agent's to write: its credentials name node {bound}",
            b.agent_id, b.node
        ));
    }
    if let Err(too_many) = driver.admits(&b.agent_id, &b.node) {
        // Not final: the agent keeps its batches (a bound raised, or agents gone from a
        // restored store, lets them in).
        r.server.refuse(Refusal::TooManyAgents);
        r.server.batch(Outcome::Busy);
        let why = match too_many {
            TooMany::Agents(n) => format!("the server keeps marks for {n} agents already"),
            TooMany::OnNode(n) => format!("node {} has {n} agent ids already", b.node),
        };
        tracing::warn!(agent = %b.agent_id, node = %b.node, "refusing a new agent: {why}");
        let _ = m.ack.try_send(Ack {
            seq: b.seq,
            error: format!("agent {} refused for now: {why}", b.agent_id),
            retry_after_ms: RETRY_TOO_MANY_MS,
            ..Default::default()
        });
        return;
    }
    let mark = driver
        .marks()
        .read()
        .ok()
        .and_then(|m| m.get(b.agent_id.as_str()).copied())
        .unwrap_or(0);
    let now_ms = podflow_inventory::now_ns() / 1_000_000;
    if b.seq > mark.max(now_ms).saturating_add(SEQ_WINDOW) {
        r.server.refuse(Refusal::SeqWindow);
        return reject(format!(
            "seq {} is more than {SEQ_WINDOW} ahead of both the agent's mark ({mark}) and the clock in ms",
            b.seq
        ));
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
