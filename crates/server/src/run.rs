//! `podflow run`: the conntrack source of this host → attribution → per-interval
//! aggregation → the embedded store, with `/metrics` and the HTTP API, in one process.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use podflow_conntrack::{Source, SourceConfig};
use podflow_inventory::SharedIndex;
use podflow_model::Observation;
use podflow_store::{SqliteStore, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Telemetry;
use crate::enrichment::{self, EnrichSettings};
use crate::http::{AppState, StoreReader, router};
use crate::local::local_addresses;
use crate::pipeline::Pipeline;

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
    /// NetFlow/IPFIX listen addresses (none: no listener).
    pub netflow_listen: Vec<SocketAddr>,
    /// Per-exporter NetFlow series (the exporter address becomes a label).
    pub netflow_exporter_labels: bool,
}

/// Why a role stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The conntrack source failed.
    #[error("conntrack source: {0}")]
    Conntrack(#[from] podflow_conntrack::Error),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP or gRPC listener could not bind.
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
    /// TLS or token settings are unusable.
    #[error("{0}")]
    Config(String),
    /// A pipeline task ended abnormally.
    #[error("pipeline: {0}")]
    Task(String),
}

/// A batch from the source thread: observations and, now and then, this node's addresses.
#[derive(Debug)]
pub struct SourceBatch {
    /// Observations (may be empty).
    pub obs: Vec<Observation>,
    /// This node's addresses, when re-read (every 5 s).
    pub local: Option<Arc<HashSet<IpAddr>>>,
    /// When they were read, ns since the Unix epoch.
    pub at_ns: u64,
}

/// Queue depth between the source thread and its consumer, in batches.
const QUEUE_BATCHES: usize = 64;
/// Observations per batch.
const BATCH: usize = 4096;

/// The conntrack source on its own thread (blocking netlink I/O). It stays in the observed
/// namespace for its whole life, so local addresses are read from there too. Returns once
/// the source is open (or failed to open); the thread ends after its last dump when `stop`
/// is set, closing the queue.
pub async fn spawn_source(
    cfg: SourceConfig,
    interval: Duration,
    telemetry: Arc<Telemetry>,
    stop: Arc<AtomicBool>,
) -> Result<
    (
        std::thread::JoinHandle<Result<(), RunError>>,
        mpsc::Receiver<SourceBatch>,
    ),
    RunError,
> {
    let (tx, rx) = mpsc::channel::<SourceBatch>(QUEUE_BATCHES);
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || -> Result<(), RunError> {
            let first_reply = cfg.first_reply;
            let opened = (|| {
                if let Some(ns) = &cfg.netns {
                    podflow_conntrack::enter_netns(ns)?;
                }
                Source::open(&SourceConfig { netns: None, ..cfg })
            })();
            let mut src = match opened {
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
            if first_reply && !features.timestamps {
                tracing::warn!(
                    "--first-reply needs net.netfilter.nf_conntrack_timestamp=1 (or \
                     --enable-accounting): without start times no time to first reply is measured"
                );
            }
            let _ = telemetry.conntrack.set((src.stats(), features));
            let _ = opened_tx.send(Ok(()));
            let mut last_local = Instant::now() - Duration::from_secs(3600);
            let mut sink = |obs: Vec<Observation>| {
                let local = (last_local.elapsed() > Duration::from_secs(5)).then(|| {
                    last_local = Instant::now();
                    Arc::new(local_addresses())
                });
                let batch = SourceBatch {
                    obs,
                    local,
                    at_ns: podflow_inventory::now_ns(),
                };
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        telemetry.queue_waits.fetch_add(1, Relaxed);
                        let _ = tx.blocking_send(b);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            };
            // An empty first batch carries the local addresses before any traffic.
            sink(Vec::new());
            src.run(interval, BATCH, &stop, &mut sink)?;
            Ok(())
        })
        .map_err(|e| RunError::Task(format!("spawn conntrack thread: {e}")))?;
    match opened_rx.await {
        Ok(Ok(())) => Ok((thread, rx)),
        _ => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(RunError::Task("conntrack thread ended at start".into())),
            Err(_) => Err(RunError::Task("conntrack thread panicked".into())),
        },
    }
}

/// Serves the HTTP endpoints until `shutdown`.
pub async fn serve_http(
    listen: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), RunError>>, RunError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: listen,
            source,
        })?;
    Ok(tokio::spawn(async move {
        axum::serve(listener, router(state).into_make_service())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| RunError::Task(format!("http: {e}")))
    }))
}

/// Telemetry with the workload series configured.
pub fn telemetry(metrics: &crate::workload_metrics::WorkloadMetricsConfig) -> Arc<Telemetry> {
    let telemetry = Arc::new(Telemetry::default());
    if let Ok(mut w) = telemetry.workloads.lock() {
        *w = Some(crate::workload_metrics::WorkloadMetrics::new(
            metrics.clone(),
        ));
    }
    telemetry
}

/// Opens the embedded store under `data_dir`.
pub fn open_store(data_dir: &std::path::Path) -> Result<(SqliteStore, PathBuf), RunError> {
    std::fs::create_dir_all(data_dir).map_err(|source| RunError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join("podflow.sqlite");
    Ok((SqliteStore::open(&path)?, path))
}

/// Runs until `shutdown` is cancelled, then flushes the last interval and returns.
pub async fn run(cfg: RunConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let (store, store_path) = open_store(&cfg.data_dir)?;
    let telemetry = telemetry(&cfg.metrics);
    let interval_s = cfg.interval.as_secs().max(1) as u32;
    let mut pipeline = Pipeline::new(
        crate::pipeline::PipelineConfig {
            settings: cfg.enrich.clone(),
            observer: Some(cfg.observer.clone()),
            interval_s,
            max_keys: cfg.max_keys,
            retention: cfg.retention,
        },
        store,
        Arc::clone(&telemetry),
        &shutdown,
    )
    .await?;
    let state = Arc::new(AppState {
        telemetry: Arc::clone(&telemetry),
        store: StoreReader::sqlite(store_path.clone()),
        interval_s,
    });
    let http = serve_http(cfg.listen, state, shutdown.clone()).await?;
    tracing::info!(listen = %cfg.listen, store = %store_path.display(), "podflow run: serving /metrics, /api/v1/flows, /live, /ready");

    let stop = Arc::new(AtomicBool::new(false));
    let (source_thread, mut rx) = match spawn_source(
        cfg.source.clone(),
        cfg.interval,
        Arc::clone(&telemetry),
        Arc::clone(&stop),
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            shutdown.cancel();
            let _ = http.await;
            return Err(e);
        }
    };
    let stopper = {
        let stop = Arc::clone(&stop);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Relaxed);
        })
    };

    let mut netflow = crate::netflow::Intake::start(
        &cfg.netflow_listen,
        &telemetry,
        cfg.netflow_exporter_labels,
        Some(pipeline.prefold()),
    )?;
    let observer: Arc<str> = Arc::from(cfg.observer.as_str());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => pipeline.ingest(&observer, b.local, &b.obs, b.at_ns),
                None => break,
            },
            Some(batch) = netflow.recv() => pipeline.ingest_records(batch),
            _ = tick.tick() => pipeline.tick().await,
        }
    }
    // The source made its last dump and closed the queue: take the NetFlow records still
    // queued, then flush everything.
    for batch in netflow.stop().await {
        pipeline.ingest_records(batch);
    }
    pipeline.finish().await;
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
pub(crate) async fn start_kube(
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
pub(crate) async fn start_kube(
    _kubeconfig: Option<&std::path::Path>,
    _s: &EnrichSettings,
    _shared: SharedIndex,
    _cancel: CancellationToken,
) -> Result<(), RunError> {
    Err(RunError::Task(
        "this podflow was built without the Kubernetes API source (feature `kube`)".into(),
    ))
}
