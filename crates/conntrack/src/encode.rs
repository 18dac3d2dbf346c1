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
    let mut out = Vec::with_capacity(20);
    Header {
        len: (nl::NLMSG_HDRLEN + nl::NFGEN_HDRLEN) as u32,
        kind: nl::NFNL_SUBSYS_CTNETLINK << 8 | nl::IPCTNL_MSG_CT_GET,
        flags: nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
        seq,
        pid: 0,
    }
    .write(&mut out);
    nfgen(&mut out, AF_UNSPEC);
    out
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
