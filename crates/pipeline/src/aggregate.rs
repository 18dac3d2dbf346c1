//! Sums oriented observations per interval and key. Pure: time is passed in.
//!
//! Every observation carries a *chunk* tag (the ledger's: which agent batches its rows
//! will be written with, `0` for rows no agent replays), kept in the key, so a chunk's
//! rows are a function of its batches alone and can be taken out on their own
//! ([`Aggregator::take`]). Counters never wrap: an observation that would take a row past
//! [`MAX_ROW_BYTES`] or [`MAX_ROW_PACKETS`] is rejected and counted per source.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use podflow_model::{FlowKey, FlowLabels, FlowRow, FlowTotals, Observation, Oriented};
use podflow_model::{MAX_ROW_BYTES, MAX_ROW_PACKETS};

/// What a bucket holds: the sums, the labels of its first observation, the cost.
#[derive(Debug)]
struct Bucket {
    totals: FlowTotals,
    labels: Arc<FlowLabels>,
    cost_usd: f64,
}

/// The labels of a key new in its interval, asked for only then. [`NewLabels::are`]
/// lets the aggregator share the last new key's labels without building them (most new
/// keys of an interval carry the labels of the one before: building and dropping them
/// costs a reference count per name); a closure always builds.
pub trait NewLabels {
    /// Whether the labels are `l`; `false` when not known without building them.
    fn are(&self, l: &FlowLabels) -> bool;
    /// Builds them.
    fn build(self) -> FlowLabels;
}

impl<F: FnOnce() -> FlowLabels> NewLabels for F {
    fn are(&self, _: &FlowLabels) -> bool {
        false
    }

    fn build(self) -> FlowLabels {
        self()
    }
}

/// Per-interval aggregation with a bound on distinct keys.
#[derive(Debug)]
pub struct Aggregator {
    interval_s: u32,
    max_keys: usize,
    buckets: HashMap<(i64, u64, Arc<str>, FlowKey), Bucket>,
    overflowed: u64,
    /// Observations rejected because a counter would pass the row bound, per source.
    rejected: std::collections::HashMap<Arc<str>, u64>,
    rejected_total: u64,
    /// Keys held per chunk (not 0), to cut chunks by size.
    chunk_keys: HashMap<u64, usize>,
    /// The labels of the last new key: a new key with equal labels shares them (one
    /// allocation instead of many, and the store sees equal labels by address).
    last_labels: Option<Arc<FlowLabels>>,
}

/// The key that takes traffic beyond `max_keys`: protocol kept, addresses unspecified,
/// so totals stay exact while memory stays bounded.
fn overflow_key(k: &FlowKey) -> FlowKey {
    FlowKey {
        proto: k.proto,
        local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        remote: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        responder_port: 0,
        local_initiated: k.local_initiated,
        service: None,
        prefixes: Default::default(),
    }
}

impl Aggregator {
    /// Aggregates over `interval_s`-second intervals, per observer, holding at most
    /// `max_keys` keys (more go to a per-protocol overflow key, counted).
    pub fn new(interval_s: u32, max_keys: usize) -> Aggregator {
        Aggregator {
            interval_s: interval_s.max(1),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
            overflowed: 0,
            rejected: std::collections::HashMap::new(),
            rejected_total: 0,
            chunk_keys: HashMap::new(),
            last_labels: None,
        }
    }

    /// Start of the interval that contains `t` (Unix seconds).
    pub fn interval_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(i64::from(self.interval_s))
    }

    /// Adds one observation seen at `now` (Unix seconds), oriented as `o`; `labels` is
    /// called only when the key is new in the interval; `cost_usd` is added.
    pub fn record(
        &mut self,
        observer: &Arc<str>,
        obs: &Observation,
        o: &Oriented,
        now: i64,
        labels: impl NewLabels,
        cost_usd: f64,
    ) {
        self.record_in(0, observer, obs, o, now, labels, cost_usd);
    }

    /// [`Aggregator::record`] into chunk `chunk`.
    #[allow(clippy::too_many_arguments)]
    pub fn record_in(
        &mut self,
        chunk: u64,
        observer: &Arc<str>,
        obs: &Observation,
        o: &Oriented,
        now: i64,
        labels: impl NewLabels,
        cost_usd: f64,
    ) {
        let n = (u64::from(obs.opened), u64::from(obs.closed));
        self.record_counted_in(chunk, observer, obs.proto, o, now, labels, cost_usd, n);
    }

    /// Adds summed records under `key` (the caller's: e.g. a network's, docs/netflow.md),
    /// whose addresses are `o`'s or their networks: `conns` = (connections opened,
    /// closed) among them.
    #[allow(clippy::too_many_arguments)]
    pub fn record_counted(
        &mut self,
        observer: &Arc<str>,
        key: FlowKey,
        o: &Oriented,
        now: i64,
        labels: impl NewLabels,
        cost_usd: f64,
        conns: (u64, u64),
    ) {
        self.record_key_in(0, observer, key, o, now, labels, cost_usd, conns);
    }

    /// Adds summed records into chunk `chunk`: `conns` = (connections opened, closed)
    /// among them. Returns false when the observation was rejected (a counter would
    /// pass the row bound; counted).
    #[allow(clippy::too_many_arguments)]
    pub fn record_counted_in(
        &mut self,
        chunk: u64,
        observer: &Arc<str>,
        proto: podflow_model::Protocol,
        o: &Oriented,
        now: i64,
        labels: impl NewLabels,
        cost_usd: f64,
        conns: (u64, u64),
    ) -> bool {
        let key = FlowKey::of(proto, o);
        self.record_key_in(chunk, observer, key, o, now, labels, cost_usd, conns)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_key_in(
        &mut self,
        chunk: u64,
        observer: &Arc<str>,
        mut key: FlowKey,
        o: &Oriented,
        now: i64,
        labels: impl NewLabels,
        cost_usd: f64,
        conns: (u64, u64),
    ) -> bool {
        if o.out.bytes > MAX_ROW_BYTES
            || o.inbound.bytes > MAX_ROW_BYTES
            || o.out.packets > MAX_ROW_PACKETS
            || o.inbound.packets > MAX_ROW_PACKETS
        {
            self.reject(observer);
            return false;
        }
        let at = self.interval_of(now);
        let full = self.buckets.len() >= self.max_keys;
        if full
            && !self
                .buckets
                .contains_key(&(at, chunk, Arc::clone(observer), key))
        {
            self.overflowed += 1;
            key = overflow_key(&key);
        }
        // One lookup: a new key's bucket starts empty, which any observation within the
        // bounds above fits.
        let last = &mut self.last_labels;
        let chunk_keys = &mut self.chunk_keys;
        let b = match self.buckets.entry((at, chunk, Arc::clone(observer), key)) {
            Entry::Occupied(e) => {
                let b = e.into_mut();
                if !b.totals.fits(o) {
                    self.reject(observer);
                    return false;
                }
                b
            }
            Entry::Vacant(e) => {
                if chunk != 0 {
                    *chunk_keys.entry(chunk).or_default() += 1;
                }
                let labels = match last {
                    Some(prev) if !full && labels.are(prev) => Arc::clone(prev),
                    _ => {
                        let l = if full {
                            FlowLabels::default()
                        } else {
                            labels.build()
                        };
                        match last {
                            Some(prev) if **prev == l => Arc::clone(prev),
                            _ => Arc::clone(last.insert(Arc::new(l))),
                        }
                    }
                };
                e.insert(Bucket {
                    totals: FlowTotals::default(),
                    labels,
                    cost_usd: 0.0,
                })
            }
        };
        b.totals.add(o, conns);
        b.cost_usd += cost_usd;
        true
    }

    fn reject(&mut self, observer: &Arc<str>) {
        self.rejected_total += 1;
        *self.rejected.entry(Arc::clone(observer)).or_default() += 1;
    }

    /// Rows of every interval that ended at or before `now`; `force` flushes all. Every
    /// chunk's rows together, as [`Aggregator::take`] with the chunks of those intervals.
    pub fn flush(&mut self, now: i64, force: bool) -> Vec<FlowRow> {
        let upto = if force {
            i64::MAX
        } else {
            self.interval_of(now)
        };
        self.take_where(|at, _| at < upto)
            .into_iter()
            .flat_map(|(_, rows)| rows)
            .collect()
    }

    /// Takes out the rows of chunk 0 (rows no agent replays) in intervals before `upto`,
    /// and every row of the chunks in `chunks`, whatever their interval: per chunk.
    pub fn take(&mut self, upto: i64, chunks: &HashSet<u64>) -> Vec<(u64, Vec<FlowRow>)> {
        self.take_where(|at, chunk| {
            if chunk == 0 {
                at < upto
            } else {
                chunks.contains(&chunk)
            }
        })
    }

    fn take_where(&mut self, mut take: impl FnMut(i64, u64) -> bool) -> Vec<(u64, Vec<FlowRow>)> {
        let mut out: HashMap<u64, Vec<FlowRow>> = HashMap::new();
        let interval_s = self.interval_s;
        // Room for every key a chunk holds (chunk 0's: the keys of no other chunk), so
        // an interval's rows are not copied over and over as their vector grows.
        let chunk_keys = &self.chunk_keys;
        let room_0 = self.buckets.len().saturating_sub(chunk_keys.values().sum());
        let room = |c: u64| match c {
            0 => room_0,
            c => chunk_keys.get(&c).copied().unwrap_or(0),
        };
        self.buckets.retain(|(at, chunk, observer, key), b| {
            if take(*at, *chunk) {
                out.entry(*chunk)
                    .or_insert_with(|| Vec::with_capacity(room(*chunk)))
                    .push(FlowRow {
                        interval_start: *at,
                        interval_s,
                        observer: observer.to_string(),
                        key: *key,
                        totals: b.totals,
                        labels: Arc::clone(&b.labels),
                        cost_usd: b.cost_usd,
                    });
                false
            } else {
                true
            }
        });
        for c in out.keys() {
            self.chunk_keys.remove(c);
        }
        let mut out: Vec<(u64, Vec<FlowRow>)> = out.into_iter().collect();
        out.sort_unstable_by_key(|(c, _)| *c);
        out
    }

    /// Keys held by chunk `chunk`.
    pub fn chunk_keys(&self, chunk: u64) -> usize {
        self.chunk_keys.get(&chunk).copied().unwrap_or(0)
    }

    /// Observations rejected because a counter would pass the bound of a row per
    /// interval ([`MAX_ROW_BYTES`], [`MAX_ROW_PACKETS`]), in total.
    pub fn rejected(&self) -> u64 {
        self.rejected_total
    }

    /// [`Aggregator::rejected`] per source (observer).
    pub fn rejected_by_source(&self) -> &std::collections::HashMap<Arc<str>, u64> {
        &self.rejected
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }

    /// Observations that went to an overflow key.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow_model::{Counters, Protocol, Tuple};

    fn obs(sport: u16, dport: u16, bytes: u64) -> Observation {
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        Observation {
            proto: Protocol::TCP,
            orig: Tuple {
                src: a,
                dst: b,
                src_port: sport,
                dst_port: dport,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: dport,
                dst_port: sport,
            },
            delta_orig: Counters { bytes, packets: 1 },
            delta_reply: Counters {
                bytes: bytes * 2,
                packets: 2,
            },
            opened: true,
            ..Default::default()
        }
    }

    fn local(a: IpAddr) -> bool {
        a.to_string() == "10.0.0.1"
    }

    /// Records `o` unattributed, oriented by [`local`].
    fn record(g: &mut Aggregator, o: &Observation, now: i64) {
        g.record(
            &"n".into(),
            o,
            &o.orient(local),
            now,
            FlowLabels::default,
            0.0,
        );
    }

    /// Labels that say whether they are the last ones without being built (and count
    /// how often they were built).
    struct Known<'a> {
        same: bool,
        built: &'a std::cell::Cell<u32>,
        class: podflow_model::Class,
    }

    impl NewLabels for Known<'_> {
        fn are(&self, l: &FlowLabels) -> bool {
            self.same && l.class == self.class
        }
        fn build(self) -> FlowLabels {
            self.built.set(self.built.get() + 1);
            FlowLabels {
                class: self.class,
                ..Default::default()
            }
        }
    }

    #[test]
    fn new_keys_share_the_last_labels_without_building_them_when_they_are_the_same() {
        use podflow_model::Class;
        let mut g = Aggregator::new(10, 100);
        let built = std::cell::Cell::new(0);
        let who: Arc<str> = "n".into();
        let mut add = |port: u16, same: bool, class: Class| {
            let o = obs(40_000, port, 10);
            let k = FlowKey::of(o.proto, &o.orient(local));
            let l = Known {
                same,
                built: &built,
                class,
            };
            g.record_counted(&who, k, &o.orient(local), 100, l, 0.0, (1, 0));
        };
        add(1, true, Class::IntraZone); // nothing before: built
        add(2, true, Class::IntraZone); // the same: shared, not built
        add(3, false, Class::IntraZone); // not known: built, equal, shared
        add(4, true, Class::InterZone); // different: built
        assert_eq!(built.get(), 3);
        let rows = g.flush(0, true);
        assert_eq!(rows.len(), 4);
        let intra: Vec<&FlowRow> = rows
            .iter()
            .filter(|r| r.labels.class == Class::IntraZone)
            .collect();
        assert_eq!(intra.len(), 3);
        assert!(
            intra
                .iter()
                .all(|r| Arc::ptr_eq(&r.labels, &intra[0].labels))
        );
        assert!(rows.iter().any(|r| r.labels.class == Class::InterZone));
    }

    #[test]
    fn ephemeral_ports_collapse_into_one_row_per_interval() {
        let mut g = Aggregator::new(10, 100);
        record(&mut g, &obs(40000, 80, 10), 101);
        record(&mut g, &obs(40001, 80, 20), 109);
        record(&mut g, &obs(40002, 80, 40), 110);
        assert!(
            g.flush(109, false).is_empty(),
            "interval 100..110 is still open"
        );
        let rows = g.flush(110, false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].interval_start, 100);
        assert_eq!(rows[0].totals.bytes_out, 30);
        assert_eq!(rows[0].totals.bytes_in, 60);
        assert_eq!(rows[0].totals.opened, 2);
        assert_eq!(rows[0].key.responder_port, 80);
        let rest = g.flush(110, true);
        assert_eq!(rest[0].totals.bytes_out, 40);
        assert_eq!(g.keys(), 0);
    }

    #[test]
    fn keys_beyond_the_bound_go_to_the_overflow_key_with_totals_kept() {
        let mut g = Aggregator::new(10, 2);
        for port in 1..=5 {
            record(&mut g, &obs(40000, port, 100), 100);
        }
        let rows = g.flush(0, true);
        assert_eq!(rows.len(), 3);
        assert_eq!(g.overflowed(), 3);
        assert_eq!(rows.iter().map(|r| r.totals.bytes_out).sum::<u64>(), 500);
    }

    #[test]
    fn observations_past_the_row_bound_are_rejected_and_counted_per_source() {
        let mut g = Aggregator::new(10, 100);
        record(&mut g, &obs(40000, 80, MAX_ROW_BYTES + 1), 100);
        assert_eq!(g.rejected(), 1);
        assert_eq!(g.keys(), 0, "nothing of it is kept");
        // Two that fit alone but not together: the second is rejected, the row stays at
        // the bound (bytes_in is twice bytes_out here).
        record(&mut g, &obs(40000, 80, MAX_ROW_BYTES / 2), 100);
        record(&mut g, &obs(40001, 80, 1), 100);
        assert_eq!(g.rejected(), 2);
        assert_eq!(g.rejected_by_source().get("n"), Some(&2));
        let rows = g.flush(0, true);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].totals.bytes_in, MAX_ROW_BYTES);
        let mut huge = obs(1, 2, 1);
        huge.delta_reply.packets = MAX_ROW_PACKETS + 1;
        record(&mut g, &huge, 100);
        assert_eq!(g.rejected(), 3);
    }

    #[test]
    fn chunks_are_taken_whole_and_chunk_zero_by_interval() {
        let mut g = Aggregator::new(10, 100);
        let o = obs(40000, 80, 10);
        let or = o.orient(local);
        g.record_in(0, &"n".into(), &o, &or, 100, FlowLabels::default, 0.0);
        g.record_in(0, &"n".into(), &o, &or, 200, FlowLabels::default, 0.0);
        g.record_in(5, &"n".into(), &o, &or, 100, FlowLabels::default, 0.0);
        g.record_in(5, &"n".into(), &o, &or, 300, FlowLabels::default, 0.0);
        g.record_in(6, &"n".into(), &o, &or, 100, FlowLabels::default, 0.0);
        assert_eq!(g.chunk_keys(5), 2);
        let got = g.take(150, &HashSet::from([5]));
        let brief: Vec<(u64, Vec<i64>)> = got
            .iter()
            .map(|(c, rows)| {
                let mut at: Vec<i64> = rows.iter().map(|r| r.interval_start).collect();
                at.sort_unstable();
                (*c, at)
            })
            .collect();
        assert_eq!(brief, vec![(0, vec![100]), (5, vec![100, 300])]);
        assert_eq!(g.chunk_keys(5), 0);
        assert_eq!(g.keys(), 2, "chunk 6 and chunk 0's later interval stay");
    }

    proptest::proptest! {
        #[test]
        fn bytes_are_conserved(items in proptest::collection::vec((1u16..20, 0u64..1_000_000, 0i64..100), 0..200), max in 1usize..10) {
            let mut g = Aggregator::new(10, max);
            let mut want = 0u64;
            for (port, bytes, t) in &items {
                record(&mut g, &obs(40000, *port, *bytes), *t);
                want += bytes * 3;
            }
            let got: u64 = g.flush(0, true).iter().map(|r| r.totals.bytes()).sum();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
