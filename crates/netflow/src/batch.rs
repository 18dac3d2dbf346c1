//! A batch of decoded flows as a receive thread hands them on: compact one-way flows,
//! each naming its observer (exporter and domain) by index.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use podflow_model::Observation;

use crate::decoder::Decoder;
use crate::error::DecodeError;
use crate::record::Flow;
use crate::stats::DomainKey;

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

/// The observers' names a receive thread hands out (`"<exporter ip>/<domain>"`, see
/// [`Batch`]), each made once and shared by all its batches; at most `max` are kept
/// (past that the map starts over and names are made anew).
#[derive(Debug)]
pub struct ObserverNames {
    names: HashMap<(IpAddr, u32), Arc<str>>,
    max: usize,
    /// The last domain asked and its index in the batch filled then: the records of a
    /// batch nearly always share a few domains, so most skip the map.
    last: Option<((IpAddr, u32), u32, Arc<str>)>,
}

impl ObserverNames {
    /// Names for at most `max` domains at a time.
    pub fn new(max: usize) -> ObserverNames {
        ObserverNames {
            names: HashMap::new(),
            max,
            last: None,
        }
    }

    /// Decodes datagram `data` from `from` (received at `now`, Unix seconds) with
    /// `decoder`, adding its flows and their observers to `out`.
    pub fn decode(
        &mut self,
        decoder: &mut Decoder,
        from: SocketAddr,
        data: &[u8],
        now: u64,
        out: &mut Batch,
    ) -> Result<usize, DecodeError> {
        if self.names.len() > self.max {
            self.names.clear();
            self.last = None;
        }
        let (names, last) = (&mut self.names, &mut self.last);
        let observers = &mut out.observers;
        let observer = |d: &DomainKey| {
            let key = (d.exporter.ip(), d.domain);
            if let Some((k, i, name)) = last.as_ref()
                && *k == key
                // Still this batch's (the caller may have emptied it since).
                && observers.get(*i as usize).is_some_and(|o| Arc::ptr_eq(o, name))
            {
                return *i;
            }
            let name = names
                .entry(key)
                .or_insert_with(|| Arc::from(format!("{}/{}", key.0, key.1)));
            let i = Batch::index_in(observers, name);
            *last = Some((key, i, Arc::clone(name)));
            i
        };
        decoder.decode_flows(from, data, now, observer, &mut out.flows)
    }
}
