//! podflow's flow store: the embedded SQLite store and ClickHouse behind one trait, plus the query layer.

pub mod clickhouse;
mod error;
mod flow_store;
pub mod query;
mod sqlite;

pub use self::clickhouse::{ClickHouseConfig, ClickHouseStore};
pub use error::{ClickHouseError, StoreError};
pub use flow_store::{FlowQuery, FlowStore, FlowSummary};
pub use sqlite::SqliteStore;

/// The place kinds podflow writes, as static strings (anything else reads as `unknown`).
pub(crate) fn kind_static(s: &str) -> &'static str {
    match s {
        "pod" => "pod",
        "node" => "node",
        "service" => "service",
        "known_network" => "known_network",
        "cloud_range" => "cloud_range",
        "internet" => "internet",
        _ => "unknown",
    }
}
