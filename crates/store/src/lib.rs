//! podflow's flow store: the embedded SQLite store and ClickHouse behind one trait, plus the query layer.

pub mod avoidable;
pub mod clickhouse;
mod columns;
mod error;
pub mod failpoint;
#[cfg(test)]
mod fault_matrix;
mod flow_store;
mod marks;
pub mod probes;
pub mod query;
mod sqlite;

#[cfg(test)]
mod testing;

pub use self::clickhouse::{ClickHouseConfig, ClickHouseStore};
pub use error::{ClickHouseError, StoreError};
pub use flow_store::{ChunkWrite, FlowQuery, FlowStore, FlowSummary, JobWrite};
pub use probes::{ClickHouseProbeStore, ProbeStore, SqliteProbeStore};
pub use sqlite::{Interrupter, PooledReader, ReadPool, SqliteStore};
