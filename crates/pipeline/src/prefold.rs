//! NetFlow/IPFIX records summed per interval, exporter and connection key before
//! attribution.
//!
//! An exporter reports the same flow again every active timeout and a busy network has
//! far more records than distinct flows, so records are first added up here, in the
//! receive threads (one hash update each), and each distinct key is attributed once
//! per interval, when its interval closes. The key is what attribution and the row
//! depend on: the exporter, the protocol, the initiator's and the responder's
//! addresses and the responder's port. A record is put the initiator's way first
//! ([`Flow::is_reply`]: a reply's bytes are the reply direction's), and the initiator's
//! port, which neither attribution nor a row keeps, is dropped: both directions of a
//! connection, and every connection from one client to one server port, are one sum.
//! The answer is the one attributing every record gives: attribution depends on that
//! key, the exporter and the time, and a key's labels are those of its earliest start
//! in the interval (docs/semantics.md).
//! Bounded: beyond `max` flows, records go to attribution one by one (slower, nothing
//! lost).
//!
//! IPv4 keys pack into one u128 (addresses, port, protocol, exporter number) in a flat
//! table of 48-byte slots (crate::flat): with hundreds of thousands of live flows the
//! sums are bound by memory latency, so a batch's slots are loaded together first and
//! their misses overlap.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hashbrown::HashMap;

use crate::flat::Flat;
use podflow_model::{Counters, MAX_ROW_BYTES, MAX_ROW_PACKETS, Observation, Protocol, Tuple};
use podflow_netflow::{Batch, Flow};

/// Exporters with a number of their own (24 bits of the packed key).
const MAX_EXPORTERS: usize = 1 << 24;

/// One direction's bytes (low 41 bits: up to [`MAX_ROW_BYTES`], 2^40) and packets (high
/// 23 bits) in one word, so a key and its sums fill a 48-byte slot: with hundreds of
/// thousands of keys the table's size is its cost (a miss per record once it outgrows
/// the cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Half(u64);

const BYTE_BITS: u32 = 41;
/// Packets a key holds per direction and interval; records past it are attributed one
/// by one (exact, slower): 8.4M packets in an interval, 840k a second over 10 seconds.
const HALF_PACKETS: u64 = (1 << (64 - BYTE_BITS)) - 1;

/// Why a record cannot be added to a sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// It would pass the bound of a row per interval: rejected and counted.
    Bound,
    /// It would pass what a [`Half`] holds: attributed one by one instead.
    Narrow,
}

impl Half {
    fn bytes(self) -> u64 {
        self.0 & ((1 << BYTE_BITS) - 1)
    }

    fn packets(self) -> u64 {
        self.0 >> BYTE_BITS
    }

    fn counters(self) -> Counters {
        Counters {
            bytes: self.bytes(),
            packets: self.packets(),
        }
    }

    /// This plus `bytes` and `packets`, or why not.
    fn plus(self, bytes: u64, packets: u64) -> Result<Half, Full> {
        let b = self.bytes().saturating_add(bytes);
        let p = self.packets().saturating_add(packets);
        if b > MAX_ROW_BYTES || p > MAX_ROW_PACKETS {
            Err(Full::Bound)
        } else if p > HALF_PACKETS {
            Err(Full::Narrow)
        } else {
            Ok(Half(b | p << BYTE_BITS))
        }
    }
}

/// What the records of one key added up to.
#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    /// Initiator → responder.
    orig: Half,
    /// Responder → initiator (reply records).
    reply: Half,
    /// The earliest start seen (0: unknown): the attribution time.
    start_ns: u64,
    opened: u32,
    closed: u32,
}

/// Whether a record alone passes the bound of a row per interval.
fn too_large(f: &Flow) -> bool {
    f.bytes > MAX_ROW_BYTES || f.packets > MAX_ROW_PACKETS
}

impl Sum {
    /// `f`'s direction (the reply's when `reply`, [`Flow::is_reply`]) with `f` added, or
    /// why it cannot be.
    fn with(&self, f: &Flow, reply: bool) -> Result<Half, Full> {
        let c = if reply { self.reply } else { self.orig };
        c.plus(f.bytes, f.packets)
    }

    /// Sets `f`'s direction to `h` (what [`Sum::with`] gave) and counts its connection.
    fn set(&mut self, f: &Flow, reply: bool, h: Half) {
        if reply {
            self.reply = h;
        } else {
            self.orig = h;
            // A connection counts on its initiator's records (a reply's SYN or FIN is the
            // same connection's), as `Flow::to_observation` has it.
            self.opened = self.opened.saturating_add(u32::from(f.opened));
            self.closed = self.closed.saturating_add(u32::from(f.closed));
        }
        if f.start_ns != 0 && (self.start_ns == 0 || f.start_ns < self.start_ns) {
            self.start_ns = f.start_ns;
        }
    }
}

/// The flows of one interval.
#[derive(Debug, Default)]
struct Interval {
    v4: Flat<Sum>,
    /// IPv6 and mixed: (exporter number, protocol, key tuple).
    other: HashMap<(u32, Protocol, Tuple), Sum>,
    /// When its first record arrived (attribution time for records without times).
    seen_ns: u64,
}

/// The tuple a record is summed under: initiator → responder, the initiator's port 0
/// (and both ports for protocols without them: ICMP's are its type and code, which no
/// row keeps).
fn key_tuple(f: &Flow, reply: bool) -> Tuple {
    let t = if reply {
        f.tuple().reversed()
    } else {
        f.tuple()
    };
    Tuple {
        src_port: 0,
        dst_port: if f.proto.has_ports() { t.dst_port } else { 0 },
        ..t
    }
}

/// Key tuple `t` of an IPv4 record of `proto` from `exporter`, packed.
fn pack(exporter: u32, proto: Protocol, t: &Tuple) -> Option<u128> {
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(
            (u128::from(u32::from(s)) << 96)
                | (u128::from(u32::from(d)) << 64)
                | (u128::from(t.dst_port) << 32)
                | (u128::from(proto.0) << 24)
                | u128::from(exporter),
        ),
        _ => None,
    }
}

fn unpack(k: u128) -> (u32, Protocol, Tuple) {
    let t = Tuple {
        src: IpAddr::V4(Ipv4Addr::from((k >> 96) as u32)),
        dst: IpAddr::V4(Ipv4Addr::from((k >> 64) as u32)),
        src_port: 0,
        dst_port: (k >> 32) as u16,
    };
    ((k & 0xff_ffff) as u32, Protocol((k >> 24) as u8), t)
}

/// The number of exporter `who` (None past [`MAX_EXPORTERS`]).
fn exporter_number(exporters: &mut Vec<Arc<str>>, who: &Arc<str>) -> Option<u32> {
    if let Some(i) = exporters
        .iter()
        .rposition(|e| Arc::ptr_eq(e, who) || **e == **who)
    {
        return Some(i as u32);
    }
    if exporters.len() >= MAX_EXPORTERS {
        return None;
    }
    exporters.push(Arc::clone(who));
    Some((exporters.len() - 1) as u32)
}

fn count_rejected(rejected: &mut Vec<u64>, exporter: u32) {
    let i = exporter as usize;
    if rejected.len() <= i {
        rejected.resize(i + 1, 0);
    }
    rejected[i] += 1;
}

/// The sum of flow `k`: held, or new unless `full` (then `len` counts it).
fn slot<'m, K: std::hash::Hash + Eq>(
    m: &'m mut HashMap<K, Sum>,
    k: K,
    full: bool,
    len: &mut usize,
) -> Option<&'m mut Sum> {
    match m.entry(k) {
        hashbrown::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
        hashbrown::hash_map::Entry::Vacant(_) if full => None,
        hashbrown::hash_map::Entry::Vacant(e) => {
            *len += 1;
            Some(e.insert(Sum::default()))
        }
    }
}

/// One distinct flow of a closed interval, ready for attribution.
#[derive(Debug)]
pub struct Folded {
    /// Start of its interval, Unix seconds.
    pub interval: i64,
    /// The exporter and domain that reported it.
    pub observer: Arc<str>,
    /// The flow with its summed counters (`opened`/`closed` set when any record was).
    pub obs: Observation,
    /// Records that opened a connection.
    pub opened: u64,
    /// Records that closed one.
    pub closed: u64,
    /// The attribution time: the earliest start, else when the first record arrived.
    pub seen_ns: u64,
}

/// The sums, bounded by `max` flows.
#[derive(Debug)]
pub struct Prefold {
    interval_s: i64,
    max: usize,
    len: usize,
    intervals: BTreeMap<i64, Interval>,
    exporters: Vec<Arc<str>>,
    /// Emptied maps of closed intervals, kept with their capacity (no regrowth and no
    /// fresh pages for the next interval).
    spare: Vec<Interval>,
    /// Records rejected because a counter would pass the bound of a row per interval,
    /// per exporter number (see [`Prefold::rejected_by_source`]).
    rejected: Vec<u64>,
}

impl Prefold {
    /// Sums for intervals of `interval_s` seconds, at most `max` flows.
    pub fn new(interval_s: u32, max: usize) -> Prefold {
        Prefold {
            interval_s: i64::from(interval_s.max(1)),
            max,
            len: 0,
            intervals: BTreeMap::new(),
            exporters: Vec::new(),
            spare: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// Adds the flows of a batch received at `now_ns`; returns those it could not take
    /// (past a full map), for attribution now.
    pub fn add_batch(&mut self, batch: &Batch, now_ns: u64) -> Batch {
        /// Records whose slots are warmed together (their cache misses overlap).
        const AHEAD: usize = 16;
        let at = (now_ns / 1_000_000_000) as i64;
        let interval = at - at.rem_euclid(self.interval_s);
        let mut rest = Batch::default();
        // The exporter number of each of the batch's observers.
        let numbers: Vec<Option<u32>> = batch
            .observers
            .iter()
            .map(|who| exporter_number(&mut self.exporters, who))
            .collect();
        // A new interval reuses an emptied table; with none spare (the first intervals,
        // or the last one is still being attributed) its table gets room for as many
        // flows as the newest one held, so it does not grow (and rehash) up from empty.
        let room = self
            .intervals
            .values()
            .next_back()
            .map_or(0, |iv| iv.v4.len());
        let spare = &mut self.spare;
        let iv = self.intervals.entry(interval).or_insert_with(|| {
            let mut iv = spare.pop().unwrap_or_else(|| Interval {
                v4: Flat::with_room(room),
                ..Default::default()
            });
            iv.seen_ns = now_ns;
            iv
        });
        let mut len = self.len;
        let max = self.max;
        let mut keys = [None; AHEAD];
        for chunk in batch.flows.chunks(AHEAD) {
            // First pass: the keys, and each record's direction (decided once).
            for (f, key) in chunk.iter().zip(keys.iter_mut()) {
                let reply = f.is_reply();
                *key = numbers
                    .get(f.observer as usize)
                    .copied()
                    .flatten()
                    .map(|e| (e, pack(e, f.proto, &key_tuple(f, reply)), reply));
            }
            // Then one load of each home slot, in a loop of nothing else: the loads are
            // independent and few instructions apart, so the processor has all their
            // misses in flight at once (with the key work in between, its reorder window
            // filled up after a few). Each lands in its own cell: folding them into one
            // value would chain every load on the one before. (Consecutive records of one
            // key, a connection's two directions, find their slot in the cache already.)
            let mut warm = [(0u128, Sum::default()); AHEAD];
            for (key, w) in keys[..chunk.len()].iter().zip(warm.iter_mut()) {
                if let Some((_, Some(k), _)) = key {
                    *w = iv.v4.touch(*k);
                }
            }
            std::hint::black_box(&warm);
            // Second pass: the sums.
            for (f, key) in chunk.iter().zip(keys.iter()) {
                if too_large(f)
                    && let Some((e, _, _)) = key
                {
                    count_rejected(&mut self.rejected, *e);
                    continue;
                }
                let full = len >= max;
                let reply = key.is_some_and(|(_, _, r)| r);
                let sum = match *key {
                    None => None,
                    Some((_, Some(k), _)) => iv.v4.get_or_insert(k, full).map(|(s, new)| {
                        len += usize::from(new);
                        s
                    }),
                    Some((e, None, _)) => {
                        let k = (e, f.proto, key_tuple(f, reply));
                        slot(&mut iv.other, k, full, &mut len)
                    }
                };
                let Some(s) = sum else {
                    if let Some(who) = batch.observer(f) {
                        rest.push(who, *f);
                    }
                    continue;
                };
                match s.with(f, reply) {
                    Ok(h) => s.set(f, reply, h),
                    Err(Full::Bound) => {
                        if let Some((e, _, _)) = key {
                            count_rejected(&mut self.rejected, *e);
                        }
                    }
                    Err(Full::Narrow) => {
                        if let Some(who) = batch.observer(f) {
                            rest.push(who, *f);
                        }
                    }
                }
            }
        }
        self.len = len;
        rest
    }

    /// Records rejected because a counter would pass the bound of a row per interval
    /// (`podflow_model::MAX_ROW_BYTES`, `MAX_ROW_PACKETS`), in total.
    pub fn rejected(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// [`Prefold::rejected`] per exporter.
    pub fn rejected_by_source(&self) -> Vec<(Arc<str>, u64)> {
        self.rejected
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(i, n)| Some((Arc::clone(self.exporters.get(i)?), *n)))
            .collect()
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes out the intervals before `before` (cheap: the caller walks them with
    /// [`Taken::for_each`] after letting go of the lock, then gives them back with
    /// [`Prefold::recycle`] so their memory is reused).
    pub fn take(&mut self, before: i64) -> Taken {
        let keep = self.intervals.split_off(&before);
        let done = std::mem::replace(&mut self.intervals, keep);
        let n: usize = done.values().map(|iv| iv.v4.len() + iv.other.len()).sum();
        self.len -= n.min(self.len);
        Taken {
            intervals: done.into_iter().collect(),
            exporters: self.exporters.clone(),
        }
    }

    /// Keeps the emptied maps of `t` for the next intervals.
    pub fn recycle(&mut self, t: Taken) {
        for (_, mut iv) in t.intervals {
            if self.spare.len() < 2 {
                iv.v4.clear();
                iv.other.clear();
                self.spare.push(iv);
            }
        }
    }
}

/// Intervals taken out of a [`Prefold`].
#[derive(Debug)]
pub struct Taken {
    intervals: Vec<(i64, Interval)>,
    exporters: Vec<Arc<str>>,
}

impl Taken {
    /// Whether it holds no flow.
    pub fn is_empty(&self) -> bool {
        self.intervals
            .iter()
            .all(|(_, iv)| iv.v4.is_empty() && iv.other.is_empty())
    }

    /// Calls `f` with every flow.
    pub fn for_each(&self, mut f: impl FnMut(Folded)) {
        for (interval, iv) in &self.intervals {
            let flows = iv
                .v4
                .iter()
                .map(|(k, s)| (unpack(k), s))
                .chain(iv.other.iter().map(|(k, s)| (*k, s)));
            for ((exporter, proto, orig), s) in flows {
                f(Folded {
                    interval: *interval,
                    observer: Arc::clone(&self.exporters[exporter as usize]),
                    obs: Observation {
                        proto,
                        orig,
                        reply: orig.reversed(),
                        delta_orig: s.orig.counters(),
                        delta_reply: s.reply.counters(),
                        opened: s.opened > 0,
                        closed: s.closed > 0,
                        start_ns: s.start_ns,
                        ..Default::default()
                    },
                    opened: u64::from(s.opened),
                    closed: u64::from(s.closed),
                    seen_ns: iv.seen_ns,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(src: &str, sport: u16, bytes: u64, opened: bool, start_ns: u64) -> Flow {
        Flow {
            src: src.parse().expect("ip"),
            dst: if src.contains(':') {
                "fd00::2".parse().expect("ip")
            } else {
                "10.0.0.2".parse().expect("ip")
            },
            src_port: sport,
            dst_port: 443,
            proto: Protocol::TCP,
            opened,
            closed: false,
            observer: 0,
            bytes,
            packets: 1,
            start_ns,
            end_ns: 0,
        }
    }

    fn batch(flows: &[(Arc<str>, Flow)]) -> Batch {
        let mut b = Batch::default();
        for (who, f) in flows {
            b.push(who, *f);
        }
        b
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn records_of_a_flow_add_up_and_leave_with_their_interval() {
        let mut p = Prefold::new(10, 10);
        let a: Arc<str> = Arc::from("192.0.2.1/0");
        let b: Arc<str> = Arc::from("192.0.2.9/0");
        let rest = p.add_batch(
            &batch(&[
                (a.clone(), rec("10.0.0.1", 5000, 10, true, 7)),
                (a.clone(), rec("10.0.0.1", 5000, 5, true, 3)),
                (a.clone(), rec("10.0.0.1", 5001, 1, false, 0)),
                (b.clone(), rec("10.0.0.1", 5000, 2, false, 0)),
                (a.clone(), rec("fd00::1", 5000, 4, false, 0)),
                (a.clone(), rec("fd00::1", 5000, 4, false, 0)),
            ]),
            105 * S,
        );
        assert!(rest.is_empty());
        assert!(
            p.add_batch(
                &batch(&[(a.clone(), rec("10.0.0.1", 5000, 100, false, 0))]),
                111 * S
            )
            .is_empty()
        );
        assert_eq!(p.len(), 4, "the initiator's port is not a key's");
        let mut out = Vec::new();
        let t = p.take(110);
        t.for_each(|f| out.push(f));
        p.recycle(t);
        out.sort_by_key(|f| (f.obs.orig.src.is_ipv6(), f.obs.delta_orig.bytes));
        let got: Vec<_> = out
            .iter()
            .map(|f| {
                (
                    &*f.observer,
                    f.obs.orig.src_port,
                    f.obs.delta_orig.bytes,
                    f.obs.delta_orig.packets,
                    f.opened,
                    f.obs.start_ns,
                    f.interval,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.9/0", 0, 2, 1, 0, 0, 100),
                ("192.0.2.1/0", 0, 16, 3, 2, 3, 100),
                ("192.0.2.1/0", 0, 8, 2, 0, 0, 100),
            ]
        );
        assert_eq!(out[1].obs.orig.dst_port, 443);
        assert_eq!(out[1].obs.reply.src_port, 443);
        assert_eq!(out[1].seen_ns, 105 * S);
        assert_eq!(p.len(), 1, "the next interval stays");
        let mut n = 0;
        p.take(i64::MAX).for_each(|_| n += 1);
        assert_eq!(n, 1);
        assert!(p.is_empty());
    }

    #[test]
    fn past_a_full_map_flows_go_straight_through() {
        let mut p = Prefold::new(10, 1);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a/0"), Arc::from("b/0"));
        let rest = p.add_batch(
            &batch(&[
                (a.clone(), rec("10.0.0.1", 1, 1, false, 0)),
                (b.clone(), rec("10.0.0.1", 1, 1, false, 0)),
                (a.clone(), rec("10.0.0.1", 1, 1, false, 0)),
                (a.clone(), rec("10.0.0.1", 2, 1, false, 0)),
            ]),
            0,
        );
        let got: Vec<(&str, u16)> = rest
            .flows
            .iter()
            .map(|f| (&**rest.observer(f).expect("observer"), f.src_port))
            .collect();
        assert_eq!(
            got,
            [("b/0", 1)],
            "the flow past the bound (a's two client ports are one key)"
        );
        assert_eq!(p.len(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any records, in batches of any size (across the warm-up chunks), sum per
        /// exporter and tuple like a plain map does.
        #[test]
        fn batches_sum_like_a_map(
            recs in proptest::collection::vec(
                (0..3usize, 0..2usize, 0..2usize, 0..40u16, 0..500u64), 0..300),
            cut in 1..70usize,
        ) {
            let exporters: Vec<Arc<str>> = ["a/0", "b/0", "c/1"].map(Arc::from).to_vec();
            let all: Vec<(Arc<str>, Flow)> = recs
                .iter()
                .map(|&(e, v6, reply, port, bytes)| {
                    let src = if v6 == 1 { "fd00::1" } else { "10.0.0.1" };
                    // Client ports 40000.., server ports 443 or 8000..: requests, and
                    // replies when `reply`.
                    let mut f = rec(src, 40000 + port, bytes, port % 3 == 0, 0);
                    f.dst_port = if port % 2 == 0 { 443 } else { 8000 + port % 4 };
                    if reply == 1 {
                        (f.src, f.dst, f.src_port, f.dst_port) = (f.dst, f.src, f.dst_port, f.src_port);
                    }
                    (Arc::clone(&exporters[e]), f)
                })
                .collect();
            let mut p = Prefold::new(10, usize::MAX);
            for chunk in all.chunks(cut) {
                proptest::prop_assert!(p.add_batch(&batch(chunk), 5 * S).is_empty());
            }
            // The model: every record's observation, summed per (exporter, initiator,
            // responder, responder port).
            type Want = (u64, u64, u64, u64, u64);
            let mut want: std::collections::HashMap<(String, IpAddr, IpAddr, u16), Want> =
                std::collections::HashMap::new();
            for (who, f) in &all {
                let o = f.to_observation();
                let k = (who.to_string(), o.orig.src, o.orig.dst, o.orig.dst_port);
                let e = want.entry(k).or_default();
                e.0 += o.delta_orig.bytes;
                e.1 += o.delta_orig.packets;
                e.2 += o.delta_reply.bytes;
                e.3 += o.delta_reply.packets;
                e.4 += u64::from(o.opened);
            }
            let mut folded = Vec::new();
            p.take(i64::MAX).for_each(|f| folded.push(f));
            let mut got = std::collections::HashMap::new();
            for f in &folded {
                let o = &f.obs;
                proptest::prop_assert_eq!(o.orig.src_port, 0);
                got.insert(
                    (f.observer.to_string(), o.orig.src, o.orig.dst, o.orig.dst_port),
                    (o.delta_orig.bytes, o.delta_orig.packets, o.delta_reply.bytes,
                     o.delta_reply.packets, f.opened),
                );
            }
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(p.is_empty());
        }
    }

    /// A record's packed key, as `add_batch` makes it.
    fn pack_flow(exporter: u32, f: &Flow) -> Option<u128> {
        pack(exporter, f.proto, &key_tuple(f, f.is_reply()))
    }

    #[test]
    fn packing_keeps_every_field() {
        let mut f = rec("255.1.2.3", 65535, 0, false, 0);
        f.dst = "10.9.8.7".parse().expect("ip");
        f.dst_port = 1;
        f.proto = Protocol(132);
        let want = Tuple {
            src_port: 0,
            ..f.tuple()
        };
        assert!(!f.is_reply(), "ephemeral to well-known");
        assert_eq!(
            unpack(pack_flow(0xab_cdef, &f).expect("v4")),
            (0xab_cdef, Protocol(132), want)
        );
        let mut r = f;
        (r.src, r.dst, r.src_port, r.dst_port) = (f.dst, f.src, f.dst_port, f.src_port);
        assert!(r.is_reply());
        assert_eq!(
            pack_flow(7, &r),
            pack_flow(7, &f),
            "a reply is summed with its request"
        );
        let mut icmp = f;
        icmp.proto = Protocol::ICMP;
        assert_eq!(unpack(pack_flow(0, &icmp).expect("v4")).2.dst_port, 0);
    }

    #[test]
    fn records_past_the_row_bound_are_rejected_and_counted_per_exporter() {
        let who: Arc<str> = Arc::from("10.0.0.7/1");
        let mut b = Batch::default();
        let huge = rec("10.0.0.1", 1000, MAX_ROW_BYTES + 1, true, 0);
        let half = rec("10.0.0.1", 1001, MAX_ROW_BYTES / 2 + 1, true, 0);
        b.push(&who, huge);
        b.push(&who, half);
        b.push(&who, half);
        let mut p = Prefold::new(10, 100);
        let rest = p.add_batch(&b, 5_000_000_000);
        assert!(rest.flows.is_empty());
        assert_eq!(
            p.rejected(),
            2,
            "the huge one, and the second half that would pass"
        );
        assert_eq!(p.rejected_by_source(), vec![(Arc::clone(&who), 2)]);
        let mut bytes = Vec::new();
        p.take(i64::MAX)
            .for_each(|f| bytes.push(f.obs.delta_orig.bytes));
        assert_eq!(bytes, vec![MAX_ROW_BYTES / 2 + 1]);
    }

    #[test]
    fn packets_past_what_a_sum_holds_go_one_by_one_and_nothing_is_lost() {
        let who: Arc<str> = Arc::from("10.0.0.7/1");
        let mut big = rec("10.0.0.1", 40000, 1000, false, 0);
        big.packets = HALF_PACKETS; // fits alone
        let mut huge = rec("10.0.0.1", 40001, 1000, false, 0);
        huge.packets = HALF_PACKETS + 1; // not alone, within the row bound
        let one = rec("10.0.0.1", 40002, 10, false, 0);
        let mut b = Batch::default();
        for f in [big, huge, one, one] {
            b.push(&who, f);
        }
        let mut p = Prefold::new(10, 100);
        let rest = p.add_batch(&b, 5 * S);
        let sent: Vec<u64> = rest.flows.iter().map(|f| f.packets).collect();
        assert_eq!(
            sent,
            [HALF_PACKETS + 1, 1, 1],
            "the one past a sum alone, then those the full sum could not take"
        );
        assert_eq!(p.rejected(), 0, "not the row bound: nothing rejected");
        let mut held = Vec::new();
        p.take(i64::MAX).for_each(|f| held.push(f.obs.delta_orig));
        assert_eq!(
            held,
            [Counters {
                bytes: 1000,
                packets: HALF_PACKETS
            }]
        );
    }

    #[test]
    fn a_half_holds_the_row_bound_of_bytes_and_its_packets() {
        let h = Half::default()
            .plus(MAX_ROW_BYTES, HALF_PACKETS)
            .expect("fits");
        assert_eq!((h.bytes(), h.packets()), (MAX_ROW_BYTES, HALF_PACKETS));
        assert_eq!(h.plus(1, 0), Err(Full::Bound));
        assert_eq!(h.plus(0, 1), Err(Full::Narrow));
        assert_eq!(
            Half::default().plus(0, MAX_ROW_PACKETS + 1),
            Err(Full::Bound),
            "the row bound first"
        );
    }
}
