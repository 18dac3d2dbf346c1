//! Bookkeeping of one burst of numbered packets (pure, times passed in): which were
//! sent, which answered, the duplicates, the late ones and the strangers.
//!
//! A reply counts only when its session is this burst's and its sequence number is
//! one this burst sent and has not yet seen answered: a reordered reply still lands
//! on its own packet, a duplicate or a replay never lands twice, and a reply of an
//! older burst (another session) never lands at all.

use crate::wire;

/// How a reply was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// The first reply to a packet of this burst, in time.
    Matched,
    /// A second (or later) reply to the same packet.
    Duplicate,
    /// A reply that came after the packet's timeout: the packet counts as lost.
    Late,
    /// Not for this burst (other session, or a sequence never sent).
    Foreign,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    sent_user_ns: Option<u64>,
    sent_kernel_ns: Option<u64>,
    send_failed: bool,
    answered: bool,
    rtt_ns: Option<u64>,
    fallbacks: u8,
}

/// One burst in flight.
#[derive(Clone, Debug)]
pub struct Burst {
    session: u64,
    timeout_ns: u64,
    slots: Vec<Slot>,
    duplicates: u32,
    late: u32,
    foreign: u32,
    bad_times: u32,
}

/// What a finished burst measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Packets tried (a failed send counts, and counts as lost).
    pub sent: u32,
    /// Packets answered in time.
    pub received: u32,
    /// Packets sent and not answered in time.
    pub lost: u32,
    /// Extra replies to packets already answered.
    pub duplicates: u32,
    /// Replies after their packet's timeout (counted in `lost` too).
    pub late: u32,
    /// Replies that belonged to no packet of this burst.
    pub foreign: u32,
    /// Packets whose send call failed (in `sent` and `lost` too).
    pub send_failed: u32,
    /// RTT samples in sequence order (ns).
    pub rtt_ns: Vec<u64>,
    /// Times taken from the user-space clock because the kernel gave no stamp.
    pub timestamp_fallbacks: u32,
    /// Answered packets whose times were inconsistent (no RTT sample).
    pub bad_times: u32,
}

impl Burst {
    /// A burst of `count` packets in session `session`; a reply later than `timeout_ns`
    /// after its packet's send is late.
    pub fn new(session: u64, count: u32, timeout_ns: u64) -> Burst {
        Burst {
            session,
            timeout_ns,
            slots: vec![Slot::default(); count as usize],
            duplicates: 0,
            late: 0,
            foreign: 0,
            bad_times: 0,
        }
    }

    /// The session id.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Packet `seq` left at `user_ns` (user-space clock, taken just before the send).
    pub fn sent(&mut self, seq: u32, user_ns: u64) {
        if let Some(s) = self.slots.get_mut(seq as usize) {
            s.sent_user_ns = Some(user_ns);
        }
    }

    /// The send call for `seq` failed.
    pub fn send_failed(&mut self, seq: u32) {
        if let Some(s) = self.slots.get_mut(seq as usize) {
            s.send_failed = true;
        }
    }

    /// The kernel's transmit stamp for `(session, seq)`.
    pub fn tx_stamp(&mut self, session: u64, seq: u32, kernel_ns: u64) {
        if session != self.session {
            return;
        }
        if let Some(s) = self.slots.get_mut(seq as usize)
            && s.sent_user_ns.is_some()
        {
            s.sent_kernel_ns = Some(kernel_ns);
        }
    }

    /// Whether the transmit stamp of `(session, seq)` is in (false for a packet of
    /// another session or never sent: reading the queue would not help it, but it
    /// does no harm either).
    pub fn has_tx_stamp(&self, session: u64, seq: u32) -> bool {
        session == self.session
            && self
                .slots
                .get(seq as usize)
                .is_some_and(|s| s.sent_kernel_ns.is_some())
    }

    /// Every packet that left has its transmit stamp.
    pub fn all_tx_stamped(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.sent_user_ns.is_none() || s.send_failed || s.sent_kernel_ns.is_some())
    }

    /// A reply for `(session, seq)` with the responder's times `t2`/`t3` (0 when it
    /// gives none), received at `t4_ns` (`kernel` says whether that was the kernel's
    /// stamp). Needs the transmit stamp to have been offered first when there is one.
    pub fn reply(
        &mut self,
        session: u64,
        seq: u32,
        t2: u64,
        t3: u64,
        t4_ns: u64,
        kernel: bool,
    ) -> ReplyClass {
        let timeout = self.timeout_ns;
        let slot = match self.slots.get_mut(seq as usize) {
            Some(s) if session == self.session && s.sent_user_ns.is_some() => s,
            _ => {
                self.foreign += 1;
                return ReplyClass::Foreign;
            }
        };
        if slot.answered {
            self.duplicates += 1;
            return ReplyClass::Duplicate;
        }
        let user_t1 = slot.sent_user_ns.unwrap_or_default();
        let mut fallbacks = u8::from(!kernel);
        let t1 = match slot.sent_kernel_ns {
            Some(k) => k,
            None => {
                fallbacks += 1;
                user_t1
            }
        };
        if t4_ns.saturating_sub(user_t1.min(t1)) > timeout {
            // Late: stays lost. A second late copy is a duplicate of nothing: late too.
            self.late += 1;
            return ReplyClass::Late;
        }
        slot.answered = true;
        slot.fallbacks = fallbacks;
        slot.rtt_ns = wire::rtt_ns(t1, t2, t3, t4_ns);
        if slot.rtt_ns.is_none() {
            self.bad_times += 1;
        }
        ReplyClass::Matched
    }

    /// Every packet sent has its answer (or failed to leave).
    pub fn complete(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.answered || s.send_failed || s.sent_user_ns.is_none())
    }

    /// The result, and the transmit stamps that never came counted as fallbacks.
    pub fn finish(&self) -> Summary {
        let mut m = Summary {
            duplicates: self.duplicates,
            late: self.late,
            foreign: self.foreign,
            bad_times: self.bad_times,
            ..Summary::default()
        };
        for s in &self.slots {
            if s.send_failed {
                // It never left, but the path it was for did not carry it: a loss
                // (a black-holed route must not read as "0 sent, 0 lost").
                m.send_failed += 1;
                m.sent += 1;
                m.lost += 1;
                continue;
            }
            if s.sent_user_ns.is_none() {
                continue;
            }
            m.sent += 1;
            if s.answered {
                m.received += 1;
                m.timestamp_fallbacks += u32::from(s.fallbacks);
                m.rtt_ns.extend(s.rtt_ns);
            } else {
                m.lost += 1;
            }
        }
        m
    }
}

/// Mean absolute difference of consecutive samples (RFC 3550's idea, without the
/// smoothing): the burst's jitter, ns.
pub fn jitter_ns(rtts: &[u64]) -> Option<u64> {
    if rtts.len() < 2 {
        return None;
    }
    let sum: u64 = rtts.windows(2).map(|w| w[0].abs_diff(w[1])).sum();
    Some(sum / (rtts.len() as u64 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn reordered_duplicated_foreign_and_late() {
        let mut b = Burst::new(77, 4, 250 * MS);
        for s in 0..4 {
            b.sent(s, 1000 * MS + u64::from(s) * 10 * MS);
            b.tx_stamp(77, s, 1000 * MS + u64::from(s) * 10 * MS + 5_000);
        }
        // Replies come back 3, 1, 1 again, an old session's 0, a never-sent 9, then 0 late.
        assert_eq!(
            b.reply(77, 3, 0, 0, 1030 * MS + 2 * MS, true),
            ReplyClass::Matched
        );
        assert_eq!(
            b.reply(77, 1, 0, 0, 1010 * MS + 3 * MS, true),
            ReplyClass::Matched
        );
        assert_eq!(
            b.reply(77, 1, 0, 0, 1010 * MS + 4 * MS, true),
            ReplyClass::Duplicate
        );
        assert_eq!(b.reply(76, 0, 0, 0, 1001 * MS, true), ReplyClass::Foreign);
        assert_eq!(b.reply(77, 9, 0, 0, 1001 * MS, true), ReplyClass::Foreign);
        assert!(!b.complete());
        assert_eq!(b.reply(77, 0, 0, 0, 1300 * MS, true), ReplyClass::Late);
        let s = b.finish();
        assert_eq!((s.sent, s.received, s.lost), (4, 2, 2));
        assert_eq!((s.duplicates, s.late, s.foreign), (1, 1, 2));
        // Samples in sequence order, each against its own packet's send stamp.
        assert_eq!(s.rtt_ns, vec![3 * MS - 5_000, 2 * MS - 5_000]);
        assert_eq!(s.timestamp_fallbacks, 0);
    }

    #[test]
    fn responder_hold_is_subtracted_and_fallbacks_counted() {
        let mut b = Burst::new(1, 2, 250 * MS);
        b.sent(0, 100 * MS);
        b.sent(1, 110 * MS);
        b.tx_stamp(1, 0, 100 * MS + 1);
        // Seq 0: held 4 ms by the responder; kernel stamps both ways.
        assert_eq!(
            b.reply(1, 0, 101 * MS, 105 * MS, 110 * MS + 1, true),
            ReplyClass::Matched
        );
        // Seq 1: no transmit stamp and no receive stamp: two fallbacks.
        assert_eq!(b.reply(1, 1, 0, 0, 111 * MS, false), ReplyClass::Matched);
        let s = b.finish();
        assert_eq!(s.rtt_ns, vec![6 * MS, MS]);
        assert_eq!(s.timestamp_fallbacks, 2);
        assert!(b.complete());
    }

    #[test]
    fn transmit_stamps_in() {
        let mut b = Burst::new(3, 3, 250 * MS);
        assert!(b.all_tx_stamped(), "nothing sent, nothing missing");
        b.sent(0, MS);
        b.sent(1, 2 * MS);
        assert!(!b.has_tx_stamp(3, 0) && !b.all_tx_stamped());
        b.tx_stamp(3, 0, MS + 1);
        b.tx_stamp(2, 1, 2 * MS + 1); // another session's: not ours
        assert!(b.has_tx_stamp(3, 0) && !b.has_tx_stamp(3, 1) && !b.has_tx_stamp(2, 0));
        assert!(!b.all_tx_stamped());
        // A packet whose send failed never gets one and is not waited for.
        b.send_failed(1);
        assert!(b.all_tx_stamped());
    }

    #[test]
    fn jitter() {
        assert_eq!(jitter_ns(&[10]), None);
        assert_eq!(jitter_ns(&[10, 14, 12]), Some(3));
    }

    proptest! {
        /// Whatever order, duplication and strangers the replies come in, each sent
        /// packet is answered at most once, and the counts add up.
        #[test]
        fn replies_never_mismatch(
            count in 1u32..20,
            replies in proptest::collection::vec((0u64..3, 0u32..25, 0u64..400), 0..80),
        ) {
            let mut b = Burst::new(1, count, 250 * MS);
            for s in 0..count { b.sent(s, u64::from(s) * MS); }
            let mut matched = std::collections::HashSet::new();
            let mut n = [0u32; 4];
            for (sess, seq, at) in replies {
                let t4 = u64::from(seq) * MS + at * MS;
                let c = b.reply(sess, seq, 0, 0, t4, true);
                n[c as usize] += 1;
                if c == ReplyClass::Matched {
                    prop_assert!(sess == 1 && seq < count && at <= 250);
                    prop_assert!(matched.insert(seq), "seq {} matched twice", seq);
                }
            }
            let s = b.finish();
            prop_assert_eq!(s.received as usize, matched.len());
            prop_assert_eq!(s.sent, count);
            prop_assert_eq!(s.lost + s.received, s.sent);
            prop_assert_eq!((s.duplicates, s.late, s.foreign), (n[1], n[2], n[3]));
            prop_assert_eq!(s.rtt_ns.len() as u32, s.received);
        }
    }
}
