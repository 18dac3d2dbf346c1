//! podflow's plain data: what an observer saw ([`Observation`]), how it is oriented
//! towards the observer's node ([`Oriented`]), and the aggregated row ([`FlowRow`]).
//!
//! No I/O, no runtime: every other crate speaks these types.

mod attribution;
pub mod hash;
mod labels;
mod observation;
mod row;

pub use attribution::{
    Attribution, Class, CloudMeta, KubenetmonClass, Name, NetworkKind, NetworkMeta, NodeMeta,
    Place, PodMeta, ServiceHit, ServiceMeta, ServiceVia, ServiceZone, Side,
};
pub use labels::{EndLabels, FlowLabels, PROBE_APP, parse_flag};
pub use observation::{Counters, Observation, Oriented, Protocol, Tuple};
pub use row::{
    AgentMark, ChunkId, FlowKey, FlowRow, FlowTotals, MAX_ROW_BYTES, MAX_ROW_PACKETS, Prefixes,
    full_prefix_len, network_len,
};
