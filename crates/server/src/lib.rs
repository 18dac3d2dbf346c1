//! `podflow server`: agents' batches in over gRPC ([`intake`]), attributed, aggregated
//! and written by the [`driver`], and served over HTTP (`podflow_api`).

pub mod attribution;
pub mod auth;
pub mod driver;
mod intake;
pub mod ondemand;
pub mod peers;
mod rate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use podflow_api::{AppState, StoreReader};
use podflow_pipeline::workload_metrics::WorkloadMetricsConfig;
use podflow_proto::IngestServer;
use podflow_role::netflow::AllowList;
use podflow_role::netflow::Intake;
use podflow_role::tls::{ReloadingTls, TlsFiles};
use podflow_role::{HttpSettings, Registry, RoleError, open_store, serve_http};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use attribution::{EnrichSettings, InventorySource};
pub use auth::{AgentAuth, Authenticator};
pub use driver::{Driver, DriverConfig};
pub use intake::{AGENT_ID_HEADER, SEQ_WINDOW};
pub use ondemand::OnDemandConfig;

use intake::{INGRESS_KIB, INGRESS_QUEUE, IngestSvc, Ingress, MAX_BATCH_BYTES, Side, admit};
use peers::PeerBook;
use podflow_store::probes::ProbeRow;
use podflow_store::{ClickHouseProbeStore, ProbeStore, SqliteProbeStore};
use rate::NodeRates;

/// Probe row batches queued for the probe store's writer.
const PROBE_QUEUE: usize = 1024;

/// How long one agent connection may live: its credentials are checked again on the
/// next (service-account tokens expire in about an hour).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);

/// Refuses a configuration that would let anyone on the network in: agents
/// unauthenticated, or their credentials in plaintext, on a non-loopback gRPC address,
/// unless the matching `--insecure-*` flag says so (then it is warned about).
pub fn check_exposure(cfg: &ServerConfig) -> Result<(), RoleError> {
    let exposed = !cfg.grpc_listen.ip().is_loopback();
    let addr = cfg.grpc_listen;
    if cfg.agent_auth == AgentAuth::None {
        if exposed && !cfg.insecure_no_agent_auth {
            return Err(RoleError::Config(format!(
                "--grpc-listen {addr} is reachable from the network and agents would not be \
                 authenticated: choose --agent-auth kubernetes, tokens or mtls, or pass \
                 --insecure-no-agent-auth"
            )));
        }
        if exposed {
            tracing::warn!(grpc = %addr, "INSECURE: agents are not authenticated (--insecure-no-agent-auth): anyone who reaches this port can write flows as any node");
        }
    }
    if cfg.agent_auth == AgentAuth::Mtls && cfg.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        return Err(RoleError::Config(
            "--agent-auth mtls needs --tls-cert, --tls-key and --tls-client-ca".into(),
        ));
    }
    if cfg.tls.is_none() && exposed {
        if !cfg.insecure_plaintext {
            return Err(RoleError::Config(format!(
                "--grpc-listen {addr} is reachable from the network without TLS: agents' \
                 credentials and flows would cross it in the clear; give --tls-cert and \
                 --tls-key, or pass --insecure-plaintext"
            )));
        }
        tracing::warn!(grpc = %addr, "INSECURE: gRPC without TLS (--insecure-plaintext)");
    }
    Ok(())
}

/// Rows waiting for the store beyond which agents' batches wait in their streams.
pub const MAX_PENDING_ROWS: usize = 1_000_000;

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
    pub metrics: WorkloadMetricsConfig,
    /// TLS; `None` = plaintext (inside a trusted network only).
    pub tls: Option<ServerTls>,
    /// How agents authenticate ([`auth`]).
    pub agent_auth: AgentAuth,
    /// Allow unauthenticated agents on a non-loopback gRPC address.
    pub insecure_no_agent_auth: bool,
    /// Allow plaintext gRPC on a non-loopback address.
    pub insecure_plaintext: bool,
    /// MiB/s one node's agents may send, encoded batches (0: no limit); beyond it their
    /// streams wait.
    pub agent_rate_limit_mib: u64,
    /// Rows waiting for the store beyond which no batch is read ([`MAX_PENDING_ROWS`]).
    pub max_pending_rows: usize,
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
    /// Write to ClickHouse instead of the embedded store.
    pub clickhouse: Option<podflow_store::ClickHouseConfig>,
    /// On-demand probes (`POST /api/v1/probe`).
    pub on_demand: OnDemandConfig,
}

/// Runs until `shutdown`, then writes what it holds and acks it.
pub async fn serve(cfg: ServerConfig, shutdown: CancellationToken) -> Result<(), RoleError> {
    match cfg.clickhouse.clone() {
        Some(ch) => {
            // The ClickHouse store blocks on a runtime of its own: open (and later drop) it
            // off the async threads. Queries get a handle of their own.
            let (store, reader, probes) = tokio::task::spawn_blocking(move || {
                let store = podflow_store::ClickHouseStore::open(ch.clone())?;
                let reader = store.reader()?;
                let probes: Probes = (
                    Box::new(ClickHouseProbeStore::open(&ch)?),
                    Box::new(ClickHouseProbeStore::open(&ch)?),
                );
                Ok::<_, podflow_store::StoreError>((store, reader, probes))
            })
            .await
            .map_err(|e| RoleError::Task(e.to_string()))??;
            tracing::info!("podflow server: writing to ClickHouse");
            serve_with(
                cfg,
                store,
                StoreReader::clickhouse(reader),
                probes,
                shutdown,
            )
            .await
        }
        None => {
            let (store, path) = open_store(&cfg.data_dir)?;
            let probe_path = cfg.data_dir.join("probes.sqlite");
            let probes: Probes = (
                Box::new(SqliteProbeStore::open(&probe_path)?),
                Box::new(SqliteProbeStore::open(&probe_path)?),
            );
            serve_with(cfg, store, StoreReader::sqlite(path), probes, shutdown).await
        }
    }
}

/// The probe store's writer and its reader for the API.
type Probes = (Box<dyn ProbeStore>, Box<dyn ProbeStore>);

/// Writes probe rows on a thread of its own (the stores block), expiring old ones
/// hourly; ends when the queue closes.
fn probe_writer(
    mut store: Box<dyn ProbeStore>,
    registry: Arc<Registry>,
    retention: Duration,
) -> (mpsc::Sender<Vec<ProbeRow>>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<ProbeRow>>(PROBE_QUEUE);
    let thread = std::thread::spawn(move || {
        let mut expired = std::time::Instant::now();
        while let Some(rows) = rx.blocking_recv() {
            let s = &registry.server;
            match store.write_probes(&rows) {
                Ok(()) => s.probe_rows.fetch_add(rows.len() as u64, Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "probe rows not written");
                    s.probe_rows_dropped.fetch_add(rows.len() as u64, Relaxed)
                }
            };
            if expired.elapsed() > Duration::from_secs(3600) {
                expired = std::time::Instant::now();
                let before = (podflow_inventory::now_ns() / 1_000_000_000) as i64
                    - retention.as_secs() as i64;
                if let Err(e) = store.expire_probes(before) {
                    tracing::warn!(error = %e, "expiring probe rows failed");
                }
            }
        }
    });
    (tx, thread)
}

/// Handshakes at most this many connections at once (each within [`HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 256;
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of `listener` after their TLS handshake, each with the acceptor of the
/// moment (certificates reload), handshakes side by side so a slow client holds up no
/// other.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: ReloadingTls,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<podflow_role::tls::TlsTcpStream, std::io::Error>>
{
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let tcp = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let peer = tcp.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "agent TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "agent TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn serve_with<S: podflow_store::FlowStore + 'static>(
    cfg: ServerConfig,
    store: S,
    reader: StoreReader,
    (probe_store, probe_reader): Probes,
    shutdown: CancellationToken,
) -> Result<(), RoleError> {
    check_exposure(&cfg)?;
    let auth = Arc::new(
        Authenticator::new(cfg.agent_auth.clone())
            .await
            .map_err(|e| {
                RoleError::Config(format!("--agent-auth {}: {e}", cfg.agent_auth.name()))
            })?,
    );
    let registry = Registry::new(&cfg.metrics);
    let _ = registry
        .server
        .auth
        .set((cfg.agent_auth.name(), cfg.tls.is_some()));
    let interval_s = cfg.interval.as_secs().max(1) as u32;
    let store_name = match &reader {
        StoreReader::Sqlite { path, .. } => path.display().to_string(),
        _ => "ClickHouse".into(),
    };
    let peer_book = Arc::new(PeerBook::default());
    let prober = Arc::new(ondemand::ServerProber::new(
        cfg.on_demand.ports,
        Arc::clone(&peer_book),
    ));
    // /live answers from here on; /ready once the inventory is in and the store writes.
    let state = Arc::new(AppState {
        exposition: Arc::clone(&registry) as _,
        store: reader,
        interval_s,
        probes: Some(std::sync::Mutex::new(probe_reader)),
        billing: Some(Arc::new(
            attribution::biller(&cfg.enrich).map_err(|e| RoleError::Attribution(e.to_string()))?,
        )),
        on_demand: Some(podflow_api::ondemand::OnDemand::new(
            Arc::clone(&prober) as _,
            cfg.on_demand.rate_per_s,
            cfg.on_demand.burst,
        )),
    });
    // Required before the listener opens: else /ready could answer before they count.
    let inventory_ready = Arc::new(AtomicBool::new(false));
    let ready = Arc::clone(&inventory_ready);
    registry
        .health
        .require("the inventory", move || ready.load(Relaxed));
    let r = Arc::clone(&registry);
    registry.health.require("a writable store", move || {
        r.pipeline.store_errors_in_a_row.load(Relaxed) == 0
    });
    // Bound before the HTTP listener opens: once /metrics answers, agents' connects are
    // accepted by the kernel and wait in the backlog while the driver starts (they were
    // refused in that window).
    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|source| RoleError::Listen {
            addr: cfg.grpc_listen,
            source,
        })?;
    let http = serve_http(cfg.listen, state, cfg.http.clone(), shutdown.clone()).await?;
    let mut driver = Driver::new(
        DriverConfig {
            settings: cfg.enrich.clone(),
            observer: None,
            interval_s,
            max_keys: cfg.max_keys,
            retention: cfg.retention,
            max_pending_rows: cfg.max_pending_rows.max(1),
            probe_ports: {
                let p = cfg.on_demand.ports;
                vec![
                    (podflow_model::Protocol::UDP, p.udp),
                    (podflow_model::Protocol::TCP, p.tcp),
                    (podflow_model::Protocol::TCP, p.http),
                ]
            },
            netflow_keep_addresses: cfg.netflow_keep_addresses,
        },
        store,
        Arc::clone(&registry),
        &shutdown,
    )
    .await?;
    let _ = prober.inventory.set(driver.inventory());
    inventory_ready.store(true, Relaxed);

    let (probe_tx, probe_thread) = probe_writer(probe_store, Arc::clone(&registry), cfg.retention);
    let side = Side {
        peers: peer_book,
        probe_rows: Some(probe_tx),
    };
    // The peer set follows the inventory (nodes deleted or leaving go at once).
    let refresher = {
        let (peers, inventory) = (Arc::clone(&side.peers), driver.inventory());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => peers.refresh(inventory.load().node_list()),
                }
            }
        })
    };
    let (tx, mut rx) = mpsc::channel::<Ingress>(INGRESS_QUEUE);
    let svc = IngestSvc {
        tx,
        marks: driver.marks(),
        peers: Arc::clone(&side.peers),
        auth,
        inventory: driver.inventory(),
        ingress_kib: Arc::new(tokio::sync::Semaphore::new(INGRESS_KIB)),
        registry: Arc::clone(&registry),
        rates: (cfg.agent_rate_limit_mib > 0).then(|| {
            Arc::new(NodeRates::new(
                cfg.agent_rate_limit_mib.saturating_mul(1 << 20),
            ))
        }),
    };
    // Long streams are closed after an hour (the agent reconnects and shows fresh
    // credentials); dead peers are found by keepalives; a connection carries few streams.
    let mut builder = tonic::transport::Server::builder()
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(Duration::from_secs(30))
        .max_concurrent_streams(8)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    // TLS is done here, not by tonic, so certificates reload without a restart.
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| {
            ReloadingTls::new(
                TlsFiles {
                    cert: (t.cert.clone(), "--tls-cert"),
                    key: (t.key.clone(), "--tls-key"),
                    client_ca: t.client_ca.clone().map(|c| (c, "--tls-client-ca")),
                    alpn: vec![b"h2".to_vec()],
                },
                &podflow_role::tls::GRPC_RELOADS,
            )
        })
        .transpose()?;
    let grpc_stop = shutdown.clone();
    let router =
        builder.add_service(IngestServer::new(svc).max_decoding_message_size(MAX_BATCH_BYTES));
    let grpc =
        match tls {
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                async move { grpc_stop.cancelled().await },
            )),
            Some(tls) => {
                let incoming = tls_incoming(grpc_listener, tls, shutdown.clone());
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
                    grpc_stop.cancelled().await
                }))
            }
        };
    tracing::info!(listen = %cfg.listen, grpc = %cfg.grpc_listen, store = %store_name, tls = cfg.tls.is_some(), agent_auth = cfg.agent_auth.name(), "podflow server: ready for agents");

    let mut netflow = Intake::start(
        &cfg.netflow_listen,
        &cfg.netflow_allow,
        &registry,
        cfg.netflow_exporter_labels,
        Some(driver.prefold()),
    )?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // While the write backlog is full, batches wait in their streams (HTTP/2 flow
            // control pushes back on the agents, which keep them).
            msg = rx.recv(), if !driver.is_full() => match msg {
                Some(m) => admit(&mut driver, &registry, &side, m),
                None => break,
            },
            Some(batch) = netflow.recv() => driver.ingest_records(batch),
            _ = tick.tick() => driver.tick().await,
        }
    }
    for batch in netflow.stop().await {
        driver.ingest_records(batch);
    }
    // Take what is queued, write it all, send the acks, then stop.
    while let Ok(m) = rx.try_recv() {
        admit(&mut driver, &registry, &side, m);
    }
    driver.finish().await;
    refresher.abort();
    drop(side);
    let _ = tokio::task::spawn_blocking(move || probe_thread.join()).await;
    let _ = grpc.await;
    http.await.map_err(|e| RoleError::Task(e.to_string()))??;
    // Drop the store outside the async threads (ClickHouse's owns a runtime).
    let store = driver.store();
    drop(driver);
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    tracing::info!("podflow server: stopped, everything received is written");
    Ok(())
}
