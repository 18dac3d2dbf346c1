//! Turns absolute kernel counters into deltas, per connection, without ever zeroing the
//! kernel's counters.
//!
//! Identity: a connection is (conntrack id, protocol, original tuple, zone), hashed to 64
//! bits; the start timestamp, when the kernel gives one, tells a reused id apart. The
//! tracker keeps only the counters last reported (no tuples: every message carries
//! them), so it costs about 130 bytes per live connection.
//!
//! Life of a connection:
//! - NEW event: remembered with zero counters, reported as opened;
//! - dump: the difference since the last report is emitted; a connection first seen in
//!   the very first dump (it predates podflow) is a baseline: only later bytes count;
//!   one first seen in a later dump (its NEW event was lost) is reported whole;
//! - DESTROY event: the rest is emitted with `closed`, and the entry forgotten; so a
//!   connection that opens and closes between two dumps is still reported in full;
//! - counters lower than last reported: someone zeroed them; the new value is the delta
//!   and the reset is counted;
//! - missing from two dumps in a row without a DESTROY (events lost to an overflow):
//!   forgotten and counted as vanished; the bytes after its last dump are lost.
//!
//! First reply (UPDATE events, only when subscribed): the first UPDATE that shows
//! `IPS_SEEN_REPLY` for a connection not yet replied to stores when the reply came; the
//! next observation of that connection that knows its start time (the next dump that
//! emits, or its DESTROY) carries `first_reply_ns` = reply time − start, once. A
//! connection already replied to when first met (in a dump), or whose UPDATE may have
//! been lost to an overflow, is never measured: a later UPDATE would give a wrong time.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use hashbrown::HashMap;
use podflow_model::{Counters, Observation};

use crate::decode::{CtEntry, IPS_SEEN_REPLY};

/// The hasher of the map: keys are already 64-bit hashes.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What the tracker remembers of one live connection (56 bytes).
#[derive(Clone, Copy, Debug)]
struct Entry {
    orig: Counters,
    reply: Counters,
    start_ns: u64,
    /// When the first reply came (ns since the Unix epoch), not yet reported; or
    /// [`NO_REPLY_YET`] / [`REPLY_DONE`].
    reply_at_ns: u64,
    /// The dump epoch that last saw (or created) it.
    seen: u32,
}

/// `reply_at_ns`: no reply seen yet; the first UPDATE showing one is measured.
const NO_REPLY_YET: u64 = 0;
/// `reply_at_ns`: reported, or replied before podflow could see it: never measured.
const REPLY_DONE: u64 = u64::MAX;

/// The `reply_at_ns` of a connection first met in this state.
#[inline]
fn reply_state(e: &CtEntry) -> u64 {
    if e.status & IPS_SEEN_REPLY != 0 {
        REPLY_DONE
    } else {
        NO_REPLY_YET
    }
}

/// The first-reply latency to report with an observation of `e`, if one is pending and
/// the start time is known; marks it reported.
#[inline]
fn take_first_reply(s: &mut Entry, e: &CtEntry, stats: &mut TrackerStats) -> u64 {
    if s.reply_at_ns == NO_REPLY_YET || s.reply_at_ns == REPLY_DONE {
        return 0;
    }
    let start = if e.start_ns != 0 {
        e.start_ns
    } else {
        s.start_ns
    };
    if start == 0 {
        // Timestamps off: wait for a message that carries the start.
        return 0;
    }
    let at = std::mem::replace(&mut s.reply_at_ns, REPLY_DONE);
    // A reply stamped before the start only comes from a clock step: not a latency.
    let latency = at.saturating_sub(start);
    stats.first_replies += u64::from(latency > 0);
    latency
}

#[inline]
fn with_first_reply(mut o: Observation, first_reply_ns: u64) -> Observation {
    o.first_reply_ns = first_reply_ns;
    o
}

/// Counts of the tracker's exceptional paths; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Counters went backwards (someone zeroed them).
    pub counter_resets: u64,
    /// Connections forgotten without a DESTROY event (events were lost).
    pub vanished: u64,
    /// A conntrack id came back with another start time (the old one's DESTROY was lost).
    pub id_reused: u64,
    /// DESTROY events for connections the tracker never saw.
    pub destroy_unknown: u64,
    /// Connections taken as a baseline at start (their earlier bytes predate podflow).
    pub baselined: u64,
    /// First-reply latencies reported.
    pub first_replies: u64,
}

/// Per-connection delta tracking. Pure: no I/O, no clock.
#[derive(Debug)]
pub struct Tracker {
    map: HashMap<u64, Entry, BuildHasherDefault<IdentityHasher>>,
    hasher: foldhash::fast::FixedState,
    epoch: u32,
    dumps_done: u64,
    /// Connections that started before this time (ns) and are first seen before the first
    /// dump completes predate podflow.
    started_at_ns: u64,
    /// Events were lost since the last dump began: UPDATEs may be missing.
    events_lost: bool,
    /// This dump follows lost events: connections it shows replied to, whose UPDATE
    /// was not seen, are not measured.
    distrust_replies: bool,
    stats: TrackerStats,
}

impl std::fmt::Debug for IdentityHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityHasher")
    }
}

#[inline]
fn sub(now: Counters, last: Counters) -> Counters {
    Counters {
        bytes: now.bytes - last.bytes,
        packets: now.packets - last.packets,
    }
}

#[inline]
fn went_back(now: Counters, last: Counters) -> bool {
    now.bytes < last.bytes || now.packets < last.packets
}

impl Tracker {
    /// A tracker for a source opened at `started_at_ns` (ns since the Unix epoch).
    pub fn new(started_at_ns: u64) -> Tracker {
        Tracker {
            map: HashMap::default(),
            hasher: foldhash::fast::FixedState::with_seed(0x706f_6466_6c6f_7700),
            epoch: 1,
            dumps_done: 0,
            started_at_ns,
            events_lost: false,
            distrust_replies: false,
            stats: TrackerStats::default(),
        }
    }

    /// The exceptional-path counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Live connections remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no connection is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of memory the table holds (buckets and control bytes).
    pub fn memory_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(u64, Entry)>() + 1)
    }

    /// Full dumps completed.
    pub fn dumps_done(&self) -> u64 {
        self.dumps_done
    }

    #[inline]
    fn key(&self, e: &CtEntry) -> u64 {
        let mut h = self.hasher.build_hasher();
        e.id.hash(&mut h);
        e.proto.0.hash(&mut h);
        e.zone.hash(&mut h);
        e.orig.hash(&mut h);
        h.finish()
    }

    /// Whether a connection first met now is older than podflow (its bytes before now
    /// are not ours to report).
    #[inline]
    fn predates_us(&self, e: &CtEntry) -> bool {
        self.dumps_done == 0 && (e.start_ns == 0 || e.start_ns < self.started_at_ns)
    }

    /// A NEW event.
    #[inline]
    pub fn on_new(&mut self, e: &CtEntry, emit: &mut impl FnMut(Observation)) {
        let key = self.key(e);
        let epoch = self.epoch;
        if let hashbrown::hash_map::Entry::Vacant(v) = self.map.entry(key) {
            v.insert(Entry {
                orig: Counters::default(),
                reply: Counters::default(),
                start_ns: e.start_ns,
                reply_at_ns: reply_state(e),
                seen: epoch,
            });
            emit(e.observation(Counters::default(), Counters::default(), true, false));
        }
    }

    /// An UPDATE event received at `recv_ns` (ns since the Unix epoch): the first one
    /// showing a reply stores the reply time (the kernel's event time when the message
    /// has one, else `recv_ns`). Returns whether it was a first reply; UPDATEs carry no
    /// counters, so nothing is emitted.
    #[inline]
    pub fn on_update(&mut self, e: &CtEntry, recv_ns: u64) -> bool {
        if e.status & IPS_SEEN_REPLY == 0 {
            return false;
        }
        let key = self.key(e);
        match self.map.get_mut(&key) {
            Some(s) if s.reply_at_ns == NO_REPLY_YET => {
                let at = if e.event_ns != 0 { e.event_ns } else { recv_ns };
                s.reply_at_ns = at.clamp(1, REPLY_DONE - 1);
                true
            }
            _ => false,
        }
    }

    /// Events were lost (the event socket overflowed): an UPDATE may be among them, so
    /// the next dump marks connections already replied to as not measurable.
    pub fn events_lost(&mut self) {
        self.events_lost = true;
    }

    /// Call before feeding the entries of a full dump.
    pub fn begin_dump(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.distrust_replies = std::mem::take(&mut self.events_lost);
    }

    /// One entry of a full dump.
    #[inline]
    pub fn on_dump(&mut self, e: &CtEntry, emit: &mut impl FnMut(Observation)) {
        let key = self.key(e);
        let epoch = self.epoch;
        match self.map.get_mut(&key) {
            Some(s) => {
                s.seen = epoch;
                if s.start_ns != 0 && e.start_ns != 0 && s.start_ns != e.start_ns {
                    // Same id and tuple, another connection: the old one's DESTROY was lost.
                    self.stats.id_reused += 1;
                    s.start_ns = e.start_ns;
                    s.orig = e.counters_orig;
                    s.reply = e.counters_reply;
                    s.reply_at_ns = reply_state(e);
                    emit(e.observation(e.counters_orig, e.counters_reply, true, false));
                    return;
                }
                if s.start_ns == 0 {
                    s.start_ns = e.start_ns;
                }
                if self.distrust_replies && s.reply_at_ns == NO_REPLY_YET {
                    s.reply_at_ns = reply_state(e);
                }
                let first_reply = take_first_reply(s, e, &mut self.stats);
                if !e.has_counters {
                    if first_reply != 0 {
                        let o =
                            e.observation(Counters::default(), Counters::default(), false, false);
                        emit(with_first_reply(o, first_reply));
                    }
                    return;
                }
                let (d_orig, d_reply) =
                    if went_back(e.counters_orig, s.orig) || went_back(e.counters_reply, s.reply) {
                        self.stats.counter_resets += 1;
                        (e.counters_orig, e.counters_reply)
                    } else {
                        (sub(e.counters_orig, s.orig), sub(e.counters_reply, s.reply))
                    };
                s.orig = e.counters_orig;
                s.reply = e.counters_reply;
                if !(d_orig.is_zero() && d_reply.is_zero()) || first_reply != 0 {
                    let o = e.observation(d_orig, d_reply, false, false);
                    emit(with_first_reply(o, first_reply));
                }
            }
            None => {
                let baseline = self.predates_us(e);
                self.map.insert(
                    key,
                    Entry {
                        orig: e.counters_orig,
                        reply: e.counters_reply,
                        start_ns: e.start_ns,
                        reply_at_ns: reply_state(e),
                        seen: epoch,
                    },
                );
                if baseline {
                    self.stats.baselined += 1;
                } else {
                    emit(e.observation(e.counters_orig, e.counters_reply, true, false));
                }
            }
        }
    }

    /// Call after the last entry of a full dump and after draining pending events: forgets
    /// connections missing from two dumps in a row. Returns how many were forgotten.
    pub fn end_dump(&mut self) -> u64 {
        self.dumps_done += 1;
        let epoch = self.epoch;
        let before = self.map.len();
        // Missing from this dump and the one before: its DESTROY event was lost.
        self.map.retain(|_, s| epoch.wrapping_sub(s.seen) < 2);
        let gone = (before - self.map.len()) as u64;
        self.stats.vanished += gone;
        gone
    }

    /// A DESTROY event: the final counters.
    #[inline]
    pub fn on_destroy(&mut self, e: &CtEntry, emit: &mut impl FnMut(Observation)) {
        let key = self.key(e);
        match self.map.remove(&key) {
            Some(mut s) if s.start_ns == 0 || e.start_ns == 0 || s.start_ns == e.start_ns => {
                let first_reply = take_first_reply(&mut s, e, &mut self.stats);
                let (d_orig, d_reply) = if !e.has_counters {
                    (Counters::default(), Counters::default())
                } else if went_back(e.counters_orig, s.orig) || went_back(e.counters_reply, s.reply)
                {
                    self.stats.counter_resets += 1;
                    (e.counters_orig, e.counters_reply)
                } else {
                    (sub(e.counters_orig, s.orig), sub(e.counters_reply, s.reply))
                };
                emit(with_first_reply(
                    e.observation(d_orig, d_reply, false, true),
                    first_reply,
                ));
            }
            other => {
                if other.is_some() {
                    self.stats.id_reused += 1;
                }
                self.stats.destroy_unknown += 1;
                if self.predates_us(e) {
                    // It predates podflow and closed before the first dump reached it.
                    emit(e.observation(Counters::default(), Counters::default(), false, true));
                } else {
                    emit(e.observation(e.counters_orig, e.counters_reply, true, true));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow_model::{Protocol, Tuple};

    fn entry(id: u32, port: u16, orig: (u64, u64), reply: (u64, u64)) -> CtEntry {
        let a = "10.0.0.1".parse().expect("ip");
        let b = "10.0.0.2".parse().expect("ip");
        CtEntry {
            proto: Protocol::TCP,
            orig: Tuple {
                src: a,
                dst: b,
                src_port: port,
                dst_port: 80,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: 80,
                dst_port: port,
            },
            counters_orig: Counters {
                bytes: orig.0,
                packets: orig.1,
            },
            counters_reply: Counters {
                bytes: reply.0,
                packets: reply.1,
            },
            has_counters: true,
            id,
            ..Default::default()
        }
    }

    fn collect(
        t: &mut Tracker,
        f: impl FnOnce(&mut Tracker, &mut dyn FnMut(Observation)),
    ) -> Vec<Observation> {
        let mut out = Vec::new();
        f(t, &mut |o| out.push(o));
        out
    }

    fn dump(t: &mut Tracker, entries: &[CtEntry]) -> Vec<Observation> {
        let mut out = Vec::new();
        t.begin_dump();
        for e in entries {
            t.on_dump(e, &mut |o| out.push(o));
        }
        t.end_dump();
        out
    }

    #[test]
    fn first_dump_is_a_baseline_and_later_dumps_emit_differences() {
        let mut t = Tracker::new(1_000);
        assert!(dump(&mut t, &[entry(1, 40000, (100, 2), (200, 3))]).is_empty());
        assert_eq!(t.stats().baselined, 1);
        let out = dump(&mut t, &[entry(1, 40000, (150, 3), (1200, 5))]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].delta_orig,
            Counters {
                bytes: 50,
                packets: 1
            }
        );
        assert_eq!(
            out[0].delta_reply,
            Counters {
                bytes: 1000,
                packets: 2
            }
        );
        assert!(!out[0].opened && !out[0].closed);
        // Nothing moved: nothing emitted.
        assert!(dump(&mut t, &[entry(1, 40000, (150, 3), (1200, 5))]).is_empty());
    }

    #[test]
    fn connection_between_two_dumps_is_reported_by_its_events() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        let e = entry(7, 41000, (0, 0), (0, 0));
        let new = collect(&mut t, |t, f| t.on_new(&e, &mut |o| f(o)));
        assert_eq!(new.len(), 1);
        assert!(new[0].opened);
        let fin = entry(7, 41000, (500, 5), (7000, 6));
        let gone = collect(&mut t, |t, f| t.on_destroy(&fin, &mut |o| f(o)));
        assert_eq!(gone[0].delta_orig.bytes + gone[0].delta_reply.bytes, 7500);
        assert!(gone[0].closed);
        assert!(t.is_empty());
    }

    #[test]
    fn destroy_emits_the_bytes_after_the_last_dump() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        dump(&mut t, &[entry(3, 42000, (100, 1), (100, 1))]);
        let fin = entry(3, 42000, (160, 2), (900, 4));
        let out = collect(&mut t, |t, f| t.on_destroy(&fin, &mut |o| f(o)));
        assert_eq!(
            out[0].delta_orig,
            Counters {
                bytes: 60,
                packets: 1
            }
        );
        assert_eq!(
            out[0].delta_reply,
            Counters {
                bytes: 800,
                packets: 3
            }
        );
    }

    #[test]
    fn zeroed_counters_are_a_reset() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        dump(&mut t, &[entry(4, 43000, (1000, 10), (1000, 10))]);
        let out = dump(&mut t, &[entry(4, 43000, (40, 1), (0, 0))]);
        assert_eq!(
            out[0].delta_orig,
            Counters {
                bytes: 40,
                packets: 1
            }
        );
        assert_eq!(t.stats().counter_resets, 1);
    }

    #[test]
    fn reused_id_with_other_start_is_a_new_connection() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        let mut a = entry(5, 44000, (100, 1), (100, 1));
        a.start_ns = 10;
        dump(&mut t, &[a]);
        let mut b = entry(5, 44000, (30, 1), (0, 0));
        b.start_ns = 20;
        let out = dump(&mut t, &[b]);
        assert_eq!(out[0].delta_orig.bytes, 30);
        assert!(out[0].opened);
        assert_eq!(t.stats().id_reused, 1);
    }

    #[test]
    fn missing_from_two_dumps_is_forgotten_as_vanished() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        dump(&mut t, &[entry(6, 45000, (1, 1), (1, 1))]);
        dump(&mut t, &[]);
        assert_eq!(
            t.len(),
            1,
            "one missed dump is tolerated: its DESTROY may be queued"
        );
        dump(&mut t, &[]);
        assert_eq!(t.len(), 0);
        assert_eq!(t.stats().vanished, 1);
    }

    #[test]
    fn destroy_of_a_connection_older_than_podflow_before_first_dump_reports_no_old_bytes() {
        let mut t = Tracker::new(1_000);
        let mut e = entry(8, 46000, (5000, 5), (5000, 5));
        e.start_ns = 10;
        let out = collect(&mut t, |t, f| t.on_destroy(&e, &mut |o| f(o)));
        assert!(out[0].closed && out[0].delta_orig.is_zero());
        // After the first dump, an unknown DESTROY is reported whole.
        dump(&mut t, &[]);
        let mut e2 = entry(9, 46001, (5000, 5), (5000, 5));
        e2.start_ns = 2_000;
        let out = collect(&mut t, |t, f| t.on_destroy(&e2, &mut |o| f(o)));
        assert_eq!(out[0].delta_orig.bytes, 5000);
    }

    /// A connection seen replied to: `status` with `IPS_SEEN_REPLY`, stamped `event_ns`.
    fn replied(mut e: CtEntry, event_ns: u64) -> CtEntry {
        e.status |= IPS_SEEN_REPLY;
        e.event_ns = event_ns;
        e
    }

    /// A tracker past its first dump that saw the NEW event of connection `id`.
    fn opened(id: u32, port: u16) -> (Tracker, CtEntry) {
        let mut t = Tracker::new(0);
        dump(&mut t, &[]);
        let new = entry(id, port, (0, 0), (0, 0));
        collect(&mut t, |t, f| t.on_new(&new, &mut |o| f(o)));
        (t, new)
    }

    #[test]
    fn first_reply_is_measured_from_the_start_and_reported_once_on_close() {
        let (mut t, new) = opened(20, 48000);
        // A state change before any reply is not one.
        assert!(!t.on_update(&entry(20, 48000, (0, 0), (0, 0)), 5_000));
        // The reply: the kernel's event time wins over the receive time.
        assert!(t.on_update(&replied(new, 1_150_000_000), 1_151_000_000));
        // Later UPDATEs (TCP state changes) still show the reply: ignored.
        assert!(!t.on_update(&replied(new, 1_300_000_000), 1_300_000_000));
        let mut fin = replied(entry(20, 48000, (100, 2), (200, 2)), 0);
        fin.start_ns = 1_000_000_000;
        fin.stop_ns = 2_000_000_000;
        let out = collect(&mut t, |t, f| t.on_destroy(&fin, &mut |o| f(o)));
        assert_eq!(out[0].first_reply_ns, 150_000_000);
        assert_eq!(t.stats().first_replies, 1);
    }

    #[test]
    fn first_reply_rides_on_the_next_dump_and_falls_back_to_receive_time() {
        let (mut t, new) = opened(21, 48001);
        // No CTA_TIMESTAMP_EVENT (older kernel): the receive time is the reply time.
        assert!(t.on_update(&replied(new, 0), 1_020_000_000));
        let mut now = replied(entry(21, 48001, (60, 1), (60, 1)), 0);
        now.start_ns = 1_000_000_000;
        let out = dump(&mut t, &[now]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].first_reply_ns, 20_000_000);
        // Counters did not move and the reply is reported: nothing more.
        assert!(dump(&mut t, &[now]).is_empty());
        let out = collect(&mut t, |t, f| t.on_destroy(&now, &mut |o| f(o)));
        assert_eq!(out[0].first_reply_ns, 0, "once per connection");
    }

    #[test]
    fn a_reply_podflow_did_not_see_is_never_measured() {
        let mut t = Tracker::new(0);
        // Met in a dump already replied to (older than podflow, or its events lost).
        let mut old = replied(entry(22, 48002, (10, 1), (10, 1)), 0);
        old.start_ns = 10;
        dump(&mut t, &[old]);
        assert!(!t.on_update(&replied(old, 999), 999));
        // Met unreplied, NEW seen, then events were lost: the next dump shows the reply
        // and the UPDATE may have been among the lost ones.
        let new = entry(23, 48003, (0, 0), (0, 0));
        collect(&mut t, |t, f| t.on_new(&new, &mut |o| f(o)));
        t.events_lost();
        let mut now = replied(entry(23, 48003, (10, 1), (10, 1)), 0);
        now.start_ns = 10;
        dump(&mut t, &[old, now]);
        assert!(!t.on_update(&replied(now, 5_000), 5_000), "a later UPDATE");
        let out = collect(&mut t, |t, f| t.on_destroy(&now, &mut |o| f(o)));
        assert_eq!(out[0].first_reply_ns, 0);
        assert_eq!(t.stats().first_replies, 0);
    }

    proptest::proptest! {
        /// Whatever the order of dumps, the sum of deltas equals the final counters for a
        /// connection born after the first dump: no byte lost, none counted twice.
        #[test]
        fn deltas_sum_to_the_final_counters(steps in proptest::collection::vec((0u64..10_000, 0u64..100, proptest::bool::ANY), 1..40)) {
            let mut t = Tracker::new(0);
            dump(&mut t, &[]);
            let (mut b, mut p) = (0u64, 0u64);
            let mut total = Counters::default();
            let mut sink = |o: Observation| { total += o.delta_orig; };
            t.on_new(&entry(11, 47000, (0, 0), (0, 0)), &mut sink);
            for (db, dp, do_dump) in steps {
                b += db; p += dp;
                if do_dump {
                    t.begin_dump();
                    t.on_dump(&entry(11, 47000, (b, p), (0, 0)), &mut sink);
                    t.end_dump();
                }
            }
            t.on_destroy(&entry(11, 47000, (b, p), (0, 0)), &mut sink);
            proptest::prop_assert_eq!(total, Counters { bytes: b, packets: p });
        }
    }
}
