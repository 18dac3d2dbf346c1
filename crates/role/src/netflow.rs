//! The NetFlow/IPFIX listener inside a role: records become observations (observer =
//! `"<exporter ip>/<domain>"`) and go through the same attribution, aggregation, store
//! and metrics as conntrack's (`run`, `server`), or are forwarded (`agent`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use podflow_model::Observation;
pub use podflow_netflow::AllowList;
use podflow_netflow::{Batch, Listener, ListenerConfig};
use tokio::sync::mpsc;

use podflow_pipeline::prefold::Prefold;

use crate::error::RoleError;
use crate::telemetry::Registry;

/// Batches queued between the receive threads and the pipeline; beyond, the threads wait
/// and the sockets' buffers fill (the kernel's drops are counted).
const QUEUE: usize = 64;

/// Starts listening on `addrs` (none: nothing to start), decoding only datagrams from
/// the exporters `allow` admits. With `prefold`, the receive threads sum records per
/// flow there and queue only what it does not take.
pub fn start(
    addrs: &[SocketAddr],
    allow: &AllowList,
    registry: &Arc<Registry>,
    per_exporter: bool,
    prefold: Option<Arc<Mutex<Prefold>>>,
    stop: Arc<AtomicBool>,
) -> Result<Option<(Listener, mpsc::Receiver<Batch>)>, RoleError> {
    if addrs.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel::<Batch>(QUEUE);
    let allow = allow.clone();
    if allow.allows_any() {
        tracing::warn!(
            listen = ?addrs,
            "NetFlow/IPFIX: datagrams from every source address are decoded; set \
             --netflow-allow to the exporters' networks (podflow_netflow_allow_all = 1)"
        );
    } else {
        tracing::info!(allow = %allow, "NetFlow/IPFIX: only these exporters are decoded");
    }
    let cfg = ListenerConfig {
        addrs: addrs.to_vec(),
        allow,
        ..Default::default()
    };
    let listener = Listener::start(cfg, stop, move |b: &mut Batch| {
        let b = match &prefold {
            Some(p) => {
                let now = podflow_inventory::now_ns();
                let rest = match p.lock() {
                    Ok(mut p) => p.add_batch(b, now),
                    Err(_) => std::mem::take(b),
                };
                if rest.is_empty() {
                    return;
                }
                rest
            }
            None => std::mem::take(b),
        };
        let _ = tx.blocking_send(b);
    })
    .map_err(|e| RoleError::Config(e.to_string()))?;
    let _ = registry.netflow.set((listener.stats(), per_exporter));
    for s in listener.sockets() {
        tracing::info!(listen = %s.local, rcvbuf = s.rcvbuf_bytes, "NetFlow/IPFIX listener ready");
    }
    Ok(Some((listener, rx)))
}

impl Drop for Intake {
    fn drop(&mut self) {
        // The receive threads end within 200 ms of this.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Splits a batch into runs of one observer each (records of one exporter come together).
pub fn by_observer(b: Batch) -> Vec<(Arc<str>, Vec<Observation>)> {
    let mut out: Vec<(Arc<str>, Vec<Observation>)> = Vec::new();
    let mut last = None;
    for f in &b.flows {
        let Some(who) = b.observer(f) else { continue };
        match out.last_mut() {
            Some((_, v)) if last == Some(f.observer) => v.push(f.to_observation()),
            _ => out.push((Arc::clone(who), vec![f.to_observation()])),
        }
        last = Some(f.observer);
    }
    out
}

/// The listener (if any addresses were given) and its queue, as a role's loop uses them.
#[derive(Debug)]
pub struct Intake {
    listener: Option<Listener>,
    rx: Option<mpsc::Receiver<Batch>>,
    stop: Arc<AtomicBool>,
}

impl Intake {
    /// Starts listening on `addrs`; with none, an intake that never yields. See
    /// [`start`] for `allow` and `prefold`.
    pub fn start(
        addrs: &[SocketAddr],
        allow: &AllowList,
        registry: &Arc<Registry>,
        per_exporter: bool,
        prefold: Option<Arc<Mutex<Prefold>>>,
    ) -> Result<Intake, RoleError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (listener, rx) = match start(
            addrs,
            allow,
            registry,
            per_exporter,
            prefold,
            Arc::clone(&stop),
        )? {
            Some((l, rx)) => (Some(l), Some(rx)),
            None => (None, None),
        };
        Ok(Intake { listener, rx, stop })
    }

    /// The next batch; pending forever without a listener.
    pub async fn recv(&mut self) -> Option<Batch> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Stops the receive threads and returns the batches still queued.
    pub async fn stop(mut self) -> Vec<Batch> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(l) = self.listener.take() {
            let _ = tokio::task::spawn_blocking(move || l.join()).await;
        }
        let mut out = Vec::new();
        if let Some(rx) = self.rx.as_mut() {
            while let Ok(b) = rx.try_recv() {
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow_model::Protocol;
    use podflow_netflow::Flow;

    fn flow(src_port: u16) -> Flow {
        Flow {
            src: "10.0.0.1".parse().expect("ip"),
            dst: "10.0.0.2".parse().expect("ip"),
            src_port,
            dst_port: 53,
            proto: Protocol::UDP,
            opened: false,
            closed: src_port == 3,
            observer: 0,
            bytes: 100 + u64::from(src_port),
            packets: 1,
            start_ns: 7,
            end_ns: 9,
        }
    }

    #[test]
    fn a_batch_splits_into_runs_of_one_observer_each() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a/0"), Arc::from("b/0"));
        let mut batch = Batch::default();
        for (who, port) in [(&a, 1), (&a, 2), (&b, 3), (&a, 4)] {
            batch.push(who, flow(port));
        }
        assert_eq!(batch.observers.len(), 2, "each observer once");
        let runs = by_observer(batch);
        type Run<'a> = (&'a str, Vec<(u16, u64, bool)>);
        let got: Vec<Run> = runs
            .iter()
            .map(|(who, obs)| {
                let v = obs
                    .iter()
                    .map(|o| (o.orig.src_port, o.delta_orig.bytes, o.closed))
                    .collect();
                (&**who, v)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a/0", vec![(1, 101, false), (2, 102, false)]),
                ("b/0", vec![(3, 103, true)]),
                ("a/0", vec![(4, 104, false)]),
            ]
        );
        let o = &runs[0].1[0];
        assert_eq!(
            (o.reply.src_port, o.reply.dst_port),
            (53, 1),
            "reply mirrors"
        );
        assert_eq!((o.start_ns, o.stop_ns), (7, 9));
    }
}
