//! The connection to the server: replays every unacknowledged batch in order, streams new
//! ones, removes acknowledged ones; reconnects with backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use podflow_proto::{IngestClient, ObservationBatch};

/// The metadata key naming the agent of a stream (the server's `AGENT_ID_HEADER`).
const AGENT_ID_HEADER: &str = "podflow-agent-id";
/// The metadata key naming the agent's node (it joins the probes' peer set on connect).
const NODE_HEADER: &str = "podflow-node";
use podflow_role::{RoleError, read_file};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::outbox::Outbox;

pub(crate) fn endpoint(cfg: &AgentConfig) -> Result<tonic::transport::Endpoint, RoleError> {
    let mut ep = tonic::transport::Endpoint::from_shared(cfg.server.clone())
        .map_err(|e| RoleError::Config(format!("--server {}: {e}", cfg.server)))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        let mut t = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(tonic::transport::Certificate::from_pem(read_file(
                "--tls-ca", ca,
            )?));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(tonic::transport::Identity::from_pem(
                read_file("--tls-cert", cert)?,
                read_file("--tls-key", key)?,
            ));
        }
        if let Some(d) = &tls.domain {
            t = t.domain_name(d.clone());
        }
        ep = ep
            .tls_config(t)
            .map_err(|e| RoleError::Config(format!("TLS: {e}")))?;
    }
    Ok(ep)
}

/// Why a session with the server ended.
enum End {
    /// Shut down or rebalanced.
    Done,
    /// Connection or stream failure.
    Failed(String),
    /// The server asked to send again later (busy, or a newer agent than the server).
    Retry(Duration, String),
}

/// Connects, replays every unacked batch in order, streams new ones, removes acked ones;
/// reconnects with exponential backoff and jitter, after `max_connection_age`, and after
/// the pause a server asks for when it refuses a batch for now.
pub(crate) async fn send_loop(
    ep: tonic::transport::Endpoint,
    cfg: AgentConfig,
    shared: Arc<Outbox>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    while !stop.is_cancelled() {
        let started = Instant::now();
        let end = session(&ep, &cfg, &shared, &stop).await;
        shared.stats.connected.store(0, Relaxed);
        let mut pause = backoff;
        match end {
            End::Done => backoff = Duration::from_millis(200),
            End::Failed(e) => {
                tracing::warn!(server = %cfg.server, error = %e, "connection to the server failed; retrying")
            }
            End::Retry(after, why) => {
                tracing::info!(server = %cfg.server, reason = %why, after_ms = after.as_millis() as u64, "the server asked to send again later; batches kept");
                pause = after;
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
            _ = tokio::time::sleep(pause.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if !first {
            shared.stats.reconnects.fetch_add(1, Relaxed);
        }
        first = false;
    }
}

/// The bearer token, read afresh for every connection (projected tokens rotate).
fn token(cfg: &AgentConfig) -> Result<Option<String>, String> {
    let Some(p) = &cfg.token_file else {
        return Ok(None);
    };
    let t = read_file("--token-file", p).map_err(|e| e.to_string())?;
    Ok(Some(String::from_utf8_lossy(&t).trim().to_string()))
}

/// Acts on the server's first message, its durable mark for this agent: a data directory
/// whose numbers are behind it (wiped, or a node name used again) renumbers what it holds
/// above the mark, so nothing is taken for a replay.
fn on_durable_mark(shared: &Outbox, durable: u64) {
    let Ok(mut b) = shared.buffer.lock() else {
        return;
    };
    if b.last_seq() >= durable {
        return;
    }
    let reencode = |seq: u64, bytes: &[u8]| {
        let mut m = ObservationBatch::decode(bytes).ok()?;
        m.seq = seq;
        Some(m.encode_to_vec())
    };
    match b.renumber(durable + 1, reencode) {
        Ok(n) => {
            shared.stats.renumbered.fetch_add(n as u64, Relaxed);
            // Renumbering dropped the checkpoint (its sequence numbers are gone).
            shared.checkpoint_wanted.store(true, Relaxed);
            tracing::warn!(
                server_mark = durable,
                batches = n,
                "this data directory's sequence numbers are behind the server's (a wiped disk or a reused node name): renumbered"
            );
        }
        Err(e) => tracing::error!(error = %e, "renumbering the buffer failed"),
    }
    shared.publish(&b);
}

/// A peer set from the server goes to the probes.
fn on_peers(shared: &Outbox, ack: &podflow_proto::Ack) {
    if let (Some(p), Some(set)) = (&shared.probes, &ack.peers) {
        p.set_peers(&shared.node, set);
    }
}

async fn session(
    ep: &tonic::transport::Endpoint,
    cfg: &AgentConfig,
    shared: &Arc<Outbox>,
    stop: &CancellationToken,
) -> End {
    match open(ep, cfg, shared, stop).await {
        Ok(end) => end,
        Err(e) => End::Failed(e),
    }
}

async fn open(
    ep: &tonic::transport::Endpoint,
    cfg: &AgentConfig,
    shared: &Arc<Outbox>,
    stop: &CancellationToken,
) -> Result<End, String> {
    let channel = ep
        .connect()
        .await
        .map_err(|e| format!("connect: {}", podflow_role::error::chain(&e)))?;
    let mut client = IngestClient::new(channel).max_decoding_message_size(16 << 20);
    let (out_tx, out_rx) = mpsc::channel::<ObservationBatch>(16);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    if let Some(t) = token(cfg)? {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        req.metadata_mut().insert("authorization", v);
    }
    let id = cfg
        .agent_id
        .parse()
        .map_err(|_| format!("agent id {:?} is not a valid header value", cfg.agent_id))?;
    req.metadata_mut().insert(AGENT_ID_HEADER, id);
    let node = cfg
        .node
        .parse()
        .map_err(|_| format!("node name {:?} is not a valid header value", cfg.node))?;
    req.metadata_mut().insert(NODE_HEADER, node);
    let mut acks = client
        .push(req)
        .await
        .map_err(|e| format!("open stream: {e}"))?
        .into_inner();
    // A server that knows this agent says so first; an older one says nothing.
    match tokio::time::timeout(Duration::from_secs(2), acks.message()).await {
        Ok(Ok(Some(hello))) if hello.seq == 0 && hello.error.is_empty() => {
            on_durable_mark(shared, hello.durable_seq);
            on_peers(shared, &hello);
        }
        Ok(Ok(Some(_))) | Err(_) => {}
        Ok(Ok(None)) => return Ok(End::Done),
        Ok(Err(e)) => return Err(format!("stream: {e}")),
    }
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
    let end = loop {
        tokio::select! {
            _ = stop.cancelled() => break End::Done,
            m = acks.message() => match m {
                Ok(Some(ack)) if ack.seq == 0 => on_peers(shared, &ack),
                Ok(Some(ack)) if !ack.error.is_empty() && ack.retry_after_ms > 0 => {
                    shared.stats.retried.fetch_add(1, Relaxed);
                    break End::Retry(Duration::from_millis(ack.retry_after_ms), ack.error);
                }
                Ok(Some(ack)) => {
                    let Ok(mut b) = shared.buffer.lock() else { break End::Failed("buffer lock".into()) };
                    if b.remove(ack.seq) {
                        if ack.error.is_empty() {
                            shared.stats.acked.fetch_add(1, Relaxed);
                        } else {
                            shared.stats.rejected.fetch_add(1, Relaxed);
                            tracing::error!(seq = ack.seq, reason = %ack.error, "the server refused a batch for good; dropped");
                        }
                    }
                    shared.publish(&b);
                }
                Ok(None) => break End::Done,
                Err(e) => break End::Failed(format!("stream: {e}")),
            },
        }
    };
    feeder.abort();
    Ok(end)
}
