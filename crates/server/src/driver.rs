//! The async driver of `run` and `server`: attribution, per-interval aggregation, and
//! the store writes that make agents' batches durable, in the order the ledger
//! (`podflow_pipeline::ledger`) decides; periodic reloads and expiry.
//!
//! Acks: a batch is acknowledged only once every row it contributed to is written;
//! the agents' durable marks are written with the rows (in the same transaction on
//! SQLite; after them on ClickHouse, the chunks' tokens covering the gap), so after a
//! restart a replayed batch is recognised and acked without being counted again. A
//! failed (or panicked) write keeps its rows and acks nothing and is retried unchanged;
//! when the rows waiting reach the bound, new batches are refused as busy.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_enrich::Attributor;
use podflow_inventory::{IpIndex, SharedIndex};
use podflow_model::{
    Attribution, ChunkId, FlowKey, FlowLabels, FlowRow, Observation, Oriented, PROBE_APP, Place,
    Prefixes, Protocol,
};
use podflow_pipeline::Aggregator;
use podflow_pipeline::aggregate::NewLabels;
use podflow_pipeline::ledger::{BatchId, Ledger, MAX_AGENTS, MAX_AGENTS_PER_NODE, Offer, TooMany};
use podflow_pipeline::prefold::Prefold;
use podflow_role::netflow::by_observer;
use podflow_role::{Registry, RoleError};
use podflow_store::{ChunkWrite, FlowStore, JobWrite};
use tokio_util::sync::CancellationToken;

use crate::attribution::{self, EnrichSettings, InventorySource, LocalInventory};

/// Where the ack of a batch goes, once durable: its connection's bounded queue (a full or
/// closed queue drops the ack, counted; the agent's replay is then acked as a duplicate).
pub type AckTx = tokio::sync::mpsc::Sender<podflow_proto::Ack>;

/// The durable mark of every agent, as the last write left it: what a connecting agent
/// is told (shared with the gRPC intake).
pub type Marks = Arc<std::sync::RwLock<std::collections::HashMap<String, u64>>>;

/// A key's labels; `remote_observed` when another node that runs an agent sees the
/// connection too (the count-once view): from the agents' durable marks, so it holds
/// across server restarts, and ends when an agent stops sending (`Ledger::observes`).
///
/// A connection between two nodes' own addresses (host network), both running agents, to
/// one of the agents' probe ports (`probe_ports`: protocol and port) is the probes' own
/// traffic: both ends get the app label [`PROBE_APP`].
fn labels<A>(
    a: &Attribution,
    proto: Protocol,
    probe_ports: &[(Protocol, u16)],
    observer: &str,
    ledger: &Ledger<A>,
    at: i64,
) -> FlowLabels {
    let mut l = FlowLabels::of(a);
    l.remote_observed = remote_observed(a, observer, ledger, at);
    if is_probe(a, proto, probe_ports, l.remote_observed) {
        let app: podflow_model::Name = PROBE_APP.into();
        l.local.app = app.clone();
        l.remote.app = app;
    }
    l
}

/// Whether another node that runs an agent sees the connection too (see [`labels`]).
fn remote_observed<A>(a: &Attribution, observer: &str, ledger: &Ledger<A>, at: i64) -> bool {
    a.remote
        .place
        .node()
        .is_some_and(|n| *n.name != *observer && ledger.observes(&n.name, at))
}

/// Whether the connection is the probes' own (see [`labels`]).
fn is_probe(
    a: &Attribution,
    proto: Protocol,
    probe_ports: &[(Protocol, u16)],
    remote_observed: bool,
) -> bool {
    remote_observed
        && matches!(a.local.place, Place::Node(_))
        && matches!(a.remote.place, Place::Node(_))
        && probe_ports.contains(&(proto, a.responder_port))
}

/// [`labels`] for the aggregator, which asks whether they equal the last new key's
/// before it has them built ([`NewLabels`]).
struct LabelsOf<'a, A> {
    a: &'a Attribution,
    proto: Protocol,
    probe_ports: &'a [(Protocol, u16)],
    observer: &'a str,
    ledger: &'a Ledger<A>,
    at: i64,
}

impl<A> NewLabels for LabelsOf<'_, A> {
    fn are(&self, l: &FlowLabels) -> bool {
        let observed = remote_observed(self.a, self.observer, self.ledger, self.at);
        // The probes' relabelled ends are rare: those are built and compared.
        l.remote_observed == observed
            && !is_probe(self.a, self.proto, self.probe_ports, observed)
            && l.is_of(self.a)
    }

    fn build(self) -> FlowLabels {
        labels(
            self.a,
            self.proto,
            self.probe_ports,
            self.observer,
            self.ledger,
            self.at,
        )
    }
}

/// A number naming this process's chunks of rows no agent replays (part of their
/// tokens), different on every start.
fn instance() -> u64 {
    let ns = podflow_inventory::now_ns();
    ns ^ (u64::from(std::process::id()) << 40)
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

/// Now, Unix seconds.
fn unix_now() -> i64 {
    (podflow_inventory::now_ns() / 1_000_000_000) as i64
}

/// What a driver is built from.
#[derive(Debug, Clone)]
pub struct DriverConfig {
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
    /// Rows waiting for the store beyond which agents' new batches are refused as busy.
    pub max_pending_rows: usize,
    /// The agents' probe ports (protocol, port): node-to-node flows to them are marked
    /// as the probes' own ([`PROBE_APP`]).
    pub probe_ports: Vec<(Protocol, u16)>,
    /// Keep the addresses of NetFlow/IPFIX flows with no end in the cluster instead of
    /// summing them per network (docs/netflow.md).
    pub netflow_keep_addresses: bool,
}

/// Attribution, aggregation, the writer and the acks.
#[derive(Debug)]
pub struct Driver<S: FlowStore + 'static> {
    /// The agents' probe ports ([`DriverConfig::probe_ports`]).
    probe_ports: Vec<(Protocol, u16)>,
    settings: EnrichSettings,
    attributor: Attributor,
    ranges_stamp: Vec<(String, u64, Option<std::time::SystemTime>)>,
    ranges_checked: Instant,
    shared: SharedIndex,
    local_inv: Option<LocalInventory>,
    agg: Aggregator,
    store: Arc<Mutex<S>>,
    interval_s: u32,
    registry: Arc<Registry>,
    retention: Duration,
    last_expire: Instant,
    /// Which batches are counted, written and acknowledged.
    ledger: Ledger<AckTx>,
    /// The durable marks, published for connecting agents.
    marks: Marks,
    /// NetFlow records summed per flow until their interval closes (filled by the
    /// receive threads).
    prefold: Arc<Mutex<Prefold>>,
    /// [`DriverConfig::netflow_keep_addresses`].
    netflow_keep_addresses: bool,
}

impl<S: FlowStore + 'static> Driver<S> {
    /// Sets up attribution (loading cloud ranges, prices, the inventory) around `store`.
    pub async fn new(
        cfg: DriverConfig,
        store: S,
        registry: Arc<Registry>,
        shutdown: &CancellationToken,
    ) -> Result<Driver<S>, RoleError> {
        let DriverConfig {
            settings,
            observer,
            interval_s,
            max_keys,
            retention,
            max_pending_rows,
            probe_ports,
            netflow_keep_addresses,
        } = cfg;
        let observer = observer.as_deref();
        let attributor = attribution::attributor(&settings)
            .map_err(|e| RoleError::Attribution(e.to_string()))?;
        let shared = SharedIndex::default();
        let cfg = attribution::index_config(&settings);
        let mut local_inv = match &settings.inventory {
            InventorySource::None => Some(LocalInventory::new(None, observer, cfg, shared.clone())),
            InventorySource::File(p) => {
                // Fail fast on a file that does not parse; later bad versions keep the last index.
                podflow_inventory::Inventory::load(p)
                    .map_err(|e| RoleError::Attribution(e.to_string()))?;
                Some(LocalInventory::new(
                    Some(p.clone()),
                    observer,
                    cfg,
                    shared.clone(),
                ))
            }
            InventorySource::Kube { kubeconfig } => {
                attribution::start_kube(
                    kubeconfig.as_deref(),
                    &settings,
                    shared.clone(),
                    shutdown.clone(),
                )
                .await?;
                None
            }
        };
        // The file's index before the driver is ready (not at the first tick), so what
        // is ready answers from it.
        if let Some(inv) = local_inv.as_mut() {
            inv.refresh(None, podflow_inventory::now_ns())
                .map_err(|e| RoleError::Attribution(e.to_string()))?;
        }
        // A blocking call (ClickHouse blocks on a runtime of its own, which must not run
        // inside this task).
        let (store, stored) = tokio::task::spawn_blocking(move || {
            let m = store.agents();
            (store, m)
        })
        .await
        .map_err(|e| RoleError::Attribution(format!("reading the agents' marks: {e}")))?;
        let stored = stored?;
        let marks: Marks = Arc::new(std::sync::RwLock::new(
            stored.iter().map(|m| (m.agent.clone(), m.seq)).collect(),
        ));
        let ledger = Ledger::new(interval_s, max_pending_rows, stored, instance());
        Ok(Driver {
            ranges_stamp: attribution::ranges_stamp(&settings),
            ranges_checked: Instant::now(),
            settings,
            attributor,
            shared,
            local_inv,
            agg: Aggregator::new(interval_s, max_keys),
            interval_s,
            prefold: Arc::new(Mutex::new(Prefold::new(interval_s, max_keys))),
            store: Arc::new(Mutex::new(store)),
            registry,
            retention,
            last_expire: Instant::now(),
            ledger,
            marks,
            probe_ports,
            netflow_keep_addresses,
        })
    }

    /// The agents' durable marks (updated after every write).
    pub fn marks(&self) -> Marks {
        Arc::clone(&self.marks)
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
        self.ingest_in(0, observer, addrs, obs, at_ns);
    }

    /// [`Self::ingest`] into the ledger's chunk `chunk` (0: rows no agent replays).
    fn ingest_in(
        &mut self,
        chunk: u64,
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
        let idx = self.shared.load();
        let at = (at_ns / 1_000_000_000) as i64;
        let registry = Arc::clone(&self.registry);
        let mut histograms = registry.service_histograms.lock().ok();
        for o in obs {
            let a = self.attributor.attribute(o, observer, &idx, at_ns);
            if let (Some(s), Some(h)) = (&a.service, histograms.as_mut()) {
                h.observe(&s.meta.namespace, &s.meta.name, o);
            }
            let (ledger, probe_ports) = (&self.ledger, self.probe_ports.as_slice());
            let labels = LabelsOf {
                a: &a,
                proto: o.proto,
                probe_ports,
                observer,
                ledger,
                at,
            };
            self.agg
                .record_in(chunk, observer, o, &oriented(o, &a), at, labels, a.cost_usd);
        }
        drop(histograms);
        self.note_keys();
    }

    fn note_keys(&self) {
        let p = &self.registry.pipeline;
        p.agg_keys.store(self.agg.keys() as u64, Relaxed);
        p.agg_overflow.store(self.agg.overflowed(), Relaxed);
        let (from_nf, by_exporter) = self
            .prefold
            .lock()
            .map_or((0, Vec::new()), |p| (p.rejected(), p.rejected_by_source()));
        let rejected = self.agg.rejected() + from_nf;
        if p.rows_rejected.swap(rejected, Relaxed) != rejected {
            let mut by: Vec<(String, u64)> = self
                .agg
                .rejected_by_source()
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .chain(by_exporter.into_iter().map(|(s, n)| (s.to_string(), n)))
                .collect();
            by.sort_by_key(|s| std::cmp::Reverse(s.1));
            by.truncate(10);
            tracing::warn!(total = rejected, sources = ?by,
                "observations rejected: a counter would pass the bound of a row per interval");
        }
    }

    /// Where the NetFlow receive threads sum records per flow; the pipeline attributes
    /// each flow when its interval closes (`podflow_pipeline::prefold`).
    pub fn prefold(&self) -> Arc<Mutex<Prefold>> {
        Arc::clone(&self.prefold)
    }

    /// The inventory index attribution reads (nodes for the probes' peer sets).
    pub fn inventory(&self) -> SharedIndex {
        self.shared.clone()
    }

    /// NetFlow records the receive threads did not sum (see [`Self::prefold`]), read
    /// now: attributed one by one.
    pub fn ingest_records(&mut self, batch: podflow_netflow::Batch) {
        let now = podflow_inventory::now_ns();
        let idx = self.shared.load();
        let at = (now / 1_000_000_000) as i64;
        for (who, obs) in by_observer(batch) {
            for o in &obs {
                let conns = (u64::from(o.opened), u64::from(o.closed));
                self.record_netflow(&idx, &who, o, (at, now), conns);
            }
        }
        self.note_keys();
    }

    /// Attributes and aggregates the NetFlow flows of the intervals before `before`.
    fn fold(&mut self, before: i64) {
        let (flows, held) = match self.prefold.lock() {
            Ok(mut p) => (p.take(before), p.len()),
            Err(_) => return,
        };
        self.registry
            .pipeline
            .netflow_flows_held
            .store(held as u64, Relaxed);
        if flows.is_empty() {
            return;
        }
        let idx = self.shared.load();
        flows.for_each(|f| {
            let conns = (f.opened, f.closed);
            self.record_netflow(&idx, &f.observer, &f.obs, (f.interval, f.seen_ns), conns);
        });
        if let Ok(mut p) = self.prefold.lock() {
            p.recycle(flows);
        }
        self.note_keys();
    }

    /// Attributes one NetFlow flow (`obs`, summed records of `observer`) at `seen_ns`
    /// and adds it to interval `at`, per network when neither end is in the cluster.
    fn record_netflow(
        &mut self,
        idx: &IpIndex,
        observer: &Arc<str>,
        obs: &Observation,
        (at, seen_ns): (i64, u64),
        conns: (u64, u64),
    ) {
        let a = self.attributor.attribute(obs, observer, idx, seen_ns);
        let o = oriented(obs, &a);
        let key = self.netflow_key(obs.proto, &o, &a);
        if key.prefixes != Prefixes::default() {
            self.registry
                .pipeline
                .netflow_summed_per_network
                .fetch_add(1, Relaxed);
        }
        let (ledger, probe_ports) = (&self.ledger, self.probe_ports.as_slice());
        let labels = LabelsOf {
            a: &a,
            proto: obs.proto,
            probe_ports,
            observer,
            ledger,
            at,
        };
        self.agg
            .record_counted(observer, key, &o, at, labels, a.cost_usd, conns);
    }

    /// The key of a NetFlow flow: its networks when neither end is in the cluster
    /// (unless [`DriverConfig::netflow_keep_addresses`]), else its addresses.
    fn netflow_key(&self, proto: Protocol, o: &Oriented, a: &Attribution) -> FlowKey {
        let key = FlowKey::of(proto, o);
        if self.netflow_keep_addresses {
            return key;
        }
        match self.attributor.outside_networks(a) {
            Some((local, remote)) => FlowKey {
                local: local.addr(),
                remote: remote.addr(),
                ..key
            }
            .with_prefix_lens(local.len(), remote.len()),
            None => key,
        }
    }

    /// Whether a batch of `agent` on `node` may be offered: a new agent only within
    /// [`MAX_AGENTS`] in all and [`MAX_AGENTS_PER_NODE`] on its node.
    pub fn admits(&self, agent: &str, node: &str) -> Result<(), TooMany> {
        self.ledger
            .admits(agent, node, MAX_AGENTS, MAX_AGENTS_PER_NODE)
    }

    /// Offers an agent's batch `id`, observed at `at_ns`: counts it unless it was seen
    /// (or the write backlog is full), and arranges its ack on `ack`.
    pub fn offer(
        &mut self,
        id: BatchId,
        ack: AckTx,
        observer: &Arc<str>,
        addrs: Option<Arc<HashSet<IpAddr>>>,
        obs: &[Observation],
        at_ns: u64,
    ) -> Offer<AckTx> {
        let at = (at_ns / 1_000_000_000) as i64;
        let offer = self
            .ledger
            .offer(id, observer, at, unix_now(), obs.len(), ack);
        if let Offer::Count { at: counted, chunk } = offer {
            // The ledger's time: never before the agent's previous batch (so its batches
            // close in order), and inside the day of a chunk it is cut again into.
            let at_ns = if counted == at {
                at_ns
            } else {
                counted.max(0) as u64 * 1_000_000_000
            };
            self.ingest_in(chunk, observer, addrs, obs, at_ns);
        }
        offer
    }

    /// Rows of intervals starting before this (Unix seconds) are late at `now`: three
    /// intervals behind.
    fn late_before(&self, now: i64) -> i64 {
        self.agg.interval_of(now) - 2 * i64::from(self.interval_s)
    }

    /// Whether a batch observed at `at_ns` is a replay of the past (see [`Self::flush`]).
    pub fn is_late(&self, at_ns: u64) -> bool {
        ((at_ns / 1_000_000_000) as i64) < self.late_before(unix_now())
    }

    /// Whether the rows waiting for the store reached the bound: read no more batches
    /// until a write succeeds.
    pub fn is_full(&self) -> bool {
        self.ledger.is_full()
    }

    /// Periodic work: reloads, flushes closed intervals, writes, releases acks, expires.
    pub async fn tick(&mut self) {
        if let Some(inv) = self.local_inv.as_mut() {
            if let Err(e) = inv.refresh(None, podflow_inventory::now_ns()) {
                tracing::warn!(error = %e, "inventory file not reloaded; keeping the previous one");
            }
            let (disputed, unconfirmed) = inv.address_claims();
            let claims = &self.registry.server.address_claims;
            claims.0.store(disputed as u64, Relaxed);
            claims.1.store(unconfirmed as u64, Relaxed);
        }
        // The providers' range files are replaced now and then: reload on change.
        if self.ranges_checked.elapsed() > Duration::from_secs(30) {
            self.ranges_checked = Instant::now();
            let st = attribution::ranges_stamp(&self.settings);
            if st != self.ranges_stamp {
                self.ranges_stamp = st;
                match attribution::attributor(&self.settings) {
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
        if self.ledger.pending_jobs() > 0 {
            self.write().await;
        }
    }

    async fn flush(&mut self, now: i64, force: bool) {
        let upto = if force {
            i64::MAX
        } else {
            self.agg.interval_of(now)
        };
        self.fold(upto);
        // Rows of intervals that closed long ago (replays after an outage) are stored in
        // their own interval but kept out of the live series, so a recovery does not look
        // like a traffic spike (they are counted apart).
        let late_before = self.late_before(now);
        let registry = &self.registry;
        let agg = &mut self.agg;
        let sealed = self.ledger.seal(upto, |chunks| {
            let taken = agg.take(upto, chunks);
            for r in taken.iter().flat_map(|(_, rows)| rows) {
                if r.interval_start < late_before {
                    registry
                        .pipeline
                        .late_bytes
                        .fetch_add(r.totals.bytes(), Relaxed);
                } else {
                    registry.add_flow(r.key.proto, &r.totals);
                }
            }
            taken
        });
        // The live series read the rows where the job holds them (no copies).
        let live: Vec<&FlowRow> = sealed
            .map(|id| {
                self.ledger
                    .job_rows(id)
                    .filter(|r| r.interval_start >= late_before)
                    .collect()
            })
            .unwrap_or_default();
        // Also with no rows: series that stopped moving expire.
        if let Ok(mut w) = self.registry.workloads.lock()
            && let Some(w) = w.as_mut()
        {
            w.add_interval(live.iter().copied(), now);
        }
        if let Ok(mut s) = self.registry.service_zones.lock()
            && let Some(s) = s.as_mut()
        {
            s.add_interval(live.iter().copied(), now);
        }
        drop(live);
        self.note_keys();
        self.write().await;
    }

    /// Writes the sealed jobs in order, each with its marks, and sends the acks of the
    /// batches each completes; stops at the first failure (the job is tried again on the
    /// next tick, unchanged).
    async fn write(&mut self) {
        let p = &self.registry.pipeline;
        while let Some(plan) = self.ledger.next() {
            let id = plan.job.id;
            let n = plan.job.rows() as u64;
            // Owned for the blocking task; the rows are shared, not copied.
            let ids: Vec<ChunkId> = plan
                .job
                .chunks
                .iter()
                .map(|c| ChunkId {
                    token: c.token.clone(),
                    agent: None,
                    seqs: Vec::new(),
                    day: c.day,
                })
                .collect();
            let rows: Vec<Arc<[FlowRow]>> = plan
                .job
                .chunks
                .iter()
                .map(|c| Arc::clone(&c.rows))
                .collect();
            let intents = plan.intents;
            let marks = plan.marks;
            let written_marks: Vec<(String, u64)> =
                marks.iter().map(|m| (m.agent.clone(), m.seq)).collect();
            let store = Arc::clone(&self.store);
            let t0 = Instant::now();
            let res = tokio::task::spawn_blocking(move || {
                let chunks: Vec<ChunkWrite<'_>> = ids
                    .iter()
                    .zip(&rows)
                    .map(|(id, rows)| ChunkWrite { id, rows })
                    .collect();
                let job = JobWrite {
                    intents: &intents,
                    chunks: &chunks,
                    marks: &marks,
                };
                // A write that panicked poisons the lock; its transaction was rolled back
                // (SQLite) or its chunks are retried under their tokens (ClickHouse), so
                // the store is fit for the retry: a poisoned lock must not stop writing.
                let mut s = store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.write_job(&job).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("store writer task failed: {e}")));
            p.store_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
            if res.is_ok() {
                // A fault test kills the process here: durable, not acknowledged.
                let _ = podflow_store::failpoint::hit("driver-after-write");
            }
            match res {
                Ok(()) => {
                    p.store_rows.fetch_add(n, Relaxed);
                    p.store_errors_in_a_row.store(0, Relaxed);
                    if let Ok(mut m) = self.marks.write() {
                        for (agent, seq) in written_marks {
                            let e = m.entry(agent).or_default();
                            *e = (*e).max(seq);
                        }
                    }
                    for (b, tx) in self.ledger.written(id) {
                        let ack = podflow_proto::Ack {
                            seq: b.seq,
                            ..Default::default()
                        };
                        if tx.try_send(ack).is_err() {
                            self.registry.server.acks_dropped.fetch_add(1, Relaxed);
                        }
                    }
                }
                Err(e) => {
                    p.store_errors.fetch_add(1, Relaxed);
                    p.store_errors_in_a_row.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, rows = self.ledger.pending_rows(), "store write failed; will retry (acks withheld)");
                    self.ledger.failed(id);
                    break;
                }
            }
        }
        p.store_pending
            .store(self.ledger.pending_rows() as u64, Relaxed);
        let srv = &self.registry.server;
        srv.chunks_held
            .store(self.ledger.held_chunks() as u64, Relaxed);
        srv.recut_late.store(self.ledger.recut_late(), Relaxed);
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
