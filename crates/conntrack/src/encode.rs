//! The messages podflow sends: a table dump request, and entry inserts (IPCTNL_MSG_CT_NEW)
//! that the tests and the benchmark use to fill a namespace's table quickly, thousands of
//! entries to one `send` (`conntrack -I` costs a process per entry).

use std::net::IpAddr;

use podflow_model::{Protocol, Tuple};

use crate::nl::{self, Header};

/// `AF_UNSPEC`: a dump of every family.
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn nfgen(out: &mut Vec<u8>, family: u8) {
    out.extend_from_slice(&[family, 0, 0, 0]);
}

/// A request to dump the whole table (IPv4 and IPv6).
pub fn dump_request(seq: u32) -> Vec<u8> {
    dump_request_filtered(seq, &DumpFilter::default())
}

/// Which entries a dump asks the kernel for: the kernel still walks every entry, but
/// builds messages (its main cost, ≈ 2.5 µs per entry) only for those that match. The
/// same test applies to events in user space ([`DumpFilter::matches`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Only IPv4 (`Some(false)`) or only IPv6 (`Some(true)`) entries.
    pub ipv6: Option<bool>,
    /// Only entries whose mark, masked with `.1`, equals `.0` (`CTA_MARK` +
    /// `CTA_MARK_MASK`); e.g. `(0, 0x1)` skips entries an nftables rule marked with bit 0.
    pub mark: Option<(u32, u32)>,
    /// Only entries of this conntrack zone (`CTA_ZONE`; the kernel filters dumps by zone
    /// from 6.8 on, and zone 0 means no filter to it).
    pub zone: Option<u16>,
}

impl DumpFilter {
    /// Whether the filter passes everything.
    pub fn is_empty(&self) -> bool {
        *self == DumpFilter::default()
    }

    /// The same test in user space, for events (the kernel does not filter multicast).
    pub fn matches(&self, ipv6: bool, mark: u32, zone: u16) -> bool {
        self.ipv6.is_none_or(|v| v == ipv6)
            && self.mark.is_none_or(|(v, m)| mark & m == v)
            && self.zone.is_none_or(|z| z == 0 || z == zone)
    }
}

/// A request to dump the entries that pass `f`.
pub fn dump_request_filtered(seq: u32, f: &DumpFilter) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    Header {
        len: 0,
        kind: nl::NFNL_SUBSYS_CTNETLINK << 8 | nl::IPCTNL_MSG_CT_GET,
        flags: nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
        seq,
        pid: 0,
    }
    .write(&mut out);
    nfgen(
        &mut out,
        match f.ipv6 {
            None => AF_UNSPEC,
            Some(false) => AF_INET,
            Some(true) => AF_INET6,
        },
    );
    if let Some((value, mask)) = f.mark {
        nl::put_attr(&mut out, 8, &value.to_be_bytes()); // CTA_MARK
        nl::put_attr(&mut out, 21, &mask.to_be_bytes()); // CTA_MARK_MASK
    }
    if let Some(zone) = f.zone.filter(|z| *z != 0) {
        nl::put_attr(&mut out, 18, &zone.to_be_bytes()); // CTA_ZONE
    }
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// Appends an IPCTNL_MSG_CT_DELETE message removing the entry with original tuple
/// `orig` (the kernel sends its DESTROY event with the final counters).
pub fn delete(out: &mut Vec<u8>, seq: u32, proto: Protocol, orig: &Tuple) {
    let start = out.len();
    Header {
        len: 0,
        kind: nl::NFNL_SUBSYS_CTNETLINK << 8 | nl::IPCTNL_MSG_CT_DELETE,
        flags: nl::NLM_F_REQUEST,
        seq,
        pid: 0,
    }
    .write(out);
    nfgen(
        out,
        if orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        },
    );
    put_tuple(out, 1, proto, orig);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// An entry to insert.
#[derive(Clone, Copy, Debug)]
pub struct Insert {
    /// Protocol (TCP entries are inserted ESTABLISHED).
    pub proto: Protocol,
    /// Original tuple.
    pub orig: Tuple,
    /// Reply tuple.
    pub reply: Tuple,
    /// Timeout in seconds.
    pub timeout_s: u32,
    /// Connection mark.
    pub mark: u32,
}

fn put_tuple(out: &mut Vec<u8>, kind: u16, proto: Protocol, t: &Tuple) {
    let outer = nl::begin_nested(out, kind);
    let ip = nl::begin_nested(out, 1);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            nl::put_attr(out, 1, &s.octets());
            nl::put_attr(out, 2, &d.octets());
        }
        (s, d) => {
            nl::put_attr(out, 3, &v6(s).octets());
            nl::put_attr(out, 4, &v6(d).octets());
        }
    }
    nl::end_nested(out, ip);
    let p = nl::begin_nested(out, 2);
    nl::put_attr(out, 1, &[proto.0]);
    nl::put_attr(out, 2, &t.src_port.to_be_bytes());
    nl::put_attr(out, 3, &t.dst_port.to_be_bytes());
    nl::end_nested(out, p);
    nl::end_nested(out, outer);
}

fn v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Appends an IPCTNL_MSG_CT_NEW message creating `e` (no ack requested: the kernel still
/// answers errors).
pub fn insert(out: &mut Vec<u8>, seq: u32, e: &Insert) {
    let start = out.len();
    Header {
        len: 0,
        kind: nl::NFNL_SUBSYS_CTNETLINK << 8 | nl::IPCTNL_MSG_CT_NEW,
        flags: nl::NLM_F_REQUEST | nl::NLM_F_CREATE | nl::NLM_F_EXCL,
        seq,
        pid: 0,
    }
    .write(out);
    nfgen(
        out,
        if e.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        },
    );
    put_tuple(out, 1, e.proto, &e.orig);
    put_tuple(out, 2, e.proto, &e.reply);
    // IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED: without CONFIRMED the kernel says EBUSY.
    nl::put_attr(out, 3, &0x0eu32.to_be_bytes());
    nl::put_attr(out, 7, &e.timeout_s.to_be_bytes());
    nl::put_attr(out, 8, &e.mark.to_be_bytes());
    if e.proto == Protocol::TCP {
        let pi = nl::begin_nested(out, 4);
        let tcp = nl::begin_nested(out, 1);
        nl::put_attr(out, 1, &[3]); // TCP_CONNTRACK_ESTABLISHED
        nl::end_nested(out, tcp);
        nl::end_nested(out, pi);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeStats, decode_entry};
    use crate::nl::Messages;

    #[test]
    fn dump_request_bytes() {
        let m = dump_request(7);
        #[rustfmt::skip]
        let want = [
            20, 0, 0, 0,        // len
            0x01, 0x01,         // CTNETLINK << 8 | CT_GET
            0x01, 0x03,         // REQUEST | DUMP
            7, 0, 0, 0,         // seq
            0, 0, 0, 0,         // pid
            0, 0, 0, 0,         // AF_UNSPEC, v0, res_id
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn filtered_dump_request_bytes() {
        let m = dump_request_filtered(
            7,
            &DumpFilter {
                ipv6: Some(false),
                mark: Some((0, 1)),
                zone: Some(0),
            },
        );
        #[rustfmt::skip]
        let want = [
            36, 0, 0, 0, 0x01, 0x01, 0x01, 0x03, 7, 0, 0, 0, 0, 0, 0, 0, // header, len 36
            2, 0, 0, 0,                     // AF_INET: IPv4 only
            8, 0, 8, 0, 0, 0, 0, 0,         // CTA_MARK 0
            8, 0, 21, 0, 0, 0, 0, 1,        // CTA_MARK_MASK 1 (zone 0: no attribute)
        ];
        assert_eq!(m, want);
        let f = DumpFilter {
            mark: Some((0, 1)),
            ..Default::default()
        };
        assert!(f.matches(true, 2, 0) && !f.matches(false, 3, 0));
        assert!(DumpFilter::default().is_empty());
    }

    #[test]
    fn inserted_entry_decodes_back() {
        let t = |s: &str, sp, d: &str, dp| Tuple {
            src: s.parse().expect("ip"),
            dst: d.parse().expect("ip"),
            src_port: sp,
            dst_port: dp,
        };
        for (orig, reply) in [
            (
                t("10.1.0.1", 1234, "10.1.0.2", 80),
                t("10.1.0.2", 80, "10.1.0.1", 1234),
            ),
            (
                t("fd00::1", 1234, "fd00::2", 443),
                t("fd00::2", 443, "fd00::1", 1234),
            ),
        ] {
            let mut buf = Vec::new();
            insert(
                &mut buf,
                1,
                &Insert {
                    proto: Protocol::TCP,
                    orig,
                    reply,
                    timeout_s: 60,
                    mark: 9,
                },
            );
            let (_, p) = Messages::new(&buf).next().expect("one").expect("valid");
            let e = decode_entry(p, &mut DecodeStats::default()).expect("decodes");
            assert_eq!((e.orig, e.reply, e.mark, e.tcp_state), (orig, reply, 9, 3));
        }
    }
}
