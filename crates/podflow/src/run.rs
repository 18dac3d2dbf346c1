//! `podflow run`: the agent's conntrack source of this host feeding the server's driver
//! (attribution, aggregation, the embedded store) in one process, with `/metrics` and
//! the HTTP API. A composition of the same parts an agent and a server use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use podflow_api::{AppState, StoreReader};
use podflow_conntrack::{SourceConfig, SourceOptions};
use podflow_pipeline::workload_metrics::WorkloadMetricsConfig;
use podflow_role::netflow::AllowList;
use podflow_role::netflow::Intake;
use podflow_role::{HttpSettings, Registry, RoleError, open_store, serve_http};
use podflow_server::{Driver, DriverConfig, EnrichSettings, MAX_PENDING_ROWS};
use tokio_util::sync::CancellationToken;

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
    /// Further conntrack options (NEW events, reliable delivery, a dump CPU budget).
    pub source_options: SourceOptions,
    /// Bound on flow keys per open interval.
    pub max_keys: usize,
    /// Attribution: inventory, cloud ranges, prices, user networks.
    pub enrich: EnrichSettings,
    /// Workload-level metrics bounds.
    pub metrics: WorkloadMetricsConfig,
    /// The HTTP listener: token, TLS, query limits.
    pub http: HttpSettings,
    /// NetFlow/IPFIX listen addresses (none: no listener).
    pub netflow_listen: Vec<SocketAddr>,
    /// The exporters whose datagrams are decoded (`--netflow-allow`; default: all).
    pub netflow_allow: AllowList,
    /// Per-exporter NetFlow series (the exporter address becomes a label).
    pub netflow_exporter_labels: bool,
    /// Keep full addresses of NetFlow flows with no end in the cluster (docs/netflow.md).
    pub netflow_keep_addresses: bool,
}

/// Runs until `shutdown` is cancelled, then flushes the last interval and returns.
pub async fn run(cfg: RunConfig, shutdown: CancellationToken) -> Result<(), RoleError> {
    let (store, store_path) = open_store(&cfg.data_dir)?;
    let registry = Registry::new(&cfg.metrics);
    let interval_s = cfg.interval.as_secs().max(1) as u32;
    let mut driver = Driver::new(
        DriverConfig {
            settings: cfg.enrich.clone(),
            observer: Some(cfg.observer.clone()),
            interval_s,
            max_keys: cfg.max_keys,
            retention: cfg.retention,
            max_pending_rows: MAX_PENDING_ROWS,
            // One observer: no flow between two nodes that both run agents.
            probe_ports: Vec::new(),
            netflow_keep_addresses: cfg.netflow_keep_addresses,
        },
        store,
        Arc::clone(&registry),
        &shutdown,
    )
    .await?;
    let r = Arc::clone(&registry);
    registry
        .health
        .require("the first conntrack dump", move || {
            r.conntrack
                .get()
                .is_some_and(|(st, _)| st.dumps.load(Relaxed) > 0)
        });
    let state = Arc::new(AppState {
        exposition: Arc::clone(&registry) as _,
        store: StoreReader::sqlite(store_path.clone()),
        interval_s,
        probes: None,
        billing: Some(Arc::new(
            podflow_server::attribution::biller(&cfg.enrich)
                .map_err(|e| RoleError::Attribution(e.to_string()))?,
        )),
        on_demand: None,
    });
    let http = serve_http(cfg.listen, state, cfg.http.clone(), shutdown.clone()).await?;
    tracing::info!(listen = %cfg.listen, store = %store_path.display(), "podflow run: serving /metrics, /api/v1/flows, /live, /ready");

    let stop = Arc::new(AtomicBool::new(false));
    let (source_thread, mut rx) = match podflow_agent::source::spawn_with(
        cfg.source.clone(),
        podflow_agent::source::Continue {
            options: cfg.source_options.clone(),
            ..Default::default()
        },
        cfg.interval,
        Arc::clone(&registry),
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

    let mut netflow = Intake::start(
        &cfg.netflow_listen,
        &cfg.netflow_allow,
        &registry,
        cfg.netflow_exporter_labels,
        Some(driver.prefold()),
    )?;
    let observer: Arc<str> = Arc::from(cfg.observer.as_str());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => driver.ingest(&observer, b.local, &b.obs, b.at_ns),
                None => break,
            },
            Some(batch) = netflow.recv() => driver.ingest_records(batch),
            _ = tick.tick() => driver.tick().await,
        }
    }
    // The source made its last dump and closed the queue: take the NetFlow records still
    // queued, then flush everything.
    for batch in netflow.stop().await {
        driver.ingest_records(batch);
    }
    driver.finish().await;
    stopper.abort();
    let source_result = source_thread
        .join()
        .map_err(|_| RoleError::Task("conntrack thread panicked".into()))?;
    shutdown.cancel();
    http.await.map_err(|e| RoleError::Task(e.to_string()))??;
    tracing::info!("podflow run: stopped, last interval flushed");
    source_result
}
