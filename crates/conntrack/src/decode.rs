//! Pure decoding of ctnetlink messages into [`CtEntry`].
//!
//! Every CTA_* attribute podflow needs is decoded here, including those that generic
//! netlink crates leave raw: counters (9/10), id (12), zone (18), timestamps (20).
//! Values are big-endian. Unknown attributes are skipped and counted, never fatal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podflow_model::{Counters, Observation, Protocol, Tuple};

use crate::nl::{self, Attrs, FrameError, Header};

// Top-level attributes (linux/netfilter/nfnetlink_conntrack.h, enum ctattr_type).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TIMESTAMP: u16 = 20;
/// When the kernel generated this event (CLOCK_REALTIME ns); newer kernels add it to
/// events when `nf_conntrack_timestamp` is on.
const CTA_TIMESTAMP_EVENT: u16 = 27;
/// Highest top-level attribute podflow knows of; others are counted as unknown.
const CTA_MAX_KNOWN: u16 = CTA_TIMESTAMP_EVENT;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
// enum ctattr_counters
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;
// enum ctattr_tstamp
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;
// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// `IPS_SEEN_REPLY`: traffic was seen in both directions.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`.
pub const IPS_ASSURED: u32 = 1 << 2;
/// `IPS_CONFIRMED`: the entry is in the table.
pub const IPS_CONFIRMED: u32 = 1 << 3;
/// `IPS_SRC_NAT`.
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `IPS_DST_NAT`.
pub const IPS_DST_NAT: u32 = 1 << 5;

/// What a ctnetlink message says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtEvent {
    /// A dump reply: the entry as it is now.
    Dump,
    /// A NEW event: the connection was just confirmed (no counters, no timestamps).
    New,
    /// An UPDATE event: the status or protocol state changed (e.g. the first reply
    /// packet set `IPS_SEEN_REPLY`); no counters, no start/stop timestamps.
    Update,
    /// A DESTROY event: final counters and the stop time.
    Destroy,
}

/// One conntrack entry as decoded from a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// IP protocol of the tuples.
    pub proto: Protocol,
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction.
    pub reply: Tuple,
    /// Counters of the original direction (absolute, since the connection started).
    pub counters_orig: Counters,
    /// Counters of the reply direction.
    pub counters_reply: Counters,
    /// Whether the message carried counters (`nf_conntrack_acct` on).
    pub has_counters: bool,
    /// `IPS_*` status bits.
    pub status: u32,
    /// TCP state (`TCP_CONNTRACK_*`), 0 when absent.
    pub tcp_state: u8,
    /// Connection mark.
    pub mark: u32,
    /// Conntrack zone.
    pub zone: u16,
    /// Kernel conntrack id.
    pub id: u32,
    /// Start time, ns since the Unix epoch (0 = unknown).
    pub start_ns: u64,
    /// Stop time, ns since the Unix epoch (0 = open or unknown).
    pub stop_ns: u64,
    /// Events only: when the kernel generated the event, ns since the Unix epoch
    /// (`CTA_TIMESTAMP_EVENT`; 0 = absent: older kernel or timestamps off).
    pub event_ns: u64,
}

impl CtEntry {
    /// An observation carrying the tuples of this entry with the given deltas.
    pub fn observation(
        &self,
        delta_orig: Counters,
        delta_reply: Counters,
        opened: bool,
        closed: bool,
    ) -> Observation {
        Observation {
            proto: self.proto,
            orig: self.orig,
            reply: self.reply,
            delta_orig,
            delta_reply,
            opened,
            closed,
            start_ns: self.start_ns,
            stop_ns: self.stop_ns,
            conn_id: self.id,
            zone: self.zone,
            mark: self.mark,
            first_reply_ns: 0,
        }
    }
}

/// Counts of what decoding skipped; never reset, read by the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Top-level attributes podflow does not know (newer kernels); skipped.
    pub unknown_attributes: u64,
}

/// Why a ctnetlink message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Netlink framing was broken.
    #[error("malformed netlink framing: {0:?}")]
    Frame(FrameError),
    /// The message is shorter than the nfgenmsg header.
    #[error("ctnetlink message of {len} bytes is shorter than its 4-byte nfgenmsg header")]
    Short {
        /// Payload length.
        len: usize,
    },
    /// An attribute had the wrong size for its type.
    #[error("ctnetlink attribute {what} has {len} bytes, expected {expected}")]
    BadValue {
        /// Which attribute (e.g. `CTA_IP_V4_SRC`).
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A required attribute was absent.
    #[error("ctnetlink message without {0}")]
    Missing(&'static str),
    /// The message is not a ctnetlink message podflow decodes.
    #[error("unexpected netlink message type {kind:#06x}")]
    UnexpectedType {
        /// The header's type.
        kind: u16,
    },
}

impl From<FrameError> for DecodeError {
    fn from(e: FrameError) -> Self {
        DecodeError::Frame(e)
    }
}

#[inline]
fn be16(v: &[u8], what: &'static str) -> Result<u16, DecodeError> {
    match v {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError::BadValue {
            what,
            len: v.len(),
            expected: 2,
        }),
    }
}

#[inline]
fn be32(v: &[u8], what: &'static str) -> Result<u32, DecodeError> {
    match v {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(DecodeError::BadValue {
            what,
            len: v.len(),
            expected: 4,
        }),
    }
}

#[inline]
fn be64(v: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    match v.first_chunk::<8>() {
        Some(b) => Ok(u64::from_be_bytes(*b)),
        None => Err(DecodeError::BadValue {
            what,
            len: v.len(),
            expected: 8,
        }),
    }
}

#[inline]
fn u8v(v: &[u8], what: &'static str) -> Result<u8, DecodeError> {
    v.first().copied().ok_or(DecodeError::BadValue {
        what,
        len: 0,
        expected: 1,
    })
}

fn ipv4(v: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    match v.first_chunk::<4>() {
        Some(b) if v.len() == 4 => Ok(IpAddr::V4(Ipv4Addr::from(*b))),
        _ => Err(DecodeError::BadValue {
            what,
            len: v.len(),
            expected: 4,
        }),
    }
}

fn ipv6(v: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    match v.first_chunk::<16>() {
        Some(b) if v.len() == 16 => Ok(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => Err(DecodeError::BadValue {
            what,
            len: v.len(),
            expected: 16,
        }),
    }
}

/// Decodes a CTA_TUPLE_* nest into the tuple and its protocol.
fn tuple(v: &[u8]) -> Result<(Tuple, Protocol), DecodeError> {
    let mut t = Tuple::default();
    let mut proto = None;
    for a in Attrs::new(v) {
        let (kind, val) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in Attrs::new(val) {
                    let (kind, val) = a?;
                    match kind {
                        CTA_IP_V4_SRC => t.src = ipv4(val, "CTA_IP_V4_SRC")?,
                        CTA_IP_V4_DST => t.dst = ipv4(val, "CTA_IP_V4_DST")?,
                        CTA_IP_V6_SRC => t.src = ipv6(val, "CTA_IP_V6_SRC")?,
                        CTA_IP_V6_DST => t.dst = ipv6(val, "CTA_IP_V6_DST")?,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attrs::new(val) {
                    let (kind, val) = a?;
                    match kind {
                        CTA_PROTO_NUM => proto = Some(Protocol(u8v(val, "CTA_PROTO_NUM")?)),
                        CTA_PROTO_SRC_PORT => t.src_port = be16(val, "CTA_PROTO_SRC_PORT")?,
                        CTA_PROTO_DST_PORT => t.dst_port = be16(val, "CTA_PROTO_DST_PORT")?,
                        // ICMP is keyed by id (as the source "port") and type/code.
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.src_port = be16(val, "CTA_PROTO_ICMP_ID")?
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.dst_port = (t.dst_port & 0x00ff)
                                | (u16::from(u8v(val, "CTA_PROTO_ICMP_TYPE")?) << 8)
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.dst_port =
                                (t.dst_port & 0xff00) | u16::from(u8v(val, "CTA_PROTO_ICMP_CODE")?)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok((t, proto.ok_or(DecodeError::Missing("CTA_PROTO_NUM"))?))
}

fn counters(v: &[u8]) -> Result<Counters, DecodeError> {
    let mut c = Counters::default();
    for a in Attrs::new(v) {
        let (kind, val) = a?;
        match kind {
            CTA_COUNTERS_PACKETS => c.packets = be64(val, "CTA_COUNTERS_PACKETS")?,
            CTA_COUNTERS_BYTES => c.bytes = be64(val, "CTA_COUNTERS_BYTES")?,
            CTA_COUNTERS32_PACKETS => c.packets = u64::from(be32(val, "CTA_COUNTERS32_PACKETS")?),
            CTA_COUNTERS32_BYTES => c.bytes = u64::from(be32(val, "CTA_COUNTERS32_BYTES")?),
            _ => {}
        }
    }
    Ok(c)
}

/// What kind of ctnetlink message a header announces, or `None` for non-ctnetlink types.
#[inline]
pub fn event_of(h: &Header) -> Option<CtEvent> {
    if h.kind >> 8 != nl::NFNL_SUBSYS_CTNETLINK {
        return None;
    }
    match h.kind & 0xff {
        nl::IPCTNL_MSG_CT_NEW if h.flags & nl::NLM_F_MULTI != 0 => Some(CtEvent::Dump),
        nl::IPCTNL_MSG_CT_NEW if h.flags & (nl::NLM_F_CREATE | nl::NLM_F_EXCL) != 0 => {
            Some(CtEvent::New)
        }
        nl::IPCTNL_MSG_CT_NEW => Some(CtEvent::Update),
        nl::IPCTNL_MSG_CT_DELETE => Some(CtEvent::Destroy),
        _ => None,
    }
}

/// Decodes the payload of one ctnetlink message (after the netlink header).
#[inline]
pub fn decode_entry(payload: &[u8], stats: &mut DecodeStats) -> Result<CtEntry, DecodeError> {
    let attrs = payload
        .get(nl::NFGEN_HDRLEN..)
        .ok_or(DecodeError::Short { len: payload.len() })?;
    let mut e = CtEntry::default();
    let mut have_orig = false;
    let mut have_reply = false;
    for a in Attrs::new(attrs) {
        let (kind, val) = a?;
        match kind {
            CTA_TUPLE_ORIG => {
                (e.orig, e.proto) = tuple(val)?;
                have_orig = true;
            }
            CTA_TUPLE_REPLY => {
                e.reply = tuple(val)?.0;
                have_reply = true;
            }
            CTA_STATUS => e.status = be32(val, "CTA_STATUS")?,
            CTA_PROTOINFO => {
                for a in Attrs::new(val) {
                    let (kind, val) = a?;
                    if kind == CTA_PROTOINFO_TCP {
                        for a in Attrs::new(val) {
                            let (kind, val) = a?;
                            if kind == CTA_PROTOINFO_TCP_STATE {
                                e.tcp_state = u8v(val, "CTA_PROTOINFO_TCP_STATE")?;
                            }
                        }
                    }
                }
            }
            CTA_MARK => e.mark = be32(val, "CTA_MARK")?,
            CTA_COUNTERS_ORIG => {
                e.counters_orig = counters(val)?;
                e.has_counters = true;
            }
            CTA_COUNTERS_REPLY => {
                e.counters_reply = counters(val)?;
                e.has_counters = true;
            }
            CTA_ID => e.id = be32(val, "CTA_ID")?,
            CTA_ZONE => e.zone = be16(val, "CTA_ZONE")?,
            CTA_TIMESTAMP => {
                for a in Attrs::new(val) {
                    let (kind, val) = a?;
                    match kind {
                        CTA_TIMESTAMP_START => e.start_ns = be64(val, "CTA_TIMESTAMP_START")?,
                        CTA_TIMESTAMP_STOP => e.stop_ns = be64(val, "CTA_TIMESTAMP_STOP")?,
                        _ => {}
                    }
                }
            }
            CTA_TIMESTAMP_EVENT => e.event_ns = be64(val, "CTA_TIMESTAMP_EVENT")?,
            k if k > CTA_MAX_KNOWN => stats.unknown_attributes += 1,
            _ => {}
        }
    }
    if !have_orig {
        return Err(DecodeError::Missing("CTA_TUPLE_ORIG"));
    }
    if !have_reply {
        return Err(DecodeError::Missing("CTA_TUPLE_REPLY"));
    }
    Ok(e)
}

/// Reads the errno of an `NLMSG_ERROR` payload (0 = an ack).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    payload.first_chunk::<4>().map(|b| i32::from_ne_bytes(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::Messages;

    /// A DESTROY event for TCP 10.0.0.1:40000 -> 10.0.0.2:80, built by hand; every
    /// field annotated. Host byte order is little-endian for netlink headers.
    #[rustfmt::skip]
    const DESTROY_V4: &[u8] = &[
        // nlmsghdr
        0xc4, 0x00, 0x00, 0x00,             // len = 196
        0x02, 0x01,                         // type = CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
        0x00, 0x00,                         // flags
        0x00, 0x00, 0x00, 0x00,             // seq
        0x00, 0x00, 0x00, 0x00,             // pid (kernel)
        // nfgenmsg
        0x02, 0x00, 0x00, 0x00,             // AF_INET, version 0, res_id 0
        // CTA_TUPLE_ORIG (nested), len 52
        0x34, 0x00, 0x01, 0x80,
        //   CTA_TUPLE_IP (nested), len 20
        0x14, 0x00, 0x01, 0x80,
        0x08, 0x00, 0x01, 0x00, 10, 0, 0, 1,    // CTA_IP_V4_SRC 10.0.0.1
        0x08, 0x00, 0x02, 0x00, 10, 0, 0, 2,    // CTA_IP_V4_DST 10.0.0.2
        //   CTA_TUPLE_PROTO (nested), len 28
        0x1c, 0x00, 0x02, 0x80,
        0x05, 0x00, 0x01, 0x00, 6, 0, 0, 0,     // CTA_PROTO_NUM = TCP, 3 pad
        0x06, 0x00, 0x02, 0x00, 0x9c, 0x40, 0, 0, // CTA_PROTO_SRC_PORT 40000
        0x06, 0x00, 0x03, 0x00, 0x00, 0x50, 0, 0, // CTA_PROTO_DST_PORT 80
        // CTA_TUPLE_REPLY (nested), len 52
        0x34, 0x00, 0x02, 0x80,
        0x14, 0x00, 0x01, 0x80,
        0x08, 0x00, 0x01, 0x00, 10, 0, 0, 2,    // src 10.0.0.2
        0x08, 0x00, 0x02, 0x00, 10, 0, 0, 1,    // dst 10.0.0.1
        0x1c, 0x00, 0x02, 0x80,
        0x05, 0x00, 0x01, 0x00, 6, 0, 0, 0,
        0x06, 0x00, 0x02, 0x00, 0x00, 0x50, 0, 0, // sport 80
        0x06, 0x00, 0x03, 0x00, 0x9c, 0x40, 0, 0, // dport 40000
        // CTA_ID = 0xdeadbeef
        0x08, 0x00, 0x0c, 0x00, 0xde, 0xad, 0xbe, 0xef,
        // CTA_COUNTERS_ORIG (nested), len 28
        0x1c, 0x00, 0x09, 0x80,
        0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 7,        // packets 7
        0x0c, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0x01, 0x2c,  // bytes 300
        // CTA_COUNTERS_REPLY (nested), len 28
        0x1c, 0x00, 0x0a, 0x80,
        0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 5,        // packets 5
        0x0c, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0x27, 0x10,  // bytes 10000
        // an attribute from the future (type 99): skipped and counted
        0x08, 0x00, 0x63, 0x00, 1, 2, 3, 4,
    ];

    #[test]
    fn decodes_annotated_destroy_event() {
        let (h, payload) = Messages::new(DESTROY_V4)
            .next()
            .expect("one")
            .expect("valid");
        assert_eq!(event_of(&h), Some(CtEvent::Destroy));
        let mut stats = DecodeStats::default();
        let e = decode_entry(payload, &mut stats).expect("decodes");
        assert_eq!(e.proto, Protocol::TCP);
        assert_eq!(e.orig.src, "10.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!((e.orig.src_port, e.orig.dst_port), (40000, 80));
        assert_eq!((e.reply.src_port, e.reply.dst_port), (80, 40000));
        assert_eq!(e.id, 0xdeadbeef);
        assert_eq!(
            e.counters_orig,
            Counters {
                bytes: 300,
                packets: 7
            }
        );
        assert_eq!(
            e.counters_reply,
            Counters {
                bytes: 10000,
                packets: 5
            }
        );
        assert!(e.has_counters);
        assert_eq!(stats.unknown_attributes, 1);
    }

    /// A dump reply for an ICMPv6 echo fd00::1 -> fd00::2, id 0x1234, mark 5, zone 2,
    /// timestamp start only.
    #[rustfmt::skip]
    const DUMP_ICMPV6: &[u8] = &[
        // nlmsghdr: len 188, type CT_NEW, flags NLM_F_MULTI, seq 9
        0xbc, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 9, 0, 0, 0, 0, 0, 0, 0,
        0x0a, 0x00, 0x00, 0x00,                 // nfgenmsg: AF_INET6
        // CTA_TUPLE_ORIG (nested), len 68
        0x44, 0x00, 0x01, 0x80,
        0x2c, 0x00, 0x01, 0x80,                 //   CTA_TUPLE_IP, len 44
        0x14, 0x00, 0x03, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // V6_SRC fd00::1
        0x14, 0x00, 0x04, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // V6_DST fd00::2
        0x14, 0x00, 0x02, 0x80,                 //   CTA_TUPLE_PROTO, len 20
        0x05, 0x00, 0x01, 0x00, 58, 0, 0, 0,    //     PROTO_NUM = ICMPv6
        0x06, 0x00, 0x07, 0x00, 0x12, 0x34, 0, 0, //   ICMPV6_ID = 0x1234
        // CTA_TUPLE_REPLY (nested), len 68
        0x44, 0x00, 0x02, 0x80,
        0x2c, 0x00, 0x01, 0x80,
        0x14, 0x00, 0x03, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        0x14, 0x00, 0x04, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0x14, 0x00, 0x02, 0x80,
        0x05, 0x00, 0x01, 0x00, 58, 0, 0, 0,
        0x05, 0x00, 0x08, 0x00, 129, 0, 0, 0,   //     ICMPV6_TYPE = 129 (echo reply)
        // CTA_MARK = 5, CTA_ZONE = 2 (+2 pad)
        0x08, 0x00, 0x08, 0x00, 0, 0, 0, 5,
        0x06, 0x00, 0x12, 0x00, 0, 2, 0, 0,
        // CTA_TIMESTAMP (nested), len 16: START = 1_000_000_000
        0x10, 0x00, 0x14, 0x80,
        0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0x3b, 0x9a, 0xca, 0x00,
    ];

    #[test]
    fn decodes_annotated_icmpv6_dump_entry() {
        assert_eq!(DUMP_ICMPV6.len(), 188);
        let (h, payload) = Messages::new(DUMP_ICMPV6)
            .next()
            .expect("one")
            .expect("valid");
        assert_eq!(event_of(&h), Some(CtEvent::Dump));
        let e = decode_entry(payload, &mut DecodeStats::default()).expect("decodes");
        assert_eq!(e.proto, Protocol::ICMPV6);
        assert_eq!(e.orig.src, "fd00::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(e.orig.src_port, 0x1234);
        assert_eq!(e.reply.dst_port, 129 << 8);
        assert_eq!(
            (e.mark, e.zone, e.start_ns, e.stop_ns),
            (5, 2, 1_000_000_000, 0)
        );
        assert!(!e.has_counters);
    }

    /// An UPDATE event captured on this kernel (6.18): UDP 10.98.0.1:56604 ->
    /// 10.98.0.2:7000, sent when the first reply datagram (150 ms after the request) set
    /// `IPS_SEEN_REPLY`. No counters, no CTA_TIMESTAMP: only status, timeout and the
    /// event's own timestamp.
    #[rustfmt::skip]
    const UPDATE_UDP4: &[u8] = &[
        // nlmsghdr: len 160, type 0x0100 (CTNETLINK << 8 | CT_NEW), flags 0 (no
        // NLM_F_CREATE/EXCL: an UPDATE, not a NEW), seq 0, pid 0 (the kernel)
        0xa0, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
        0x02, 0x00, 0x00, 0x00,                 // nfgenmsg: AF_INET, v0, res_id 0
        // CTA_TUPLE_ORIG (nested), len 52
        0x34, 0x00, 0x01, 0x80,
        0x14, 0x00, 0x01, 0x80,                 //   CTA_TUPLE_IP, len 20
        0x08, 0x00, 0x01, 0x00, 10, 98, 0, 1,   //     V4_SRC 10.98.0.1
        0x08, 0x00, 0x02, 0x00, 10, 98, 0, 2,   //     V4_DST 10.98.0.2
        0x1c, 0x00, 0x02, 0x80,                 //   CTA_TUPLE_PROTO, len 28
        0x05, 0x00, 0x01, 0x00, 17, 0, 0, 0,    //     PROTO_NUM = UDP
        0x06, 0x00, 0x02, 0x00, 0xdd, 0x1c, 0, 0, //   SRC_PORT 56604
        0x06, 0x00, 0x03, 0x00, 0x1b, 0x58, 0, 0, //   DST_PORT 7000
        // CTA_TUPLE_REPLY (nested), len 52
        0x34, 0x00, 0x02, 0x80,
        0x14, 0x00, 0x01, 0x80,
        0x08, 0x00, 0x01, 0x00, 10, 98, 0, 2,   //     V4_SRC 10.98.0.2
        0x08, 0x00, 0x02, 0x00, 10, 98, 0, 1,   //     V4_DST 10.98.0.1
        0x1c, 0x00, 0x02, 0x80,
        0x05, 0x00, 0x01, 0x00, 17, 0, 0, 0,
        0x06, 0x00, 0x02, 0x00, 0x1b, 0x58, 0, 0, //   SRC_PORT 7000
        0x06, 0x00, 0x03, 0x00, 0xdd, 0x1c, 0, 0, //   DST_PORT 56604
        0x08, 0x00, 0x0c, 0x00, 0xa7, 0x24, 0x7b, 0xcc, // CTA_ID 2804186060
        0x08, 0x00, 0x03, 0x00, 0, 0, 0, 0x0a,  // CTA_STATUS = CONFIRMED | SEEN_REPLY
        0x08, 0x00, 0x07, 0x00, 0, 0, 0, 0x1e,  // CTA_TIMEOUT = 30 s
        // CTA_TIMESTAMP_EVENT (not nested), len 12: 1795626182120146389 ns
        0x0c, 0x00, 0x1b, 0x00, 0x18, 0xeb, 0x58, 0x7f, 0xbe, 0xa9, 0x85, 0xd5,
    ];

    #[test]
    fn decodes_captured_update_event_of_a_first_reply() {
        assert_eq!(UPDATE_UDP4.len(), 160);
        let (h, payload) = Messages::new(UPDATE_UDP4)
            .next()
            .expect("one")
            .expect("valid");
        assert_eq!(event_of(&h), Some(CtEvent::Update));
        let mut stats = DecodeStats::default();
        let e = decode_entry(payload, &mut stats).expect("decodes");
        assert_eq!(e.proto, Protocol::UDP);
        assert_eq!((e.orig.src_port, e.orig.dst_port), (56604, 7000));
        assert_eq!(e.reply.src, "10.98.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(e.id, 2_804_186_060);
        assert_eq!(e.status, IPS_CONFIRMED | IPS_SEEN_REPLY);
        assert_eq!(e.event_ns, 1_795_626_182_120_146_389);
        assert_eq!(
            (e.start_ns, e.stop_ns),
            (0, 0),
            "UPDATEs carry no CTA_TIMESTAMP"
        );
        assert!(!e.has_counters);
        assert_eq!(stats.unknown_attributes, 0, "CTA_TIMESTAMP_EVENT is known");
        // The same message with NLM_F_CREATE | NLM_F_EXCL is the connection's NEW event.
        let mut new = UPDATE_UDP4.to_vec();
        new[6..8].copy_from_slice(&(nl::NLM_F_CREATE | nl::NLM_F_EXCL).to_ne_bytes());
        let (h, _) = Messages::new(&new).next().expect("one").expect("valid");
        assert_eq!(event_of(&h), Some(CtEvent::New));
    }

    #[test]
    fn truncated_inputs_are_errors_not_panics() {
        for cut in 0..DESTROY_V4.len() {
            let mut stats = DecodeStats::default();
            for (_, p) in Messages::new(&DESTROY_V4[..cut]).flatten() {
                let _ = decode_entry(p, &mut stats);
            }
        }
    }

    #[test]
    fn missing_reply_tuple_is_named() {
        let payload = &DESTROY_V4[16..16 + 4 + 52];
        let err = decode_entry(payload, &mut DecodeStats::default()).expect_err("no reply");
        assert_eq!(err, DecodeError::Missing("CTA_TUPLE_REPLY"));
        assert_eq!(err.to_string(), "ctnetlink message without CTA_TUPLE_REPLY");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut stats = DecodeStats::default();
            for (_, p) in Messages::new(&bytes).flatten() {
                let _ = decode_entry(p, &mut stats);
            }
            let _ = decode_entry(&bytes, &mut stats);
        }

        #[test]
        fn mutated_message_never_panics(pos in 0usize..196, val in proptest::num::u8::ANY) {
            let mut m = DESTROY_V4.to_vec();
            m[pos] = val;
            let mut stats = DecodeStats::default();
            for (_, p) in Messages::new(&m).flatten() {
                let _ = decode_entry(p, &mut stats);
            }
        }
    }
}
