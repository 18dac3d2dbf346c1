//! `podflow server`: receives agents' batches over gRPC, attributes and aggregates them,
//! writes the store, and serves `/metrics` and the HTTP API.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use podflow_proto::{
    Ack, At, Ingest, IngestServer, ObservationBatch, VERSION, ip_from, observation_from,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::Telemetry;
use crate::enrichment::EnrichSettings;
use crate::http::{AppState, StoreReader};
use crate::pipeline::{AckToken, Admission, Pipeline};
use crate::run::{RunError, open_store, serve_http, telemetry};

/// TLS files of the gRPC listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// When set, agents must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Settings of `podflow server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP listen address (metrics, API).
    pub listen: SocketAddr,
    /// gRPC listen address (agents).
    pub grpc_listen: SocketAddr,
    /// Directory of the store file.
    pub data_dir: PathBuf,
    /// Aggregation interval.
    pub interval: Duration,
    /// How long rows are kept.
    pub retention: Duration,
    /// Bound on flow keys per open interval.
    pub max_keys: usize,
    /// Attribution settings.
    pub enrich: EnrichSettings,
    /// Workload metrics bounds.
    pub metrics: crate::workload_metrics::WorkloadMetricsConfig,
    /// TLS; `None` = plaintext (inside a trusted network only).
    pub tls: Option<ServerTls>,
    /// Bearer token agents must send; `None` = none required.
    pub token: Option<String>,
    /// NetFlow/IPFIX listen addresses (none: no listener).
    pub netflow_listen: Vec<SocketAddr>,
    /// Per-exporter NetFlow series (the exporter address becomes a label).
    pub netflow_exporter_labels: bool,
    /// Write to ClickHouse instead of the embedded store.
    pub clickhouse: Option<podflow_store::ClickHouseConfig>,
}

/// One batch on its way from a connection to the pipeline.
struct Ingress {
    batch: ObservationBatch,
    ack: mpsc::Sender<Ack>,
}

/// Batches queued between the connections and the pipeline (back-pressure beyond: the
/// agents' streams stall, HTTP/2 flow control holds them).
const INGRESS_QUEUE: usize = 256;
/// Acks queued per connection.
const ACK_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
struct IngestSvc {
    tx: mpsc::Sender<Ingress>,
    token: Option<Arc<str>>,
    telemetry: Arc<Telemetry>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send + 'static>>;

/// Decrements the open-connection gauge when a stream ends.
struct ConnGuard(Arc<Telemetry>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.srv_connections.fetch_sub(1, Relaxed);
    }
}

#[tonic::async_trait]
impl Ingest for IngestSvc {
    type PushStream = AckStream;

    async fn push(
        &self,
        req: Request<Streaming<ObservationBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        if let Some(want) = &self.token {
            let got = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(&format!("Bearer {want}")) {
                return Err(Status::unauthenticated("missing or wrong bearer token"));
            }
        }
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel::<Ack>(ACK_QUEUE);
        let tx = self.tx.clone();
        self.telemetry.srv_connections.fetch_add(1, Relaxed);
        let guard = ConnGuard(Arc::clone(&self.telemetry));
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        if tx
                            .send(Ingress {
                                batch,
                                ack: ack_tx.clone(),
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(?peer, error = %e, "agent stream ended");
                        break;
                    }
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(ack_rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::Config(format!("{what} {}: {e}", path.display())))
}

/// Runs until `shutdown`, then writes what it holds and acks it.
pub async fn serve(cfg: ServerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    match cfg.clickhouse.clone() {
        Some(ch) => {
            // The ClickHouse store blocks on a runtime of its own: open (and later drop) it
            // off the async threads. Queries get a handle of their own.
            let (store, reader) = tokio::task::spawn_blocking(move || {
                let store = podflow_store::ClickHouseStore::open(ch)?;
                let reader = store.reader()?;
                Ok::<_, podflow_store::StoreError>((store, reader))
            })
            .await
            .map_err(|e| RunError::Task(e.to_string()))??;
            tracing::info!("podflow server: writing to ClickHouse");
            serve_with(cfg, store, StoreReader::clickhouse(reader), shutdown).await
        }
        None => {
            let (store, path) = open_store(&cfg.data_dir)?;
            serve_with(cfg, store, StoreReader::sqlite(path), shutdown).await
        }
    }
}

async fn serve_with<S: podflow_store::FlowStore + 'static>(
    cfg: ServerConfig,
    store: S,
    reader: StoreReader,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let telemetry = telemetry(&cfg.metrics);
    let interval_s = cfg.interval.as_secs().max(1) as u32;
    let mut pipeline = Pipeline::new(
        crate::pipeline::PipelineConfig {
            settings: cfg.enrich.clone(),
            observer: None,
            interval_s,
            max_keys: cfg.max_keys,
            retention: cfg.retention,
        },
        store,
        Arc::clone(&telemetry),
        &shutdown,
    )
    .await?;
    let store_name = match &reader {
        StoreReader::Sqlite { path, .. } => path.display().to_string(),
        _ => "ClickHouse".into(),
    };
    let state = Arc::new(AppState {
        telemetry: Arc::clone(&telemetry),
        store: reader,
        interval_s,
    });
    let http = serve_http(cfg.listen, state, shutdown.clone()).await?;

    let (tx, mut rx) = mpsc::channel::<Ingress>(INGRESS_QUEUE);
    let svc = IngestSvc {
        tx,
        token: cfg.token.as_deref().map(Arc::from),
        telemetry: Arc::clone(&telemetry),
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        let identity = tonic::transport::Identity::from_pem(
            read(&tls.cert, "--tls-cert")?,
            read(&tls.key, "--tls-key")?,
        );
        let mut t = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            t = t.client_ca_root(tonic::transport::Certificate::from_pem(read(
                ca,
                "--tls-client-ca",
            )?));
        }
        builder = builder
            .tls_config(t)
            .map_err(|e| RunError::Config(format!("TLS: {e}")))?;
    }
    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.grpc_listen,
            source,
        })?;
    let grpc_stop = shutdown.clone();
    let grpc = tokio::spawn(
        builder
            .add_service(IngestServer::new(svc).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                async move { grpc_stop.cancelled().await },
            ),
    );
    tracing::info!(listen = %cfg.listen, grpc = %cfg.grpc_listen, store = %store_name, tls = cfg.tls.is_some(), "podflow server: ready for agents");

    let mut netflow = crate::netflow::Intake::start(
        &cfg.netflow_listen,
        &telemetry,
        cfg.netflow_exporter_labels,
        Some(pipeline.prefold()),
    )?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(m) => admit(&mut pipeline, &telemetry, m),
                None => break,
            },
            Some(batch) = netflow.recv() => pipeline.ingest_records(batch),
            _ = tick.tick() => pipeline.tick().await,
        }
    }
    for batch in netflow.stop().await {
        pipeline.ingest_records(batch);
    }
    // Take what is queued, write it all, send the acks, then stop.
    while let Ok(m) = rx.try_recv() {
        admit(&mut pipeline, &telemetry, m);
    }
    pipeline.finish().await;
    let _ = grpc.await;
    http.await.map_err(|e| RunError::Task(e.to_string()))??;
    // Drop the store outside the async threads (ClickHouse's owns a runtime).
    let store = pipeline.store();
    drop(pipeline);
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    tracing::info!("podflow server: stopped, everything received is written");
    Ok(())
}

fn admit<S: podflow_store::FlowStore + 'static>(
    pipeline: &mut Pipeline<S>,
    t: &Telemetry,
    m: Ingress,
) {
    let b = m.batch;
    let reject = |why: String| {
        t.srv_batches[3].fetch_add(1, Relaxed);
        tracing::warn!(agent = %b.agent_id, seq = b.seq, "refusing batch: {why}");
        let _ = m.ack.try_send(Ack {
            seq: b.seq,
            error: why,
        });
    };
    if b.version == 0 || b.version > VERSION {
        return reject(format!(
            "protocol version {} (this server speaks 1..={VERSION})",
            b.version
        ));
    }
    if b.agent_id.is_empty() || b.node.is_empty() {
        return reject("agent_id and node must be set".into());
    }
    let mut obs = Vec::with_capacity(b.observations.len());
    for (index, o) in b.observations.iter().enumerate() {
        match observation_from(
            o,
            At {
                agent: &b.agent_id,
                seq: b.seq,
                index,
            },
        ) {
            Ok(o) => obs.push(o),
            Err(e) => return reject(e.to_string()),
        }
    }
    let addrs: HashSet<_> = b.local_addrs.iter().filter_map(|a| ip_from(a)).collect();
    // An agent's clock ahead of ours would park its rows (and acks) in a future interval:
    // never later than now.
    let at_ns = u64::try_from(b.observed_at_ms)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .min(podflow_inventory::now_ns());
    let node: Arc<str> = Arc::from(b.node.as_str());
    let ack = AckToken {
        agent: Arc::from(b.agent_id.as_str()),
        seq: b.seq,
        tx: m.ack,
    };
    let outcome = pipeline.admit(
        ack,
        &node,
        (!addrs.is_empty()).then(|| Arc::new(addrs)),
        &obs,
        at_ns,
    );
    let i = match outcome {
        Admission::Applied => {
            t.srv_observations.fetch_add(obs.len() as u64, Relaxed);
            0
        }
        Admission::Durable => 1,
        Admission::InFlight => 2,
    };
    t.srv_batches[i].fetch_add(1, Relaxed);
}
