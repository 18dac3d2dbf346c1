//! Conntrack over ctnetlink, loss-free.
//!
//! - [`decode`]: pure decoding of ctnetlink messages (`&[u8] -> Result`), including the
//!   attributes generic netlink crates leave raw (counters, timestamps, id, zone);
//! - [`encode`]: the requests podflow sends (a table dump) and entry inserts used by the
//!   tests and the benchmark;
//! - [`Tracker`]: per-connection delta tracking that turns absolute kernel counters into
//!   [`podflow_model::Observation`] deltas, without ever zeroing the kernel's counters;
//! - [`load`]: batched entry creation and deletion (table fills, event storms) for the
//!   tests and benchmarks;
//! - [`Source`]: the sockets (dump + NEW/DESTROY events, and UPDATE events for the time
//!   to first reply when asked) in one network namespace.

mod checkpoint;
pub mod decode;
pub mod encode;
mod error;
pub mod load;
pub mod nl;
mod socket;
mod source;
mod sysctl;
mod tracker;

pub use checkpoint::{CheckpointError, Crc32};
pub use decode::{CtEntry, CtEvent, DecodeStats};
pub use error::Error;
pub use socket::{CtSocket, enter_netns};
/// What a raw receive returns (for tools that drive a [`CtSocket`] themselves).
pub mod socket_recv {
    pub use crate::socket::{BATCH_SLOTS, Batch, Recv, SLOT_BYTES};
}
pub use encode::DumpFilter;
pub use source::{DumpSummary, Source, SourceConfig, SourceOptions, SourceStats, budget_interval};
pub use sysctl::{Features, enable_features, read_features};
pub use tracker::{Tracker, TrackerStats, conn_key};
