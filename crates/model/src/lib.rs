//! podflow's plain data: what an observer saw ([`Observation`]), how it is oriented
//! towards the observer's node ([`Oriented`]), and the aggregated row ([`FlowRow`]).
//!
//! No I/O, no runtime: every other crate speaks these types.

mod observation;
mod row;

pub use observation::{Counters, Observation, Oriented, Protocol, Tuple};
pub use row::{FlowKey, FlowRow, FlowTotals};
