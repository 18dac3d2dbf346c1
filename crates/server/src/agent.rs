//! `podflow agent`: the node's conntrack source → numbered batches → a bounded buffer
//! (memory, then a spill file) → a server over gRPC, replayed until acknowledged.
//!
//! Delivery is at-least-once from here and exactly-once in the store: every batch has
//! (agent id, seq); the server acks once the batch is durable and recognises replays.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_conntrack::SourceConfig;
use podflow_proto::{IngestClient, ObservationBatch, VERSION, ip_bytes, observation_pb};
use prost::Message as _;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::http::{AppState, StoreReader};
use crate::run::{RunError, serve_http, spawn_source, telemetry};
use crate::telemetry::AgentStats;

/// TLS settings of the connection to the server.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA that signed the server's certificate (PEM); `None` = the system roots are not
    /// used, so set it for https.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when the server asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server's certificate against (default: the URL's host).
    pub domain: Option<String>,
}

/// Settings of `podflow agent`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server URL (`http://host:9470` or `https://...`).
    pub server: String,
    /// This agent's id (default: the node name).
    pub agent_id: String,
    /// This node's name.
    pub node: String,
    /// HTTP listen address (metrics, health).
    pub listen: SocketAddr,
    /// Directory of the spill file.
    pub data_dir: PathBuf,
    /// Dump interval.
    pub interval: Duration,
    /// The conntrack source.
    pub source: SourceConfig,
    /// TLS.
    pub tls: Option<ClientTls>,
    /// Bearer token.
    pub token: Option<String>,
    /// Memory for unacked batches.
    pub max_memory: usize,
    /// Spill file size for unacked batches beyond memory.
    pub max_spill: u64,
    /// Reconnect after this long, so agents spread over server replicas.
    pub max_connection_age: Duration,
    /// NetFlow/IPFIX listen addresses (none: no listener).
    pub netflow_listen: Vec<SocketAddr>,
}

struct Shared {
    buffer: Mutex<Buffer>,
    more: Notify,
    stats: Arc<AgentStats>,
}

impl Shared {
    fn publish(&self, b: &Buffer) {
        self.stats.buffered.store(b.len() as u64, Relaxed);
        self.stats
            .buffered_mem_bytes
            .store(b.mem_bytes() as u64, Relaxed);
        self.stats
            .buffered_spill_bytes
            .store(b.spill_bytes(), Relaxed);
        self.stats.dropped.store(b.dropped, Relaxed);
    }
}

/// Runs until `shutdown`; then makes a last dump and keeps sending for up to
/// `2 × interval + 5 s` so the last batches are acknowledged.
pub async fn agent(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RunError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let telemetry = telemetry(&Default::default());
    let stats = Arc::new(AgentStats::default());
    let _ = telemetry.agent.set(Arc::clone(&stats));
    let state = Arc::new(AppState {
        telemetry: Arc::clone(&telemetry),
        store: StoreReader::None,
        interval_s: cfg.interval.as_secs().max(1) as u32,
    });
    let http_stop = CancellationToken::new();
    let http = serve_http(cfg.listen, state, http_stop.clone()).await?;
    let channel = endpoint(&cfg)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (source_thread, mut rx) = spawn_source(
        cfg.source.clone(),
        cfg.interval,
        Arc::clone(&telemetry),
        Arc::clone(&stop),
    )
    .await?;
    let shared = Arc::new(Shared {
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
    let mut netflow = crate::netflow::Intake::start(&cfg.netflow_listen, &telemetry, false, None)?;
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
                        for (who, obs) in crate::netflow::by_observer(batch) {
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
        tokio::spawn(async move { send_loop(channel, cfg, shared, stop).await })
    };

    shutdown.cancelled().await;
    tracing::info!("podflow agent: last dump, then waiting for acks");
    stop.store(true, Relaxed);
    let source_result = tokio::task::spawn_blocking(move || source_thread.join())
        .await
        .map_err(|e| RunError::Task(e.to_string()))?
        .map_err(|_| RunError::Task("conntrack thread panicked".into()))?;
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

fn endpoint(cfg: &AgentConfig) -> Result<tonic::transport::Endpoint, RunError> {
    let mut ep = tonic::transport::Endpoint::from_shared(cfg.server.clone())
        .map_err(|e| RunError::Config(format!("--server {}: {e}", cfg.server)))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| RunError::Config(format!("{what} {}: {e}", p.display())))
        };
        let mut t = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(tonic::transport::Certificate::from_pem(read(
                ca, "--tls-ca",
            )?));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(tonic::transport::Identity::from_pem(
                read(cert, "--tls-cert")?,
                read(key, "--tls-key")?,
            ));
        }
        if let Some(d) = &tls.domain {
            t = t.domain_name(d.clone());
        }
        ep = ep
            .tls_config(t)
            .map_err(|e| RunError::Config(format!("TLS: {e}")))?;
    }
    Ok(ep)
}

/// Connects, replays every unacked batch in order, streams new ones, removes acked ones;
/// reconnects with exponential backoff and jitter, and after `max_connection_age`.
async fn send_loop(
    ep: tonic::transport::Endpoint,
    cfg: AgentConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    while !stop.is_cancelled() {
        let started = Instant::now();
        let r = session(&ep, &cfg, &shared, &stop).await;
        shared.stats.connected.store(0, Relaxed);
        match r {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(server = %cfg.server, error = %e, "connection to the server failed; retrying")
            }
        }
        if stop.is_cancelled() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        let jitter = rand::random_range(0.5..1.5);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if !first {
            shared.stats.reconnects.fetch_add(1, Relaxed);
        }
        first = false;
    }
}

async fn session(
    ep: &tonic::transport::Endpoint,
    cfg: &AgentConfig,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let channel = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = IngestClient::new(channel).max_decoding_message_size(16 << 20);
    let (out_tx, out_rx) = mpsc::channel::<ObservationBatch>(16);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    if let Some(t) = &cfg.token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        req.metadata_mut().insert("authorization", v);
    }
    let mut acks = client
        .push(req)
        .await
        .map_err(|e| format!("open stream: {e}"))?
        .into_inner();
    shared.stats.connected.store(1, Relaxed);
    let age = Instant::now();
    // Feeder: every unacked batch in order from the start, then new ones as they come.
    let feeder = {
        let shared = Arc::clone(shared);
        let stop = stop.clone();
        let max_age = cfg.max_connection_age;
        tokio::spawn(async move {
            let mut cursor = 0u64;
            loop {
                let next = shared
                    .buffer
                    .lock()
                    .map_err(|_| ())
                    .and_then(|mut b| b.next_after(cursor).map_err(|_| ()));
                match next {
                    Ok(Some((seq, bytes))) => {
                        cursor = seq;
                        let Ok(msg) = ObservationBatch::decode(bytes.as_slice()) else {
                            continue;
                        };
                        if out_tx.send(msg).await.is_err() {
                            return;
                        }
                        shared.stats.sent.fetch_add(1, Relaxed);
                    }
                    Ok(None) => {
                        if age.elapsed() > max_age {
                            // Rebalance: stop sending; the session ends once acks are in.
                            return;
                        }
                        tokio::select! {
                            _ = shared.more.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                    Err(()) => return,
                }
            }
        })
    };
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            m = acks.message() => match m {
                Ok(Some(ack)) => {
                    let Ok(mut b) = shared.buffer.lock() else { break Err("buffer lock".into()) };
                    if b.remove(ack.seq) {
                        if ack.error.is_empty() {
                            shared.stats.acked.fetch_add(1, Relaxed);
                        } else {
                            shared.stats.rejected.fetch_add(1, Relaxed);
                            tracing::error!(seq = ack.seq, reason = %ack.error, "the server refused a batch; dropped");
                        }
                    }
                    shared.publish(&b);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("stream: {e}")),
            },
        }
    };
    feeder.abort();
    result
}
