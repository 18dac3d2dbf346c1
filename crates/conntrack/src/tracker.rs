//! Turns absolute kernel counters into deltas, per connection, without ever zeroing the
//! kernel's counters.
//!
//! Identity: a connection is (conntrack id, protocol, original tuple, zone), hashed to 64
//! bits by [`conn_key`] (a fixed function: checkpoints depend on it); the start
//! timestamp, when the kernel gives one, tells a reused id apart. The tracker keeps only
//! the counters last reported (no tuples: every message carries them): a 56-byte slot per
//! live connection plus ≈ 5–10 bytes of index.
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
//!
//! Layout: slots live in fixed chunks (no reallocation peak when the table grows) and
//! each slot remembers which slot followed it in the last dump. The kernel dumps its hash
//! table in bucket order, which does not change between dumps, so in a steady table the
//! next dump entry is almost always that successor: the tracker checks it first and only
//! falls back to the hash index when the guess is wrong (a new or reordered entry).
//! Idle connections then cost one sequential slot read and a counter compare.
//!
//! Checkpoints: [`Tracker::checkpoint`], [`Tracker::restore`] and [`Tracker::apply`] let
//! a restarted agent continue from what it last reported (see their docs).

use hashbrown::{HashMap, HashTable};
use podflow_model::{Counters, Observation, Tuple};

use crate::checkpoint::{Header, Remembered};
use crate::decode::{CtEntry, IPS_SEEN_REPLY};

/// No slot.
const NONE: u32 = u32::MAX;
/// Slots per chunk (2^14 × 56 B ≈ 0.9 MiB).
const CHUNK_BITS: u32 = 14;
const CHUNK: usize = 1 << CHUNK_BITS;

/// `Slot::state` bits.
const LIVE: u8 = 1;
/// Remembered from a checkpoint (or [`Tracker::apply`]) and not yet seen since the
/// restart: at the end of the first dump, still set means it closed while no agent ran.
const RESTORED: u8 = 2;
/// Reply state (two bits): no reply seen yet; the first UPDATE showing one is measured.
const REPLY_NONE: u8 = 0;
/// A reply time is waiting in `Tracker::pending_replies` to be reported.
const REPLY_PENDING: u8 = 4;
/// Reported, or replied before podflow could see it: never measured.
const REPLY_DONE: u8 = 8;
const REPLY_MASK: u8 = 12;

/// What the tracker remembers of one connection (56 bytes).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: u64,
    orig: Counters,
    reply: Counters,
    start_ns: u64,
    /// The slot that followed this one in the last dump; while free: the next free slot.
    next: u32,
    /// The dump epoch (low 8 bits) that last saw or created it.
    seen: u8,
    /// `LIVE`, `RESTORED` and the reply state.
    state: u8,
}

impl Slot {
    #[inline]
    fn reply_state(&self) -> u8 {
        self.state & REPLY_MASK
    }
    #[inline]
    fn set_reply_state(&mut self, r: u8) {
        self.state = (self.state & !REPLY_MASK) | r;
    }
}

/// The reply state of a connection first met in this state.
#[inline]
fn reply_state(e: &CtEntry) -> u8 {
    if e.status & IPS_SEEN_REPLY != 0 {
        REPLY_DONE
    } else {
        REPLY_NONE
    }
}

/// The 64-bit identity of a connection: conntrack id, protocol, zone and original tuple.
/// A fixed function (not a seeded hasher), so keys written into a checkpoint mean the
/// same after an upgrade; changing it needs a new checkpoint version.
#[inline]
pub fn conn_key(id: u32, proto: u8, zone: u16, orig: &Tuple) -> u64 {
    #[inline]
    fn mix(a: u64, b: u64) -> u64 {
        let r = u128::from(a).wrapping_mul(u128::from(b));
        (r as u64) ^ ((r >> 64) as u64)
    }
    #[inline]
    fn ip(a: std::net::IpAddr) -> (u64, u64, u64) {
        match a {
            std::net::IpAddr::V4(v) => (u64::from(u32::from(v)), 0, 4),
            std::net::IpAddr::V6(v) => {
                let b = u128::from(v);
                ((b >> 64) as u64, b as u64, 6)
            }
        }
    }
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    const P3: u64 = 0x5899_65cc_7537_4cc3;
    let (s0, s1, fs) = ip(orig.src);
    let (d0, d1, fd) = ip(orig.dst);
    let head = u64::from(id)
        | (u64::from(proto) << 32)
        | (u64::from(zone) << 40)
        | ((fs ^ (fd << 4)) << 56);
    let ports = u64::from(orig.src_port) | (u64::from(orig.dst_port) << 16);
    let h = mix(head ^ P0, ports ^ P1);
    let h = mix(h ^ s0 ^ P2, s1 ^ P3);
    let h = mix(h ^ d0 ^ P1, d1 ^ P0);
    mix(h ^ P2, P3 ^ 0x1d8e_4e27_c47d_124f)
}

#[inline]
fn key_of(e: &CtEntry) -> u64 {
    conn_key(e.id, e.proto.0, e.zone, &e.orig)
}

/// The first-reply latency to report with an observation of `s` (entry `e`), if one is
/// pending and the start time is known; marks it reported.
#[inline]
fn take_first_reply(
    s: &mut Slot,
    e: &CtEntry,
    pending: &mut HashMap<u64, u64>,
    stats: &mut TrackerStats,
) -> u64 {
    if s.reply_state() != REPLY_PENDING {
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
    let at = pending.remove(&s.key).unwrap_or(0);
    s.set_reply_state(REPLY_DONE);
    // A reply stamped before the start only comes from a clock step: not a latency.
    let latency = at.saturating_sub(start);
    stats.first_replies += u64::from(latency > 0);
    latency
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
    /// Connections remembered from a checkpoint that were gone by the first dump after
    /// the restore: they closed while no agent ran, and their bytes since the last report
    /// are lost.
    pub closed_while_down: u64,
    /// Observations given to [`Tracker::apply`] for a connection it did not remember
    /// (and that did not open it): ignored.
    pub apply_unknown: u64,
    /// Dump entries found where the last dump's order predicted (no index lookup).
    pub order_hits: u64,
}

/// Per-connection delta tracking. Pure: no I/O, no clock.
#[derive(Debug)]
pub struct Tracker {
    chunks: Vec<Box<[Slot]>>,
    /// Slots handed out (the high-water mark); free ones are listed from `free`.
    used: u32,
    free: u32,
    live: usize,
    /// key → slot index.
    index: HashTable<u32>,
    /// Reply times not yet reported, by key (connections in `REPLY_PENDING`).
    pending_replies: HashMap<u64, u64>,
    /// The first slot of the last dump, and the slot of the previous entry in this one.
    first: u32,
    cursor: u32,
    epoch: u8,
    dumps_done: u64,
    /// Connections that started before this time (ns) and are first seen before the first
    /// dump completes predate podflow.
    started_at_ns: u64,
    /// Events were lost since the last dump began: UPDATEs may be missing.
    events_lost: bool,
    /// This dump follows lost events: connections it shows replied to, whose UPDATE
    /// was not seen, are not measured.
    distrust_replies: bool,
    /// Restored from a checkpoint and the first full dump has not ended yet.
    restored: bool,
    stats: TrackerStats,
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

#[inline]
fn with_first_reply(mut o: Observation, first_reply_ns: u64) -> Observation {
    o.first_reply_ns = first_reply_ns;
    o
}

impl Tracker {
    /// A tracker for a source opened at `started_at_ns` (ns since the Unix epoch).
    pub fn new(started_at_ns: u64) -> Tracker {
        Tracker {
            chunks: Vec::new(),
            used: 0,
            free: NONE,
            live: 0,
            index: HashTable::new(),
            pending_replies: HashMap::new(),
            first: NONE,
            cursor: NONE,
            epoch: 1,
            dumps_done: 0,
            started_at_ns,
            events_lost: false,
            distrust_replies: false,
            restored: false,
            stats: TrackerStats::default(),
        }
    }

    /// The exceptional-path counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Live connections remembered.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no connection is remembered.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes of memory the tracker holds (slot chunks, index, pending replies).
    pub fn memory_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Slot>()
            + self.index.allocation_size()
            + self.pending_replies.allocation_size()
    }

    /// Full dumps completed (restored from a checkpoint: the count it had).
    pub fn dumps_done(&self) -> u64 {
        self.dumps_done
    }

    #[inline]
    fn slot(&self, i: u32) -> &Slot {
        &self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    #[inline]
    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    #[inline]
    fn find(&self, key: u64) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(key, |&i| {
                chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)].key == key
            })
            .copied()
    }

    /// Stores a new live slot and indexes it.
    fn insert(&mut self, s: Slot) -> u32 {
        let i = if self.free != NONE {
            let i = self.free;
            self.free = self.slot(i).next;
            i
        } else {
            if self.used as usize == self.chunks.len() * CHUNK {
                self.chunks
                    .push(vec![Slot::default(); CHUNK].into_boxed_slice());
            }
            self.used += 1;
            self.used - 1
        };
        *self.slot_mut(i) = Slot {
            state: s.state | LIVE,
            next: NONE,
            ..s
        };
        let chunks = &self.chunks;
        self.index.insert_unique(s.key, i, |&j| {
            chunks[(j >> CHUNK_BITS) as usize][j as usize & (CHUNK - 1)].key
        });
        self.live += 1;
        i
    }

    /// Forgets slot `i` (which holds `key`).
    fn remove(&mut self, i: u32) {
        let key = self.slot(i).key;
        if self.slot(i).reply_state() == REPLY_PENDING {
            self.pending_replies.remove(&key);
        }
        if let Ok(e) = self.index.find_entry(key, |&j| j == i) {
            e.remove();
        }
        let free = self.free;
        let s = self.slot_mut(i);
        *s = Slot {
            next: free,
            ..Slot::default()
        };
        self.free = i;
        self.live -= 1;
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
        let key = key_of(e);
        if self.find(key).is_some() {
            return;
        }
        self.insert(Slot {
            key,
            start_ns: e.start_ns,
            seen: self.epoch,
            state: reply_state(e),
            ..Slot::default()
        });
        emit(e.observation(Counters::default(), Counters::default(), true, false));
    }

    /// An UPDATE event received at `recv_ns` (ns since the Unix epoch): the first one
    /// showing a reply stores the reply time (the kernel's event time when the message
    /// has one, else `recv_ns`). Returns whether it was a first reply; UPDATEs carry no
    /// counters, so nothing is emitted. Ignored for connections restored from a
    /// checkpoint until the first dump has shown their state.
    #[inline]
    pub fn on_update(&mut self, e: &CtEntry, recv_ns: u64) -> bool {
        if e.status & IPS_SEEN_REPLY == 0 {
            return false;
        }
        let key = key_of(e);
        let Some(i) = self.find(key) else {
            return false;
        };
        let s = self.slot(i);
        if s.reply_state() != REPLY_NONE || s.state & RESTORED != 0 {
            return false;
        }
        let at = if e.event_ns != 0 { e.event_ns } else { recv_ns };
        self.pending_replies.insert(key, at.max(1));
        self.slot_mut(i).set_reply_state(REPLY_PENDING);
        true
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
        self.cursor = NONE;
    }

    /// The slot of dump entry `key`: the successor of the previous entry in the last dump
    /// when it matches, else an index lookup (which also relinks the order).
    #[inline]
    fn dump_slot(&mut self, key: u64) -> Option<u32> {
        let guess = if self.cursor == NONE {
            self.first
        } else {
            self.slot(self.cursor).next
        };
        if guess != NONE && guess < self.used {
            let s = self.slot(guess);
            if s.key == key && s.state & LIVE != 0 {
                self.stats.order_hits += 1;
                return Some(guess);
            }
        }
        let i = self.find(key)?;
        self.link(i);
        Some(i)
    }

    /// Records that slot `i` follows the cursor in this dump.
    #[inline]
    fn link(&mut self, i: u32) {
        if self.cursor == NONE {
            self.first = i;
        } else {
            let c = self.cursor;
            self.slot_mut(c).next = i;
        }
    }

    /// One entry of a full dump.
    #[inline]
    pub fn on_dump(&mut self, e: &CtEntry, emit: &mut impl FnMut(Observation)) {
        let key = key_of(e);
        let epoch = self.epoch;
        let Some(i) = self.dump_slot(key) else {
            let baseline = self.predates_us(e);
            let i = self.insert(Slot {
                key,
                orig: e.counters_orig,
                reply: e.counters_reply,
                start_ns: e.start_ns,
                seen: epoch,
                state: reply_state(e),
                next: NONE,
            });
            self.link(i);
            self.cursor = i;
            if baseline {
                self.stats.baselined += 1;
            } else {
                emit(e.observation(e.counters_orig, e.counters_reply, true, false));
            }
            return;
        };
        self.cursor = i;
        let distrust = self.distrust_replies;
        let s = self.slot_mut(i);
        s.seen = epoch;
        // The steady state of an idle connection: nothing moved, nothing to do.
        if s.orig == e.counters_orig
            && s.reply == e.counters_reply
            && (s.start_ns == e.start_ns || e.start_ns == 0)
            && s.state & (RESTORED | REPLY_PENDING) == 0
            && !(distrust && s.reply_state() == REPLY_NONE)
            && e.has_counters
        {
            return;
        }
        let mut s = *s;
        s.state &= !RESTORED;
        if s.start_ns != 0 && e.start_ns != 0 && s.start_ns != e.start_ns {
            // Same id and tuple, another connection: the old one's DESTROY was lost.
            if s.reply_state() == REPLY_PENDING {
                self.pending_replies.remove(&key);
            }
            s.start_ns = e.start_ns;
            s.orig = e.counters_orig;
            s.reply = e.counters_reply;
            s.set_reply_state(reply_state(e));
            *self.slot_mut(i) = s;
            self.stats.id_reused += 1;
            emit(e.observation(e.counters_orig, e.counters_reply, true, false));
            return;
        }
        if s.start_ns == 0 {
            s.start_ns = e.start_ns;
        }
        if self.distrust_replies && s.reply_state() == REPLY_NONE {
            s.set_reply_state(reply_state(e));
        }
        let first_reply = take_first_reply(&mut s, e, &mut self.pending_replies, &mut self.stats);
        if !e.has_counters {
            *self.slot_mut(i) = s;
            if first_reply != 0 {
                let o = e.observation(Counters::default(), Counters::default(), false, false);
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
        *self.slot_mut(i) = s;
        if !(d_orig.is_zero() && d_reply.is_zero()) || first_reply != 0 {
            let o = e.observation(d_orig, d_reply, false, false);
            emit(with_first_reply(o, first_reply));
        }
    }

    /// Call after the last entry of a full dump and after draining pending events: forgets
    /// connections missing from two dumps in a row (after a restore: connections missing
    /// from the first dump, counted as closed while down). Returns how many were
    /// forgotten.
    pub fn end_dump(&mut self) -> u64 {
        self.dumps_done += 1;
        let epoch = self.epoch;
        let restored = std::mem::take(&mut self.restored);
        let mut gone = 0u64;
        let mut down = 0u64;
        for i in 0..self.used {
            let s = *self.slot(i);
            if s.state & LIVE == 0 {
                continue;
            }
            if restored && s.state & RESTORED != 0 {
                // Remembered from before the restart and not in the first dump since: it
                // closed while no agent ran (its DESTROY was never received).
                self.remove(i);
                down += 1;
            } else if epoch.wrapping_sub(s.seen) >= 2 {
                // Missing from this dump and the one before: its DESTROY event was lost.
                self.remove(i);
                gone += 1;
            }
        }
        if self.live == 0 {
            // Nothing left: give the memory back (a table that emptied stays small).
            *self = Tracker {
                stats: self.stats,
                dumps_done: self.dumps_done,
                started_at_ns: self.started_at_ns,
                epoch: self.epoch,
                events_lost: self.events_lost,
                ..Tracker::new(0)
            };
        }
        self.stats.vanished += gone;
        self.stats.closed_while_down += down;
        gone + down
    }

    /// A DESTROY event: the final counters.
    #[inline]
    pub fn on_destroy(&mut self, e: &CtEntry, emit: &mut impl FnMut(Observation)) {
        let key = key_of(e);
        let found = self.find(key);
        match found {
            Some(i)
                if {
                    let s = self.slot(i);
                    s.start_ns == 0 || e.start_ns == 0 || s.start_ns == e.start_ns
                } =>
            {
                let mut s = *self.slot(i);
                let first_reply =
                    take_first_reply(&mut s, e, &mut self.pending_replies, &mut self.stats);
                *self.slot_mut(i) = s;
                let (d_orig, d_reply) = if !e.has_counters {
                    (Counters::default(), Counters::default())
                } else if went_back(e.counters_orig, s.orig) || went_back(e.counters_reply, s.reply)
                {
                    self.stats.counter_resets += 1;
                    (e.counters_orig, e.counters_reply)
                } else {
                    (sub(e.counters_orig, s.orig), sub(e.counters_reply, s.reply))
                };
                self.remove(i);
                emit(with_first_reply(
                    e.observation(d_orig, d_reply, false, true),
                    first_reply,
                ));
            }
            other => {
                if let Some(i) = other {
                    self.remove(i);
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

    /// Advances the remembered state by an observation this tracker (or the one a
    /// checkpoint came from) already emitted and the agent already reported, so that a
    /// checkpoint followed by [`Tracker::apply`] of every observation emitted after it
    /// reconstructs the state at the last one. Returns false (and counts
    /// `apply_unknown`) for an observation of a connection it does not remember that did
    /// not open it.
    ///
    /// - `closed`: the connection is forgotten;
    /// - `opened` of an unknown connection, or of a remembered one with another start
    ///   time (a reused id): remembered with the observation's deltas as its counters;
    /// - otherwise the deltas are added to the remembered counters; a reported
    ///   `first_reply_ns` marks the reply as reported.
    ///
    /// Limits: baselines (the first dump's connections, which emit nothing) are not in
    /// any observation, so take the first checkpoint after the first dump; a counter reset
    /// (someone zeroed the kernel's counters) emits the new absolute value as its delta and
    /// an observation does not say so, so after such a reset replayed through `apply` the
    /// remembered counters are too high and the next dump counts another reset (the bytes
    /// since the zeroing are reported twice).
    pub fn apply(&mut self, o: &Observation) -> bool {
        let key = conn_key(o.conn_id, o.proto.0, o.zone, &o.orig);
        let found = self.find(key);
        if o.closed {
            if let Some(i) = found {
                self.remove(i);
            } else if !o.opened {
                self.stats.apply_unknown += 1;
                return false;
            }
            return true;
        }
        match found {
            Some(i) if o.opened && o.start_ns != 0 && self.slot(i).start_ns != o.start_ns => {
                let key = self.slot(i).key;
                if self.slot(i).reply_state() == REPLY_PENDING {
                    self.pending_replies.remove(&key);
                }
                let s = self.slot_mut(i);
                s.orig = o.delta_orig;
                s.reply = o.delta_reply;
                s.start_ns = o.start_ns;
                s.set_reply_state(if o.first_reply_ns != 0 {
                    REPLY_DONE
                } else {
                    REPLY_NONE
                });
            }
            Some(i) => {
                let key = self.slot(i).key;
                if o.first_reply_ns != 0 && self.slot(i).reply_state() == REPLY_PENDING {
                    self.pending_replies.remove(&key);
                }
                let s = self.slot_mut(i);
                s.orig += o.delta_orig;
                s.reply += o.delta_reply;
                if s.start_ns == 0 {
                    s.start_ns = o.start_ns;
                }
                if o.first_reply_ns != 0 {
                    s.set_reply_state(REPLY_DONE);
                }
            }
            None if o.opened => {
                let epoch = self.epoch;
                self.insert(Slot {
                    key,
                    orig: o.delta_orig,
                    reply: o.delta_reply,
                    start_ns: o.start_ns,
                    seen: epoch,
                    state: RESTORED
                        | if o.first_reply_ns != 0 {
                            REPLY_DONE
                        } else {
                            REPLY_NONE
                        },
                    next: NONE,
                });
                self.restored = true;
                self.events_lost = true;
            }
            None => {
                self.stats.apply_unknown += 1;
                return false;
            }
        }
        true
    }

    /// Live slots in the last dump's order (the `next` chain from `first`), then those
    /// the chain does not reach (met by events since). Each once: a chain through a
    /// reused slot can loop.
    fn in_dump_order(&self) -> Vec<u32> {
        let mut visited = vec![0u64; (self.used as usize).div_ceil(64)];
        let mut order = Vec::with_capacity(self.live);
        let mut mark = |i: u32, order: &mut Vec<u32>| {
            let (w, b) = (i as usize / 64, i % 64);
            if visited[w] & (1 << b) != 0 {
                return false;
            }
            visited[w] |= 1 << b;
            order.push(i);
            true
        };
        let mut i = self.first;
        while i != NONE && i < self.used && self.slot(i).state & LIVE != 0 {
            if !mark(i, &mut order) {
                break;
            }
            i = self.slot(i).next;
        }
        for i in 0..self.used {
            if self.slot(i).state & LIVE != 0 {
                mark(i, &mut order);
            }
        }
        order
    }

    /// The remembered state, as a compact, versioned, checksummed byte string (format in
    /// `checkpoint.rs`): per connection its identity key, last reported counters, start
    /// time and reply state, plus the tracker's start time and dump count. Pure.
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.checkpoint_to(&mut |piece| out.extend_from_slice(piece));
        out
    }

    /// [`Tracker::checkpoint`] handed to `out` in pieces of about 64 KiB, in order: a
    /// large table's checkpoint is never whole in memory (the agent writes each piece to
    /// its log). The same bytes every call while the tracker does not change.
    pub fn checkpoint_to(&self, out: &mut dyn FnMut(&[u8])) {
        let header = Header {
            started_at_ns: self.started_at_ns,
            dumps_done: self.dumps_done,
        };
        let order = self.in_dump_order();
        let conns = order.iter().map(|&i| {
            let s = self.slot(i);
            Remembered {
                key: s.key,
                orig: s.orig,
                reply: s.reply,
                start_ns: s.start_ns,
                reply_state: match s.reply_state() {
                    REPLY_PENDING => 1,
                    REPLY_DONE => 2,
                    _ => 0,
                },
                reply_at_ns: if s.reply_state() == REPLY_PENDING {
                    self.pending_replies.get(&s.key).copied().unwrap_or(0)
                } else {
                    0
                },
            }
        });
        crate::checkpoint::encode_to(&header, order.len(), conns, out);
    }

    /// A tracker with the state of a [`Tracker::checkpoint`]; the error names what is
    /// wrong with the bytes (truncated, bad magic, unknown version, checksum, ...).
    ///
    /// What the first dump after a restore does:
    /// - a remembered connection still in the table continues where the last report left
    ///   off: its next delta is the bytes since then (also those that flowed while no
    ///   agent ran);
    /// - a remembered connection gone from the table (closed while no agent ran, its
    ///   DESTROY never received) is forgotten at the end of that dump and counted in
    ///   `closed_while_down`; its bytes since the last report are lost (the kernel no
    ///   longer has them). A DESTROY received after the restart still reports its tail;
    /// - a connection not remembered is new since the checkpoint and reported whole
    ///   (opened, all its counters), unless the checkpoint predates the first dump, in
    ///   which case it is a baseline as at a first start;
    /// - UPDATE events were missed while down: no first-reply time is measured for a
    ///   connection the dump already shows replied to.
    pub fn restore(bytes: &[u8]) -> Result<Tracker, crate::Error> {
        let (header, conns) = crate::checkpoint::decode(bytes)?;
        let mut t = Tracker::new(header.started_at_ns);
        t.dumps_done = header.dumps_done;
        t.index.reserve(conns.len(), |_| 0);
        for (n, c) in conns.into_iter().enumerate() {
            if t.find(c.key).is_some() {
                return Err(crate::checkpoint::CheckpointError::DuplicateConnection {
                    index: n as u64,
                    key: c.key,
                }
                .into());
            }
            let reply = match c.reply_state {
                1 => {
                    t.pending_replies.insert(c.key, c.reply_at_ns.max(1));
                    REPLY_PENDING
                }
                2 => REPLY_DONE,
                _ => REPLY_NONE,
            };
            let i = t.insert(Slot {
                key: c.key,
                orig: c.orig,
                reply: c.reply,
                start_ns: c.start_ns,
                seen: t.epoch,
                state: RESTORED | reply,
                next: NONE,
            });
            // Checkpoints list connections in the last dump's order (slot order):
            // keep it as the guess for the first dump.
            t.link(i);
            t.cursor = i;
        }
        t.cursor = NONE;
        t.restored = t.live > 0;
        t.events_lost = true;
        Ok(t)
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

    #[test]
    fn the_dump_order_is_learnt_and_survives_new_entries_and_holes() {
        let mut t = Tracker::new(0);
        let all: Vec<CtEntry> = (0..1000u32)
            .map(|i| entry(i, 10_000 + i as u16, (i.into(), 1), (0, 0)))
            .collect();
        dump(&mut t, &all);
        let hits = t.stats().order_hits;
        dump(&mut t, &all);
        assert_eq!(t.stats().order_hits - hits, 1000, "every entry guessed");
        // An entry gone and one new in the middle: two misses, the rest still guessed.
        let mut next = all.clone();
        next.remove(500);
        next.insert(700, entry(5000, 9_000, (1, 1), (0, 0)));
        let hits = t.stats().order_hits;
        let out = dump(&mut t, &next);
        assert_eq!(out.len(), 1, "only the new connection");
        assert!(t.stats().order_hits - hits >= 995);
        let hits = t.stats().order_hits;
        dump(&mut t, &next);
        assert_eq!(t.stats().order_hits - hits, 1000, "the new order is learnt");
    }

    #[test]
    fn memory_is_about_64_bytes_per_connection() {
        let mut t = Tracker::new(0);
        let n = 100_000u32;
        let all: Vec<CtEntry> = (0..n)
            .map(|i| {
                let mut e = entry(i, (i % 60_000) as u16, (1, 1), (1, 1));
                e.orig.dst = std::net::IpAddr::V4(std::net::Ipv4Addr::from(i));
                e
            })
            .collect();
        dump(&mut t, &all);
        assert_eq!(t.len(), n as usize);
        let per = t.memory_bytes() as f64 / f64::from(n);
        assert!(per < 80.0, "{per} bytes per connection");
        // Emptied: the memory goes back.
        dump(&mut t, &[]);
        dump(&mut t, &[]);
        assert_eq!(t.memory_bytes(), 0);
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

    #[test]
    fn conn_key_is_fixed() {
        // Checkpoints store these keys: the function must not change within a version.
        let e = entry(7, 41000, (0, 0), (0, 0));
        assert_eq!(key_of(&e), 0x0f7d_2f99_04b6_7213, "{:#x}", key_of(&e));
        let mut v6 = e;
        v6.orig.src = "fd00::1".parse().expect("ip");
        assert_ne!(key_of(&v6), key_of(&e));
        let mut z = e;
        z.zone = 1;
        assert_ne!(key_of(&z), key_of(&e));
    }

    #[test]
    fn restore_continues_where_the_checkpoint_left_off() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[entry(1, 1000, (100, 1), (100, 1))]);
        dump(
            &mut t,
            &[
                entry(1, 1000, (150, 2), (100, 1)),
                entry(2, 2000, (10, 1), (0, 0)),
                entry(3, 3000, (70, 1), (0, 0)),
            ],
        );
        let bytes = t.checkpoint();
        let mut r = Tracker::restore(&bytes).expect("restores");
        assert_eq!((r.len(), r.dumps_done()), (3, 2));
        assert_eq!(r.checkpoint(), bytes, "a restore keeps everything");
        // While down: 1 moved on, 2 closed, 4 opened.
        let out = dump(
            &mut r,
            &[
                entry(1, 1000, (400, 5), (100, 1)),
                entry(3, 3000, (70, 1), (0, 0)),
                entry(4, 4000, (9, 1), (0, 0)),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].delta_orig.bytes, 250);
        assert!(out[1].opened && out[1].delta_orig.bytes == 9);
        assert_eq!(r.stats().closed_while_down, 1);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_large_checkpoint_comes_in_pieces_that_make_the_whole() {
        let mut t = Tracker::new(0);
        let entries: Vec<CtEntry> = (1..=20_000u32)
            .map(|i| entry(i, (i % 60_000) as u16 + 1, (100 + u64::from(i), 3), (7, 1)))
            .collect();
        dump(&mut t, &entries);
        let mut pieces = Vec::new();
        t.checkpoint_to(&mut |p| pieces.push(p.to_vec()));
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let max = crate::checkpoint::CHUNK + 64;
        assert!(pieces.iter().all(|p| p.len() <= max && !p.is_empty()));
        let whole = pieces.concat();
        assert_eq!(whole, t.checkpoint(), "the pieces are the checkpoint");
        let r = Tracker::restore(&whole).expect("restores");
        assert_eq!(r.len(), 20_000);
        assert_eq!(r.checkpoint(), whole);
    }

    #[test]
    fn apply_replays_reported_observations_onto_a_checkpoint() {
        let mut t = Tracker::new(0);
        dump(&mut t, &[entry(1, 1000, (100, 1), (100, 1))]);
        let cp = t.checkpoint();
        let mut log = Vec::new();
        let mut sink = |o: Observation| log.push(o);
        t.begin_dump();
        t.on_dump(&entry(1, 1000, (300, 2), (100, 1)), &mut sink);
        t.on_dump(&entry(2, 2000, (50, 1), (5, 1)), &mut sink);
        t.end_dump();
        t.on_new(&entry(3, 3000, (0, 0), (0, 0)), &mut sink);
        t.on_destroy(&entry(2, 2000, (60, 2), (5, 1)), &mut sink);
        let mut r = Tracker::restore(&cp).expect("restores");
        for o in &log {
            assert!(r.apply(o));
        }
        assert_eq!(r.len(), t.len());
        // The same next dump gives the same deltas.
        let next = [
            entry(1, 1000, (320, 3), (100, 1)),
            entry(3, 3000, (8, 1), (0, 0)),
        ];
        assert_eq!(dump(&mut r, &next), dump(&mut t, &next));
        assert_eq!(r.stats().closed_while_down, 0);
        assert!(!r.apply(&entry(99, 1, (1, 1), (1, 1)).observation(
            Counters::default(),
            Counters::default(),
            false,
            false
        )));
        assert_eq!(r.stats().apply_unknown, 1);
    }

    /// A simulated kernel table: connection → (counters, alive).
    #[derive(Clone, Debug)]
    enum Op {
        Open,
        Traffic(usize, u64, u64),
        Dump,
        Close(usize),
        /// With first_reply on: an UPDATE showing the reply of connection n.
        Reply(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            2 => Just(Op::Open),
            6 => (0usize..8, 0u64..5000, 0u64..5000).prop_map(|(c, a, b)| Op::Traffic(c, a, b)),
            3 => Just(Op::Dump),
            2 => (0usize..8).prop_map(Op::Close),
            1 => (0usize..8).prop_map(Op::Reply),
        ]
    }

    /// Runs `ops` against a tracker (restarting it after op `restart.1` from a checkpoint
    /// taken after op `restart.0` plus the observations emitted since), and returns the
    /// per-connection sums of deltas.
    fn run(ops: &[Op], restart: Option<(usize, usize)>) -> Vec<(u64, u64, u32, u32)> {
        #[derive(Clone, Copy)]
        struct Conn {
            e: CtEntry,
            alive: bool,
        }
        let mut conns: Vec<Conn> = Vec::new();
        let mut sums: Vec<(u64, u64, u32, u32)> = Vec::new();
        let mut t = Tracker::new(1_000);
        // Two connections older than podflow, then the first dump (baselines).
        for i in 0..2u32 {
            let mut e = entry(i, 20_000 + i as u16, (500, 5), (800, 8));
            e.start_ns = 10;
            conns.push(Conn { e, alive: true });
            sums.push((0, 0, 0, 0));
        }
        let mut emitted: Vec<Observation> = Vec::new();
        let first: Vec<CtEntry> = conns.iter().map(|c| c.e).collect();
        t.begin_dump();
        for e in &first {
            t.on_dump(e, &mut |o| emitted.push(o));
        }
        t.end_dump();
        let mut checkpoint: Option<(Vec<u8>, usize)> = None;
        let mut clock = 2_000u64;
        for (n, op) in ops.iter().enumerate() {
            clock += 10;
            match op {
                Op::Open => {
                    let id = conns.len() as u32;
                    let mut e = entry(id, 20_000 + id as u16, (0, 0), (0, 0));
                    e.start_ns = clock;
                    conns.push(Conn { e, alive: true });
                    sums.push((0, 0, 0, 0));
                    t.on_new(&e, &mut |o| emitted.push(o));
                }
                Op::Traffic(c, a, b) => {
                    if let Some(c) = conns.get_mut(*c).filter(|c| c.alive) {
                        c.e.counters_orig.bytes += a;
                        c.e.counters_orig.packets += 1;
                        c.e.counters_reply.bytes += b;
                        c.e.counters_reply.packets += u64::from(*b > 0);
                    }
                }
                Op::Dump => {
                    let live: Vec<CtEntry> =
                        conns.iter().filter(|c| c.alive).map(|c| c.e).collect();
                    t.begin_dump();
                    for e in &live {
                        t.on_dump(e, &mut |o| emitted.push(o));
                    }
                    t.end_dump();
                }
                Op::Close(c) => {
                    if let Some(c) = conns.get_mut(*c).filter(|c| c.alive) {
                        c.alive = false;
                        let mut fin = c.e;
                        fin.stop_ns = clock;
                        t.on_destroy(&fin, &mut |o| emitted.push(o));
                    }
                }
                Op::Reply(c) => {
                    if let Some(c) = conns.get_mut(*c).filter(|c| c.alive) {
                        c.e.status |= IPS_SEEN_REPLY;
                        let mut u = c.e;
                        u.has_counters = false;
                        u.start_ns = 0;
                        u.event_ns = clock;
                        t.on_update(&u, clock);
                    }
                }
            }
            if let Some((at, crash)) = restart {
                if n == at {
                    checkpoint = Some((t.checkpoint(), emitted.len()));
                }
                if n == crash {
                    let (cp, from) = checkpoint.take().expect("checkpoint before the crash");
                    let mut r = Tracker::restore(&cp).expect("restore");
                    for o in &emitted[from..] {
                        r.apply(o);
                    }
                    t = r;
                }
            }
        }
        // A final dump and every connection closed: all bytes accounted.
        let live: Vec<CtEntry> = conns.iter().filter(|c| c.alive).map(|c| c.e).collect();
        t.begin_dump();
        for e in &live {
            t.on_dump(e, &mut |o| emitted.push(o));
        }
        t.end_dump();
        for c in conns.iter_mut().filter(|c| c.alive) {
            t.on_destroy(&c.e, &mut |o| emitted.push(o));
        }
        for o in &emitted {
            let s = &mut sums[o.conn_id as usize];
            s.0 += o.delta_orig.bytes + o.delta_reply.bytes;
            s.1 += o.delta_orig.packets + o.delta_reply.packets;
            s.2 += u32::from(o.opened);
            s.3 += u32::from(o.closed);
        }
        assert!(t.is_empty());
        sums
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

        /// A restart at any point — restore the last checkpoint, apply the observations
        /// reported after it, continue — gives the same per-connection sums of deltas
        /// (and opened/closed counts) as no restart.
        #[test]
        fn checkpoint_apply_restore_is_invisible(
            ops in proptest::collection::vec(op(), 1..60),
            a in 0usize..60,
            b in 0usize..60,
        ) {
            let n = ops.len();
            let (at, crash) = (a.min(b) % n, a.max(b) % n);
            let (at, crash) = (at.min(crash), at.max(crash));
            let plain = run(&ops, None);
            let restarted = run(&ops, Some((at, crash)));
            proptest::prop_assert_eq!(plain, restarted);
        }

        /// Any byte string: restore never panics, and every successful restore
        /// re-encodes to the same bytes.
        #[test]
        fn restore_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(t) = Tracker::restore(&bytes) {
                proptest::prop_assert_eq!(t.checkpoint(), bytes);
            }
        }
    }
}
