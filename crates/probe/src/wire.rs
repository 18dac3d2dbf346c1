//! The UDP probe packet (pure): a TWAMP-light exchange (the idea of RFC 5357's
//! unauthenticated test packets, not its format).
//!
//! The sender stamps t1 when it sends; the responder answers with the request's own
//! bytes, the type turned into "reply" and its receive (t2) and send (t3) times filled
//! in; the sender takes t4 when the reply arrives. RTT = (t4 - t1) - (t3 - t2): the
//! time the packet spent in the network, without the responder's own delay.
//!
//! ```text
//! offset size field
//!  0     4    magic "PFPB" (0x50 0x46 0x50 0x42)
//!  4     1    version, 1
//!  5     1    type: 1 request, 2 reply
//!  6     2    flags, 0 (unknown bits are ignored)
//!  8     8    session id: one per sender burst, so replies of other bursts never match
//! 16     4    sequence number within the session
//! 20     4    reserved, 0
//! 24     8    t1: sender's send time, ns since the Unix epoch (CLOCK_REALTIME)
//! 32     8    t2: responder's receive time (0 in a request)
//! 40     8    t3: responder's send time (0 in a request)
//! 48     ...  padding to the requested size (a full-MTU probe), echoed in the reply
//! ```
//! All integers are big-endian. A reply is exactly as long as its request: the
//! responder never sends more than it received (no amplification).

use crate::error::WireError;

/// "PFPB".
pub const MAGIC: u32 = 0x5046_5042;
/// The version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header; the smallest probe.
pub const HEADER_LEN: usize = 48;
/// The largest probe: the largest UDP payload over IPv4.
pub const MAX_LEN: usize = 65_507;

const TYPE_REQUEST: u8 = 1;
const TYPE_REPLY: u8 = 2;

/// Request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sent by a prober.
    Request,
    /// Sent back by a responder.
    Reply,
}

/// One decoded probe packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Request or reply.
    pub kind: Kind,
    /// The sender's session (one per burst).
    pub session: u64,
    /// Sequence number within the session.
    pub seq: u32,
    /// Sender's send time, ns since the Unix epoch.
    pub t1_ns: u64,
    /// Responder's receive time (0 in a request).
    pub t2_ns: u64,
    /// Responder's send time (0 in a request).
    pub t3_ns: u64,
    /// Whole packet length, padding included.
    pub len: usize,
}

impl Probe {
    /// A request of `len` bytes.
    pub fn request(session: u64, seq: u32, t1_ns: u64, len: usize) -> Probe {
        Probe {
            kind: Kind::Request,
            session,
            seq,
            t1_ns,
            t2_ns: 0,
            t3_ns: 0,
            len,
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Writes `p` into `buf` (resized to `p.len`, padding zeroed).
pub fn encode(p: &Probe, buf: &mut Vec<u8>) -> Result<(), WireError> {
    if !(HEADER_LEN..=MAX_LEN).contains(&p.len) {
        return Err(WireError::Size {
            size: p.len,
            min: HEADER_LEN,
            max: MAX_LEN,
        });
    }
    buf.clear();
    buf.resize(p.len, 0);
    buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4] = VERSION;
    buf[5] = match p.kind {
        Kind::Request => TYPE_REQUEST,
        Kind::Reply => TYPE_REPLY,
    };
    buf[8..16].copy_from_slice(&p.session.to_be_bytes());
    buf[16..20].copy_from_slice(&p.seq.to_be_bytes());
    buf[24..32].copy_from_slice(&p.t1_ns.to_be_bytes());
    buf[32..40].copy_from_slice(&p.t2_ns.to_be_bytes());
    buf[40..48].copy_from_slice(&p.t3_ns.to_be_bytes());
    Ok(())
}

/// Decodes a probe packet; never panics, whatever the bytes.
pub fn decode(b: &[u8]) -> Result<Probe, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::Short {
            len: b.len(),
            need: HEADER_LEN,
        });
    }
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != MAGIC {
        return Err(WireError::Magic {
            found: magic,
            expected: MAGIC,
        });
    }
    if b[4] != VERSION {
        return Err(WireError::Version(b[4]));
    }
    let kind = match b[5] {
        TYPE_REQUEST => Kind::Request,
        TYPE_REPLY => Kind::Reply,
        t => return Err(WireError::Type(t)),
    };
    Ok(Probe {
        kind,
        session: u64_at(b, 8),
        seq: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        t1_ns: u64_at(b, 24),
        t2_ns: u64_at(b, 32),
        t3_ns: u64_at(b, 40),
        len: b.len(),
    })
}

/// Turns the request in `buf` into its reply in place (type, t2, t3), so the
/// responder answers with the very bytes it received. Fails (and leaves `buf`
/// alone) when `buf` is not a valid request.
pub fn reply_in_place(buf: &mut [u8], t2_ns: u64, t3_ns: u64) -> Result<Probe, WireError> {
    let p = decode(buf)?;
    if p.kind != Kind::Request {
        return Err(WireError::Type(TYPE_REPLY));
    }
    buf[5] = TYPE_REPLY;
    buf[32..40].copy_from_slice(&t2_ns.to_be_bytes());
    buf[40..48].copy_from_slice(&t3_ns.to_be_bytes());
    Ok(Probe {
        kind: Kind::Reply,
        t2_ns,
        t3_ns,
        ..p
    })
}

/// RTT in ns from the four times: (t4 - t1) - (t3 - t2). `None` when the times are
/// inconsistent (a clock stepped, a forged reply): the sample is unusable.
pub fn rtt_ns(t1: u64, t2: u64, t3: u64, t4: u64) -> Option<u64> {
    let total = t4.checked_sub(t1)?;
    // A responder that did not fill its times (0, 0) is taken as zero delay.
    let held = t3.checked_sub(t2)?;
    total.checked_sub(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reply of 48 bytes, annotated field by field.
    const REPLY: [u8; 48] = [
        0x50, 0x46, 0x50, 0x42, // magic "PFPB"
        0x01, // version 1
        0x02, // type: reply
        0x00, 0x00, // flags
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // session 0x0102030405060708
        0x00, 0x00, 0x01, 0x00, // seq 256
        0x00, 0x00, 0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x00, 0x3b, 0x9a, 0xca, 0x00, // t1 1_000_000_000 ns
        0x00, 0x00, 0x00, 0x00, 0x3b, 0x9b, 0x4a, 0xe8, // t2 1_000_033_000 ns
        0x00, 0x00, 0x00, 0x00, 0x3b, 0x9b, 0x71, 0xf8, // t3 1_000_043_000 ns
    ];

    #[test]
    fn decodes_annotated_reply() {
        let p = decode(&REPLY).expect("valid reply");
        assert_eq!(
            p,
            Probe {
                kind: Kind::Reply,
                session: 0x0102_0304_0506_0708,
                seq: 256,
                t1_ns: 1_000_000_000,
                t2_ns: 1_000_033_000,
                t3_ns: 1_000_043_000,
                len: 48,
            }
        );
        // t4 = t1 + 100 µs; the responder held it 10 µs: RTT 90 µs.
        assert_eq!(
            rtt_ns(p.t1_ns, p.t2_ns, p.t3_ns, 1_000_100_000),
            Some(90_000)
        );
    }

    #[test]
    fn encodes_the_same_bytes() {
        let p = decode(&REPLY).expect("valid");
        let mut b = Vec::new();
        encode(&p, &mut b).expect("encode");
        assert_eq!(b, REPLY);
    }

    #[test]
    fn reply_in_place_keeps_padding_and_length() {
        let mut b = Vec::new();
        encode(&Probe::request(7, 3, 100, 1472), &mut b).expect("encode");
        b[100] = 0xaa;
        let r = reply_in_place(&mut b, 150, 160).expect("request");
        assert_eq!((r.kind, r.seq, r.session, r.len), (Kind::Reply, 3, 7, 1472));
        assert_eq!(b.len(), 1472);
        assert_eq!(b[100], 0xaa);
        assert_eq!(decode(&b).expect("reply"), r);
        // A reply is not answered again (no ping-pong between two responders).
        assert_eq!(reply_in_place(&mut b, 1, 2), Err(WireError::Type(2)));
    }

    #[test]
    fn rejects_with_named_field() {
        assert_eq!(
            decode(&REPLY[..47]),
            Err(WireError::Short { len: 47, need: 48 })
        );
        let mut b = REPLY;
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(WireError::Magic { .. })));
        let mut b = REPLY;
        b[4] = 9;
        assert_eq!(decode(&b), Err(WireError::Version(9)));
        let mut b = REPLY;
        b[5] = 0;
        assert_eq!(decode(&b), Err(WireError::Type(0)));
        assert!(encode(&Probe::request(1, 1, 1, 47), &mut Vec::new()).is_err());
        assert!(encode(&Probe::request(1, 1, 1, MAX_LEN + 1), &mut Vec::new()).is_err());
        assert!(
            WireError::Magic {
                found: 0x58465042,
                expected: MAGIC
            }
            .to_string()
            .contains("0x58465042")
        );
    }

    #[test]
    fn inconsistent_times_give_no_rtt() {
        assert_eq!(rtt_ns(10, 0, 0, 5), None); // reply before request
        assert_eq!(rtt_ns(10, 20, 15, 30), None); // responder sent before it received
        assert_eq!(rtt_ns(10, 11, 40, 30), None); // responder held longer than the RTT
        assert_eq!(rtt_ns(10, 0, 0, 30), Some(20)); // responder gave no times
    }

    proptest! {
        #[test]
        fn round_trip(session: u64, seq: u32, t1: u64, t2: u64, t3: u64,
                      len in HEADER_LEN..2000usize, reply: bool) {
            let p = Probe { kind: if reply { Kind::Reply } else { Kind::Request },
                            session, seq, t1_ns: t1, t2_ns: t2, t3_ns: t3, len };
            let mut b = Vec::new();
            encode(&p, &mut b).expect("in range");
            prop_assert_eq!(b.len(), len);
            prop_assert_eq!(decode(&b), Ok(p));
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
            let mut c = b.clone();
            let _ = reply_in_place(&mut c, 1, 2);
        }

        #[test]
        fn never_panics_near_valid(mut b in proptest::collection::vec(any::<u8>(), 48..120),
                                   kind in 0u8..4) {
            b[..6].copy_from_slice(&[0x50, 0x46, 0x50, 0x42, 1, kind]);
            let r = decode(&b);
            prop_assert_eq!(r.is_ok(), kind == 1 || kind == 2);
        }
    }
}
