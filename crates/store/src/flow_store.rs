//! What every backend answers: the same logical table of flows, summed per interval and
//! key, written, queried and expired through one trait.

use std::sync::Arc;

use podflow_model::{FlowKey, FlowLabels, FlowRow, FlowTotals};
use serde::Serialize;

use crate::error::StoreError;
use crate::query;

/// A query over a time range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    /// Start, seconds since the Unix epoch, inclusive (rows whose interval starts at or after).
    pub from: i64,
    /// End, exclusive.
    pub to: i64,
    /// At most this many rows, largest total bytes first.
    pub limit: usize,
}

/// A key's totals over a query's range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowSummary {
    /// Node (or exporter) that saw it.
    pub observer: String,
    /// What it is summed by.
    pub key: FlowKey,
    /// The sums.
    pub totals: FlowTotals,
    /// Who the ends are.
    pub labels: Arc<FlowLabels>,
    /// Price of the bytes, USD.
    pub cost_usd: f64,
    /// Start of the first interval with traffic, Unix seconds.
    pub first: i64,
    /// End of the last interval with traffic, Unix seconds.
    pub last: i64,
}

/// A flow store.
pub trait FlowStore: Send {
    /// Adds rows (rows with the same interval and key are summed).
    fn write(&mut self, rows: &[FlowRow]) -> Result<(), StoreError>;
    /// Totals per observer and key over a time range.
    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowSummary>, StoreError>;
    /// Deletes rows whose interval started before `before` (Unix seconds); returns how many.
    fn expire(&mut self, before: i64) -> Result<u64, StoreError>;
    /// Adds rows and, atomically with them where the backend can, records the highest
    /// batch sequence number made durable per agent (for exactly-once delivery).
    fn write_marked(
        &mut self,
        rows: &[FlowRow],
        marks: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let _ = marks;
        self.write(rows)
    }
    /// Flows grouped by dimensions (see [`query`]).
    fn group(&self, q: &query::GroupQuery) -> Result<Vec<query::GroupRow>, StoreError>;
    /// The marks recorded by [`FlowStore::write_marked`].
    fn marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }
}
