//! podflow's HTTP API and web UI over a store reader: one module per endpoint family.
//!
//! - [`flows`]: `/api/v1/flows` and K8sConntrack-style `/flows`;
//! - [`query`]: `/api/v1/query` (flows grouped by any dimensions) and `/api/v1/dimensions`;
//! - [`graph`]: the Grafana Node Graph datasource (`/api/health`, `/api/graph/*`);
//! - [`transactions`]: K8sConntrack-style `/transactions`;
//! - [`probes`]: probe history and, per zone or node pair, traffic next to its health;
//! - [`ui`]: the embedded single-page UI;
//! - `/metrics`, `/live`, `/ready`: what the role's [`Exposition`] says.
//!
//! [`json`] holds the answer types clients read back.

pub mod flows;
pub mod graph;
pub mod json;
mod params;
pub mod probes;
pub mod query;
mod reader;
pub mod transactions;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use json::{EndJson, FlowJson};
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
}

/// Where the handlers read probe history (a connection or client of its own).
pub type ProbeReader = std::sync::Mutex<Box<dyn podflow_store::ProbeStore>>;

/// The router of every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/api/v1/flows", get(flows::flows))
        .route("/flows", get(flows::recent_flows))
        .route("/api/v1/query", get(query::query))
        .route("/api/v1/dimensions", get(query::dimensions))
        .route("/api/health", get(graph::health))
        .route("/api/graph/fields", get(graph::fields))
        .route("/api/graph/data", get(graph::data))
        .route("/transactions", get(transactions::transactions))
        .route("/api/v1/probes", get(probes::probes))
        .route("/api/v1/pairs", get(probes::pairs))
        .merge(ui::routes())
        .with_state(state)
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
