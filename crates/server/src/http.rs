//! The HTTP endpoints: `/metrics`, `/api/v1/flows`, `/live`, `/ready`.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use podflow_store::{ClickHouseStore, FlowQuery, FlowStore, FlowSummary, SqliteStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::Telemetry;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Metrics.
    pub telemetry: Arc<Telemetry>,
    /// Where the queries read flows.
    pub store: StoreReader,
    /// Interval length, seconds (the default `to` includes the open interval).
    pub interval_s: u32,
}

/// Where the HTTP handlers read flows: the writer's store, through a connection of its own.
#[derive(Debug)]
pub enum StoreReader {
    /// No store: the agent role.
    None,
    /// The embedded store's file; a read-only connection is opened on first use.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The connection, once opened.
        conn: Mutex<Option<SqliteStore>>,
    },
    /// ClickHouse, through a handle beside the writer's ([`ClickHouseStore::reader`]).
    ClickHouse(Box<Mutex<ClickHouseStore>>),
}

impl StoreReader {
    /// Reads the embedded store at `path`.
    pub fn sqlite(path: PathBuf) -> StoreReader {
        StoreReader::Sqlite {
            path,
            conn: Mutex::new(None),
        }
    }

    /// Reads ClickHouse through `store` (call from a blocking thread).
    pub fn clickhouse(store: ClickHouseStore) -> StoreReader {
        StoreReader::ClickHouse(Box::new(Mutex::new(store)))
    }

    /// Runs `f` on the store (blocking); `None` without a store.
    fn run<T>(
        &self,
        f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError>,
    ) -> Option<Result<T, String>> {
        let poisoned = || "store reader lock poisoned".to_string();
        Some(match self {
            StoreReader::None => return None,
            StoreReader::Sqlite { path, conn } => (|| {
                let mut guard = conn.lock().map_err(|_| poisoned())?;
                if guard.is_none() {
                    *guard = Some(SqliteStore::open_reader(path).map_err(|e| e.to_string())?);
                }
                let reader = guard.as_ref().ok_or("no reader")?;
                f(reader).map_err(|e| e.to_string())
            })(),
            StoreReader::ClickHouse(store) => match store.lock() {
                Ok(s) => f(&*s).map_err(|e| e.to_string()),
                Err(_) => Err(poisoned()),
            },
        })
    }
}

/// Runs `f` on the state's store on a blocking thread; the error answer is 404 where
/// there is no store (an agent) and 500 when the store fails.
pub(crate) async fn with_store<T: Send + 'static>(
    s: &Arc<AppState>,
    f: impl FnOnce(&dyn FlowStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let st = Arc::clone(s);
    let error =
        |status, e: String| (status, Json(serde_json::json!({ "error": e }))).into_response();
    match tokio::task::spawn_blocking(move || st.store.run(f)).await {
        Ok(Some(Ok(v))) => Ok(v),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "this process is an agent: flows are served by the server".into(),
        )),
        Ok(Some(Err(e))) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/query", get(crate::graph::query))
        .route("/api/v1/dimensions", get(crate::graph::dimensions))
        .route("/api/health", get(crate::graph::health))
        .route("/transactions", get(crate::graph::transactions))
        .route("/flows", get(recent_flows))
        .route("/api/graph/fields", get(crate::graph::fields))
        .route("/api/graph/data", get(crate::graph::data))
        .merge(crate::ui::routes())
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.telemetry.render(),
    )
        .into_response()
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let dumped = s
        .telemetry
        .conntrack
        .get()
        .is_some_and(|(st, _)| st.dumps.load(Relaxed) > 0);
    if dumped {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first conntrack dump\n",
        )
            .into_response()
    }
}

/// `/api/v1/flows` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowParams {
    /// Start, Unix seconds (default: an hour ago).
    pub from: Option<i64>,
    /// End, Unix seconds, exclusive (default: now, open interval included).
    pub to: Option<i64>,
    /// Maximum rows, 1..=10000 (default 100).
    pub limit: Option<usize>,
}

/// One end of a row in `/api/v1/flows` (empty strings: not applicable or unknown).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Default)]
pub struct EndJson {
    /// `pod`, `node`, `service`, `known_network`, `cloud_range`, `internet`, `unknown`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Pod, node, Service, network or cloud service name.
    pub name: String,
    /// Workload kind.
    pub workload_kind: String,
    /// Workload.
    pub workload: String,
    /// App.
    pub app: String,
    /// Node.
    pub node: String,
    /// Zone.
    pub zone: String,
    /// Region.
    pub region: String,
    /// Cloud.
    pub cloud: String,
}

impl From<&podflow_model::EndLabels> for EndJson {
    fn from(e: &podflow_model::EndLabels) -> Self {
        EndJson {
            kind: e.kind.to_string(),
            namespace: e.namespace.to_string(),
            name: e.name.to_string(),
            workload_kind: e.workload_kind.to_string(),
            workload: e.workload.to_string(),
            app: e.app.to_string(),
            node: e.node.to_string(),
            zone: e.zone.to_string(),
            region: e.region.to_string(),
            cloud: e.cloud.to_string(),
        }
    }
}

/// One row of `/api/v1/flows`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct FlowJson {
    /// Node that saw the traffic.
    pub observer: String,
    /// `tcp`, `udp`, ...
    pub proto: String,
    /// Local address.
    pub local: String,
    /// Remote address (the backend after DNAT).
    pub remote: String,
    /// Responder port.
    pub responder_port: u16,
    /// Whether the local end initiated.
    pub local_initiated: bool,
    /// Dialled `addr:port` when DNAT changed it.
    pub service: Option<String>,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Packets local → remote.
    pub packets_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// Packets remote → local.
    pub packets_in: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// First interval start, Unix seconds.
    pub first: i64,
    /// Last interval end, Unix seconds.
    pub last: i64,
    /// Connection class (`INTRA_NODE`, `INTER_ZONE`, `PUBLIC_INTERNET`, ...).
    pub class: String,
    /// Price of the bytes, USD.
    pub cost_usd: f64,
    /// Who the local end is.
    pub local_meta: EndJson,
    /// Who the remote end is.
    pub remote_meta: EndJson,
    /// The Service dialled (`namespace/name`), when the inventory knows it.
    pub service_name: Option<String>,
}

impl From<FlowSummary> for FlowJson {
    fn from(f: FlowSummary) -> Self {
        let k = f.key;
        let t = f.totals;
        FlowJson {
            observer: f.observer,
            proto: k.proto.name().into_owned(),
            local: k.local.to_string(),
            remote: k.remote.to_string(),
            responder_port: k.responder_port,
            local_initiated: k.local_initiated,
            service: k
                .service
                .map(|(a, p)| std::net::SocketAddr::new(a, p).to_string()),
            bytes_out: t.bytes_out,
            packets_out: t.packets_out,
            bytes_in: t.bytes_in,
            packets_in: t.packets_in,
            connections_opened: t.opened,
            connections_closed: t.closed,
            first: f.first,
            last: f.last,
            class: f.labels.class.as_str().to_string(),
            cost_usd: f.cost_usd,
            local_meta: EndJson::from(&f.labels.local),
            remote_meta: EndJson::from(&f.labels.remote),
            service_name: (!f.labels.service_name.is_empty())
                .then(|| format!("{}/{}", f.labels.service_namespace, f.labels.service_name)),
        }
    }
}

fn bad(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `GET /flows?window=60&limit=100` (K8sConntrack-style): the conversations of the last
/// `window` seconds, the same rows as `/api/v1/flows`.
async fn recent_flows(
    State(s): State<Arc<AppState>>,
    Query(p): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let window = match p.get("window").map(|w| w.parse::<i64>()) {
        None => 60,
        Some(Ok(w)) if (1..=86_400).contains(&w) => w,
        Some(_) => {
            return bad(format!(
                "`window` must be 1..=86400 seconds (got {:?})",
                p.get("window")
            ));
        }
    };
    let limit = match p.get("limit").map(|l| l.parse::<usize>()) {
        None => Some(100),
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            return bad(format!(
                "`limit` must be a number (got {:?})",
                p.get("limit")
            ));
        }
    };
    let now = unix_now();
    flows(
        State(s),
        Ok(Query(FlowParams {
            from: Some(now - window),
            to: Some(now + 1),
            limit,
        })),
    )
    .await
}

async fn flows(
    State(s): State<Arc<AppState>>,
    q: Result<Query<FlowParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return bad(format!("bad query string: {}", e.body_text())),
    };
    let now = unix_now();
    let to = p.to.unwrap_or(now + 1);
    let from = p.from.unwrap_or(now - 3600);
    let limit = p.limit.unwrap_or(100);
    if from >= to {
        return bad(format!("`from` ({from}) must be before `to` ({to})"));
    }
    if !(1..=10_000).contains(&limit) {
        return bad(format!("`limit` ({limit}) must be between 1 and 10000"));
    }
    match with_store(&s, move |st| st.flows(&FlowQuery { from, to, limit })).await {
        Ok(rows) => Json(rows.into_iter().map(FlowJson::from).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}
