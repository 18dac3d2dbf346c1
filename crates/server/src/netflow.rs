//! The NetFlow/IPFIX listener inside `run` and `server`: records become observations
//! (observer = `"<exporter ip>/<domain>"`) and go through the same attribution,
//! aggregation, store and metrics as conntrack's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use podflow_model::Observation;
use podflow_netflow::{Batch, Listener, ListenerConfig};
use tokio::sync::mpsc;

use crate::Telemetry;
use crate::run::RunError;

/// Batches queued between the receive threads and the pipeline; beyond, the threads wait
/// and the sockets' buffers fill (the kernel's drops are counted).
const QUEUE: usize = 64;

/// Starts listening on `addrs` (none: nothing to start).
pub fn start(
    addrs: &[SocketAddr],
    telemetry: &Arc<Telemetry>,
    per_exporter: bool,
    stop: Arc<AtomicBool>,
) -> Result<Option<(Listener, mpsc::Receiver<Batch>)>, RunError> {
    if addrs.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel::<Batch>(QUEUE);
    let cfg = ListenerConfig {
        addrs: addrs.to_vec(),
        ..Default::default()
    };
    let listener = Listener::start(cfg, stop, move |b: Batch| {
        let _ = tx.blocking_send(b);
    })
    .map_err(|e| RunError::Config(e.to_string()))?;
    let _ = telemetry.netflow.set((listener.stats(), per_exporter));
    for s in listener.sockets() {
        tracing::info!(listen = %s.local, rcvbuf = s.rcvbuf_bytes, "NetFlow/IPFIX listener ready");
    }
    Ok(Some((listener, rx)))
}

/// Splits a batch into runs of one observer each (records of one exporter come together).
pub fn by_observer(b: Batch) -> Vec<(Arc<str>, Vec<Observation>)> {
    let mut out: Vec<(Arc<str>, Vec<Observation>)> = Vec::new();
    for (who, o) in b.observations {
        match out.last_mut() {
            Some((w, v)) if Arc::ptr_eq(w, &who) || **w == *who => v.push(o),
            _ => out.push((who, vec![o])),
        }
    }
    out
}

/// Receives the next batch when a listener runs; pending forever otherwise.
pub async fn recv(rx: &mut Option<mpsc::Receiver<Batch>>) -> Option<Batch> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
