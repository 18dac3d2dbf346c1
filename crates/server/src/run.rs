//! `podflow run`: the conntrack source of this host → per-interval aggregation → the
//! embedded store, with `/metrics` and the HTTP API, in one process.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podflow_conntrack::{Source, SourceConfig};
use podflow_enrich::Attributor;
use podflow_inventory::SharedIndex;
use podflow_model::{Attribution, FlowLabels, FlowRow, Observation, Oriented};
use podflow_store::{FlowStore, SqliteStore, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::enrichment::{self, EnrichSettings, InventorySource, LocalInventory};
use crate::http::{AppState, router};
use crate::local::local_addresses;
use crate::{Aggregator, Telemetry};

/// Settings of `podflow run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Directory of the store file.
    pub data_dir: PathBuf,
    /// Aggregation interval (also the dump interval).
    pub interval: Duration,
    /// How long rows are kept.
    pub retention: Duration,
    /// Name of this observer (the node).
    pub observer: String,
    /// The conntrack source.
    pub source: SourceConfig,
    /// Bound on flow keys per open interval.
    pub max_keys: usize,
    /// Attribution: inventory, cloud ranges, prices, user networks.
    pub enrich: EnrichSettings,
    /// Workload-level metrics bounds.
    pub metrics: crate::workload_metrics::WorkloadMetricsConfig,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The conntrack source failed.
    #[error("conntrack source: {0}")]
    Conntrack(#[from] podflow_conntrack::Error),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP listener could not bind.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Attribution could not be set up (cloud ranges, prices, inventory).
    #[error("attribution: {0}")]
    Enrich(#[from] enrichment::EnrichSetupError),
    /// A pipeline task ended abnormally.
    #[error("pipeline: {0}")]
    Task(String),
}

/// A batch from the source thread: observations and, now and then, this node's addresses.
struct Batch {
    obs: Vec<Observation>,
    local: Option<Arc<HashSet<IpAddr>>>,
}

/// Queue depth between the source thread and the aggregator, in batches.
const QUEUE_BATCHES: usize = 64;
/// Observations per batch.
const BATCH: usize = 4096;
/// Bound on rows kept for retry after failed store writes.
const MAX_PENDING_ROWS: usize = 1_000_000;

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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs until `shutdown` is cancelled, then flushes the last interval and returns.
pub async fn run(cfg: RunConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RunError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let store_path = cfg.data_dir.join("podflow.sqlite");
    let store = SqliteStore::open(&store_path)?;
    let mut attributor: Attributor = enrichment::attributor(&cfg.enrich)?;
    let mut ranges_stamp = enrichment::ranges_stamp(&cfg.enrich);
    let mut ranges_checked = Instant::now();
    let shared = SharedIndex::default();
    let mut local_inv = match &cfg.enrich.inventory {
        InventorySource::None => Some(LocalInventory::new(
            None,
            cfg.observer.clone(),
            enrichment::index_config(&cfg.enrich),
            shared.clone(),
        )),
        InventorySource::File(p) => {
            // Fail fast on a file that does not parse; later bad versions keep the last index.
            podflow_inventory::Inventory::load(p).map_err(enrichment::EnrichSetupError::from)?;
            Some(LocalInventory::new(
                Some(p.clone()),
                cfg.observer.clone(),
                enrichment::index_config(&cfg.enrich),
                shared.clone(),
            ))
        }
        InventorySource::Kube { kubeconfig } => {
            start_kube(
                kubeconfig.as_deref(),
                &cfg.enrich,
                shared.clone(),
                shutdown.clone(),
            )
            .await?;
            None
        }
    };
    let telemetry = Arc::new(Telemetry::default());
    if let Ok(mut w) = telemetry.workloads.lock() {
        *w = Some(crate::workload_metrics::WorkloadMetrics::new(
            cfg.metrics.clone(),
        ));
    }
    let state = Arc::new(AppState {
        telemetry: Arc::clone(&telemetry),
        store_path: store_path.clone(),
        reader: Mutex::new(None),
        interval_s: cfg.interval.as_secs().max(1) as u32,
    });

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(listen = %cfg.listen, store = %store_path.display(), "podflow run: serving /metrics, /api/v1/flows, /live, /ready");
    let http_stop = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router(Arc::clone(&state)).into_make_service())
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
            .map_err(|e| RunError::Task(format!("http: {e}")))
    });

    // The source runs on its own thread (blocking netlink I/O); it stays in the observed
    // namespace for its whole life, so local addresses are read from there too.
    let (tx, rx) = mpsc::channel::<Batch>(QUEUE_BATCHES);
    let stop = Arc::new(AtomicBool::new(false));
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let source_cfg = cfg.source.clone();
    let interval = cfg.interval;
    let t = Arc::clone(&telemetry);
    let stop_t = Arc::clone(&stop);
    let source_thread = std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || -> Result<(), RunError> {
            if let Some(ns) = &source_cfg.netns {
                podflow_conntrack::enter_netns(ns)?;
            }
            let mut src = match Source::open(&SourceConfig {
                netns: None,
                ..source_cfg
            }) {
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
            let _ = t.conntrack.set((src.stats(), features));
            let _ = opened_tx.send(Ok(()));
            let mut last_local = Instant::now() - Duration::from_secs(3600);
            let mut sink = |obs: Vec<Observation>| {
                let local = (last_local.elapsed() > Duration::from_secs(5)).then(|| {
                    last_local = Instant::now();
                    Arc::new(local_addresses())
                });
                let batch = Batch { obs, local };
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        t.queue_waits.fetch_add(1, Relaxed);
                        let _ = tx.blocking_send(b);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            };
            // An empty first batch carries the local addresses before any traffic.
            sink(Vec::new());
            src.run(interval, BATCH, &stop_t, &mut sink)?;
            Ok(())
        })
        .map_err(|e| RunError::Task(format!("spawn conntrack thread: {e}")))?;
    match opened_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            shutdown.cancel();
            let _ = http.await;
            return match source_thread.join() {
                Ok(r) => r,
                Err(_) => Err(RunError::Task("conntrack thread panicked".into())),
            };
        }
    }

    let stopper = {
        let stop = Arc::clone(&stop);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Relaxed);
        })
    };

    let interval_s = cfg.interval.as_secs().max(1) as u32;
    let mut agg = Aggregator::new(interval_s, cfg.max_keys);
    let observer: Arc<str> = Arc::from(cfg.observer.as_str());
    let mut writer = Writer {
        store: Arc::new(Mutex::new(store)),
        pending: Vec::new(),
        telemetry: Arc::clone(&telemetry),
    };
    let mut rx = rx;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expire = Instant::now() - Duration::from_secs(86400);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => {
                    let now_ns = podflow_inventory::now_ns();
                    if let (Some(l), Some(inv)) = (b.local, local_inv.as_mut())
                        && let Err(e) = inv.refresh(Some(l), now_ns)
                    {
                        tracing::warn!(error = %e, "inventory file not reloaded; keeping the previous one");
                    }
                    let now = (now_ns / 1_000_000_000) as i64;
                    let idx = shared.load();
                    for o in &b.obs {
                        let a = attributor.attribute(o, &cfg.observer, &idx, now_ns);
                        agg.record(&observer, o, &oriented(o, &a), now, || FlowLabels::of(&a), a.cost_usd);
                    }
                    telemetry.agg_keys.store(agg.keys() as u64, Relaxed);
                    telemetry.agg_overflow.store(agg.overflowed(), Relaxed);
                }
                None => break,
            },
            _ = tick.tick() => {
                if let Some(inv) = local_inv.as_mut()
                    && let Err(e) = inv.refresh(None, podflow_inventory::now_ns())
                {
                    tracing::warn!(error = %e, "inventory file not reloaded; keeping the previous one");
                }
                // The providers' range files are replaced now and then: reload on change.
                if ranges_checked.elapsed() > Duration::from_secs(30) {
                    ranges_checked = Instant::now();
                    let st = enrichment::ranges_stamp(&cfg.enrich);
                    if st != ranges_stamp {
                        ranges_stamp = st;
                        match enrichment::attributor(&cfg.enrich) {
                            Ok(a) => attributor = a,
                            Err(e) => tracing::warn!(error = %e, "cloud ranges not reloaded; keeping the previous ones"),
                        }
                    }
                }
                let rows = agg.flush(unix_now(), false);
                writer.write(rows).await;
                if last_expire.elapsed() > Duration::from_secs(3600) {
                    last_expire = Instant::now();
                    writer.expire(unix_now() - cfg.retention.as_secs() as i64).await;
                }
            }
        }
    }
    // The source finished its last dump and closed the queue: flush everything.
    let rows = agg.flush(unix_now(), true);
    writer.write(rows).await;
    if !writer.pending.is_empty() {
        writer.write(Vec::new()).await;
    }
    stopper.abort();
    let source_result = source_thread
        .join()
        .map_err(|_| RunError::Task("conntrack thread panicked".into()))?;
    shutdown.cancel();
    http.await.map_err(|e| RunError::Task(e.to_string()))??;
    tracing::info!("podflow run: stopped, last interval flushed");
    source_result
}

#[cfg(feature = "kube")]
async fn start_kube(
    kubeconfig: Option<&std::path::Path>,
    s: &EnrichSettings,
    shared: SharedIndex,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    use podflow_inventory::kube;
    let client = kube::client(kubeconfig)
        .await
        .map_err(enrichment::EnrichSetupError::from)?;
    let source = kube::KubeSource::start(&client, &cancel);
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let cfg = enrichment::index_config(s);
    tokio::spawn(async move {
        if let Err(e) = kube::run(
            source,
            cfg,
            shared,
            ready_tx,
            Duration::from_secs(1),
            cancel,
        )
        .await
        {
            tracing::error!(error = %e, "Kubernetes inventory stopped");
        }
    });
    tracing::info!("waiting for the first full list of pods, nodes, services and owners");
    let _ = ready_rx.wait_for(|r| *r).await;
    Ok(())
}

#[cfg(not(feature = "kube"))]
async fn start_kube(
    _kubeconfig: Option<&std::path::Path>,
    _s: &EnrichSettings,
    _shared: SharedIndex,
    _cancel: CancellationToken,
) -> Result<(), RunError> {
    Err(RunError::Task(
        "this podflow was built without the Kubernetes API source (feature `kube`)".into(),
    ))
}

/// Writes rows to the store off the async threads, keeping failed rows (bounded) for
/// the next try.
struct Writer {
    store: Arc<Mutex<SqliteStore>>,
    pending: Vec<FlowRow>,
    telemetry: Arc<Telemetry>,
}

impl Writer {
    async fn write(&mut self, rows: Vec<FlowRow>) {
        for r in &rows {
            self.telemetry.add_flow(r.key.proto, &r.totals);
        }
        // Also with no rows: series that stopped moving expire.
        if let Ok(mut w) = self.telemetry.workloads.lock()
            && let Some(w) = w.as_mut()
        {
            w.add_interval(&rows, unix_now());
        }
        self.pending.extend(rows);
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let store = Arc::clone(&self.store);
        let t0 = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let r = match store.lock() {
                Ok(mut s) => s.write(&batch).map_err(|e| e.to_string()),
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
            }
            Ok((batch, Err(e))) => {
                t.store_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, rows = batch.len(), "store write failed; will retry");
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
