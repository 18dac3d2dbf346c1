//! What every backend answers: the same logical table of flows, summed per interval and
//! key, written, queried and expired through one trait.

use std::sync::Arc;

use podflow_model::{AgentMark, ChunkId, FlowKey, FlowLabels, FlowRow, FlowTotals};
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

/// One chunk of a job: rows from exactly the batches its id names, written under its
/// token.
#[derive(Clone, Copy, Debug)]
pub struct ChunkWrite<'a> {
    /// Token, agent, batches, day.
    pub id: &'a ChunkId,
    /// The rows.
    pub rows: &'a [FlowRow],
}

/// Everything one job writes: the agents' intents (before the rows), the chunks, and the
/// agents' marks (after the rows). A store with transactions writes the rows and marks
/// in one and ignores the intents; ClickHouse writes them in this order, so a crash
/// between the rows and the marks is covered by the chunks' tokens (docs/reliability.md).
#[derive(Clone, Copy, Debug)]
pub struct JobWrite<'a> {
    /// Per agent with chunks in the job: its mark now and the chunks that may be in the
    /// store above it.
    pub intents: &'a [AgentMark],
    /// The rows, per chunk.
    pub chunks: &'a [ChunkWrite<'a>],
    /// Per agent: its mark once the rows are durable, its node and last-seen time.
    pub marks: &'a [AgentMark],
}

impl JobWrite<'_> {
    /// Every row of every chunk.
    pub fn rows(&self) -> impl Iterator<Item = &FlowRow> + Clone {
        self.chunks.iter().flat_map(|c| c.rows.iter())
    }
}

/// A flow store.
pub trait FlowStore: Send {
    /// Adds rows (rows with the same interval and key are summed).
    fn write(&mut self, rows: &[FlowRow]) -> Result<(), StoreError>;
    /// Totals per observer and key over a time range.
    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowSummary>, StoreError>;
    /// Applies the server's retention: deletes rows whose interval started before
    /// `before` (Unix seconds) and returns how many; a store with a retention of its own
    /// (ClickHouse: the table's TTL) keeps its rows and returns 0.
    fn expire(&mut self, before: i64) -> Result<u64, StoreError>;
    /// Writes a job: its chunks' rows and the agents' marks, so that writing the same job
    /// again (a retry, or its chunks re-cut after a restart) counts every row once.
    fn write_job(&mut self, job: &JobWrite<'_>) -> Result<(), StoreError>;
    /// Flows grouped by dimensions (see [`query`]).
    fn group(&self, q: &query::GroupQuery) -> Result<Vec<query::GroupRow>, StoreError>;
    /// Every agent's mark as the last job left it (with its pending chunks where the
    /// store keeps intents).
    fn agents(&self) -> Result<Vec<AgentMark>, StoreError>;
}
