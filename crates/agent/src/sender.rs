//! The connection to the server: replays every unacknowledged batch in order, streams new
//! ones, removes acknowledged ones; reconnects with backoff and jitter.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use podflow_proto::{IngestClient, ObservationBatch};
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

/// Connects, replays every unacked batch in order, streams new ones, removes acked ones;
/// reconnects with exponential backoff and jitter, and after `max_connection_age`.
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
    shared: &Arc<Outbox>,
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
