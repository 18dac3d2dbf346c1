//! Helpers shared by the integration tests: a small pcap reader and the `.nfdump`
//! expectation files of tests/data (see its README).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// tests/data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The real exporters' captures in tests/data (see its README): each `<name>.pcap`
/// has a `<name>.nfdump` beside it.
pub const CAPTURES: &[&str] = &[
    "softflowd_v5",
    "softflowd_v9",
    "softflowd_ipfix",
    "pmacctd_v5",
    "pmacctd_v9",
    "pmacctd_ipfix",
    "pmacctd_sampled_v5",
    "pmacctd_sampled_v9",
    "pmacctd_sampled_ipfix",
    "fprobe_v5",
];

/// The datagrams of tests/data/`<name>.pcap`.
pub fn read_capture(name: &str) -> Vec<Datagram> {
    read_pcap(&data_dir().join(format!("{name}.pcap")))
}

/// One UDP datagram out of a capture: when, from where, and its payload.
pub struct Datagram {
    pub ts_secs: u64,
    pub src: SocketAddr,
    pub payload: Vec<u8>,
}

fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

/// The UDP payload of an IPv4/IPv6 packet starting at `ip`, with its source.
fn udp(ip: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let (src, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            if *ip.get(9)? != 17 {
                return None;
            }
            let a: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(a)),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        6 => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let a: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(a)), ip.get(40..)?)
        }
        _ => return None,
    };
    let len = usize::from(be16(l4, 4)?);
    Some((SocketAddr::new(src, be16(l4, 0)?), l4.get(8..len)?.to_vec()))
}

/// Reads a classic pcap (either byte order, µs or ns) of Ethernet, Linux cooked
/// (v1, v2), BSD loopback or raw IP frames; keeps the UDP datagrams.
pub fn read_pcap(path: &Path) -> Vec<Datagram> {
    let b = std::fs::read(path).expect("read pcap");
    let magic = b.get(..4).expect("pcap header");
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{}: not a classic pcap file", path.display()),
    };
    let u32_at = |o: usize| {
        let v: [u8; 4] = b[o..o + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let linktype = u32_at(20);
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let ts = u64::from(u32_at(o));
        let incl = u32_at(o + 8) as usize;
        let frame = &b[o + 16..(o + 16 + incl).min(b.len())];
        o += 16 + incl;
        let ip = match linktype {
            1 => {
                // Ethernet, possibly one 802.1Q tag.
                let (et, at) = match be16(frame, 12) {
                    Some(0x8100) => (be16(frame, 16), 18),
                    et => (et, 14),
                };
                matches!(et, Some(0x0800 | 0x86dd)).then(|| &frame[at..])
            }
            113 => frame.get(16..),
            276 => frame.get(20..),
            0 => frame.get(4..),
            101 | 12 | 14 => Some(frame),
            other => panic!("{}: link type {other} not supported", path.display()),
        };
        if let Some((src, payload)) = ip.and_then(udp) {
            out.push(Datagram {
                ts_secs: ts,
                src,
                payload,
            });
        }
    }
    out
}

pub type Totals = BTreeMap<(IpAddr, IpAddr), (u64, u64, u64)>;

/// What a capture must decode to, from its `<name>.nfdump` file.
pub struct Expected {
    /// nfdump's `src dst flows packets bytes` lines (the README's command): counters
    /// as exported, since neither nfdump nor nfacctd scales sampled records.
    pub pairs: Totals,
    /// nfacctd's totals from a `# nfacctd: flows packets bytes` line, where the lab
    /// gave them.
    pub nfacctd: Option<(u64, u64, u64)>,
    /// The 1-in-N rate podflow must apply, from a `# sampling: N` line (else 1).
    pub sampling_rate: u32,
}

impl Expected {
    /// `pairs` with packets and bytes multiplied by the sampling rate: what podflow's
    /// scaled counters sum to.
    pub fn scaled_pairs(&self) -> Totals {
        let r = u64::from(self.sampling_rate);
        let scale = |&(f, p, b): &(u64, u64, u64)| (f, p * r, b * r);
        self.pairs.iter().map(|(k, v)| (*k, scale(v))).collect()
    }
}

/// Reads tests/data/`<name>.nfdump`.
pub fn read_expected(name: &str) -> Expected {
    let path = data_dir().join(format!("{name}.nfdump"));
    let text = std::fs::read_to_string(&path).expect("read expectation");
    let numbers = |l: &str| -> Vec<u64> {
        l.split_whitespace()
            .map(|f| {
                f.parse()
                    .unwrap_or_else(|_| panic!("{name}: number in {l:?}"))
            })
            .collect()
    };
    let mut e = Expected {
        pairs: Totals::new(),
        nfacctd: None,
        sampling_rate: 1,
    };
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(v) = l.strip_prefix("# nfacctd:") {
            let n = numbers(v);
            assert_eq!(n.len(), 3, "{name}: nfacctd line {l:?}");
            e.nfacctd = Some((n[0], n[1], n[2]));
        } else if let Some(v) = l.strip_prefix("# sampling:") {
            e.sampling_rate = v.trim().parse().expect("sampling rate");
        } else if !l.starts_with('#') {
            let (addrs, rest) = l.split_at(l.match_indices(' ').nth(1).expect("src dst").0);
            let (src, dst) = addrs.split_once(' ').expect("src dst");
            let n = numbers(rest);
            assert_eq!(n.len(), 3, "{name}: line {l:?}");
            let key = (src.parse().expect("src"), dst.parse().expect("dst"));
            e.pairs.insert(key, (n[0], n[1], n[2]));
        }
    }
    e
}
