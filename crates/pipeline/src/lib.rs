//! podflow's pure pipeline core: what turns observations into rows and rows into
//! metrics, with every input (observations, time, store-write results) passed in.
//!
//! - [`aggregate`]: sums oriented observations per interval and key, bounded;
//! - [`prefold`]: NetFlow records summed per flow before attribution (on [`flat`]);
//! - [`workload_metrics`], [`service_zone_metrics`] and [`histograms`]: the bounded
//!   workload series, cross-zone bytes per Service and the per-Service histograms
//!   `/metrics` shows;
//! - [`ledger`]: which agent batches are counted, written and acknowledged;
//! - [`exposition`]: metric definitions and the Prometheus text format.

pub mod aggregate;
pub mod exposition;
mod flat;
pub mod histograms;
pub mod ledger;
pub mod prefold;
pub mod service_zone_metrics;
pub mod workload_metrics;

pub use aggregate::Aggregator;
pub use exposition::MetricDef;
