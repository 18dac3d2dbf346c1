//! podflow's pipeline: the conntrack source feeding aggregation, the store writer,
//! Prometheus exposition and the HTTP API.

pub mod agent;
pub mod aggregate;
mod buffer;
pub mod enrichment;
mod flat;
pub mod graph;
pub mod histograms;
pub mod http;
mod local;
pub mod netflow;
pub mod pipeline;
pub mod prefold;
pub mod run;
pub mod server;
pub mod telemetry;
pub mod ui;
pub mod workload_metrics;

pub use aggregate::Aggregator;
pub use enrichment::{EnrichSettings, InventorySource};
pub use run::{RunConfig, RunError, run};
pub use telemetry::{METRICS, MetricDef, Telemetry};
