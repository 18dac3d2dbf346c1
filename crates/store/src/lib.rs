//! podflow's flow store: the embedded SQLite store and ClickHouse behind one trait, plus the query layer.

pub mod clickhouse;
mod columns;
mod error;
mod flow_store;
pub mod probes;
pub mod query;
mod sqlite;

#[cfg(test)]
mod testing;

pub use self::clickhouse::{ClickHouseConfig, ClickHouseStore};
pub use error::{ClickHouseError, StoreError};
pub use flow_store::{FlowQuery, FlowStore, FlowSummary};
pub use probes::{ClickHouseProbeStore, ProbeStore, SqliteProbeStore};
pub use sqlite::SqliteStore;
