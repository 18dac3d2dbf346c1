//! The shared middle of `run` and `server`: attribution, per-interval aggregation, the
//! store writer with bounded retry, and exactly-once acknowledgement of agents' batches.
//!
//! Acks: a batch is acknowledged only once every interval it touched is written; the
//! highest durable sequence number per agent is written in the same transaction as the
//! rows (`agent_marks`), so after a restart a replayed batch is recognised and acked
//! without being counted again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_enrich::Attributor;
use podflow_inventory::SharedIndex;
use podflow_model::{Attribution, FlowLabels, FlowRow, Observation, Oriented};
use podflow_store::FlowStore;
use tokio_util::sync::CancellationToken;

use crate::enrichment::{self, EnrichSettings, InventorySource, LocalInventory};
use crate::run::RunError;
use crate::{Aggregator, Telemetry};

/// Bound on rows kept for retry after failed store writes.
const MAX_PENDING_ROWS: usize = 1_000_000;

/// Where to send the ack of a batch, once durable.
#[derive(Debug, Clone)]
pub struct AckToken {
    /// The agent.
    pub agent: Arc<str>,
    /// The batch.
    pub seq: u64,
    /// The connection's ack queue (bounded; a full or closed queue drops the ack, and the
    /// agent's replay is then acked as a duplicate).
    pub tx: tokio::sync::mpsc::Sender<podflow_proto::Ack>,
}

/// What happened to a batch offered to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; acked when durable.
    Applied,
    /// Already durable: ack now, count nothing.
    Durable,
    /// Received before and not yet durable: acked with the original.
    InFlight,
}

/// A key's labels; `remote_observed` when another observed node sees the connection
/// too (the count-once view).
fn labels(a: &Attribution, observer: &str, observers: &HashSet<Arc<str>>) -> FlowLabels {
    let mut l = FlowLabels::of(a);
    l.remote_observed = a
        .remote
        .place
        .node()
        .is_some_and(|n| *n.name != *observer && observers.contains(&n.name));
    l
}

/// The observation oriented the way attribution decided (local end, initiator).
fn oriented(o: &Observation, a: &Attribution) -> Oriented {
    let (out, inbound) = if a.local_initiated {
        (o.delta_orig, o.delta_reply)
    } else {
        (o.delta_reply, o.delta_orig)
    };
    Oriented {
        local: a.local.ip,
        remote: a.remote.ip,
        responder_port: a.responder_port,
        local_initiated: a.local_initiated,
        service: o.is_dnat().then(|| o.dialled()),
        out,
        inbound,
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a pipeline is built from.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Attribution settings.
    pub settings: EnrichSettings,
    /// The observing node, when there is only one (`run`).
    pub observer: Option<String>,
    /// Interval length, seconds.
    pub interval_s: u32,
    /// Bound on keys per interval.
    pub max_keys: usize,
    /// How long rows are kept.
    pub retention: Duration,
}

/// Attribution, aggregation, the writer and the acks.
#[derive(Debug)]
pub struct Pipeline<S: FlowStore + 'static> {
    settings: EnrichSettings,
    attributor: Attributor,
    ranges_stamp: Vec<(String, u64, Option<std::time::SystemTime>)>,
    ranges_checked: Instant,
    shared: SharedIndex,
    local_inv: Option<LocalInventory>,
    agg: Aggregator,
    store: Arc<Mutex<S>>,
    pending: Vec<FlowRow>,
    telemetry: Arc<Telemetry>,
    retention: Duration,
    last_expire: Instant,
    /// Every observer seen (nodes running an agent, exporters).
    observers: HashSet<Arc<str>>,
    /// Highest durable batch per agent.
    durable: HashMap<Arc<str>, u64>,
    /// Batches counted but not yet durable: (agent, seq) → interval.
    in_flight: HashMap<(Arc<str>, u64), i64>,
    /// Acks waiting for their interval to be written.
    acks: BTreeMap<i64, Vec<AckToken>>,
    /// Intervals before this one have been flushed to `pending`.
    flushed_before: i64,
    /// NetFlow records summed per flow until their interval closes (filled by the
    /// receive threads).
    prefold: Arc<Mutex<crate::prefold::Prefold>>,
}

impl<S: FlowStore + 'static> Pipeline<S> {
    /// Sets up attribution (loading cloud ranges, prices, the inventory) around `store`.
    pub async fn new(
        cfg: PipelineConfig,
        store: S,
        telemetry: Arc<Telemetry>,
        shutdown: &CancellationToken,
    ) -> Result<Pipeline<S>, RunError> {
        let PipelineConfig {
            settings,
            observer,
            interval_s,
            max_keys,
            retention,
        } = cfg;
        let observer = observer.as_deref();
        let attributor = enrichment::attributor(&settings)?;
        let shared = SharedIndex::default();
        let cfg = enrichment::index_config(&settings);
        let local_inv = match &settings.inventory {
            InventorySource::None => Some(LocalInventory::new(None, observer, cfg, shared.clone())),
            InventorySource::File(p) => {
                // Fail fast on a file that does not parse; later bad versions keep the last index.
                podflow_inventory::Inventory::load(p)
                    .map_err(enrichment::EnrichSetupError::from)?;
                Some(LocalInventory::new(
                    Some(p.clone()),
                    observer,
                    cfg,
                    shared.clone(),
                ))
            }
            InventorySource::Kube { kubeconfig } => {
                crate::run::start_kube(
                    kubeconfig.as_deref(),
                    &settings,
                    shared.clone(),
                    shutdown.clone(),
                )
                .await?;
                None
            }
        };
        let durable = store
            .marks()?
            .into_iter()
            .map(|(a, s)| (Arc::from(a.as_str()), s))
            .collect();
        Ok(Pipeline {
            ranges_stamp: enrichment::ranges_stamp(&settings),
            ranges_checked: Instant::now(),
            settings,
            attributor,
            shared,
            local_inv,
            agg: Aggregator::new(interval_s, max_keys),
            prefold: Arc::new(Mutex::new(crate::prefold::Prefold::new(
                interval_s, max_keys,
            ))),
            store: Arc::new(Mutex::new(store)),
            pending: Vec::new(),
            telemetry,
            retention,
            last_expire: Instant::now(),
            durable,
            observers: HashSet::new(),
            in_flight: HashMap::new(),
            acks: BTreeMap::new(),
            flushed_before: i64::MIN,
        })
    }

    /// The store (shared with the writer task).
    pub fn store(&self) -> Arc<Mutex<S>> {
        Arc::clone(&self.store)
    }

    /// Observations of `observer`, read at `at_ns`; `addrs` are its own addresses when
    /// known (they name the node's end).
    pub fn ingest(
        &mut self,
        observer: &Arc<str>,
        addrs: Option<Arc<HashSet<IpAddr>>>,
        obs: &[Observation],
        at_ns: u64,
    ) {
        if let (Some(a), Some(inv)) = (addrs, self.local_inv.as_mut())
            && let Err(e) = inv.refresh(Some((observer, a)), podflow_inventory::now_ns())
        {
            tracing::warn!(error = %e, "inventory file not reloaded; keeping the previous one");
        }
        if !self.observers.contains(observer) {
            self.observers.insert(Arc::clone(observer));
        }
        let idx = self.shared.load();
        let at = (at_ns / 1_000_000_000) as i64;
        let telemetry = Arc::clone(&self.telemetry);
        let mut histograms = telemetry.service_histograms.lock().ok();
        for o in obs {
            let a = self.attributor.attribute(o, observer, &idx, at_ns);
            if let (Some(s), Some(h)) = (&a.service, histograms.as_mut()) {
                h.observe(&s.meta.namespace, &s.meta.name, o);
            }
            let observers = &self.observers;
            self.agg.record(
                observer,
                o,
                &oriented(o, &a),
                at,
                || labels(&a, observer, observers),
                a.cost_usd,
            );
        }
        drop(histograms);
        self.note_keys();
    }

    fn note_keys(&self) {
        self.telemetry
            .agg_keys
            .store(self.agg.keys() as u64, Relaxed);
        self.telemetry
            .agg_overflow
            .store(self.agg.overflowed(), Relaxed);
    }

    /// Where the NetFlow receive threads sum records per flow; the pipeline attributes
    /// each flow when its interval closes (crate::prefold).
    pub fn prefold(&self) -> Arc<Mutex<crate::prefold::Prefold>> {
        Arc::clone(&self.prefold)
    }

    /// NetFlow records the receive threads did not sum (see [`Self::prefold`]), read
    /// now: attributed one by one.
    pub fn ingest_records(&mut self, batch: podflow_netflow::Batch) {
        let now = podflow_inventory::now_ns();
        for (who, obs) in crate::netflow::by_observer(batch) {
            self.ingest(&who, None, &obs, now);
        }
    }

    /// Attributes and aggregates the NetFlow flows of the intervals before `before`.
    fn fold(&mut self, before: i64) {
        let (flows, held) = match self.prefold.lock() {
            Ok(mut p) => (p.take(before), p.len()),
            Err(_) => return,
        };
        self.telemetry
            .netflow_flows_held
            .store(held as u64, Relaxed);
        if flows.is_empty() {
            return;
        }
        let idx = self.shared.load();
        let mut last_observer: Option<Arc<str>> = None;
        flows.for_each(|f| {
            // Runs of flows share an exporter: look the set up when it changes.
            if !last_observer
                .as_ref()
                .is_some_and(|o| Arc::ptr_eq(o, &f.observer))
            {
                if !self.observers.contains(&f.observer) {
                    self.observers.insert(Arc::clone(&f.observer));
                }
                last_observer = Some(Arc::clone(&f.observer));
            }
            let a = self
                .attributor
                .attribute(&f.obs, &f.observer, &idx, f.seen_ns);
            let observers = &self.observers;
            self.agg.record_counted(
                &f.observer,
                f.obs.proto,
                &oriented(&f.obs, &a),
                f.interval,
                || labels(&a, &f.observer, observers),
                a.cost_usd,
                (f.opened, f.closed),
            );
        });
        if let Ok(mut p) = self.prefold.lock() {
            p.recycle(flows);
        }
        self.note_keys();
    }

    /// Offers an agent's batch: counts it unless it was seen, and arranges its ack.
    pub fn admit(
        &mut self,
        ack: AckToken,
        observer: &Arc<str>,
        addrs: Option<Arc<HashSet<IpAddr>>>,
        obs: &[Observation],
        at_ns: u64,
    ) -> Admission {
        if self.durable.get(&ack.agent).is_some_and(|d| ack.seq <= *d) {
            let _ = ack.tx.try_send(podflow_proto::Ack {
                seq: ack.seq,
                error: String::new(),
            });
            return Admission::Durable;
        }
        let interval = self.agg.interval_of((at_ns / 1_000_000_000) as i64);
        if let Some(iv) = self.in_flight.get(&(Arc::clone(&ack.agent), ack.seq)) {
            self.acks.entry(*iv).or_default().push(ack);
            return Admission::InFlight;
        }
        // A replay of an interval already flushed makes a bucket of that interval again;
        // the next tick writes it, and the ack goes with it.
        self.ingest(observer, addrs, obs, at_ns);
        self.in_flight
            .insert((Arc::clone(&ack.agent), ack.seq), interval);
        self.acks.entry(interval).or_default().push(ack);
        Admission::Applied
    }

    /// Periodic work: reloads, flushes closed intervals, writes, releases acks, expires.
    pub async fn tick(&mut self) {
        if let Some(inv) = self.local_inv.as_mut()
            && let Err(e) = inv.refresh(None, podflow_inventory::now_ns())
        {
            tracing::warn!(error = %e, "inventory file not reloaded; keeping the previous one");
        }
        // The providers' range files are replaced now and then: reload on change.
        if self.ranges_checked.elapsed() > Duration::from_secs(30) {
            self.ranges_checked = Instant::now();
            let st = enrichment::ranges_stamp(&self.settings);
            if st != self.ranges_stamp {
                self.ranges_stamp = st;
                match enrichment::attributor(&self.settings) {
                    Ok(a) => self.attributor = a,
                    Err(e) => {
                        tracing::warn!(error = %e, "cloud ranges not reloaded; keeping the previous ones")
                    }
                }
            }
        }
        self.flush(unix_now(), false).await;
        if self.last_expire.elapsed() > Duration::from_secs(3600) {
            self.last_expire = Instant::now();
            self.expire(unix_now() - self.retention.as_secs() as i64)
                .await;
        }
    }

    /// Flushes every interval (at shutdown).
    pub async fn finish(&mut self) {
        self.flush(unix_now(), true).await;
        if !self.pending.is_empty() {
            self.flush(unix_now(), true).await;
        }
    }

    async fn flush(&mut self, now: i64, force: bool) {
        self.fold(if force {
            i64::MAX
        } else {
            self.agg.interval_of(now)
        });
        let rows = self.agg.flush(now, force);
        let upto = if force {
            i64::MAX
        } else {
            self.agg.interval_of(now)
        };
        self.flushed_before = self.flushed_before.max(upto);
        for r in &rows {
            self.telemetry.add_flow(r.key.proto, &r.totals);
        }
        // Also with no rows: series that stopped moving expire.
        if let Ok(mut w) = self.telemetry.workloads.lock()
            && let Some(w) = w.as_mut()
        {
            w.add_interval(&rows, now);
        }
        self.pending.extend(rows);
        // The batches whose intervals are all in `pending` now.
        let ready: Vec<i64> = self.acks.range(..upto).map(|(k, _)| *k).collect();
        let mut marks: HashMap<Arc<str>, u64> = HashMap::new();
        for k in &ready {
            for a in &self.acks[k] {
                let m = marks.entry(Arc::clone(&a.agent)).or_default();
                *m = (*m).max(a.seq);
            }
        }
        if self.pending.is_empty() && marks.is_empty() {
            return;
        }
        let marks_v: Vec<(String, u64)> = marks.iter().map(|(a, s)| (a.to_string(), *s)).collect();
        let batch = std::mem::take(&mut self.pending);
        let store = Arc::clone(&self.store);
        let t0 = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let r = match store.lock() {
                Ok(mut s) => s.write_marked(&batch, &marks_v).map_err(|e| e.to_string()),
                Err(_) => Err("store lock poisoned".to_string()),
            };
            (batch, r)
        })
        .await;
        let t = &self.telemetry;
        t.store_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        match res {
            Ok((batch, Ok(()))) => {
                t.store_rows.fetch_add(batch.len() as u64, Relaxed);
                for (agent, seq) in marks {
                    let d = self.durable.entry(agent).or_default();
                    *d = (*d).max(seq);
                }
                for k in ready {
                    for a in self.acks.remove(&k).unwrap_or_default() {
                        self.in_flight.remove(&(Arc::clone(&a.agent), a.seq));
                        let ack = podflow_proto::Ack {
                            seq: a.seq,
                            error: String::new(),
                        };
                        if a.tx.try_send(ack).is_err() {
                            t.acks_dropped.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            Ok((batch, Err(e))) => {
                t.store_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, rows = batch.len(), "store write failed; will retry (acks withheld)");
                self.pending = batch;
                if self.pending.len() > MAX_PENDING_ROWS {
                    let drop_n = self.pending.len() - MAX_PENDING_ROWS;
                    self.pending.drain(..drop_n);
                    t.store_dropped.fetch_add(drop_n as u64, Relaxed);
                }
            }
            Err(e) => {
                t.store_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "store writer task failed");
            }
        }
        t.store_pending.store(self.pending.len() as u64, Relaxed);
    }

    async fn expire(&self, before: i64) {
        let store = Arc::clone(&self.store);
        let r = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| "lock".to_string())?
                .expire(before)
                .map_err(|e| e.to_string())
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => tracing::info!(rows = n, "expired old rows"),
            Ok(Err(e)) => tracing::warn!(error = %e, "expiring old rows failed"),
            _ => {}
        }
    }
}
