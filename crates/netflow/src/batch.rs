//! A batch of decoded flows as a receive thread hands them on: compact one-way flows,
//! each naming its observer (exporter and domain) by index.

use std::sync::Arc;

use podflow_model::Observation;

use crate::record::Flow;

/// What the sink receives: the flows decoded from one `recvmmsg` call's datagrams.
///
/// Each flow names its observer by index into `observers`: `"<exporter ip>/<domain>"`
/// (domain = IPFIX observation domain, v9 source id, or v5 engine type << 8 | engine
/// id), e.g. `"10.0.0.7/0"` or `"2001:db8::7/256"`. An observer's `Arc<str>` is shared
/// by every batch of that exporter and domain on the thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The observers of this batch's flows (each once).
    pub observers: Vec<Arc<str>>,
    /// The flows in the order they were decoded.
    pub flows: Vec<Flow>,
}

impl Batch {
    /// Flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.observers.clear();
        self.flows.clear();
    }

    /// The observer of `flow` (a flow of this batch).
    pub fn observer(&self, flow: &Flow) -> Option<&Arc<str>> {
        self.observers.get(flow.observer as usize)
    }

    /// The index of `observer` in this batch's observers, added if new.
    pub fn observer_index(&mut self, observer: &Arc<str>) -> u32 {
        Batch::index_in(&mut self.observers, observer)
    }

    /// [`Batch::observer_index`] on a batch's `observers` alone, for a caller that
    /// fills its `flows` at the same time.
    pub fn index_in(observers: &mut Vec<Arc<str>>, observer: &Arc<str>) -> u32 {
        let i = match observers
            .iter()
            .rposition(|o| Arc::ptr_eq(o, observer) || **o == **observer)
        {
            Some(i) => i,
            None => {
                observers.push(Arc::clone(observer));
                observers.len() - 1
            }
        };
        i as u32
    }

    /// Adds `flow` of `observer` (the index it carries is replaced by this batch's).
    pub fn push(&mut self, observer: &Arc<str>, mut flow: Flow) {
        flow.observer = self.observer_index(observer);
        self.flows.push(flow);
    }

    /// (observer, observation) of every flow, in order.
    pub fn observations(&self) -> impl Iterator<Item = (Arc<str>, Observation)> + '_ {
        self.flows.iter().filter_map(|f| {
            self.observer(f)
                .map(|who| (Arc::clone(who), f.to_observation()))
        })
    }
}
