//! Sums oriented observations per interval and key. Pure: time is passed in.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hashbrown::HashMap;
use podflow_model::{FlowKey, FlowLabels, FlowRow, FlowTotals, Observation, Oriented};

/// What a bucket holds: the sums, the labels of its first observation, the cost.
#[derive(Debug)]
struct Bucket {
    totals: FlowTotals,
    labels: Arc<FlowLabels>,
    cost_usd: f64,
}

/// Per-interval aggregation with a bound on distinct keys.
#[derive(Debug)]
pub struct Aggregator {
    interval_s: u32,
    max_keys: usize,
    buckets: HashMap<(i64, Arc<str>, FlowKey), Bucket>,
    overflowed: u64,
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
        labels: impl FnOnce() -> FlowLabels,
        cost_usd: f64,
    ) {
        let n = (u64::from(obs.opened), u64::from(obs.closed));
        self.record_counted(observer, obs.proto, o, now, labels, cost_usd, n);
    }

    /// Adds summed records: `conns` = (connections opened, closed) among them.
    #[allow(clippy::too_many_arguments)]
    pub fn record_counted(
        &mut self,
        observer: &Arc<str>,
        proto: podflow_model::Protocol,
        o: &Oriented,
        now: i64,
        labels: impl FnOnce() -> FlowLabels,
        cost_usd: f64,
        conns: (u64, u64),
    ) {
        let mut key = FlowKey::of(proto, o);
        let at = self.interval_of(now);
        let full = self.buckets.len() >= self.max_keys;
        if full && !self.buckets.contains_key(&(at, Arc::clone(observer), key)) {
            self.overflowed += 1;
            key = overflow_key(&key);
        }
        let last = &mut self.last_labels;
        let b = self
            .buckets
            .entry((at, Arc::clone(observer), key))
            .or_insert_with(|| {
                let l = if full {
                    FlowLabels::default()
                } else {
                    labels()
                };
                let labels = match last {
                    Some(prev) if **prev == l => Arc::clone(prev),
                    _ => Arc::clone(last.insert(Arc::new(l))),
                };
                Bucket {
                    totals: FlowTotals::default(),
                    labels,
                    cost_usd: 0.0,
                }
            });
        b.totals.add(o, conns);
        b.cost_usd += cost_usd;
    }

    /// Rows of every interval that ended at or before `now`; `force` flushes all.
    pub fn flush(&mut self, now: i64, force: bool) -> Vec<FlowRow> {
        let current = self.interval_of(now);
        let mut rows = Vec::new();
        self.buckets.retain(|(at, observer, key), b| {
            if force || *at < current {
                rows.push(FlowRow {
                    interval_start: *at,
                    interval_s: self.interval_s,
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
        rows
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
