//! podflow's HTTP API and web UI over a store reader: one module per endpoint family.
//!
//! - [`flows`]: `/api/v1/flows` and K8sConntrack-style `/flows`;
//! - [`query`]: `/api/v1/query` (flows grouped by any dimensions) and `/api/v1/dimensions`;
//! - [`cost`]: `/api/v1/cost/showback` and `/api/v1/cost/bill`, priced when queried;
//! - [`avoidable`]: `/api/v1/cost/services` (avoidable cross-zone traffic per Service);
//! - [`graph`]: the Grafana Node Graph datasource (`/api/health`, `/api/graph/*`);
//! - [`transactions`]: K8sConntrack-style `/transactions`;
//! - [`probes`]: probe history and, per zone or node pair, traffic next to its health;
//! - [`ondemand`]: `POST /api/v1/probe`, one probe now to a node the server knows;
//! - [`ui`]: the embedded single-page UI;
//! - `/metrics`, `/live`, `/ready`: what the role's [`Exposition`] says.
//!
//! [`json`] holds the answer types clients read back; [`access`] and [`limits`] what
//! guards and bounds every request ([`router_with`]).

pub mod access;
pub mod avoidable;
pub mod cost;
pub mod flows;
pub mod graph;
pub mod json;
pub mod limits;
pub mod ondemand;
mod params;
pub mod probes;
pub mod query;
mod reader;
pub mod transactions;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use access::TokenFile;
pub use json::{EndJson, FlowJson};
pub use limits::{HttpStats, QueryLimits, STATS};
pub use reader::StoreReader;

/// What a role exposes besides flows: its metrics and whether it can do its job.
pub trait Exposition: Send + Sync + std::fmt::Debug {
    /// The Prometheus text exposition (format 0.0.4).
    fn metrics(&self) -> String;
    /// `Ok` when the role can do its job, else what it waits for.
    fn ready(&self) -> Result<(), String>;
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Metrics and readiness of the role serving.
    pub exposition: Arc<dyn Exposition>,
    /// Where the queries read flows.
    pub store: StoreReader,
    /// Interval length, seconds (the default `to` includes the open interval).
    pub interval_s: u32,
    /// Probe history, where the role keeps it.
    pub probes: Option<ProbeReader>,
    /// What `/api/v1/cost/*` bills with (prices, prior usage, NAT gateways, the
    /// cluster's cloud and region); `None`: the embedded prices and nothing else.
    pub billing: Option<Arc<podflow_enrich::Biller>>,
    /// On-demand probes (`POST /api/v1/probe`), where the role runs them.
    pub on_demand: Option<ondemand::OnDemand>,
}

/// Where the handlers read probe history (a connection or client of its own).
pub type ProbeReader = std::sync::Mutex<Box<dyn podflow_store::ProbeStore>>;

/// What guards the API: a bearer token (`None`: open) and the query limits.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    /// Clients of the data endpoints must send this token.
    pub token: Option<Arc<TokenFile>>,
    /// The token guards `/metrics` too (`/live` and `/ready` stay open for the kubelet).
    pub token_protects_metrics: bool,
    /// Time limit, lanes, admission.
    pub limits: QueryLimits,
}

/// The router of every endpoint, open and with the default limits.
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, &HttpPolicy::default())
}

/// The router of every endpoint under `policy`. Only GET is routed (the API is
/// read-only: anything else answers 405), except `POST /api/v1/probe` (it changes no
/// state; see [`ondemand`]); no CORS header is sent, so a page from another origin
/// cannot read the answers. Without a token in the request the UI's
/// static files, `/live`, `/ready` and (unless `token_protects_metrics`) `/metrics`
/// answer; every endpoint that reads the store needs it.
pub fn router_with(state: Arc<AppState>, policy: &HttpPolicy) -> Router {
    let mut open = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .merge(ui::routes());
    let mut data = Router::new()
        .route("/api/v1/flows", get(flows::flows))
        .route("/flows", get(flows::recent_flows))
        .route("/api/v1/query", get(query::query))
        .route("/api/v1/dimensions", get(query::dimensions))
        .route("/api/v1/cost/showback", get(cost::showback))
        .route("/api/v1/cost/bill", get(cost::bill))
        .route("/api/v1/cost/services", get(avoidable::services))
        .route("/api/health", get(graph::health))
        .route("/api/graph/fields", get(graph::fields))
        .route("/api/graph/data", get(graph::data))
        .route("/transactions", get(transactions::transactions))
        .route("/api/v1/probes", get(probes::probes))
        .route("/api/v1/pairs", get(probes::pairs))
        .route(
            "/api/v1/probe",
            post(ondemand::probe).layer(DefaultBodyLimit::max(ondemand::MAX_BODY)),
        );
    if policy.token_protects_metrics {
        data = data.route("/metrics", get(metrics));
    } else {
        open = open.route("/metrics", get(metrics));
    }
    if let Some(t) = &policy.token {
        data = data.route_layer(from_fn_with_state(Arc::clone(t), access::require_token));
    }
    let admission = Arc::new(limits::Admission::new(policy.limits.clone()));
    open.merge(data)
        .with_state(state)
        .layer(from_fn_with_state(admission, limits::context))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.exposition.metrics(),
    )
        .into_response()
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    match s.exposition.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Parses a raw query string the way the endpoints do (axum's `Query` extractor, then
/// the shared parameter checks of `/api/v1/query`, the Node Graph and the window of
/// `/flows` and `/transactions`) and returns the 400 message a client would get.
/// For the fuzz target (crates/api/fuzz); not part of the API.
#[doc(hidden)]
pub fn check_query_string(qs: &str) -> Result<(), String> {
    use std::collections::HashMap;
    let uri: axum::http::Uri = format!("/?{qs}").parse().map_err(|e| format!("{e}"))?;
    let axum::extract::Query(p) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
            .map_err(|e| e.to_string())?;
    let q = params::parse(&p, &["src_namespace", "dst_namespace"], false);
    let g = params::parse(&p, &[], true);
    params::window(&p, 86_400)?;
    q.and(g).map(|_| ())
}
